"""The migration hand-over: whatever message is lost, at most one side runs the guest.

Both sides run in this process (two machines, one stream on loopback); a
:class:`~pyhv.vmm.migrate.Fault` in one side's channel drops its frame of one
kind (and everything it sends after: a stalled direction) or cuts the
connection before or after it.  The probe's ``ticker`` numbers its lines, so
what each guest printed says which side ran: the ticks of the source's log
followed by the destination's must count up by one, never repeating (both
ran) and never stopping early on the side that should run on.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyhv.model import describe
from pyhv.vmm import Machine, build, control
from pyhv.vmm import migrate as mg
from pyhv.vcpu.thread import install_kick_handler
from pyhv.vmm.migrate import BUILT, DONE, GO, RESUMED, Fault

from ..conftest import PROBE, ROOT
from .pyhvd import ticks_in

pytestmark = pytest.mark.kvm

KEY = b"0123456789abcdef-handover-test"
#: how long either side waits for the other's next word in these tests
PATIENCE = 2.0


class Destination:
    """The receiving side on a thread: the machine it started, or why it did not."""

    def __init__(self, log: pathlib.Path, faults: tuple[Fault, ...], key: bytes = KEY) -> None:
        self.log = log
        self.faults = faults
        self.key = key
        install_kick_handler()  # the machine starts on another thread; signal handlers are set on this one
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.machine: Machine | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._serve, name="destination", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.server.accept()
        self.server.close()
        try:
            self.machine = mg.receive_connection(sock, self.key, serial=f"file:{self.log}", timeout=PATIENCE,
                                                 faults=self.faults)
        except mg.MigrationError as e:
            self.error = e

    def close(self) -> None:
        self.thread.join(30)
        if self.machine is not None:
            self.machine.close()


def _ticks(log: pathlib.Path) -> list[int]:
    return ticks_in(log.read_text()) if log.exists() else []


def _wait_for_tick(log: pathlib.Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ticks = _ticks(log)
        if ticks and ticks[-1] >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"tick {n} never appeared in {log}:\n{log.read_text() if log.exists() else ''}")


def _hand_over(tmp_path: pathlib.Path, source_faults: tuple[Fault, ...], dest_faults: tuple[Fault, ...]
               ) -> tuple[Machine, Destination, Exception | None]:
    """Start a ticker, migrate it with the faults; (source machine, destination, the source's error)."""
    source_log = tmp_path / "source.log"
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=ticker probe.n=20", memory="32M",
                             serial=f"file:{source_log}"))
    machine.start()
    _wait_for_tick(source_log, 3)
    dest = Destination(tmp_path / "dest.log", dest_faults)
    error: Exception | None = None
    try:
        mg.migrate(machine, ("127.0.0.1", dest.port), KEY, timeout=PATIENCE, faults=source_faults)
    except (mg.MigrationError, mg.HandoverUnknown) as e:
        error = e
    dest.thread.join(3 * PATIENCE)
    return machine, dest, error


def _who_runs(machine: Machine, dest: Destination) -> list[str]:
    return [side for side, m in (("source", machine), ("destination", dest.machine))
            if m is not None and m.state == "running"]


def _grows(log: pathlib.Path) -> bool:
    """Whether the guest writing ``log`` printed another tick in the next 0.4 s (20 periods)."""
    before = _ticks(log)
    time.sleep(0.4)
    return _ticks(log) != before


BEFORE_THE_COMMIT = {
    "DONE-lost": ((Fault(DONE, "drop"),), ()),
    "BUILT-lost": ((), (Fault(BUILT, "drop"),)),
    "cut-instead-of-BUILT": ((), (Fault(BUILT, "cut"),)),
    "cut-as-GO-is-sent": ((Fault(GO, "cut"),), ()),
}


@pytest.mark.parametrize("faults", BEFORE_THE_COMMIT.values(), ids=BEFORE_THE_COMMIT.keys())
def test_a_handover_broken_before_the_commit_leaves_only_the_source_running(
    tmp_path: pathlib.Path, faults: tuple[tuple[Fault, ...], tuple[Fault, ...]]
) -> None:
    machine, dest, error = _hand_over(tmp_path, *faults)
    try:
        runs = _who_runs(machine, dest)
        grew = [_grows(tmp_path / "source.log"), _grows(tmp_path / "dest.log")]
    finally:
        machine.close()
        dest.close()
    assert isinstance(error, mg.MigrationError) and "runs on here" in str(error) and "\n" not in str(error)
    assert runs == ["source"] and grew == [True, False]
    assert dest.error is not None and _ticks(tmp_path / "dest.log") == []
    ticks = _ticks(tmp_path / "source.log")
    assert ticks == list(range(1, len(ticks) + 1))


LOST_COMMIT = {
    "GO-lost": (Fault(GO, "drop"),),
    "GO-lost-with-the-connection": (Fault(GO, "lose"),),
}


@pytest.mark.parametrize("faults", LOST_COMMIT.values(), ids=LOST_COMMIT.keys())
def test_a_lost_commit_leaves_neither_side_running_and_the_source_says_why(
    tmp_path: pathlib.Path, faults: tuple[Fault, ...]
) -> None:
    machine, dest, error = _hand_over(tmp_path, faults, ())
    try:
        runs = _who_runs(machine, dest)
        grew = [_grows(tmp_path / "source.log"), _grows(tmp_path / "dest.log")]
        stop = machine.wait(5)
    finally:
        machine.close()
        dest.close()
    assert isinstance(error, mg.HandoverUnknown) and "not resumed here" in str(error) and "\n" not in str(error)
    assert stop is not None and stop.status == 1 and stop.detail == str(error)
    assert runs == [] and grew == [False, False]
    assert re.search(r"commit \(GO\) did not arrive .*the machine was not started here", str(dest.error))
    assert _ticks(tmp_path / "dest.log") == []


ARRIVED_COMMIT = {
    "RESUMED-lost": ((), (Fault(RESUMED, "drop"),)),
    "cut-instead-of-RESUMED": ((), (Fault(RESUMED, "cut"),)),
    "cut-after-GO": ((Fault(GO, "after"),), ()),
}


@pytest.mark.parametrize("faults", ARRIVED_COMMIT.values(), ids=ARRIVED_COMMIT.keys())
def test_a_commit_that_arrived_leaves_only_the_destination_running(
    tmp_path: pathlib.Path, faults: tuple[tuple[Fault, ...], tuple[Fault, ...]]
) -> None:
    machine, dest, error = _hand_over(tmp_path, *faults)
    try:
        runs = _who_runs(machine, dest)
        left_at = _ticks(tmp_path / "source.log")[-1]
        _wait_for_tick(tmp_path / "dest.log", left_at + 5)
        grew = [_grows(tmp_path / "source.log"), _grows(tmp_path / "dest.log")]
    finally:
        machine.close()
        dest.close()
    assert isinstance(error, mg.HandoverUnknown) and "\n" not in str(error)
    assert str(error).startswith(mg.UNKNOWN)
    assert runs == ["destination"] and grew == [False, True] and dest.error is None
    ticks = ticks_in((tmp_path / "source.log").read_text() + (tmp_path / "dest.log").read_text())
    assert ticks == list(range(1, len(ticks) + 1)), "ticks lost or repeated: both ran, or neither went on"


def test_without_faults_the_destination_runs_and_the_source_hears_it(tmp_path: pathlib.Path) -> None:
    machine, dest, error = _hand_over(tmp_path, (), ())
    try:
        runs = _who_runs(machine, dest)
        stop = machine.wait(5)
        left_at = _ticks(tmp_path / "source.log")[-1]
        _wait_for_tick(tmp_path / "dest.log", left_at + 3)
    finally:
        machine.close()
        dest.close()
    assert error is None and runs == ["destination"]
    assert stop is not None and stop.status == 0
    ticks = ticks_in((tmp_path / "source.log").read_text() + (tmp_path / "dest.log").read_text())
    assert ticks == list(range(1, len(ticks) + 1))


def test_pyhv_run_whose_migration_outcome_is_unknown_fails_the_request_and_exits_1(tmp_path: pathlib.Path) -> None:
    source_log, control_path = tmp_path / "source.log", str(tmp_path / "control.sock")
    source = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=ticker probe.n=20",
         "--memory", "32M", "--serial", f"file:{source_log}", "--control", control_path],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    dest = Destination(tmp_path / "dest.log", (Fault(RESUMED, "cut"),))
    try:
        _wait_for_tick(source_log, 3)
        with pytest.raises(control.ControlError) as e:
            control.call(control_path, {"op": "migrate", "host": "127.0.0.1", "port": dest.port, "key": KEY.hex()}, 60)
        out, err = source.communicate(timeout=30)
        left_at = _ticks(source_log)[-1]
        _wait_for_tick(tmp_path / "dest.log", left_at + 5)
    finally:
        source.kill()
        dest.close()
    assert str(e.value).startswith(mg.UNKNOWN) and "\n" not in str(e.value)
    assert source.returncode == 1 and err.startswith(f"pyhv: {mg.UNKNOWN}") and err.count("\n") == 1, err
    ticks = ticks_in(source_log.read_text() + (tmp_path / "dest.log").read_text())
    assert ticks == list(range(1, len(ticks) + 1))
