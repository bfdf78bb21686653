"""ioctl request numbers (asm-generic/ioctl.h) and the ioctl call itself."""

from __future__ import annotations

import ctypes
import fcntl
from typing import Any

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT
    )


def _size(t: Any) -> int:
    return ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(t))


def _IOW(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(t))


#: ``ioctl(fd, request, arg)``: arg is an int or a mutable ctypes object, which
#: the kernel may fill in place.  Raises OSError; callers in pyhv.kvm convert it.
ioctl = fcntl.ioctl


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]

# The vCPU loop's KVM_RUN.  fcntl.ioctl spends about 0.8 us per call probing
# its argument (it tries the buffer protocols first, raising and clearing
# TypeErrors); a ctypes call without argtypes passes small ints straight
# through as C ints and, like fcntl, releases the GIL for the call.  Returns
# -1 with errno (read it with get_errno) on failure.  Only for arguments that
# fit in a C int.
_fast = ctypes.CDLL(None, use_errno=True)
fast_ioctl = _fast.ioctl
get_errno = ctypes.get_errno


def ioctl_ulong(fd: int, request: int, value: int) -> int:
    """ioctl with an unsigned long argument wider than fcntl.ioctl's C int."""
    ret = _libc.ioctl(fd, request, value)
    if ret < 0:
        import os

        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(ret)
