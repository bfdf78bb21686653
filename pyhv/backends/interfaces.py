"""What a device asks of its host side: small protocols the backends implement.

A virtio device speaks its protocol to the guest and moves bytes through one
of these; it never opens a file or a socket itself, so its tests drive it with
scripted bytes (tests/unit/backend_fakes.py).  The builder makes the backends
and hands them, and the I/O thread's :class:`Readiness`, to the device's
constructor.

Everything here is called on the I/O thread (or, for set-up and close, by the
builder and the machine), so none of it needs to be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

#: bytes of ``struct virtio_net_hdr_v1`` (with num_buffers, virtio 1.2, 5.1.6)
#: in front of every frame a :class:`FrameBackend` moves
VNET_HDR_SIZE = 12

Callback = Callable[[], None]

#: what a :class:`FrameBackend` can hand the guest besides plain checksummed
#: frames (the TUN_F_* bits of <linux/if_tun.h>): frames whose checksum is
#: left for the receiver (VIRTIO_NET_HDR_F_NEEDS_CSUM), TCP segments of up to
#: 64 KiB over IPv4 or IPv6 (GSO), and UDP datagrams of up to 64 KiB
OFFLOAD_CSUM = 0x01
OFFLOAD_TSO4 = 0x02
OFFLOAD_TSO6 = 0x04
OFFLOAD_UFO = 0x10


class Readiness(Protocol):
    """Readiness callbacks on the I/O thread (``vmm.iothread.IoThread`` is one)."""

    def watch(self, fd: int, on_read: Callback | None, on_write: Callback | None = None) -> None:
        """Call ``on_read`` while ``fd`` is readable and ``on_write`` while it is
        writable; either may be None, both None stops watching ``fd``.  Replaces
        what was watched on ``fd`` before.  Stop watching before closing ``fd``."""
        ...


class FrameBackend(Protocol):
    """Where virtio-net's frames go and come from (``backends.tap.Tap``).

    Each frame starts with a :data:`VNET_HDR_SIZE`-byte virtio_net_hdr_v1 and
    keeps its boundaries: one call moves one frame.
    """

    @property
    def name(self) -> str:
        """What the host calls it (the TAP's interface name), for messages."""
        ...

    def fileno(self) -> int:
        """Readable while a frame is waiting."""
        ...

    def recv_into(self, views: Sequence[memoryview]) -> int:
        """Read one frame into ``views`` (scattered); return its length, cut to
        what fits.  Raises BlockingIOError when no frame is waiting, OSError
        when the host side failed (the caller counts a dropped frame)."""
        ...

    def send(self, views: Sequence[memoryview]) -> None:
        """Write one frame gathered from ``views``.  Raises BlockingIOError when
        the host side's queue is full (the frame is lost, as on a wire) and
        OSError when it failed."""
        ...

    def offloads(self) -> int:
        """The ``OFFLOAD_*`` bits this backend can do, in both directions: it
        takes frames whose header asks for them and, once :meth:`set_offload`
        allows it, hands such frames over.  0 when it does none."""
        ...

    def set_offload(self, flags: int) -> None:
        """Which ``OFFLOAD_*`` frames (a subset of :meth:`offloads`) the guest
        accepts, so the backend may hand them over.  Raises OSError."""
        ...


class HostStream(Protocol):
    """One host-side stream behind a vsock connection: non-blocking bytes."""

    def fileno(self) -> int:
        """For :class:`Readiness`: readable when :meth:`recv` has something to say."""
        ...

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; ``b""`` once the host closed its end or failed.
        Raises BlockingIOError when nothing is waiting."""
        ...

    def recv_into(self, views: Sequence[memoryview]) -> int:
        """:meth:`recv` scattered into ``views`` (one read); the bytes read, 0
        once the host closed its end or failed.  Raises BlockingIOError when
        nothing is waiting."""
        ...

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the host takes now and return how much that was.  Raises
        BlockingIOError when it takes nothing (wait for writable), OSError
        when the host end is gone."""
        ...

    def confirm(self, host_port: int) -> None:
        """For a stream the host opened (:meth:`VsockHost.start_accepting`): tell
        the host program the guest accepted, on ``host_port``.  Raises OSError
        when the host end is gone."""
        ...

    def shutdown_write(self) -> None:
        """No more bytes for the host: it reads end of stream.  Errors are ignored
        (a vanished host end is noticed by :meth:`recv`)."""
        ...

    def close(self) -> None:
        ...


#: a host program asked for ``guest_port``; ``early`` is what it sent after
#: asking, before the guest could accept
OnConnect = Callable[[HostStream, int, bytes], None]


class VsockHost(Protocol):
    """The host end of virtio-vsock: connections to and from host programs
    (``backends.vsock_uds.VsockUds``)."""

    def start_accepting(self, on_connect: OnConnect) -> None:
        """From now on hand each host connection that asks for a guest port to
        ``on_connect(stream, guest_port, early)``; calling again replaces it."""
        ...

    def connect(self, host_port: int) -> HostStream:
        """The guest connects to the host's ``host_port``.  Raises OSError when
        nothing on the host takes it."""
        ...
