"""virtio-fs through Debian's virtiofsd: the probe guest's FUSE client reads and
writes host files, and a back end killed under a running guest fails only its device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import PROBE, ROOT
from .probe import Run, fnv1a, run_probe

pytestmark = pytest.mark.kvm

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
STATUS_NEEDS_RESET = 0x40


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    return directory


@pytest.fixture
def own_virtiofsd(shared: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A virtiofsd the test starts (the --fs socket= form), so the test can kill it."""
    assert os.access(VIRTIOFSD, os.X_OK), "virtiofsd is needed (apt-get install qemu-system-common)"
    sock = tmp_path / "vfs.sock"
    proc = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={shared}", "-o", "sandbox=namespace"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "virtiofsd did not start"
        time.sleep(0.01)
    yield proc, sock
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.parametrize("irq", ["msix", "poll"])
def test_guest_reads_a_host_file_and_writes_one_the_host_reads(shared: Path, irq: str) -> None:
    content = b"written by the host at " + str(time.time_ns()).encode() + b"\n\twith \"quotes\" and \xff"
    (shared / "from-host.txt").write_bytes(content)
    text = f"guest-{zlib.crc32(content):08x}"

    run = run_probe(f"probe.test=fs probe.irq={irq} probe.path=from-host.txt probe.out=from-guest.txt probe.text={text}",
                    "--fs", f"tag=hostshare,path={shared}", "--memory", "64M", timeout=120)

    head = run.line("init")
    assert (head["tag"], head["request_queues"], head["init"], head["major"]) == ("hostshare", "1", "ok", "7")
    read = run.line("path")
    assert (read["lookup"], read["open"], read["read"], read["release"]) == ("ok", "ok", "ok", "ok")
    assert (int(read["len"]), int(read["size"]), int(read["fnv"], 16)) == (len(content), len(content), fnv1a(content))
    wrote = run.line("out")
    assert (wrote["create"], wrote["write"], wrote["wrote"], wrote["size"]) == ("ok", "ok", str(len(text)), str(len(text)))
    assert (shared / "from-guest.txt").read_bytes() == text.encode()
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0


def test_a_driver_that_resets_and_starts_over_gets_the_rings_back(shared: Path) -> None:
    (shared / "in").write_bytes(b"read three times")
    (shared / "out").write_bytes(b"an older and longer content")

    run = run_probe("probe.test=fs probe.irq=msix probe.n=3 probe.path=in probe.out=out probe.text=short",
                    "--fs", f"tag=t,path={shared}", "--memory", "64M", timeout=120)

    assert [f["reset"] for f in run.lines() if "round" in f] == ["1", "1"]
    assert [f["data"] for f in run.lines() if "path" in f] == ["read three times"] * 3
    assert [(f.get("open"), f["size"]) for f in run.lines() if "out" in f] == [("ok", "5")] * 3
    assert (shared / "out").read_bytes() == b"short"
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0


def test_a_missing_file_is_an_errno_the_guest_sees(shared: Path) -> None:
    run = run_probe("probe.test=fs probe.path=absent", "--fs", f"tag=t,path={shared}", "--memory", "64M", timeout=120)

    assert run.line("path")["lookup"] == "errno2"  # ENOENT, from the host's file system
    assert run.lines()[-1] == {"result": "fail"}


def test_killing_the_back_end_fails_the_device_and_the_guest_runs_on(
    shared: Path, own_virtiofsd: tuple[subprocess.Popen[bytes], Path]
) -> None:
    daemon, sock = own_virtiofsd
    (shared / "f").write_bytes(b"before the kill")

    def kill_back_end(vmm: subprocess.Popen[str]) -> None:
        daemon.kill()
        daemon.wait()

    # once the guest has served a few heartbeats through the back end
    run = _run_and_interrupt(["--cmdline", "probe.test=fs probe.irq=msix probe.path=f probe.secs=6",
                              "--fs", f"tag=t,socket={sock}"], "tick=3 ", kill_back_end)

    ticks = [f for f in run.lines() if "tick" in f]
    assert [int(f["tick"]) for f in ticks] == list(range(1, 25))  # every heartbeat, before and after
    assert all(f["getattr"] == "ok" for f in ticks[:3])
    after = [f for f in ticks if int(f["status"], 16) & STATUS_NEEDS_RESET]
    assert after and all(f["getattr"] in ("skipped", "timeout") for f in after)
    assert int(after[-1]["tick"]) == 24  # the device stays failed; the guest carries on to the end
    assert run.line("path")["data"] == "before the kill"
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0
    assert run.stderr.count("back end closed the connection") == 1


def test_a_snapshot_of_a_machine_with_virtio_fs_is_refused_and_the_guest_runs_on(shared: Path, tmp_path: Path) -> None:
    (shared / "f").write_bytes(b"x")
    snapshot = tmp_path / "m.snap"
    run = _run_and_interrupt(["--cmdline", "probe.test=fs probe.irq=msix probe.path=f probe.secs=3",
                              "--fs", f"tag=t,path={shared}", "--snapshot-on-signal", str(snapshot)],
                             "tick=2 ", lambda vmm: vmm.send_signal(signal.SIGUSR2))

    ticks = [f for f in run.lines() if "tick" in f]
    assert len(ticks) == 12 and all(f["getattr"] == "ok" for f in ticks)  # the device never stopped serving
    assert run.lines()[-1] == {"result": "pass"} and not snapshot.exists()
    assert "pyhv: snapshot not saved: cannot save: fs[0] (virtio-fs 't') is a vhost-user device" in run.stderr


def _run_and_interrupt(
    args: list[str], marker: str, interrupt: Callable[[subprocess.Popen[str]], None]
) -> Run:
    """Boot the probe with ``args``; once the guest printed ``marker``, ``interrupt``
    it (from outside) and let it run to its end."""
    vmm = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--debug-exit", "--memory", "64M", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
    )
    assert vmm.stdout is not None
    seen = []
    for line in vmm.stdout:
        seen.append(line)
        if marker in line:
            break
    interrupt(vmm)
    try:
        rest, stderr = vmm.communicate(timeout=120)
    finally:
        vmm.kill()
    return Run(vmm.returncode, "".join(seen) + rest, stderr)
