"""load_kernel: protocol detection, forced protocols, unusable files, fuzzing."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.boot import detect_protocol, load_kernel
from pyhv.errors import ImageError, UsageError
from tests.unit.fakes import (
    BzSpec,
    ElfSpec,
    FakeRam,
    MiB,
    Seg,
    build_bzimage,
    build_elf,
    build_multiboot_aout,
    multiboot_header,
    pvh_note,
)

Writer = Callable[[str, bytes], str]

BZIMAGE = build_bzimage(BzSpec(payload=b"\x90" * 0x400))
VMLINUX = build_elf(ElfSpec(bits=64, entry=0x1000000, segments=[Seg(0x1000000, b"\x90" * 64)]))
PVH32 = build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"\x90" * 64)], notes=[pvh_note(0x100000)]))
MB_ELF32 = build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"\x90" * 64)], prefix=multiboot_header(0x3)))
MB_ELF64 = build_elf(ElfSpec(bits=64, segments=[Seg(0x100000, b"\x90" * 64)], prefix=multiboot_header(0x3)))
PVH_AND_MB = build_elf(
    ElfSpec(
        bits=32,
        segments=[Seg(0x100000, b"\x90" * 64)],
        notes=[pvh_note(0x100000)],
        prefix=multiboot_header(0x3),
    )
)
MB_AOUT = build_multiboot_aout()
VALID_IMAGES = [BZIMAGE, VMLINUX, PVH32, MB_ELF32, MB_AOUT]


@pytest.fixture
def put(tmp_path: pathlib.Path) -> Writer:
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


@pytest.mark.parametrize(
    ("data", "protocol"),
    [
        (BZIMAGE, "linux64"),
        (VMLINUX, "linux64"),
        (PVH32, "pvh"),
        (MB_ELF32, "multiboot"),
        (MB_ELF64, "multiboot"),
        (PVH_AND_MB, "pvh"),
        (MB_AOUT, "multiboot"),
    ],
    ids=[
        "bzImage",
        "vmlinux",
        "pvh-elf32",
        "multiboot-elf32",
        "multiboot-elf64",
        "pvh-and-multiboot",
        "aout",
    ],
)
def test_auto_picks_the_protocol_the_image_supports(put: Writer, data: bytes, protocol: str) -> None:
    kernel = put("kernel", data)
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert state.protocol == protocol


@pytest.mark.parametrize(
    ("data", "forced", "problem"),
    [
        (MB_AOUT, "linux", "not a Linux kernel"),
        (BZIMAGE, "pvh", "PVH boot needs an ELF kernel"),
        (VMLINUX, "pvh", "no PVH entry point"),
        (BZIMAGE, "multiboot", "no Multiboot header"),
        (PVH32, "linux", "bzImage or a 64-bit ELF vmlinux"),
    ],
)
def test_forced_protocol_the_image_lacks_is_an_image_error(
    put: Writer, data: bytes, forced: str, problem: str
) -> None:
    kernel = put("kernel", data)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=problem):
        load_kernel(ram, kernel, None, "", protocol=forced)


def test_32bit_elf_without_pvh_or_multiboot_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel", build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"x")])))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="neither a PVH entry note nor a Multiboot header"):
        load_kernel(ram, kernel, None, "")


def test_unknown_protocol_is_a_usage_error(put: Writer) -> None:
    kernel = put("kernel", BZIMAGE)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(UsageError, match="unknown boot protocol 'uefi'"):
        load_kernel(ram, kernel, None, "", protocol="uefi")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "file is empty"),
        (b"myhost\n", "not a kernel image: expected bzImage, ELF or Multiboot"),
        (bytes(64 * 1024), "not a kernel image"),
    ],
    ids=["empty", "text", "zeros"],
)
def test_file_that_is_no_kernel_is_an_image_error_naming_it(put: Writer, data: bytes, problem: str) -> None:
    kernel = put("kernel", data)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=problem) as caught:
        load_kernel(ram, kernel, None, "")

    assert str(caught.value) == f"{kernel}: {caught.value.problem}"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/nonexistent/vmlinuz", "cannot open: No such file or directory"),
        ("/", "is a directory"),
        ("/dev/null", "not a regular file"),
        ("/etc/hostname", r".+"),
    ],
)
def test_unusable_path_is_an_image_error_naming_it(path: str, problem: str) -> None:
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=problem) as caught:
        load_kernel(ram, path, None, "")

    assert str(caught.value).startswith(f"{path}: ")


def test_path_with_nul_character_is_an_image_error() -> None:
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="contains a NUL character"):
        load_kernel(ram, "/boot/vm\0linuz", None, "")


def test_command_line_that_cannot_be_encoded_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel", BZIMAGE)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="not valid text"):
        load_kernel(ram, kernel, None, "root=\ud800")


def test_fifo_is_refused_without_blocking(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="not a regular file"):
        load_kernel(ram, str(fifo), None, "")


def test_ram_not_reaching_past_1mib_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel", BZIMAGE)
    ram = FakeRam([(0, 1 * MiB)])

    with pytest.raises(ImageError, match="larger than 1 MiB"):
        load_kernel(ram, kernel, None, "")


def test_detect_protocol_names_linux_for_bzimage() -> None:
    assert detect_protocol("k", BZIMAGE) == "linux"


# -- fuzzing: nothing but ImageError escapes ------------------------------------


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz") / "kernel"


@pytest.fixture(scope="module")
def fuzz_initrd(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fuzz-initrd") / "initrd.img"
    path.write_bytes(b"\x1f\x8b" * 2500)
    return str(path)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000))
def test_random_bytes_load_or_raise_only_image_error(fuzz_path: pathlib.Path, data: bytes) -> None:
    fuzz_path.write_bytes(data)

    with contextlib.suppress(ImageError):
        load_kernel(FakeRam.of_size(64 * MiB), str(fuzz_path), None, "console=ttyS0")


@settings(max_examples=200, deadline=None)
@given(draw=st.data())
def test_corrupted_kernels_load_or_raise_only_image_error(
    fuzz_path: pathlib.Path, fuzz_initrd: str, draw: st.DataObject
) -> None:
    base = draw.draw(st.sampled_from(VALID_IMAGES))
    offset = draw.draw(st.integers(0, len(base) - 1))
    patch = draw.draw(st.binary(min_size=1, max_size=16))
    length = draw.draw(st.integers(0, len(base)))
    protocol = draw.draw(st.sampled_from(["auto", "linux", "pvh", "multiboot"]))
    initrd = draw.draw(st.sampled_from([None, fuzz_initrd]))
    fuzz_path.write_bytes((base[:offset] + patch + base[offset + len(patch) :])[:length])

    with contextlib.suppress(ImageError):
        load_kernel(FakeRam.of_size(64 * MiB), str(fuzz_path), initrd, "", protocol=protocol)


@settings(max_examples=200, deadline=None)
@given(cmdline=st.text(max_size=300), image=st.sampled_from(VALID_IMAGES))
def test_any_command_line_loads_or_raises_only_image_error(
    fuzz_path: pathlib.Path, cmdline: str, image: bytes
) -> None:
    fuzz_path.write_bytes(image)

    with contextlib.suppress(ImageError):
        load_kernel(FakeRam.of_size(64 * MiB), str(fuzz_path), None, cmdline)


@settings(max_examples=200, deadline=None)
@given(draw=st.data())
def test_header_fields_set_to_extremes_load_or_raise_only_image_error(
    fuzz_path: pathlib.Path, draw: st.DataObject
) -> None:
    base = draw.draw(st.sampled_from(VALID_IMAGES))
    offset = draw.draw(st.integers(0, min(len(base), 0x280) - 4))
    value = draw.draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\x80", b"\x00\x10\x00\x00"]))
    fuzz_path.write_bytes(base[:offset] + value + base[offset + 4 :])

    with contextlib.suppress(ImageError):
        load_kernel(FakeRam.of_size(64 * MiB), str(fuzz_path), None, "")
