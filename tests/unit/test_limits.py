"""Configuration files and API bodies are bounded in size and nesting, refused in one line."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from pyhv.errors import UsageError
from pyhv.model import files
from pyhv.model.files import MAX_DEPTH, too_deep

from ..conftest import ROOT


def _deep_toml(tmp_path: pathlib.Path, depth: int) -> pathlib.Path:
    path = tmp_path / "deep.toml"
    path.write_text('name = "d"\nkernel = "/k"\nx = ' + "[" * depth + "]" * depth + "\n")
    return path


def _pyhv(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_SOCKET="/nonexistent/pyhvd.sock")
    return subprocess.run([sys.executable, "-m", "pyhv", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("value, deep", [
    (1, False), ([[[]]], False), ({"a": [{"b": 1}]}, False),
    ([[]] * 100, False), (["x"] * 10_000, False),
])
def test_too_deep_counts_levels_not_items(value: object, deep: bool) -> None:
    assert too_deep(value, limit=3) is deep


def test_too_deep_at_the_limit() -> None:
    value: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        value = [value]
    assert (too_deep(value), too_deep([value])) == (False, True)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_deeply_nested_toml_is_refused_naming_the_file(tmp_path: pathlib.Path, depth: int) -> None:
    path = _deep_toml(tmp_path, depth)
    with pytest.raises(UsageError) as e:
        files.load_mapping(str(path))
    assert str(e.value) == f"{path}: arrays or tables nested more than {MAX_DEPTH} deep"


def test_a_configuration_file_over_1_mib_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text('name = "d"\nkernel = "/k"\n' + "# padding\n" * 120_000)
    with pytest.raises(UsageError) as e:
        files.load_mapping(str(path))
    assert str(e.value) == f"{path}: larger than 1 MiB: not a domain configuration"


def test_a_deep_override_is_kept_as_a_string() -> None:
    config: dict[str, object] = {}
    files.apply_override(config, "cmdline=" + "[" * 10_000)
    assert config == {"cmdline": "[" * 10_000}


@pytest.mark.parametrize("command", [["create"], ["run", "--config"]])
def test_the_cli_refuses_a_deep_configuration_in_one_line(tmp_path: pathlib.Path, command: list[str]) -> None:
    path = _deep_toml(tmp_path, 10_000)
    r = _pyhv(*command, str(path))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"pyhv: {path}: arrays or tables nested more than {MAX_DEPTH} deep\n"
