"""The VM Generation ID and snapshot clones, judged by what the guests printed.

The probe's ``vmgenid`` workload finds the GUID through fw_cfg's
``etc/vmgenid_addr`` and prints ``probe: vmgenid n=K guid=... changes=C``
periodically: K is a count in guest memory (a restored guest goes on from it),
C the times the GUID changed under the guest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pyhvd import Daemon, daemon_fixture

pytestmark = pytest.mark.kvm

LINE = re.compile(r"^probe: vmgenid n=(\d+) guid=([0-9a-f]{32}) changes=(\d+)$", re.M)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from daemon_fixture(tmp_path)


def _lines(d: Daemon, name: str, at_least: int, timeout: float = 60) -> list[tuple[int, str, int]]:
    """The domain's (n, guid, changes) lines, once it printed ``at_least`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [(int(n), g, int(c)) for n, g, c in LINE.findall(d.console_log(name))]
        if len(found) >= at_least:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{name} printed fewer than {at_least} vmgenid lines:\n{d.console_log(name)}")


def test_each_boot_has_its_own_generation_id_and_it_holds_while_the_guest_runs(daemon: Daemon) -> None:
    d = daemon
    for name in ("g1", "g2"):
        assert d.pyhv("create", str(d.config(name, "vmgenid probe.n=30"))).returncode == 0
    g1, g2 = _lines(d, "g1", 3), _lines(d, "g2", 3)

    assert len({g for _, g, _ in g1}) == 1 and len({g for _, g, _ in g2}) == 1
    assert g1[0][1] != g2[0][1]
    assert g1[-1][2] == g2[-1][2] == 0
    assert "probe: vmgenid addr=0xdf000 " in d.console_log("g1")


def test_without_vmgenid_the_guest_finds_no_device(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("n1", "vmgenid", vmgenid=False))).returncode == 0
    log = d.wait_for("n1", "probe: result=")

    assert "no 8-byte fw_cfg file etc/vmgenid_addr" in log and "probe: result=fail" in log, log


def test_three_clones_go_on_from_the_saved_count_each_with_its_own_generation_id(
        daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    tap = f"pc{os.getpid() % 100000}"
    uds = tmp_path / "v.sock"
    config = d.config("orig", "vmgenid probe.n=30", nics=[{"tap": tap}], vsock={"cid": 7, "uds": str(uds)})
    assert d.pyhv("create", str(config)).returncode == 0
    _lines(d, "orig", 3)
    snap = d.snapshots / "orig.snap"
    r = d.pyhv("save", "orig", str(snap))
    assert r.returncode == 0, r.stderr
    original = _lines(d, "orig", 1)
    saved_n, original_guid = original[-1][0], original[-1][1]

    r = d.pyhv("restore", "--clone", "3", str(snap))
    assert r.returncode == 0, r.stderr
    clones = {name: _lines(d, name, 2) for name in ("orig-1", "orig-2", "orig-3")}

    firsts = {name: lines[0] for name, lines in clones.items()}
    assert all(n >= saved_n for n, _, _ in firsts.values()), (saved_n, firsts)
    assert all(changes == 1 for _, _, changes in firsts.values()), firsts  # the guest saw its GUID change once
    guids = {guid for _, guid, _ in firsts.values()}
    assert len(guids) == 3 and original_guid not in guids
    assert all(d.console_log(name).count("probe: boot") == 0 for name in clones)  # restored, not booted
    listed = d.domains()
    assert sorted(listed) == ["orig-1", "orig-2", "orig-3"]
    # host side: each clone has its own TAP and vsock socket
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert all(f"{tap}-{i}:" in links for i in (1, 2, 3)), links
    assert all(Path(f"{uds}-{i}").exists() for i in (1, 2, 3))
    macs = {json.loads(d.pyhv("network-list", "--json", name).stdout)[0]["mac"] for name in clones}
    assert len(macs) == 3 and all(int(mac[:2], 16) & 3 == 2 for mac in macs), macs  # unicast, locally administered


def test_clones_of_a_domain_with_a_writable_disk_are_refused_in_one_line(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    assert d.pyhv("create", str(d.config("w", "ticker", disks=[{"path": str(image)}]))).returncode == 0
    d.wait_for("w", "probe: tick ")
    snap = d.snapshots / "w.snap"
    assert d.pyhv("save", "w", str(snap)).returncode == 0

    r = d.pyhv("restore", "--clone", "2", str(snap))

    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "disks[0].path: a writable disk cannot be shared by clones" in r.stderr
    assert d.domains() == {}


def test_clones_are_all_or_none_when_one_name_is_taken(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("c-2", "ticker"))).returncode == 0
    assert d.pyhv("create", str(d.config("c", "vmgenid"))).returncode == 0
    _lines(d, "c", 1)
    snap = d.snapshots / "c.snap"
    assert d.pyhv("save", "c", str(snap)).returncode == 0

    r = d.pyhv("restore", "--clone", "3", str(snap))

    assert r.returncode == 1 and "a domain named 'c-2' already exists" in r.stderr, r.stderr
    assert sorted(d.domains()) == ["c-2"]
    r = d.pyhv("restore", "--clone", "2", "--name", "d", "--verify", str(snap))
    assert r.returncode == 0 and r.stdout.count(" cloned from ") == 2, r.stdout + r.stderr
    assert all(_lines(d, name, 1) for name in ("d-1", "d-2"))


@pytest.mark.parametrize("count, message", [
    ("0", "clones: must be an integer between 1 and 1000"),
    ("1001", "clones: must be an integer between 1 and 1000"),
    ("two", "--clone 'two': expected a number of domains"),
])
def test_a_bad_clone_count_is_refused_in_one_line(daemon: Daemon, count: str, message: str) -> None:
    r = daemon.pyhv("restore", "--clone", count, str(daemon.snapshots / "none.snap"))

    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"pyhv: {message}"], r.stderr


def test_clone_api_refuses_a_snapshot_outside_the_snapshot_directory(daemon: Daemon) -> None:
    status, body = _post(daemon, "/clone", {"path": "/etc/passwd", "count": 2})

    assert status == 403 and "outside the snapshot directory" in body["error"], body
    assert daemon.domains() == {}


def _post(d: Daemon, path: str, body: dict[str, object]) -> tuple[int, dict[str, str]]:
    from pyhv.toolstack.client import ApiError

    try:
        return 201, d.client.post(path, body)
    except ApiError as e:
        return e.http_status, {"error": str(e)}
