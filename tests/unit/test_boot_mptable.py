"""The MP table (Intel MP Specification 1.4) read back the way a guest reads it."""

from __future__ import annotations

import struct

import pytest

from pyhv.boot import acpi
from pyhv.boot.layout import MPTABLE_ADDR
from pyhv.boot.mptable import MPTABLE_LIMIT, mptable

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def _parse(blob: bytes, addr: int = MPTABLE_ADDR) -> tuple[dict[str, int], list[bytes]]:
    """The floating pointer's and the header's fields, and the entries, after the checksums."""
    pointer = blob[:16]
    assert pointer[:4] == b"_MP_" and sum(pointer) % 256 == 0
    table_addr, length16, rev = struct.unpack_from("<IBB", pointer, 4)
    assert (length16, rev, pointer[11]) == (1, 4, 0)  # 16 bytes, spec 1.4, a configuration table follows
    table = blob[table_addr - addr:]
    signature, length, rev, _ = struct.unpack_from("<4sHBB", table)
    count, lapic = struct.unpack_from("<HI", table, 34)
    assert (signature, rev) == (b"PCMP", 4) and sum(table[:length]) % 256 == 0
    entries, offset = [], 44
    for _ in range(count):
        size = ENTRY_SIZES[table[offset]]
        entries.append(table[offset:offset + size])
        offset += size
    assert offset == length
    return {"table": table_addr, "length": length, "lapic": lapic}, entries


def test_mp_table_checksums_and_counts_every_cpu_the_ioapic_and_its_lines() -> None:
    header, entries = _parse(mptable([0, 1, 2]))
    cpus = [e for e in entries if e[0] == 0]
    ioapics = [e for e in entries if e[0] == 2]
    lines = {e[5]: (e[7], struct.unpack_from("<H", e, 2)[0]) for e in entries if e[0] == 3}  # ISA IRQ -> (pin, flags)
    assert header["table"] == MPTABLE_ADDR + 16 and header["lapic"] == acpi.LAPIC_ADDR
    assert [(e[1], e[3]) for e in cpus] == [(0, 3), (1, 1), (2, 1)]  # enabled; the first is the bootstrap CPU
    assert [struct.unpack_from("<BI", e, 3) for e in ioapics] == [(1, acpi.IOAPIC_ADDR)]
    assert [bytes(e[2:8]) for e in entries if e[0] == 1] == [b"ISA   "]
    assert lines[0] == (2, 0) and lines[4] == (4, 0) and 2 not in lines and sorted(lines) == [0, 1, *range(3, 24)]
    assert [(e[1], e[7]) for e in entries if e[0] == 4] == [(3, 0), (1, 1)]  # ExtINT on LINT0, NMI on LINT1


def test_lines_the_caller_names_are_level_triggered_and_active_high() -> None:
    _, entries = _parse(mptable([0], level_irqs=[5, 16]))
    flags = {e[5]: struct.unpack_from("<H", e, 2)[0] for e in entries if e[0] == 3}
    assert (flags[5], flags[16], flags[6]) == (0b1101, 0b1101, 0)


def test_the_largest_machine_fits_between_the_acpi_tables_and_the_reset_vector() -> None:
    blob = mptable(list(range(255)))
    header, entries = _parse(blob)
    assert len(blob) <= MPTABLE_LIMIT and sum(1 for e in entries if e[0] == 0) == 255
    assert acpi.ACPI_LIMIT == MPTABLE_ADDR and acpi.build_tables(list(range(255)), []) is not None


@pytest.mark.parametrize("ids,lines", [([], []), ([255], []), ([0], [2]), ([0], [24])])
def test_impossible_cpus_or_lines_are_refused(ids: list[int], lines: list[int]) -> None:
    with pytest.raises(ValueError):
        mptable(ids, lines)
