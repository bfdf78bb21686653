"""The registry and the API in-process (faults injected, many connections): no /dev/kvm, no domain process."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyhv.toolstack import hostres, store
from pyhv.toolstack.api import MAX_CONNECTIONS, Api, Handler, Server
from pyhv.toolstack.client import ApiError, Client
from pyhv.model.files import MAX_DEPTH
from pyhv.toolstack.registry import Refused, Registry


class Pyhvd:
    """A registry and its API served on a socket, in this process."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.registry = Registry(str(tmp / "run"), str(tmp / "state"), log=lambda message: None)
        self.api = Api(self.registry)
        self.server = Server(str(tmp / "run" / "pyhvd.sock"), self.api, lambda message: None)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.client = Client(str(tmp / "run" / "pyhvd.sock"), timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.api.pool.shutdown()
        self.registry.close()


@pytest.fixture
def pyhvd(tmp_path: pathlib.Path) -> Iterator[Pyhvd]:
    p = Pyhvd(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _config(name: str) -> dict[str, Any]:
    return {"name": name, "kernel": "/nonexistent/kernel", "memory": 32}


def _full(*args: Any, **kwargs: Any) -> Any:
    raise OSError(28)


def test_a_create_refused_by_a_full_state_directory_releases_its_name(
    pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Registry, "_next_id", _full)
    with pytest.raises(ApiError) as e:
        pyhvd.client.post("/domains", {"config": _config("web")})
    assert (e.value.http_status, str(e.value)) == (503, "cannot create domain web: No space left on device")
    assert pyhvd.registry._starting == set()
    pyhvd.registry.admit_plain(_config("web"))  # the name is free again


def test_a_create_refused_after_its_directories_were_made_removes_them(
    pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(store, "write_json", _full)
    with pytest.raises(ApiError) as e:
        pyhvd.client.post("/domains", {"config": _config("web")})
    assert e.value.http_status == 503 and "\n" not in str(e.value) and "No space left" in str(e.value)
    assert pyhvd.registry._starting == set()
    assert os.listdir(tmp_path / "run" / "domains") == []
    assert os.listdir(tmp_path / "state" / "domains") == []


def test_a_refused_create_keeps_a_log_directory_it_did_not_make(
    pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    kept = tmp_path / "state" / "domains" / "web"
    kept.mkdir(parents=True)
    monkeypatch.setattr(store, "write_json", _full)
    with pytest.raises(ApiError):
        pyhvd.client.post("/domains", {"config": _config("web")})
    assert kept.is_dir()


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def test_connections_beyond_the_limit_get_503_and_threads_stay_bounded(pyhvd: Pyhvd) -> None:
    threads_before = threading.active_count()
    idle = [_connect(pyhvd.client.path) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        excess = [s.recv(4096) for s in idle[MAX_CONNECTIONS:]]
        threads_busy = threading.active_count()
        for s in idle[:10]:
            s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                domains = pyhvd.client.get("/domains")
                break
            except ApiError as e:
                assert e.http_status == 503
                time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 503 ") for r in excess), excess
    errors = [json.loads(r.partition(b"\r\n\r\n")[2])["error"] for r in excess]
    assert errors == [f"pyhvd is busy: {MAX_CONNECTIONS} connections open already; try again"] * 10
    assert threads_busy <= threads_before + MAX_CONNECTIONS
    assert domains == []


def test_an_idle_connection_is_dropped_after_the_timeout(pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Handler, "timeout", 0.3)
    s = _connect(pyhvd.client.path)
    try:
        assert s.recv(4096) == b""  # closed by pyhvd, not by the 5 s timeout here
    finally:
        s.close()


def _raw(pyhvd: Pyhvd, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("pyhvd", timeout=10)
    conn.sock = _connect(pyhvd.client.path)
    try:
        conn.request("POST", "/domains", body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000, 200_000])
def test_a_deeply_nested_request_body_is_400(pyhvd: Pyhvd, depth: int) -> None:
    status, reply = _raw(pyhvd, b'{"config": ' + b"[" * depth + b"]" * depth + b"}")
    assert (status, reply) == (400, {"error": f"the request body nests arrays or objects more than {MAX_DEPTH} deep"})
    assert pyhvd.client.get("/domains") == []


def test_a_request_body_over_1_mib_is_413(pyhvd: Pyhvd) -> None:
    status, reply = _raw(pyhvd, b"", {"Content-Length": str((1 << 20) + 1)})
    assert (status, reply) == (413, {"error": f"the request body is larger than {1 << 20} bytes"})


@pytest.mark.parametrize("name", ["1", "a\n"])
def test_a_name_that_is_all_digits_or_ends_in_a_newline_is_400(pyhvd: Pyhvd, name: str) -> None:
    with pytest.raises(ApiError) as e:
        pyhvd.client.post("/domains", {"config": _config(name)})
    assert e.value.http_status == 400 and str(e.value).startswith("name: ")
    assert pyhvd.registry._starting == set()


def test_more_memory_than_the_host_has_is_refused_with_the_numbers(pyhvd: Pyhvd) -> None:
    with open("/proc/meminfo") as f:
        host_mib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) >> 10
    with pytest.raises(ApiError) as e:
        pyhvd.client.post("/domains", {"config": {**_config("big"), "memory": "1T"}})
    assert (e.value.http_status, str(e.value)) == (
        400, f"memory: 1048576 MiB is more than this host's {host_mib} MiB of RAM")
    assert pyhvd.registry._starting == set()


def test_memory_within_the_host_is_admitted(pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostres, "host_memory", lambda: 1 << 30)
    assert pyhvd.registry.admit_plain({**_config("fits"), "memory": "1G"}).memory == 1 << 30
    with pytest.raises(Refused, match="1025 MiB is more than this host's 1024 MiB"):
        pyhvd.registry.admit_plain({**_config("over"), "memory": "1025M"})


def test_a_clone_refused_midway_destroys_the_started_ones_and_releases_every_name(
    pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyhv import model
    from pyhv.toolstack.record import DomainRecord

    registry = pyhvd.registry
    started: list[str] = []
    destroyed: list[str] = []

    def start(description: model.Description, paused: bool = False, restore: str = "",
              verify: bool = False) -> DomainRecord:
        with registry.lock:
            registry._starting.discard(description.name)
        if description.name == "web-3":
            raise Refused("cannot create domain web-3: no space left on device", 503)
        started.append(description.name)
        return DomainRecord(len(started), description, "/run", "/log")

    monkeypatch.setattr(registry, "_saved", lambda path: model.describe(name="web", kernel="/k"))
    monkeypatch.setattr(registry, "start", start)
    monkeypatch.setattr(registry, "destroy", lambda record: destroyed.append(record.name))

    with pytest.raises(Refused, match="web-3"):
        registry.clone("/snapshots/web.snap", 5, "web")

    assert sorted(destroyed) == sorted(started) == ["web-1", "web-2", "web-4", "web-5"]
    assert registry._starting == set()
