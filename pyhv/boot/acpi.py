"""ACPI tables for the guest: RSDP, XSDT, FADT, MADT and DSDT (ACPI 6.5).

The machine is *hardware-reduced* (FADT flag HW_REDUCED_ACPI, 5.2.9): there
are no PM1 event/control blocks and no SCI; power-off goes through the FADT's
SLEEP_CONTROL_REG (4.8.3.7) and reboot through RESET_REG, both plain I/O ports
served by :mod:`pyhv.devices.legacy.acpi_pm`.  The \\_S5 object in the DSDT
tells the OS which SLP_TYP value means "soft off".

Tables live in the BIOS area at :data:`ACPI_BASE` (0xE0000), which the e820
map reports as reserved.  Linux finds the RSDP there by scanning on 16-byte
boundaries, and also through the zero page (``acpi_rsdp_addr``) or the PVH
start info (``rsdp_paddr``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import aml
from ._types import GuestRam
from .layout import MPTABLE_ADDR

ACPI_BASE = 0xE0000
#: the tables stop below the MP table (mptable.py)
ACPI_LIMIT = MPTABLE_ADDR
OEM_ID = b"PYHV  "
OEM_TABLE_ID = b"PYHVVMM "
CREATOR_ID = b"PYHV"

LAPIC_ADDR = 0xFEE0_0000
IOAPIC_ADDR = 0xFEC0_0000
IOAPIC_ID = 0
#: the IOAPIC pin of ISA IRQ 0 (the PIT), as on PCs: an interrupt source override
PIT_GSI = 2

#: I/O ports of the ACPI power-management registers (see devices/legacy/acpi_pm.py)
SLEEP_CONTROL_PORT = 0x3C0
SLEEP_STATUS_PORT = 0x3C1
RESET_PORT = 0x3C4
RESET_VALUE = 0x01
#: SLP_TYP value for S5 (soft off) published in \_S5
S5_SLP_TYP = 5

FADT_HW_REDUCED_ACPI = 1 << 20
FADT_RESET_REG_SUP = 1 << 10
FADT_BOOT_VGA_NOT_PRESENT = 1 << 2
MADT_PCAT_COMPAT = 1 << 0

GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to zero modulo 256."""
    return (-sum(data)) & 0xFF


def _header(signature: bytes, length: int, revision: int) -> bytearray:
    return bytearray(
        struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1, CREATOR_ID, 1)
    )


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: 36-byte header + body, checksummed."""
    table = _header(signature, 36 + len(body), revision) + body
    table[9] = checksum(bytes(table))
    return bytes(table)


def gas(port: int, width_bits: int = 8) -> bytes:
    """Generic Address Structure (5.2.3.2) for a byte-wide I/O port."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, width_bits, 0, GAS_ACCESS_BYTE, port)


def fadt(dsdt_addr: int) -> bytes:
    body = bytearray(276 - 36)

    def put(offset: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(FADT_DSDT, "<I", dsdt_addr if dsdt_addr < 1 << 32 else 0)  # DSDT
    put(0x6D, "<H", FADT_BOOT_VGA_NOT_PRESENT)  # IAPC_BOOT_ARCH
    put(0x70, "<I", FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP)  # Flags
    body[0x74 - 36 : 0x80 - 36] = gas(RESET_PORT)  # RESET_REG
    put(0x80, "<B", RESET_VALUE)  # RESET_VALUE
    put(0x83, "<B", 5)  # FADT Minor Version (6.5)
    put(FADT_X_DSDT, "<Q", dsdt_addr)  # X_DSDT
    body[0xF4 - 36 : 0x100 - 36] = gas(SLEEP_CONTROL_PORT)  # SLEEP_CONTROL_REG
    body[0x100 - 36 : 0x10C - 36] = gas(SLEEP_STATUS_PORT)  # SLEEP_STATUS_REG
    put(0x10C, "<8s", b"PYHV")  # Hypervisor Vendor Identity
    return sdt(b"FACP", 6, bytes(body))


def madt(apic_ids: list[int]) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, MADT_PCAT_COMPAT))
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", 0, 8, uid, apic_id, 1)  # Processor Local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, IOAPIC_ID, 0, IOAPIC_ADDR, 0)  # I/O APIC, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, PIT_GSI, 0)  # ISA IRQ0 (PIT) -> GSI 2
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # LAPIC NMI on LINT1, all processors
    return sdt(b"APIC", 5, bytes(body))


def dsdt(devices: list[bytes]) -> bytes:
    sleep_states = aml.name("\\_S5", aml.package(aml.integer(S5_SLP_TYP), aml.integer(0), aml.integer(0), aml.integer(0)))
    return sdt(b"DSDT", 2, aml.scope("\\_SB", *devices) + sleep_states)


def com_device(name: str, uid: int, port: int, irq: int) -> bytes:
    """A 16550 UART (PNP0501) with its port range and ISA IRQ."""
    return aml.device(
        name,
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", aml.integer(uid)),
        aml.name("_CRS", aml.resource_template(aml.io_port(port, 8), aml.irq_no_flags(irq))),
    )


def rtc_device(port: int, irq: int) -> bytes:
    """The CMOS RTC (PNP0B00): two ports and its ISA IRQ."""
    return aml.device(
        "RTC",
        aml.name("_HID", aml.eisa_id("PNP0B00")),
        aml.name("_CRS", aml.resource_template(aml.io_port(port, 2), aml.irq_no_flags(irq))),
    )


def fw_cfg_device(hid: str, port: int, length: int) -> bytes:
    """QEMU's fw_cfg (``QEMU0002``) and its I/O ports, where Linux's qemu_fw_cfg driver looks.

    Firmware finds fw_cfg at its fixed ports without ACPI (the tables may come
    through it); the node is for the OS, as in QEMU: _STA 0x0B (present,
    enabled, not shown in the UI)."""
    return aml.device(
        "FWCF",
        aml.name("_HID", aml.string(hid)),
        aml.name("_STA", aml.integer(0x0B)),
        aml.name("_CRS", aml.resource_template(aml.io_port(port, length))),
    )


#: where a real-mode jump to the BIOS (F000:FFF0) lands
RESET_VECTOR_ADDR = 0xFFFF0


def reset_vector_stub() -> bytes:
    """Real-mode code for the BIOS reset vector: write RESET_VALUE to RESET_REG, then halt.

    pyhv has no BIOS, but Linux may still jump to one to reboot: on a
    hardware-reduced ACPI platform (no EFI) it picks ``reboot=efi``, finds no
    EFI runtime, falls back to ``reboot=bios`` (arch/x86/kernel/reboot.c) and
    jumps to F000:FFF0 in real mode.  A BIOS would reset the machine; this
    stub asks pyhv to, through the same register ACPI publishes."""
    return bytes(
        [0xB0, RESET_VALUE]  # mov al, RESET_VALUE
        + [0xBA, RESET_PORT & 0xFF, RESET_PORT >> 8]  # mov dx, RESET_PORT
        + [0xEE]  # out dx, al
        + [0xFA, 0xF4, 0xEB, 0xFD]  # cli; hlt; jmp back to hlt
    )


class AcpiTables:
    """The tables laid out at their guest-physical addresses."""

    def __init__(self, rsdp_addr: int) -> None:
        self.rsdp_addr = rsdp_addr
        self.blobs: dict[int, bytes] = {}  # address -> table
        self.tables: dict[str, int] = {}  # signature -> address

    def write(self, mem: GuestRam) -> None:
        """The tables, and the reset stub in the BIOS area that goes with them."""
        for addr, blob in self.blobs.items():
            mem.write(addr, blob)
        mem.write(RESET_VECTOR_ADDR, reset_vector_stub())


class _Layout(NamedTuple):
    """Tables placed from an address: (address, signature, bytes) in order, the XSDT's
    address, and where each pointer field is: (table address + field offset, size, target)."""

    tables: list[tuple[int, str, bytes]]
    xsdt_addr: int
    end: int
    pointers: list[tuple[int, int, int]]


def _layout(apic_ids: list[int], devices: list[bytes], extra: list[tuple[str, bytes]], start: int) -> _Layout:
    """DSDT, FADT, MADT, ``extra`` and the XSDT from ``start``, each 16-byte aligned."""
    placed: list[tuple[int, str, bytes]] = []
    pointers: list[tuple[int, int, int]] = []
    cursor = start

    def place(signature: str, blob: bytes) -> int:
        nonlocal cursor
        addr = cursor
        placed.append((addr, signature, blob))
        cursor = (cursor + len(blob) + 15) & ~15
        return addr

    dsdt_addr = place("DSDT", dsdt(devices))
    fadt_addr = place("FACP", fadt(dsdt_addr))
    pointers += [(fadt_addr + FADT_DSDT, 4, dsdt_addr), (fadt_addr + FADT_X_DSDT, 8, dsdt_addr)]
    entries = [fadt_addr, place("APIC", madt(apic_ids))] + [place(sig, table) for sig, table in extra]
    xsdt_addr = place("XSDT", sdt(b"XSDT", 1, struct.pack(f"<{len(entries)}Q", *entries)))
    pointers += [(xsdt_addr + 36 + 8 * i, 8, target) for i, target in enumerate(entries)]
    return _Layout(placed, xsdt_addr, cursor, pointers)


def build_tables(
    apic_ids: list[int], devices: list[bytes], extra: list[tuple[str, bytes]] | None = None, base: int = ACPI_BASE
) -> AcpiTables:
    """Lay out RSDP, XSDT, FADT, MADT, DSDT and ``extra`` (signature, table) from ``base`` upwards."""
    out = AcpiTables(rsdp_addr=base)
    layout = _layout(apic_ids, devices, extra or [], base + 64)  # RSDP is 36 bytes; tables 16-byte aligned
    if layout.end > ACPI_LIMIT:
        raise ValueError("ACPI tables do not fit below the MP table")
    for addr, signature, blob in layout.tables:
        out.blobs[addr] = blob
        out.tables[signature] = addr
    out.blobs[base] = rsdp(layout.xsdt_addr)
    return out


# --- the same tables for firmware: QEMU's fw_cfg files and BIOS linker/loader -------------------
#
# Firmware (SeaBIOS, OVMF) installs ACPI tables a VMM hands it through fw_cfg:
# ``etc/acpi/tables`` (the tables, their pointers holding offsets into that
# file), ``etc/acpi/rsdp``, and ``etc/table-loader``, a list of 128-byte
# commands (QEMU's hw/acpi/bios-linker-loader.c) the firmware runs in order:
# ALLOCATE copies a file into memory (zone HIGH: anywhere; FSEG: the
# 0xE0000-0xFFFFF segment, where an OS scans for the RSDP); ADD_POINTER adds
# the address a file was copied to into a little-endian field of another;
# ADD_CHECKSUM subtracts a range's byte sum from a checksum byte.  Every
# pointer is patched before any checksum is fixed, so each checksum comes out
# right whatever the addresses.

LOADER_ALLOCATE = 1
LOADER_ADD_POINTER = 2
LOADER_ADD_CHECKSUM = 3
LOADER_ZONE_HIGH = 1
LOADER_ZONE_FSEG = 2
LOADER_FILE_SIZE = 56
LOADER_ENTRY_SIZE = 128
#: the tables' and the RSDP's alignment in the firmware's memory (QEMU's)
LOADER_TABLES_ALIGN = 64
LOADER_RSDP_ALIGN = 16
FADT_DSDT = 0x28
FADT_X_DSDT = 0x8C
RSDP_XSDT = 24
SDT_CHECKSUM = 9
RSDP_CHECKSUM, RSDP_EXT_CHECKSUM, RSDP_V1_LENGTH, RSDP_LENGTH = 8, 32, 20, 36


def _loader_entry(command: int, body: bytes) -> bytes:
    return (struct.pack("<I", command) + body).ljust(LOADER_ENTRY_SIZE, b"\0")


def _loader_name(name: str) -> bytes:
    return name.encode("ascii").ljust(LOADER_FILE_SIZE, b"\0")


def loader_allocate(name: str, align: int, zone: int) -> bytes:
    return _loader_entry(LOADER_ALLOCATE, _loader_name(name) + struct.pack("<IB", align, zone))


def loader_add_pointer(dest: str, src: str, offset: int, size: int) -> bytes:
    return _loader_entry(LOADER_ADD_POINTER, _loader_name(dest) + _loader_name(src) + struct.pack("<IB", offset, size))


def loader_add_checksum(name: str, offset: int, start: int, length: int) -> bytes:
    return _loader_entry(LOADER_ADD_CHECKSUM, _loader_name(name) + struct.pack("<III", offset, start, length))


class LoaderFiles(NamedTuple):
    """``etc/acpi/tables``, ``etc/acpi/rsdp`` and ``etc/table-loader``, in that order."""

    tables: bytes
    rsdp: bytes
    loader: bytes


def loader_files(
    apic_ids: list[int], devices: list[bytes], extra: list[tuple[str, bytes]] | None = None,
    tables_file: str = "etc/acpi/tables", rsdp_file: str = "etc/acpi/rsdp",
) -> LoaderFiles:
    """The tables :func:`build_tables` lays out, as the files and commands firmware installs."""
    layout = _layout(apic_ids, devices, extra or [], 0)
    blob = bytearray(layout.end)
    for addr, _, table in layout.tables:
        blob[addr : addr + len(table)] = table
    commands = [loader_allocate(rsdp_file, LOADER_RSDP_ALIGN, LOADER_ZONE_FSEG),
                loader_allocate(tables_file, LOADER_TABLES_ALIGN, LOADER_ZONE_HIGH)]
    commands += [loader_add_pointer(tables_file, tables_file, field, size) for field, size, _ in layout.pointers]
    commands.append(loader_add_pointer(rsdp_file, tables_file, RSDP_XSDT, 8))
    commands += [loader_add_checksum(tables_file, addr + SDT_CHECKSUM, addr, len(table))
                 for addr, _, table in layout.tables]
    commands += [loader_add_checksum(rsdp_file, RSDP_CHECKSUM, 0, RSDP_V1_LENGTH),
                 loader_add_checksum(rsdp_file, RSDP_EXT_CHECKSUM, 0, RSDP_LENGTH)]
    return LoaderFiles(bytes(blob), rsdp(layout.xsdt_addr), b"".join(commands))


def rsdp(xsdt_addr: int) -> bytes:
    """Root System Description Pointer, revision 2 (5.2.5.3)."""
    r = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr, 0))
    r[8] = checksum(bytes(r[:20]))
    r[32] = checksum(bytes(r))
    return bytes(r)
