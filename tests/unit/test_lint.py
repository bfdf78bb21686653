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


def test_no_layer_imports_the_cli_and_the_model_imports_only_errors() -> None:
    import re

    upward = []
    for path in sorted((ROOT / "pyhv").rglob("*.py")):
        rel = path.relative_to(ROOT / "pyhv").as_posix()
        text = path.read_text()
        if rel != "cli.py" and rel != "__main__.py" and re.search(r"^\s*from \.+cli import|^\s*import pyhv\.cli", text, re.M):
            upward.append(rel)
        if rel.startswith("model/"):
            imported = set(re.findall(r"^\s*from (\.\.[\w.]*) import", text, re.M))
            upward += [f"{rel}: {m}" for m in imported - {"..errors"}]
    assert upward == []
