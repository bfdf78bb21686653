"""Debugging pyhvd domains: ``pyhv attach`` (a Python prompt inside the domain
process) and ``pyhv gdb`` (a GDB stub started in a running domain).

The probe's ``counter`` workload prints where it counts (``addr=...``) and then
increments that word forever; the tests read it at the address the guest printed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import PROBE, symbol
from .pyhvd import Daemon, daemon_fixture

pytestmark = pytest.mark.kvm


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from daemon_fixture(tmp_path)


def _counter(d: Daemon, name: str) -> int:
    """Start a counting probe domain; the counter's address, as the guest printed it."""
    r = d.pyhv("create", str(d.config(name, "counter")))
    assert r.returncode == 0, r.stderr
    log = d.wait_for(name, "probe: counter addr=")
    return int(re.search(r"probe: counter addr=(0x[0-9a-f]+)", log).group(1), 16)  # type: ignore[union-attr]


READ = ("r = machine.vcpus[0].registers(); "
        "print('counter', int.from_bytes(machine.memory.read_virtual(r.cr3, {addr}, 8, r.la57), 'little'))")


def test_attach_reads_guest_memory_survives_errors_and_leaves_the_domain_running(daemon: Daemon) -> None:
    d = daemon
    addr = _counter(d, "c1")
    script = "\n".join([
        "import time",
        "machine.pause()", READ.format(addr=addr), "machine.resume()",
        "time.sleep(0.2)",
        "machine.pause()", READ.format(addr=addr), "machine.resume()",
        "1/0",
        "machine.vcpus[0].registers()",
        "machine.pause(); print('after', description.name, machine.vcpus[0].registers().cpl); machine.resume()",
        "exit()",
        "print('not reached')",
    ]) + "\n"
    r = d.pyhv("attach", "c1", input=script, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = [int(n) for n in re.findall(r"^(?:>>> )*counter (\d+)$", r.stdout, re.M)]
    assert len(counts) == 2 and 0 < counts[0] < counts[1], r.stdout
    assert "ZeroDivisionError" in r.stdout and "after c1 3" in r.stdout, r.stdout  # the probe counts in ring 3
    assert "is running: pause the machine first" in r.stdout, r.stdout
    assert "not reached" not in r.stdout
    assert d.domains()["c1"]["state"] in ("running", "blocked")
    # the domain keeps counting after the prompt ended: a second prompt reads a larger value
    again = d.pyhv("attach", "c1", input="machine.pause()\n" + READ.format(addr=addr) + "\nmachine.resume()\n")
    (later,) = [int(n) for n in re.findall(r"counter (\d+)", again.stdout)]
    assert later > counts[1], again.stdout


def test_attach_to_a_missing_domain_is_one_line(daemon: Daemon) -> None:
    r = daemon.pyhv("attach", "nosuch")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_gdb_stub_started_in_a_running_domain_reads_memory_and_detaches(daemon: Daemon, tmp_path: Path) -> None:
    gdb = shutil.which("gdb")
    assert gdb, "gdb is needed (scripts/setup installs it)"
    d = daemon
    addr = _counter(d, "g1")
    r = d.pyhv("gdb", "g1")
    assert r.returncode == 0, r.stderr
    target = re.search(r"target remote (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    again = d.pyhv("gdb", "g1")
    assert again.returncode != 0 and "already listens" in again.stderr, again.stderr

    def session() -> int:
        script = tmp_path / "cmds.gdb"
        script.write_text(f"set pagination off\ntarget remote {target}\nprint $cs & 3\n"
                          f"x/gd {addr:#x}\ndetach\n")
        g = subprocess.run([gdb, "-q", "-nx", "-batch", "-x", str(script), str(PROBE)],
                           capture_output=True, text=True, timeout=60, check=False)
        out = g.stdout + g.stderr
        assert "$1 = 3" in out, out
        return int(re.search(rf"{addr:#x}[^:]*:\s+(\d+)", out).group(1))  # type: ignore[union-attr]

    first = session()
    second = session()  # detached in between: the guest ran on
    assert 0 < first < second
    assert d.domains()["g1"]["state"] in ("running", "blocked")
    stop = d.pyhv("gdb", "--stop", "g1")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert not Path(target).exists()


def test_gdb_listen_must_be_tcp(daemon: Daemon) -> None:
    d = daemon
    _counter(d, "g2")
    r = d.pyhv("gdb", "g2", "unix:/etc/passwd")
    assert r.returncode != 0 and "tcp:HOST:PORT" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_gdb_breakpoint_on_a_probe_function_stops_there_and_the_domain_ticks_on_after_detach(
        daemon: Daemon) -> None:
    gdb = shutil.which("gdb")
    assert gdb, "gdb is needed (scripts/setup installs it)"
    d = daemon
    line_end = symbol("line_end")  # the ticker calls it once per tick line
    r = d.pyhv("create", str(d.config("b1", "ticker", cmdline="probe.test=ticker probe.n=50")))
    assert r.returncode == 0, r.stderr
    d.ticks_reach("b1", 2)
    r = d.pyhv("gdb", "b1")
    assert r.returncode == 0, r.stderr
    target = re.search(r"target remote (\S+)", r.stdout).group(1)  # type: ignore[union-attr]

    g = subprocess.run([gdb, "-q", "-nx", "-batch", "-ex", f"target remote {target}", "-ex", "break line_end",
                        "-ex", "continue", "-ex", "info registers rip", "-ex", "detach", str(PROBE)],
                       capture_output=True, text=True, timeout=120, check=False)
    out = g.stdout + g.stderr
    at_detach = d.ticks("b1")[-1]

    assert [int(m, 16) for m in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)] == [line_end], out
    assert "Breakpoint 1, " in out and "line_end" in out, out
    assert d.ticks_reach("b1", at_detach + 3)[-1] >= at_detach + 3
    dmesg = d.pyhv("dmesg", "b1")
    assert dmesg.returncode == 0 and f"probe: tick n={at_detach + 3} " in dmesg.stdout, dmesg.stderr
