"""A virtio device whose queues a vhost-user back end serves (virtio-fs, vhost-user-blk).

pyhv keeps the transport side (feature negotiation, status, queue set-up
registers, configuration space, MSI-X); the back end process does the
requests.  Features offered to the driver are the back end's, less what pyhv
does not allow.  On DRIVER_OK the ready queues go to the back end
(:meth:`VhostBackend.start`); on reset they come back (``stop``:
GET_VRING_BASE).  Kicks reach the back end through the queue's ioeventfd and
completions leave it through an irqfd, both wired by the builder: neither
passes through this object.

The back end is another program: anything it does wrong (a malformed or
missing reply, the connection closed) marks the device DEVICE_NEEDS_RESET
with one log line; the VM goes on.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from ...errors import PyhvError
from .device import TRANSPORT_FEATURES, VirtioDevice
from .queue import SplitQueue

FS_DEVICE_ID = 26  # virtio 1.2, 5.11
FS_TAG_SIZE = 36


class QueueSetup(Protocol):
    ring: int
    size: int
    desc: int
    avail: int
    used: int
    base: int


class VhostBackend(Protocol):
    """What the device needs of ``backends.vhost_user.VhostUserBackend``."""

    name: str
    features: int

    def start(self, features: int, queues: Any) -> None: ...

    def stop(self) -> dict[int, int]: ...

    def kick(self, index: int) -> None: ...

    def set_queue_fds(self, index: int, kick: int | None, call: int | None) -> None: ...

    def fileno(self) -> int: ...

    def idle_check(self) -> str | None: ...


def fs_config(tag: str, request_queues: int) -> bytes:
    """virtio-fs configuration (5.11.4): the tag, NUL-padded to 36 bytes, and the request queue count."""
    raw = tag.encode()
    if not 0 < len(raw) <= FS_TAG_SIZE:
        raise ValueError(f"virtio-fs tag of {len(raw)} bytes: 1..{FS_TAG_SIZE}")
    return raw.ljust(FS_TAG_SIZE, b"\0") + struct.pack("<I", request_queues)


class VhostUser(VirtioDevice):
    """``layout`` makes one ring's description for the back end (QueueLayout's shape)."""

    #: the wiring gives the queues' notify eventfds to the back end instead of the I/O thread
    backend_serves_queues = True

    def __init__(
        self, mem: Any, backend: VhostBackend, device_id: int, name: str, num_queues: int, config: bytes,
        allowed_features: int, layout: Any, queue_max_size: int = 1024,
    ) -> None:
        super().__init__(mem, num_queues, queue_max_size)
        self.device_id = device_id
        self.name = name
        self.backend = backend
        self._config = config
        self._allowed = allowed_features | TRANSPORT_FEATURES
        self._layout = layout

    def offered_features(self) -> int:
        return self.backend.features & self._allowed

    def config_bytes(self) -> bytes:
        return self._config

    # --- queues go to the back end ---------------------------------------------------------

    def _device_activate(self) -> None:
        rings = [
            self._layout(ring=i, size=q.size, desc=q.desc_addr, avail=q.avail_addr, used=q.used_addr, base=0)
            for i, q in enumerate(self.queues) if q.ready
        ]
        try:
            self.backend.start(self.driver_features, rings)
        except (PyhvError, OSError) as e:  # the back end's VhostUserError is a PyhvError
            self.fail(f"back end: {getattr(e, 'detail', e)}")

    def _device_reset(self) -> None:
        try:
            self.backend.stop()
        except (PyhvError, OSError):
            pass  # already failed (and said so); the rings are the driver's again either way

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        # a kick that reached pyhv (no ioeventfd on the slot): pass it on
        self.backend.kick(index)
        return False

    # --- the back end's health (on the I/O thread) ---------------------------------------------

    def backend_readable(self) -> bool:
        """The back end's socket is readable; True while it is healthy.  Under the
        device lock, so no request of ours is waiting for a reply right now."""
        with self.lock:
            reason = self.backend.idle_check()
            if reason is None:
                return True
            self.fail(reason)
            return False

