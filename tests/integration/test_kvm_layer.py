"""The kvm/ wrappers against the real /dev/kvm (no guest code runs)."""

from __future__ import annotations

import os

import pytest

from pyhv._sys import kvm_h as h
from pyhv.errors import KvmError
from pyhv.kvm import Kvm, Vm
from pyhv.memory import GuestMemory, MiB

pytestmark = pytest.mark.kvm


@pytest.fixture
def vm() -> Vm:
    kvm = Kvm()
    vm = kvm.create_vm()
    mem = GuestMemory(16 * MiB)
    mem.register(vm)
    vm.create_irqchip()
    yield vm
    vm.close()
    mem.close()
    kvm.close()


def test_extensions_pyhv_relies_on_are_present() -> None:
    kvm = Kvm()
    caps = [kvm.check_extension(c) for c in (h.KVM_CAP_IRQCHIP, h.KVM_CAP_IOEVENTFD, h.KVM_CAP_IRQFD, h.KVM_CAP_IMMEDIATE_EXIT)]
    kvm.close()
    assert all(caps)


def test_supported_cpuid_includes_the_kvm_signature_leaf() -> None:
    kvm = Kvm()
    leaves = {e.function for e in kvm.supported_cpuid()}
    kvm.close()
    assert 0x4000_0000 in leaves and 0x1 in leaves


def test_overlapping_memslot_is_refused_with_the_ioctl_name(vm: Vm) -> None:
    with pytest.raises(KvmError, match="KVM_SET_USER_MEMORY_REGION"):
        vm.set_user_memory_region(9, 0x1000, 0x1000, 0)


def test_irqfd_and_ioeventfd_register_and_unregister(vm: Vm) -> None:
    irq, notify = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    vm.irqfd(irq, 5)
    vm.ioeventfd(notify, 0xD000_0000, 4, pio=False)
    vm.ioeventfd(notify, 0xD000_0000, 4, pio=False, deassign=True)
    vm.irqfd(irq, 5, deassign=True)
    os.close(irq)
    os.close(notify)


def test_duplicate_irqfd_is_refused(vm: Vm) -> None:
    irq = os.eventfd(0, os.EFD_CLOEXEC)
    vm.irqfd(irq, 5)
    with pytest.raises(KvmError, match="KVM_IRQFD"):
        vm.irqfd(irq, 5)
    os.close(irq)


def test_vcpu_state_round_trips_through_kvm(vm: Vm) -> None:
    vcpu = vm.create_vcpu(0)
    regs = vcpu.get_regs()
    regs.rax, regs.rip = 0x1234, 0x100000
    vcpu.set_regs(regs)
    lapic = vcpu.get_lapic()
    vcpu.set_lapic(lapic)
    back = vcpu.get_regs()
    vcpu.close()
    assert (back.rax, back.rip, len(lapic)) == (0x1234, 0x100000, 1024)


def test_guest_clock_can_be_read_and_set(vm: Vm) -> None:
    vm.set_clock(10**12)
    assert vm.get_clock() >= 10**12
