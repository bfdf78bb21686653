"""Fixed guest-physical layout used while booting, and the e820 memory map.

Everything the loaders build for the guest lives in the first megabyte, in
places that no supported kernel format asks for::

    0x0000_0500  boot GDT (BOOT_GDT_SIZE bytes)
    0x0000_6000  PVH hvm_start_info or Multiboot information, with their
                 module list, memory map and strings (one page)
    0x0000_7000  Linux zero page (struct boot_params, one page)
    0x0000_8ff0  initial stack pointer (stack grows down from here, one page)
    0x0000_9000  PML4
    0x0000_a000  PDPT
    0x0000_b000  four page directories, 2 MiB pages, identity map 0..4 GiB
    0x0002_0000  kernel command line (CMDLINE_MAX bytes including the NUL)
    0x0009_fc00  EBDA / BIOS area, reserved in the memory map up to 1 MiB
    0x000d_f000  VM Generation ID: 16 bytes (devices/vmgenid.py)
    0x000e_0000  ACPI tables (acpi.py)
    0x000f_0000  MP floating pointer and configuration table (mptable.py)
    0x000f_fff0  the reset-vector stub (acpi.py)
    0x0010_0000  kernels, then the initrd near the top of low RAM

Between these areas a kernel may load below 1 MiB too (Multiboot kernels
do): :data:`PYHV_LOW_AREAS` lists what pyhv writes, and a loader refuses only
segments that overlap one of them.

Low RAM is ``[0, min(mem, LOW_RAM_LIMIT))``; the MMIO hole follows up to
4 GiB and any remaining RAM starts at ``HIGH_RAM_START``.
"""

from __future__ import annotations

from typing import NamedTuple

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 0x1000

# -- boot structures -------------------------------------------------------

GDT_ADDR = 0x500
#: null, null, 64-bit code, data, 32-bit code: five 8-byte descriptors
BOOT_GDT_ENTRIES = 5
BOOT_GDT_SIZE = 8 * BOOT_GDT_ENTRIES

#: hvm_start_info (PVH) or multiboot_info (Multiboot): only one per boot
BOOT_INFO_ADDR = 0x6000
BOOT_INFO_END = 0x7000

ZERO_PAGE_ADDR = 0x7000

BOOT_STACK_TOP = 0x8FF0

PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
PD_COUNT = 4
PAGE_TABLES_END = PD_ADDR + PD_COUNT * PAGE_SIZE  # 0xf000

CMDLINE_ADDR = 0x20000
#: size of the command line area, including the terminating NUL
CMDLINE_MAX = 0x10000

# -- firmware areas and kernel placement --------------------------------------

#: end of conventional memory the guest may use (639 KiB)
EBDA_START = 0x9FC00
#: the MP tables, in the BIOS ROM area a guest scans for them (0xF0000-0xFFFFF)
MPTABLE_ADDR = 0xF0000
#: start of "high" memory: the BIOS area below it is reserved
HIGH_MEMORY_START = 0x100000
#: nothing of a kernel image may be loaded below this address
LOW_RESERVED_END = HIGH_MEMORY_START

#: the VM Generation ID's 16 bytes: a page of the reserved BIOS area, below the ACPI tables
VMGENID_ADDR = 0xDF000


class LowArea(NamedTuple):
    """Memory below 1 MiB that pyhv itself writes while building the boot state."""

    name: str
    start: int
    end: int  # exclusive


#: pyhv's own areas in the first MiB, in address order (see the module's map)
PYHV_LOW_AREAS = (
    LowArea("boot GDT", GDT_ADDR, GDT_ADDR + BOOT_GDT_SIZE),
    LowArea("boot information", BOOT_INFO_ADDR, BOOT_INFO_END),
    LowArea("zero page", ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + PAGE_SIZE),
    LowArea("boot stack", BOOT_STACK_TOP & ~(PAGE_SIZE - 1), (BOOT_STACK_TOP & ~(PAGE_SIZE - 1)) + PAGE_SIZE),
    LowArea("boot page tables", PML4_ADDR, PAGE_TABLES_END),
    LowArea("command line", CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX),
    LowArea("BIOS area (EBDA, VM Generation ID, ACPI tables, MP table, reset vector)", EBDA_START, HIGH_MEMORY_START),
)

#: default load address of the protected-mode part of a bzImage
BZIMAGE_LOAD_ADDR = 0x100000
#: where a relocatable kernel goes when 1 MiB does not meet its alignment
RELOCATED_KERNEL_MIN = 16 * MiB

#: default highest byte an initrd may occupy (boot protocol < 2.03)
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF

# -- the RAM map ------------------------------------------------------------

#: low RAM ends here at the latest; the MMIO hole takes the rest below 4 GiB
LOW_RAM_LIMIT = 0xC000_0000
HIGH_RAM_START = 4 * GiB

E820_RAM = 1
E820_RESERVED = 2


class E820Entry(NamedTuple):
    """One entry of the memory map handed to the guest."""

    addr: int
    size: int
    type: int


def e820_map(ram_ranges: list[tuple[int, int]]) -> list[E820Entry]:
    """The memory map for RAM made of *ram_ranges* (``(start, size)`` pairs).

    The part of low RAM between the EBDA and 1 MiB is reported reserved
    (BIOS area, where ACPI tables will live); all other RAM is usable.
    """
    entries: list[E820Entry] = []
    for start, size in sorted(ram_ranges):
        end = start + size
        pieces = (
            (start, min(end, EBDA_START), E820_RAM),
            (max(start, EBDA_START), min(end, HIGH_MEMORY_START), E820_RESERVED),
            (max(start, HIGH_MEMORY_START), end, E820_RAM),
        )
        for lo, hi, kind in pieces:
            if hi > lo:
                entries.append(E820Entry(lo, hi - lo, kind))
    return entries


def align_up(value: int, alignment: int) -> int:
    """*value* rounded up to a multiple of *alignment* (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def align_down(value: int, alignment: int) -> int:
    """*value* rounded down to a multiple of *alignment* (a power of two)."""
    return value & ~(alignment - 1)
