"""The I/O thread: device work driven by epoll over eventfds.

Queue notifications arrive as ioeventfds that KVM signals without leaving the
kernel; completion interrupts leave through KVM_SIGNAL_MSI or irqfds.  So a
vCPU thread never runs device code for a virtqueue: it only exits to Python
for register accesses, and the I/O thread does the requests.

Callbacks run on this one thread, in order; a callback that raises is reported
once and the loop goes on (a device should have failed itself already).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import sys
import threading
import time
from collections.abc import Callable


class IoThread:
    def __init__(self, name: str = "io") -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._eventfds: set[int] = set()
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap: (when, order, fn)
        self._timer_ids = itertools.count()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._stopping = False
        self._held: threading.Event | None = None  # set to let a paused thread go on
        self._failed: set[int] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def add_eventfd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time eventfd ``fd`` is signalled (its count is consumed)."""
        with self._lock:
            self._handlers[fd] = callback
            self._eventfds.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def new_eventfd(self, callback: Callable[[], None]) -> int:
        """A new non-blocking eventfd whose signals call ``callback()`` (see :meth:`add_eventfd`);
        the caller owns it and closes it after the thread."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.add_eventfd(fd, callback)
        return fd

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` while ``fd`` is readable (the callback reads it)."""
        with self._lock:
            self._handlers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def watch(
        self, fd: int, on_read: Callable[[], None] | None, on_write: Callable[[], None] | None = None
    ) -> None:
        """Call ``on_read`` while ``fd`` is readable and ``on_write`` while it is
        writable (either may be None); replaces what was watched on ``fd``."""
        mask = (select.EPOLLIN if on_read else 0) | (select.EPOLLOUT if on_write else 0)
        with self._lock:
            known = fd in self._handlers or fd in self._writers
            if on_read:
                self._handlers[fd] = on_read
            else:
                self._handlers.pop(fd, None)
            if on_write:
                self._writers[fd] = on_write
            else:
                self._writers.pop(fd, None)
        if not mask:
            self.remove(fd)
        elif known:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.register(fd, mask)

    def remove(self, fd: int) -> None:
        with self._lock:
            self._handlers.pop(fd, None)
            self._writers.pop(fd, None)
            self._eventfds.discard(fd)
        try:
            self._epoll.unregister(fd)
        except (FileNotFoundError, ValueError, OSError):
            pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread ``delay`` seconds from now (from any thread):
        a rate-limited queue resumes this way, without a sleep on the thread."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + max(delay, 0.0), next(self._timer_ids), fn))
        os.eventfd_write(self._wake, 1)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread (from any thread)."""
        with self._lock:
            self._pending.append(fn)
        os.eventfd_write(self._wake, 1)

    def start(self) -> None:
        self._thread.start()

    def pause(self, timeout: float = 5.0) -> bool:
        """Hold the thread between callbacks until :meth:`resume`: no device work
        runs and no guest memory is written meanwhile.  False if it did not
        get there in time (or is not running, when there is nothing to hold)."""
        if not self._thread.is_alive() or self._held is not None:
            return False
        held, release = threading.Event(), threading.Event()
        self._held = release

        def hold() -> None:
            held.set()
            release.wait()

        self.call_soon(hold)
        if not held.wait(timeout):
            release.set()
            self._held = None
            return False
        return True

    def resume(self) -> None:
        release, self._held = self._held, None
        if release is not None:
            release.set()

    def stop(self) -> None:
        self._stopping = True
        self.resume()
        os.eventfd_write(self._wake, 1)
        if self._thread.ident is not None:
            self._thread.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self.stop()
        self._epoll.close()
        os.close(self._wake)

    def _run(self) -> None:
        from ..vcpu import thread

        if thread.on_thread_start is not None:
            thread.on_thread_start("io")
        while not self._stopping:
            try:
                events = self._epoll.poll(self._run_timers())
            except InterruptedError:
                continue
            for fd, mask in events:
                if self._stopping:  # stopped while holding: not one more callback
                    break
                if fd == self._wake:
                    self._drain(fd)
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for fn in pending:
                        if not self._stopping:
                            self._call(id(fn), fn)
                    continue
                with self._lock:
                    handler = self._handlers.get(fd)
                    writer = self._writers.get(fd) if mask & select.EPOLLOUT else None
                    is_eventfd = fd in self._eventfds
                if writer is not None:
                    self._call(fd, writer)
                if handler is None or not mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
                if is_eventfd:
                    self._drain(fd)
                self._call(fd, handler)

    def _run_timers(self) -> float:
        """Run the timers that are due; seconds until the next one (-1: none)."""
        while True:
            with self._lock:
                if not self._timers:
                    return -1
                when, _, fn = self._timers[0]
                left = when - time.monotonic()
                if left > 0:
                    return left
                heapq.heappop(self._timers)
            if self._stopping:
                return -1
            self._call(id(fn), fn)

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass

    def _call(self, key: int, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failing device must not stop the others
            if key not in self._failed:
                self._failed.add(key)
                print(f"pyhv: I/O handler failed: {e!r}", file=sys.stderr)
