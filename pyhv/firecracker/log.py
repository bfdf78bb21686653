"""The front end's log, configured as Firecracker's is (``--log-path``, ``--level``,
``--show-level``, ``--show-log-origin`` or ``PUT /logger``).

Lines look like Firecracker's: ``TIME [ID:THREAD(:LEVEL)(:FILE:LINE)] message``.
Without a log path they go to stderr (stdout carries the guest's serial console).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from .config import Fault

LEVELS = {"off": 0, "error": 1, "warning": 2, "warn": 2, "info": 3, "debug": 4, "trace": 5}
_NAMES = {1: "ERROR", 2: "WARN", 3: "INFO", 4: "DEBUG", 5: "TRACE"}


class Log:
    def __init__(self, instance_id: str) -> None:
        self.id = instance_id
        self.level = LEVELS["info"]
        self.path = ""
        self.show_level = False
        self.show_origin = False
        self.module = ""
        self._fd = 2
        self._lock = threading.Lock()
        self._once: set[str] = set()

    def configure(self, log_path: str | None = None, level: str | None = None, show_level: bool | None = None,
                  show_log_origin: bool | None = None, module: str | None = None) -> None:
        """Change the settings given; a bad one changes nothing."""
        new_level = self.level
        if level is not None:
            if level.lower() not in LEVELS:
                raise Fault(f"logger.level: {level!r:.20} is not one of Error, Warning, Info, Debug, Trace, Off")
            new_level = LEVELS[level.lower()]
        fd = None
        if log_path is not None:
            try:  # O_NONBLOCK: a named pipe nobody reads must not stop the VMM
                fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise Fault(f"logger.log_path: cannot open {log_path!r}: {e.strerror}") from None
        with self._lock:
            self.level = new_level
            if fd is not None:
                if self._fd != 2:
                    os.close(self._fd)
                self._fd, self.path = fd, str(log_path)
            if show_level is not None:
                self.show_level = show_level
            if show_log_origin is not None:
                self.show_origin = show_log_origin
            if module is not None:
                self.module = module

    def settings(self) -> dict[str, Any]:
        level = next(k for k, v in LEVELS.items() if v == self.level).capitalize()
        return {"log_path": self.path or None, "level": level, "show_level": self.show_level,
                "show_log_origin": self.show_origin}

    def write(self, level: int, message: str) -> None:
        if level > self.level:
            return
        tag = f"{self.id}:{threading.current_thread().name}"
        if self.show_level:
            tag += f":{_NAMES[level]}"
        if self.show_origin:
            frame = sys._getframe(2)
            tag += f":{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}"
        line = f"{stamp} [{tag}] {message}\n".encode()
        with self._lock:
            try:
                os.write(self._fd, line)
            except OSError:
                pass  # a full pipe or a closed file loses the line, never the VM

    def error(self, message: str) -> None:
        self.write(1, message)

    def warn(self, message: str) -> None:
        self.write(2, message)

    def info(self, message: str) -> None:
        self.write(3, message)

    def debug(self, message: str) -> None:
        self.write(4, message)

    def once(self, message: str) -> None:
        """A warning said once per process (options pyhv accepts but cannot honour)."""
        if message not in self._once:
            self._once.add(message)
            self.warn(message)
