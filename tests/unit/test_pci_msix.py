"""MSI-X: capability fields, enable and masks, pending bits, table and PBA accesses."""

from __future__ import annotations

import pytest

from pyhv.devices.pci.config import CAP_ID_MSIX, PciConfigSpace
from pyhv.devices.pci.msix import MsixCapability, MsixTable

VECTORS = 4
PBA_OFFSET = 0x800
ENABLE, FUNCTION_MASK = 0x8000, 0x4000


class Msix:
    """A config space with one BAR holding a 4-vector table and its PBA."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, int]] = []
        self.config = PciConfigSpace(0x1AF4, 0x1041, 0x020000)
        self.config.add_bar(1, 0x1000)
        self.table = MsixTable(VECTORS, lambda address, data: self.delivered.append((address, data)))
        self.cap = MsixCapability(
            self.config, self.table, table_bar=1, table_offset=0, pba_bar=1, pba_offset=PBA_OFFSET
        )

    def control(self, value: int) -> None:
        self.config.write(self.cap.offset + 2, 2, value)

    def program(self, vector: int, address: int, data: int, masked: bool) -> None:
        self.table.write(16 * vector, 8, address)
        self.table.write(16 * vector + 8, 4, data)
        self.table.write(16 * vector + 12, 4, int(masked))


@pytest.fixture
def msix() -> Msix:
    return Msix()


def test_capability_is_found_with_table_size_minus_one(msix: Msix) -> None:
    offset = msix.config.find_capability(CAP_ID_MSIX)
    assert offset == msix.cap.offset and msix.config.read(msix.cap.offset + 2, 2) == VECTORS - 1


def test_table_and_pba_locations_carry_the_bar_indicator(msix: Msix) -> None:
    assert (msix.config.read(msix.cap.offset + 4, 4), msix.config.read(msix.cap.offset + 8, 4)) == (1, 0x801)


def test_guest_cannot_change_table_size_or_locations(msix: Msix) -> None:
    msix.config.write(msix.cap.offset, 4, 0xFFFF_FFFF)
    msix.config.write(msix.cap.offset + 4, 4, 0)
    assert msix.config.read(msix.cap.offset, 4) == 0xC003_0011 and msix.config.read(msix.cap.offset + 4, 4) == 1


def test_enable_and_function_mask_reach_the_table(msix: Msix) -> None:
    msix.control(ENABLE | FUNCTION_MASK)
    assert (msix.table.enabled, msix.table.function_masked) == (True, True)


def test_notify_while_disabled_delivers_nothing_and_leaves_no_pending_bit(msix: Msix) -> None:
    msix.program(0, 0xFEE0_0000, 0x41, masked=False)
    msix.table.notify(0)
    assert msix.delivered == [] and not msix.table.pending(0)


def test_notify_of_unmasked_vector_delivers_its_address_and_data(msix: Msix) -> None:
    msix.program(2, 0x1_FEE0_1000, 0x4041, masked=False)
    msix.control(ENABLE)
    msix.table.notify(2)
    assert msix.delivered == [(0x1_FEE0_1000, 0x4041)]


def test_entries_start_masked_so_notify_sets_the_pending_bit(msix: Msix) -> None:
    msix.control(ENABLE)
    msix.table.notify(1)
    assert msix.delivered == [] and msix.table.pending(1) and msix.table.pba.read(0, 8) == 0b10


def test_unmasking_a_pending_vector_delivers_it_and_clears_the_bit(msix: Msix) -> None:
    msix.control(ENABLE)
    msix.program(3, 0xFEE0_0000, 0x33, masked=True)
    msix.table.notify(3)
    msix.table.write(16 * 3 + 12, 4, 0)
    assert msix.delivered == [(0xFEE0_0000, 0x33)] and not msix.table.pending(3)


def test_function_mask_holds_vectors_pending_until_cleared(msix: Msix) -> None:
    msix.program(0, 0xFEE0_0000, 0x21, masked=False)
    msix.control(ENABLE | FUNCTION_MASK)
    msix.table.notify(0)
    held = list(msix.delivered)
    msix.control(ENABLE)
    assert held == [] and msix.delivered == [(0xFEE0_0000, 0x21)] and not msix.table.pending(0)


def test_clearing_function_mask_keeps_masked_entries_pending(msix: Msix) -> None:
    msix.control(ENABLE | FUNCTION_MASK)
    msix.table.notify(1)
    msix.control(ENABLE)
    assert msix.delivered == [] and msix.table.pending(1)


@pytest.mark.parametrize("vector", [VECTORS, 0xFFFF, -1])
def test_vector_out_of_range_is_ignored(msix: Msix, vector: int) -> None:
    msix.program(0, 0xFEE0_0000, 0x21, masked=False)
    msix.control(ENABLE)
    msix.table.notify(vector)
    assert msix.delivered == [] and msix.table.pba.read(0, 8) == 0


def test_eight_byte_write_sets_both_address_halves(msix: Msix) -> None:
    msix.table.write(16, 8, 0x0000_0012_FEE0_1000)
    assert (msix.table.read(16, 4), msix.table.read(20, 4), msix.table.read(16, 8)) == (
        0xFEE0_1000,
        0x12,
        0x12_FEE0_1000,
    )


def test_message_address_low_bits_read_as_zero(msix: Msix) -> None:
    msix.table.write(0, 4, 0xFEE0_0003)
    assert msix.table.read(0, 4) == 0xFEE0_0000


def test_vector_control_keeps_only_the_mask_bit(msix: Msix) -> None:
    msix.table.write(12, 4, 0xFFFF_FFFE)
    assert msix.table.read(12, 4) == 0


@pytest.mark.parametrize(("offset", "size"), [(1, 4), (2, 2), (0, 1), (4, 8), (16 * VECTORS, 4), (-4, 4)])
def test_odd_table_access_reads_all_ones_and_writes_nothing(msix: Msix, offset: int, size: int) -> None:
    msix.table.write(offset, size, 0)
    assert msix.table.read(offset, size) == (1 << (8 * size)) - 1 and msix.table.read(12, 4) == 1


def test_pba_ignores_writes(msix: Msix) -> None:
    msix.control(ENABLE)
    msix.table.notify(0)
    msix.table.pba.write(0, 8, 0)
    assert msix.table.pba.read(0, 4) == 1


def test_region_sizes_cover_whole_entries_and_qwords() -> None:
    table = MsixTable(65, lambda address, data: None)
    assert (table.table_size, table.pba_size) == (65 * 16, 16)


def test_deliver_callback_may_read_the_table_without_deadlock() -> None:
    seen: list[tuple[int, int, bool]] = []
    table = MsixTable(1, lambda address, data: seen.append(table.entry(0)))
    table.write(0, 4, 0xFEE0_0000)
    table.write(12, 4, 0)
    table.set_control(enabled=True, function_masked=False)
    table.notify(0)
    assert seen == [(0xFEE0_0000, 0, False)]


def test_table_that_does_not_fit_its_bar_is_refused() -> None:
    config = PciConfigSpace(0x1AF4, 0x1041, 0x020000)
    config.add_bar(0, 0x1000)
    table = MsixTable(300, lambda address, data: None)
    with pytest.raises(ValueError, match="does not fit"):
        MsixCapability(config, table, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800)


def test_table_in_undeclared_bar_is_refused() -> None:
    config = PciConfigSpace(0x1AF4, 0x1041, 0x020000)
    table = MsixTable(1, lambda address, data: None)
    with pytest.raises(ValueError, match="not declared"):
        MsixCapability(config, table, table_bar=2, table_offset=0, pba_bar=2, pba_offset=0x800)
