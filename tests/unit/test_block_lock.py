"""Disk images are locked while a machine uses them, as QEMU locks them."""

from __future__ import annotations

import pathlib

import pytest

from pyhv.backends.block import RawDisk, check_distinct
from pyhv.errors import ImageError


@pytest.fixture
def image(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 16))
    return path


@pytest.mark.parametrize("second_readonly", [False, True])
def test_a_read_write_disk_cannot_be_opened_again_while_in_use(image: pathlib.Path, second_readonly: bool) -> None:
    first = RawDisk(str(image))
    try:
        with pytest.raises(ImageError) as e:
            RawDisk(str(image), readonly=second_readonly)
    finally:
        first.close()
    assert str(e.value) == f"{image}: disk image is in use by another domain or program (it holds a lock on it)"
    RawDisk(str(image)).close()  # closing released it


def test_read_only_disks_share_an_image_but_keep_writers_out(image: pathlib.Path) -> None:
    readers = [RawDisk(str(image), readonly=True) for _ in range(2)]
    try:
        with pytest.raises(ImageError, match="in use"):
            RawDisk(str(image))
    finally:
        for r in readers:
            r.close()


def test_unlock_hands_the_image_over_and_relock_takes_it_back(image: pathlib.Path) -> None:
    source = RawDisk(str(image))
    try:
        source.unlock()
        destination = RawDisk(str(image))
        with pytest.raises(ImageError, match="in use"):
            source.relock()
        destination.close()
        source.relock()
        with pytest.raises(ImageError, match="in use"):
            RawDisk(str(image))
    finally:
        source.close()


def test_the_same_image_twice_is_refused_by_any_name(image: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (tmp_path / "alias.img").symlink_to(image)
    (tmp_path / "other.img").write_bytes(bytes(512))
    check_distinct([str(image), str(tmp_path / "other.img"), str(tmp_path / "missing.img")])
    with pytest.raises(ImageError) as e:
        check_distinct([str(image), str(tmp_path / "other.img"), str(tmp_path / "alias.img")])
    assert str(e.value) == f"{tmp_path / 'alias.img'}: the same disk image as {image}: a machine opens each image once"
