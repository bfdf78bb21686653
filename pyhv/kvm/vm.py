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
    def __init__(self, kvm: Kvm, fd: int) -> None:
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

    def create_pit2(self) -> None:
        """The in-kernel i8254 PIT (ports 0x40-0x43) with a dummy speaker port 0x61."""
        call(self.fd, "KVM_CREATE_PIT2", h.KVM_CREATE_PIT2, h.kvm_pit_config(flags=h.KVM_PIT_SPEAKER_DUMMY))

    def irq_line(self, irq: int, level: int) -> None:
        call(self.fd, "KVM_IRQ_LINE", h.KVM_IRQ_LINE, h.kvm_irq_level(irq=irq, level=level))

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Signalling eventfd ``fd`` raises GSI ``gsi`` (edge) without entering user space."""
        flags = h.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        call(self.fd, "KVM_IRQFD", h.KVM_IRQFD, h.kvm_irqfd(fd=fd, gsi=gsi, flags=flags))

    def set_gsi_routing(self, irqchip: list[tuple[int, int, int]], msi: list[tuple[int, int, int]]) -> None:
        """Replace KVM's GSI routing table: ``irqchip`` entries (gsi, chip, pin) and
        ``msi`` entries (gsi, address, data).  The table replaces the default one
        KVM_CREATE_IRQCHIP made, so a caller passes the interrupt controllers' pins too."""
        entries = [
            h.kvm_irq_routing_entry(gsi=gsi, type=h.KVM_IRQ_ROUTING_IRQCHIP,
                                    u=h.kvm_irq_routing_entry_u(irqchip=h.kvm_irq_routing_irqchip(irqchip=chip, pin=pin)))
            for gsi, chip, pin in irqchip
        ] + [
            h.kvm_irq_routing_entry(gsi=gsi, type=h.KVM_IRQ_ROUTING_MSI, u=h.kvm_irq_routing_entry_u(
                msi=h.kvm_irq_routing_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data)))
            for gsi, address, data in msi
        ]
        call(self.fd, "KVM_SET_GSI_ROUTING", h.KVM_SET_GSI_ROUTING, h.irq_routing(entries))

    def ioeventfd(
        self, fd: int, addr: int, length: int, pio: bool, datamatch: int | None = None, deassign: bool = False
    ) -> None:
        """A guest write of ``length`` bytes at ``addr`` signals eventfd ``fd`` without a user-space exit."""
        flags = (h.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (h.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= h.KVM_IOEVENTFD_FLAG_DATAMATCH
        req = h.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        call(self.fd, "KVM_IOEVENTFD", h.KVM_IOEVENTFD, req)

    def signal_msi(self, address: int, data: int) -> int:
        """Deliver one MSI; returns >0 if delivered, 0 if the guest blocked it."""
        msi = h.kvm_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data)
        return call(self.fd, "KVM_SIGNAL_MSI", h.KVM_SIGNAL_MSI, msi)

    def get_clock(self) -> int:
        data = h.kvm_clock_data()
        call(self.fd, "KVM_GET_CLOCK", h.KVM_GET_CLOCK, data)
        return int(data.clock)

    def set_clock(self, clock: int) -> None:
        call(self.fd, "KVM_SET_CLOCK", h.KVM_SET_CLOCK, h.kvm_clock_data(clock=clock))

    def get_irqchip(self, chip_id: int) -> bytes:
        """The in-kernel PIC (0 master, 1 slave) or IOAPIC (2) state, as the kernel's 512-byte union."""
        chip = h.kvm_irqchip(chip_id=chip_id)
        call(self.fd, "KVM_GET_IRQCHIP", h.KVM_GET_IRQCHIP, chip)
        return bytes(chip.chip)

    def set_irqchip(self, chip_id: int, data: bytes) -> None:
        chip = h.kvm_irqchip(chip_id=chip_id)
        chip.chip[:] = list(data.ljust(len(chip.chip), b"\0"))
        call(self.fd, "KVM_SET_IRQCHIP", h.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> bytes:
        state = h.kvm_pit_state2()
        call(self.fd, "KVM_GET_PIT2", h.KVM_GET_PIT2, state)
        return bytes(state)

    def set_pit2(self, data: bytes) -> None:
        state = h.kvm_pit_state2.from_buffer_copy(data)
        call(self.fd, "KVM_SET_PIT2", h.KVM_SET_PIT2, state)

    def get_dirty_log(self, slot: int, bitmap_address: int) -> None:
        """Fill the bitmap at host address ``bitmap_address`` (one bit per page of
        ``slot``) with the pages written since the last call, and clear KVM's copy."""
        log = h.kvm_dirty_log(slot=slot, dirty_bitmap=bitmap_address)
        call(self.fd, "KVM_GET_DIRTY_LOG", h.KVM_GET_DIRTY_LOG, log)

    def create_vcpu(self, index: int) -> Vcpu:
        from .vcpu import Vcpu

        fd = call(self.fd, "KVM_CREATE_VCPU", h.KVM_CREATE_VCPU, index)
        return Vcpu(self, fd, index)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
