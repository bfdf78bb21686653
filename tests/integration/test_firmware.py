"""SeaBIOS (Debian's bios.bin) run by pyhv from the reset vector: what the firmware printed
on its debug port about the machine pyhv gave it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.kvm

SEABIOS = Path("/usr/share/seabios/bios.bin")
MiB = 1 << 20


def _firmware_output(*args: str, until: str, timeout: float = 180) -> list[str]:
    """pyhv's console lines up to the first holding ``until`` (the firmware then waits for a
    boot device for ever: pyhv is stopped by a signal)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pyhv", "run", "--firmware", str(SEABIOS), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    assert p.stdout is not None
    text, deadline = b"", time.monotonic() + timeout
    try:
        while until.encode() not in text and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 1.0)[0]:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                text += chunk
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    finally:
        p.kill()
        p.wait()
    return text.decode(errors="replace").splitlines()


def test_seabios_prints_its_banner_and_finds_fw_cfg_memory_and_cpus() -> None:
    lines = _firmware_output("--memory", "128M", "--vcpus", "2", until="No bootable device")
    assert any(line.startswith("SeaBIOS (version ") for line in lines), lines
    assert {"Running on KVM", "Found QEMU fw_cfg", "QEMU fw_cfg DMA interface supported"} <= set(lines)
    # the memory map it read from etc/e820: conventional memory, then RAM from 1 MiB to the top
    assert f"qemu/e820: addr 0x0000000000100000 len {128 * MiB - MiB:#018x} [RAM]" in lines
    assert "Found 2 cpu(s) max supported 2 cpu(s)" in lines
    assert any(line.startswith("No bootable device.") for line in lines)


def test_firmware_that_is_not_a_rom_image_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "rom"
    bad.write_bytes(b"\x90" * 1000)
    p = subprocess.run([sys.executable, "-m", "pyhv", "run", "--firmware", str(bad)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, check=False)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"pyhv: {bad}: a firmware image is a whole number of 64 KiB, at most 16 MiB (this one is 1000 bytes)"]
