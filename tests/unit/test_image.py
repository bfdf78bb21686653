"""The default guest's building blocks: the initramfs archive, module order, the CLI without apt."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyhv.toolstack import image

from ..conftest import ROOT


def _read_newc(archive: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, rdevmajor, rdevminor) for each entry, as the kernel's unpacker reads them."""
    out, at = [], 0
    while True:
        assert archive[at : at + 6] == b"070701" and at % 4 == 0
        fields = [int(archive[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = archive[at + 110 : at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        data = archive[at : at + filesize]
        at += filesize
        at += -at % 4
        if name == "TRAILER!!!":
            assert at == len(archive)
            return out
        out.append((name, mode, data, rmaj, rmin))


def test_cpio_holds_parents_files_symlinks_and_device_nodes_in_order() -> None:
    archive = image.Cpio()
    archive.add_file("etc/rc", b"#!/bin/sh\n", 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_char_device("dev/console", 5, 1)

    entries = _read_newc(archive.finish())

    assert [(n, stat.S_IFMT(m)) for n, m, *_ in entries] == [
        ("etc", stat.S_IFDIR), ("etc/rc", stat.S_IFREG), ("bin", stat.S_IFDIR), ("bin/sh", stat.S_IFLNK),
        ("dev", stat.S_IFDIR), ("dev/console", stat.S_IFCHR),
    ]
    assert entries[1][2] == b"#!/bin/sh\n" and stat.S_IMODE(entries[1][1]) == 0o755
    assert entries[3][2] == b"busybox" and entries[5][3:] == (5, 1)


def test_initramfs_from_a_tree_adds_init_and_console(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF")
    (tmp_path / "bin" / "ls").symlink_to("busybox")

    entries = _read_newc(gzip.decompress(image.initramfs(tmp_path, "#!/bin/sh\n")))

    names = {n: (m, d) for n, m, d, *_ in entries}
    assert set(names) == {"bin", "bin/busybox", "bin/ls", "init", "dev", "dev/console"}
    assert names["bin/ls"][1] == b"busybox" and names["init"][1] == b"#!/bin/sh\n"


def test_module_depends_reads_the_modinfo_list_with_dashes_as_underscores() -> None:
    ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0"

    assert image.module_depends(ko) == ["virtio", "virtio_ring"]
    assert image.module_depends(b"\0license=GPL\0depends=\0") == []


def test_module_closure_puts_each_module_after_its_dependencies(tmp_path: Path) -> None:
    for name, deps in {"virtio_net": "net_failover,virtio", "net_failover": "failover", "failover": "",
                       "virtio": "virtio_ring", "virtio_ring": "", "unused": ""}.items():
        (tmp_path / f"{name}.ko").write_bytes(b"\0depends=" + deps.encode() + b"\0")

    order = image.module_closure(image.module_index(tmp_path), ["virtio_net"])

    assert order == ["failover", "net_failover", "virtio_ring", "virtio", "virtio_net"]


def test_module_closure_names_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "a.ko").write_bytes(b"\0depends=b\0")

    with pytest.raises(image.ImageBuildError, match="kernel module b is not in the kernel package"):
        image.module_closure(image.module_index(tmp_path), ["a"])


def test_image_build_without_apt_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=str(tmp_path))

    p = subprocess.run([sys.executable, "-m", "pyhv", "image", "build", "--dir", str(tmp_path / "img")],
                       capture_output=True, text=True, env=env, check=False)

    assert p.returncode == 1 and p.stdout == "" and p.stderr.count("\n") == 1
    assert "apt-get" in p.stderr and "pyhv run --kernel BZIMAGE --initrd INITRD" in p.stderr
