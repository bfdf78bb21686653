"""Kata Containers' Firecracker driver, replayed request by request
(src/runtime/virtcontainers/fc.go): ``--version`` parsed as Kata parses it, the
full-VM configuration file Kata writes (boot source with Kata's kernel
parameters, a read-only rootfs drive, a pool of eight empty placeholder drives,
logger and metrics on FIFOs Kata reads, vsock, a network interface with empty
rate limiters), ``firecracker --api-sock S --config-file F``, ``GET /`` polled
until the instance is Running, then a placeholder drive PATCHed to a real file
(Kata's block hotplug) and back (its unplug).  What Kata would check is
asserted, and what the guest (the probe) saw of the hotplug."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from ..conftest import PROBE, ROOT
from ..fcapi import call
from .fc_process import RESULT, Firecracker
from .probe import Run
from .test_firecracker_api import image, word

pytestmark = pytest.mark.kvm

POOL = 8  # fcDiskPoolSize
#: fcKernelParams and the non-debug additions, as Kata serialises them
KATA_PARAMS = ("pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off "
               "8250.nr_uarts=0 agent.log_vport=1025")


def kata_version(output: str) -> str:
    """fc.parseVersion: the first line's second field without its ``v``."""
    fields = output.split("\n")[0].split(" ")
    assert len(fields) > 1, output
    return fields[1].strip().removeprefix("v")


def fifo_reader(path: pathlib.Path, lines: list[str]) -> tuple[threading.Thread, int]:
    """Kata's fcListenToFifo: opened for reading (non-blocking) before the VMM starts and
    read line by line.  A writer end is held here too, so the reader sees no end of file
    before the VMM opens its own; closing it (the second value) lets the reader finish."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    hold = os.open(path, os.O_WRONLY)

    def drain() -> None:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "r") as f:
            lines.extend(line.rstrip("\n") for line in f)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return t, hold


def kata_config(tmp: pathlib.Path, rootfs: str, tap: str) -> dict[str, Any]:
    placeholders = []
    for i in range(POOL):  # createJailedDrive: an empty file each
        path = tmp / f"drive_{i}"
        path.write_bytes(b"")
        placeholders.append({"drive_id": f"drive_{i}", "is_read_only": False, "is_root_device": False,
                             "path_on_host": str(path)})
    return {
        "boot-source": {"kernel_image_path": str(PROBE),
                        "boot_args": f"probe.test=blkswap probe.dev=1 probe.irq=ioapic {KATA_PARAMS}"},
        "drives": [{"drive_id": "rootfs", "is_read_only": True, "is_root_device": False, "path_on_host": rootfs},
                   *placeholders],
        "logger": {"level": "Error", "log_path": str(tmp / "logs.fifo")},
        "machine-config": {"mem_size_mib": 64, "smt": False, "vcpu_count": 1},
        "metrics": {"metrics_path": str(tmp / "metrics.fifo")},
        "network-interfaces": [{"guest_mac": "02:00:ca:fe:00:01", "host_dev_name": tap, "iface_id": "eth0",
                                "rx_rate_limiter": {}, "tx_rate_limiter": {}}],
        "vsock": {"guest_cid": 3, "uds_path": str(tmp / "kata.hvsock"), "vsock_id": "root"},
    }


def test_kata_boots_with_a_config_file_and_hotplugs_into_a_placeholder_drive(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    version = subprocess.run([sys.executable, "-m", "pyhv", "firecracker", "--version"], capture_output=True,
                             text=True, env=env, timeout=60, check=True, stdin=subprocess.DEVNULL).stdout
    assert kata_version(version) == "1.10.1"  # checkVersion: at least 0.21.1

    rootfs = image(tmp_path / "rootfs.img", 2048, b"ROOTFS..")
    container = image(tmp_path / "container.img", 4096, b"KATAHOTP", b"KATALAST")
    tap = f"fck{os.getpid() % 100000}"
    logs: list[str] = []
    metrics: list[str] = []
    readers = [fifo_reader(tmp_path / "logs.fifo", logs), fifo_reader(tmp_path / "metrics.fifo", metrics)]
    config = tmp_path / "fcConfig.json"
    config.write_text(json.dumps(kata_config(tmp_path, rootfs, tap), indent="\t"))

    vm = Firecracker(tmp_path, "kata", "--config-file", str(config))
    try:
        deadline, state = time.monotonic() + 60, None  # waitVMMRunning: GET / every 10 ms
        while time.monotonic() < deadline:
            try:
                status, info = call(vm.sock, "GET", "/")
            except OSError:
                time.sleep(0.01)
                continue
            state = info["state"] if status == 200 else None
            if state == "Running":
                break
            time.sleep(0.01)
        assert state == "Running", vm.errors.read_text()
        vm.wait_for(r"blkswap state=waiting")

        plug = call(vm.sock, "PATCH", "/drives/drive_0", {"drive_id": "drive_0", "path_on_host": container})
        vm.wait_for(RESULT)
        unplug = call(vm.sock, "PATCH", "/drives/drive_0",
                      {"drive_id": "drive_0", "path_on_host": str(tmp_path / "drive_0")})
        drives = call(vm.sock, "GET", "/vm/config")[1]["drives"]
    finally:
        vm.close()
    for t, hold in readers:
        os.close(hold)
        t.join(10)

    run = Run(0, vm.text(), "")
    before = [f for f in run.lines() if "blkswap" in f and f.get("state") == "before"][0]
    after = [f for f in run.lines() if "blkswap" in f and f.get("state") == "after"][0]
    assert (plug, unplug) == ((204, None), (204, None))
    assert (before["capacity"], before["sector0"]) == ("0", "none")  # the empty placeholder
    assert (int(after["capacity"]), int(after["sector0"], 16), int(after["last"], 16)) == (
        4096, word(b"KATAHOTP"), word(b"KATALAST"))
    assert int(after["config_irqs"]) >= 1 and run.line("result")["result"] == "pass"
    assert [d["path_on_host"] for d in drives[:2]] == [rootfs, str(tmp_path / "drive_0")]
