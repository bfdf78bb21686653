"""pyhv as Firecracker, driven by the PyPI Firecracker clients' ``Api`` class: the probe
boots and passes, pauses and resumes, and comes back from a snapshot in a fresh process.

Each client runs in its own environment (scripts/setup: build/fcclients/), through
tests/integration/fc_client.py.  Their high-level ``MicroVM`` class cannot be used
here: its constructor connects to a Docker daemon, and it runs
/usr/local/bin/firecracker with Linux boot arguments and NAT rules of its own.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import PROBE, ROOT
from .fc_process import RESULT, Firecracker
from .probe import Run

pytestmark = pytest.mark.kvm

CLIENTS = {"hysn-firecracker-python": "hysn", "firecracker-python": "plain"}
DRIVER = pathlib.Path(__file__).with_name("fc_client.py")


def client(name: str, sock: str, *steps: list[Any]) -> list[dict[str, Any]]:
    """Run ``steps`` through the client's Api on ``sock``; each step's answer."""
    python = ROOT / "build" / "fcclients" / CLIENTS[name] / "bin" / "python"
    assert python.exists(), f"{python} is missing: run scripts/setup"
    p = subprocess.run([str(python), str(DRIVER), sock, json.dumps(steps)], capture_output=True, text=True,
                       timeout=120, check=False, stdin=subprocess.DEVNULL)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, p.stdout + p.stderr
    result: list[dict[str, Any]] = json.loads(lines[0][len("RESULT "):])
    return result


def boot_steps(cmdline: str) -> list[list[Any]]:
    return [
        ["put", "boot", {"kernel_image_path": str(PROBE), "boot_args": cmdline}],
        ["put", "machine_config", {"vcpu_count": 1, "mem_size_mib": 64}],
        ["put", "actions", {"action_type": "InstanceStart"}],
        ["get", "describe"],
    ]


@pytest.fixture
def vms(tmp_path: pathlib.Path) -> Iterator[list[Firecracker]]:
    made: list[Firecracker] = []
    yield made
    for vm in made:
        vm.close()


@pytest.mark.parametrize("name", CLIENTS)
def test_client_boots_the_probe_and_it_passes(tmp_path: pathlib.Path, vms: list[Firecracker], name: str) -> None:
    vm = Firecracker(tmp_path, "boot")
    vms.append(vm)
    answers = client(name, vm.sock, ["get", "version"], *boot_steps("probe.test=hello"))
    text = vm.wait_for(RESULT)
    run = Run(0, text, "")
    assert answers[0]["json"] == {"firecracker_version": "1.10.1"}
    assert [a.get("status") for a in answers[1:4]] == [204, 204, 204]
    assert answers[4]["json"]["state"] == "Running"
    assert (run.line("boot")["cmdline"], run.line("hello")["cpl"], run.line("result")["result"]) == (
        "probe.test=hello", "3", "pass")


@pytest.mark.parametrize("name", CLIENTS)
def test_client_errors_carry_the_fault_message(tmp_path: pathlib.Path, vms: list[Firecracker], name: str) -> None:
    vm = Firecracker(tmp_path, "errors")
    vms.append(vm)
    answers = client(name, vm.sock,
                     ["put", "machine_config", {"vcpu_count": 64, "mem_size_mib": 64}],
                     ["patch", "vm", {"state": "Paused"}],
                     ["get", "mmds"],
                     ["get", "machine_config"])
    assert [a.get("error") for a in answers[:3]] == [
        "API fault: machine-config.vcpu_count: must be between 1 and 32",
        "API fault: vm: not supported before the microVM has started",
        "API fault: MMDS: not supported by pyhv's Firecracker front end",
    ]
    assert answers[3]["json"]["vcpu_count"] == 1


@pytest.mark.parametrize("name", CLIENTS)
def test_client_pauses_and_resumes_the_guest(tmp_path: pathlib.Path, vms: list[Firecracker], name: str) -> None:
    vm = Firecracker(tmp_path, "pause")
    vms.append(vm)
    client(name, vm.sock, *boot_steps("probe.test=ticker probe.n=20"))
    vm.wait_for(r"tick n=5 ")
    paused = client(name, vm.sock, ["patch", "vm", {"state": "Paused"}], ["get", "describe"])
    at_pause = vm.ticks()[-1]
    time.sleep(0.5)
    during = vm.ticks()[-1]
    resumed = client(name, vm.sock, ["patch", "vm", {"state": "Resumed"}], ["get", "describe"])
    vm.wait_for(rf"tick n={at_pause + 5} ")
    after = vm.ticks()
    assert (paused[0]["status"], paused[1]["json"]["state"], during) == (204, "Paused", at_pause)
    assert (resumed[0]["status"], resumed[1]["json"]["state"]) == (204, "Running")
    assert after == list(range(1, len(after) + 1))  # no tick lost or repeated across the pause


@pytest.mark.parametrize("name", CLIENTS)
def test_snapshot_created_by_a_client_runs_on_in_a_fresh_process(
    tmp_path: pathlib.Path, vms: list[Firecracker], name: str
) -> None:
    snap, mem = str(tmp_path / "vm.snap"), str(tmp_path / "vm.mem")
    first = Firecracker(tmp_path, "first")
    vms.append(first)
    client(name, first.sock, *boot_steps("probe.test=ticker probe.n=20"))
    first.wait_for(r"tick n=5 ")
    created = client(name, first.sock, ["patch", "vm", {"state": "Paused"}],
                     ["put", "create_snapshot", {"snapshot_path": snap, "mem_file_path": mem}])
    saved_at = first.ticks()[-1]
    first.close()
    second = Firecracker(tmp_path, "second")
    vms.append(second)
    loaded = client(name, second.sock,
                    ["put", "load_snapshot", {"snapshot_path": snap,
                                              "mem_backend": {"backend_type": "File", "backend_path": mem},
                                              "resume_vm": True}],
                    ["get", "describe"], ["get", "vm_config"])
    text = second.wait_for(rf"tick n={saved_at + 3} ")
    assert [a.get("status") for a in created + loaded[:1]] == [204, 204, 204]
    assert (loaded[1]["json"]["state"], loaded[2]["json"]["boot-source"]["boot_args"]) == (
        "Running", "probe.test=ticker probe.n=20")
    assert (os.readlink(mem), "probe: boot" in text) == (snap, False)
    # the guest goes on from where it was saved (a line cut by the pause may be lost)
    assert saved_at < second.ticks()[0] <= saved_at + 2


def test_config_file_without_api_boots_the_probe(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(PROBE), "boot_args": "probe.test=hello"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "drives": [], "network-interfaces": [], "entropy": {},
    }))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pyhv", "firecracker", "--no-api", "--config-file", str(config),
                          "--boot-timer"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    guard = threading.Timer(60, p.terminate)  # a guest that prints less must not hang the test
    guard.start()
    try:
        assert p.stdout is not None
        lines = [p.stdout.readline() for _ in range(3)]
    finally:
        guard.cancel()
        p.terminate()
        _, err = p.communicate(timeout=30)
    run = Run(0, "".join(lines), err)
    assert (run.line("result")["result"], "--boot-timer: pyhv has no boot-timer device" in err) == ("pass", True)


def _run_config_file(tmp_path: pathlib.Path, config: dict[str, Any], *options: str) -> Run:
    """``firecracker --no-api --config-file`` with ``config``: the guest's lines up to its result."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pyhv", "firecracker", "--no-api", "--config-file", str(path), *options],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    guard = threading.Timer(60, p.terminate)  # a guest that prints less must not hang the test
    guard.start()
    lines: list[str] = []
    try:
        assert p.stdout is not None
        while not lines or not (lines[-1].startswith("probe: result=") or lines[-1] == ""):
            lines.append(p.stdout.readline())
    finally:
        guard.cancel()
        p.terminate()
        _, err = p.communicate(timeout=30)
    return Run(0, "".join(lines), err)


@pytest.mark.parametrize("options,transport", [((), "mmio"), (("--enable-pci",), "pci")])
def test_devices_are_virtio_mmio_unless_pci_is_enabled(
    tmp_path: pathlib.Path, options: tuple[str, ...], transport: str
) -> None:
    run = _run_config_file(tmp_path, {
        "boot-source": {"kernel_image_path": str(PROBE), "boot_args": "probe.test=rng"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "entropy": {},
    }, *options)
    assert run.line("result")["result"] == "pass", run.stdout + run.stderr
    virtio = run.line("device_features")
    assert (virtio.get("transport", "pci"), "dev" in virtio) == (transport, transport == "pci"), virtio
    assert ("virtio_mmio.device=4K@" in run.line("boot")["cmdline"]) == (transport == "mmio")
    assert run.line("distinct")["bytes"] == "4096"


def test_vcpu_threads_are_named_as_firecracker_names_them(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(PROBE), "boot_args": "probe.test=ticker probe.n=1000"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64},
    }))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pyhv", "firecracker", "--no-api", "--config-file", str(path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    guard = threading.Timer(60, p.terminate)
    guard.start()
    try:
        assert p.stdout is not None
        while "tick n=" not in (line := p.stdout.readline()) and line:
            pass
        names = sorted(pathlib.Path(f"/proc/{p.pid}/task/{tid}/comm").read_text().strip()
                       for tid in os.listdir(f"/proc/{p.pid}/task"))
    finally:
        guard.cancel()
        p.terminate()
        p.communicate(timeout=30)
    assert "tick n=" in line, line
    assert [n for n in names if "vcpu" in n] == ["fc_vcpu 0", "fc_vcpu 1"], names
