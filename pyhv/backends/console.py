"""Where a serial port's bytes go and come from.

A console backend has ``write(data)`` for what the guest transmits and, when
it has an input side, delivers what the user types to a ``sink`` callable (the
UART's receive FIFO) from its own thread.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._sys.files import open_nofollow
from ..errors import UsageError

if TYPE_CHECKING:
    import socket

PIPE_BUF = 4096

#: Ctrl-] ends an interactive session, as in ``xl console`` and telnet.
ESCAPE_BYTE = 0x1D


class Console:
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def set_stopping(self, stopping: bool) -> None:
        """While a machine stops, output that cannot be written at once is dropped,
        so a reader that went away never holds a vCPU thread in write()."""

    def start_input(self, sink: Callable[[bytes], int], on_escape: Callable[[], None]) -> None:
        """Begin delivering input to ``sink`` (returns how many bytes it took)."""

    def close(self) -> None:
        pass

    def fds(self) -> list[int]:
        """The descriptors it uses (a confined process keeps them open)."""
        return []


class NullConsole(Console):
    def write(self, data: bytes) -> None:
        pass


class FdConsole(Console):
    """Output to a file descriptor (stdout or an opened file)."""

    def __init__(self, fd: int, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        self.broken = False
        self.stopping = False
        # A pipe, socket or terminal can stay full for ever (nobody reading,
        # Ctrl-S): wait for room in short slices so a stopping machine can give up.
        mode = os.fstat(fd).st_mode
        self.may_block = not stat.S_ISREG(mode)

    def set_stopping(self, stopping: bool) -> None:
        self.stopping = stopping

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.broken:
            if self.may_block:
                while not select.select([], [self.fd], [], 0.1)[1]:
                    if self.stopping:
                        return
            try:
                # at most PIPE_BUF at a time: a writable pipe takes that much without blocking
                n = os.write(self.fd, view[:PIPE_BUF] if self.may_block else view)
            except (InterruptedError, BlockingIOError):
                continue
            except OSError:
                self.broken = True  # reader went away: drop output, keep the guest running
                return
            view = view[n:]

    def fds(self) -> list[int]:
        return [self.fd]

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StdioConsole(FdConsole):
    """The terminal: output to stdout, input from stdin (raw mode if a tty)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout.fileno(), owned=False)
        self.in_fd = sys.stdin.fileno() if sys.stdin is not None else -1
        self._saved: list | None = None  # type: ignore[type-arg]
        self._sink: Callable[[bytes], int] = len  # until a UART is attached: discard
        self._on_escape: Callable[[], None] = lambda: None
        self._started = False

    def start_input(self, sink: Callable[[bytes], int], on_escape: Callable[[], None]) -> None:
        """Deliver input to ``sink``; called again (a restarted guest) it only
        redirects the running input thread."""
        self._sink, self._on_escape = sink, on_escape
        if self.in_fd < 0 or self._started:
            return
        self._started = True
        interactive = os.isatty(self.in_fd)
        if interactive:
            self._saved = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
            attrs = termios.tcgetattr(self.in_fd)
            attrs[1] |= termios.OPOST | termios.ONLCR  # keep "\n" -> "\r\n" on output
            termios.tcsetattr(self.in_fd, termios.TCSANOW, attrs)
        t = threading.Thread(target=self._pump, args=(interactive,), name="console-input", daemon=True)
        t.start()

    def _pump(self, interactive: bool) -> None:
        while True:
            try:
                data = os.read(self.in_fd, 256)
            except OSError:
                return
            if not data:
                return
            if interactive and ESCAPE_BYTE in data:
                self._feed(data[: data.index(ESCAPE_BYTE)])
                self._on_escape()
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        while data:
            n = self._sink(data)
            data = data[n:]
            if data:
                time.sleep(0.002)  # receive FIFO full: let the guest drain it

    def fds(self) -> list[int]:
        return [self.fd, self.in_fd]

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def open_console(spec: str) -> Console:
    """``stdio``, ``file:PATH`` or ``none``."""
    if spec == "stdio":
        return StdioConsole()
    if spec == "none":
        return NullConsole()
    if spec.startswith("file:") and len(spec) > 5:
        path = spec[5:]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"--serial {spec}: cannot open {path}: {e.strerror}") from None
        return FdConsole(fd, owned=True)
    raise UsageError(f"--serial {spec!r}: expected stdio, file:PATH or none")


class LogConsole(Console):
    """A domain's console when no terminal is attached: everything the guest
    writes is appended to a log file (``pyhv dmesg``) and sent to the one
    client connected to a unix socket (``pyhv console``), whose bytes are the
    guest's input.  A client that does not keep up loses output, never the
    guest's time; the log keeps everything up to ``max_log`` bytes, then the
    older half moves to ``PATH.1``.  The log is never opened through a
    symbolic link: one planted at ``log_path`` is a UsageError naming it."""

    def __init__(self, log_path: str, sock_path: str, max_log: int = 8 << 20) -> None:
        from .unixsock import listen_unix

        self.log_path = log_path
        self.sock_path = sock_path
        self.max_log = max_log
        try:
            self.log_fd = self._open_log()
        except OSError as e:
            raise UsageError(f"cannot open the console log {log_path}: {e.strerror or e}") from None
        self.log_size = os.fstat(self.log_fd).st_size
        self._lock = threading.Lock()
        self._client: socket.socket | None = None
        self._sink: Callable[[bytes], int] = len
        self.listener = listen_unix(sock_path, 4)
        self._serving = False  # clients are accepted once a machine takes input (after any confinement)

    def _open_log(self) -> int:
        return open_nofollow(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def write(self, data: bytes) -> None:
        with self._lock:
            try:
                if self.log_fd >= 0:  # not if reopening it after a rotation failed
                    os.write(self.log_fd, data)
                    self.log_size += len(data)
                if self.log_size > self.max_log:
                    self._rotate()
            except OSError:
                pass  # a full disk loses log lines, not the guest
            client = self._client
        if client is not None:
            try:
                client.send(data, 0x40)  # MSG_DONTWAIT
            except OSError:
                pass  # a slow or vanished client misses output

    def _rotate(self) -> None:
        try:
            os.replace(self.log_path, self.log_path + ".1")  # replaces a link at PATH.1, never follows it
        except OSError:
            # a confined VMM sees no log directory: the log starts again in place
            os.ftruncate(self.log_fd, 0)
            self.log_size = 0
            return
        os.close(self.log_fd)
        self.log_fd = -1
        self.log_fd = self._open_log()
        self.log_size = 0

    def start_input(self, sink: Callable[[bytes], int], on_escape: Callable[[], None]) -> None:
        from .unixsock import serve_connections

        self._sink = sink
        if not self._serving:
            self._serving = True
            serve_connections(self.listener, self._attach, "console")

    def _attach(self, conn: socket.socket) -> None:
        with self._lock:
            busy = self._client is not None
            if not busy:
                self._client = conn
        if busy:
            try:
                conn.sendall(b"pyhv: console busy: another client is attached\r\n")
            except OSError:
                pass
            conn.close()
            return
        self._pump(conn)

    def _pump(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(256)
                if not data:
                    break
                while data:
                    n = self._sink(data)
                    data = data[n:]
                    if data:
                        time.sleep(0.002)
        except OSError:
            pass
        finally:
            with self._lock:
                if self._client is conn:
                    self._client = None
            conn.close()

    def fds(self) -> list[int]:
        return [self.log_fd, self.listener.fileno()]

    def close(self) -> None:
        from .unixsock import close_listener

        close_listener(self.listener, self.sock_path)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self.log_fd >= 0:
                os.close(self.log_fd)
                self.log_fd = -1
