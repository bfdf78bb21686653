"""A running domain's control socket (``pyhv run --control PATH``).

A unix stream socket; each line a client writes is one command, answered by
one line.  ``ok ...`` on success, ``error ...`` otherwise; the machine and the
VMM carry on either way.

    balloon SIZE    ask the guest to give SIZE back (256M, 1G, 0 to deflate)
    balloon         the balloon's target and what the guest reports it holds
    info            vCPUs and memory

The machine may change under the server (a guest reboot with
``--on-reboot restart`` builds a new one), so it asks ``current()`` each time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends.unixsock import close_listener, listen_unix, serve_connections
from ..errors import PyhvError, UsageError
from .config import parse_size

if TYPE_CHECKING:
    from .machine import Machine

MAX_LINE = 256


def handle(machine: Machine | None, line: str) -> str:
    """The answer to one command line."""
    words = line.split()
    if machine is None:
        return "error no machine is running"
    if words == ["info"]:
        return f"ok vcpus={machine.config.vcpus} memory={machine.memory.size}"
    if words[:1] == ["balloon"] and len(words) <= 2:
        balloon = machine.balloon
        if balloon is None:
            return "error this machine has no balloon device (--balloon)"
        if len(words) == 2:
            try:
                machine.set_balloon_target(parse_size(words[1], "balloon size"))
            except PyhvError as e:
                return f"error {e}"
        return f"ok target={balloon.target_pages << 12} actual={balloon.actual_pages << 12}"
    return f"error unknown command {line.strip()[:40]!r} (balloon [SIZE], info)"


class ControlServer:
    def __init__(self, path: str, current: Callable[[], Machine | None]) -> None:
        self.path = path
        self.current = current
        if os.path.isdir(path):
            raise UsageError(f"--control {path}: is a directory")
        try:
            self.sock = listen_unix(path, 4)
        except OSError as e:
            raise UsageError(f"--control {path}: cannot listen: {e.strerror or e}") from None
        serve_connections(self.sock, self._client, "control")

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as f:
            while True:
                try:
                    raw = f.readline(MAX_LINE)
                except OSError:
                    return
                if not raw:
                    return
                answer = handle(self.current(), raw.decode(errors="replace"))
                try:
                    f.write(answer.encode() + b"\n")
                except OSError:
                    return

    def close(self) -> None:
        close_listener(self.sock, self.path)
