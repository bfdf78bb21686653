"""Human-readable reports of a vCPU's state, for crash messages."""

from __future__ import annotations

from .._sys import kvm_h as h

_GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]


def format_registers(regs: h.kvm_regs, sregs: h.kvm_sregs) -> str:
    lines = [f"  rip={regs.rip:#018x} rflags={regs.rflags:#010x}"]
    for i in range(0, len(_GPRS), 4):
        lines.append("  " + " ".join(f"{n}={getattr(regs, n):#018x}" for n in _GPRS[i : i + 4]))
    lines.append(
        f"  cr0={sregs.cr0:#x} cr2={sregs.cr2:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x}"
    )
    lines.append(
        f"  cs={sregs.cs.selector:#06x} (base={sregs.cs.base:#x} l={sregs.cs.l} db={sregs.cs.db} dpl={sregs.cs.dpl})"
        f" ss={sregs.ss.selector:#06x} gdt={sregs.gdt.base:#x}/{sregs.gdt.limit:#x}"
        f" idt={sregs.idt.base:#x}/{sregs.idt.limit:#x}"
    )
    return "\n".join(lines)
