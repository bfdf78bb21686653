"""ELF parsing, segment loading and the PVH note."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.boot import elf
from pyhv.errors import ImageError
from tests.unit.fakes import ElfSpec, FakeRam, MiB, Seg, build_elf, pvh_note

PATH = "/images/kernel.elf"


def two_segment_elf(bits: int) -> bytes:
    return build_elf(
        ElfSpec(
            bits=bits,
            entry=0x100010,
            segments=[Seg(0x100000, b"TEXT" * 8), Seg(0x200000, b"DATA", memsz=0x3000)],
        )
    )


@pytest.mark.parametrize("bits", [32, 64])
def test_parse_reads_class_entry_and_load_segments(bits: int) -> None:
    data = two_segment_elf(bits)

    image = elf.parse_elf(PATH, data)

    assert (image.bits, image.entry) == (bits, 0x100010)
    assert [(s.paddr, s.filesz, s.memsz) for s in image.segments] == [
        (0x100000, 32, 32),
        (0x200000, 4, 0x3000),
    ]


@pytest.mark.parametrize(("bits", "size"), [(32, 4), (64, 8), (64, 4)])
def test_pvh_entry_comes_from_xen_phys32_entry_note(bits: int, size: int) -> None:
    data = build_elf(
        ElfSpec(
            bits=bits,
            segments=[Seg(0x100000, b"\x90" * 16)],
            notes=[(b"Linux", 1, b"6.1\0"), pvh_note(0x100008, size)],
        )
    )

    entry = elf.parse_elf(PATH, data).pvh_entry(PATH)

    assert entry == 0x100008


def test_notes_with_8_byte_alignment_are_read() -> None:
    data = build_elf(
        ElfSpec(
            segments=[Seg(0x100000, b"x")], notes=[(b"GNU", 3, b"abc"), pvh_note(0x100000, 8)], note_align=8
        )
    )

    notes = elf.parse_elf(PATH, data).notes

    assert [(n.name, n.type, n.desc) for n in notes] == [
        (b"GNU", 3, b"abc"),
        (b"Xen", 18, (0x100000).to_bytes(8, "little")),
    ]


def test_elf_without_pvh_note_has_no_pvh_entry() -> None:
    data = two_segment_elf(32)

    entry = elf.parse_elf(PATH, data).pvh_entry(PATH)

    assert entry is None


def test_pvh_note_of_odd_size_is_an_image_error() -> None:
    data = build_elf(ElfSpec(bits=32, segments=[Seg(0x100000, b"x")], notes=[(b"Xen", 18, b"\1\2")]))
    image = elf.parse_elf(PATH, data)

    with pytest.raises(ImageError, match="PVH entry note has a 2-byte value"):
        image.pvh_entry(PATH)


def test_load_copies_file_bytes_and_zeroes_bss() -> None:
    data = two_segment_elf(64)
    image = elf.parse_elf(PATH, data)
    ram = FakeRam.of_size(16 * MiB)
    ram.fill(0x200000, 0x3000, 0xEE)

    occupied = elf.load_segments(ram, PATH, data, image)

    assert ram.read(0x100000, 32) == b"TEXT" * 8
    assert ram.read(0x200000, 0x3000) == b"DATA" + bytes(0x3000 - 4)
    assert occupied == [(0x100000, 0x100020), (0x200000, 0x203000)]


def test_high_virtual_entry_is_translated_to_physical() -> None:
    data = build_elf(
        ElfSpec(entry=0xFFFFFFFF81000040, segments=[Seg(0x1000000, b"k" * 0x100, vaddr=0xFFFFFFFF81000000)])
    )
    image = elf.parse_elf(PATH, data)

    entry = elf.entry_address(PATH, image)

    assert entry == 0x1000040


def test_physical_entry_outside_virtual_ranges_is_kept() -> None:
    data = build_elf(
        ElfSpec(entry=0x1000000, segments=[Seg(0x1000000, b"k" * 0x100, vaddr=0xFFFFFFFF81000000)])
    )
    image = elf.parse_elf(PATH, data)

    entry = elf.entry_address(PATH, image)

    assert entry == 0x1000000


def test_entry_outside_every_segment_is_an_image_error() -> None:
    image = elf.parse_elf(PATH, build_elf(ElfSpec(entry=0x500000, segments=[Seg(0x100000, b"x")])))

    with pytest.raises(ImageError, match="entry point 0x500000 is outside"):
        elf.entry_address(PATH, image)


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


VALID64 = two_segment_elf(64)
VALID32 = two_segment_elf(32)
BAD_IMAGES = {
    "bad magic": (b"\x7fELG" + VALID64[4:], "not an ELF file"),
    "truncated ident": (VALID64[:10], "identification is truncated"),
    "truncated header": (VALID64[:40], "ELF header is truncated"),
    "class 3": (_patch(VALID64, 4, "B", 3), "unsupported ELF class 3"),
    "big endian": (_patch(VALID64, 5, "B", 2), "not little-endian"),
    "version 2": (_patch(VALID64, 6, "B", 2), "unsupported ELF version"),
    "shared object": (_patch(VALID64, 16, "<H", 3), "not an executable"),
    "arm64 machine": (_patch(VALID64, 18, "<H", 183), "machine 183 is not x86"),
    "elf32 with x86-64 machine": (_patch(VALID32, 18, "<H", 62), "machine 62 is not x86"),
    "no program headers": (_patch(VALID64, 56, "<H", 0), "no program headers"),
    "small phentsize": (_patch(VALID64, 54, "<H", 40), "program header size 40"),
    "phdrs past end": (_patch(VALID64, 56, "<H", 200), "program headers extend past"),
    "segment past end": (_patch(VALID64, 64 + 32, "<Q", 1 << 20), "segment 0 extends past"),
    "filesz > memsz": (_patch(VALID64, 64 + 40, "<Q", 1), "p_filesz larger than p_memsz"),
    "truncated segment": (VALID64[:-2], "segment 1 extends past"),
    "no PT_LOAD": (_patch(_patch(VALID64, 64, "<I", 6), 64 + 56, "<I", 6), "no loadable segments"),
}


@pytest.mark.parametrize(("data", "problem"), BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_malformed_elf_is_an_image_error_naming_the_file(data: bytes, problem: str) -> None:
    with pytest.raises(ImageError, match=problem) as caught:
        elf.parse_elf(PATH, data)

    assert str(caught.value).startswith(f"{PATH}: ")


def test_truncated_note_is_an_image_error() -> None:
    data = build_elf(ElfSpec(segments=[Seg(0x100000, b"x")], notes=[pvh_note(0x100000)]))
    broken = _patch(data, 64 + 2 * 56 + 4, "<I", 0x100)  # descsz of the first note

    with pytest.raises(ImageError, match="note extends past"):
        elf.parse_elf(PATH, broken)


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        (Seg(0x8000, b"x"), r"ELF segment 1 at \[0x8000, 0x8001\) overlaps pyhv's boot stack at \[0x8000, 0x9000\)"),
        (Seg(0xFF000, b"x" * 0x2000), r"overlaps pyhv's BIOS area .* at \[0x9fc00, 0x100000\)"),
        (Seg(15 * MiB, b"x", memsz=2 * MiB), "does not fit in guest RAM below 0x1000000"),
        (Seg(5 << 32, b"x"), "does not fit in guest RAM"),
    ],
)
def test_segment_outside_usable_ram_is_refused_before_writing(segment: Seg, problem: str) -> None:
    data = build_elf(ElfSpec(entry=segment.paddr, segments=[Seg(0x100000, b"first"), segment]))
    image = elf.parse_elf(PATH, data)
    ram = FakeRam.of_size(16 * MiB)

    with pytest.raises(ImageError, match=problem):
        elf.load_segments(ram, PATH, data, image)

    assert ram.read(0x100000, 5) == bytes(5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_after_elf_magic_raise_only_image_error(tail: bytes) -> None:
    data = b"\x7fELF" + tail

    with contextlib.suppress(ImageError):
        elf.parse_elf(PATH, data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_elf_parses_or_raises_image_error(draw: st.DataObject) -> None:
    base = draw.draw(st.sampled_from([VALID32, VALID64]))
    offset = draw.draw(st.integers(0, len(base) - 1))
    patch = draw.draw(st.binary(min_size=1, max_size=8))
    data = base[:offset] + patch + base[offset + len(patch) :]

    with contextlib.suppress(ImageError):
        image = elf.parse_elf(PATH, data)
        elf.load_segments(FakeRam.of_size(16 * MiB), PATH, data, image)
        elf.entry_address(PATH, image)
