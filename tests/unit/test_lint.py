"""ruff and mypy stay clean (the dev tools are installed by scripts/setup)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from ..conftest import ROOT


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is not installed: run scripts/setup"
    p = subprocess.run([ruff, "check", "pyhv", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout


def test_mypy_finds_nothing_in_pyhv() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "mypy", "pyhv"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stdout
