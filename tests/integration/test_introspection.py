"""The introspection examples in docs/examples run against the probe and print what it did."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..conftest import PROBE, ROOT

pytestmark = pytest.mark.kvm


def _example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / name), str(PROBE), *args],
        capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_count_ports_example_counts_the_probe_pio_writes_by_port() -> None:
    p = _example("count_ports.py", "1234")
    counts = {int(port, 16): int(n) for port, n in re.findall(r"^port (0x[0-9a-f]+) .*: (\d+) writes", p.stdout, re.M)}
    assert "probe: result=pass" in p.stdout and counts[0xB00] == 1234 and counts[0xF4] == 1, p.stdout + p.stderr


def test_inspect_counter_example_reads_the_counter_through_page_tables() -> None:
    p = _example("inspect_counter.py")
    assert p.returncode == 0 and "cpl=3" in p.stdout and "physical 0x1ff000" in p.stdout, p.stdout + p.stderr
