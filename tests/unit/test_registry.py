"""The registry and the API in-process, with faults injected: no /dev/kvm, no domain process."""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pyhv.toolstack import registry as registry_module
from pyhv.toolstack.api import Api, Server
from pyhv.toolstack.client import ApiError, Client
from pyhv.toolstack.registry import Registry


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
    pyhvd.registry._admit(_config("web"))  # the name is free again


def test_a_create_refused_after_its_directories_were_made_removes_them(
    pyhvd: Pyhvd, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(registry_module, "_write_json", _full)
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
    monkeypatch.setattr(registry_module, "_write_json", _full)
    with pytest.raises(ApiError):
        pyhvd.client.post("/domains", {"config": _config("web")})
    assert kept.is_dir()
