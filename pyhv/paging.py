"""x86-64 page-table walks: guest-virtual to guest-physical addresses.

Pure: the tables are read through a :class:`PhysicalReader` (``read(gpa, n)``,
:class:`pyhv.memory.GuestMemory` is one), so tests use a fake memory holding
hand-built tables.  Every entry read is guest data and is checked before use:
a table address outside guest RAM raises from the reader
(:class:`~pyhv.errors.MemoryAccessError`), a not-present entry or a reserved
large-page level raises :class:`NotMapped`.

The walk (Intel SDM vol. 3, 4.5 "4-level paging and 5-level paging"): CR3
bits 51:12 address the top table (PML5 with CR4.LA57, else PML4); each level
takes 9 bits of the address (bits 56:48, 47:39, 38:30, 29:21, 20:12); bit 0 of
an entry is Present, bit 7 (PS) in a PDPTE or PDE maps a 1 GiB or 2 MiB page
whose frame is in the entry's bits 51:30 or 51:21.  Accessed and dirty bits
are not set: the walk is an observer's, not the CPU's.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .errors import PyhvError

PRESENT = 1 << 0
WRITABLE = 1 << 1
USER = 1 << 2
LARGE = 1 << 7  # PS: in a PDPTE (1 GiB) or PDE (2 MiB)
NO_EXECUTE = 1 << 63
#: bits 51:12 of CR3 and of a table entry: a physical frame (MAXPHYADDR 52)
FRAME = 0x000F_FFFF_FFFF_F000

CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10


class PhysicalReader(Protocol):
    def read(self, gpa: int, size: int) -> bytes: ...


class NotMapped(PyhvError):
    """The virtual address has no translation (a walk would page-fault)."""

    def __init__(self, va: int, level: int, detail: str = "not present") -> None:
        super().__init__(f"virtual address {va:#x}: level-{level} entry {detail}")
        self.va = va
        self.level = level


class Translation(NamedTuple):
    gpa: int
    page_size: int  # 4 KiB, 2 MiB or 1 GiB
    writable: bool  # every level allows writes
    user: bool  # every level allows ring 3
    executable: bool  # no level has NX


def _canonical(va: int, la57: bool) -> bool:
    bits = 57 if la57 else 48
    top = va >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def translate(mem: PhysicalReader, cr3: int, va: int, la57: bool = False) -> Translation:
    """Walk the tables rooted at ``cr3`` for ``va`` (a 64-bit address)."""
    if not 0 <= va < 1 << 64:
        raise NotMapped(va & ((1 << 64) - 1), 5 if la57 else 4, "out of range (not a 64-bit address)")
    if not _canonical(va, la57):
        raise NotMapped(va, 5 if la57 else 4, "missing: the address is not canonical")
    table = cr3 & FRAME
    writable = user = executable = True
    level = 5 if la57 else 4
    while True:
        shift = 12 + 9 * (level - 1)
        index = (va >> shift) & 0x1FF
        entry = int.from_bytes(mem.read(table + 8 * index, 8), "little")
        if not entry & PRESENT:
            raise NotMapped(va, level)
        writable &= bool(entry & WRITABLE)
        user &= bool(entry & USER)
        executable &= not entry & NO_EXECUTE
        if level == 1 or (entry & LARGE and level in (2, 3)):
            size = 1 << shift
            frame = entry & FRAME & ~(size - 1)
            return Translation(frame | (va & (size - 1)), size, writable, user, executable)
        if entry & LARGE:
            raise NotMapped(va, level, "has PS set at a level that cannot map a page")
        table = entry & FRAME
        level -= 1


def read_virtual(mem: PhysicalReader, cr3: int, va: int, size: int, la57: bool = False) -> bytes:
    """``size`` bytes at ``va``, page by page (contiguous virtual, maybe not physical)."""
    out = bytearray()
    while len(out) < size:
        t = translate(mem, cr3, va + len(out), la57)
        room = t.page_size - (t.gpa & (t.page_size - 1))
        n = min(room, size - len(out))
        out += mem.read(t.gpa, n)
    return bytes(out)
