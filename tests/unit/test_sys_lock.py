"""pyhv._sys.lock: flock on a lock file and whole-file OFD locks, against the machine's <fcntl.h>."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess

import pytest

from pyhv._sys import lock


def _open(path: pathlib.Path, flags: int = os.O_RDWR) -> int:
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)


def test_struct_flock_and_f_ofd_setlk_match_the_c_header(tmp_path: pathlib.Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed (run scripts/setup)"
    fields = [name for name, *_ in lock.flock._fields_]
    src = tmp_path / "flock.c"
    src.write_text("\n".join([
        "#define _GNU_SOURCE", "#include <stdio.h>", "#include <stddef.h>", "#include <fcntl.h>", "int main(void) {",
        'printf("%zu\\n", sizeof(struct flock));',
        *[f'printf("%zu\\n", offsetof(struct flock, {f}));' for f in fields],
        'printf("%d %d %d\\n", F_OFD_SETLK, F_RDLCK, F_WRLCK);', "return 0;", "}",
    ]))
    subprocess.run([cc, "-o", str(tmp_path / "flock"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "flock")], check=True, capture_output=True, text=True).stdout.split()
    ours = [ctypes.sizeof(lock.flock), *[getattr(lock.flock, f).offset for f in fields]]
    assert out == [str(n) for n in [*ours, lock.F_OFD_SETLK, lock.F_RDLCK, lock.F_WRLCK]]


def test_flock_exclusive_refuses_a_second_holder_until_the_first_closes(tmp_path: pathlib.Path) -> None:
    first, second = _open(tmp_path / "l"), _open(tmp_path / "l")
    try:
        assert lock.flock_exclusive(first)
        assert not lock.flock_exclusive(second)
        os.close(first)
        first = -1
        assert lock.flock_exclusive(second)
    finally:
        for fd in (first, second):
            if fd >= 0:
                os.close(fd)


def test_ofd_write_lock_excludes_every_other_open_even_in_this_process(tmp_path: pathlib.Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    writer, other_writer, reader = _open(image), _open(image), _open(image, os.O_RDONLY)
    try:
        assert lock.ofd_lock(writer, write=True)
        assert (lock.ofd_lock(other_writer, write=True), lock.ofd_lock(reader, write=False)) == (False, False)
        os.close(writer)
        writer = -1
        assert lock.ofd_lock(reader, write=False)
        assert not lock.ofd_lock(other_writer, write=True)
    finally:
        for fd in (writer, other_writer, reader):
            if fd >= 0:
                os.close(fd)


def test_ofd_read_locks_are_shared(tmp_path: pathlib.Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    fds = [_open(image, os.O_RDONLY) for _ in range(2)]
    try:
        assert [lock.ofd_lock(fd, write=False) for fd in fds] == [True, True]
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("write", [True, False])
def test_ofd_lock_on_a_descriptor_of_the_wrong_mode_raises(tmp_path: pathlib.Path, write: bool) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    fd = os.open(image, (os.O_RDONLY if write else os.O_WRONLY) | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError):
            lock.ofd_lock(fd, write=write)
    finally:
        os.close(fd)
