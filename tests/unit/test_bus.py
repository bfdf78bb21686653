import pytest

from pyhv.devices.bus import BusConflict, MmioBus, PioBus


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x40 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_overlapping_port_range_is_refused() -> None:
    bus = PioBus()
    bus.insert(0x3F8, 8, Recorder(), "com1")
    with pytest.raises(BusConflict, match="overlaps com1"):
        bus.insert(0x3FF, 2, Recorder(), "other")


def test_adjacent_ranges_are_accepted() -> None:
    bus = MmioBus()
    bus.insert(0x1000, 0x1000, Recorder(), "a")
    bus.insert(0x2000, 0x1000, Recorder(), "b")
    assert [r.name for r in bus.ranges()] == ["a", "b"]


def test_access_is_relative_to_the_range_base() -> None:
    bus, dev = MmioBus(), Recorder()
    bus.insert(0xD000_0000, 0x100, dev, "dev")
    bus.write(0xD000_0010, 4, 7)
    assert dev.writes == [(0x10, 4, 7)] and bus.read(0xD000_0002, 1) == 0x42


def test_unclaimed_read_returns_all_ones() -> None:
    assert PioBus().read(0x1234, 2) == 0xFFFF


def test_port_table_covers_every_port_of_a_range() -> None:
    bus, dev = PioBus(), Recorder()
    bus.insert(0x60, 5, dev, "x")
    assert sorted(bus.table) == [0x60, 0x61, 0x62, 0x63, 0x64]


def test_range_beyond_the_port_space_is_refused() -> None:
    with pytest.raises(BusConflict):
        PioBus().insert(0xFFFF, 2, Recorder(), "x")


def test_removed_range_no_longer_answers() -> None:
    bus, dev = MmioBus(), Recorder()
    bus.insert(0x1000, 0x100, dev, "bar")
    bus.remove(0x1000)
    assert bus.find(0x1010) is None and bus.read(0x1010, 4) == 0xFFFF_FFFF


def test_removed_port_range_leaves_the_port_table() -> None:
    bus = PioBus()
    bus.insert(0x60, 2, Recorder(), "x")
    bus.remove(0x60)
    assert bus.table == {}


def test_removing_what_is_not_there_is_refused() -> None:
    with pytest.raises(BusConflict):
        MmioBus().remove(0x1000)
