"""Putting a vCPU into the state a boot protocol asks for."""

from __future__ import annotations

from .._sys import kvm_h as h
from ..boot.x86 import EntryState, Segment
from ..kvm import Kvm, Vcpu


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


def setup_cpuid(kvm: Kvm, vcpu: Vcpu) -> None:
    """Give the vCPU what KVM supports (refined per vCPU for SMP topology later)."""
    vcpu.set_cpuid(kvm.supported_cpuid())
