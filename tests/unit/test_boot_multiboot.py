"""Multiboot 1: header search, a.out kludge and ELF loading, boot information."""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Callable

import pytest

from pyhv.boot import load_kernel, multiboot
from pyhv.errors import ImageError
from tests.unit.fakes import (
    ElfSpec,
    FakeRam,
    GiB,
    MiB,
    Seg,
    build_elf,
    build_multiboot_aout,
    multiboot_header,
)

MBI = 0x6000
PATH = "/images/mb.bin"
Writer = Callable[[str, bytes], str]


@pytest.fixture
def put(tmp_path: pathlib.Path) -> Writer:
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


def multiboot_elf(flags: int = 0x3, bits: int = 32) -> bytes:
    """An ELF kernel whose first bytes after the program headers are a Multiboot header."""
    return build_elf(
        ElfSpec(
            bits=bits,
            entry=0x100010,
            segments=[Seg(0x100000, b"\x90" * 0x40), Seg(0x300000, b"d", memsz=0x2000)],
            prefix=multiboot_header(flags),
        )
    )


# -- header search -----------------------------------------------------------


def test_header_is_found_at_a_4_byte_aligned_offset() -> None:
    data = bytes(0x104) + multiboot_header(0x3)

    header = multiboot.find_multiboot_header(PATH, data)

    assert header == multiboot.MultibootHeader(offset=0x104, flags=0x3)


@pytest.mark.parametrize(
    "data",
    [
        bytes(0x102) + multiboot_header(0x3),
        bytes(8192) + multiboot_header(0x3),
        bytes(8184) + multiboot_header(0x3),
        struct.pack("<III", 0x1BADB002, 0x3, 0) + bytes(64),
    ],
    ids=["unaligned", "past-8k", "straddling-8k", "bad-checksum"],
)
def test_header_outside_the_rules_is_not_found(data: bytes) -> None:
    assert multiboot.find_multiboot_header(PATH, data) is None


def test_header_with_cut_off_address_fields_is_an_image_error() -> None:
    data = bytes(8176) + multiboot_header(0x10003, (0, 0, 0, 0, 0))

    with pytest.raises(ImageError, match="address fields are cut off"):
        multiboot.find_multiboot_header(PATH, data)


# -- a.out kludge ------------------------------------------------------------


def test_aout_kludge_image_is_copied_to_load_addr_and_bss_zeroed(put: Writer) -> None:
    image = build_multiboot_aout(load_addr=0x200000, text=b"\xeb\xfe" * 0x100, bss=0x3000)
    kernel = put("kernel.bin", image)
    ram = FakeRam.of_size(64 * MiB)
    ram.fill(0x200000 + len(image), 0x3000, 0xAA)

    load_kernel(ram, kernel, None, "")

    assert ram.read(0x200000, len(image)) == image
    assert ram.read(0x200000 + len(image), 0x3000) == bytes(0x3000)


def test_aout_kludge_load_addr_below_header_addr_skips_leading_file_bytes(put: Writer) -> None:
    # header at file offset 0x1040 says it lives at 0x100040: loading starts at file offset 0x1000
    body = bytearray(0x2000)
    body[0x1000:0x1004] = b"TEXT"
    body[0x1040:0x1060] = multiboot_header(0x10000, (0x100040, 0x100000, 0x101000, 0, 0x100000))
    kernel = put("kernel.bin", bytes(body))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert ram.read(0x100000, 0x1000) == bytes(body[0x1000:0x2000])
    assert state.rip == 0x100000


def test_multiboot_entry_state_has_magic_in_eax_and_info_in_ebx(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout(entry=0x100020))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert (state.protocol, state.rip) == ("multiboot", 0x100020)
    assert (state.regs["rax"], state.regs["rbx"]) == (0x2BADB002, MBI)
    assert (state.cr0, state.cs.selector, state.cs.db, state.ds.selector) == (0x11, 0x20, True, 0x18)


# -- boot information --------------------------------------------------------


def test_info_flags_memory_sizes_and_command_line(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "hello world")

    flags, mem_lower, mem_upper, _, cmdline = struct.unpack("<5I", ram.read(MBI, 20))
    assert flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert (mem_lower, mem_upper) == (639, 63 * 1024)
    assert ram.cstring(cmdline) == f"{kernel} hello world".encode()
    assert ram.cstring(ram.u32(MBI + 64)) == b"pyhv"


def test_command_line_is_the_kernel_path_and_a_space_even_without_arguments(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "")

    assert ram.cstring(ram.u32(MBI + 16)) == f"{kernel} ".encode()


def test_info_memory_map_entries_are_size_prefixed(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    ram = FakeRam.of_size(4 * GiB)

    load_kernel(ram, kernel, None, "")

    length, addr = ram.u32(MBI + 44), ram.u32(MBI + 48)
    raw = ram.read(addr, length)
    assert [struct.unpack_from("<IQQI", raw, off) for off in range(0, length, 24)] == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x60400, 2),
        (20, MiB, 3 * GiB - MiB, 1),
        (20, 4 * GiB, GiB, 1),
    ]


def test_info_mem_upper_counts_only_low_ram_above_1mib(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    ram = FakeRam.of_size(4 * GiB)

    load_kernel(ram, kernel, None, "")

    assert ram.u32(MBI + 8) == (3 * GiB - MiB) // 1024


def test_initrd_is_module_zero_with_its_file_name_as_string(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    initrd = put("rootfs.cpio", b"070701" * 1000)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "")

    count, mods = ram.u32(MBI + 20), ram.u32(MBI + 24)
    start, end, string, reserved = struct.unpack("<4I", ram.read(mods, 16))
    assert (count, start % 4096, end - start, reserved) == (1, 0, 6000, 0)
    assert ram.read(start, 6000) == b"070701" * 1000
    assert ram.cstring(string) == b"rootfs.cpio"


def test_no_initrd_means_zero_modules(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout())
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "")

    assert ram.u32(MBI + 20) == 0


# -- ELF multiboot -------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_elf_multiboot_kernel_loads_segments_and_enters_at_e_entry(put: Writer, bits: int) -> None:
    kernel = put("kernel.elf", multiboot_elf(bits=bits))
    ram = FakeRam.of_size(64 * MiB)
    ram.fill(0x300000, 0x2000, 0x55)

    state = load_kernel(ram, kernel, None, "")

    assert (state.protocol, state.rip) == ("multiboot", 0x100010)
    assert ram.read(0x100000, 0x40) == b"\x90" * 0x40
    assert ram.read(0x300000, 0x2000) == b"d" + bytes(0x1FFF)


def test_forced_multiboot_without_header_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel.elf", build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"x")])))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="no Multiboot header"):
        load_kernel(ram, kernel, None, "", protocol="multiboot")


def test_non_elf_multiboot_without_address_fields_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel.bin", multiboot_header(0x3) + bytes(256))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="not ELF and has no address fields"):
        load_kernel(ram, kernel, None, "")


# -- refused images ------------------------------------------------------------


def test_video_mode_requirement_is_refused(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout(flags=0x10007))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="video mode .*bit 2"):
        load_kernel(ram, kernel, None, "")


def test_unknown_required_flag_is_refused(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout(flags=0x10103))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=r"unsupported Multiboot features \(flag bits 0x0100\)"):
        load_kernel(ram, kernel, None, "")


def test_unknown_optional_flag_is_ignored(put: Writer) -> None:
    kernel = put("kernel.bin", build_multiboot_aout(flags=0x00810003))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert state.protocol == "multiboot"


def _aout(addresses: tuple[int, int, int, int, int], size: int = 0x1000) -> bytes:
    body = bytearray(size)
    body[0:32] = multiboot_header(0x10000, addresses)
    return bytes(body)


BAD_AOUT = {
    "load above header": (_aout((0x100000, 0x100010, 0, 0, 0x100010)), "load_addr is above header_addr"),
    "load before file": (_aout((0x100010, 0x100000, 0, 0, 0x100010)), "before the start of the file"),
    "load_end below load": (_aout((0x100000, 0x100000, 0xFF000, 0, 0x100000)), "load_end_addr is below"),
    "load_end past file": (_aout((0x100000, 0x100000, 0x102000, 0, 0x100000)), "truncated"),
    "bss below load_end": (_aout((0x100000, 0x100000, 0, 0x100800, 0x100000)), "bss_end_addr is below"),
    "entry outside": (_aout((0x100000, 0x100000, 0, 0, 0x200000)), "entry_addr 0x200000 is outside"),
    "over the command line": (_aout((0x10000, 0x10000, 0, 0x20010, 0x10000)),
                              r"kernel at \[0x10000, 0x20010\) overlaps pyhv's command line at \[0x20000, 0x30000\)"),
    "over the boot information": (_aout((0x5800, 0x5800, 0, 0, 0x5800)), r"overlaps pyhv's boot information at \[0x6000,"),
    "over the BIOS area": (_aout((0x9F000, 0x9F000, 0, 0, 0x9F000)), r"overlaps pyhv's BIOS area .* at \[0x9fc00, 0x100000\)"),
    "bss beyond ram": (_aout((0x100000, 0x100000, 0, 0x8000000, 0x100000)), "does not fit in guest RAM"),
}


@pytest.mark.parametrize(("data", "problem"), BAD_AOUT.values(), ids=BAD_AOUT.keys())
def test_bad_aout_kludge_addresses_are_an_image_error_naming_the_file(
    put: Writer, data: bytes, problem: str
) -> None:
    kernel = put("kernel.bin", data)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=problem) as caught:
        load_kernel(ram, kernel, None, "")

    assert str(caught.value).startswith(f"{kernel}: ")


def test_aout_kernel_below_1mib_between_pyhvs_areas_loads_there(put: Writer) -> None:
    body = bytearray(_aout((0x10000, 0x10000, 0, 0x11000, 0x10020)))
    body[0x100:0x104] = b"TEXT"
    kernel = put("kernel.bin", bytes(body))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert (ram.read(0x10100, 4), state.rip) == (b"TEXT", 0x10020)


@pytest.mark.parametrize("start", [0x1000, 0x528, 0xF000, 0x30000])
def test_elf_segment_below_1mib_outside_pyhvs_areas_loads(put: Writer, start: int) -> None:
    data = build_elf(ElfSpec(bits=32, entry=start, segments=[Seg(start, b"\x90" * 16, memsz=0x1000)],
                             prefix=multiboot_header(0x3)))
    kernel = put("kernel.elf", data)
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert (ram.read(start, 16), state.rip) == (b"\x90" * 16, start)


def test_multiboot_elf_segment_above_4gib_is_an_image_error(put: Writer) -> None:
    data = build_elf(
        ElfSpec(
            bits=64,
            entry=0x100000000,
            segments=[Seg(0x100000000, b"\x90" * 16)],
            prefix=multiboot_header(0x3),
        )
    )
    kernel = put("kernel.elf", data)
    ram = FakeRam.of_size(5 * GiB)

    with pytest.raises(ImageError, match="does not fit in guest RAM below 0xc0000000"):
        load_kernel(ram, kernel, None, "")
