"""``pyhv run --jail``: the VMM confined (own namespaces and root, an unprivileged
uid, no capabilities, no_new_privs) still runs the probe's workloads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import PROBE, ROOT
from .probe import Run, run_probe

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(os.geteuid() != 0, reason="--jail needs root")]


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def _child(pid: int, timeout: float = 10.0) -> int:
    """The one child process of ``pid`` (the confined VMM under its supervisor)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"pyhv {pid} started no confined child")


def _start_ticker(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_RUN_DIR=str(run_dir))
    return subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=ticker probe.n=20",
         "--jail", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def _wait_tick(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith("probe: "), line + (p.stderr.read() if p.poll() is not None and p.stderr else "")
    while not line.startswith("probe: tick "):
        line = p.stdout.readline()
        assert line, "the guest stopped printing"
    return line


def test_jailed_probe_prints_its_pass_line_and_the_report_shows_the_confinement() -> None:
    run = run_probe("probe.test=hello", "--jail-report")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    report = dict(line.split(" ", 2)[1:] for line in run.stderr.splitlines() if line.startswith("jail: ")
                  and not line.startswith(("jail: namespace", "jail: mount")))
    assert report["Uid"].split()[0] != "0"
    assert report["CapEff"] == report["CapPrm"] == report["CapBnd"] == "0000000000000000"
    assert report["NoNewPrivs"] == "1"
    namespaces = [line for line in run.stderr.splitlines() if line.startswith("jail: namespace")]
    assert len(namespaces) == 6 and all(line.endswith("(own)") for line in namespaces), run.stderr


def test_jailed_vmm_is_unprivileged_and_rooted_in_its_jail_while_the_guest_runs(tmp_path: Path) -> None:
    p = _start_ticker(tmp_path)
    try:
        _wait_tick(p)
        vmm = _child(p.pid)
        status = _status(vmm)
        root = tmp_path / "jail" / f"run-{p.pid}" / "root"
        jail_root, seen_root = os.stat(root), os.stat(f"/proc/{vmm}/root")
        assert status["Uid"].split()[0] != "0" and status["Gid"].split()[0] != "0", status["Uid"]
        assert status["CapEff"] == "0000000000000000" and status["CapPrm"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
        assert (seen_root.st_dev, seen_root.st_ino) == (jail_root.st_dev, jail_root.st_ino)
        assert sorted(os.listdir(f"/proc/{vmm}/root")) == ["dev", "proc"]
        for ns in ("mnt", "pid", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{vmm}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        _wait_tick(p)  # still running, confined
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not (tmp_path / "jail" / f"run-{p.pid}").exists()


def test_jailed_disk_and_rng_workloads_pass(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    run: Run = run_probe("probe.test=blk", "--disk", str(disk), "--rng", "--jail")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    run = run_probe("probe.test=rng", "--rng", "--jail")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr


def test_jail_refuses_options_it_cannot_honour_in_one_line(tmp_path: Path) -> None:
    run = run_probe("probe.test=hello", "--jail", "--gdb", f"unix:{tmp_path}/g")
    assert run.status == 2 and run.stderr.strip().splitlines() == [
        "pyhv: --gdb cannot go with --jail: the stub would listen outside the jail"]


def test_jailed_save_on_signal_writes_a_snapshot_that_restores_and_runs_on(tmp_path: Path) -> None:
    snap = tmp_path / "vm.snap"
    p = _start_ticker(tmp_path, "--snapshot-on-signal", str(snap))
    try:
        before = int(_wait_tick(p).split("n=")[1].split()[0])
        p.send_signal(signal.SIGUSR2)
        assert p.stderr is not None
        said = [p.stderr.readline()]
        while said[-1] and not said[-1].startswith("pyhv: saved snapshot"):
            said.append(p.stderr.readline())
        assert said[-1].startswith(f"pyhv: saved snapshot {snap}"), said
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_RUN_DIR=str(tmp_path))
    q = subprocess.Popen([sys.executable, "-m", "pyhv", "run", "--restore", str(snap), "--jail"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        after = int(_wait_tick(q).split("n=")[1].split()[0])
    finally:
        q.send_signal(signal.SIGTERM)
        q.communicate(timeout=30)
    assert after > before
