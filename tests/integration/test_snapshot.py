"""Save and restore of whole machines running the probe, in-process and through `pyhv run`."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.model import describe
from pyhv.vmm import build, restore
from pyhv.vmm.snapshot import Snapshot

from ..conftest import PROBE, ROOT
from ..unit.test_device_state import _mutate
from .probe import Run, pyhv

pytestmark = pytest.mark.kvm

COUNTER_ADDR = 0x1FF000
MEMSUM = "probe.test=memsum probe.mb=16 probe.n=300"


def _wait_for(path: pathlib.Path, pattern: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = path.read_text() if path.exists() else ""
        if re.search(pattern, out):
            return out
        time.sleep(0.01)
    raise AssertionError(f"{pattern!r} not seen within {timeout}s; got:\n{out}")


def _counter(memory: object) -> int:
    return int(struct.unpack("<Q", memory.read(COUNTER_ADDR, 8))[0])  # type: ignore[attr-defined]


def _checksum(text: str) -> str:
    m = re.search(r"probe: memsum state=done .* checksum=(0x[0-9a-f]+)", text)
    assert m, f"no final memsum line in:\n{text}"
    return m.group(1)


def _save_by_signal(p: subprocess.Popen[str], snap: pathlib.Path) -> None:
    """SIGUSR2 makes the running pyhv save itself to ``snap``; wait for the file."""
    p.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not snap.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _popen(*args: str, serial: pathlib.Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", *args, "--serial", f"file:{serial}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.fixture(scope="module")
def memsum_reference() -> str:
    """The checksum of an uninterrupted run."""
    run = pyhv("run", "--kernel", str(PROBE), "--cmdline", MEMSUM, "--debug-exit", timeout=120)
    assert run.status == 0, run.stdout + run.stderr
    return _checksum(run.stdout)


def test_paused_counter_restores_to_the_value_it_was_saved_with(tmp_path: pathlib.Path) -> None:
    log, snap = tmp_path / "console", str(tmp_path / "m.snap")
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial=f"file:{log}", memory="64M"))
    try:
        machine.start()
        _wait_for(log, "addr=0x1ff000")
        time.sleep(0.2)
        machine.pause()
        saved = _counter(machine.memory)
        machine.save(snap)
        assert machine.state == "paused"
    finally:
        machine.close()
    restored = restore(snap, serial="none")
    try:
        at_restore = _counter(restored.memory)
        restored.start()
        time.sleep(0.2)
        restored.pause()
        assert (saved > 0, at_restore, _counter(restored.memory) > saved) == (True, saved, True)
    finally:
        restored.close()


def test_two_vcpus_come_back_with_their_own_state(tmp_path: pathlib.Path) -> None:
    log, snap = tmp_path / "console", str(tmp_path / "m.snap")
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial=f"file:{log}", vcpus=2))
    try:
        machine.start()
        _wait_for(log, "addr=0x1ff000")
        machine.pause()
        before = [machine.vcpu_state(i) for i in range(2)]
        machine.save(snap)
    finally:
        machine.close()
    snapshot = Snapshot(snap)
    restored = build(snapshot.description, restore=snapshot)
    try:
        after = [restored.vcpu_state(i) for i in range(2)]
    finally:
        restored.close()
        snapshot.close()
    assert [(s.regs, s.sregs, s.mp_state, s.apic_id) for s in after] == [
        (s.regs, s.sregs, s.mp_state, s.apic_id) for s in before
    ]


def test_memsum_saved_mid_run_finishes_with_the_same_checksum_in_both_processes(
    tmp_path: pathlib.Path, memsum_reference: str
) -> None:
    log, snap = tmp_path / "console", tmp_path / "m.snap"
    p = _popen("--kernel", str(PROBE), "--cmdline", MEMSUM, "--debug-exit", "--snapshot-on-signal", str(snap),
               serial=log)
    try:
        _wait_for(log, r"memsum round=(4[5-9]|[5-9]\d|\d{3})\b")
        p.send_signal(signal.SIGUSR2)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
        p.wait()
    assert "saved snapshot" in err and p.returncode == 0, err
    original = log.read_text()
    restored = pyhv("run", "--restore", str(snap), timeout=120)
    assert restored.status == 0, restored.stdout + restored.stderr
    # the restored guest goes on from the round it was saved in: no boot line, no start line
    assert "probe: boot" not in restored.stdout and "memsum round=15\n" not in restored.stdout
    assert (_checksum(original), _checksum(restored.stdout)) == (memsum_reference, memsum_reference)


def test_restore_twice_from_one_snapshot_gives_the_same_result(tmp_path: pathlib.Path, memsum_reference: str) -> None:
    log, snap = tmp_path / "console", tmp_path / "m.snap"
    p = _popen("--kernel", str(PROBE), "--cmdline", MEMSUM, "--debug-exit", "--snapshot-on-signal", str(snap),
               serial=log)
    try:
        _wait_for(log, r"memsum round=(1[5-9]|[2-9]\d|\d{3})\b")
        _save_by_signal(p, snap)
    finally:
        p.kill()
        p.wait()
    runs = [pyhv("run", "--restore", str(snap), timeout=120) for _ in range(2)]
    assert [(r.status, _checksum(r.stdout)) for r in runs] == [(0, memsum_reference)] * 2


@pytest.mark.parametrize("transport,irq", [("pci", "msix"), ("mmio", "poll")])
def test_blk_data_written_before_a_save_is_read_back_after_restore(tmp_path: pathlib.Path, transport: str, irq: str) -> None:
    disk, log, snap = tmp_path / "d.img", tmp_path / "console", tmp_path / "m.snap"
    disk.write_bytes(bytes(1 << 20))
    p = _popen("--kernel", str(PROBE), "--cmdline", f"probe.test=blksnap probe.irq={irq}", "--debug-exit",
               "--disk", str(disk), "--transport", transport, "--snapshot-on-signal", str(snap), serial=log)
    try:
        _wait_for(log, "blksnap state=written")
        _save_by_signal(p, snap)
    finally:
        p.kill()
        p.wait()
    assert "state=verified" not in log.read_text(), "the save came too late to test anything"
    restored = pyhv("run", "--restore", str(snap), timeout=60)
    assert restored.status == 0, restored.stdout + restored.stderr
    assert Run(0, restored.stdout, "").line("state").get("state") == "verified"
    line = [f for f in Run(0, restored.stdout, "").lines() if f.get("state") == "verified"][0]
    assert (line["status"], line["mismatched"]) == ("0", "0")


def _saved(tmp_path: pathlib.Path) -> pathlib.Path:
    snap = tmp_path / "m.snap"
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial="none", memory="32M"))
    try:
        machine.save(str(snap))
    finally:
        machine.close()
    return snap


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[:40], "truncated"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"NOTASNAP" + b[8:], "not a pyhv snapshot"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "format version 99"),
        (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:], "checksum mismatch"),
        (lambda b: b + b"x", "data after the end"),
    ],
    ids=["header", "half", "magic", "version", "state-bit", "trailing"],
)
def test_a_damaged_snapshot_is_refused_with_one_line(tmp_path: pathlib.Path, damage: object, message: str) -> None:
    snap = _saved(tmp_path)
    snap.write_bytes(damage(snap.read_bytes()))  # type: ignore[operator]
    run = pyhv("run", "--restore", str(snap))
    assert run.status == 2 and run.stdout == ""
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_corrupt_memory_is_found_by_verify(tmp_path: pathlib.Path) -> None:
    snap = _saved(tmp_path)
    snapshot = Snapshot(str(snap))
    offset = snapshot.extents[0][0]
    snapshot.verify_memory()
    snapshot.close()
    with open(snap, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    snapshot = Snapshot(str(snap))
    with pytest.raises(Exception, match="CRC mismatch"):
        snapshot.verify_memory()
    snapshot.close()


def test_verify_refuses_corrupt_memory_before_running(tmp_path: pathlib.Path) -> None:
    snap = _saved(tmp_path)
    snapshot = Snapshot(str(snap))
    offset = snapshot.extents[0][0]
    snapshot.close()
    with open(snap, "r+b") as f:
        f.seek(offset + 7)
        byte = f.read(1)
        f.seek(offset + 7)
        f.write(bytes([byte[0] ^ 0x55]))
    run = pyhv("run", "--restore", str(snap), "--verify")
    assert run.status == 2 and "CRC mismatch" in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr


def test_restore_refuses_options_that_describe_another_machine(tmp_path: pathlib.Path) -> None:
    snap = _saved(tmp_path)
    run = pyhv("run", "--restore", str(snap), "--memory", "1G")
    assert run.status == 2 and "--memory cannot be given" in run.stderr


# --- a crafted snapshot: valid checksum, hostile state ----------------------------------------

_CRAFT_EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def saved_blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, object]]:
    path = tmp_path_factory.mktemp("craft") / "m.snap"
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial="none", memory="32M",
                                  rng=True, balloon=True))
    try:
        machine.start()
        time.sleep(0.1)
        machine.save(str(path))
    finally:
        machine.close()
    blob = path.read_bytes()
    snapshot = Snapshot(str(path))
    state = snapshot.state
    snapshot.close()
    return blob, state


@settings(max_examples=_CRAFT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                               HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_crafted_snapshot_with_a_valid_checksum_is_refused_in_one_line_or_runs(
    tmp_path: pathlib.Path, saved_blob: tuple[bytes, dict[str, object]], data: st.DataObject
) -> None:
    from pyhv.errors import PyhvError
    from pyhv.vmm import snapshot as s

    blob, state = saved_blob
    bad = _mutate(state, data)
    text = json.dumps(bad).encode()
    mem_len = s.HEADER.unpack_from(blob)[4]
    path = tmp_path / f"crafted-{os.getpid()}-{time.monotonic_ns()}.snap"
    path.write_bytes(s._header(mem_len, s.MEMORY_OFFSET + mem_len, text) + blob[s.HEADER.size : s.MEMORY_OFFSET + mem_len] + text)
    try:
        machine = restore(str(path), serial="none")
    except PyhvError as e:
        assert str(e) and "\n" not in str(e)
    else:
        machine.close()
    finally:
        path.unlink()


def test_a_failed_save_leaves_the_machine_running_and_nothing_behind(tmp_path: pathlib.Path) -> None:
    from pyhv.vmm.snapshot import SnapshotError

    log = tmp_path / "console"
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial=f"file:{log}", memory="32M"))
    try:
        machine.start()
        _wait_for(log, "addr=0x1ff000")
        with pytest.raises(SnapshotError, match="cannot create"):
            machine.save(str(tmp_path / "no-such-dir" / "m.snap"))
        assert machine.state == "running"
        first = _counter(machine.memory)
        time.sleep(0.1)
        assert _counter(machine.memory) > first
    finally:
        machine.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console"]


def test_save_never_replaces_a_file_that_is_not_a_pyhv_snapshot(tmp_path: pathlib.Path) -> None:
    from pyhv.vmm.snapshot import SnapshotError

    precious = tmp_path / "passwd"
    precious.write_text("root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "link.snap"
    link.symlink_to(precious)
    fifo = tmp_path / "fifo.snap"
    os.mkfifo(fifo)
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial="none", memory="32M"))
    try:
        refusals = []
        for target, force in ((precious, False), (precious, True), (link, True), (fifo, True), (tmp_path, True)):
            with pytest.raises(SnapshotError) as e:
                machine.save(str(target), force=force)
            refusals.append(str(e.value))
    finally:
        machine.close()
    assert all("\n" not in r and "cannot save to" in r for r in refusals), refusals
    assert "it exists" in refusals[0] and "not a pyhv snapshot" in refusals[1]
    assert all("not a regular file" in r for r in refusals[2:]), refusals
    assert precious.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.snap", "link.snap", "passwd"]


def test_save_with_force_replaces_an_earlier_snapshot_and_without_it_keeps_it(tmp_path: pathlib.Path) -> None:
    from pyhv.vmm.snapshot import SnapshotError

    snap = tmp_path / "m.snap"
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial="none", memory="32M"))
    try:
        machine.save(str(snap))
        first = snap.stat().st_ino
        with pytest.raises(SnapshotError, match="it exists"):
            machine.save(str(snap))
        assert snap.stat().st_ino == first
        machine.save(str(snap), force=True)
    finally:
        machine.close()
    assert snap.stat().st_ino != first
    Snapshot(str(snap)).close()
    assert [p.name for p in tmp_path.iterdir()] == ["m.snap"]


def test_snapshot_on_signal_replaces_its_own_earlier_snapshot(tmp_path: pathlib.Path) -> None:
    log, snap = tmp_path / "console", tmp_path / "m.snap"
    p = _popen("--kernel", str(PROBE), "--cmdline", "probe.test=counter", "--snapshot-on-signal", str(snap),
               serial=log)
    try:
        _wait_for(log, "addr=0x1ff000")
        _save_by_signal(p, snap)
        first = snap.stat().st_ino
        p.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while snap.stat().st_ino == first and time.monotonic() < deadline:
            time.sleep(0.01)
        p.terminate()
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert err.count("saved snapshot") == 2 and "not saved" not in err, err
