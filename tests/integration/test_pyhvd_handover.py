"""A migration hand-over that goes wrong after the commit, with pyhvd on one side.

The other side runs in this process with a fault injected in its channel
(:class:`~pyhv.vmm.migrate.Fault`); the probe's ``ticker`` numbers its lines,
so what each guest printed says which side ran."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pyhv.model import describe
from pyhv.vmm import build
from pyhv.vmm import migrate as mg
from pyhv.vmm.migrate import GO, RESUMED, Fault

from ..conftest import PROBE
from .pyhvd import Daemon, ticks_in
from .test_migrate_handover import Destination

pytestmark = pytest.mark.kvm

KEY = "0123456789abcdef-shared-migration-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _consecutive(ticks: list[int]) -> None:
    assert ticks == list(range(1, len(ticks) + 1)), f"ticks lost or repeated: {ticks}"


def test_a_pyhvd_source_that_commits_and_hears_nothing_ends_the_domain_stopped(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY)
    source = Daemon(tmp_path, "--migration-key", str(key))
    dest = Destination(tmp_path / "dest.log", (Fault(RESUMED, "cut"),), KEY.encode())
    try:
        source.start()
        assert source.pyhv("create", str(source.config("m", "ticker probe.n=20"))).returncode == 0
        source.ticks_reach("m", 3)
        r = source.pyhv("migrate", "m", f"127.0.0.1:{dest.port}")
        dest.thread.join(10)
        domains = source.domains()
        left_at = source.ticks("m")[-1]
        time.sleep(0.4)  # 20 ticker periods
        source_ticks = source.ticks("m")
        dest_ticks = ticks_in((tmp_path / "dest.log").read_text())
        vmm_log = (source.state_dir / "domains" / "m" / "vmm.log").read_text()
    finally:
        source.cleanup()
        dest.close()
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and mg.UNKNOWN in r.stderr, r.stderr
    assert "m" not in domains and source_ticks[-1] == left_at  # ended here, and stopped
    assert dest_ticks and dest_ticks[-1] > left_at + 5  # the destination runs it
    _consecutive(ticks_in(source.console_log("m") + (tmp_path / "dest.log").read_text()))
    assert f"domain m: {mg.UNKNOWN}" in vmm_log
    assert "ended: migrated migration outcome unknown" in source.log()


def test_a_pyhvd_destination_without_the_commit_does_not_start_the_domain(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY)
    port = _free_port()
    dest = Daemon(tmp_path, "--migration-key", str(key), "--migration-listen", f"127.0.0.1:{port}")
    log = tmp_path / "source.log"
    machine = build(describe(name="m", kernel=str(PROBE), cmdline="probe.test=ticker probe.n=20", memory="32M",
                             serial=f"file:{log}"))
    try:
        dest.start()
        machine.start()
        deadline = time.monotonic() + 30
        while len(ticks_in(log.read_text() if log.exists() else "")) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(mg.HandoverUnknown) as e:
            mg.migrate(machine, ("127.0.0.1", port), KEY.encode(), faults=(Fault(GO, "lose"),))
        state = machine.state
        left_at = ticks_in(log.read_text())[-1]
        deadline = time.monotonic() + 10
        while "not started here" not in dest.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        domains = dest.domains()
        time.sleep(0.4)
        pyhvd_log = dest.log()
    finally:
        machine.close()
        dest.cleanup()
    assert mg.UNKNOWN in str(e.value) and "\n" not in str(e.value)
    assert state == "stopped" and ticks_in(log.read_text())[-1] == left_at
    assert domains == {} and ticks_in(dest.console_log("m")) == []
    assert "the source's commit (GO) did not arrive" in pyhvd_log and "the machine was not started here" in pyhvd_log
