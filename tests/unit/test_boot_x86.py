"""Boot GDT, identity page tables and the entry register state."""

from __future__ import annotations

import struct

import pytest

from pyhv.boot import x86
from tests.unit.fakes import FakeRam, GiB, MiB


def test_gdt_holds_null_null_code64_data_code32_descriptors() -> None:
    ram = FakeRam.of_size(16 * MiB)

    x86.write_gdt(ram)

    assert struct.unpack("<5Q", ram.read(0x500, 40)) == (
        0,
        0,
        0x00AF9B000000FFFF,
        0x00CF93000000FFFF,
        0x00CF9B000000FFFF,
    )


@pytest.mark.parametrize(
    ("segment", "selector"),
    [(x86.CODE64_SEGMENT, 0x10), (x86.DATA_SEGMENT, 0x18), (x86.CODE32_SEGMENT, 0x20)],
)
def test_segment_descriptor_sits_at_its_selector_in_the_gdt(segment: x86.Segment, selector: int) -> None:
    ram = FakeRam.of_size(16 * MiB)

    x86.write_gdt(ram)

    assert (segment.selector, ram.u64(0x500 + selector)) == (selector, segment.descriptor())


def test_page_tables_chain_pml4_to_pdpt_to_four_page_directories() -> None:
    ram = FakeRam.of_size(16 * MiB)

    x86.write_identity_page_tables(ram)

    assert (ram.u64(0x9000), ram.u64(0x9008)) == (0xA003, 0)
    assert struct.unpack("<5Q", ram.read(0xA000, 40)) == (0xB003, 0xC003, 0xD003, 0xE003, 0)


@pytest.mark.parametrize("address", [0, 2 * MiB, 1 * GiB + 6 * MiB, 4 * GiB - 2 * MiB])
def test_page_directories_identity_map_2mib_pages(address: int) -> None:
    ram = FakeRam.of_size(16 * MiB)
    index = address // (2 * MiB)

    x86.write_identity_page_tables(ram)

    assert ram.u64(0xB000 + 8 * index) == address | 0x83


def test_long_mode_entry_enables_paging_pae_and_long_mode() -> None:
    ram = FakeRam.of_size(16 * MiB)

    state = x86.long_mode_entry(ram, 0x100200, 0x7000)

    assert (state.cr0, state.cr3, state.cr4, state.efer) == (0x80000031, 0x9000, 0x20, 0x500)
    assert (state.rip, state.rsp, state.rflags) == (0x100200, 0x8FF0, 0x2)
    assert (state.cs.selector, state.cs.l, state.cs.db, state.ds.selector) == (0x10, True, False, 0x18)
    assert (state.gdt_base, state.gdt_limit, state.protocol) == (0x500, 39, "linux64")


def test_long_mode_entry_sets_rsi_and_zeroes_other_registers() -> None:
    ram = FakeRam.of_size(16 * MiB)

    state = x86.long_mode_entry(ram, 0x100200, 0x7000)

    assert state.regs == dict.fromkeys(x86.GENERAL_REGISTERS, 0) | {"rsi": 0x7000}


def test_protected_mode_entry_has_flat_32bit_code_and_paging_off() -> None:
    ram = FakeRam.of_size(16 * MiB)

    state = x86.protected_mode_entry(ram, 0x100000, {"rbx": 0x6000}, protocol="multiboot")

    assert (state.cr0, state.cr3, state.cr4, state.efer) == (0x11, 0, 0, 0)
    assert state.cs == x86.Segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=0x20,
        type=0xB,
        present=True,
        dpl=0,
        db=True,
        s=True,
        l=False,
        g=True,
    )
    assert (state.regs["rbx"], state.regs["rax"], state.protocol) == (0x6000, 0, "multiboot")


def test_protected_mode_entry_above_4gib_is_refused() -> None:
    ram = FakeRam.of_size(16 * MiB)

    with pytest.raises(ValueError, match="above 4 GiB"):
        x86.protected_mode_entry(ram, 1 << 32, {})


def test_entry_state_is_reproducible() -> None:
    ram = FakeRam.of_size(16 * MiB)
    state = x86.long_mode_entry(ram, 0x100200, 0x7000)

    assert state == x86.long_mode_entry(ram, 0x100200, 0x7000)


def test_boot_task_register_is_a_busy_tss_with_limit_0x67() -> None:
    tr = x86.BOOT_TR

    assert (tr.type, tr.s, tr.limit, tr.present) == (0xB, False, 0x67, True)
