"""A plain HTTP/1.1 client for a Firecracker API unix socket (what Kata's Go client
and curl send): one connection per call, JSON bodies."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def call(sock: str, method: str, path: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
    """One request; the status and the decoded JSON body (None when there is none)."""
    conn = UnixConnection(sock, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    finally:
        conn.close()
