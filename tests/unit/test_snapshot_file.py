"""Opening a snapshot file: anything but a regular file is refused at once, in one line."""

from __future__ import annotations

import os
import pathlib

import pytest

from pyhv.vmm.snapshot import Snapshot, SnapshotError


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "m.snap"
    os.mkfifo(fifo)
    with pytest.raises(SnapshotError) as e:
        Snapshot(str(fifo))
    assert str(e.value) == f"cannot open snapshot {fifo}: not a regular file"


def test_a_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SnapshotError) as e:
        Snapshot(str(tmp_path))
    assert str(e.value) == f"cannot open snapshot {tmp_path}: not a regular file"


def test_a_symbolic_link_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "target").write_bytes(b"PYHVSNAP")
    (tmp_path / "m.snap").symlink_to(tmp_path / "target")
    with pytest.raises(SnapshotError) as e:
        Snapshot(str(tmp_path / "m.snap"))
    assert str(e.value) == f"cannot open snapshot {tmp_path / 'm.snap'}: a symbolic link, not a regular file"
