"""The raw disk backend: cache=writeback through the page cache, cache=none with O_DIRECT."""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

import pytest

from pyhv.backends.block import RawDisk
from pyhv.errors import ImageError

SECTOR = 512


def _image(tmp_path: Path, size: int = 1 << 20) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(size))
    return path


def _page_aligned(size: int) -> memoryview:
    return memoryview(mmap.mmap(-1, size))  # anonymous mappings start on a page


def test_cache_none_opens_the_image_with_o_direct(tmp_path: Path) -> None:
    disk = RawDisk(str(_image(tmp_path)), direct=True)
    try:
        direct_flags = fcntl.fcntl(disk._direct_fd, fcntl.F_GETFL)
        buffered_flags = fcntl.fcntl(disk.fd, fcntl.F_GETFL)
    finally:
        disk.close()
    assert direct_flags & os.O_DIRECT and not buffered_flags & os.O_DIRECT


def test_cache_writeback_has_no_o_direct_descriptor(tmp_path: Path) -> None:
    disk = RawDisk(str(_image(tmp_path)))
    try:
        assert disk._direct_fd == -1 and not fcntl.fcntl(disk.fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        disk.close()


def test_aligned_and_unaligned_requests_both_reach_the_file_with_cache_none(tmp_path: Path) -> None:
    path = _image(tmp_path)
    disk = RawDisk(str(path), direct=True)
    aligned = _page_aligned(4096)
    aligned[:] = b"A" * 4096
    odd = memoryview(bytearray(b"B" * 700))  # not a whole number of sectors: the buffered descriptor takes it
    try:
        disk.writev(8 * SECTOR, [aligned])
        disk.writev(100, [odd])
        disk.flush()
        back = _page_aligned(4096)
        disk.readv(8 * SECTOR, [back])
    finally:
        disk.close()
    data = path.read_bytes()
    assert bytes(back) == b"A" * 4096 and data[8 * SECTOR : 8 * SECTOR + 4096] == b"A" * 4096
    assert data[100:800] == b"B" * 700


def test_cache_none_where_o_direct_is_refused_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with pytest.raises(ImageError, match="cache=none: cannot open the image with O_DIRECT: Invalid argument"):
        RawDisk(str(_image(tmp_path)), direct=True)
