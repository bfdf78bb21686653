"""CPU state at kernel entry, the boot GDT and the identity page tables.

The loaders describe the boot vCPU's first instruction with an
:class:`EntryState` of plain values; the VMM turns it into ``kvm_regs`` and
``kvm_sregs``.  Two entry modes exist:

* 64-bit long mode (Linux "64-bit Boot Protocol"): paging on with an identity
  map of the first 4 GiB in 2 MiB pages, ``CS`` = 64-bit code, ``RSI`` =
  zero page.
* 32-bit protected mode, paging off (PVH "start of day" state and Multiboot
  "Machine state"): flat 4 GiB code and data segments.

Boot GDT at :data:`~pyhv.boot.layout.GDT_ADDR`, one table for both modes:

=========  ======================================================
selector   descriptor
=========  ======================================================
``0x00``   null
``0x08``   null
``0x10``   64-bit code, execute/read (Linux ``__BOOT_CS``)
``0x18``   flat 4 GiB data, read/write (Linux ``__BOOT_DS``)
``0x20``   flat 4 GiB 32-bit code, execute/read (32-bit entries)
=========  ======================================================

The task register has no descriptor in the table; :data:`BOOT_TR` is the
hidden state to load (a busy 32-bit TSS at 0 with limit 0x67, as the PVH
entry state asks for).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyhv.boot._types import GuestRam
from pyhv.boot.layout import (
    BOOT_STACK_TOP,
    GDT_ADDR,
    PAGE_SIZE,
    PD_ADDR,
    PD_COUNT,
    PDPT_ADDR,
    PML4_ADDR,
)

# -- control register bits -------------------------------------------------

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1

# -- page table entry bits -------------------------------------------------

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_LARGE = 1 << 7
LARGE_PAGE_SIZE = 2 * 1024 * 1024

GENERAL_REGISTERS = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)

SEL_CODE64 = 0x10
SEL_DATA = 0x18
SEL_CODE32 = 0x20

SEGMENT_TYPE_CODE = 0xB  # execute/read, accessed
SEGMENT_TYPE_DATA = 0x3  # read/write, accessed
SEGMENT_TYPE_TSS_BUSY = 0xB  # system segment: busy 32-bit TSS


class Segment(NamedTuple):
    """A segment register's full (hidden) state, with ``kvm_segment``'s meaning.

    ``limit`` is the byte-granular limit (``0xffffffff`` for a flat segment
    with ``g`` set), as KVM expects it.
    """

    base: int
    limit: int
    selector: int
    type: int
    present: bool
    dpl: int
    db: bool
    s: bool
    l: bool  # noqa: E741 - the architectural name of the long-mode bit
    g: bool

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor for this segment, as an integer."""
        raw_limit = self.limit >> 12 if self.g else self.limit
        access = self.type | (int(self.s) << 4) | (self.dpl << 5) | (int(self.present) << 7)
        flags = (int(self.l) << 1) | (int(self.db) << 2) | (int(self.g) << 3)
        return (
            (raw_limit & 0xFFFF)
            | ((self.base & 0xFFFFFF) << 16)
            | (access << 40)
            | (((raw_limit >> 16) & 0xF) << 48)
            | (flags << 52)
            | (((self.base >> 24) & 0xFF) << 56)
        )


def _flat(selector: int, type_: int, db: bool, long_mode: bool) -> Segment:
    """A ring-0 segment covering all 4 GiB (base 0, page-granular limit)."""
    return Segment(
        base=0, limit=0xFFFFFFFF, selector=selector, type=type_, present=True, dpl=0,
        db=db, s=True, l=long_mode, g=True,
    )


CODE64_SEGMENT = _flat(SEL_CODE64, SEGMENT_TYPE_CODE, db=False, long_mode=True)
DATA_SEGMENT = _flat(SEL_DATA, SEGMENT_TYPE_DATA, db=True, long_mode=False)
CODE32_SEGMENT = _flat(SEL_CODE32, SEGMENT_TYPE_CODE, db=True, long_mode=False)
#: hidden task register state for both entry modes (no GDT descriptor)
BOOT_TR = Segment(
    base=0,
    limit=0x67,
    selector=0,
    type=SEGMENT_TYPE_TSS_BUSY,
    present=True,
    dpl=0,
    db=False,
    s=False,
    l=False,
    g=False,
)

_GDT = (0, 0, CODE64_SEGMENT.descriptor(), DATA_SEGMENT.descriptor(), CODE32_SEGMENT.descriptor())
GDT_LIMIT = 8 * len(_GDT) - 1

CR0_LONG_MODE = CR0_PE | CR0_ET | CR0_NE | CR0_PG
CR0_PROTECTED_MODE = CR0_PE | CR0_ET
CR4_LONG_MODE = CR4_PAE
EFER_LONG_MODE = EFER_LME | EFER_LMA


class EntryState(NamedTuple):
    """Register state of the boot vCPU at the kernel's first instruction.

    ``regs`` holds every general register but ``rsp``; ``ds`` is the state
    for DS, ES, FS, GS and SS alike.  ``protocol`` names the boot protocol
    used: ``"linux64"``, ``"pvh"`` or ``"multiboot"``.
    """

    rip: int
    rsp: int
    rflags: int
    regs: dict[str, int]
    cs: Segment
    ds: Segment
    gdt_base: int
    gdt_limit: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    protocol: str


def write_gdt(mem: GuestRam) -> None:
    """Write the boot GDT described in the module docstring."""
    mem.write(GDT_ADDR, struct.pack(f"<{len(_GDT)}Q", *_GDT))


def write_identity_page_tables(mem: GuestRam) -> None:
    """Identity-map 0..4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories."""
    rw = PTE_PRESENT | PTE_WRITABLE
    pml4 = struct.pack("<Q", PDPT_ADDR | rw).ljust(PAGE_SIZE, b"\0")
    pdpt = struct.pack(f"<{PD_COUNT}Q", *(PD_ADDR + i * PAGE_SIZE | rw for i in range(PD_COUNT))).ljust(
        PAGE_SIZE, b"\0"
    )
    mem.write(PML4_ADDR, pml4)
    mem.write(PDPT_ADDR, pdpt)
    for i in range(PD_COUNT):
        first = i * 512
        entries = ((first + j) * LARGE_PAGE_SIZE | rw | PTE_LARGE for j in range(512))
        mem.write(PD_ADDR + i * PAGE_SIZE, struct.pack("<512Q", *entries))


def _registers(values: dict[str, int]) -> dict[str, int]:
    unknown = set(values) - set(GENERAL_REGISTERS)
    if unknown:
        raise ValueError(f"not general registers: {', '.join(sorted(unknown))}")
    return {name: values.get(name, 0) for name in GENERAL_REGISTERS}


def long_mode_entry(mem: GuestRam, rip: int, rsi: int, *, protocol: str = "linux64") -> EntryState:
    """Write GDT and page tables; return 64-bit long-mode entry at *rip* with RSI = *rsi*."""
    write_gdt(mem)
    write_identity_page_tables(mem)
    return EntryState(
        rip=rip,
        rsp=BOOT_STACK_TOP,
        rflags=RFLAGS_RESERVED,
        regs=_registers({"rsi": rsi}),
        cs=CODE64_SEGMENT,
        ds=DATA_SEGMENT,
        gdt_base=GDT_ADDR,
        gdt_limit=GDT_LIMIT,
        cr0=CR0_LONG_MODE,
        cr3=PML4_ADDR,
        cr4=CR4_LONG_MODE,
        efer=EFER_LONG_MODE,
        protocol=protocol,
    )


def protected_mode_entry(
    mem: GuestRam, rip: int, regs: dict[str, int], *, protocol: str = "pvh"
) -> EntryState:
    """Write the GDT; return 32-bit protected-mode entry (paging off) at *rip*.

    *regs* gives the registers the protocol defines (e.g. ``{"rbx": info}``);
    all others are zero.
    """
    if not 0 <= rip < 1 << 32:
        raise ValueError(f"32-bit entry point {rip:#x} is above 4 GiB")
    write_gdt(mem)
    return EntryState(
        rip=rip,
        rsp=BOOT_STACK_TOP,
        rflags=RFLAGS_RESERVED,
        regs=_registers(regs),
        cs=CODE32_SEGMENT,
        ds=DATA_SEGMENT,
        gdt_base=GDT_ADDR,
        gdt_limit=GDT_LIMIT,
        cr0=CR0_PROTECTED_MODE,
        cr3=0,
        cr4=0,
        efer=0,
        protocol=protocol,
    )
