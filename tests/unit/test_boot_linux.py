"""Linux 64-bit boot protocol: bzImage and ELF vmlinux, zero page and e820."""

from __future__ import annotations

import dataclasses
import pathlib
import struct
from collections.abc import Callable

import pytest

from pyhv.boot import linux, load_kernel
from pyhv.errors import ImageError
from tests.unit.fakes import BzSpec, ElfSpec, FakeRam, GiB, MiB, Seg, build_bzimage, build_elf

ZP = 0x7000
Writer = Callable[[str, bytes], str]


@pytest.fixture
def put(tmp_path: pathlib.Path) -> Writer:
    """Write a file under the test's directory and return its path."""

    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


def e820(ram: FakeRam) -> list[tuple[int, int, int]]:
    count = ram.u8(ZP + 0x1E8)
    raw = ram.read(ZP + 0x2D0, 20 * count)
    return [struct.unpack_from("<QQI", raw, 20 * i) for i in range(count)]


# -- bzImage placement and entry ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "load"),
    [
        (BzSpec(kernel_alignment=0x200000), 16 * MiB),
        (BzSpec(kernel_alignment=0x100000), 1 * MiB),
        (BzSpec(kernel_alignment=0x1000), 1 * MiB),
        (BzSpec(kernel_alignment=0x1000000), 16 * MiB),
        (BzSpec(kernel_alignment=0x2000000), 32 * MiB),
        (BzSpec(relocatable=0, kernel_alignment=0x200000), 1 * MiB),
    ],
    ids=["2M-aligned", "1M-aligned", "4K-aligned", "16M-aligned", "32M-aligned", "not-relocatable"],
)
def test_bzimage_protected_mode_part_is_loaded_at_an_aligned_address(
    put: Writer, spec: BzSpec, load: int
) -> None:
    payload = bytes(range(256)) * 8
    kernel = put("bzImage", build_bzimage(dataclasses.replace(spec, payload=payload)))
    ram = FakeRam.of_size(128 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert ram.read(load, len(payload)) == payload
    assert (state.rip, ram.u32(ZP + 0x214)) == (load + 0x200, load)


def test_bzimage_enters_long_mode_with_rsi_at_zero_page(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "console=ttyS0")

    assert (state.protocol, state.regs["rsi"], state.cs.selector, state.cs.l) == ("linux64", ZP, 0x10, True)
    assert (state.cr3, state.efer) == (0x9000, 0x500)


def test_bzimage_protected_mode_part_starts_after_setup_sectors(put: Writer) -> None:
    payload = b"PMODE" + bytes(0x300)
    kernel = put("bzImage", build_bzimage(BzSpec(setup_sects=0, payload=payload, kernel_alignment=0x1000)))
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "")

    assert ram.read(0x100000, len(payload)) == payload


# -- zero page -----------------------------------------------------------------


def test_bzimage_setup_header_is_copied_into_the_zero_page(put: Writer) -> None:
    image = build_bzimage(BzSpec())
    kernel = put("bzImage", image)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "")

    assert ram.read(ZP + 0x1F1, 9) == image[0x1F1:0x1FA]
    assert ram.read(ZP + 0x1FE, 0x210 - 0x1FE) == image[0x1FE:0x210]
    assert ram.read(ZP + 0x22C, 0x26C - 0x22C) == image[0x22C:0x26C]


def test_bzimage_zero_page_has_loader_fields_filled(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "root=/dev/vda")

    assert ram.u8(ZP + 0x210) == 0xFF  # type_of_loader
    assert ram.u8(ZP + 0x211) == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert ram.u16(ZP + 0x1FA) == 0xFFFF  # vid_mode "normal"
    assert ram.u16(ZP + 0x224) == 0xDE00  # heap_end_ptr
    assert (ram.u32(ZP + 0x228), ram.u32(ZP + 0xC8)) == (0x20000, 0)
    assert ram.cstring(0x20000) == b"root=/dev/vda"


def test_zero_page_outside_the_setup_header_starts_zeroed(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(64 * MiB)
    ram.fill(ZP, 0x1000, 0xCC)

    load_kernel(ram, kernel, None, "")

    assert ram.read(ZP, 0x70) == bytes(0x70)
    assert ram.u8(ZP + 0x1EF) == 0  # sentinel
    assert ram.read(ZP + 0x26C, 0x290 - 0x26C) == bytes(0x290 - 0x26C)


def test_rsdp_address_goes_to_acpi_rsdp_addr(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "", rsdp=0xF5A40)

    assert ram.u64(ZP + 0x70) == 0xF5A40


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (
            64 * MiB,
            [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 63 * MiB, 1)],
        ),
        (
            4 * GiB,
            [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 3 * GiB - MiB, 1), (4 * GiB, GiB, 1)],
        ),
    ],
    ids=["64M", "4G-split-by-hole"],
)
def test_e820_map_reports_bios_area_reserved_and_ram_usable(
    put: Writer, size: int, expected: list[tuple[int, int, int]]
) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(size)

    load_kernel(ram, kernel, None, "")

    assert e820(ram) == expected


# -- initrd --------------------------------------------------------------------


def test_initrd_goes_page_aligned_to_the_top_of_low_ram(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    initrd = put("initrd.img", b"\x07" * 5000)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "")

    addr = 64 * MiB - 0x2000
    assert (ram.u32(ZP + 0x218), ram.u32(ZP + 0x21C)) == (addr, 5000)
    assert (ram.u32(ZP + 0xC0), ram.u32(ZP + 0xC4)) == (0, 0)
    assert ram.read(addr, 5000) == b"\x07" * 5000


def test_initrd_stays_at_or_below_initrd_addr_max(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec(initrd_addr_max=0x1FFFFFF)))
    initrd = put("initrd.img", b"\x07" * 0x1000)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "")

    assert ram.u32(ZP + 0x218) == 0x1FFF000


def test_initrd_avoids_the_kernel_init_size_region(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec(initrd_addr_max=0x13FFFFF, init_size=4 * MiB)))
    initrd = put("initrd.img", b"\x07" * 0x3000)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "")

    assert ram.u32(ZP + 0x218) == 16 * MiB - 0x3000


def test_initrd_too_big_for_ram_is_an_image_error_naming_the_initrd(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    initrd = put("initrd.img", bytes(60 * MiB))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="does not fit in guest RAM") as caught:
        load_kernel(ram, kernel, initrd, "")

    assert caught.value.path == initrd


@pytest.mark.parametrize("name", ["missing.img", "empty.img"])
def test_missing_or_empty_initrd_is_an_image_error_naming_it(put: Writer, name: str) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    put("empty.img", b"")
    initrd = str(pathlib.Path(kernel).parent / name)
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError) as caught:
        load_kernel(ram, kernel, initrd, "")

    assert str(caught.value).startswith(f"{initrd}: ")


# -- command line limits -------------------------------------------------------


def test_command_line_of_exactly_cmdline_size_is_accepted(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec(cmdline_size=16)))
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, None, "a" * 16)

    assert ram.cstring(0x20000) == b"a" * 16


def test_command_line_longer_than_cmdline_size_is_an_image_error(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec(cmdline_size=16)))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="command line is 17 bytes long; this kernel accepts at most 16"):
        load_kernel(ram, kernel, None, "a" * 17)


def test_command_line_with_nul_is_an_image_error(put: Writer) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec()))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="NUL"):
        load_kernel(ram, kernel, None, "a\0b")


# -- bad bzImages --------------------------------------------------------------

BAD_BZIMAGES = {
    "protocol 2.11": (BzSpec(version=0x020B), "boot protocol 2.11 is too old"),
    "no 64-bit entry": (BzSpec(xloadflags=0x02), "XLF_KERNEL_64 is clear"),
    "zImage": (BzSpec(loadflags=0), "zImage"),
    "short header": (BzSpec(header_len=0x30), "setup header length 0x30"),
    "bad alignment": (BzSpec(kernel_alignment=0x300000), "not a power of two"),
    "syssize beyond file": (BzSpec(syssize=0x1000), "file is truncated"),
    "init_size beyond RAM": (BzSpec(init_size=64 * MiB), r"kernel \(init_size\) .* does not fit"),
    "pref_address in low MiB": (BzSpec(relocatable=0, pref_address=0x80000), "overlaps pyhv's BIOS area"),
}


@pytest.mark.parametrize(("spec", "problem"), BAD_BZIMAGES.values(), ids=BAD_BZIMAGES.keys())
def test_unusable_bzimage_is_an_image_error_naming_the_file(put: Writer, spec: BzSpec, problem: str) -> None:
    kernel = put("bzImage", build_bzimage(spec))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match=problem) as caught:
        load_kernel(ram, kernel, None, "")

    assert str(caught.value).startswith(f"{kernel}: ")


@pytest.mark.parametrize("size", [0x208, 0x250, 5 * 512])
def test_truncated_bzimage_is_an_image_error(put: Writer, size: int) -> None:
    kernel = put("bzImage", build_bzimage(BzSpec())[:size])
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="truncated"):
        load_kernel(ram, kernel, None, "")


def test_protocol_version_text_uses_decimal_minor() -> None:
    assert linux.protocol_text(0x020F) == "2.15"


# -- ELF vmlinux ---------------------------------------------------------------


def vmlinux(entry: int = 0xFFFFFFFF81000000) -> bytes:
    return build_elf(
        ElfSpec(
            bits=64,
            entry=entry,
            segments=[
                Seg(0x1000000, b"\x48\x31\xc0" * 64, vaddr=0xFFFFFFFF81000000),
                Seg(0x1200000, b"D" * 16, memsz=0x10000, vaddr=0xFFFFFFFF81200000),
            ],
        )
    )


def test_vmlinux_segments_load_at_physical_addresses(put: Writer) -> None:
    kernel = put("vmlinux", vmlinux())
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert ram.read(0x1000000, 192) == b"\x48\x31\xc0" * 64
    assert ram.read(0x1200000, 32) == b"D" * 16 + bytes(16)
    assert (state.rip, state.regs["rsi"], state.protocol) == (0x1000000, ZP, "linux64")


@pytest.mark.parametrize("entry", [0xFFFFFFFF81000040, 0x1000040])
def test_vmlinux_entry_may_be_virtual_or_physical(put: Writer, entry: int) -> None:
    kernel = put("vmlinux", vmlinux(entry))
    ram = FakeRam.of_size(64 * MiB)

    state = load_kernel(ram, kernel, None, "")

    assert state.rip == 0x1000040


def test_vmlinux_zero_page_carries_a_synthesised_setup_header(put: Writer) -> None:
    kernel = put("vmlinux", vmlinux())
    initrd = put("initrd.img", b"R" * 100)
    ram = FakeRam.of_size(64 * MiB)

    load_kernel(ram, kernel, initrd, "quiet")

    assert (ram.u16(ZP + 0x1FE), ram.read(ZP + 0x202, 4), ram.u16(ZP + 0x206)) == (0xAA55, b"HdrS", 0x020F)
    assert (ram.u8(ZP + 0x210), ram.u8(ZP + 0x211), ram.u32(ZP + 0x238)) == (0xFF, 0x81, 2047)
    assert (ram.u32(ZP + 0x228), ram.cstring(0x20000)) == (0x20000, b"quiet")
    assert (ram.u32(ZP + 0x218), ram.u32(ZP + 0x21C)) == (64 * MiB - 0x1000, 100)
    assert e820(ram)[-1] == (0x100000, 63 * MiB, 1)


def test_vmlinux_initrd_respects_default_initrd_addr_max(put: Writer) -> None:
    kernel = put("vmlinux", vmlinux())
    initrd = put("initrd.img", b"R" * 100)
    ram = FakeRam.of_size(2 * GiB)

    load_kernel(ram, kernel, initrd, "")

    assert ram.u32(ZP + 0x218) == 0x38000000 - 0x1000


def test_vmlinux_command_line_is_limited_to_2047_bytes(put: Writer) -> None:
    kernel = put("vmlinux", vmlinux())
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="at most 2047"):
        load_kernel(ram, kernel, None, "x" * 2048)


def test_vmlinux_segment_beyond_ram_is_an_image_error(put: Writer) -> None:
    kernel = put("vmlinux", vmlinux())
    ram = FakeRam.of_size(16 * MiB)

    with pytest.raises(ImageError, match="does not fit in guest RAM"):
        load_kernel(ram, kernel, None, "")


def test_forced_linux_on_32bit_elf_is_an_image_error(put: Writer) -> None:
    kernel = put("kernel32", build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"x")])))
    ram = FakeRam.of_size(64 * MiB)

    with pytest.raises(ImageError, match="bzImage or a 64-bit ELF vmlinux"):
        load_kernel(ram, kernel, None, "", protocol="linux")
