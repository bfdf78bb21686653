"""PVH direct boot of an ELF kernel (Xen's x86/HVM direct boot ABI).

A PVH-capable kernel is an ELF32 or ELF64 executable carrying the note
``XEN_ELFNOTE_PHYS32_ENTRY`` (name "Xen", type 18): the physical address of
a 32-bit entry point.  The loader places the PT_LOAD segments at their
``p_paddr`` and builds a ``struct hvm_start_info`` (Xen public header
arch-x86/hvm/start_info.h, version 1)::

     0 magic 0x336ec578      4 version (1)      8 flags       12 nr_modules
    16 modlist_paddr        24 cmdline_paddr   32 rsdp_paddr
    40 memmap_paddr         48 memmap_entries  52 reserved    (56 bytes)

followed by the module list (``struct hvm_modlist_entry``: paddr, size,
cmdline_paddr, reserved; the initrd is module 0) and the memory map
(``struct hvm_memmap_table_entry``: addr, size, type, reserved; type 1 RAM,
2 reserved).  An address of 0 means "not present" (e.g. ``rsdp_paddr``
before ACPI tables exist).

Start-of-day state: 32-bit protected mode with paging off, flat 4 GiB CS
(execute/read) and DS/ES/SS (read/write), CR0 = PE (ET is read-only),
CR4 = 0, EBX = physical address of hvm_start_info.
"""

from __future__ import annotations

import struct

from pyhv.boot import elf
from pyhv.boot._common import low_ram_top, place_initrd, write_cmdline
from pyhv.boot._types import GuestRam
from pyhv.boot.layout import BOOT_INFO_ADDR, BOOT_INFO_END, e820_map
from pyhv.boot.x86 import EntryState, protected_mode_entry
from pyhv.errors import ImageError

XEN_HVM_START_MAGIC = 0x336EC578
START_INFO_VERSION = 1

START_INFO = struct.Struct("<IIIIQQQQII")
MODLIST_ENTRY = struct.Struct("<QQQQ")
MEMMAP_ENTRY = struct.Struct("<QQII")

START_INFO_ADDR = BOOT_INFO_ADDR
MODLIST_ADDR = START_INFO_ADDR + 0x40
MEMMAP_ADDR = START_INFO_ADDR + 0x80
MEMMAP_MAX_ENTRIES = (BOOT_INFO_END - MEMMAP_ADDR) // MEMMAP_ENTRY.size


def load_pvh(
    mem: GuestRam,
    path: str,
    data: bytes,
    initrd: str | None,
    cmdline: str,
    rsdp: int = 0,
) -> EntryState:
    """Load a PVH ELF kernel, build hvm_start_info and return the 32-bit entry state."""
    image = elf.parse_elf(path, data)
    entry = image.pvh_entry(path)
    if entry is None:
        raise ImageError(path, "ELF file has no PVH entry point (Xen note XEN_ELFNOTE_PHYS32_ENTRY)")
    if not any(seg.paddr <= entry < seg.paddr_end for seg in image.segments):
        raise ImageError(path, f"PVH entry point {entry:#x} is outside every loadable segment")
    top = low_ram_top(mem, path)
    occupied = elf.load_segments(mem, path, data, image)
    cmdline_addr = write_cmdline(mem, path, cmdline)

    modules = b""
    if initrd is not None:
        ramdisk = place_initrd(mem, initrd, top, occupied)
        modules = MODLIST_ENTRY.pack(ramdisk.addr, ramdisk.size, 0, 0)
    memmap = e820_map(mem.ram_ranges())
    if len(memmap) > MEMMAP_MAX_ENTRIES:
        raise ImageError(path, f"memory map has {len(memmap)} entries; at most {MEMMAP_MAX_ENTRIES} fit")
    nr_modules = len(modules) // MODLIST_ENTRY.size
    start_info = START_INFO.pack(
        XEN_HVM_START_MAGIC,
        START_INFO_VERSION,
        0,
        nr_modules,
        MODLIST_ADDR if nr_modules else 0,
        cmdline_addr,
        rsdp,
        MEMMAP_ADDR,
        len(memmap),
        0,
    )
    mem.write(START_INFO_ADDR, start_info)
    if modules:
        mem.write(MODLIST_ADDR, modules)
    mem.write(MEMMAP_ADDR, b"".join(MEMMAP_ENTRY.pack(*item, 0) for item in memmap))
    return protected_mode_entry(mem, entry, {"rbx": START_INFO_ADDR}, protocol="pvh")
