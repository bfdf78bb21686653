"""`pyhv run` as a process: signals, serial destinations, crash reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ..conftest import PROBE, ROOT
from .probe import run_probe

pytestmark = pytest.mark.kvm


def _start(cmdline: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", cmdline, "--debug-exit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
    )


def _first_line(p: subprocess.Popen[bytes]) -> bytes:
    assert p.stdout is not None
    return p.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_running_guest_with_128_plus_signal(signum: int) -> None:
    p = _start("probe.test=cpu probe.n=100000000000")
    assert _first_line(p).startswith(b"probe: boot")
    p.send_signal(signum)
    status = p.wait(timeout=20)
    assert status == 128 + signum and b"Traceback" not in p.stderr.read()  # type: ignore[union-attr]


def test_serial_to_file_holds_the_guest_output(tmp_path: os.PathLike[str]) -> None:
    log = os.path.join(tmp_path, "console.log")
    run = run_probe("probe.test=hello", "--serial", f"file:{log}")
    with open(log) as f:
        text = f.read()
    assert run.status == 0 and run.stdout == "" and "probe: result=pass" in text


def test_serial_none_discards_output_but_keeps_the_exit_status() -> None:
    run = run_probe("probe.test=fault", "--serial", "none")
    assert (run.status, run.stdout) == (3, "")


def test_large_guest_with_memory_above_4g_boots() -> None:
    run = run_probe("probe.test=hello", "--memory", "5G")
    assert run.line("result")["result"] == "pass"


def test_guest_started_twice_in_a_row_leaves_nothing_behind() -> None:
    first, second = run_probe("probe.test=hello"), run_probe("probe.test=hello")
    assert first.status == second.status == 0


def test_guest_reboot_with_destroy_ends_pyhv_with_0() -> None:
    run = run_probe("probe.test=reboot", "--on-reboot", "destroy")
    assert run.line("reboot")["via"] == "i8042" and run.status == 0 and "rebooted" in run.stderr


def test_guest_reboot_through_port_0x92_with_a20_read_back() -> None:
    run = run_probe("probe.test=reboot-porta", "--on-reboot", "destroy")
    line = run.line("reboot")
    assert line["via"] == "porta" and int(line["porta"], 16) == 0x02 and run.status == 0, run.stderr
    assert "rebooted" in run.stderr


def test_guest_reboot_through_the_reset_control_register_0xcf9() -> None:
    run = run_probe("probe.test=reboot-cf9", "--on-reboot", "destroy")
    assert run.line("reboot")["via"] == "cf9" and run.status == 0 and "rebooted" in run.stderr, run.stderr


# The documented mappings (README): pyhv's own is the value's low byte; QEMU's is (V << 1) | 1.
MAPPINGS = {"--debug-exit": lambda v: v & 0xFF, "--debug-exit=pyhv": lambda v: v & 0xFF,
            "--debug-exit=qemu": lambda v: ((v << 1) | 1) & 0xFF}


@pytest.mark.parametrize("option", MAPPINGS)
@pytest.mark.parametrize("value", [0, 1, 0x2A, 0x1FF])
def test_debug_exit_status_is_the_documented_mapping_of_what_the_guest_wrote(option: str, value: int) -> None:
    from .probe import pyhv

    run = pyhv("run", "--kernel", str(PROBE), "--cmdline", f"probe.test=exit probe.n={value}", option)
    wrote = int(run.line("exit")["value"], 16)
    assert (wrote, run.status) == (value, MAPPINGS[option](wrote)), run.stderr


@pytest.mark.parametrize("via", ["0xcf9", "0x92"])
def test_cmos_shutdown_status_byte_survives_a_guest_reset(via: str) -> None:
    run = run_probe(f"probe.test=cmos probe.n={0x5A} probe.port={via}")
    first, written, after = [line for line in run.lines() if "cmos" in line]
    assert (first["shutdown"], first["boot"]) == ("0x0", "first") and written["read"] == written["wrote"] == "0x5a"
    assert (after["shutdown"], after["boot"]) == ("0x5a", "after_reset") and run.status == 0, run.stderr


def test_guest_reboot_with_restart_boots_the_guest_again() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=reboot",
         "--on-reboot", "restart"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
    )
    try:
        boots = [line for line in (_first_line(p) for _ in range(4)) if line.startswith(b"probe: boot")]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)  # a SIGTERM that is lost fails here
    finally:
        p.kill()  # never left behind, whatever happened
        p.wait()
    assert len(boots) == 2


def test_poweroff_with_restart_boots_the_guest_again() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=poweroff",
         "--on-poweroff", "restart"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
    )
    try:
        lines = [_first_line(p) for _ in range(6)]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)  # a SIGTERM that is lost fails here
    finally:
        p.kill()  # never left behind, whatever happened
        p.wait()
    assert sum(line.startswith(b"probe: boot") for line in lines) >= 2


def test_debug_exit_ends_pyhv_run_even_with_on_poweroff_restart() -> None:
    from .probe import run_probe

    run = run_probe("probe.test=hello", "--on-poweroff", "restart")
    assert run.status == 0 and run.stdout.count("probe: boot") == 1 and "probe: result=pass" in run.stdout


def test_domain_config_file_boots_its_vcpus(tmp_path: os.PathLike[str]) -> None:
    from .probe import pyhv

    path = os.path.join(tmp_path, "probe.toml")
    with open(path, "w") as f:
        f.write(f'name = "probe"\nkernel = "{PROBE}"\ncmdline = "probe.test=smp"\nvcpus = 2\nmemory = 128\n')
    run = pyhv("run", "--config", path, "--debug-exit")
    assert run.line("cpus_online")["cpus_online"] == "2" and run.status == 0


def test_a_disk_in_use_by_a_running_guest_is_refused_to_a_second_one(tmp_path: os.PathLike[str]) -> None:
    disk = os.path.join(tmp_path, "d.img")
    with open(disk, "wb") as f:
        f.write(bytes(1 << 20))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=cpu probe.n=100000000000",
         "--disk", disk], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
    )
    try:
        assert _first_line(first).startswith(b"probe: boot")
        second = run_probe("probe.test=hello", "--disk", disk)
        read_only = run_probe("probe.test=hello", "--disk", f"{disk},ro")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    for run in (second, read_only):
        assert run.status == 2 and run.stdout == "", run.stderr
        assert run.stderr == f"pyhv: {disk}: disk image is in use by another domain or program (it holds a lock on it)\n"
    assert run_probe("probe.test=hello", "--disk", disk).status == 0  # free again


def test_one_image_given_twice_to_a_guest_is_refused(tmp_path: os.PathLike[str]) -> None:
    disk = os.path.join(tmp_path, "d.img")
    with open(disk, "wb") as f:
        f.write(bytes(1 << 20))
    alias = os.path.join(tmp_path, "alias.img")
    os.symlink(disk, alias)
    by_name = run_probe("probe.test=hello", "--disk", disk, "--disk", f"{disk},ro")
    by_inode = run_probe("probe.test=hello", "--disk", disk, "--disk", f"{alias},ro")
    assert (by_name.status, by_name.stdout, by_inode.status, by_inode.stdout) == (2, "", 2, "")
    assert by_name.stderr == f"pyhv: --disk '{disk},ro': path: the same image as disks[0]\n"
    assert by_inode.stderr == f"pyhv: {alias}: the same disk image as {disk}: a machine opens each image once\n"
