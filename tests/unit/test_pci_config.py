"""PCI config space: identity, command, BARs (sizing protocol), capabilities, bad accesses."""

from __future__ import annotations

import pytest

from pyhv.devices.pci.config import (
    BAR0,
    CAP_ID_MSIX,
    CAP_ID_VENDOR,
    CAPABILITIES_POINTER,
    CLASS_CODE,
    COMMAND,
    EXPANSION_ROM,
    HEADER_TYPE,
    INTERRUPT_LINE,
    INTERRUPT_PIN,
    MEM32,
    MEM64,
    REVISION_ID,
    STATUS,
    STATUS_CAPABILITIES,
    PciConfigSpace,
)

VENDOR, DEVICE, CLASS = 0x1AF4, 0x1042, 0x010000


def make_config() -> PciConfigSpace:
    return PciConfigSpace(VENDOR, DEVICE, CLASS, revision=1, subsystem_vendor_id=0x1AF4, subsystem_id=2)


def test_identity_fields_read_back_as_declared() -> None:
    config = make_config()
    assert (config.read(0, 2), config.read(2, 2), config.read(REVISION_ID, 4)) == (VENDOR, DEVICE, 0x01000001)


def test_vendor_and_device_ids_ignore_guest_writes() -> None:
    config = make_config()
    config.write(0, 4, 0x12345678)
    assert config.read(0, 4) == DEVICE << 16 | VENDOR


@pytest.mark.parametrize("offset", [REVISION_ID, CLASS_CODE, HEADER_TYPE, INTERRUPT_PIN, 0x2C, 0x2E])
def test_read_only_identity_bytes_keep_their_value(offset: int) -> None:
    config = make_config()
    before = config.read(offset, 1)
    config.write(offset, 1, before ^ 0xFF)
    assert config.read(offset, 1) == before


def test_command_register_keeps_only_io_memory_bus_master_and_intx_disable() -> None:
    config = make_config()
    config.write(COMMAND, 2, 0xFFFF)
    assert config.read(COMMAND, 2) == 0x0407


def test_dword_write_at_command_leaves_status_alone() -> None:
    config = make_config()
    config.write(COMMAND, 4, 0xFFFF_0002)
    assert (config.read(COMMAND, 2), config.read(STATUS, 2)) == (0x0002, 0)


def test_interrupt_line_is_scratch_for_firmware() -> None:
    config = make_config()
    config.write(INTERRUPT_LINE, 1, 11)
    assert config.read(INTERRUPT_LINE, 2) == 11  # pin stays 0: no INTx


def test_mem32_bar_sizing_reads_size_mask() -> None:
    config = make_config()
    config.add_bar(0, 0x1000)
    config.write(BAR0, 4, 0xFFFF_FFFF)
    assert config.read(BAR0, 4) == 0xFFFF_F000


def test_prefetchable_mem64_bar_sizing_reads_mask_and_type_bits_in_both_halves() -> None:
    config = make_config()
    config.add_bar(2, 0x4000, MEM64, prefetchable=True)
    config.write(BAR0 + 8, 4, 0xFFFF_FFFF)
    config.write(BAR0 + 12, 4, 0xFFFF_FFFF)
    assert (config.read(BAR0 + 8, 4), config.read(BAR0 + 12, 4)) == (0xFFFF_C00C, 0xFFFF_FFFF)


def test_mem64_bar_above_4gib_masks_the_upper_half_too() -> None:
    config = make_config()
    config.add_bar(0, 8 << 30, MEM64)
    config.write(BAR0, 4, 0xFFFF_FFFF)
    config.write(BAR0 + 4, 4, 0xFFFF_FFFF)
    assert (config.read(BAR0, 4), config.read(BAR0 + 4, 4)) == (0x0000_0004, 0xFFFF_FFFE)


def test_restoring_after_sizing_gives_back_the_address() -> None:
    config = make_config()
    config.add_bar(0, 0x1000)
    config.set_bar_address(0, 0xC000_3000)
    original = config.read(BAR0, 4)
    config.write(BAR0, 4, 0xFFFF_FFFF)
    config.write(BAR0, 4, original)
    assert config.bar_address(0) == 0xC000_3000 and config.read(BAR0, 4) == 0xC000_3000


def test_bar_address_joins_64bit_halves() -> None:
    config = make_config()
    config.add_bar(4, 0x4000, MEM64)
    config.write(BAR0 + 16, 4, 0x8000_4000)
    config.write(BAR0 + 20, 4, 0x12)
    assert config.bar_address(4) == 0x12_8000_4000


def test_bar_write_of_unaligned_address_keeps_only_aligned_bits() -> None:
    config = make_config()
    config.add_bar(0, 0x1000)
    config.write(BAR0, 4, 0xC000_1234)
    assert config.bar_address(0) == 0xC000_1000


def test_undeclared_bar_reads_zero_after_all_ones_write() -> None:
    config = make_config()
    config.write(BAR0 + 4, 4, 0xFFFF_FFFF)
    assert config.read(BAR0 + 4, 4) == 0


def test_expansion_rom_is_not_implemented() -> None:
    config = make_config()
    config.write(EXPANSION_ROM, 4, 0xFFFF_FFFF)
    assert config.read(EXPANSION_ROM, 4) == 0


@pytest.mark.parametrize(
    ("index", "size", "kind"),
    [(5, 0x1000, MEM64), (0, 0x1800, MEM32), (0, 8, MEM32), (6, 0x1000, MEM32), (0, 1 << 32, MEM32)],
)
def test_impossible_bar_is_refused(index: int, size: int, kind: str) -> None:
    config = make_config()
    with pytest.raises(ValueError):
        config.add_bar(index, size, kind)  # type: ignore[arg-type]


def test_bar_slot_taken_by_upper_half_is_refused() -> None:
    config = make_config()
    config.add_bar(0, 0x1000, MEM64)
    with pytest.raises(ValueError, match="in use"):
        config.add_bar(1, 0x1000)


def test_capability_chain_walk_finds_msix_after_vendor_caps() -> None:
    config = make_config()
    config.add_capability(CAP_ID_VENDOR, bytes(14))
    config.add_capability(CAP_ID_VENDOR, bytes(18))
    msix = config.add_capability(CAP_ID_MSIX, bytes(10))
    assert config.find_capability(CAP_ID_MSIX) == msix and [c for _, c in config.capabilities()] == [9, 9, 0x11]


def test_capabilities_are_dword_aligned_and_linked_from_the_pointer() -> None:
    config = make_config()
    first = config.add_capability(CAP_ID_VENDOR, bytes(3))
    second = config.add_capability(CAP_ID_MSIX, bytes(10))
    assert (config.read(CAPABILITIES_POINTER, 1), config.read(first + 1, 1), second) == (0x40, 0x48, 0x48)


def test_adding_a_capability_sets_the_status_bit() -> None:
    config = make_config()
    config.add_capability(CAP_ID_VENDOR, bytes(2))
    assert config.read(STATUS, 2) & STATUS_CAPABILITIES


def test_capability_header_is_read_only() -> None:
    config = make_config()
    offset = config.add_capability(CAP_ID_VENDOR, bytes(2), b"\xff\xff")
    config.write(offset, 2, 0x0000)
    assert config.read(offset, 2) == CAP_ID_VENDOR


def test_capability_body_keeps_to_its_writable_mask() -> None:
    config = make_config()
    offset = config.add_capability(CAP_ID_VENDOR, b"\x12\x34", b"\x0f\x00")
    config.write(offset + 2, 2, 0xFFFF)
    assert config.read(offset + 2, 2) == 0x341F


def test_capability_write_hook_sees_offset_inside_the_capability() -> None:
    config = make_config()
    seen: list[tuple[int, int, int]] = []
    offset = config.add_capability(CAP_ID_VENDOR, bytes(6), on_write=lambda o, s, v: seen.append((o, s, v)))
    config.write(offset + 4, 4, 0xAABBCCDD)
    assert seen == [(4, 4, 0xAABBCCDD)]


def test_capability_read_hook_supplies_the_value() -> None:
    config = make_config()
    offset = config.add_capability(CAP_ID_VENDOR, bytes(6), on_read=lambda o, s, v: 0x1_0000_0000 | o)
    assert config.read(offset + 4, 4) == 4


def test_capability_past_the_conventional_space_is_refused() -> None:
    config = make_config()
    with pytest.raises(ValueError, match="does not fit"):
        config.add_capability(CAP_ID_VENDOR, bytes(200))


@pytest.mark.parametrize(("offset", "size"), [(0, 3), (0, 8), (0, 0), (4095, 2), (4096, 1), (-1, 1)])
def test_bad_access_reads_all_ones_and_writes_nothing(offset: int, size: int) -> None:
    config = make_config()
    config.write(offset, size, 0)
    assert config.read(offset, size) == {3: 0, 8: (1 << 64) - 1, 0: 0, 2: 0xFFFF, 1: 0xFF}[size]
    assert config.read(0, 4) == DEVICE << 16 | VENDOR


def test_extended_space_holds_no_capabilities() -> None:
    assert make_config().read(0x100, 4) == 0
