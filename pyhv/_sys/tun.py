"""<linux/if_tun.h> and the ioctls that open a TAP device."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from .ioctl import _IOW

IFNAMSIZ = 16
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_UP = 0x1

TUNSETIFF = _IOW(ord("T"), 202, ctypes.c_int)
TUNSETOFFLOAD = _IOW(ord("T"), 208, ctypes.c_uint)
TUNSETVNETHDRSZ = _IOW(ord("T"), 216, ctypes.c_int)
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

# struct ifreq: char ifr_name[IFNAMSIZ]; union { short ifr_flags; ... } (40 bytes on x86-64)
_IFREQ = struct.Struct("16sH22x")


def open_tap(name: str, vnet_hdr_size: int) -> tuple[int, str]:
    """Open (creating if needed) TAP ``name``; returns (fd, actual name).  Raises OSError."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        req = bytearray(_IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETIFF, req, True)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_size))
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError:
        os.close(fd)
        raise
    actual = bytes(req[:IFNAMSIZ]).rstrip(b"\0").decode()
    return fd, actual


def set_offload(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def set_link_up(name: str) -> None:
    """SIOCSIFFLAGS |= IFF_UP, unless it is up already (which needs no privilege:
    a confined front end may use a TAP set up for it).  Interface ioctls work on
    any socket; an AF_UNIX one is what a confined process may make."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        req = bytearray(_IFREQ.pack(name.encode(), 0))
        fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req, True)
        flags = _IFREQ.unpack(bytes(req))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, bytearray(_IFREQ.pack(name.encode(), flags | IFF_UP)))
