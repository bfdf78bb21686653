"""A KVM virtual machine file descriptor."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._sys import kvm_h as h
from ._call import call

if TYPE_CHECKING:
    from .system import Kvm
    from .vcpu import Vcpu

#: where KVM keeps the real-mode TSS and identity map: three pages just below
#: the BIOS area at the top of the first 4 GiB, which pyhv never gives to RAM.
TSS_ADDR = 0xFFFB_D000


class Vm:
    def __init__(self, kvm: "Kvm", fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.irqchip = False

    def set_tss_addr(self, addr: int = TSS_ADDR) -> None:
        call(self.fd, "KVM_SET_TSS_ADDR", h.KVM_SET_TSS_ADDR, addr)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        region = h.kvm_userspace_memory_region(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        call(self.fd, "KVM_SET_USER_MEMORY_REGION", h.KVM_SET_USER_MEMORY_REGION, region)

    def create_irqchip(self) -> None:
        call(self.fd, "KVM_CREATE_IRQCHIP", h.KVM_CREATE_IRQCHIP, 0)
        self.irqchip = True

    def irq_line(self, irq: int, level: int) -> None:
        call(self.fd, "KVM_IRQ_LINE", h.KVM_IRQ_LINE, h.kvm_irq_level(irq=irq, level=level))

    def create_vcpu(self, index: int) -> "Vcpu":
        from .vcpu import Vcpu

        fd = call(self.fd, "KVM_CREATE_VCPU", h.KVM_CREATE_VCPU, index)
        return Vcpu(self, fd, index)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
