"""PCI bus 0: mechanism #1 and ECAM agree, absent devices, BAR placement and remapping."""

from __future__ import annotations

import pytest

from pyhv.devices.bus import MmioBus, PioBus
from pyhv.devices.pci.config import BAR0, COMMAND, MEM64, PciConfigSpace
from pyhv.devices.pci.device import BarWindow, PciDevice
from pyhv.devices.pci.root import DEFAULT_ECAM_BASE, ECAM_SIZE, PciError, PciRoot

WINDOW = (0xC000_0000, 0x1000_0000)
CF8, CFC = 0xCF8, 0xCFC


class Device(PciDevice):
    """BAR0: 4 KiB mem32; BAR2: 16 KiB prefetchable mem64.  Records BAR writes."""

    def __init__(self) -> None:
        super().__init__(PciConfigSpace(0x1AF4, 0x1041, 0x020000))
        self.config.add_bar(0, 0x1000)
        self.config.add_bar(2, 0x4000, MEM64, prefetchable=True)
        self.writes: list[tuple[int, int, int, int]] = []

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        return bar << 16 | offset

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.writes.append((bar, offset, size, value))


class Board:
    """A root on real port and MMIO buses, recording BAR changes."""

    def __init__(self) -> None:
        self.changes: list[tuple[PciDevice, int, int | None, int | None]] = []
        self.root = PciRoot(WINDOW, on_bar_change=lambda *change: self.changes.append(change))
        self.pio, self.mmio = PioBus(), MmioBus()
        self.pio.insert(CF8, 8, self.root.config_io, "pci-config")
        self.mmio.insert(self.root.ecam_base, ECAM_SIZE, self.root.config_mmio, "pci-ecam")
        self.device = Device()
        self.slot = self.root.add_device(self.device)

    def cf8_read(self, slot: int, register: int, size: int, function: int = 0, bus: int = 0) -> int:
        self.pio.write(CF8, 4, 0x8000_0000 | bus << 16 | slot << 11 | function << 8 | (register & 0xFC))
        return self.pio.read(CFC + (register & 3), size)

    def cf8_write(self, slot: int, register: int, size: int, value: int) -> None:
        self.pio.write(CF8, 4, 0x8000_0000 | slot << 11 | (register & 0xFC))
        self.pio.write(CFC + (register & 3), size, value)

    def ecam_read(self, slot: int, register: int, size: int, function: int = 0) -> int:
        return self.mmio.read(self.root.ecam_base + (slot << 15 | function << 12 | register), size)

    def ecam_write(self, slot: int, register: int, size: int, value: int) -> None:
        self.mmio.write(self.root.ecam_base + (slot << 15 | register), size, value)


@pytest.fixture
def board() -> Board:
    return Board()


def test_host_bridge_in_slot_0_has_vendor_device_and_class(board: Board) -> None:
    assert (board.cf8_read(0, 0, 4), board.cf8_read(0, 0x08, 4) >> 8) == (0x0D57_8086, 0x060000)


def test_i440fx_host_bridge_keeps_what_firmware_writes_to_its_pam_registers() -> None:
    root = PciRoot(WINDOW, i440fx=True)
    bridge = root.device(0)
    assert bridge is not None
    # SeaBIOS's make_bios_writable: two dwords from 0x58, PAM0-6 set, written back
    bridge.config.write(0x58, 4, 0x33333000 | 0xAB)
    bridge.config.write(0x5C, 4, 0xFFFFFFFF)
    assert (bridge.config.read(0x00, 4), bridge.config.read(0x08, 1)) == (0x1237_8086, 0x02)
    assert (bridge.config.read(0x58, 4), bridge.config.read(0x5C, 4)) == (0x33333000, 0x33333333)
    assert bridge.config.state() != PciRoot(WINDOW, i440fx=True).device(0).config.state()  # type: ignore[union-attr]


def test_first_device_goes_to_slot_1(board: Board) -> None:
    assert board.slot == 1 and board.root.device(1) is board.device


@pytest.mark.parametrize(
    ("register", "size"), [(0x00, 4), (0x02, 2), (0x04, 2), (0x08, 4), (0x0B, 1), (0x0E, 1), (0x10, 4), (0x18, 4)]
)
def test_mechanism_1_and_ecam_read_the_same_registers(board: Board, register: int, size: int) -> None:
    assert board.cf8_read(1, register, size) == board.ecam_read(1, register, size)


def test_write_through_cf8_is_read_back_through_ecam(board: Board) -> None:
    board.cf8_write(1, 0x3C, 1, 0x0B)
    assert board.ecam_read(1, 0x3C, 1) == 0x0B


def test_write_through_ecam_is_read_back_through_cf8(board: Board) -> None:
    board.ecam_write(1, COMMAND, 2, 0x0006)
    assert board.cf8_read(1, COMMAND, 2) == 0x0006


def test_absent_slot_reads_all_ones_both_ways(board: Board) -> None:
    assert (board.cf8_read(7, 0, 4), board.ecam_read(7, 0, 4), board.ecam_read(7, 0, 1)) == (0xFFFF_FFFF,) * 2 + (0xFF,)


def test_function_other_than_0_reads_all_ones(board: Board) -> None:
    assert (board.cf8_read(1, 0, 4, function=1), board.ecam_read(1, 0, 4, function=3)) == (0xFFFF_FFFF,) * 2


def test_bus_other_than_0_reads_all_ones(board: Board) -> None:
    assert board.cf8_read(1, 0, 4, bus=1) == 0xFFFF_FFFF


def test_config_address_reads_back_what_was_written(board: Board) -> None:
    board.pio.write(CF8, 4, 0x8000_0000)
    assert board.pio.read(CF8, 4) == 0x8000_0000


def test_byte_write_to_cfb_leaves_config_address_alone(board: Board) -> None:
    board.pio.write(CF8, 4, 0x8000_0810)
    board.pio.write(CF8 + 3, 1, 0x01)
    assert (board.pio.read(CF8, 4), board.pio.read(CF8, 1)) == (0x8000_0810, 0xFF)


def test_data_port_reads_all_ones_while_enable_bit_is_clear(board: Board) -> None:
    board.pio.write(CF8, 4, 0x0000_0800)
    assert board.pio.read(CFC, 4) == 0xFFFF_FFFF


def test_data_port_byte_offset_selects_the_byte(board: Board) -> None:
    assert [board.cf8_read(1, r, 1) for r in range(4)] == [0xF4, 0x1A, 0x41, 0x10]


def test_data_access_running_past_0xcff_reads_all_ones(board: Board) -> None:
    board.pio.write(CF8, 4, 0x8000_0800)
    assert board.pio.read(CFC + 2, 4) == 0xFFFF_FFFF


def test_extended_register_bits_reach_past_the_first_256_bytes(board: Board) -> None:
    board.cf8_write(1, COMMAND, 2, 0x0006)
    board.pio.write(CF8, 4, 0x8100_0800 | COMMAND)
    assert board.pio.read(CFC, 2) == 0 and board.ecam_read(1, 0x104, 2) == 0


def test_ecam_access_crossing_the_4k_function_reads_all_ones(board: Board) -> None:
    assert board.ecam_read(1, 0xFFE, 4) == 0xFFFF_FFFF


def test_add_device_places_bars_naturally_aligned_and_turns_decode_on(board: Board) -> None:
    config = board.device.config
    assert (config.bar_address(2), config.bar_address(0), config.memory_enabled) == (0xC000_0000, 0xC000_4000, True)


def test_regions_list_the_mapped_bars(board: Board) -> None:
    regions = [(r.slot, r.bar, r.address, r.size) for r in board.root.regions()]
    assert regions == [(1, 0, 0xC000_4000, 0x1000), (1, 2, 0xC000_0000, 0x4000)]


def test_bar_window_forwards_accesses_to_the_device(board: Board) -> None:
    window = BarWindow(board.device, 2)
    window.write(0x10, 4, 0xAB)
    assert window.read(0x20, 2) == 0x2_0020 and board.device.writes == [(2, 0x10, 4, 0xAB)]


def test_bar_window_access_past_the_end_reads_all_ones_and_is_dropped(board: Board) -> None:
    window = BarWindow(board.device, 0)
    window.write(0xFFC, 8, 1)
    assert window.read(0xFFC, 8) == (1 << 64) - 1 and board.device.writes == []


def test_adding_devices_reports_no_changes(board: Board) -> None:
    assert board.changes == []


def test_moving_a_bar_with_decode_on_reports_old_and_new(board: Board) -> None:
    board.cf8_write(1, BAR0, 4, 0xC010_0000)
    assert board.changes == [(board.device, 0, 0xC000_4000, 0xC010_0000)]


def test_disabling_memory_decode_reports_every_bar_unmapped(board: Board) -> None:
    board.cf8_write(1, COMMAND, 2, 0)
    assert board.changes == [(board.device, 0, 0xC000_4000, None), (board.device, 2, 0xC000_0000, None)]


def test_sizing_with_decode_off_then_restoring_reports_only_off_and_on(board: Board) -> None:
    board.cf8_write(1, COMMAND, 2, 0)
    board.cf8_write(1, BAR0, 4, 0xFFFF_FFFF)
    size_mask = board.cf8_read(1, BAR0, 4)
    board.cf8_write(1, BAR0, 4, 0xC000_4000)
    board.cf8_write(1, COMMAND, 2, 0x0002)
    assert size_mask == 0xFFFF_F000 and [c[2:] for c in board.changes] == [
        (0xC000_4000, None),
        (0xC000_0000, None),
        (None, 0xC000_4000),
        (None, 0xC000_0000),
    ]


def test_bar_moved_outside_the_window_is_reported_unmapped(board: Board) -> None:
    board.cf8_write(1, BAR0, 4, 0xFEE0_0000)
    assert board.changes == [(board.device, 0, 0xC000_4000, None)] and board.device.config.bar_address(0) == 0xFEE0_0000


def test_bar_moved_onto_another_bar_is_not_mapped(board: Board) -> None:
    board.cf8_write(1, BAR0, 4, 0xC000_1000)
    assert board.changes == [(board.device, 0, 0xC000_4000, None)]


def test_bar_left_unmapped_by_a_collision_is_mapped_once_the_way_is_clear(board: Board) -> None:
    board.cf8_write(1, BAR0, 4, 0xC000_1000)
    board.cf8_write(1, BAR0 + 8, 4, 0xC010_0000)
    assert [c[1:] for c in board.changes] == [
        (0, 0xC000_4000, None),
        (2, 0xC000_0000, 0xC010_0000),
        (0, None, 0xC000_1000),
    ]


def test_64bit_bar_upper_half_write_moves_it_out_of_the_window(board: Board) -> None:
    board.cf8_write(1, BAR0 + 12, 4, 0x1)
    assert board.changes == [(board.device, 2, 0xC000_0000, None)]


def test_second_device_gets_the_next_slot_and_free_addresses(board: Board) -> None:
    other = Device()
    slot = board.root.add_device(other)
    assert (slot, other.config.bar_address(2), other.config.bar_address(0)) == (2, 0xC000_8000, 0xC000_C000)


def test_taken_slot_is_refused(board: Board) -> None:
    with pytest.raises(PciError, match="not free"):
        board.root.add_device(Device(), slot=1)


def test_same_device_twice_is_refused(board: Board) -> None:
    with pytest.raises(PciError, match="twice"):
        board.root.add_device(board.device)


def test_bars_that_do_not_fit_the_window_are_refused() -> None:
    root = PciRoot((0xC000_0000, 0x4000))
    with pytest.raises(PciError, match="does not fit"):
        root.add_device(Device())


def test_full_bus_is_refused() -> None:
    root = PciRoot()
    for _ in range(31):
        root.add_device(PciDevice(PciConfigSpace(0x1AF4, 0x1000, 0)))
    with pytest.raises(PciError, match="no free PCI slot"):
        root.add_device(PciDevice(PciConfigSpace(0x1AF4, 0x1000, 0)))


def test_ecam_overlapping_the_window_is_refused() -> None:
    with pytest.raises(PciError, match="overlaps"):
        PciRoot((0xC000_0000, 0x2000_0000), ecam_base=0xC010_0000)


def test_64bit_bar_comes_from_the_64bit_window_when_there_is_one() -> None:
    root = PciRoot(WINDOW, mmio64_window=(1 << 36, 1 << 30))
    device = Device()
    root.add_device(device)
    assert (device.config.bar_address(2), device.config.bar_address(0)) == (1 << 36, 0xC000_0000)


def test_default_ecam_sits_just_above_the_default_window() -> None:
    root = PciRoot()
    assert (root.ecam_base, sum(root.mmio32_window)) == (DEFAULT_ECAM_BASE, DEFAULT_ECAM_BASE)
