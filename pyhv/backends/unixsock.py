"""Listening unix sockets for the control and console channels."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


def listen_unix(path: str, backlog: int = 16) -> socket.socket:
    """A socket listening on ``path``, mode 0600 (a stale socket file there is replaced).
    Raises OSError."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def serve_connections(sock: socket.socket, handle: Callable[[socket.socket], None], name: str) -> threading.Thread:
    """Accept on ``sock`` in a thread ``name`` until it is closed; each connection
    goes to ``handle`` in a thread of its own."""

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=handle, args=(conn,), name=f"{name}-client", daemon=True).start()

    thread = threading.Thread(target=accept, name=name, daemon=True)
    thread.start()
    return thread


def close_listener(sock: socket.socket, path: str) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass
