"""IoTrace taps the buses without the vCPU loop knowing, and leaves them as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pyhv.debug.trace import Access, IoTrace
from pyhv.devices.bus import MmioBus, PioBus


class _Reg:
    def __init__(self) -> None:
        self.value = 7

    def read(self, offset: int, size: int) -> int:
        return self.value + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value


class _Machine:
    def __init__(self) -> None:
        self.pio, self.mmio = PioBus(), MmioBus()
        self.reg = _Reg()
        self.pio.insert(0x60, 4, self.reg, "kbd")
        self.mmio.insert(0xD000_0000, 0x1000, self.reg, "bar0")

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        yield


def _access_port(m: _Machine, port: int, value: int | None) -> int | None:
    """What the vCPU loop does for a port exit: look the port up in the table."""
    entry: Any = m.pio.table.get(port)
    if entry is None:
        return None
    device, base = entry
    if value is None:
        return int(device.read(port - base, 1))
    device.write(port - base, 1, value)
    return None


def test_port_writes_reach_the_hook_and_the_device() -> None:
    m, seen = _Machine(), []
    with IoTrace(m, on_port=seen.append):
        _access_port(m, 0x61, 5)
    assert seen == [Access("pio", 0x61, 1, True, 5, "kbd")] and m.reg.value == 5


def test_unclaimed_port_read_is_seen_and_reads_all_ones() -> None:
    m, seen = _Machine(), []
    with IoTrace(m, on_port=seen.append):
        value = _access_port(m, 0x3F0, None)
    assert value == 0xFF and seen == [Access("pio", 0x3F0, 1, False, 0xFF, "")]


def test_stopping_the_trace_restores_the_port_table() -> None:
    m = _Machine()
    before = dict(m.pio.table)
    with IoTrace(m, on_port=lambda a: None):
        pass
    assert m.pio.table == before


def test_mmio_read_is_seen_with_its_value_and_the_bus_is_restored() -> None:
    m, seen = _Machine(), []
    with IoTrace(m, on_mmio=seen.append):
        r = m.mmio.find(0xD000_0010)
        assert r is not None
        r.device.read(0x10, 4)
    after = m.mmio.find(0xD000_0010)
    assert seen == [Access("mmio", 0xD000_0010, 4, False, 0x17, "bar0")] and after is not None and after.device is m.reg
