"""Completions that never pass through Python: irqfds routed to MSI-X messages.

A vhost-user back end signals a queue's *call* eventfd when it has used
buffers.  KVM turns that into an interrupt by itself through an irqfd
(KVM_IRQFD) on a GSI whose route (KVM_SET_GSI_ROUTING) is an MSI message: the
address and data the guest wrote into the queue's MSI-X table entry.  So the
route must follow the guest: when it reprograms the entry, the route changes;
when the entry, the function or MSI-X as a whole is masked or disabled (or
the queue has no vector, or the driver turned bus mastering off), the irqfd is detached and the I/O thread reads the
eventfd instead, handing each signal to the transport, which keeps it pending
in the PBA as the MSI-X rules say.  Unmasking attaches the irqfd again (KVM
fires at once if the eventfd was signalled meanwhile) and the table delivers
what was pending.

KVM_SET_GSI_ROUTING replaces the whole table, including the default routes
KVM_CREATE_IRQCHIP installed for the PIC and IOAPIC pins (which KVM_IRQ_LINE
uses), so :class:`GsiRoutes` always writes those back first, exactly as the
kernel's default table has them: GSI 0-15 on the PICs and the IOAPIC, 16-23
on the IOAPIC.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._sys import kvm_h as h
from ..errors import PyhvError
from ..kvm import Vm
from .iothread import IoThread

IOAPIC_PINS = 24
#: the first GSI free for MSI routes
FIRST_MSI_GSI = IOAPIC_PINS


def default_irqchip_routes() -> list[tuple[int, int, int]]:
    """(gsi, chip, pin) as KVM_CREATE_IRQCHIP sets them up (virt/kvm/irqchip.c, x86 irq_comm.c)."""
    routes = []
    for gsi in range(IOAPIC_PINS):
        routes.append((gsi, h.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < 16:
            routes.append((gsi, h.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else h.KVM_IRQCHIP_PIC_SLAVE, gsi % 8))
    return routes


class GsiRoutes:
    """The VM's routing table: the interrupt controllers' pins and one MSI route per GSI handed out."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self._lock = threading.Lock()
        self._msi: dict[int, tuple[int, int]] = {}
        self._next = FIRST_MSI_GSI

    def allocate(self) -> int:
        with self._lock:
            gsi, self._next = self._next, self._next + 1
            return gsi

    def set(self, gsi: int, address: int, data: int) -> None:
        """Route ``gsi`` to the MSI (``address``, ``data``); the table is written only on change."""
        with self._lock:
            if self._msi.get(gsi) == (address, data):
                return
            self._msi[gsi] = (address, data)
            self.vm.set_gsi_routing(default_irqchip_routes(), [(g, a, d) for g, (a, d) in sorted(self._msi.items())])


class CallVector:
    """One queue's call eventfd: an irqfd on its MSI route while the vector can be
    delivered directly, else read by the I/O thread and handed to ``relay``.

    ``target()`` says where a message would go now: (address, data), or None
    while the guest has it masked, disabled or unassigned."""

    def __init__(self, routes: GsiRoutes, io: IoThread, target: Any, relay: Any) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._routes = routes
        self._io = io
        self._target = target
        self._relay = relay
        self._gsi = routes.allocate()
        self._lock = threading.Lock()
        self._attached = False
        self._relaying = False

    def sync(self) -> None:
        """Follow the guest's MSI-X programming (called after any change to it)."""
        with self._lock:
            target = self._target()
            vm = self._routes.vm
            if target is not None:
                self._routes.set(self._gsi, *target)
                if self._relaying:
                    self._io.remove(self.fd)
                    self._relaying = False
                if not self._attached:
                    vm.irqfd(self.fd, self._gsi)  # fires at once if the eventfd was signalled meanwhile
                    self._attached = True
            else:
                if self._attached:
                    vm.irqfd(self.fd, self._gsi, deassign=True)
                    self._attached = False
                if not self._relaying:
                    self._io.add_eventfd(self.fd, self._relay)
                    self._relaying = True

    def close(self) -> None:
        with self._lock:
            if self._attached:
                try:
                    self._routes.vm.irqfd(self.fd, self._gsi, deassign=True)
                except PyhvError:
                    pass  # the VM is going away too: it drops its irqfds itself
                self._attached = False
            if self._relaying:
                self._io.remove(self.fd)
                self._relaying = False
            os.close(self.fd)
