"""ELF32/ELF64 x86 executables: headers, PT_LOAD segments and notes.

Only what booting needs from the System V ABI "ELF Header", "Program
Header" and "Note Section" chapters is read: a little-endian ``ET_EXEC``
file for ``EM_386`` (ELF32) or ``EM_X86_64`` (ELF64), its ``PT_LOAD``
segments (loaded at their physical address ``p_paddr``, the bytes past
``p_filesz`` up to ``p_memsz`` zeroed) and the notes of its ``PT_NOTE``
segments.  Section headers are ignored.

A note is ``namesz, descsz, type`` (three 32-bit words) followed by the
name and the descriptor, each padded to the segment's note alignment (4, or
8 when ``p_align`` is 8).  The PVH entry point is the Xen note of type
``XEN_ELFNOTE_PHYS32_ENTRY`` (18), whose descriptor is the 32-bit physical
entry address stored in 4 or 8 bytes (64-bit kernels use 8).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyhv.boot._common import check_load_range, write_zeros
from pyhv.boot._types import GuestRam
from pyhv.errors import ImageError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4

XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18

_MACHINES = {ELFCLASS32: EM_386, ELFCLASS64: EM_X86_64}
_MACHINE_NAMES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64"}
_HEADER_SIZE = {ELFCLASS32: 52, ELFCLASS64: 64}
_PHDR_SIZE = {ELFCLASS32: 32, ELFCLASS64: 56}
# e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
# e_phentsize, e_phnum (the remaining section header fields are not needed)
_EHDR = {ELFCLASS32: struct.Struct("<HHIIII IHHH"), ELFCLASS64: struct.Struct("<HHIQQQ IHHH")}
_NOTE_HEADER = struct.Struct("<III")


class LoadSegment(NamedTuple):
    """One ``PT_LOAD`` program header."""

    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def paddr_end(self) -> int:
        return self.paddr + self.memsz


class Note(NamedTuple):
    """One ELF note; ``name`` is without its terminating NUL."""

    name: bytes
    type: int
    desc: bytes


class ElfImage(NamedTuple):
    """The parts of an ELF executable that booting uses."""

    bits: int
    machine: int
    entry: int
    segments: tuple[LoadSegment, ...]
    notes: tuple[Note, ...]

    def pvh_entry(self, path: str) -> int | None:
        """The PVH 32-bit entry point from the Xen PHYS32_ENTRY note, if any."""
        for note in self.notes:
            if note.name == XEN_NOTE_NAME and note.type == XEN_ELFNOTE_PHYS32_ENTRY:
                if len(note.desc) not in (4, 8):
                    raise ImageError(
                        path, f"PVH entry note has a {len(note.desc)}-byte value (expected 4 or 8)"
                    )
                return int.from_bytes(note.desc, "little")
        return None


def is_elf(data: bytes) -> bool:
    """Whether *data* starts with the ELF magic."""
    return data[:4] == ELF_MAGIC


def elf_class(data: bytes) -> int:
    """EI_CLASS of an ELF file (1 = ELF32, 2 = ELF64; other values possible)."""
    return data[4] if len(data) > 4 else 0


def parse_elf(path: str, data: bytes) -> ElfImage:
    """Parse and validate an x86 ELF executable; every problem is an ImageError."""
    if not is_elf(data):
        raise ImageError(path, "not an ELF file (bad magic)")
    if len(data) < 16:
        raise ImageError(path, "ELF identification is truncated")
    cls, encoding, version = data[4], data[5], data[6]
    if cls not in _MACHINES:
        raise ImageError(path, f"unsupported ELF class {cls} (expected ELF32 or ELF64)")
    if encoding != ELFDATA2LSB:
        raise ImageError(path, "ELF file is not little-endian")
    if version != EV_CURRENT:
        raise ImageError(path, f"unsupported ELF version {version}")
    if len(data) < _HEADER_SIZE[cls]:
        raise ImageError(path, "ELF header is truncated")
    (e_type, machine, _, entry, phoff, _, _, _, phentsize, phnum) = _EHDR[cls].unpack_from(data, 16)
    if e_type != ET_EXEC:
        raise ImageError(path, f"ELF type {e_type} is not an executable (ET_EXEC)")
    if machine != _MACHINES[cls]:
        want = _MACHINE_NAMES[_MACHINES[cls]]
        raise ImageError(path, f"ELF{cls * 32} machine {machine} is not x86 ({want})")
    if phnum == 0:
        raise ImageError(path, "ELF file has no program headers")
    if phentsize < _PHDR_SIZE[cls]:
        raise ImageError(path, f"ELF program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(data):
        raise ImageError(path, "ELF program headers extend past the end of the file")

    segments: list[LoadSegment] = []
    notes: list[Note] = []
    for i in range(phnum):
        p_type, offset, vaddr, paddr, filesz, memsz, flags, align = _program_header(
            cls, data, phoff + i * phentsize
        )
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if offset + filesz > len(data):
            raise ImageError(path, f"ELF segment {i} extends past the end of the file")
        if p_type == PT_NOTE:
            notes.extend(_parse_notes(path, data[offset : offset + filesz], 8 if align == 8 else 4))
            continue
        if filesz > memsz:
            raise ImageError(path, f"ELF segment {i} has p_filesz larger than p_memsz")
        segments.append(LoadSegment(offset, vaddr, paddr, filesz, memsz, flags))
    if not any(seg.memsz for seg in segments):
        raise ImageError(path, "ELF file has no loadable segments")
    return ElfImage(cls * 32, machine, entry, tuple(segments), tuple(notes))


def _program_header(cls: int, data: bytes, pos: int) -> tuple[int, ...]:
    """(type, offset, vaddr, paddr, filesz, memsz, flags, align) of one header."""
    if cls == ELFCLASS64:
        p_type, flags, offset, vaddr, paddr, filesz, memsz, align = struct.unpack_from("<IIQQQQQQ", data, pos)
    else:
        p_type, offset, vaddr, paddr, filesz, memsz, flags, align = struct.unpack_from("<8I", data, pos)
    return (p_type, offset, vaddr, paddr, filesz, memsz, flags, align)


def _parse_notes(path: str, blob: bytes, align: int) -> list[Note]:
    notes: list[Note] = []
    pos = 0
    while pos + _NOTE_HEADER.size <= len(blob):
        namesz, descsz, n_type = _NOTE_HEADER.unpack_from(blob, pos)
        name_at = pos + _NOTE_HEADER.size
        desc_at = name_at + _pad(namesz, align)
        end = desc_at + _pad(descsz, align)
        if desc_at + descsz > len(blob):
            raise ImageError(path, "ELF note extends past the end of its segment")
        name = blob[name_at : name_at + namesz].rstrip(b"\0")
        notes.append(Note(name, n_type, blob[desc_at : desc_at + descsz]))
        pos = end
    return notes


def _pad(size: int, align: int) -> int:
    return (size + align - 1) & ~(align - 1)


def entry_address(path: str, image: ElfImage) -> int:
    """Physical address of ``e_entry``.

    An entry inside a segment's virtual range (e.g. a kernel linked at
    0xffffffff8xxxxxxx) is translated by that segment's ``p_vaddr - p_paddr``;
    otherwise it must lie inside a segment's physical range.
    """
    entry = image.entry
    for seg in image.segments:
        if seg.vaddr <= entry < seg.vaddr + max(seg.memsz, 1):
            return entry - seg.vaddr + seg.paddr
    for seg in image.segments:
        if seg.paddr <= entry < seg.paddr + max(seg.memsz, 1):
            return entry
    raise ImageError(path, f"ELF entry point {entry:#x} is outside every loadable segment")


def load_segments(mem: GuestRam, path: str, data: bytes, image: ElfImage) -> list[tuple[int, int]]:
    """Copy every PT_LOAD segment to its ``p_paddr`` and zero its BSS.

    Returns the ``[start, end)`` physical ranges occupied.  All segments are
    checked before anything is written.
    """
    segments = [seg for seg in image.segments if seg.memsz]
    for i, seg in enumerate(segments):
        check_load_range(mem, path, seg.paddr, seg.memsz, f"ELF segment {i}")
    for seg in segments:
        mem.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz])
        write_zeros(mem, seg.paddr + seg.filesz, seg.memsz - seg.filesz)
    return [(seg.paddr, seg.paddr_end) for seg in segments]
