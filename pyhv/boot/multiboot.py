"""Multiboot (version 0.6.96, "Multiboot Specification") kernels.

OS image format ("Header layout", "Header magic fields"): a header of
32-bit words ``magic`` 0x1BADB002, ``flags``, ``checksum`` (the three sum
to 0 mod 2**32), 4-byte aligned and wholly inside the first 8192 bytes of
the file.  Flag bits 0-15 are requirements: a loader must refuse an image
asking for one it cannot honour.  pyhv honours bit 0 (modules page aligned:
they always are) and bit 1 (memory information); bit 2 (a video mode) and
the undefined bits are refused.  Of bits 16-31 only bit 16 means something:

* bit 16 set ("Header address fields", the a.out kludge): ``header_addr``,
  ``load_addr``, ``load_end_addr``, ``bss_end_addr``, ``entry_addr``
  follow; the file from ``header offset - (header_addr - load_addr)`` is
  copied to ``load_addr`` (up to ``load_end_addr``, or to the end of the
  file if that is 0), BSS up to ``bss_end_addr`` is zeroed, and the kernel
  is entered at ``entry_addr``.  These addresses win over any ELF headers.
* otherwise the file must be ELF (32- or 64-bit): PT_LOAD segments go to
  ``p_paddr`` and ``e_entry`` (translated to physical) is the entry.

Machine state ("Machine state"): 32-bit protected mode, paging off, flat
4 GiB CS and data segments, EAX = 0x2BADB002, EBX = physical address of the
Multiboot information structure ("Boot information format"), which pyhv
fills with memory sizes (``mem_lower``/``mem_upper`` in KiB), the command
line (the kernel's path, a space and the arguments, as GRUB and QEMU pass
it), the initrd as module 0, the memory map (entries prefixed by their
size, 20) and the boot loader name.

Segments may load below 1 MiB (many Multiboot kernels start at 0x10000 or
so) anywhere pyhv's own boot areas are not (``layout.PYHV_LOW_AREAS``).
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from pyhv.boot import elf
from pyhv.boot._common import (
    check_load_range,
    low_ram_top,
    place_initrd,
    write_cmdline,
    write_zeros,
)
from pyhv.boot._types import GuestRam
from pyhv.boot.layout import (
    BOOT_INFO_ADDR,
    BOOT_INFO_END,
    EBDA_START,
    HIGH_MEMORY_START,
    KiB,
    e820_map,
)
from pyhv.boot.x86 import EntryState, protected_mode_entry
from pyhv.errors import ImageError

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH_LIMIT = 8192
HEADER_ALIGN = 4

FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
REQUIRED_MASK = 0xFFFF
HONOURED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO

_HEADER = struct.Struct("<III")
_ADDRESSES = struct.Struct("<5I")

INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_MMAP = 1 << 6
INFO_BOOT_LOADER_NAME = 1 << 9

#: flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr,
#: syms (16 bytes), mmap_length, mmap_addr, drives_length, drives_addr,
#: config_table, boot_loader_name
INFO = struct.Struct("<7I16x6I")
INFO_SIZE = 116  # through the framebuffer fields, all left zero
MODULE_ENTRY = struct.Struct("<IIII")  # mod_start, mod_end, string, reserved
MMAP_ENTRY = struct.Struct("<IQQI")  # size, base_addr, length, type
MMAP_ENTRY_SIZE_FIELD = MMAP_ENTRY.size - 4

INFO_ADDR = BOOT_INFO_ADDR
MODULES_ADDR = INFO_ADDR + 0x80
MMAP_ADDR = INFO_ADDR + 0xA0
MMAP_MAX_ENTRIES = (0x400 - 0xA0) // MMAP_ENTRY.size
LOADER_NAME_ADDR = INFO_ADDR + 0x400
LOADER_NAME = b"pyhv\0"
MODULE_STRING_ADDR = INFO_ADDR + 0x480
MODULE_STRING_MAX = BOOT_INFO_END - MODULE_STRING_ADDR


class MultibootHeader(NamedTuple):
    """A Multiboot header found in an image; address fields are 0 without bit 16."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & FLAG_AOUT_KLUDGE)


def find_multiboot_header(path: str, data: bytes) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8 KiB, or None.

    A header with bit 16 whose address fields do not fit in the file or in
    the first 8 KiB is an ImageError.
    """
    window = min(len(data), HEADER_SEARCH_LIMIT)
    for offset in range(0, window - _HEADER.size + 1, HEADER_ALIGN):
        magic, flags, checksum = _HEADER.unpack_from(data, offset)
        if magic != HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if not flags & FLAG_AOUT_KLUDGE:
            return MultibootHeader(offset, flags)
        if offset + _HEADER.size + _ADDRESSES.size > window:
            raise ImageError(path, "Multiboot header address fields are cut off")
        addresses = _ADDRESSES.unpack_from(data, offset + _HEADER.size)
        return MultibootHeader(offset, flags, *addresses)
    return None


def load_multiboot(
    mem: GuestRam,
    path: str,
    data: bytes,
    initrd: str | None,
    cmdline: str,
    rsdp: int = 0,
) -> EntryState:
    """Load a Multiboot kernel, build the information structure, return entry state.

    *rsdp* is accepted for a uniform signature; Multiboot 1 has no field
    for it (the guest finds the RSDP by scanning the BIOS area).
    """
    del rsdp
    header = find_multiboot_header(path, data)
    if header is None:
        raise ImageError(path, "no Multiboot header in the first 8192 bytes")
    _check_required_flags(path, header.flags)
    top = low_ram_top(mem, path)
    if header.aout_kludge:
        entry, occupied = _load_aout_kludge(mem, path, data, header)
    else:
        if not elf.is_elf(data):
            raise ImageError(path, "Multiboot image is not ELF and has no address fields (flag bit 16)")
        image = elf.parse_elf(path, data)
        entry = elf.entry_address(path, image)
        occupied = elf.load_segments(mem, path, data, image)
    # As GRUB and QEMU pass it: the kernel's path, a space, then the arguments
    # (QEMU's "%s %s" of -kernel and -append, so an empty -append leaves the space).
    cmdline_addr = write_cmdline(mem, path, f"{path} {cmdline}")

    modules = b""
    if initrd is not None:
        ramdisk = place_initrd(mem, initrd, top, occupied)
        name = os.fsencode(os.path.basename(initrd))[: MODULE_STRING_MAX - 1] + b"\0"
        mem.write(MODULE_STRING_ADDR, name)
        modules = MODULE_ENTRY.pack(ramdisk.addr, ramdisk.end, MODULE_STRING_ADDR, 0)
        mem.write(MODULES_ADDR, modules)

    memmap = e820_map(mem.ram_ranges())
    if len(memmap) > MMAP_MAX_ENTRIES:
        raise ImageError(path, f"memory map has {len(memmap)} entries; at most {MMAP_MAX_ENTRIES} fit")
    mmap = b"".join(MMAP_ENTRY.pack(MMAP_ENTRY_SIZE_FIELD, *item) for item in memmap)
    mem.write(MMAP_ADDR, mmap)
    mem.write(LOADER_NAME_ADDR, LOADER_NAME)

    info = INFO.pack(
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_BOOT_LOADER_NAME,
        min(top, EBDA_START) // KiB,
        (top - HIGH_MEMORY_START) // KiB,
        0,
        cmdline_addr,
        len(modules) // MODULE_ENTRY.size,
        MODULES_ADDR,
        len(mmap),
        MMAP_ADDR,
        0,
        0,
        0,
        LOADER_NAME_ADDR,
    )
    mem.write(INFO_ADDR, info.ljust(INFO_SIZE, b"\0"))
    regs = {"rax": BOOTLOADER_MAGIC, "rbx": INFO_ADDR}
    return protected_mode_entry(mem, entry, regs, protocol="multiboot")


def _check_required_flags(path: str, flags: int) -> None:
    unsupported = flags & REQUIRED_MASK & ~HONOURED_REQUIRED
    if unsupported & FLAG_VIDEO_MODE:
        raise ImageError(
            path, "kernel requires a graphics video mode (Multiboot flag bit 2); pyhv has no display"
        )
    if unsupported:
        raise ImageError(
            path, f"kernel requires unsupported Multiboot features (flag bits {unsupported:#06x})"
        )


def _load_aout_kludge(
    mem: GuestRam, path: str, data: bytes, header: MultibootHeader
) -> tuple[int, list[tuple[int, int]]]:
    """Load by the header address fields; return entry and occupied range."""
    if header.load_addr > header.header_addr:
        raise ImageError(path, "Multiboot load_addr is above header_addr")
    file_start = header.offset - (header.header_addr - header.load_addr)
    if file_start < 0:
        raise ImageError(path, "Multiboot load_addr lies before the start of the file")
    if header.load_end_addr == 0:
        load_size = len(data) - file_start
    elif header.load_end_addr < header.load_addr:
        raise ImageError(path, "Multiboot load_end_addr is below load_addr")
    else:
        load_size = header.load_end_addr - header.load_addr
    if file_start + load_size > len(data):
        raise ImageError(path, "file is truncated: Multiboot load_end_addr is past its end")
    load_end = header.load_addr + load_size
    bss_end = header.bss_end_addr or load_end
    if bss_end < load_end:
        raise ImageError(path, "Multiboot bss_end_addr is below load_end_addr")
    check_load_range(mem, path, header.load_addr, bss_end - header.load_addr, "kernel")
    if not header.load_addr <= header.entry_addr < load_end:
        raise ImageError(path, f"Multiboot entry_addr {header.entry_addr:#x} is outside the loaded image")
    mem.write(header.load_addr, data[file_start : file_start + load_size])
    write_zeros(mem, load_end, bss_end - load_end)
    return header.entry_addr, [(header.load_addr, bss_end)]
