"""Live migration of a probe guest from this process to a `pyhv run --incoming` process.

The guest runs memsum, which prints a progress line every few rounds and a
final checksum: what the source printed followed by what the destination
printed must be exactly what an uninterrupted run prints -- nothing lost,
nothing repeated, the same checksum.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyhv.model import describe, format_size
from pyhv.vmm import Machine, build
from pyhv.vmm import migrate as mg

from ..conftest import PROBE, ROOT
from .probe import pyhv

pytestmark = pytest.mark.kvm

KEY = b"0123456789abcdef-migration-test"
MEMSUM = "probe.test=memsum probe.mb=32 probe.n=600"


@pytest.fixture(scope="module")
def reference() -> str:
    run = pyhv("run", "--kernel", str(PROBE), "--cmdline", MEMSUM, "--debug-exit", "--memory", "128M", timeout=120)
    assert run.status == 0, run.stderr
    return run.stdout


def _wait_for(path: pathlib.Path, pattern: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text()):
            return
        time.sleep(0.01)
    raise AssertionError(f"{pattern!r} not in {path} within {timeout}s")


def _source(tmp_path: pathlib.Path, cmdline: str = MEMSUM, memory: int = 128 << 20) -> tuple[Machine, pathlib.Path]:
    log = tmp_path / "source.log"
    machine = build(describe(kernel=str(PROBE), cmdline=cmdline, serial=f"file:{log}", memory=format_size(memory), debug_exit=True))
    machine.start()
    _wait_for(log, r"memsum round=\d+")
    return machine, log


def _destination(tmp_path: pathlib.Path, listen: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], int]:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [*prefix, sys.executable, "-m", "pyhv", "run", "--incoming", listen, "--migration-key", str(keyfile),
         "--serial", f"file:{tmp_path / 'dest.log'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert p.stderr is not None
    line = p.stderr.readline()
    m = re.search(r"waiting for a migration on .*:(\d+)", line)
    assert m, line + p.stderr.read()
    return p, int(m.group(1))


def _check_concatenation(source_log: pathlib.Path, dest_log: pathlib.Path, reference: str) -> None:
    joined = source_log.read_text() + dest_log.read_text()
    assert joined == reference, f"source:\n{source_log.read_text()}\ndestination:\n{dest_log.read_text()}"


def test_memsum_migrates_to_another_process_without_losing_or_repeating_a_round(
    tmp_path: pathlib.Path, reference: str
) -> None:
    dest, port = _destination(tmp_path, "127.0.0.1:0")
    machine, log = _source(tmp_path)
    try:
        stats = machine.migrate(("127.0.0.1", port), KEY)
        assert machine.state == "stopped"
        out, err = dest.communicate(timeout=120)
    finally:
        machine.close()
        dest.kill()
    assert dest.returncode == 0, err
    assert stats.bytes_sent > 32 << 20 and 0 < stats.downtime_seconds < stats.total_seconds
    _check_concatenation(log, tmp_path / "dest.log", reference)


@pytest.fixture
def netns() -> str:
    assert shutil.which("ip"), "ip is needed: run scripts/setup"
    ns, host_if, ns_if = f"pyhvmig{os.getpid()}", f"vmh{os.getpid() % 100000}", f"vmn{os.getpid() % 100000}"
    cmds = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", "10.231.0.1/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", "10.231.0.2/24", "dev", ns_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_migration_into_another_network_namespace(tmp_path: pathlib.Path, reference: str, netns: str) -> None:
    dest, port = _destination(tmp_path, "10.231.0.2:0", ("ip", "netns", "exec", netns))
    machine, log = _source(tmp_path)
    try:
        mg.migrate(machine, ("10.231.0.2", port), KEY)
        out, err = dest.communicate(timeout=120)
    finally:
        machine.close()
        dest.kill()
    assert dest.returncode == 0, err
    _check_concatenation(log, tmp_path / "dest.log", reference)


def _finish_alone(machine: Machine, log: pathlib.Path, reference: str) -> None:
    """The source carries on as if nothing happened: it finishes the run itself."""
    stop = machine.wait(120)
    machine.close()
    assert stop is not None and stop.status == 0
    assert log.read_text() == reference


def test_destination_killed_mid_migration_leaves_the_source_running(tmp_path: pathlib.Path) -> None:
    cmdline = "probe.test=memsum probe.mb=256 probe.n=60"
    ref = pyhv("run", "--kernel", str(PROBE), "--cmdline", cmdline, "--debug-exit", "--memory", "512M", timeout=120)
    dest, port = _destination(tmp_path, "127.0.0.1:0")
    machine, log = _source(tmp_path, cmdline, 512 << 20)
    errors: list[Exception] = []

    def run() -> None:
        try:
            mg.migrate(machine, ("127.0.0.1", port), KEY)
        except mg.MigrationError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)  # the first pass alone is 256 MiB
    dest.kill()
    dest.wait()
    t.join(60)
    assert errors and "runs on here" in str(errors[0]), errors
    assert machine.state == "running"
    _finish_alone(machine, log, ref.stdout)


class FakeDestination:
    """A receiver that knows the key but gives up at a chosen point."""

    def __init__(self, key: bytes, fail_after: int) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.key, self.fail_after = key, fail_after
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.server.accept()
        try:
            ch = mg._handshake_destination(sock, self.key)
            ch.expect(mg.CONFIG)
            ch.send(mg.READY)
            frames = 0
            while True:
                kind, _ = ch.recv()
                frames += 1
                if kind == mg.DONE or frames >= self.fail_after:
                    break
            if kind == mg.DONE:
                ch.send(mg.FAIL, b"cannot build the machine here")
        except Exception:  # noqa: BLE001 - the fake just hangs up
            pass
        finally:
            sock.close()
            self.server.close()


@pytest.mark.parametrize("fail_after", [1, 10**9], ids=["during-precopy", "after-state"])
def test_a_destination_that_gives_up_leaves_the_source_running(
    tmp_path: pathlib.Path, reference: str, fail_after: int
) -> None:
    machine, log = _source(tmp_path)
    fake = FakeDestination(KEY, fail_after)
    with pytest.raises(mg.MigrationError, match="runs on here"):
        mg.migrate(machine, ("127.0.0.1", fake.port), KEY)
    assert machine.state == "running"
    _finish_alone(machine, log, reference)


def test_a_source_with_the_wrong_key_is_refused_and_the_real_one_gets_through(
    tmp_path: pathlib.Path, reference: str
) -> None:
    dest, port = _destination(tmp_path, "127.0.0.1:0")
    machine, log = _source(tmp_path)
    try:
        with pytest.raises(mg.MigrationError, match="runs on here"):
            mg.migrate(machine, ("127.0.0.1", port), b"not the key, but long enough")
        assert machine.state == "running"
        mg.migrate(machine, ("127.0.0.1", port), KEY)
        out, err = dest.communicate(timeout=120)
    finally:
        machine.close()
        dest.kill()
    assert dest.returncode == 0, err
    _check_concatenation(log, tmp_path / "dest.log", reference)


def test_incoming_without_a_key_is_refused() -> None:
    run = pyhv("run", "--incoming", "127.0.0.1:0")
    assert run.status == 2 and "--migration-key" in run.stderr and len(run.stderr.splitlines()) == 1


@pytest.mark.parametrize("transport,irq", [("pci", "msix"), ("mmio", "poll")])
def test_virtio_blk_carries_on_after_migration(tmp_path: pathlib.Path, transport: str, irq: str) -> None:
    """blksnap wrote its sectors before the migration and reads them back after it,
    through the virtqueue and transport state (MSI-X, or the MMIO registers) the stream carried."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    dest, port = _destination(tmp_path, "127.0.0.1:0")
    log = tmp_path / "source.log"
    machine = build(describe(kernel=str(PROBE), cmdline=f"probe.test=blksnap probe.irq={irq}", serial=f"file:{log}",
                             memory="64M", debug_exit=True, disks=[{"path": str(disk)}], transport=transport))
    try:
        machine.start()
        _wait_for(log, "blksnap state=written")
        machine.migrate(("127.0.0.1", port), KEY)
        out, err = dest.communicate(timeout=120)
    finally:
        machine.close()
        dest.kill()
    assert "state=verified" not in log.read_text(), "the migration came too late to test anything"
    assert dest.returncode == 0, err
    assert "blksnap state=verified sectors=64 status=0 mismatched=0" in (tmp_path / "dest.log").read_text()
