"""A small encoder for the ACPI Machine Language (ACPI 6.5, chapter 20).

Enough to describe devices in a DSDT: names, integers, strings, EISA IDs,
packages, buffers, resource templates, scopes and devices.  Every function
returns the encoded bytes of one AML term.
"""

from __future__ import annotations

import struct

ZERO_OP = 0x00
ONE_OP = 0x01
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
ONES_OP = 0xFF
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C  # '\'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F


def pkg_length(body_len: int) -> bytes:
    """PkgLength (20.2.4): encodes the length of itself plus ``body_len``."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [((extra << 6) | (total & 0x0F))]
            total >>= 4
            for _ in range(extra):
                out.append(total & 0xFF)
                total >>= 8
            return bytes(out)
    raise ValueError("AML package too long")


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_") or not all(
        c.isupper() or c.isdigit() or c == "_" for c in seg
    ):
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """``\\_SB.COM1`` -> root prefix + dual name; ``_HID`` -> one segment."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segs = [s for s in path.split(".") if s]
    if not segs:
        return prefix + b"\x00"
    body = b"".join(_name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + body
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + body


def integer(value: int) -> bytes:
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer out of range: {value}")
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\x00"


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0501") as the DWORD integer the macro compiles to."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA ID {text!r}")
    c = [ord(ch) - 0x40 for ch in text[:3]]
    vendor = (c[0] << 10) | (c[1] << 5) | c[2]
    product = int(text[3:], 16)
    value = ((vendor >> 8) & 0xFF) | ((vendor & 0xFF) << 8) | (((product >> 8) & 0xFF) << 16) | (
        (product & 0xFF) << 24
    )
    return bytes([DWORD_PREFIX]) + struct.pack("<I", value)


def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, nargs: int, *terms: bytes) -> bytes:
    body = name_string(path) + bytes([nargs & 7]) + b"".join(terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


# --- resource descriptors (6.4) -------------------------------------------------

END_TAG = b"\x79\x00"


def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """IO (Decode16, base, base, alignment, length): small descriptor 0x47."""
    return bytes([0x47, 0x01]) + struct.pack("<HHBB", base, base, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags () {irqs}: edge-triggered, active-high ISA interrupts."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise ValueError(f"ISA IRQ {irq} out of range")
        mask |= 1 << irq
    return bytes([0x22]) + struct.pack("<H", mask)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed: large descriptor 0x86."""
    return bytes([0x86]) + struct.pack("<HBII", 9, 1 if writable else 0, base, length)


def resource_template(*descriptors: bytes) -> bytes:
    data = b"".join(descriptors) + END_TAG
    # the end tag's checksum byte 0 means "treat as checksummed correctly"
    return buffer(data)
