"""A client for pyhvd's API on its unix socket (used by the ``pyhv`` verbs and tests)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from ..errors import PyhvError


class ApiError(PyhvError):
    """pyhvd refused a request; 400s are bad usage (status 2), the rest refusals (1)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.exit_status = 2 if status == 400 else 1


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("pyhvd", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, path: str, timeout: float = 90.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded reply (JSON, or text for /metrics); ApiError for 4xx/5xx."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise PyhvError(f"pyhvd is not running (nothing listens on {self.path}); start it with `pyhvd`") from None
            except PermissionError:
                raise PyhvError(f"{self.path}: permission denied (pyhvd's socket is root's)") from None
            except TimeoutError:
                raise PyhvError(f"pyhvd did not answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                raise PyhvError(f"talking to pyhvd: {e}") from None
        finally:
            conn.close()
        ctype = response.getheader("Content-Type", "")
        value: Any = raw.decode("utf-8", "replace")
        if ctype.startswith("application/json"):
            try:
                value = json.loads(raw)
            except ValueError:
                raise PyhvError("pyhvd sent a reply that is not JSON") from None
        if response.status >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            raise ApiError(response.status, str(message or f"HTTP {response.status}"))
        return value

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, {} if body is None else body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


