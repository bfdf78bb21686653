"""Wiring of virtio-MMIO devices into a machine (virtio 1.2, 4.2): the
``transport = "mmio"`` side of the builder, beside :mod:`pyhv.vmm.pci`.

Each device gets a 4 KiB register window at a fixed address and an IOAPIC
line of its own; a guest finds them on its kernel command line, as
``virtio_mmio.device=4K@ADDRESS:GSI`` (Linux's syntax, which Firecracker's
guests use), so nothing needs enumerating.  A queue kick is a 32-bit write of
the queue's index to QueueNotify: one ioeventfd per queue with that index as
its datamatch, so kicks reach the ``io`` thread without a user-space exit on
the vCPU thread, as with the PCI transport.

The devices are not described in the DSDT (``LNRO0005``): a Linux guest built
with both ACPI and command-line virtio-mmio devices would register each window
twice and the second driver would fail to claim it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from ..devices.bus import MmioBus
from ..devices.virtio.device import VirtioDevice
from ..devices.virtio.mmio import NOTIFY_OFFSET, WINDOW_SIZE, VirtioMmio
from ..errors import UsageError
from ..kvm import Vm
from ..model import MAX_MMIO_DEVICES
from .iothread import IoThread

#: First window.  The MMIO hole below 4 GiB holds, in order: RAM up to 0xC000_0000
#: at the latest (boot/layout.py), the PCI BAR window [0xC000_0000, 0xE000_0000) and
#: ECAM at 0xE000_0000 (1 MiB for bus 0, 256 MiB if every bus ever gets one); the
#: IOAPIC page is at 0xFEC0_0000 and the LAPIC page at 0xFEE0_0000.  So the windows
#: start at 0xF000_0000, clear of all of them for far more devices than GSIS allows.
BASE = 0xF000_0000

#: IOAPIC pins for the devices, in device order (Firecracker starts at 5 too).  Left
#: out: 0-2 (PIT, keyboard, cascade), 3 and 4 (COM2, COM1), 8 (RTC), 9 (the SCI of a
#: PC's ACPI), 12 (PS/2 mouse) and 13 (FPU), which guests may claim for legacy devices.
GSIS = (5, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
assert len(GSIS) == MAX_MMIO_DEVICES  # the model refuses descriptions with more devices

#: a level on one IOAPIC pin: (gsi, asserted)
IrqLine = Callable[[int, bool], None]


class MmioWiring:
    def __init__(self) -> None:
        self.transports: list[VirtioMmio] = []
        self._notify_fds: list[int] = []

    def add(self, device: VirtioDevice, irq_line: IrqLine) -> None:
        """The next window and the next GSI for ``device``."""
        index = len(self.transports)
        if index >= len(GSIS):
            raise UsageError(f"transport mmio: at most {len(GSIS)} virtio devices (one interrupt line each)")
        self.transports.append(VirtioMmio(device, functools.partial(irq_line, GSIS[index])))

    def windows(self) -> list[tuple[int, int, VirtioMmio]]:
        """(window address, GSI, transport) of every device, in order."""
        return [(BASE + i * WINDOW_SIZE, GSIS[i], t) for i, t in enumerate(self.transports)]

    def cmdline(self) -> str:
        """What the guest's kernel command line gains: one ``virtio_mmio.device=`` per device."""
        return " ".join(f"virtio_mmio.device=4K@{base:#x}:{gsi}" for base, gsi, _ in self.windows())

    def attach(self, vm: Vm, mmio: MmioBus, io: IoThread) -> None:
        """Put every window on the bus and hang one QueueNotify ioeventfd per queue."""
        for base, gsi, transport in self.windows():
            mmio.insert(base, WINDOW_SIZE, transport, f"virtio-mmio-{gsi}")
            for q in range(len(transport.device.queues)):
                fd = io.new_eventfd(functools.partial(transport.device.notify, q))
                self._notify_fds.append(fd)
                vm.ioeventfd(fd, base + NOTIFY_OFFSET, 4, pio=False, datamatch=q)

    def close(self) -> None:
        for fd in self._notify_fds:
            os.close(fd)
        self._notify_fds.clear()
