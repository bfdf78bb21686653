"""Debian's gdb against ``pyhv run --gdb`` on the probe guest: a breakpoint in the
probe's ring-3 code, a variable, a single step, detach, and the probe's own pass line."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import socket
import sys

import pytest

from ..conftest import PROBE, ROOT, symbol

pytestmark = pytest.mark.kvm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _debug(tmp_path: pathlib.Path, commands: str, cmdline: str = "probe.test=pio probe.n=200",
           *extra: str, tcp: bool = False) -> tuple[str, str, int]:
    """Run the probe under ``--gdb unix:...,wait`` (or tcp:) and gdb in batch mode;
    (gdb's output, what the guest printed, pyhv's exit status)."""
    gdb = shutil.which("gdb")
    assert gdb, "gdb is needed (scripts/setup installs it)"
    sock = tmp_path / "gdb.sock"
    port = _free_port()
    listen, remote = (f"tcp:127.0.0.1:{port}", f"127.0.0.1:{port}") if tcp else (f"unix:{sock}", str(sock))
    vmm = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", cmdline, "--debug-exit",
         "--gdb", f"{listen},wait", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert vmm.stderr is not None
        vmm.stderr.readline()  # "pyhv: gdb: listening on ..."
        script = tmp_path / "cmds.gdb"
        script.write_text(f"set pagination off\ntarget remote {remote}\n{commands}\n")
        g = subprocess.run([gdb, "-q", "-nx", "-batch", "-x", str(script), str(PROBE)],
                           capture_output=True, text=True, timeout=60, check=False)
        out, err = vmm.communicate(timeout=60)
    finally:
        if vmm.poll() is None:
            vmm.kill()
            vmm.wait()
    return g.stdout + g.stderr, out + "\n" + err, vmm.returncode


def test_ring3_breakpoint_step_and_detach_then_the_probe_passes(tmp_path: pathlib.Path) -> None:
    put_char = symbol("put_char")
    gdb_out, guest, status = _debug(tmp_path, "\n".join([
        "break *put_char", "continue", "info registers rip", "print $cs & 3", "print/x io_use_gate",
        "stepi", "info registers rip", "detach",
    ]))
    rips = [int(m, 16) for m in re.findall(r"^rip\s+(0x[0-9a-f]+)", gdb_out, re.M)]
    assert rips[0] == put_char and rips[1] > put_char, gdb_out
    assert "$1 = 3" in gdb_out and "$2 = 0x1" in gdb_out, gdb_out  # ring 3; the probe uses the I/O gate
    assert "probe: result=pass" in guest and status == 0, guest


def test_ring0_hardware_breakpoint_in_the_io_gate_then_the_probe_passes(tmp_path: pathlib.Path) -> None:
    io_gate = symbol("io_gate")
    gdb_out, guest, status = _debug(tmp_path, "\n".join([
        "hbreak *io_gate", "continue", "info registers rip", "print $cs & 3", "stepi", "info registers rip",
        "delete", "detach",
    ]))
    rips = [int(m, 16) for m in re.findall(r"^rip\s+(0x[0-9a-f]+)", gdb_out, re.M)]
    assert rips[0] == io_gate and rips[1] > io_gate and "$1 = 0" in gdb_out, gdb_out
    assert "probe: result=pass" in guest and status == 0, guest


def test_watchpoint_is_refused_with_an_error_on_pvm(tmp_path: pathlib.Path) -> None:
    if not os.path.isdir("/sys/module/kvm_pvm"):
        pytest.skip("watchpoints are refused only on PVM hosts")
    gdb_out, guest, status = _debug(tmp_path, "watch io_use_gate\ncontinue\ndetach")
    assert "Could not insert hardware watchpoint" in gdb_out or "Cannot insert" in gdb_out, gdb_out
    assert "data watchpoints are not reported by this host" in guest, guest


def test_kill_from_gdb_ends_the_domain(tmp_path: pathlib.Path) -> None:
    gdb_out, guest, status = _debug(tmp_path, "kill", cmdline="probe.test=counter")
    assert "debugger ends the domain" in guest and status == 0, gdb_out + guest


def test_breakpoint_on_the_second_vcpu_stops_both_and_switches_thread(tmp_path: pathlib.Path) -> None:
    gdb_out, guest, status = _debug(tmp_path, "\n".join([
        "break *ap_user_main", "continue", "info threads", "print $cs & 3", "delete", "detach",
    ]), "probe.test=smp", "--vcpus", "2")
    assert "Thread 2 hit Breakpoint 1, ap_user_main" in gdb_out and "$1 = 3" in gdb_out, gdb_out
    assert "vCPU 0 (paused)" in gdb_out and "vCPU 1 (paused)" in gdb_out, gdb_out
    assert "probe: smp cpus_online=2 expected=2" in guest and "probe: result=pass" in guest and status == 0, guest


def test_tcp_listener_serves_registers_and_detaches(tmp_path: pathlib.Path) -> None:
    gdb_out, guest, status = _debug(tmp_path, "info registers rip\ndetach", tcp=True)
    assert "<_start>" in gdb_out and "probe: result=pass" in guest and status == 0, gdb_out + guest
