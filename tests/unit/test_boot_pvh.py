"""PVH direct boot: hvm_start_info, module list, memory map and entry state."""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Callable

import pytest

from pyhv.boot import load_kernel
from pyhv.errors import ImageError
from tests.unit.fakes import ElfSpec, FakeRam, GiB, MiB, Seg, build_elf, pvh_note

SI = 0x6000
Writer = Callable[[str, bytes], str]


@pytest.fixture
def put(tmp_path: pathlib.Path) -> Writer:
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


def pvh_kernel(bits: int = 32, entry: int = 0x100040, note_size: int = 4) -> bytes:
    return build_elf(
        ElfSpec(
            bits=bits,
            entry=0x100000,
            segments=[Seg(0x100000, b"\xfa\xf4" * 0x40), Seg(0x200000, b"B", memsz=0x1000)],
            notes=[pvh_note(entry, note_size)],
        )
    )


def start_info(ram: FakeRam) -> tuple[int, ...]:
    return struct.unpack("<IIIIQQQQII", ram.read(SI, 56))


def test_pvh_kernel_segments_are_loaded_at_physical_addresses(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "")

    assert ram.read(0x100000, 0x80) == b"\xfa\xf4" * 0x40
    assert ram.read(0x200000, 2) == b"B\0"


def test_pvh_entry_is_32bit_protected_mode_at_note_address_with_ebx_start_info(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert (state.protocol, state.rip, state.regs["rbx"]) == ("pvh", 0x100040, SI)
    assert (state.cr0, state.cr4, state.efer, state.cs.db, state.cs.l) == (0x11, 0, 0, True, False)


def test_start_info_fields_without_initrd(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "console=hvc0", rsdp=0xE0000)

    assert start_info(ram) == (0x336EC578, 1, 0, 0, 0, 0x20000, 0xE0000, 0x6080, 3, 0)
    assert ram.cstring(0x20000) == b"console=hvc0"


def test_start_info_lists_initrd_as_module_zero(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    initrd = put("initrd.img", b"\x1f\x8b" * 3000)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "")

    (nr_modules, modlist) = start_info(ram)[3:5]
    assert (nr_modules, modlist) == (1, 0x6040)
    assert struct.unpack("<QQQQ", ram.read(modlist, 32)) == (64 * MiB - 0x2000, 6000, 0, 0)
    assert ram.read(64 * MiB - 0x2000, 6000) == b"\x1f\x8b" * 3000


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (64 * MiB, [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (MiB, 63 * MiB, 1)]),
        (
            5 * GiB,
            [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (MiB, 3 * GiB - MiB, 1), (4 * GiB, 2 * GiB, 1)],
        ),
    ],
    ids=["64M", "5G"],
)
def test_memmap_entries_describe_ram_and_reserved_bios_area(
    put: Writer, size: int, expected: list[tuple[int, int, int]]
) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    ram = FakeRam.of_size(size)

    load_kernel(ram, kernel, None, "")

    count = start_info(ram)[8]
    raw = ram.read(0x6080, 24 * count)
    entries = [struct.unpack_from("<QQII", raw, 24 * i) for i in range(count)]
    assert entries == [(*e, 0) for e in expected]


def test_64bit_elf_with_pvh_note_boots_pvh_when_forced(put: Writer) -> None:
    kernel = put("vmlinux", pvh_kernel(bits=64, note_size=8))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "", protocol="pvh")

    assert (state.protocol, state.rip) == ("pvh", 0x100040)


def test_64bit_elf_with_pvh_note_boots_linux64_by_default(put: Writer) -> None:
    kernel = put("vmlinux", pvh_kernel(bits=64, note_size=8))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert (state.protocol, state.rip) == ("linux64", 0x100000)


@pytest.mark.parametrize(
    "data",
    [
        build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"x")])),
        build_elf(ElfSpec(bits=64, segments=[Seg(0x100000, b"x")])),
    ],
    ids=["elf32", "elf64"],
)
def test_forced_pvh_on_elf_without_note_is_an_image_error(put: Writer, data: bytes) -> None:
    kernel = put("plain.elf", data)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="no PVH entry point") as caught:
        load_kernel(ram, kernel, None, "", protocol="pvh")

    assert caught.value.path == kernel


def test_forced_pvh_on_non_elf_is_an_image_error(put: Writer) -> None:
    kernel = put("blob", b"\x90" * 4096)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="PVH boot needs an ELF kernel"):
        load_kernel(ram, kernel, None, "", protocol="pvh")


def test_pvh_entry_outside_segments_is_an_image_error(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel(entry=0x900000))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="PVH entry point 0x900000 is outside"):
        load_kernel(ram, kernel, None, "")


def test_pvh_initrd_too_big_is_an_image_error_naming_the_initrd(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    initrd = put("big.img", bytes(15 * MiB))
    ram = FakeRam.of_size(16 * MiB)

    with pytest.raises(ImageError, match="does not fit") as caught:
        load_kernel(ram, kernel, initrd, "")

    assert caught.value.path == initrd


def test_pvh_command_line_longer_than_64k_area_is_an_image_error(put: Writer) -> None:
    kernel = put("pvh.elf", pvh_kernel())
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="at most 65535"):
        load_kernel(ram, kernel, None, "x" * 65536)
