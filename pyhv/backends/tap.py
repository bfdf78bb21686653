"""A TAP device behind virtio-net: frames with a 12-byte virtio_net_hdr in front.

pyhv opens the TAP by name (creating it if it does not exist, and bringing it
up) or takes an already-open file descriptor from the toolstack.  The header
size is set to 12 (struct virtio_net_hdr_v1, with num_buffers) so frames move
between the TAP and guest buffers without reformatting.  Which offloads the
TAP can do (checksum, TSO4/6, UFO) is probed once with TUNSETOFFLOAD; they stay
off (TUNSETOFFLOAD 0) until the guest accepts them, and then exactly the ones
it accepted are switched on (:meth:`Tap.set_offload`).

:class:`Tap` is virtio-net's :class:`~.interfaces.FrameBackend`: one read or
write on the TAP's fd moves one whole frame, header first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._sys import tun
from ..errors import PyhvError
from .interfaces import OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO, VNET_HDR_SIZE

_TUN_FLAGS = {OFFLOAD_CSUM: tun.TUN_F_CSUM, OFFLOAD_TSO4: tun.TUN_F_TSO4, OFFLOAD_TSO6: tun.TUN_F_TSO6, OFFLOAD_UFO: tun.TUN_F_UFO}


def _tun_flags(flags: int) -> int:
    return sum(tun_flag for bit, tun_flag in _TUN_FLAGS.items() if flags & bit)


class Tap:
    def __init__(self, name: str = "", fd: int | None = None, bridge: str = "") -> None:
        if fd is None:
            try:
                fd, name = tun.open_tap(name, VNET_HDR_SIZE)
                tun.set_link_up(name)
            except OSError as e:
                raise PyhvError(f"tap {name or '(new)'}: cannot open: {e.strerror or e}") from None
        self.fd = fd
        self.name = name
        self._offloads = self._probe_offloads()
        if bridge:
            try:
                self._attach(bridge)
            except BaseException:
                self.close()  # a TAP created here goes away again
                raise

    def _attach(self, bridge: str) -> None:
        """Enslave the TAP to ``bridge`` (netlink, through pyroute2)."""
        try:
            from pyroute2 import IPRoute  # the toolstack's dependency, loaded only for bridges
        except ImportError:
            raise PyhvError("attaching a TAP to a bridge needs pyroute2 (pip install pyroute2)") from None
        with IPRoute() as ip:
            bridges = ip.link_lookup(ifname=bridge)
            taps = ip.link_lookup(ifname=self.name)
            if not bridges:
                raise PyhvError(f"bridge {bridge}: no such interface")
            ip.link("set", index=taps[0], master=bridges[0])

    def fileno(self) -> int:
        return self.fd

    def recv_into(self, views: Sequence[memoryview]) -> int:
        return os.readv(self.fd, views)

    def send(self, views: Sequence[memoryview]) -> None:
        os.writev(self.fd, views)

    def _probe_offloads(self) -> int:
        """What TUNSETOFFLOAD accepts on this fd (nothing on a descriptor that
        is not a TAP), left switched off until the guest accepts some."""
        wanted = OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_UFO
        try:
            tun.set_offload(self.fd, _tun_flags(wanted))
            tun.set_offload(self.fd, 0)
        except OSError:
            return 0
        return wanted

    def offloads(self) -> int:
        return self._offloads

    def set_offload(self, flags: int) -> None:
        tun.set_offload(self.fd, _tun_flags(flags & self._offloads))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
