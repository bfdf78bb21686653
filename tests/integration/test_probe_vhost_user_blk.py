"""vhost-user-blk through qemu-storage-daemon: copy-on-write overlays over one shared base image."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import PROBE, ROOT
from .probe import Run, fnv1a, pyhv, run_probe

pytestmark = pytest.mark.kvm

SECTOR = 512
SUM_SECTORS = 256


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.img"
    path.write_bytes(b"".join(f"base sector {i:08d}\n".encode().ljust(SECTOR, b".") for i in range(32768)))  # 16 MiB
    return path


def blksum(run: Run) -> int:
    line = run.line("blksum")
    assert (line["sectors"], line["read"]) == (str(SUM_SECTORS), "OK"), run.stdout
    return int(line["fnv"], 16)


def test_ten_domains_share_a_base_and_see_only_their_own_writes(base: Path, tmp_path: Path) -> None:
    before = base.read_bytes()
    base_sum = fnv1a(before[: SUM_SECTORS * SECTOR])
    writers = [tmp_path / f"w{i}.qcow2" for i in range(5)]
    readers = [tmp_path / f"r{i}.qcow2" for i in range(5)]

    def start(overlay: Path, test: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--debug-exit", "--memory", "64M",
             "--cmdline", f"probe.test={test} probe.irq=msix probe.n={SUM_SECTORS}",
             "--disk", f"base={base},overlay={overlay}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))

    # ten at once on the one base: five write all over their disks, five read their own
    procs = [start(o, "blk") for o in writers] + [start(o, "blksum") for o in readers]
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        runs.append(Run(p.returncode, out, err))

    assert [r.line("verified")["mismatches"] for r in runs[:5]] == ["0"] * 5, [r.stdout for r in runs[:5]]
    assert [r.lines()[-1] for r in runs[:5]] == [{"result": "pass"}] * 5
    assert [blksum(r) for r in runs[5:]] == [base_sum] * 5  # the writers' data reached no reader
    again = [blksum(run_probe(f"probe.test=blksum probe.n={SUM_SECTORS}", "--disk", f"base={base},overlay={o}",
                              "--memory", "64M", timeout=120)) for o in writers + readers]
    assert [s != base_sum for s in again] == [True] * 5 + [False] * 5  # each writer's writes stay in its overlay
    assert base.read_bytes() == before


def test_a_read_only_overlay_refuses_writes(base: Path, tmp_path: Path) -> None:
    run = run_probe("probe.test=blk", "--disk", f"base={base},overlay={tmp_path / 'ro.qcow2'},ro", "--memory", "64M",
                    timeout=180)

    assert run.line("ro_write")["ro_write"] == "IOERR" and run.line("capacity")["ro"] == "1"
    assert run.lines()[-1] == {"result": "pass"}


def test_an_overlay_over_another_base_is_refused_in_one_line(base: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1 << 20))
    overlay = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(other), str(overlay)], check=True)

    run = run_probe("probe.test=blksum", "--disk", f"base={base},overlay={overlay}")

    assert run.status == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [f"pyhv: disks[0].path {overlay}: its backing file is {other}, not {base}"]


@pytest.fixture
def storage_daemon(base: Path, tmp_path: Path) -> Iterator[Path]:
    """A qemu-storage-daemon the test runs itself, exporting the raw base read-write."""
    image = tmp_path / "plain.img"
    image.write_bytes(base.read_bytes())
    sock = tmp_path / "blk.sock"
    proc = subprocess.Popen(["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={image}",
                             "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},writable=on"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "qemu-storage-daemon did not start"
        time.sleep(0.01)
    yield sock
    proc.terminate()
    proc.wait()


def test_the_blk_workload_runs_on_a_vhost_user_socket(storage_daemon: Path) -> None:
    run = run_probe("probe.test=blk probe.irq=msix", "--disk", f"vhost-user={storage_daemon}", "--memory", "64M",
                    timeout=180)

    assert run.line("verified")["mismatches"] == "0"
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0


def test_a_socket_with_no_back_end_is_one_line(tmp_path: Path) -> None:
    run = pyhv("run", "--kernel", str(PROBE), "--disk", f"vhost-user={tmp_path / 'none.sock'}")

    assert run.status == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "disks[0]: vhost-user-blk disks[0]: cannot connect to" in run.stderr
