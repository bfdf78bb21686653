"""The bzImage loader against a real kernel: Debian's cloud kernel image.

``scripts/fetch-debian-kernel`` (run by ``scripts/setup``) unpacks it into
build/debian.  Without it these tests fail, telling how to get it,
unless PYHV_NO_DEBIAN_KERNEL=1 says to skip them.
"""

from __future__ import annotations

import os
import pathlib
import struct
from dataclasses import dataclass

import pytest

from pyhv.boot import load_kernel, x86
from pyhv.boot.linux import SetupHeader, bzimage_addresses, parse_setup_header
from tests.unit.fakes import FakeRam, MiB

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNEL_GLOB = "build/debian/boot/vmlinuz-*"
ZP = 0x7000
INITRD = bytes(range(256)) * 300  # 76800 bytes: not a page multiple


@pytest.fixture(scope="module")
def debian_kernel() -> pathlib.Path:
    found = sorted(ROOT.glob(KERNEL_GLOB))
    if found:
        return found[-1]
    if os.environ.get("PYHV_NO_DEBIAN_KERNEL") == "1":
        pytest.skip("PYHV_NO_DEBIAN_KERNEL=1: the Debian cloud kernel is not fetched on this machine")
    pytest.fail(
        f"no Debian cloud kernel at {ROOT / KERNEL_GLOB}: run scripts/fetch-debian-kernel "
        "(or scripts/setup), or set PYHV_NO_DEBIAN_KERNEL=1 to skip these tests"
    )


@dataclass(frozen=True)
class Booted:
    image: bytes
    header: SetupHeader
    ram: FakeRam
    state: x86.EntryState


@pytest.fixture(scope="module")
def booted(debian_kernel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Booted:
    initrd = tmp_path_factory.mktemp("debian") / "initrd.img"
    initrd.write_bytes(INITRD)
    image = debian_kernel.read_bytes()
    ram = FakeRam.of_size(256 * MiB)
    state = load_kernel(ram, str(debian_kernel), str(initrd), "console=ttyS0 root=/dev/vda")
    return Booted(image, parse_setup_header(str(debian_kernel), image), ram, state)


def test_protocol_version_is_at_least_2_15_with_64bit_entry(booted: Booted) -> None:
    assert (booted.header.version >= 0x020F, booted.header.xloadflags & 1) == (True, 1)


def test_kernel_is_loaded_at_an_address_meeting_kernel_alignment(booted: Booted) -> None:
    load, _ = bzimage_addresses(booted.header)

    assert (load % booted.header.kernel_alignment, load >= MiB) == (0, True)
    assert booted.ram.u32(ZP + 0x214) == load


def test_loaded_bytes_equal_the_protected_mode_part_of_the_file(booted: Booted) -> None:
    load, _ = bzimage_addresses(booted.header)
    kernel = booted.image[booted.header.protected_mode_offset :]

    assert booted.ram.read(load, len(kernel)) == kernel


def test_entry_is_the_64bit_entry_at_load_address_plus_0x200(booted: Booted) -> None:
    load, _ = bzimage_addresses(booted.header)

    assert (booted.state.rip, booted.state.protocol, booted.state.regs["rsi"]) == (
        load + 0x200,
        "linux64",
        ZP,
    )


def test_setup_header_is_copied_apart_from_loader_fields(booted: Booted) -> None:
    end = booted.header.header_end
    copied = booted.ram.read(ZP + 0x1F1, end - 0x1F1)
    image = booted.image

    assert copied[: 0x1FA - 0x1F1] == image[0x1F1:0x1FA]
    assert copied[0x1FC - 0x1F1 : 0x210 - 0x1F1] == image[0x1FC:0x210]
    assert copied[0x22C - 0x1F1 :] == image[0x22C:end]


def test_loader_fields_are_set(booted: Booted) -> None:
    ram = booted.ram

    assert (ram.u8(ZP + 0x210), ram.u8(ZP + 0x211) & 0x81) == (0xFF, 0x81)
    assert (ram.u32(ZP + 0x228), ram.cstring(0x20000)) == (0x20000, b"console=ttyS0 root=/dev/vda")
    assert ram.u32(ZP + 0x21C) == len(INITRD)


def test_initrd_sits_page_aligned_below_initrd_addr_max_clear_of_the_kernel(booted: Booted) -> None:
    ram, header = booted.ram, booted.header
    addr = ram.u32(ZP + 0x218)
    load, runtime = bzimage_addresses(header)
    kernel_end = max(load + len(booted.image) - header.protected_mode_offset, runtime + header.init_size)

    assert (addr % 4096, addr + len(INITRD) - 1 <= header.initrd_addr_max) == (0, True)
    assert (addr >= kernel_end, addr + len(INITRD) <= 256 * MiB) == (True, True)
    assert ram.read(addr, len(INITRD)) == INITRD


def test_e820_map_has_low_ram_reserved_bios_area_and_high_ram(booted: Booted) -> None:
    raw = booted.ram.read(ZP + 0x2D0, 3 * 20)

    assert booted.ram.u8(ZP + 0x1E8) == 3
    assert [struct.unpack_from("<QQI", raw, 20 * i) for i in range(3)] == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x100000 - 0x9FC00, 2),
        (0x100000, 255 * MiB, 1),
    ]
