"""Test doubles for the host side of devices (pyhv/backends/interfaces.py): the
I/O thread's readiness, a frame backend and a vsock host, all scripted, with
no file descriptors behind them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from pyhv.backends.interfaces import OnConnect

Callback = Callable[[], None]


def scatter(data: bytes, views: Sequence[memoryview]) -> int:
    """Copy ``data`` into ``views`` in order, as readv does; the bytes copied."""
    done = 0
    for view in views:
        part = data[done : done + len(view)]
        view[: len(part)] = part
        done += len(part)
    return done


class FakeIo:
    """Stands in for the I/O thread: remembers what is watched, runs it on demand."""

    def __init__(self) -> None:
        self.readers: dict[int, Callback] = {}
        self.writers: dict[int, Callback] = {}

    def watch(self, fd: int, on_read: Callback | None, on_write: Callback | None = None) -> None:
        for table, callback in ((self.readers, on_read), (self.writers, on_write)):
            if callback is None:
                table.pop(fd, None)
            else:
                table[fd] = callback

    def run(self, rounds: int = 4) -> None:
        """Call every watched callback, a few rounds (a callback may watch others)."""
        for _ in range(rounds):
            for callback in [*self.writers.values(), *self.readers.values()]:
                callback()


class ScriptedFrames:
    """A frame backend: frames to receive are queued in :attr:`incoming`, sent
    ones collected in :attr:`sent`; :attr:`send_error` makes sends fail."""

    name = "fake0"

    def __init__(self, fd: int = 100) -> None:
        self.fd = fd
        self.incoming: deque[bytes | OSError] = deque()
        self.sent: list[bytes] = []
        self.send_error: OSError | None = None
        self.can = 0  # the OFFLOAD_* bits offloads() reports
        self.offload: list[int] = []  # every set_offload() call

    def fileno(self) -> int:
        return self.fd

    def recv_into(self, views: Sequence[memoryview]) -> int:
        if not self.incoming:
            raise BlockingIOError
        frame = self.incoming.popleft()
        if isinstance(frame, OSError):
            raise frame
        return scatter(frame, views)

    def send(self, views: Sequence[memoryview]) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(b"".join(bytes(v) for v in views))

    def offloads(self) -> int:
        return self.can

    def set_offload(self, flags: int) -> None:
        self.offload.append(flags)


class ScriptedStream:
    """A host stream: bytes the host sends are queued in :attr:`incoming` (``b""``
    for its end of stream), bytes it took are in :attr:`received`; it takes at
    most :attr:`room` bytes until that is raised."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.incoming: deque[bytes] = deque()
        self.received = bytearray()
        self.sends = 0  # send() calls that took bytes
        self.reads = 0  # recv()/recv_into() calls that returned bytes
        self.write_shut_at: int | None = None  # len(received) when shutdown_write() came
        self.room = 1 << 30
        self.confirmed: int | None = None
        self.write_shut = False
        self.closed = False

    def fileno(self) -> int:
        return -1 if self.closed else self.fd

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        data = self.incoming.popleft()
        if len(data) > size:
            self.incoming.appendleft(data[size:])
            data = data[:size]
        self.reads += 1 if data else 0
        return data

    def recv_into(self, views: Sequence[memoryview]) -> int:
        return scatter(self.recv(sum(len(v) for v in views)), views)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise OSError("closed")
        if self.room == 0:
            raise BlockingIOError
        n = min(len(data), self.room)
        self.received += data[:n]
        self.room -= n
        self.sends += 1
        return n

    def confirm(self, host_port: int) -> None:
        self.confirmed = host_port

    def shutdown_write(self) -> None:
        self.write_shut = True
        self.write_shut_at = len(self.received)

    def close(self) -> None:
        self.closed = True


class FakeVsockHost:
    """A vsock host: :meth:`host_connects` plays a host program asking for a
    guest port; :attr:`listening` holds the host ports a guest may reach."""

    def __init__(self) -> None:
        self.on_connect: OnConnect | None = None
        self.listening: set[int] = set()
        self.connected: dict[int, list[ScriptedStream]] = {}  # host port -> streams the guest opened
        self._next_fd = 200

    def start_accepting(self, on_connect: OnConnect) -> None:
        self.on_connect = on_connect

    def connect(self, host_port: int) -> ScriptedStream:
        if host_port not in self.listening:
            raise ConnectionRefusedError(f"nothing listens on host port {host_port}")
        stream = self._stream()
        self.connected.setdefault(host_port, []).append(stream)
        return stream

    def host_connects(self, guest_port: int, early: bytes = b"") -> ScriptedStream:
        assert self.on_connect is not None, "the device never started accepting"
        stream = self._stream()
        self.on_connect(stream, guest_port, early)
        return stream

    def _stream(self) -> ScriptedStream:
        self._next_fd += 1
        return ScriptedStream(self._next_fd)
