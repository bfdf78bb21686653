"""Listening unix sockets replace only a stale socket, never another kind of file, and start at 0600."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from pyhv.backends.unixsock import close_listener, listen_unix


def test_a_listening_socket_is_0600_and_leaves_no_staging_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    sock = listen_unix(path)
    try:
        mode = os.lstat(path).st_mode
        left = sorted(os.listdir(tmp_path))
    finally:
        close_listener(sock, path)
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600 and left == ["c.sock"]


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    sock = listen_unix(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        close_listener(sock, path)


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_anything_but_a_socket_at_the_path_is_left_alone(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    path = tmp_path / "c.sock"
    if kind == "file":
        path.write_text("mine\n")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    with pytest.raises(FileExistsError, match="not a socket"):
        listen_unix(str(path))
    assert target.read_text() == "root:x:0:0\n" and os.path.lexists(path)
    assert sorted(os.listdir(tmp_path)) == ["c.sock", "passwd"]
