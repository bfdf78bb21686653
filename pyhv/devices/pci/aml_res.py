"""ACPI address space resource descriptors (ACPI 6.5, 6.4.3.5) for a PCI root's _CRS.

Large resource items: tag byte, 16-bit length of what follows, then resource
type, general flags, type-specific flags, and granularity, minimum, maximum,
translation offset and length in 16-, 32- or 64-bit fields.  Each range here
is one the root bridge produces (general flags bit 0 clear), positively
decoded, with fixed minimum and maximum (bits 2 and 3).
"""

from __future__ import annotations

import struct

WORD_ADDRESS_SPACE = 0x88
DWORD_ADDRESS_SPACE = 0x87
QWORD_ADDRESS_SPACE = 0x8A

RESOURCE_MEMORY = 0
RESOURCE_IO = 1
RESOURCE_BUS_NUMBER = 2

GENERAL_MIN_FIXED = 1 << 2
GENERAL_MAX_FIXED = 1 << 3
PRODUCER_FIXED = GENERAL_MIN_FIXED | GENERAL_MAX_FIXED

# memory type-specific flags: bit 0 read/write, bits 2:1 cacheability
MEMORY_READ_WRITE = 1 << 0
MEMORY_NON_CACHEABLE = 0 << 1
MEMORY_PREFETCHABLE = 3 << 1


def _check(base: int, length: int, bits: int) -> None:
    if length <= 0 or base < 0 or base + length > 1 << bits:
        raise ValueError(f"range {base:#x}+{length:#x} does not fit a {bits}-bit address descriptor")


def word_bus_number(first: int, last: int) -> bytes:
    """WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, first, last, 0, count)."""
    if not 0 <= first <= last <= 0xFF:
        raise ValueError(f"bus range {first}..{last} is invalid")
    fields = struct.pack("<BBBHHHHH", RESOURCE_BUS_NUMBER, PRODUCER_FIXED, 0, 0, first, last, 0, last - first + 1)
    return struct.pack("<BH", WORD_ADDRESS_SPACE, len(fields)) + fields


def _memory_flags(prefetchable: bool) -> int:
    return MEMORY_READ_WRITE | (MEMORY_PREFETCHABLE if prefetchable else MEMORY_NON_CACHEABLE)


def dword_memory(base: int, length: int, prefetchable: bool = False) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable|Prefetchable, ReadWrite, ...)."""
    _check(base, length, 32)
    fields = struct.pack(
        "<BBBIIIII", RESOURCE_MEMORY, PRODUCER_FIXED, _memory_flags(prefetchable), 0, base, base + length - 1, 0, length
    )
    return struct.pack("<BH", DWORD_ADDRESS_SPACE, len(fields)) + fields


def qword_memory(base: int, length: int, prefetchable: bool = False) -> bytes:
    """QWordMemory, as :func:`dword_memory` with 64-bit fields."""
    _check(base, length, 64)
    fields = struct.pack(
        "<BBBQQQQQ", RESOURCE_MEMORY, PRODUCER_FIXED, _memory_flags(prefetchable), 0, base, base + length - 1, 0, length
    )
    return struct.pack("<BH", QWORD_ADDRESS_SPACE, len(fields)) + fields
