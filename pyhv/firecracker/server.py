"""Firecracker's REST API on a unix socket: HTTP/1.1 with keep-alive, JSON bodies.

The server threads only parse HTTP; :meth:`pyhv.firecracker.vmm.Microvm.handle`
answers each request.  Firecracker's conventions: 204 and no body for a PUT or
PATCH that succeeded, 200 and JSON for a GET, 400 with ``{"fault_message": ...}``
for everything refused, including paths and methods it does not serve.
"""

from __future__ import annotations

import json
import os
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..errors import UsageError
from .vmm import Microvm, fault

#: Firecracker's default --http-api-max-payload-size
MAX_PAYLOAD = 51200


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # an idle keep-alive connection is dropped after this
    server_version = f"pyhv-firecracker/{__version__}"
    server: Server

    def setup(self) -> None:
        threading.current_thread().name = "fc_api"
        super().setup()

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        self.server.microvm.log.debug(format % args)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        body, problem = self._body()
        if problem:
            status, payload = 400, fault(problem)
        else:
            try:
                status, payload = self.server.microvm.handle(self.command, path, body)
            except Exception as e:  # noqa: BLE001 - a bug fails the request, not the microVM
                self.server.microvm.log.error(f"internal error on {self.command} {path}: {e!r}")
                status, payload = 500, fault(f"internal error: {e!r}")
        self._send(status, payload)

    def _body(self) -> tuple[Any, str]:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return None, "chunked request bodies are not accepted; send Content-Length"
        if length is None or length == "0":
            return None, ""
        if not length.isdigit() or int(length) > self.server.max_payload:
            self.close_connection = True
            return None, f"the request body is larger than {self.server.max_payload} bytes"
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw), ""
        except (ValueError, UnicodeDecodeError):
            return None, "the request body is not valid JSON"

    def _send(self, status: int, payload: Any) -> None:
        try:
            self.send_response(status)
            if payload is None:
                self.end_headers()
            else:
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _dispatch


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, microvm: Microvm, max_payload: int = MAX_PAYLOAD) -> None:
        self.microvm = microvm
        self.max_payload = max_payload
        self.path = path
        if os.path.lexists(path):  # as Firecracker: an existing socket file is not taken over
            raise UsageError(f"--api-sock {path}: already exists (remove it, or is another VMM using it?)")
        try:
            super().__init__(path, Handler)
        except OSError as e:
            raise UsageError(f"--api-sock {path}: cannot listen: {e.strerror or e}") from None
        self._inode = os.stat(path).st_ino
        self._thread = threading.Thread(target=self.serve_forever, args=(0.2,), name="fc-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        try:  # remove the socket only if it is still ours
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
