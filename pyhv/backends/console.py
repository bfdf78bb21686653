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

from ..errors import UsageError

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
