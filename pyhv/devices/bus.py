"""Port-I/O and MMIO buses: address ranges mapped to devices.

A device on a bus implements :class:`BusDevice`: ``read(offset, size)`` and
``write(offset, size, value)`` with ``offset`` relative to the start of the
range it was inserted at.  Ranges may not overlap; inserting one that does is a
wiring bug and raises :class:`BusConflict`.

Accesses to addresses no device claims are not errors: reads return all ones
(what an unclaimed ISA/PCI read returns on real hardware) and writes are
dropped.  The port bus keeps a flat per-port table because the vCPU loop looks
up a port on every port-I/O exit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import NamedTuple, Protocol

from ..errors import PyhvError


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BytePort:
    """A one-byte register of a legacy device, as a bus device: reads and writes
    go to two callables, whatever the offset or access size; writes are masked
    to a byte."""

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> int:
        return self._read()

    def write(self, offset: int, size: int, value: int) -> None:
        self._write(value & 0xFF)


class BusConflict(PyhvError):
    pass


class Range(NamedTuple):
    base: int
    length: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.length


ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class Bus:
    """Sorted, non-overlapping ranges with lookup by address."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        # (bases, ranges), replaced whole on every change: vCPU threads look
        # ranges up while another vCPU's BAR write may be moving one
        self._snap: tuple[list[int], list[Range]] = ([], [])

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> None:
        if length <= 0 or base < 0 or base + length > self.limit:
            raise BusConflict(f"{self.name}: {name} range {base:#x}+{length:#x} is invalid")
        bases, ranges = self._snap
        for r in ranges:
            if base < r.end and r.base < base + length:
                raise BusConflict(
                    f"{self.name}: {name} at {base:#x}+{length:#x} overlaps {r.name} at {r.base:#x}+{r.length:#x}"
                )
        i = bisect.bisect(bases, base)
        self._snap = (bases[:i] + [base] + bases[i:], ranges[:i] + [Range(base, length, device, name)] + ranges[i:])

    def remove(self, base: int) -> None:
        """Take out the range that starts at ``base`` (a BAR the guest moved)."""
        bases, ranges = self._snap
        i = bisect.bisect_left(bases, base)
        if i == len(bases) or bases[i] != base:
            raise BusConflict(f"{self.name}: nothing inserted at {base:#x}")
        self._snap = (bases[:i] + bases[i + 1 :], ranges[:i] + ranges[i + 1 :])

    def find(self, addr: int) -> Range | None:
        bases, ranges = self._snap
        i = bisect.bisect(bases, addr) - 1
        if i >= 0:
            r = ranges[i]
            if addr < r.end:
                return r
        return None

    def ranges(self) -> list[Range]:
        return list(self._snap[1])

    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        if r is None:
            return ALL_ONES.get(size, 0)
        return r.device.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is not None:
            r.device.write(addr - r.base, size, value)


class PioBus(Bus):
    """The 64 KiB x86 I/O port space, with a per-port table for the hot path."""

    def __init__(self) -> None:
        super().__init__("port bus", 0x10000)
        #: port -> (device, base)
        self.table: dict[int, tuple[BusDevice, int]] = {}

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> None:
        super().insert(base, length, device, name)
        for port in range(base, base + length):
            self.table[port] = (device, base)

    def remove(self, base: int) -> None:
        r = self.find(base)
        super().remove(base)
        if r is not None:
            for port in range(r.base, r.end):
                self.table.pop(port, None)


class MmioBus(Bus):
    def __init__(self) -> None:
        super().__init__("MMIO bus", 1 << 52)
