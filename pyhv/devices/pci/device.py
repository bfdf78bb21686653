"""The PCI device a transport implements, and the bus adapter for one BAR."""

from __future__ import annotations

from ..bus import ALL_ONES
from .config import PciConfigSpace


class PciDevice:
    """A single-function PCI device: a config space and its BAR accesses.

    Transports subclass this and override :meth:`bar_read` / :meth:`bar_write`;
    ``offset`` is relative to the start of the BAR.  Both run on vCPU
    threads with guest-chosen offsets and sizes: they must not raise."""

    def __init__(self, config: PciConfigSpace) -> None:
        self.config = config

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        return ALL_ONES.get(size, 0)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        return None


class BarWindow:
    """A bus device for one BAR: ``mmio.insert(address, size, BarWindow(dev, bar), name)``.

    Accesses that do not lie entirely inside the BAR read all ones and write
    nothing; the rest go to the device's ``bar_read``/``bar_write``."""

    def __init__(self, device: PciDevice, bar: int) -> None:
        declared = device.config.bar(bar)
        if declared is None:
            raise ValueError(f"BAR {bar} is not declared")
        self.device = device
        self.bar = bar
        self.size = declared.size

    def read(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > self.size:
            return ALL_ONES.get(size, 0)
        return self.device.bar_read(self.bar, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or size <= 0 or offset + size > self.size:
            return
        self.device.bar_write(self.bar, offset, size, value)
