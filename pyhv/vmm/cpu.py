"""Putting a vCPU into the state a boot protocol asks for."""

from __future__ import annotations

from .._sys import kvm_h as h
from ..boot.cpuid import CpuidEntry, vcpu_cpuid
from ..boot.x86 import EntryState, Segment
from ..kvm import Vcpu


def _segment(dst: h.kvm_segment, src: Segment) -> None:
    dst.base = src.base
    dst.limit = src.limit
    dst.selector = src.selector
    dst.type = src.type
    dst.present = int(src.present)
    dst.dpl = src.dpl
    dst.db = int(src.db)
    dst.s = int(src.s)
    dst.l = int(src.l)
    dst.g = int(src.g)
    dst.avl = 0
    dst.unusable = 0


def apply_entry_state(vcpu: Vcpu, entry: EntryState) -> None:
    sregs = vcpu.get_sregs()
    _segment(sregs.cs, entry.cs)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _segment(getattr(sregs, name), entry.ds)
    sregs.gdt.base = entry.gdt_base
    sregs.gdt.limit = entry.gdt_limit
    sregs.cr0 = entry.cr0
    sregs.cr3 = entry.cr3
    sregs.cr4 = entry.cr4
    sregs.efer = entry.efer
    vcpu.set_sregs(sregs)
    regs = h.kvm_regs()
    regs.rip = entry.rip
    regs.rsp = entry.rsp
    regs.rflags = entry.rflags
    for name, value in entry.regs.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)


def supported_entries(raw: list[h.kvm_cpuid_entry2]) -> list[CpuidEntry]:
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in raw]


def setup_cpuid(vcpu: Vcpu, supported: list[CpuidEntry], vcpus: int) -> None:
    """CPUID for this vCPU: APIC ID = vCPU index, topology of ``vcpus`` cores."""
    entries = []
    for e in vcpu_cpuid(supported, apic_id=vcpu.index, vcpus=vcpus):
        entries.append(
            h.kvm_cpuid_entry2(
                function=e.function, index=e.subleaf, flags=e.flags, eax=e.eax, ebx=e.ebx, ecx=e.ecx, edx=e.edx
            )
        )
    vcpu.set_cpuid(entries)


# MSRs given architectural reset values (SDM vol. 3, table 10-1; what firmware leaves)
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SYSCALL_MASK = 0xC000_0084
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_IA32_TSC = 0x10
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRBACK = 6

BOOT_MSRS = {
    MSR_IA32_SYSENTER_CS: 0,
    MSR_IA32_SYSENTER_ESP: 0,
    MSR_IA32_SYSENTER_EIP: 0,
    MSR_STAR: 0,
    MSR_LSTAR: 0,
    MSR_CSTAR: 0,
    MSR_SYSCALL_MASK: 0,
    MSR_KERNEL_GS_BASE: 0,
    MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
    MSR_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRBACK,
}


def setup_msrs(vcpu: Vcpu) -> None:
    vcpu.set_msrs(BOOT_MSRS)
