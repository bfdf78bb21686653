"""``pyhv attach``: an interactive Python prompt inside a running domain process.

The domain's control socket answers ``{"op": "repl"}`` with one reply line and
then hands the connection to :func:`serve`, which runs a
:class:`code.InteractiveConsole` over it on the connection's own thread.  The
prompt's namespace holds ``machine`` (the :class:`~pyhv.vmm.machine.Machine`
running now: ``machine.vcpus[i].registers()``, ``machine.memory``), ``runtime``
and ``description``; :doc:`docs/INTROSPECTION.md` lists what they offer.

What code typed at the prompt prints goes back over the socket: ``sys.stdout``
and ``sys.stderr`` are replaced once by a proxy that writes to the socket for
the REPL's thread and to the original stream for every other thread.  The
socket is the control socket (0600), so only root reaches the prompt; the code
runs with the domain process's rights.  An
exception in typed code is printed at the prompt; the domain carries on.

The client is the ``attach`` verb (``toolstack/xl.py``): it copies standard
input to the connection and the connection to standard output.
"""

from __future__ import annotations

import code
import os
import socket
import sys
import threading
from typing import Any, TextIO

BANNER = ("pyhv: Python prompt in domain {name} (pid {pid}); names: machine, runtime, description; "
          "Ctrl-D detaches, the domain runs on")
MAX_LINE = 64 << 10


class _Streams:
    """``sys.stdout`` / ``sys.stderr`` for every thread: a REPL thread's writes go
    to its socket, the others' to the stream that was there before."""

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self.local = threading.local()

    def write(self, text: str) -> int:
        target = getattr(self.local, "target", None)
        if target is None:
            return self.original.write(text)
        target(text)
        return len(text)

    def flush(self) -> None:
        if getattr(self.local, "target", None) is None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


_install_lock = threading.Lock()


def _streams() -> tuple[_Streams, _Streams]:
    with _install_lock:
        if not isinstance(sys.stdout, _Streams):
            sys.stdout = _Streams(sys.stdout)  # type: ignore[assignment]
        if not isinstance(sys.stderr, _Streams):
            sys.stderr = _Streams(sys.stderr)  # type: ignore[assignment]
        return sys.stdout, sys.stderr  # type: ignore[return-value]


class _Console(code.InteractiveConsole):
    def __init__(self, conn: socket.socket, namespace: dict[str, Any]) -> None:
        super().__init__(namespace, filename="<pyhv>")
        self.conn = conn
        self.pending = b""

    def send(self, text: str) -> None:
        try:
            self.conn.sendall(text.encode("utf-8", "replace"))
        except OSError:
            raise EOFError from None  # the client went away: end the prompt

    def write(self, data: str) -> None:  # tracebacks and syntax errors
        self.send(data)

    def raw_input(self, prompt: str = "") -> str:
        self.send(prompt)
        while b"\n" not in self.pending:
            try:
                chunk = self.conn.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                if self.pending:
                    line, self.pending = self.pending, b""
                    return line.decode("utf-8", "replace")
                raise EOFError
            self.pending += chunk
            if len(self.pending) > MAX_LINE:
                self.pending = b""
                self.send("\npyhv: line too long; dropped\n")
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")


def serve(conn: socket.socket, namespace: dict[str, Any], name: str) -> None:
    """Run the prompt on ``conn`` until the client ends it (the caller's thread)."""
    conn.settimeout(None)

    def leave(code: object = None) -> None:
        raise SystemExit(code)

    # domain processes run without site (python -S), which is where exit() and quit() come from
    console = _Console(conn, {"exit": leave, "quit": leave, **namespace})
    out, err = _streams()
    out.local.target = err.local.target = console.send
    try:
        console.interact(banner=BANNER.format(name=name, pid=os.getpid()), exitmsg="")
    except SystemExit:
        pass  # exit() at the prompt ends the prompt, not the domain
    except EOFError:
        pass
    finally:
        out.local.target = err.local.target = None
