"""pyhv as Firecracker, driven over its API socket with a plain HTTP client: what
the guest (the probe) sees of PATCH /drives and the refusals that change nothing."""

from __future__ import annotations

import fcntl
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import PROBE
from ..fcapi import call
from pyhv.vmm.snapshot import Snapshot

from .fc_process import RESULT, Firecracker
from .probe import Run

pytestmark = pytest.mark.kvm

SECTOR = 512


@pytest.fixture
def vms() -> Iterator[list[Firecracker]]:
    made: list[Firecracker] = []
    yield made
    for vm in made:
        vm.close()


def image(path: pathlib.Path, sectors: int, first: bytes, last: bytes = b"") -> str:
    """A raw image of ``sectors`` sectors starting with ``first`` whose last sector starts with ``last``."""
    data = bytearray(sectors * SECTOR)
    data[: len(first)] = first
    data[(sectors - 1) * SECTOR : (sectors - 1) * SECTOR + len(last)] = last
    path.write_bytes(bytes(data))
    return str(path)


def word(text: bytes) -> int:
    """The probe's 8-byte little-endian reading of the first bytes of a sector."""
    return int.from_bytes(text[:8], "little")


def boot(vm: Firecracker, cmdline: str, drives: list[dict[str, Any]]) -> None:
    steps = [("PUT", "/boot-source", {"kernel_image_path": str(PROBE), "boot_args": cmdline}),
             ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})]
    steps += [("PUT", f"/drives/{d['drive_id']}", d) for d in drives]
    steps += [("PUT", "/actions", {"action_type": "InstanceStart"})]
    for method, path, body in steps:
        assert call(vm.sock, method, path, body) == (204, None), (method, path)


def probe_lines(vm: Firecracker, state: str) -> list[dict[str, str]]:
    return [f for f in Run(0, vm.text(), "").lines() if "blkswap" in f and f.get("state") == state]


@pytest.mark.parametrize("options,irq", [
    ((), "ioapic"),  # virtio-MMIO, Firecracker's transport: InterruptStatus bit 1 on the device's line
    (("--enable-pci",), "msix"),  # virtio-PCI: the MSI-X configuration vector
])
def test_patch_drive_swaps_the_file_under_the_running_guest(
    tmp_path: pathlib.Path, vms: list[Firecracker], options: tuple[str, ...], irq: str,
) -> None:
    old = image(tmp_path / "old.img", 2048, b"OLDOLDOL")
    new = image(tmp_path / "new.img", 6144, b"NEWNEWNE", b"LASTLAST")
    vm = Firecracker(tmp_path, "swap", *options)
    vms.append(vm)
    boot(vm, f"probe.test=blkswap probe.irq={irq}",
         [{"drive_id": "scratch", "path_on_host": old, "is_root_device": False, "is_read_only": False}])
    vm.wait_for(r"blkswap state=waiting")

    status, reply = call(vm.sock, "PATCH", "/drives/scratch", {"drive_id": "scratch", "path_on_host": new})
    vm.wait_for(RESULT)
    before, after = probe_lines(vm, "before")[0], probe_lines(vm, "after")[0]
    assert (status, reply) == (204, None)
    assert (int(before["capacity"]), int(before["sector0"], 16)) == (2048, word(b"OLDOLDOL"))
    assert (int(after["capacity"]), int(after["sector0"], 16), int(after["last"], 16)) == (
        6144, word(b"NEWNEWNE"), word(b"LASTLAST"))
    assert (int(after["config_irqs"]) >= 1, after["generation"] != before["generation"], after["status"]) == (
        True, True, "0")
    assert Run(0, vm.text(), "").line("result")["result"] == "pass"
    drives = call(vm.sock, "GET", "/vm/config")[1]["drives"]
    assert [d["path_on_host"] for d in drives] == [new]
    with open(old, "r+b") as f:  # the old image was closed: its lock is gone
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    snap = str(tmp_path / "after-swap.snap")  # a snapshot describes the machine as it is now
    assert call(vm.sock, "PATCH", "/vm", {"state": "Paused"}) == (204, None)
    assert call(vm.sock, "PUT", "/snapshot/create", {"snapshot_path": snap, "mem_file_path": snap}) == (204, None)
    snapshot = Snapshot(snap)
    try:
        assert [d.path for d in snapshot.description.disks] == [new]
    finally:
        snapshot.close()


def test_bad_patches_are_refused_in_one_line_and_change_nothing(tmp_path: pathlib.Path, vms: list[Firecracker]) -> None:
    old = image(tmp_path / "old.img", 2048, b"OLDOLDOL")
    ro = image(tmp_path / "ro.img", 2048, b"READONLY")
    locked = image(tmp_path / "locked.img", 2048, b"LOCKED!!")
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 1000)
    (tmp_path / "dir.img").mkdir()
    vm = Firecracker(tmp_path, "bad")
    vms.append(vm)
    status, reply = call(vm.sock, "PATCH", "/drives/scratch", {"drive_id": "scratch", "path_on_host": old})
    assert (status, reply) == (400, {"fault_message": "drives: not supported before the microVM has started"})
    boot(vm, "probe.test=blkswap probe.irq=ioapic probe.n=600",
         [{"drive_id": "scratch", "path_on_host": old, "is_root_device": False, "is_read_only": False},
          {"drive_id": "ro", "path_on_host": ro, "is_root_device": False, "is_read_only": True}])
    vm.wait_for(r"blkswap state=waiting")

    with open(locked, "r+b") as holder:
        fcntl.lockf(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another program uses it
        answers = {
            what: call(vm.sock, "PATCH", f"/drives/{drive}", {"drive_id": drive, **body})
            for what, drive, body in [
                ("missing", "scratch", {"path_on_host": str(tmp_path / "nonesuch.img")}),
                ("directory", "scratch", {"path_on_host": str(tmp_path / "dir.img")}),
                ("odd size", "scratch", {"path_on_host": str(odd)}),
                ("locked", "scratch", {"path_on_host": locked}),
                ("unknown drive", "nonesuch", {"path_on_host": locked}),
                ("made writable", "ro", {"path_on_host": locked, "is_read_only": False}),
                ("same image twice", "scratch", {"path_on_host": ro}),
            ]
        }
    expected = {
        "missing": "cannot open disk image: No such file or directory",
        "directory": "Is a directory",
        "odd size": "disk image size 1000 is not a multiple of 512 bytes",
        "locked": "disk image is in use by another domain or program",
        "unknown drive": "drives[nonesuch]: no such drive (known: scratch, ro)",
        "made writable": "drives[ro]: unknown field 'is_read_only'",
        "same image twice": "the same image as",
    }
    for what, (status, reply) in answers.items():
        message = reply["fault_message"]
        assert (what, status, expected[what] in message, "\n" in message) == (what, 400, True, False), message
    assert [d["path_on_host"] for d in call(vm.sock, "GET", "/vm/config")[1]["drives"]] == [old, ro]
    assert probe_lines(vm, "after") == []  # the guest saw no change
    status, reply = call(vm.sock, "PATCH", "/drives/scratch", {"drive_id": "scratch", "path_on_host": locked})
    vm.wait_for(RESULT)
    assert (status, int(probe_lines(vm, "after")[0]["sector0"], 16)) == (204, word(b"LOCKED!!"))


@pytest.mark.parametrize("translate,codes", [
    ("0", "1411e071e0f071f011f014"),  # scan code set 2, as the keyboard sends it
    ("1", "1d38e053e0d3b89d"),  # set 1, as the controller's translation gives it
])
def test_send_ctrl_alt_del_presses_the_keys_on_the_guest_keyboard(
    tmp_path: pathlib.Path, vms: list[Firecracker], translate: str, codes: str,
) -> None:
    vm = Firecracker(tmp_path, "cad")
    vms.append(vm)
    boot(vm, f"probe.test=kbd probe.n={translate}", [])
    vm.wait_for(r"kbd state=waiting")
    status, reply = call(vm.sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    vm.wait_for(RESULT)
    run = Run(0, vm.text(), "")
    read = [f for f in run.lines() if "kbd" in f and f.get("state") == "read"][0]
    assert (status, reply) == (204, None)
    assert (read["codes"], int(read["bytes"]), int(read["irqs"]) >= 1) == (codes, len(codes) // 2, True)
    assert run.line("result")["result"] == "pass"


def test_drive_ops_rate_limiter_bounds_the_rate_the_guest_measures(tmp_path: pathlib.Path, vms: list[Firecracker]) -> None:
    # 50 requests a second, at most 50 at hand when a phase starts: each random phase of 100
    # requests takes at least 1 s, so no phase can measure more than 100 a second (120: TSC slack)
    disk = image(tmp_path / "bench.img", 2 * 2048, b"")
    vm = Firecracker(tmp_path, "limited")
    vms.append(vm)
    limiter = {"ops": {"size": 50, "refill_time": 1000}}
    boot(vm, "probe.test=blkbench probe.mb=1 probe.n=100 probe.qd=4",
         [{"drive_id": "bench", "path_on_host": disk, "is_root_device": False, "rate_limiter": limiter}])
    vm.wait_for(RESULT, timeout=120)
    run = Run(0, vm.text(), "")
    figures = [f for f in run.lines() if "rand_read_iops" in f][0]
    assert run.line("result")["result"] == "pass"
    assert (int(figures["rand_write_iops"]) <= 120, int(figures["rand_read_iops"]) <= 120) == (True, True), figures
    assert call(vm.sock, "GET", "/vm/config")[1]["drives"][0]["rate_limiter"] == limiter


def test_patching_a_drive_rate_limiter_on_a_running_guest_takes_effect(tmp_path: pathlib.Path,
                                                                        vms: list[Firecracker]) -> None:
    disk = image(tmp_path / "bench.img", 2 * 2048, b"")
    vm = Firecracker(tmp_path, "repatch")
    vms.append(vm)
    starved = {"ops": {"size": 10, "refill_time": 3_600_000}}  # ten requests an hour
    boot(vm, "probe.test=blkbench probe.mb=1 probe.n=100 probe.qd=4",
         [{"drive_id": "bench", "path_on_host": disk, "is_root_device": False, "rate_limiter": starved}])
    vm.wait_for(r"blkbench phase=seq_read")
    time.sleep(2)
    stuck = "probe: result=" not in vm.text()
    status = call(vm.sock, "PATCH", "/drives/bench", {"drive_id": "bench",
                                                      "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}})
    vm.wait_for(RESULT, timeout=120)
    assert (stuck, status, Run(0, vm.text(), "").line("result")["result"]) == (True, (204, None), "pass")
