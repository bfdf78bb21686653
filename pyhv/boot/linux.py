"""Linux x86 boot: bzImage or ELF vmlinux entered through the 64-bit protocol.

References are Documentation/arch/x86/boot.rst ("The Linux/x86 Boot
Protocol") and Documentation/arch/x86/zero-page.rst.

bzImage ("The Real-Mode Kernel Header", "Loading The Rest of The Kernel"):
the file starts with the real-mode setup, whose header at 0x1f1 carries
``boot_flag`` 0xAA55 at 0x1fe and the magic "HdrS" at 0x202.  The
protected-mode kernel starts in the file at ``(setup_sects + 1) * 512``
(``setup_sects`` 0 means 4).  pyhv never runs the real-mode code: it uses
the "64-bit Boot Protocol", which needs protocol 2.12+ with
``XLF_KERNEL_64`` set in ``xloadflags``.  The setup header (0x1f1 up to
``0x202 + byte at 0x201``) is copied into a zeroed zero page, the loader
fields are filled in, the protected-mode kernel is copied to its load
address and the CPU enters it at load address + 0x200 in long mode with
RSI pointing at the zero page.

Load address: 1 MiB, the bzImage default, when that satisfies
``kernel_alignment``; otherwise (a relocatable kernel wanting e.g. 2 MiB
alignment) the first aligned address at or above 16 MiB.  ``code32_start``
is set to it.  ``init_size`` bytes from the runtime start address
(``align_up(load, kernel_alignment)`` if relocatable, else
``pref_address``) must fit in RAM; the initrd is kept clear of them.

ELF vmlinux: the uncompressed 64-bit kernel; PT_LOAD segments go to their
physical addresses and ``e_entry`` (``phys_startup_64``) is entered the same
way, with a zero page whose setup header pyhv writes itself.

Zero page ("Zero Page"): setup header at 0x1f1, ``acpi_rsdp_addr`` at 0x070,
the high halves of the ramdisk and command line pointers at 0x0c0..0x0cb,
``e820_entries`` at 0x1e8 and the table (20-byte entries, at most 128) at
0x2d0.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyhv.boot import elf
from pyhv.boot._common import (
    Placed,
    check_load_range,
    low_ram_top,
    place_initrd,
    write_cmdline,
)
from pyhv.boot._types import GuestRam
from pyhv.boot.layout import (
    BZIMAGE_LOAD_ADDR,
    DEFAULT_INITRD_ADDR_MAX,
    PAGE_SIZE,
    RELOCATED_KERNEL_MIN,
    ZERO_PAGE_ADDR,
    E820Entry,
    align_up,
    e820_map,
)
from pyhv.boot.x86 import EntryState, long_mode_entry
from pyhv.errors import ImageError

# -- setup header (offsets in the file and in the zero page) ----------------

SETUP_HEADER_START = 0x1F1
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_VID_MODE = 0x1FA
OFF_BOOT_FLAG = 0x1FE
OFF_JUMP = 0x200
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE_KERNEL = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
#: the setup header may not run into edd_mbr_sig_buffer
SETUP_HEADER_LIMIT = 0x290
#: the header must reach init_size (protocol 2.10+) for a 64-bit boot
SETUP_HEADER_MIN_END = OFF_INIT_SIZE + 4

BOOT_FLAG = 0xAA55
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, XLF_KERNEL_64

LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01

TYPE_OF_LOADER_UNDEFINED = 0xFF
VID_MODE_NORMAL = 0xFFFF
#: heap end 0xe000 from the start of the setup code (boot.rst sample), minus 0x200
HEAP_END_PTR = 0xE000 - 0x200
ENTRY_64_OFFSET = 0x200
SECTOR = 512

# -- zero page fields outside the setup header --------------------------------

OFF_ACPI_RSDP_ADDR = 0x070
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
_E820_ENTRY = struct.Struct("<QQI")

# -- values pyhv writes into the setup header of an ELF vmlinux ---------------

#: x86 COMMAND_LINE_SIZE is 2048 including the NUL
VMLINUX_CMDLINE_SIZE = 2047
VMLINUX_PROTOCOL = 0x020F
VMLINUX_KERNEL_ALIGNMENT = 0x200000


class SetupHeader(NamedTuple):
    """The fields of a bzImage setup header that loading depends on."""

    version: int
    setup_sects: int
    header_end: int
    loadflags: int
    xloadflags: int
    syssize: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def protected_mode_offset(self) -> int:
        """Offset of the protected-mode kernel in the file."""
        return (self.setup_sects + 1) * SECTOR


def protocol_text(version: int) -> str:
    """A boot protocol version as written in boot.rst, e.g. 0x020f -> "2.15"."""
    return f"{version >> 8}.{version & 0xFF:02d}"


def is_bzimage(data: bytes) -> bool:
    """Whether *data* has a boot sector flag and a "HdrS" setup header."""
    return (
        len(data) >= OFF_HEADER + 4
        and data[OFF_HEADER : OFF_HEADER + 4] == HDRS_MAGIC
        and struct.unpack_from("<H", data, OFF_BOOT_FLAG)[0] == BOOT_FLAG
    )


def parse_setup_header(path: str, data: bytes) -> SetupHeader:
    """Read and validate the setup header of a bzImage for a 64-bit boot."""
    if not is_bzimage(data):
        raise ImageError(path, 'not a bzImage (no 0xAA55 boot flag and "HdrS" header)')
    if len(data) < OFF_VERSION + 2:
        raise ImageError(path, "file is truncated inside the setup header")
    version = _u16(data, OFF_VERSION)
    hdr_len = data[OFF_JUMP + 1]
    header_end = OFF_HEADER + hdr_len
    if version < MIN_PROTOCOL:
        raise ImageError(
            path,
            f"boot protocol {protocol_text(version)} is too old: the 64-bit entry needs 2.12 or newer",
        )
    if not SETUP_HEADER_MIN_END <= header_end <= SETUP_HEADER_LIMIT:
        raise ImageError(path, f"setup header length {hdr_len:#x} (byte at 0x201) is invalid")
    if len(data) < header_end:
        raise ImageError(path, "file is truncated inside the setup header")
    header = SetupHeader(
        version=version,
        setup_sects=data[OFF_SETUP_SECTS] or 4,
        header_end=header_end,
        loadflags=data[OFF_LOADFLAGS],
        xloadflags=_u16(data, OFF_XLOADFLAGS),
        syssize=_u32(data, OFF_SYSSIZE),
        initrd_addr_max=_u32(data, OFF_INITRD_ADDR_MAX),
        kernel_alignment=_u32(data, OFF_KERNEL_ALIGNMENT),
        relocatable=data[OFF_RELOCATABLE_KERNEL] != 0,
        cmdline_size=_u32(data, OFF_CMDLINE_SIZE),
        pref_address=struct.unpack_from("<Q", data, OFF_PREF_ADDRESS)[0],
        init_size=_u32(data, OFF_INIT_SIZE),
    )
    if not header.loadflags & LOADED_HIGH:
        raise ImageError(path, "zImage kernels (LOADED_HIGH clear) are not supported")
    if not header.xloadflags & XLF_KERNEL_64:
        raise ImageError(path, "kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)")
    alignment = header.kernel_alignment
    if header.relocatable and (alignment == 0 or alignment & (alignment - 1)):
        raise ImageError(path, f"kernel_alignment {alignment:#x} is not a power of two")
    pm_offset = header.protected_mode_offset
    if len(data) <= pm_offset:
        raise ImageError(
            path,
            f"file is truncated: the protected-mode kernel starts at {pm_offset:#x} "
            f"but the file is {len(data)} bytes",
        )
    if len(data) - pm_offset < header.syssize * 16:
        raise ImageError(
            path,
            f"file is truncated: the protected-mode kernel is {header.syssize * 16} bytes "
            f"(syssize) but only {len(data) - pm_offset} follow the setup code",
        )
    return header


def bzimage_addresses(header: SetupHeader) -> tuple[int, int]:
    """``(load address, runtime start address)`` for the protected-mode kernel."""
    if not header.relocatable:
        runtime = header.pref_address or BZIMAGE_LOAD_ADDR
        return BZIMAGE_LOAD_ADDR, runtime
    alignment = header.kernel_alignment
    if BZIMAGE_LOAD_ADDR % alignment == 0:
        return BZIMAGE_LOAD_ADDR, BZIMAGE_LOAD_ADDR
    load = align_up(RELOCATED_KERNEL_MIN, alignment)
    return load, load


def load_linux(
    mem: GuestRam,
    path: str,
    data: bytes,
    initrd: str | None,
    cmdline: str,
    rsdp: int = 0,
) -> EntryState:
    """Load a bzImage or an ELF64 vmlinux and return its 64-bit entry state."""
    if is_bzimage(data):
        return load_bzimage(mem, path, data, initrd, cmdline, rsdp)
    if elf.is_elf(data) and elf.elf_class(data) == elf.ELFCLASS64:
        return load_vmlinux(mem, path, data, initrd, cmdline, rsdp)
    raise ImageError(path, "not a Linux kernel: expected a bzImage or a 64-bit ELF vmlinux")


def load_bzimage(
    mem: GuestRam,
    path: str,
    data: bytes,
    initrd: str | None,
    cmdline: str,
    rsdp: int = 0,
) -> EntryState:
    """Boot a bzImage through the 64-bit boot protocol."""
    header = parse_setup_header(path, data)
    top = low_ram_top(mem, path)
    kernel = data[header.protected_mode_offset :]
    load, runtime = bzimage_addresses(header)
    check_load_range(mem, path, load, len(kernel), "protected-mode kernel")
    check_load_range(mem, path, runtime, header.init_size, "kernel (init_size)")
    cmdline_addr = write_cmdline(mem, path, cmdline, header.cmdline_size)

    occupied = [(min(load, runtime), max(load + len(kernel), runtime + header.init_size))]
    mem.write(load, kernel)
    ramdisk = None
    if initrd is not None:
        limit = min(header.initrd_addr_max + 1, top)
        ramdisk = place_initrd(mem, initrd, limit, occupied)

    zero_page = bytearray(PAGE_SIZE)
    zero_page[SETUP_HEADER_START : header.header_end] = data[SETUP_HEADER_START : header.header_end]
    _fill_loader_fields(zero_page, cmdline_addr, ramdisk, e820_map(mem.ram_ranges()), rsdp, path)
    struct.pack_into("<I", zero_page, OFF_CODE32_START, load)
    mem.write(ZERO_PAGE_ADDR, bytes(zero_page))
    return long_mode_entry(mem, load + ENTRY_64_OFFSET, ZERO_PAGE_ADDR)


def load_vmlinux(
    mem: GuestRam,
    path: str,
    data: bytes,
    initrd: str | None,
    cmdline: str,
    rsdp: int = 0,
) -> EntryState:
    """Boot an uncompressed ELF64 vmlinux at ``e_entry`` in long mode."""
    image = elf.parse_elf(path, data)
    if image.bits != 64:
        raise ImageError(path, "a Linux ELF kernel must be ELF64 (64-bit vmlinux)")
    entry = elf.entry_address(path, image)
    top = low_ram_top(mem, path)
    occupied = elf.load_segments(mem, path, data, image)
    cmdline_addr = write_cmdline(mem, path, cmdline, VMLINUX_CMDLINE_SIZE)
    ramdisk = None
    if initrd is not None:
        ramdisk = place_initrd(mem, initrd, min(DEFAULT_INITRD_ADDR_MAX + 1, top), occupied)

    zero_page = bytearray(PAGE_SIZE)
    struct.pack_into("<H", zero_page, OFF_BOOT_FLAG, BOOT_FLAG)
    zero_page[OFF_HEADER : OFF_HEADER + 4] = HDRS_MAGIC
    struct.pack_into("<H", zero_page, OFF_VERSION, VMLINUX_PROTOCOL)
    zero_page[OFF_LOADFLAGS] = LOADED_HIGH
    struct.pack_into("<I", zero_page, OFF_INITRD_ADDR_MAX, DEFAULT_INITRD_ADDR_MAX)
    struct.pack_into("<I", zero_page, OFF_KERNEL_ALIGNMENT, VMLINUX_KERNEL_ALIGNMENT)
    struct.pack_into("<I", zero_page, OFF_CMDLINE_SIZE, VMLINUX_CMDLINE_SIZE)
    _fill_loader_fields(zero_page, cmdline_addr, ramdisk, e820_map(mem.ram_ranges()), rsdp, path)
    mem.write(ZERO_PAGE_ADDR, bytes(zero_page))
    return long_mode_entry(mem, entry, ZERO_PAGE_ADDR)


def _fill_loader_fields(
    zero_page: bytearray,
    cmdline_addr: int,
    ramdisk: Placed | None,
    e820: list[E820Entry],
    rsdp: int,
    path: str,
) -> None:
    """Write the fields a boot loader owns (boot.rst "write" fields, zero-page.rst)."""
    struct.pack_into("<H", zero_page, OFF_VID_MODE, VID_MODE_NORMAL)
    zero_page[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    zero_page[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", zero_page, OFF_HEAP_END_PTR, HEAP_END_PTR)
    _pack_split(zero_page, OFF_CMD_LINE_PTR, OFF_EXT_CMD_LINE_PTR, cmdline_addr)
    ramdisk_addr, ramdisk_size = (ramdisk.addr, ramdisk.size) if ramdisk else (0, 0)
    _pack_split(zero_page, OFF_RAMDISK_IMAGE, OFF_EXT_RAMDISK_IMAGE, ramdisk_addr)
    _pack_split(zero_page, OFF_RAMDISK_SIZE, OFF_EXT_RAMDISK_SIZE, ramdisk_size)
    struct.pack_into("<Q", zero_page, OFF_ACPI_RSDP_ADDR, rsdp)
    if len(e820) > E820_MAX_ENTRIES:
        raise ImageError(path, f"memory map has {len(e820)} entries; the zero page holds 128")
    zero_page[OFF_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        _E820_ENTRY.pack_into(zero_page, OFF_E820_TABLE + i * _E820_ENTRY.size, *entry)


def _pack_split(buf: bytearray, low_at: int, high_at: int, value: int) -> None:
    struct.pack_into("<I", buf, low_at, value & 0xFFFFFFFF)
    struct.pack_into("<I", buf, high_at, value >> 32)


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])
