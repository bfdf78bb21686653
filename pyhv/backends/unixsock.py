"""Listening unix sockets for the control and console channels."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


def listen_unix(path: str, backlog: int = 16) -> socket.socket:
    """A socket listening on ``path``, mode 0600.  A stale socket there is replaced;
    anything else (a file, a directory, a symbolic link) is never touched: the
    call fails with FileExistsError.  Raises OSError.

    The socket is bound and chmod-ed inside a fresh 0700 directory beside
    ``path`` and then renamed into place, so no name another user can change
    is ever followed, and the socket is never reachable with a wider mode."""
    import stat
    import tempfile

    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(17, "exists and is not a socket", path)
    except FileNotFoundError:
        pass
    private = tempfile.mkdtemp(prefix=".sock-", dir=os.path.dirname(os.path.abspath(path)))
    staged = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(staged)
        os.chmod(staged, 0o600)
        os.rename(staged, path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    finally:
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        os.rmdir(private)
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


def close_listener(sock: socket.socket, path: str | None) -> None:
    """Stop listening on ``sock``; its name ``path`` (None: not a unix socket) goes too."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
