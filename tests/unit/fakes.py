"""Test doubles for the boot loaders: sparse guest RAM and synthetic kernel images."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyhv.errors import MemoryAccessError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE = 4096


class FakeRam:
    """Guest RAM made of *ranges*, stored sparsely page by page (unwritten pages read 0)."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._ranges = sorted(ranges)
        self._pages: dict[int, bytearray] = {}

    @classmethod
    def of_size(cls, size: int) -> FakeRam:
        """RAM laid out like the VMM does: low RAM below 3 GiB, the rest at 4 GiB."""
        low = min(size, 3 * GiB)
        ranges = [(0, low)] + ([(4 * GiB, size - low)] if size > low else [])
        return cls(ranges)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return list(self._ranges)

    def _check(self, gpa: int, size: int) -> None:
        inside = any(start <= gpa and gpa + size <= start + length for start, length in self._ranges)
        if size < 0 or not inside:
            raise MemoryAccessError(f"access [{gpa:#x}, {gpa + size:#x}) outside guest RAM")

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        data = bytes(data)
        pos = 0
        while pos < len(data):
            page, offset = divmod(gpa + pos, PAGE)
            count = min(PAGE - offset, len(data) - pos)
            chunk = data[pos : pos + count]
            if page in self._pages or chunk.count(0) != count:
                self._pages.setdefault(page, bytearray(PAGE))[offset : offset + count] = chunk
            pos += count

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        out = bytearray()
        pos = 0
        while pos < size:
            page, offset = divmod(gpa + pos, PAGE)
            count = min(PAGE - offset, size - pos)
            stored = self._pages.get(page)
            out += stored[offset : offset + count] if stored is not None else bytes(count)
            pos += count
        return bytes(out)

    def fill(self, gpa: int, size: int, value: int) -> None:
        """Pre-fill a range with *value* (to see what a loader zeroes)."""
        self.write(gpa, bytes([value]) * size)

    def u8(self, gpa: int) -> int:
        return self.read(gpa, 1)[0]

    def u16(self, gpa: int) -> int:
        return int(struct.unpack("<H", self.read(gpa, 2))[0])

    def u32(self, gpa: int) -> int:
        return int(struct.unpack("<I", self.read(gpa, 4))[0])

    def u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.read(gpa, 8))[0])

    def cstring(self, gpa: int, limit: int = 0x10000) -> bytes:
        data = self.read(gpa, limit)
        return data[: data.index(b"\0")]


# -- ELF -------------------------------------------------------------------


@dataclass
class Seg:
    """A PT_LOAD segment for :func:`build_elf`."""

    paddr: int
    data: bytes
    memsz: int | None = None
    vaddr: int | None = None


@dataclass
class ElfSpec:
    bits: int = 64
    entry: int = 0x100000
    segments: list[Seg] = field(default_factory=list)
    notes: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    machine: int | None = None
    e_type: int = 2
    endian: int = 1
    note_align: int = 4
    prefix: bytes = b""  # bytes placed right after the program headers


def _note(name: bytes, n_type: int, desc: bytes, align: int) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % align)

    return struct.pack("<III", len(name) + 1, len(desc), n_type) + pad(name + b"\0") + pad(desc)


def build_elf(spec: ElfSpec) -> bytes:
    """An x86 ELF executable with PT_NOTE (if notes) and PT_LOAD program headers."""
    is64 = spec.bits == 64
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    machine = spec.machine if spec.machine is not None else (62 if is64 else 3)
    notes = b"".join(_note(n, t, d, spec.note_align) for n, t, d in spec.notes)
    phnum = len(spec.segments) + (1 if notes else 0)
    pos = ehsize + phnum * phentsize
    body = bytearray(spec.prefix)
    pos += len(body)
    phdrs: list[bytes] = []

    def phdr(p_type: int, off: int, vaddr: int, paddr: int, filesz: int, memsz: int, align: int) -> bytes:
        if is64:
            return struct.pack("<IIQQQQQQ", p_type, 5, off, vaddr, paddr, filesz, memsz, align)
        return struct.pack("<8I", p_type, off, vaddr, paddr, filesz, memsz, 5, align)

    if notes:
        phdrs.append(phdr(4, pos, 0, 0, len(notes), len(notes), spec.note_align))
        body += notes
        pos += len(notes)
    for seg in spec.segments:
        padding = -pos % 16
        body += bytes(padding)
        pos += padding
        memsz = seg.memsz if seg.memsz is not None else len(seg.data)
        vaddr = seg.vaddr if seg.vaddr is not None else seg.paddr
        phdrs.append(phdr(1, pos, vaddr, seg.paddr, len(seg.data), memsz, 16))
        body += seg.data
        pos += len(seg.data)

    ident = b"\x7fELF" + bytes([2 if is64 else 1, spec.endian, 1]) + bytes(9)
    if is64:
        header = ident + struct.pack(
            "<HHIQQQIHHHHHH",
            spec.e_type,
            machine,
            1,
            spec.entry,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            phnum,
            64,
            0,
            0,
        )
    else:
        header = ident + struct.pack(
            "<HHIIIIIHHHHHH",
            spec.e_type,
            machine,
            1,
            spec.entry,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            phnum,
            40,
            0,
            0,
        )
    return header + b"".join(phdrs) + bytes(body)


def pvh_note(entry: int, size: int = 4) -> tuple[bytes, int, bytes]:
    return (b"Xen", 18, entry.to_bytes(size, "little"))


# -- bzImage ---------------------------------------------------------------


@dataclass
class BzSpec:
    version: int = 0x020F
    setup_sects: int = 4
    payload: bytes = b"\x90" * 0x600
    loadflags: int = 0x01
    xloadflags: int = 0x01
    relocatable: int = 1
    kernel_alignment: int = 0x200000
    initrd_addr_max: int = 0x7FFFFFFF
    cmdline_size: int = 2047
    pref_address: int = 0x1000000
    init_size: int = 0x400000
    header_len: int = 0x6A  # byte at 0x201: header ends at 0x26c
    syssize: int | None = None
    boot_flag: int = 0xAA55


def build_bzimage(spec: BzSpec) -> bytes:
    """Real-mode setup sectors with a setup header, then the protected-mode payload."""
    setup = bytearray((spec.setup_sects + 1) * 512 if spec.setup_sects else 5 * 512)
    payload = spec.payload + bytes(-len(spec.payload) % 16)  # the build tool pads to syssize
    syssize = spec.syssize if spec.syssize is not None else len(payload) // 16
    setup[0x1F1] = spec.setup_sects
    struct.pack_into("<I", setup, 0x1F4, syssize)
    struct.pack_into("<H", setup, 0x1FE, spec.boot_flag)
    setup[0x200] = 0xEB
    setup[0x201] = spec.header_len
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, spec.version)
    setup[0x211] = spec.loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, spec.initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, spec.kernel_alignment)
    setup[0x234] = spec.relocatable
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, spec.xloadflags)
    struct.pack_into("<I", setup, 0x238, spec.cmdline_size)
    struct.pack_into("<Q", setup, 0x258, spec.pref_address)
    struct.pack_into("<I", setup, 0x260, spec.init_size)
    return bytes(setup) + payload


# -- Multiboot -------------------------------------------------------------


def multiboot_header(flags: int, addresses: tuple[int, int, int, int, int] | None = None) -> bytes:
    magic = 0x1BADB002
    checksum = -(magic + flags) & 0xFFFFFFFF
    head = struct.pack("<III", magic, flags, checksum)
    return head + (struct.pack("<5I", *addresses) if addresses is not None else b"")


def build_multiboot_aout(
    load_addr: int = 0x100000,
    header_offset: int = 0x40,
    text: bytes = b"\xf4" * 0x200,
    bss: int = 0x1000,
    entry: int | None = None,
    flags: int = 0x00010003,
) -> bytes:
    """A flat image whose Multiboot header (with bit 16) is at *header_offset*.

    The whole file is loaded at *load_addr*; the header sits inside the text.
    """
    image = bytearray(max(len(text), header_offset + 32))
    image[: len(text)] = text
    load_end = load_addr + len(image)
    addresses = (
        load_addr + header_offset,
        load_addr,
        load_end,
        load_end + bss if bss else 0,
        entry if entry is not None else load_addr,
    )
    image[header_offset : header_offset + 32] = multiboot_header(flags, addresses)
    return bytes(image)
