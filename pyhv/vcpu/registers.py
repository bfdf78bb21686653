"""A small typed view of a vCPU's registers, for introspection and the debugger.

:func:`read_registers` takes KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_FPU of a
vCPU that is not running (paused or stopped) and returns :class:`Registers`,
plain values.  :func:`write_registers` writes back what a debugger may change:
the general registers, rip, rflags and the x87/SSE state.  Segment selectors,
control registers and EFER are read-only here: changing them alone, without
the hidden descriptor state that goes with them, would not mean what it says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._sys import kvm_h as h
from ..kvm import Vcpu
from ..paging import CR0_PG, CR4_LA57, EFER_LMA

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass(frozen=True, slots=True)
class Registers:
    rax: int
    rbx: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    rbp: int
    rsp: int
    r8: int
    r9: int
    r10: int
    r11: int
    r12: int
    r13: int
    r14: int
    r15: int
    rip: int
    rflags: int
    cs: int  # selectors
    ss: int
    ds: int
    es: int
    fs: int
    gs: int
    fs_base: int
    gs_base: int
    cs_base: int
    cpl: int  # the current privilege level (SS.DPL)
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    gdt_base: int
    idt_base: int
    # x87 and SSE (KVM_GET_FPU)
    st: tuple[bytes, ...]  # 8 registers, 10 bytes each (80-bit extended)
    fcw: int
    fsw: int
    ftw: int  # the abridged (FXSAVE) tag byte: bit i set = st(i) holds a value
    fop: int
    fip: int
    fdp: int
    xmm: tuple[bytes, ...]  # 16 registers, 16 bytes each
    mxcsr: int

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def long_mode(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def la57(self) -> bool:
        """5-level paging (CR4.LA57)."""
        return bool(self.cr4 & CR4_LA57)

    @property
    def pc(self) -> int:
        """The linear address of the next instruction (CS base + RIP)."""
        return (self.cs_base + self.rip) & ((1 << 64) - 1)

    def replace(self, **changes: int | tuple[bytes, ...]) -> Registers:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def read_registers(vcpu: Vcpu) -> Registers:
    regs, sregs, fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
    return Registers(
        **{name: int(getattr(regs, name)) for name in (*GPRS, "rip", "rflags")},
        **{name: int(getattr(sregs, name).selector) for name in SELECTORS},
        fs_base=int(sregs.fs.base), gs_base=int(sregs.gs.base), cs_base=int(sregs.cs.base),
        cpl=int(sregs.ss.dpl),
        **{name: int(getattr(sregs, name)) for name in CONTROL},
        gdt_base=int(sregs.gdt.base), idt_base=int(sregs.idt.base),
        st=tuple(bytes(fpu.fpr[i])[:10] for i in range(8)),
        fcw=int(fpu.fcw), fsw=int(fpu.fsw), ftw=int(fpu.ftwx), fop=int(fpu.last_opcode),
        fip=int(fpu.last_ip), fdp=int(fpu.last_dp),
        xmm=tuple(bytes(fpu.xmm[i]) for i in range(16)), mxcsr=int(fpu.mxcsr),
    )


def write_registers(vcpu: Vcpu, new: Registers) -> None:
    """Write the general registers, rip, rflags and x87/SSE state of ``new``."""
    regs = h.kvm_regs(**{name: getattr(new, name) & ((1 << 64) - 1) for name in (*GPRS, "rip", "rflags")})
    vcpu.set_regs(regs)
    fpu = vcpu.get_fpu()
    for i, value in enumerate(new.st):
        for j, b in enumerate(value[:10].ljust(10, b"\0")):
            fpu.fpr[i][j] = b
    for i, value in enumerate(new.xmm):
        for j, b in enumerate(value[:16].ljust(16, b"\0")):
            fpu.xmm[i][j] = b
    fpu.fcw, fpu.fsw, fpu.ftwx = new.fcw & 0xFFFF, new.fsw & 0xFFFF, new.ftw & 0xFF
    fpu.last_opcode, fpu.last_ip, fpu.last_dp = new.fop & 0x7FF, new.fip, new.fdp
    fpu.mxcsr = new.mxcsr & 0xFFFF_FFFF
    vcpu.set_fpu(fpu)
