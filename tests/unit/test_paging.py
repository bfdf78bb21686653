"""The page-table walker against hand-built 4- and 5-level tables in a fake guest RAM."""

from __future__ import annotations

import struct

import pytest

from pyhv.errors import MemoryAccessError
from pyhv.paging import LARGE, NO_EXECUTE, PRESENT, USER, WRITABLE, NotMapped, read_virtual, translate

from .fakes import MiB, FakeRam

P, W, U = PRESENT, WRITABLE, USER


def _entry(ram: FakeRam, table: int, index: int, value: int) -> None:
    ram.write(table + 8 * index, struct.pack("<Q", value))


def _idx(va: int, level: int) -> int:
    return (va >> (12 + 9 * (level - 1))) & 0x1FF


def _map4k(ram: FakeRam, top: int, tables: list[int], va: int, gpa: int, levels: int = 4, leaf: int = P | W | U) -> None:
    """Point ``va`` at ``gpa`` with the given intermediate tables (one per level below the top)."""
    table = top
    for level, nxt in zip(range(levels, 1, -1), tables, strict=True):
        _entry(ram, table, _idx(va, level), nxt | P | W | U)
        table = nxt
    _entry(ram, table, _idx(va, 1), gpa | leaf)


@pytest.fixture
def ram() -> FakeRam:
    return FakeRam([(0, 64 * MiB)])


def test_four_level_walk_maps_a_4k_page_with_offset(ram: FakeRam) -> None:
    va = 0x0000_7F12_3456_7ABC
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000], va & ~0xFFF, 0x80_0000)
    t = translate(ram, 0x1000, va)
    assert (t.gpa, t.page_size, t.writable, t.user, t.executable) == (0x80_0ABC, 4096, True, True, True)


def test_cr3_low_bits_pcid_and_flags_are_ignored(ram: FakeRam) -> None:
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000], 0x40_0000, 0x90_0000)
    assert translate(ram, 0x1000 | 0x18 | 0x5, 0x40_0010).gpa == 0x90_0010


def test_two_megabyte_page_keeps_21_offset_bits(ram: FakeRam) -> None:
    va = 0xFFFF_8000_0060_1234
    _entry(ram, 0x1000, _idx(va, 4), 0x2000 | P | W)
    _entry(ram, 0x2000, _idx(va, 3), 0x3000 | P | W)
    _entry(ram, 0x3000, _idx(va, 2), 0x20_0000 | P | W | LARGE)
    t = translate(ram, 0x1000, va)
    assert (t.gpa, t.page_size, t.user) == (0x20_0000 + (va & 0x1F_FFFF), 2 * MiB, False)


def test_one_gigabyte_page_keeps_30_offset_bits(ram: FakeRam) -> None:
    va = 0x0000_0040_1234_5678
    _entry(ram, 0x1000, _idx(va, 4), 0x2000 | P | W | U)
    _entry(ram, 0x2000, _idx(va, 3), 0x4000_0000 | P | U | LARGE | NO_EXECUTE)
    t = translate(ram, 0x1000, va)
    assert (t.gpa, t.page_size, t.writable, t.executable) == (0x4000_0000 + 0x1234_5678, 1 << 30, False, False)


def test_five_level_walk_uses_bits_56_to_48(ram: FakeRam) -> None:
    va = 0x0001_0000_0000_3000  # PML5 index 1: beyond what 4-level paging can name
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000, 0x5000], va, 0x70_0000, levels=5)
    assert translate(ram, 0x1000, va + 0x10, la57=True).gpa == 0x70_0010


def test_five_level_address_is_not_canonical_for_four_levels(ram: FakeRam) -> None:
    with pytest.raises(NotMapped, match="not canonical"):
        translate(ram, 0x1000, 0x0001_0000_0000_3000)


def test_not_present_entry_names_its_level(ram: FakeRam) -> None:
    va = 0x40_0000
    _entry(ram, 0x1000, _idx(va, 4), 0x2000 | P | W)
    _entry(ram, 0x2000, _idx(va, 3), 0x3000 | W)  # not present
    with pytest.raises(NotMapped) as e:
        translate(ram, 0x1000, va)
    assert e.value.level == 3


def test_page_size_bit_in_a_pml4_entry_is_refused(ram: FakeRam) -> None:
    _entry(ram, 0x1000, 0, 0x0 | P | LARGE)
    with pytest.raises(NotMapped, match="PS set"):
        translate(ram, 0x1000, 0x1000)


def test_table_pointer_outside_ram_raises_memory_error(ram: FakeRam) -> None:
    _entry(ram, 0x1000, 0, 0x7_0000_0000 | P)
    with pytest.raises(MemoryAccessError):
        translate(ram, 0x1000, 0x1000)


def test_read_virtual_joins_physically_scattered_pages(ram: FakeRam) -> None:
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000], 0x40_0000, 0x90_0000)
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000], 0x40_1000, 0x50_0000)
    ram.write(0x90_0FFE, b"ab")
    ram.write(0x50_0000, b"cd")
    assert read_virtual(ram, 0x1000, 0x40_0FFE, 4) == b"abcd"


def test_read_virtual_stops_at_an_unmapped_page(ram: FakeRam) -> None:
    _map4k(ram, 0x1000, [0x2000, 0x3000, 0x4000], 0x40_0000, 0x90_0000)
    with pytest.raises(NotMapped):
        read_virtual(ram, 0x1000, 0x40_0FFF, 2)
