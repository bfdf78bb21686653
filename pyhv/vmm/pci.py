"""Wiring of the PCI root and its virtio devices into a machine.

Kept apart from builder.py because BARs can move after start-up: when the
guest reprograms a BAR (or toggles memory decoding) the root reports it, and
this module moves the BAR's window on the MMIO bus and the ioeventfds that
hang on its notification slots.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..devices.bus import MmioBus, PioBus
from ..devices.pci import acpi as pci_acpi
from ..devices.pci.device import BarWindow, PciDevice
from ..devices.pci.root import ECAM_SIZE, PciRoot
from ..devices.virtio.pci import VirtioPci
from ..kvm import Vm
from .iothread import IoThread

#: 32-bit MMIO window for BARs, and the ECAM window above it, both in the hole below 4 GiB
MMIO32_WINDOW = (0xC000_0000, 0x2000_0000)
ECAM_BASE = 0xE000_0000
#: the window under firmware, which places BARs itself: SeaBIOS allocates downwards from
#: the IOAPIC (0xFEC00000), so the window ends there, above ECAM; the host bridge is then
#: the i440FX's (devices/pci/root.py), which SeaBIOS programs as on QEMU's pc machine
FIRMWARE_MMIO32_WINDOW = (0xF000_0000, 0x0EC0_0000)


class PciWiring:
    def __init__(self, firmware: bool = False) -> None:
        window = FIRMWARE_MMIO32_WINDOW if firmware else MMIO32_WINDOW
        self.root = PciRoot(window, ecam_base=ECAM_BASE, on_bar_change=self._bar_changed, i440fx=firmware)
        self.transports: list[VirtioPci] = []
        self.vm: Vm | None = None
        self.mmio: MmioBus | None = None
        self.io: IoThread | None = None
        self._notify_fds: dict[tuple[int, int], int] = {}  # (slot, queue) -> eventfd
        self._mapped: dict[tuple[int, int], int] = {}  # (slot, bar) -> address on the bus
        self._routes: Any = None  # irqroute.GsiRoutes, made for the first vhost-user device
        self._calls: list[Any] = []  # irqroute.CallVector of vhost-user queues

    def add(self, transport: VirtioPci) -> None:
        self.root.add_device(transport)
        self.transports.append(transport)

    def acpi(self) -> tuple[list[bytes], list[tuple[str, bytes]]]:
        """DSDT devices and extra tables (MCFG) describing the root."""
        info = pci_acpi.acpi_info(self.root)
        devices = [pci_acpi.root_bridge_device(info), pci_acpi.ecam_reservation_device(info)]
        return devices, [("MCFG", pci_acpi.mcfg(info))]

    def attach(self, vm: Vm, pio: PioBus, mmio: MmioBus, io: IoThread) -> None:
        """Put config access, ECAM and every BAR on the buses; hang the notify ioeventfds."""
        self.vm, self.mmio, self.io = vm, mmio, io
        pio.insert(0xCF8, 8, self.root.config_io, "pci-config")
        mmio.insert(self.root.ecam_base, ECAM_SIZE, self.root.config_mmio, "pci-ecam")
        for region in self.root.regions():
            self._map(region.device, region.slot, region.bar, region.address)
        for transport in self.transports:
            slot = self.root.slot_of(transport)
            external = getattr(transport.device, "backend_serves_queues", False)
            for q in range(len(transport.device.queues)):
                if external:  # the back end reads the kick itself
                    self._notify_fds[(slot, q)] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                else:
                    self._notify_fds[(slot, q)] = io.new_eventfd(functools.partial(transport.device.notify, q))
            if external:
                self._hand_to_backend(transport, slot, vm, io)
            self._hang_ioeventfds(transport, slot)

    def _hand_to_backend(self, transport: VirtioPci, slot: int, vm: Vm, io: IoThread) -> None:
        """A vhost-user device: each queue's notify eventfd is the back end's KICK (KVM
        signals it, the back end reads it) and a call eventfd on an irqfd is its CALL
        (vmm/irqroute.py); the I/O thread watches the back end's socket for its end."""
        from .irqroute import CallVector, GsiRoutes

        if self._routes is None:
            self._routes = GsiRoutes(vm)
        device: Any = transport.device
        vectors = []
        for q in range(len(device.queues)):
            call = CallVector(self._routes, io, _target(transport, q), _relay(transport, q))
            self._calls.append(call)
            vectors.append(call)
            device.backend.set_queue_fds(q, self._notify_fds[(slot, q)], call.fd)

        def sync() -> None:
            for call in vectors:
                call.sync()

        transport.on_interrupt_change = sync
        sync()
        fd = device.backend.fileno()

        def readable() -> None:
            if not device.backend_readable():
                io.watch(fd, None)  # gone: the device failed and said so once

        io.watch(fd, readable)

    def _hang_ioeventfds(self, transport: VirtioPci, slot: int, deassign: bool = False) -> None:
        assert self.vm is not None
        address = self._mapped.get((slot, 0))
        if address is None:
            return
        for q in range(len(transport.device.queues)):
            fd = self._notify_fds[(slot, q)]
            # length 0: any write size to the slot signals the eventfd
            self.vm.ioeventfd(fd, transport.notify_address(address, q), 0, pio=False, deassign=deassign)

    def _map(self, device: Any, slot: int, bar: int, address: int) -> None:
        assert self.mmio is not None
        size = device.config.bar(bar).size
        self.mmio.insert(address, size, BarWindow(device, bar), f"pci-{slot:02x}-bar{bar}")
        self._mapped[(slot, bar)] = address

    def _bar_changed(self, device: PciDevice, bar: int, old: int | None, new: int | None) -> None:
        """The guest moved or (un)mapped a BAR: follow it on the bus and in KVM."""
        if self.mmio is None:
            return
        slot = self.root.slot_of(device)
        transport = device if isinstance(device, VirtioPci) and bar == 0 else None
        if old is not None and (slot, bar) in self._mapped:
            if transport is not None:
                self._hang_ioeventfds(transport, slot, deassign=True)
            self.mmio.remove(self._mapped.pop((slot, bar)))
        if new is not None:
            self._map(device, slot, bar, new)
            if transport is not None:
                self._hang_ioeventfds(transport, slot)

    def close(self) -> None:
        for call in self._calls:
            call.close()
        self._calls.clear()
        for fd in self._notify_fds.values():
            os.close(fd)
        self._notify_fds.clear()


def _target(transport: VirtioPci, queue: int) -> Any:
    return lambda: transport.msi_target(queue)


def _relay(transport: VirtioPci, queue: int) -> Any:
    def relay() -> None:
        transport.device.interrupt(queue)

    return relay
