"""The Intel MultiProcessor table (MP Specification 1.4), for guests booted without ACPI.

A guest booted with ``acpi=off`` (Firecracker's guests often are) finds its
CPUs and its IOAPIC the way pre-ACPI PCs described them: an *MP floating
pointer* structure, found by scanning on 16-byte boundaries (4.1: the first
KiB of the EBDA, the last KiB of base memory, or the BIOS ROM area
0xF0000-0xFFFFF), that points to an *MP configuration table*: a header, then
one entry per processor, bus, IOAPIC, I/O interrupt and local interrupt
(4.2, 4.3).  Both carry checksums that make their bytes sum to zero.

pyhv writes them at :data:`MPTABLE_ADDR` (0xF0000), in the BIOS area the e820
map reports reserved: above the ACPI tables (0xE0000, which stop below it) and
below the reset-vector stub (0xFFFF0), and clear of the EBDA at 0x9FC00, which
pyhv leaves alone.  The table says what the MADT says in ACPI's terms: the same
APIC IDs, the IOAPIC (id 0) at 0xFEC00000, ISA IRQ 0 on INTIN2, the other ISA
lines 1-15 on the pins of the same number, NMI on LINT1; and every pin from 16
to 23 as well, so lines the machine gives its devices (virtio-MMIO) are
described, level-triggered and active high where the caller says so.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .acpi import IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR, PIT_GSI, checksum
from .layout import MPTABLE_ADDR
#: the most the structures may take: up to the reset-vector stub at 0xFFFF0
MPTABLE_LIMIT = 0xFFFF0 - MPTABLE_ADDR

SPEC_REV = 4  # MP Specification 1.4
OEM_ID = b"PYHV    "
PRODUCT_ID = b"PYHV VMM    "
LAPIC_VERSION = 0x14  # an integrated APIC (0x1X), as KVM's
IOAPIC_VERSION = 0x11
IOAPIC_PINS = 24

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = 0, 1, 2, 3, 4
CPU_ENABLED, CPU_BOOTSTRAP = 1, 2
#: CPU signature (family 6, model 1, stepping 1) and feature flags (FPU, APIC) for
#: the processor entries: guests take the real values from CPUID
CPU_SIGNATURE = (6 << 8) | (1 << 4) | 1
CPU_FEATURES = (1 << 0) | (1 << 9)
INT, NMI, EXTINT = 0, 1, 3
#: interrupt flags (4.3.4): polarity in bits 0-1, trigger mode in bits 2-3; 0 is "as the bus says"
CONFORMING = 0
ACTIVE_HIGH, LEVEL = 0b01, 0b11 << 2
ISA_BUS = 0
ALL_LAPICS = 0xFF


def _processor(apic_id: int, bootstrap: bool) -> bytes:
    flags = CPU_ENABLED | (CPU_BOOTSTRAP if bootstrap else 0)
    return struct.pack("<BBBBII8x", ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES)


def _io_interrupt(kind: int, flags: int, bus_irq: int, pin: int) -> bytes:
    return struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, kind, flags, ISA_BUS, bus_irq, IOAPIC_ID, pin)


def _local_interrupt(kind: int, lint: int) -> bytes:
    return struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, kind, CONFORMING, ISA_BUS, 0, ALL_LAPICS, lint)


def mptable(apic_ids: Sequence[int], level_irqs: Sequence[int] = (), addr: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer at ``addr`` followed by the configuration table (its
    bytes, to be written at ``addr``).  ``apic_ids[0]`` is the bootstrap
    processor; ``level_irqs`` are IOAPIC pins driven as level-triggered,
    active-high lines."""
    if not apic_ids or not all(0 <= a < ALL_LAPICS for a in apic_ids):
        raise ValueError("MP table: APIC IDs must be 0-254, at least one")
    if not all(0 <= irq < IOAPIC_PINS and irq != 2 for irq in level_irqs):
        raise ValueError("MP table: level-triggered lines must be IOAPIC pins other than 2")
    entries = [_processor(a, i == 0) for i, a in enumerate(apic_ids)]
    entries.append(struct.pack("<BB6s", ENTRY_BUS, ISA_BUS, b"ISA   "))
    entries.append(struct.pack("<BBBBI", ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    for irq in range(IOAPIC_PINS):
        if irq == 2:  # the cascade: ISA IRQ 0 (the PIT) comes in on pin 2 instead
            continue
        flags = ACTIVE_HIGH | LEVEL if irq in level_irqs else CONFORMING
        entries.append(_io_interrupt(INT, flags, irq, PIT_GSI if irq == 0 else irq))
    entries.append(_local_interrupt(EXTINT, 0))
    entries.append(_local_interrupt(NMI, 1))
    body = b"".join(entries)
    length = 44 + len(body)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBx", b"PCMP", length, SPEC_REV, 0, OEM_ID, PRODUCT_ID, 0, 0,
                                   len(entries), LAPIC_ADDR, 0, 0))
    table = bytearray(header + body)
    table[7] = checksum(bytes(table))
    pointer = bytearray(struct.pack("<4sIBBBB4x", b"_MP_", addr + 16, 1, SPEC_REV, 0, 0))
    pointer[10] = checksum(bytes(pointer))
    out = bytes(pointer + table)
    if len(out) > MPTABLE_LIMIT:
        raise ValueError("MP table does not fit below the reset vector")
    return out
