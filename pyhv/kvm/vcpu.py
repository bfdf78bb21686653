"""A KVM virtual CPU file descriptor and its shared ``kvm_run`` page."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._sys import kvm_h as h
from .._sys.ioctl import ioctl
from .._sys.libc import map_vcpu_run
from ..errors import KvmError
from ._call import call

if TYPE_CHECKING:
    from .exits import Exit
    from .vm import Vm


class Vcpu:
    def __init__(self, vm: Vm, fd: int, index: int) -> None:
        self.vm = vm
        self.fd = fd
        self.index = index
        try:
            self.run_page = map_vcpu_run(fd, vm.kvm.vcpu_mmap_size)
        except OSError as e:
            os.close(fd)
            raise KvmError("mmap(kvm_run)", e) from None
        self._immediate_exit = h.KVM_RUN_OFF_IMMEDIATE_EXIT

    # --- running ---------------------------------------------------------------

    def run(self) -> int:
        """Enter the guest until the next exit; return ``kvm_run.exit_reason``.

        A signal that interrupts KVM_RUN (how another thread kicks this vCPU
        out, together with :meth:`set_immediate_exit`) returns KVM_EXIT_INTR.
        """
        try:
            ioctl(self.fd, h.KVM_RUN, 0)
        except InterruptedError:
            return h.KVM_EXIT_INTR
        except OSError as e:
            raise KvmError("KVM_RUN", e) from None
        return int.from_bytes(self.run_page[8:12], "little")

    def set_immediate_exit(self, value: bool) -> None:
        """KVM_RUN returns EINTR at once while this is set (KVM_CAP_IMMEDIATE_EXIT)."""
        self.run_page[self._immediate_exit] = 1 if value else 0

    def exit(self) -> Exit:
        """The last exit, decoded."""
        from .exits import decode

        return decode(self.run_page)

    # --- state -----------------------------------------------------------------

    def get_regs(self) -> h.kvm_regs:
        regs = h.kvm_regs()
        call(self.fd, "KVM_GET_REGS", h.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: h.kvm_regs) -> None:
        call(self.fd, "KVM_SET_REGS", h.KVM_SET_REGS, regs)

    def get_sregs(self) -> h.kvm_sregs:
        sregs = h.kvm_sregs()
        call(self.fd, "KVM_GET_SREGS", h.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: h.kvm_sregs) -> None:
        call(self.fd, "KVM_SET_SREGS", h.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> h.kvm_fpu:
        fpu = h.kvm_fpu()
        call(self.fd, "KVM_GET_FPU", h.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: h.kvm_fpu) -> None:
        call(self.fd, "KVM_SET_FPU", h.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """Read MSRs; ones KVM refuses are left out of the result."""
        out: dict[int, int] = {}
        todo = list(indices)
        while todo:
            buf = h.msrs_buffer(todo)
            n = call(self.fd, "KVM_GET_MSRS", h.KVM_GET_MSRS, buf)
            out.update((buf.entries[i].index, buf.entries[i].data) for i in range(n))  # type: ignore[attr-defined]
            todo = todo[n + 1 :]  # skip the one that failed
        return out

    def set_msrs(self, values: dict[int, int]) -> None:
        buf = h.msrs_buffer(list(values))
        for i, data in enumerate(values.values()):
            buf.entries[i].data = data  # type: ignore[attr-defined]
        n = call(self.fd, "KVM_SET_MSRS", h.KVM_SET_MSRS, buf)
        if n != len(values):
            bad = list(values)[n]
            raise KvmError("KVM_SET_MSRS", OSError(22, f"MSR {bad:#x} refused"))

    def set_cpuid(self, entries: list[h.kvm_cpuid_entry2]) -> None:
        buf = h.cpuid_buffer(len(entries))
        for i, entry in enumerate(entries):
            buf.entries[i] = entry  # type: ignore[attr-defined]
        call(self.fd, "KVM_SET_CPUID2", h.KVM_SET_CPUID2, buf)

    def get_lapic(self) -> bytes:
        state = h.kvm_lapic_state()
        call(self.fd, "KVM_GET_LAPIC", h.KVM_GET_LAPIC, state)
        return bytes(state)  # not state.regs: a c_char array stops at the first NUL

    def set_lapic(self, regs: bytes) -> None:
        state = h.kvm_lapic_state.from_buffer_copy(regs)
        call(self.fd, "KVM_SET_LAPIC", h.KVM_SET_LAPIC, state)

    def get_vcpu_events(self) -> h.kvm_vcpu_events:
        events = h.kvm_vcpu_events()
        call(self.fd, "KVM_GET_VCPU_EVENTS", h.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: h.kvm_vcpu_events) -> None:
        call(self.fd, "KVM_SET_VCPU_EVENTS", h.KVM_SET_VCPU_EVENTS, events)

    def get_debugregs(self) -> h.kvm_debugregs:
        dbg = h.kvm_debugregs()
        call(self.fd, "KVM_GET_DEBUGREGS", h.KVM_GET_DEBUGREGS, dbg)
        return dbg

    def set_debugregs(self, dbg: h.kvm_debugregs) -> None:
        call(self.fd, "KVM_SET_DEBUGREGS", h.KVM_SET_DEBUGREGS, dbg)

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] | list[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: ``control`` is KVM_GUESTDBG_* bits (0 turns debugging
        off); ``debugreg`` DR0-DR7 as the host debugger wants them (used with
        KVM_GUESTDBG_USE_HW_BP; DR4/DR5 are ignored).  Only for a vCPU that is not
        inside KVM_RUN (a paused one, or from its own thread)."""
        if len(debugreg) > 8:
            raise KvmError("KVM_SET_GUEST_DEBUG", OSError(22, "at most 8 debug registers"))
        dbg = h.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = value
        call(self.fd, "KVM_SET_GUEST_DEBUG", h.KVM_SET_GUEST_DEBUG, dbg)

    def get_xsave(self) -> bytes:
        xsave = h.kvm_xsave()
        call(self.fd, "KVM_GET_XSAVE", h.KVM_GET_XSAVE, xsave)
        return bytes(xsave)

    def set_xsave(self, data: bytes) -> None:
        xsave = h.kvm_xsave.from_buffer_copy(data)
        call(self.fd, "KVM_SET_XSAVE", h.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> dict[int, int]:
        xcrs = h.kvm_xcrs()
        call(self.fd, "KVM_GET_XCRS", h.KVM_GET_XCRS, xcrs)
        return {xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(min(xcrs.nr_xcrs, h.KVM_MAX_XCRS))}

    def set_xcrs(self, values: dict[int, int]) -> None:
        xcrs = h.kvm_xcrs(nr_xcrs=len(values))
        for i, (xcr, value) in enumerate(values.items()):
            xcrs.xcrs[i].xcr = xcr
            xcrs.xcrs[i].value = value
        call(self.fd, "KVM_SET_XCRS", h.KVM_SET_XCRS, xcrs)

    def set_mp_state(self, state: int) -> None:
        call(self.fd, "KVM_SET_MP_STATE", h.KVM_SET_MP_STATE, h.kvm_mp_state(mp_state=state))

    def get_mp_state(self) -> int:
        state = h.kvm_mp_state()
        call(self.fd, "KVM_GET_MP_STATE", h.KVM_GET_MP_STATE, state)
        return int(state.mp_state)

    def close(self) -> None:
        if self.fd >= 0:
            self.run_page.close()
            os.close(self.fd)
            self.fd = -1
