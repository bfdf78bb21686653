"""Run the probe guest under pyhv (or QEMU) and parse what it printed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

from ..conftest import PROBE, ROOT


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str

    def lines(self) -> list[dict[str, str]]:
        """The probe's ``probe: key=value ...`` lines as dicts, in order."""
        out = []
        for line in self.stdout.splitlines():
            if line.startswith("probe: "):
                fields = {}
                for token in shlex.split(line[len("probe: "):]):
                    key, _, value = token.partition("=")
                    fields[key] = value
                out.append(fields)
        return out

    def line(self, key: str) -> dict[str, str]:
        """The first probe line that has ``key``."""
        matches = [f for f in self.lines() if key in f]
        assert matches, f"no probe line with {key!r} in:\n{self.stdout}\nstderr:\n{self.stderr}"
        return matches[0]


def pyhv(*args: str, timeout: float = 60) -> Run:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [sys.executable, "-m", "pyhv", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def run_probe(cmdline: str, *extra: str, timeout: float = 60) -> Run:
    return pyhv("run", "--kernel", str(PROBE), "--cmdline", cmdline, "--debug-exit", *extra, timeout=timeout)


def fnv1a(data: bytes) -> int:
    """FNV-1a, 32 bits: the hash the probe prints of what it read (fs, blksum)."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFF_FFFF
    return h
