"""Exit hooks: see every port and MMIO access a machine's vCPUs make.

:class:`IoTrace` puts a thin forwarding device in front of each device on
the port and MMIO buses (and, for ports, one answering the ports nobody
claims: reads all ones, writes dropped, as without it), calling a hook with an
:class:`Access` on each.  The vCPU loop is not changed at all: a machine
without a trace pays nothing, one with a trace pays a Python call per access.

Hooks run on the vCPU threads, inside the exit: keep them short, and lock what
several vCPUs share.  Ranges the guest moves or adds while the trace runs (a
PCI BAR programmed afterwards) are not seen; unclaimed MMIO is not seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..devices.bus import ALL_ONES, BusDevice


class Access(NamedTuple):
    kind: str  # "pio" or "mmio"
    addr: int  # port or guest-physical address
    size: int
    is_write: bool
    value: int  # written, or read back
    device: str  # the bus range's name ("" for an unclaimed port)


Hook = Callable[[Access], None]


class _Tap:
    def __init__(self, inner: BusDevice | None, base: int, kind: str, name: str, hook: Hook) -> None:
        self.inner, self.base, self.kind, self.name, self.hook = inner, base, kind, name, hook

    def read(self, offset: int, size: int) -> int:
        value = self.inner.read(offset, size) if self.inner is not None else ALL_ONES.get(size, 0)
        self.hook(Access(self.kind, self.base + offset, size, False, value, self.name))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.hook(Access(self.kind, self.base + offset, size, True, value, self.name))
        if self.inner is not None:
            self.inner.write(offset, size, value)


class IoTrace:
    """``with IoTrace(machine, on_port=..., on_mmio=...):`` or start()/stop()."""

    def __init__(self, machine: Any, on_port: Hook | None = None, on_mmio: Hook | None = None,
                 unclaimed_ports: bool = True) -> None:
        self.machine = machine
        self.on_port = on_port
        self.on_mmio = on_mmio
        self.unclaimed_ports = unclaimed_ports
        self._ports: dict[int, tuple[Any, int] | None] = {}  # port -> what the table held
        self._mmio: list[tuple[int, int, BusDevice, str, _Tap]] = []

    def start(self) -> None:
        with self.machine.quiesced():
            if self.on_port is not None:
                self._tap_ports(self.on_port)
            if self.on_mmio is not None:
                self._tap_mmio(self.on_mmio)

    def stop(self) -> None:
        with self.machine.quiesced():
            table = self.machine.pio.table
            for port, old in self._ports.items():
                entry = table.get(port)
                if entry is not None and isinstance(entry[0], _Tap):
                    if old is None:
                        del table[port]
                    else:
                        table[port] = old
            bus = self.machine.mmio
            for base, length, device, name, tap in self._mmio:
                r = bus.find(base)
                if r is not None and r.device is tap:
                    bus.remove(base)
                    bus.insert(base, length, device, name)
        self._ports.clear()
        self._mmio.clear()

    def __enter__(self) -> IoTrace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tap_ports(self, hook: Hook) -> None:
        bus = self.machine.pio
        names = {r.base: r.name for r in bus.ranges()}
        table = bus.table
        taps: dict[int, _Tap] = {}
        for port in range(0x10000):
            entry = table.get(port)
            if entry is None and not self.unclaimed_ports:
                continue
            if entry is None:
                self._ports[port] = None
                table[port] = (_Tap(None, port, "pio", "", hook), port)
                continue
            device, base = entry
            if base not in taps:
                taps[base] = _Tap(device, base, "pio", names.get(base, ""), hook)
            self._ports[port] = entry
            table[port] = (taps[base], base)

    def _tap_mmio(self, hook: Hook) -> None:
        bus = self.machine.mmio
        for r in bus.ranges():
            tap = _Tap(r.device, r.base, "mmio", r.name, hook)
            bus.remove(r.base)
            bus.insert(r.base, r.length, tap, r.name)
            self._mmio.append((r.base, r.length, r.device, r.name, tap))
