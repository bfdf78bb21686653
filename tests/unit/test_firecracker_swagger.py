"""Firecracker v1.10.1's swagger against pyhv's Firecracker request router (no VM):
every route it documents is either served or refused as unsupported by name, and
anything else is answered as Firecracker answers it."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from pyhv.firecracker.log import Log
from pyhv.firecracker.vmm import Microvm

#: every path and method of firecracker.yaml at v1.10.1 (src/firecracker/swagger), in its order
SWAGGER_1_10_1 = [
    ("GET", "/"),
    ("PUT", "/actions"),
    ("GET", "/balloon"),
    ("PUT", "/balloon"),
    ("PATCH", "/balloon"),
    ("GET", "/balloon/statistics"),
    ("PATCH", "/balloon/statistics"),
    ("PUT", "/boot-source"),
    ("PUT", "/cpu-config"),
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/logger"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/metrics"),
    ("PUT", "/mmds"),
    ("PATCH", "/mmds"),
    ("GET", "/mmds"),
    ("PUT", "/mmds/config"),
    ("PUT", "/entropy"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("GET", "/version"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
    ("PUT", "/vsock"),
]

#: the routes pyhv refuses, each with the words its refusal starts with (README's table says the same)
UNSUPPORTED = {
    ("GET", "/balloon/statistics"): "balloon statistics",
    ("PATCH", "/balloon/statistics"): "balloon statistics",
    ("PUT", "/cpu-config"): "cpu-config (CPU templates)",
    ("PUT", "/mmds"): "MMDS",
    ("PATCH", "/mmds"): "MMDS",
    ("GET", "/mmds"): "MMDS",
    ("PUT", "/mmds/config"): "MMDS",
}
SUFFIX = ": not supported by pyhv's Firecracker front end"


def _vm(tmp_path: pathlib.Path) -> Microvm:
    log = Log("swagger")
    log.configure(log_path=str(tmp_path / "log"))
    return Microvm("swagger", log)


def _concrete(path: str) -> str:
    return path.replace("{drive_id}", "rootfs").replace("{iface_id}", "eth0")


def _ask(vm: Microvm, method: str, path: str) -> tuple[int, Any]:
    # a body each route can at least parse as the wrong shape: served routes say what is wrong with it
    return vm.handle(method, _concrete(path), None if method == "GET" else {"nonesuch": 1})


def test_the_list_has_every_route_once() -> None:
    assert (len(SWAGGER_1_10_1), len(set(SWAGGER_1_10_1)), set(UNSUPPORTED) <= set(SWAGGER_1_10_1)) == (29, 29, True)


@pytest.mark.parametrize("method,path", SWAGGER_1_10_1)
def test_each_swagger_route_is_served_or_refused_as_unsupported(tmp_path: pathlib.Path, method: str, path: str) -> None:
    status, body = _ask(_vm(tmp_path), method, path)
    message = body["fault_message"] if isinstance(body, dict) and "fault_message" in body else ""
    if (method, path) in UNSUPPORTED:
        assert (status, message) == (400, UNSUPPORTED[(method, path)] + SUFFIX)
    else:
        assert (SUFFIX in message, message.startswith("Invalid request method and/or path")) == (False, False)
        assert status in (200, 204, 400)


@pytest.mark.parametrize("method,path,first", [
    ("GET", "/nonesuch", "nonesuch"), ("PUT", "/vm/config", "vm"), ("GET", "/vm/state", "vm"),
    ("PATCH", "/boot-source", "boot-source"), ("GET", "/drives/rootfs", "drives"), ("PUT", "/version", "version"),
])
def test_unknown_paths_answer_as_firecracker_does(tmp_path: pathlib.Path, method: str, path: str, first: str) -> None:
    status, body = _vm(tmp_path).handle(method, path, None if method == "GET" else {})
    assert (status, body) == (400, {"fault_message": f"Invalid request method and/or path: {method} {first}."})


@pytest.mark.parametrize("method,path,body,message", [
    ("GET", "/", {}, "GET request cannot have a body."),
    ("PUT", "/boot-source", None, "Empty PUT request."),
    ("PATCH", "/vm", None, "Empty PATCH request."),
    ("PUT", "/nonesuch", None, "Empty PUT request."),
    ("PUT", "/drives/", {"drive_id": ""}, "The ID cannot be empty."),
    ("DELETE", "/", None, "Unsupported HTTP method 'DELETE': Firecracker's API takes GET, PUT and PATCH."),
])
def test_requests_firecracker_refuses_whatever_the_path(
    tmp_path: pathlib.Path, method: str, path: str, body: Any, message: str,
) -> None:
    assert _vm(tmp_path).handle(method, path, body) == (400, {"fault_message": message})
