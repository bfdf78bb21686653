"""A vCPU's whole machine state as plain values.

Read while the vCPU is paused (or stopped): general and special registers,
FPU/XSAVE and XCRs, MSRs, the local APIC page, pending events, the MP state and
debug registers, i.e. everything a context switch between machines must carry
(and what save/restore will write out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._sys import kvm_h as h
from ..kvm import Vcpu

GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")

#: MSRs a vCPU's state includes (those KVM refuses on this host are left out)
STATE_MSRS = [
    0x10,  # IA32_TSC
    0x1B,  # IA32_APIC_BASE
    0x174, 0x175, 0x176,  # SYSENTER_CS/ESP/EIP
    0x1A0,  # IA32_MISC_ENABLE
    0x277,  # IA32_PAT
    0x2FF,  # MTRR default type
    0x6E0,  # IA32_TSC_DEADLINE
    0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084,  # STAR LSTAR CSTAR SFMASK
    0xC000_0102,  # KERNEL_GS_BASE
    0xC000_0103,  # TSC_AUX
    0x4B56_4D00, 0x4B56_4D01,  # kvm-clock wall clock / system time (new MSRs)
    0x4B56_4D02,  # async page fault
    0x4B56_4D04,  # PV EOI
]


@dataclass(frozen=True)
class VcpuState:
    index: int
    regs: dict[str, int]
    sregs: dict[str, Any]
    fpu: dict[str, Any]
    xsave: bytes
    xcrs: dict[int, int]
    msrs: dict[int, int]
    lapic: bytes
    events: dict[str, Any]
    mp_state: int
    debugregs: dict[str, Any]

    @property
    def rip(self) -> int:
        return self.regs["rip"]

    @property
    def apic_id(self) -> int:
        return self.lapic[0x23]  # APIC ID register (offset 0x20), ID in bits 31:24


def _segment(seg: h.kvm_segment) -> dict[str, int]:
    return {f: int(getattr(seg, f)) for f in SEGMENT_FIELDS}


def _struct(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, *_ in obj._fields_:
        v = getattr(obj, name)
        if hasattr(v, "_fields_"):
            out[name] = _struct(v)
        elif hasattr(v, "__len__") and not isinstance(v, (bytes, str)):
            out[name] = [int(x) if isinstance(x, int) else bytes(x) for x in v]
        else:
            out[name] = v
    return out


def read_state(vcpu: Vcpu) -> VcpuState:
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    s: dict[str, Any] = {name: _segment(getattr(sregs, name)) for name in SEGMENTS}
    s["gdt"] = {"base": int(sregs.gdt.base), "limit": int(sregs.gdt.limit)}
    s["idt"] = {"base": int(sregs.idt.base), "limit": int(sregs.idt.limit)}
    for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"):
        s[name] = int(getattr(sregs, name))
    s["interrupt_bitmap"] = [int(x) for x in sregs.interrupt_bitmap]
    return VcpuState(
        index=vcpu.index,
        regs={name: int(getattr(regs, name)) for name in GPRS},
        sregs=s,
        fpu=_struct(vcpu.get_fpu()),
        xsave=vcpu.get_xsave(),
        xcrs=vcpu.get_xcrs(),
        msrs=vcpu.get_msrs(STATE_MSRS),
        lapic=vcpu.get_lapic(),
        events=_struct(vcpu.get_vcpu_events()),
        mp_state=vcpu.get_mp_state(),
        debugregs=_struct(vcpu.get_debugregs()),
    )
