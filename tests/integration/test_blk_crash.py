"""Crash consistency: what the guest wrote and flushed survives kill -9 of the VMM."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import PROBE, ROOT

pytestmark = pytest.mark.kvm

MASK = (1 << 64) - 1


def pattern(sector: int, salt: int) -> bytes:
    """The probe's data pattern for one sector (guests/README.md)."""
    x = ((2 * sector + 1 + (salt << 56)) * 0x9E3779B97F4A7C15) & MASK
    words = []
    for _ in range(64):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
        words.append(x)
    return struct.pack("<64Q", *words)


def test_flushed_writes_are_in_the_image_after_kill_9(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    p = subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=blkflush probe.n=512",
         "--disk", str(image)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert p.stdout is not None
    flushed = next((line for line in iter(p.stdout.readline, b"") if line.startswith(b"probe: blkflush")), b"")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=20)
    data = image.read_bytes()[: 512 * 512]
    assert flushed == b"probe: blkflush sectors=512 salt=2 flush=OK\n"
    assert [s for s in range(512) if data[s * 512 : (s + 1) * 512] != pattern(s, 2)] == []
