"""A virtio device, independent of the transport that carries it (virtio 1.2, 2.1-2.4).

The transport (PCI or MMIO) maps its registers onto this object: device and
driver feature words, the device status, the queues' configuration and the
device-specific configuration space.  Queue notifications arrive through
:meth:`VirtioDevice.notify` (on the I/O thread, from an ioeventfd); the
device signals used buffers and configuration changes through
``self.interrupt``, a callable the transport installs.

Status machine (2.1): the driver writes ACKNOWLEDGE, DRIVER, then FEATURES_OK
after choosing features -- accepted only if they are a subset of what the
device offers and include VERSION_1 -- then DRIVER_OK, which activates the
queues it made ready.  Writing 0 resets everything.  A protocol violation by
the driver (a malformed ring) sets DEVICE_NEEDS_RESET and the device stops
processing until the driver resets it: the VM keeps running.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from ..ratelimit import RateLimiter
from .queue import (
    DescriptorChain,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Buffer,
    QueueError,
    SplitQueue,
)

STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

#: what ``interrupt`` is called with for a configuration change
CONFIG_INTERRUPT = -1

#: completions :meth:`VirtioDevice._drain` writes before publishing them with one ``used.idx`` store
USED_BATCH = 32

TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_EVENT_IDX)


class VirtioDevice:
    """Subclasses set ``device_id`` and ``name`` and implement the ``_device_*`` hooks."""

    device_id = 0
    name = "virtio"

    def __init__(self, mem: Any, num_queues: int, queue_max_size: int = 256) -> None:
        self.mem = mem
        self.queues = [SplitQueue(mem, queue_max_size) for _ in range(num_queues)]
        self.lock = threading.RLock()
        self.interrupt: Callable[[int], None] = lambda vector: None
        self.status = 0
        self.driver_features = 0
        self.config_generation = 0
        self.failure: str | None = None
        self._reported = False
        self.limiters: dict[int, RateLimiter] = {}  # queue index -> its rate limiter
        self._call_later: Callable[[float, Callable[[], None]], None] = lambda delay, fn: None
        self._throttled: set[int] = set()  # queues waiting for their limiter's bucket

    # --- features -------------------------------------------------------------

    def device_features(self) -> int:
        """Device-specific feature bits (0-23); transport bits are added here."""
        return 0

    def offered_features(self) -> int:
        return self.device_features() | TRANSPORT_FEATURES

    def accepts_features(self, features: int) -> bool:
        """Whether a choice of offered features is consistent (a device whose
        features depend on each other says no to one without the other)."""
        return True

    @property
    def negotiated(self) -> int:
        return self.driver_features if self.status & STATUS_FEATURES_OK else 0

    def write_driver_features(self, word: int, value: int) -> None:
        """The driver's choice, 32 bits at a time; ignored once FEATURES_OK is set."""
        if self.status & STATUS_FEATURES_OK or word not in (0, 1):
            return
        shift = 32 * word
        self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)

    # --- status -----------------------------------------------------------------

    def write_status(self, value: int) -> None:
        with self.lock:
            value &= 0xFF
            if value == 0:
                self.reset()
                return
            if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
                wanted = self.driver_features
                if (
                    wanted & ~self.offered_features()
                    or not wanted >> VIRTIO_F_VERSION_1 & 1
                    or not self.accepts_features(wanted)
                ):
                    value &= ~STATUS_FEATURES_OK  # refused: the driver reads it back and gives up
            if value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK:
                if not value & STATUS_FEATURES_OK:
                    value &= ~STATUS_DRIVER_OK
                else:
                    self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)
                    self._activate()
                    return
            self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)

    def _activate(self) -> None:
        try:
            for q in self.queues:
                if q.ready:
                    q.activate(self.driver_features)
        except QueueError as e:
            self.fail(f"queue set-up: {e}")
            return
        self._device_activate()

    def reset(self) -> None:
        with self.lock:
            self.status = 0
            self.driver_features = 0
            self.failure = None
            self._throttled.clear()
            for q in self.queues:
                q.reset()
            self._device_reset()

    def fail(self, reason: str) -> None:
        """The driver broke the protocol: DEVICE_NEEDS_RESET, logged once per device."""
        with self.lock:
            self.failure = reason
            self.status |= STATUS_DEVICE_NEEDS_RESET
            if not self._reported:
                self._reported = True
                print(f"pyhv: {self.name}: {reason}; device needs reset", file=sys.stderr)
        if self.status & STATUS_DRIVER_OK:
            self.config_changed()

    def config_changed(self) -> None:
        """The configuration space changed (virtio 1.2, 2.5.1 and 4.1.4.3): a new
        generation, and a configuration-change interrupt if the driver is running."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFF
            running = bool(self.status & STATUS_DRIVER_OK)
        if running:
            self.interrupt(CONFIG_INTERRUPT)

    # --- queues -----------------------------------------------------------------

    def queue(self, index: int) -> SplitQueue | None:
        """Queue ``index`` as a transport's queue-select register names it, if it exists."""
        return self.queues[index] if 0 <= index < len(self.queues) else None

    def notify(self, index: int) -> None:
        """The driver kicked queue ``index``: process what it made available."""
        with self.lock:
            if (
                not self.status & STATUS_DRIVER_OK
                or self.status & STATUS_DEVICE_NEEDS_RESET
                or not 0 <= index < len(self.queues)
            ):
                return
            q = self.queues[index]
            if not q.ready:
                return
            try:
                used = self._device_process(index, q)
            except QueueError as e:
                self.fail(f"queue {index}: {e}")
                return
            signal = used and q.should_notify()
        if signal:
            self.interrupt(index)

    # --- rate limiting ---------------------------------------------------------------

    def limit(self, index: int, limiter: RateLimiter | None,
              call_later: Callable[[float, Callable[[], None]], None]) -> None:
        """Serve queue ``index`` within ``limiter``'s buckets (None: no limit); a
        queue over its limit waits for ``call_later`` (the I/O thread's timer).
        A queue waiting on the limiter it had is served again at once."""
        with self.lock:
            if limiter is None:
                self.limiters.pop(index, None)
            else:
                self.limiters[index] = limiter
            self._call_later = call_later
            waiting = index in self._throttled
        if waiting:
            call_later(0.0, lambda: self._refilled(index))

    def _admit(self, index: int, ops: int, nbytes: int, take: bool = True) -> bool:
        """Whether queue ``index`` may serve a request of ``ops`` and ``nbytes`` now
        (the tokens are taken, unless ``take`` is false: the caller charges what it
        moved afterwards).  If not, the queue stops being served until its
        limiter's bucket has refilled, when the I/O thread serves it again."""
        limiter = self.limiters.get(index)
        if limiter is None:
            return True
        if index in self._throttled:
            return False
        wait = limiter.wait(ops, nbytes, take)
        if wait <= 0.0:
            return True
        self._throttled.add(index)
        self._call_later(wait, lambda: self._refilled(index))
        return False

    def _refilled(self, index: int) -> None:
        with self.lock:
            self._throttled.discard(index)
        self.notify(index)

    def _drain(self, queue: SplitQueue, serve: Callable[[DescriptorChain], int],
               index: int = -1, cost: Callable[[DescriptorChain], int] | None = None) -> bool:
        """Serve every available chain with ``serve`` (returns bytes written); with
        a rate limiter on queue ``index``, only while it admits each chain (one
        op and ``cost(chain)`` bytes).

        While serving, the driver is told not to kick (2.7.7 / 2.7.10): a kick
        from a guest costs a VM exit, and the device is already looking.  After
        turning kicks back on, the queue is checked once more, so a chain added
        in between is not left waiting for a kick that never comes.

        Completions are published in batches (:meth:`SplitQueue.push_used` with
        ``publish=False``): one ``used.idx`` store per :data:`USED_BATCH`
        chains and at the end, so the driver gets its buffers back while a long
        burst is still being served, and the caller's one
        :meth:`SplitQueue.should_notify` covers the whole drain.
        """
        used = False
        limited = cost is not None and index in self.limiters
        queue.set_notification(False)
        while True:
            batch = 0
            while (chain := queue.pop()) is not None:
                if limited and not self._admit(index, 1, cost(chain)):  # type: ignore[misc]
                    queue.unpop()
                    queue.publish_used()
                    queue.set_notification(True)
                    return used
                queue.push_used(chain, serve(chain), publish=False)
                used = True
                batch += 1
                if batch == USED_BATCH:
                    queue.publish_used()
                    batch = 0
            queue.publish_used()
            queue.set_notification(True)
            if not queue.has_available():
                return used
            queue.set_notification(False)

    # --- configuration space ----------------------------------------------------

    def config_bytes(self) -> bytes:
        """The device-specific configuration space as the driver sees it."""
        return b""

    def read_config(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        if offset < 0 or size not in (1, 2, 4, 8) or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Most configuration fields are read-only; devices override for writable ones."""

    # --- hooks ----------------------------------------------------------------------

    def _device_activate(self) -> None:
        pass

    def _device_reset(self) -> None:
        pass

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        """Serve available chains; True if any buffer was used."""
        raise NotImplementedError

    # --- state --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain values: status, features, queues and what the device adds (:meth:`_device_state`)."""
        with self.lock:
            return {
                "status": self.status,
                "driver_features": self.driver_features,
                "config_generation": self.config_generation,
                "queues": [q.state() for q in self.queues],
                "device": self._device_state(),
            }

    def set_state(self, state: Any) -> None:
        """Take back :meth:`state`.  Everything is checked before anything changes:
        each queue's state is tried on a scratch queue first.  A device that
        was running (DRIVER_OK) is activated again (e.g. net watches its TAP)."""
        from ..state import DeviceStateError, check_keys, int_field

        what = self.name
        st = check_keys(state, ("status", "driver_features", "config_generation", "queues", "device"), what)
        status = int_field(st, "status", 0xFF, what)
        features = int_field(st, "driver_features", (1 << 64) - 1, what)
        generation = int_field(st, "config_generation", 0xFFFF_FFFF, what)
        queues = st["queues"]
        if not isinstance(queues, list) or len(queues) != len(self.queues):
            raise DeviceStateError(f"{what} state: expected {len(self.queues)} queues")
        if status & STATUS_FEATURES_OK and (features & ~self.offered_features() or not self.accepts_features(features)):
            raise DeviceStateError(f"{what} state: driver features {features:#x} were never offered")
        for i, (q, qs) in enumerate(zip(self.queues, queues, strict=True)):
            try:
                SplitQueue(self.mem, q.max_size).set_state(qs)
            except QueueError as e:
                raise DeviceStateError(f"{what} state: queue {i}: {e}") from None
        device = self._device_check_state(st["device"])
        with self.lock:
            self._device_reset()
            for q, qs in zip(self.queues, queues, strict=True):
                q.set_state(qs)
            self.status, self.driver_features, self.config_generation = status, features, generation
            self.failure = "restored in a failed state" if status & STATUS_DEVICE_NEEDS_RESET else None
            self._device_set_state(device)
            if status & STATUS_DRIVER_OK and not status & STATUS_DEVICE_NEEDS_RESET:
                self._device_activate()

    def after_restore(self) -> None:
        """Called on the I/O thread once a restored machine runs (the guest's
        interrupt controllers are in place): tell the guest what it must know."""

    def _device_state(self) -> Any:
        """Device-specific state as plain values (None when there is none)."""
        return None

    def _device_check_state(self, state: Any) -> Any:
        """Check :meth:`_device_state` output from outside; return what :meth:`_device_set_state` takes."""
        from ..state import DeviceStateError

        if state is not None:
            raise DeviceStateError(f"{self.name} state: device part must be null")
        return None

    def _device_set_state(self, checked: Any) -> None:
        """Apply what :meth:`_device_check_state` returned (lock held)."""


def buffer_views(mem: Any, buffers: list[Buffer], skip: int, length: int) -> list[memoryview]:
    """Views of guest memory for bytes [skip, skip+length) of the concatenated buffers.

    Each view comes from ``mem.view``, which checks that the range lies inside
    guest RAM; the queue already checked every buffer when it popped the chain.
    """
    views: list[memoryview] = []
    for b in buffers:
        if length <= 0:
            break
        if skip >= b.length:
            skip -= b.length
            continue
        take = min(b.length - skip, length)
        views.append(mem.view(b.addr + skip, take))
        length -= take
        skip = 0
    return views
