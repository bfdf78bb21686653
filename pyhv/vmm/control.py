"""The domain control socket: one JSON request line, one JSON reply line.

A request is an object with ``op`` and its arguments, e.g.
``{"op": "mem-set", "bytes": 134217728}``; the reply is ``{"ok": true, ...}``
or ``{"ok": false, "error": "one line"}``.  One request per connection keeps
both ends trivial, and a stuck domain costs the caller one timeout, nothing
more.  The socket is 0600: only root (pyhvd) talks to a domain.

A handler may answer with a :class:`Stream` instead of fields: after the reply
line the connection is the stream's (``pyhv attach``'s prompt), served on the
request's thread until it ends.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..backends.unixsock import close_listener, listen_unix, serve_connections
from ..errors import PyhvError

MAX_REQUEST = 64 << 10


class ControlError(PyhvError):
    """The domain refused the request, or (``transport``) could not be reached or did not answer."""

    def __init__(self, message: str, transport: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.transport = transport
        self.timeout = timeout


class Stream(NamedTuple):
    """A reply after which the connection is handed to ``serve(conn)``."""

    reply: dict[str, Any]
    serve: Callable[[socket.socket], None]


class Server:
    """Serve ``handler(request) -> reply fields`` on a unix socket, one thread per request."""

    def __init__(
        self, path: str, handler: Callable[[dict[str, Any]], dict[str, Any] | Stream],
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: already listening on ``path`` (bound before the process was confined)."""
        self.path = path
        self.handler = handler
        self._busy = 0  # requests being answered
        self._idle = threading.Condition()
        self._streams: set[socket.socket] = set()  # connections handed to a Stream
        self.sock = sock if sock is not None else listen_unix(path, 64)
        serve_connections(self.sock, self._serve, "control")

    def _serve(self, conn: socket.socket) -> None:
        with self._idle:
            self._busy += 1
        stream = None
        try:
            with conn:
                conn.settimeout(5.0)
                fds: list[int] = []
                try:
                    reply, stream = self._reply(_read_line(conn, fds)[0], fds)
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    stream = None  # the caller went away
                finally:
                    for fd in fds:
                        os.close(fd)
                if stream is not None:
                    self._done()  # a stream is not a request in flight: close() need not wait for it
                    with self._idle:
                        self._streams.add(conn)
                    try:
                        stream.serve(conn)
                    except OSError:
                        pass
                    finally:
                        with self._idle:
                            self._streams.discard(conn)
        finally:
            if stream is None:
                self._done()

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _reply(self, line: bytes, fds: list[int]) -> tuple[dict[str, Any], Stream | None]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}, None
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}, None
        request.pop("fd", None)  # only ever the descriptor that came with the request (SCM_RIGHTS)
        if fds:
            request["fd"] = fds[0]
        try:
            answer = self.handler(request)
        except PyhvError as e:
            return {"ok": False, "error": str(e)}, None
        except Exception as e:  # noqa: BLE001 - a bug fails the request, not the domain
            return {"ok": False, "error": f"internal error: {e!r}"}, None
        if isinstance(answer, Stream):
            return {"ok": True, **answer.reply}, answer
        return {"ok": True, **answer}, None

    def close(self, wait: float = 5.0) -> None:
        """Stop listening; let requests in flight (e.g. the migration that ended
        the domain) send their answers, for up to ``wait`` seconds."""
        close_listener(self.sock, self.path)
        with self._idle:
            for conn in self._streams:  # an open prompt ends with the domain
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._idle.wait_for(lambda: self._busy == 0, wait)


def _read_line(conn: socket.socket, fds: list[int] | None = None) -> tuple[bytes, bytes]:
    """The first line on ``conn`` (without its newline), and what arrived after it;
    descriptors sent with it (SCM_RIGHTS, at most one) go to ``fds``."""
    data = b""
    while b"\n" not in data:
        if fds is not None:
            chunk, got, _, _ = socket.recv_fds(conn, 65536, 1)
            fds.extend(got)
        else:
            chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise OSError("request too long")
    line, _, rest = data.partition(b"\n")
    return line, rest


def _request(
    path: str, request: dict[str, Any], timeout: float, fds: tuple[int, ...] = (),
) -> tuple[socket.socket, dict[str, Any], bytes]:
    """Send one request (with ``fds``, SCM_RIGHTS): the open connection, the
    reply's fields, and what followed the reply line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.settimeout(timeout)
            s.connect(path)
            data = json.dumps(request).encode() + b"\n"
            if fds:
                sent = socket.send_fds(s, [data], list(fds))
                data = data[sent:]
            if data:  # sendall(b"") still sends: after a quick reply and close that is EPIPE
                s.sendall(data)
            line, rest = _read_line(s)
        except TimeoutError:
            raise ControlError(f"no answer within {timeout:g} s", transport=True, timeout=True) from None
        except OSError as e:
            raise ControlError(f"cannot reach the domain: {e.strerror or e}", transport=True) from None
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError("the domain's reply is not JSON", transport=True) from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else None
            raise ControlError(str(error or "request failed"))
    except BaseException:
        s.close()
        raise
    reply.pop("ok")
    return s, reply, rest


def call(path: str, request: dict[str, Any], timeout: float = 5.0, fds: tuple[int, ...] = ()) -> dict[str, Any]:
    """Send one request (and ``fds`` with it); the reply's fields, or ControlError with the domain's message."""
    s, reply, _ = _request(path, request, timeout, fds)
    s.close()
    return reply


def open_stream(path: str, request: dict[str, Any], timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Send a request the domain answers with a :class:`Stream`: the connection
    (blocking, the stream's from now on) and the stream's first bytes, which may
    have come with the reply line."""
    s, _, rest = _request(path, request, timeout)
    s.settimeout(None)
    return s, rest


# --- the readiness channel between pyhvd and a starting domain process (a socketpair) ---


def send_message(fd: int, message: dict[str, Any]) -> None:
    """One JSON line on a descriptor (raises OSError)."""
    os.write(fd, json.dumps(message).encode() + b"\n")


def read_message(fd: int, timeout: float) -> dict[str, Any] | str:
    """The next JSON-object line on ``fd``, or why there is none: "timeout",
    "closed" or "garbled"."""
    import select
    import time

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "timeout"
        chunk = os.read(fd, 65536)
        if not chunk:
            return "closed"
        data += chunk
        if len(data) > MAX_REQUEST:
            return "garbled"
    try:
        value = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return "garbled"
    return value if isinstance(value, dict) else "garbled"
