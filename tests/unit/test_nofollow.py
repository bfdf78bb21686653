"""No symbolic link planted in a domain's run or log directory is ever followed.

Every link here points at a file in the test's own directory (``target``),
standing for /etc/passwd: it must come out unchanged, and a refused open is
one line naming the file."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from pyhv._sys import files
from pyhv._sys.files import NotFollowed
from pyhv.backends.console import LogConsole
from pyhv.errors import UsageError
from pyhv.toolstack import domain, processes, store
from pyhv.toolstack.client import ApiError
from pyhv.vmm.runtime import Ending

from ..conftest import ROOT
from .test_registry import Pyhvd, _config

SECRET = "root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def target(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "passwd"
    path.write_text(SECRET)
    return path


def _plant(directory: pathlib.Path, name: str, target: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / name
    link.symlink_to(target)
    return link


def test_open_nofollow_refuses_a_link_in_one_line_naming_it(tmp_path: pathlib.Path, target: pathlib.Path) -> None:
    link = _plant(tmp_path / "d", "console.log", target)
    with pytest.raises(NotFollowed) as e:
        files.open_nofollow(str(link), os.O_WRONLY | os.O_APPEND)
    assert str(e.value) == f"{link}: is a symbolic link (not followed)"
    assert target.read_text() == SECRET


def test_replace_file_replaces_a_link_itself_never_what_it_points_to(
    tmp_path: pathlib.Path, target: pathlib.Path
) -> None:
    link = _plant(tmp_path / "d", "status.json", target)
    _plant(tmp_path / "d", "status.json.tmp", target)
    files.replace_file(str(link), b"{}")
    assert target.read_text() == SECRET
    assert not link.is_symlink() and link.read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["status.json", "status.json.tmp"]


STORE_WRITES: dict[str, tuple[str, Callable[[store.DomainStore, str], Any]]] = {
    "domain.json": ("domain.json", lambda s, d: s.write_meta(d, {"id": 1})),
    "domain.json.tmp": ("domain.json.tmp", lambda s, d: s.write_meta(d, {"id": 1})),
    "pid": ("pid", lambda s, d: s.write_pid(d, 1234, "5678")),
    "crashed.json": ("crashed.json", lambda s, d: s.write_crashed(d, "killed")),
    "crashed.json.tmp": ("crashed.json.tmp", lambda s, d: s.write_crashed(d, "killed")),
}


@pytest.mark.parametrize("name,write", STORE_WRITES.values(), ids=STORE_WRITES.keys())
def test_pyhvd_writes_its_run_files_without_following_a_planted_link(
    tmp_path: pathlib.Path, target: pathlib.Path, name: str, write: Callable[[store.DomainStore, str], Any]
) -> None:
    s = store.DomainStore(str(tmp_path / "run"), str(tmp_path / "state"))
    run_dir = s.make_run_dir(1)
    _plant(pathlib.Path(run_dir), name, target)
    write(s, run_dir)
    assert target.read_text() == SECRET


@pytest.mark.parametrize("name", ["domain.json", "pid", "status.json", "crashed.json"])
def test_pyhvd_reads_no_run_file_through_a_planted_link(
    tmp_path: pathlib.Path, name: str
) -> None:
    s = store.DomainStore(str(tmp_path / "run"), str(tmp_path / "state"))
    run_dir = s.make_run_dir(1)
    real = tmp_path / "real.json"
    real.write_text('{"why": "planted", "id": 1}' if name != "pid" else "4321 99\n")
    _plant(pathlib.Path(run_dir), name, real)
    assert [s.read_meta(run_dir), s.read_pid(run_dir), s.read_status(run_dir), s.read_crashed(run_dir)] == \
        [None, (0, ""), None, None]


def test_the_next_domain_id_is_neither_read_nor_written_through_a_link(
    tmp_path: pathlib.Path
) -> None:
    s = store.DomainStore(str(tmp_path / "run"), str(tmp_path / "state"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("41\n")
    _plant(tmp_path / "state", "next-domid", elsewhere)
    assert s.next_id([]) == 1
    assert elsewhere.read_text() == "41\n"
    assert (tmp_path / "state" / "next-domid").read_text() == "2\n"


def test_a_log_directory_that_is_a_link_is_refused(tmp_path: pathlib.Path) -> None:
    s = store.DomainStore(str(tmp_path / "run"), str(tmp_path / "state"))
    (tmp_path / "elsewhere").mkdir()
    _plant(tmp_path / "state" / "domains", "web", tmp_path / "elsewhere")
    with pytest.raises(NotFollowed, match="web: is a symbolic link"):
        s.make_log_dir("web")


@pytest.mark.parametrize("name", ["status.json", "status.json.tmp"])
def test_a_domain_writes_status_json_without_following_a_planted_link(
    tmp_path: pathlib.Path, target: pathlib.Path, name: str
) -> None:
    _plant(tmp_path / "run", name, target)
    domain._write_status(str(tmp_path / "run"), Ending("poweroff", 0, "guest powered off"))
    assert target.read_text() == SECRET
    assert json.loads((tmp_path / "run" / "status.json").read_text())["reason"] == "poweroff"


def test_a_domain_whose_domain_json_is_a_link_exits_with_one_line(
    tmp_path: pathlib.Path, target: pathlib.Path
) -> None:
    link = _plant(tmp_path / "run", "domain.json", target)
    p = subprocess.run([sys.executable, "-S", "-m", "pyhv", "domain", str(tmp_path / "run")], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"{link}: is a symbolic link (not followed)" in p.stderr
    assert target.read_text() == SECRET


def test_the_console_log_is_not_opened_through_a_link(tmp_path: pathlib.Path, target: pathlib.Path) -> None:
    link = _plant(tmp_path / "log", "console.log", target)
    with pytest.raises(UsageError) as e:
        LogConsole(str(link), str(tmp_path / "console.sock"))
    assert str(e.value) == f"cannot open the console log {link}: is a symbolic link (not followed)"
    assert target.read_text() == SECRET


def test_the_vmm_log_is_not_opened_through_a_link(tmp_path: pathlib.Path, target: pathlib.Path) -> None:
    link = _plant(tmp_path / "log", "vmm.log", target)
    with pytest.raises(NotFollowed) as e:
        processes.spawn(str(tmp_path / "run"), str(tmp_path / "log"), [], {})
    assert e.value.filename == str(link)
    assert target.read_text() == SECRET


@pytest.mark.parametrize("name,status", [("vmm.log", 500), ("console.log", 400)])
def test_pyhvd_refuses_a_create_over_a_planted_log_link_in_one_line(
    tmp_path: pathlib.Path, target: pathlib.Path, name: str, status: int
) -> None:
    pyhvd = Pyhvd(tmp_path)
    link = _plant(tmp_path / "state" / "domains" / "web", name, target)
    try:
        with pytest.raises(ApiError) as e:
            pyhvd.client.post("/domains", {"config": _config("web")})
    finally:
        pyhvd.close()
    assert e.value.http_status == status and "\n" not in str(e.value) and str(link) in str(e.value), str(e.value)
    assert "is a symbolic link (not followed)" in str(e.value)
    assert target.read_text() == SECRET
    assert os.listdir(tmp_path / "run" / "domains") == []


def test_a_domain_refused_its_console_log_says_why_in_one_line_of_vmm_log(
    tmp_path: pathlib.Path, target: pathlib.Path
) -> None:
    pyhvd = Pyhvd(tmp_path)
    link = _plant(tmp_path / "state" / "domains" / "web", "console.log", target)
    try:
        with pytest.raises(ApiError):
            pyhvd.client.post("/domains", {"config": _config("web")})
    finally:
        pyhvd.close()
    vmm_log = (tmp_path / "state" / "domains" / "web" / "vmm.log").read_text()
    assert vmm_log.count("\n") == 1 and f"{link}: is a symbolic link (not followed)" in vmm_log, vmm_log
