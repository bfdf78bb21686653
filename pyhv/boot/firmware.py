"""Firmware: the fw_cfg kernel items a firmware's Linux loader reads, and BIOS ROM images.

With ``-kernel``, QEMU does not load a bzImage itself when firmware runs: it
hands the pieces to the firmware through fw_cfg (``hw/i386/x86.c``,
``x86_load_linux``), and SeaBIOS's linuxboot option ROM or OVMF's
QemuKernelLoaderFsDxe copy them to the addresses given and jump to the
setup code.  The items (keys in ``devices/legacy/fw_cfg.py``):

========================== =====================================================
SETUP_ADDR/SIZE/DATA       the real-mode setup (``(setup_sects + 1) * 512`` bytes)
                           with the loader's fields filled in, at 0x10000
KERNEL_ADDR/SIZE/DATA      the protected-mode kernel, at 1 MiB
INITRD_ADDR/SIZE/DATA      the initrd, page aligned below ``initrd_addr_max`` and
                           below the top of RAM less QEMU's ACPI reserve
CMDLINE_ADDR/SIZE/DATA     the command line with its NUL, at 0x20000
========================== =====================================================

Sizes and addresses are 32-bit little-endian items.  The setup header's
``type_of_loader`` is 0xB0 (QEMU's), ``cmd_line_ptr``, ``heap_end_ptr``
(CAN_USE_HEAP set), ``ramdisk_image`` and ``ramdisk_size`` are set as QEMU
sets them for protocol 2.02+ with LOADED_HIGH (the only kind pyhv accepts).
Any other kernel gets the command line items only (QEMU's PVH path gives
the command line and an entry point for its own option ROM; pyhv has none).

Pure: bytes in, plain values out.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyhv.boot import linux
from pyhv.boot._common import read_image
from pyhv.boot.layout import CMDLINE_ADDR, PAGE_SIZE, align_down
from pyhv.errors import ImageError

#: where QEMU tells the firmware to put the setup code and the protected-mode kernel
SETUP_ADDR = 0x10000
KERNEL_ADDR = 0x100000
#: QEMU's type_of_loader ("Qemu", boot.rst's list of loader ids)
TYPE_OF_LOADER_QEMU = 0xB0
#: what QEMU keeps free at the top of RAM below 4 GiB for the firmware's ACPI tables
ACPI_DATA_SIZE = 0x20000 + 0x2000


class KernelItems(NamedTuple):
    """The firmware's view of the kernel: (address, bytes) per piece; absent pieces are (0, b"")."""

    cmdline: tuple[int, bytes]
    setup: tuple[int, bytes] = (0, b"")
    kernel: tuple[int, bytes] = (0, b"")
    initrd: tuple[int, bytes] = (0, b"")


def kernel_items(kernel: str, initrd: str | None, cmdline: str, below_4g: int) -> KernelItems:
    """The items for ``kernel`` (a bzImage gets all of them), ``below_4g`` bytes of RAM under 4 GiB."""
    text = cmdline.encode("utf-8", "surrogateescape") + b"\0"
    data = read_image(kernel)
    if not linux.is_bzimage(data):
        return KernelItems(cmdline=(CMDLINE_ADDR, text))
    header = linux.parse_setup_header(kernel, data)
    setup = bytearray(data[: header.protected_mode_offset])
    ramdisk = (0, b"")
    if initrd is not None:
        blob = read_image(initrd)
        top = min(header.initrd_addr_max, below_4g - ACPI_DATA_SIZE - 1)
        addr = align_down(top - len(blob), PAGE_SIZE)
        if not blob or addr < KERNEL_ADDR + len(data) - len(setup):
            raise ImageError(initrd, f"initrd of {len(blob)} bytes does not fit below {top:#x} for the firmware")
        ramdisk = (addr, blob)
    setup[linux.OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_QEMU
    struct.pack_into("<I", setup, linux.OFF_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<H", setup, linux.OFF_HEAP_END_PTR, CMDLINE_ADDR - SETUP_ADDR - 0x200)
    setup[linux.OFF_LOADFLAGS] |= linux.CAN_USE_HEAP
    struct.pack_into("<II", setup, linux.OFF_RAMDISK_IMAGE, ramdisk[0], len(ramdisk[1]))
    return KernelItems(
        cmdline=(CMDLINE_ADDR, text),
        setup=(SETUP_ADDR, bytes(setup)),
        kernel=(KERNEL_ADDR, data[header.protected_mode_offset :]),
        initrd=ramdisk,
    )


# --- a BIOS ROM run from the reset vector ------------------------------------------------------
#
# On a PC the firmware's flash sits at the top of the first 4 GiB, where the
# reset vector (0xFFFFFFF0, CS base 0xFFFF0000) is, and its last 128 KiB also
# appear below 1 MiB at 0xE0000-0xFFFFF (the "isa-bios" of QEMU's pc.c), where
# real-mode code and the tables an OS scans for live.  SeaBIOS starts in the
# high copy, then runs from the low one; pyhv makes the low one RAM holding
# the copy (as after SeaBIOS unlocked shadow RAM), so the firmware can write
# there.  QEMU's rule for the image: a whole number of 64 KiB.

ROM_GRANULE = 64 << 10
ROM_MAX = 16 << 20
ISA_BIOS_SIZE = 128 << 10
ISA_BIOS_END = 0x100000
FOUR_GIB = 1 << 32


class FirmwareImage(NamedTuple):
    """Where the ROM goes and what is copied below 1 MiB."""

    rom_addr: int
    rom: bytes
    low_addr: int
    low: bytes


def read_firmware(path: str) -> FirmwareImage:
    """The ROM in ``path``, checked: a whole number of 64 KiB, at most 16 MiB."""
    rom = read_image(path)
    if not rom or len(rom) % ROM_GRANULE or len(rom) > ROM_MAX:
        raise ImageError(path, f"a firmware image is a whole number of 64 KiB, at most {ROM_MAX >> 20} MiB "
                               f"(this one is {len(rom)} bytes)")
    low = rom[-ISA_BIOS_SIZE:]
    return FirmwareImage(FOUR_GIB - len(rom), rom, ISA_BIOS_END - len(low), low)
