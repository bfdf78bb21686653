"""A machine under a debugger: all-stop, breakpoints, single steps, guest-virtual memory.

Threads: the debugger's thread (the GDB session) calls every method here
while the vCPUs it touches are paused; :meth:`DebugTarget._on_exit` runs on a
vCPU thread (it is that thread's ``debugger`` hook, see pyhv/vcpu/thread.py)
and sees only the exits the run loop does not handle itself, so port and MMIO
exits cost nothing more with a debugger attached.  A vCPU that stops for the
debugger records a :class:`StopEvent`, pauses itself through its run-state
machine and writes a byte to :attr:`wake_fd`; the debugger's thread then
pauses all the others (all-stop).

How KVM reports things (Documentation/virt/kvm/api.rst, KVM_SET_GUEST_DEBUG):
with KVM_GUESTDBG_USE_SW_BP every #BP exits with ``debug.arch.exception`` 3
and ``pc`` at the int3; with KVM_GUESTDBG_SINGLESTEP or USE_HW_BP a #DB exits
with exception 1 and DR6 saying why (BS, bit 14, for a step; B0-B3 for
DR0-DR3).  Instruction breakpoints are faults: the vCPU stops before the
instruction and RFLAGS.RF would be needed to get past one; we never rely on
RF (the PVM host below ignores it) and step over with the breakpoint removed,
as GDB itself does.

Some facts about the PVM host (kvm_pvm: guest ring 0 emulated, ring 3 native),
measured with the probe guest, and what we do about them:

- In ring 0 debug registers work as instruction breakpoints and single-step
  works, both reported as KVM_EXIT_DEBUG.
- An int3 executed in ring 0 is not reported: the instruction emulator fails
  (KVM_EXIT_INTERNAL_ERROR, emulation failure) with RIP still at the int3, and
  the vCPU runs on normally once the byte is put back.  So an emulation
  failure at one of our int3s is a breakpoint hit.
- In ring 3 nothing is reported: an int3 goes to the guest's own #BP handler,
  single-step traps go to the guest's #DB handler, and debug registers never
  fire.  But those handlers run in ring 0, where instruction breakpoints do
  work: with a *catch point* (a debug register on the guest's IDT entry for
  vector 3, or 1 while stepping) we stop the vCPU on the handler's first
  instruction, find the ring-3 state in the exception frame the delivery
  pushed (RIP, CS, RFLAGS, RSP, SS: neither vector has an error code) and put
  it back (:meth:`_unwind`), as if the exception had never been delivered.
  An exception that is not ours is passed on: one step in ring 0 with the
  catch points off, then they are back.
- Data watchpoints fire in neither ring (the emulator does not check data
  breakpoints; ring 3 runs without our debug registers): Z2/Z3/Z4 are refused.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from .._sys import kvm_h as h
from ..errors import MemoryAccessError, PyhvError
from ..paging import EFER_LMA, NotMapped, translate
from ..vcpu.registers import Registers, read_registers, write_registers

if TYPE_CHECKING:
    from ..kvm.exits import Exit
    from ..vcpu.thread import VcpuThread

PAGE = 4096
INT3 = 0xCC
TF = 1 << 8
SIGINT, SIGTRAP = 2, 5
DR6_BS = 1 << 14
#: DR7 RW field per watch kind, and LEN field per length
_DR7_RW = {"exec": 0b00, "write": 0b01, "access": 0b11, "read": 0b11}
_DR7_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
PVM_MODULE = "/sys/module/kvm_pvm"


def host_is_pvm() -> bool:
    """Whether /dev/kvm here is PVM (see the module docstring for what that changes)."""
    return os.path.isdir(PVM_MODULE)


class StopEvent(NamedTuple):
    vcpu: int  # index
    signal: int  # SIGTRAP or SIGINT
    reason: str  # stop-reply fields: "swbreak:;", "hwbreak:;", "watch:ADDR;", or ""


class HwPoint(NamedTuple):
    addr: int
    kind: str  # exec, write, read, access
    length: int


class DebugTarget:
    def __init__(self, machine: Any, pvm: bool | None = None) -> None:
        self.machine = machine
        self.vcpus: list[VcpuThread] = list(machine.vcpus)
        self.pvm = host_is_pvm() if pvm is None else pvm
        self.sw: dict[int, tuple[int, int]] = {}  # linear address -> (guest-physical, original byte)
        self.hw: list[HwPoint | None] = [None] * 4
        self._stepping: set[int] = set()
        self._passing: set[int] = set()  # vCPUs stepping over a catch point
        self._no_idt: set[int] = set()  # vCPUs stepped until their IDT is there (PVM)
        self._catch: dict[int, dict[int, int]] = {}  # vCPU -> {handler address: vector}
        self._events: list[StopEvent] = []
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)

    # --- attach / detach -----------------------------------------------------------

    def attach(self) -> None:
        for v in self.vcpus:
            v.debugger = self._on_exit
        self.pause_all()

    def detach(self) -> None:
        """Take out every breakpoint, turn guest debugging off and let the guest run on."""
        self.pause_all()
        for addr in list(self.sw):
            self.remove_sw(addr)
        self.hw = [None] * 4
        self._stepping.clear()
        self._passing.clear()
        self._no_idt.clear()
        with self._lock:
            self._events.clear()
        for v in self.vcpus:
            v.debugger = None
            if v.state != v.STOPPED:
                try:
                    v.vcpu.set_guest_debug(0)
                except PyhvError as e:
                    self._say(f"vcpu{v.vcpu.index}: cannot turn debugging off: {e}")
        self._run(list(self.vcpus))

    def close(self) -> None:
        os.close(self.wake_fd)
        os.close(self._wake_w)

    # --- all-stop --------------------------------------------------------------------

    def ended(self) -> bool:
        return all(v.state == v.STOPPED for v in self.vcpus)

    def pause_all(self, timeout: float = 5.0) -> None:
        for v in self.vcpus:
            v.request(v.PAUSED)
        for v in self.vcpus:
            v.wait_state(v.PAUSED, timeout)

    def take_event(self) -> StopEvent | None:
        """The first stop not yet reported; drains the wake-up pipe."""
        try:
            os.read(self.wake_fd, 64)
        except BlockingIOError:
            pass
        with self._lock:
            return self._events.pop(0) if self._events else None

    def interrupt(self, vcpu: int) -> StopEvent:
        self.pause_all()
        return StopEvent(vcpu, SIGINT, "")

    def resume(self, step: int | None = None) -> bool:
        """Continue every vCPU, or single-step vCPU ``step`` alone (the others stay
        paused).  False if a stop is still waiting to be reported (nothing runs)."""
        with self._lock:
            if self._events:
                os.write(self._wake_w, b"!")
                return False
        self._stepping = {step} if step is not None else set()
        targets = [self.vcpus[step]] if step is not None else self.vcpus
        for v in targets:
            self._arm(v, v.vcpu.index in self._stepping)
        self._run(targets)
        return True

    def _run(self, targets: list[VcpuThread]) -> None:
        for v in targets:
            if v.state != v.STOPPED:
                v.request(v.RUNNING)

    # --- registers and memory ----------------------------------------------------------

    def registers(self, vcpu: int) -> Registers:
        return read_registers(self.vcpus[vcpu].vcpu)

    def set_registers(self, vcpu: int, regs: Registers) -> None:
        write_registers(self.vcpus[vcpu].vcpu, regs)

    def _physical(self, regs: Registers, va: int) -> tuple[int, int]:
        """(guest-physical address of ``va``, bytes to the end of its page)."""
        if not regs.paging:
            return va, PAGE - (va & (PAGE - 1))
        if not regs.long_mode:
            raise NotMapped(va, 2, "not walked: 32-bit paging is not supported")
        t = translate(self.machine.memory, regs.cr3, va, regs.la57)
        return t.gpa, t.page_size - (t.gpa & (t.page_size - 1))

    def read_memory(self, vcpu: int, va: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``va`` in vCPU ``vcpu``'s address space; stops
        early at an unmapped page, raises if the first byte is not readable.  Our
        int3s read as the bytes they replaced."""
        regs = self.registers(vcpu)
        out = bytearray()
        while len(out) < size:
            try:
                gpa, room = self._physical(regs, va + len(out))
                out += self.machine.memory.read(gpa, min(room, size - len(out)))
            except (NotMapped, MemoryAccessError):
                if not out:
                    raise
                break
        for addr, (_, byte) in self.sw.items():
            if va <= addr < va + len(out):
                out[addr - va] = byte
        return bytes(out)

    def write_memory(self, vcpu: int, va: int, data: bytes) -> None:
        """All of ``data`` at ``va`` or nothing (every page is translated first)."""
        regs = self.registers(vcpu)
        pieces = []
        done = 0
        while done < len(data):
            gpa, room = self._physical(regs, va + done)
            n = min(room, len(data) - done)
            if not self.machine.memory.contains(gpa, n):
                raise MemoryAccessError(f"guest-physical {gpa:#x}+{n:#x} is not RAM")
            pieces.append((gpa, data[done:done + n]))
            done += n
        for gpa, piece in pieces:
            self.machine.memory.write(gpa, piece)
        for addr, (gpa, _) in list(self.sw.items()):
            if va <= addr < va + len(data):  # the debugger wrote over one of our int3s
                self.sw[addr] = (gpa, data[addr - va])
                self.machine.memory.write(gpa, bytes((INT3,)))

    # --- breakpoints -----------------------------------------------------------------

    def insert_sw(self, vcpu: int, addr: int) -> None:
        if addr in self.sw:
            return
        gpa, _ = self._physical(self.registers(vcpu), addr)
        original = self.machine.memory.read(gpa, 1)[0]
        self.machine.memory.write(gpa, bytes((INT3,)))
        self.sw[addr] = (gpa, original)

    def remove_sw(self, addr: int) -> None:
        entry = self.sw.pop(addr, None)
        if entry is not None:
            gpa, original = entry
            self.machine.memory.write(gpa, bytes((original,)))

    def insert_hw(self, addr: int, kind: str, length: int) -> None:
        """A debug register for an instruction breakpoint (``exec``) or a watchpoint."""
        if kind != "exec":
            if self.pvm:
                raise PyhvError("data watchpoints are not reported by this host (PVM: neither its "
                                "instruction emulator in ring 0 nor ring 3 honours data breakpoints)")
            if length not in _DR7_LEN or addr % length:
                raise PyhvError(f"a watchpoint covers 1, 2, 4 or 8 aligned bytes, not {length} at {addr:#x}")
        point = HwPoint(addr, kind, 1 if kind == "exec" else length)
        if point in self.hw:
            return
        free = [i for i, p in enumerate(self.hw) if p is None]
        if len(free) <= (2 if self.pvm else 0):  # keep two for the catch points (PVM)
            raise PyhvError("no debug register free for another hardware breakpoint or watchpoint")
        if kind == "exec" and self.pvm:
            self._say_once("hw", "hardware breakpoints fire only in guest ring 0 on this host (PVM)")
        self.hw[free[0]] = point

    def remove_hw(self, addr: int, kind: str, length: int) -> None:
        point = HwPoint(addr, kind, 1 if kind == "exec" else length)
        self.hw = [None if p == point else p for p in self.hw]

    # --- KVM_SET_GUEST_DEBUG -----------------------------------------------------------

    def _arm(self, v: VcpuThread, step: bool, catch: bool = True) -> None:
        dr = [0] * 8
        dr7 = 0
        for i, p in enumerate(self.hw):
            if p is not None:
                dr[i] = p.addr
                dr7 |= (1 << (2 * i)) | (_DR7_RW[p.kind] << (16 + 4 * i)) | (_DR7_LEN[p.length] << (18 + 4 * i))
        catches: dict[int, int] = {}
        self._no_idt.discard(v.vcpu.index)
        if self.pvm and catch:
            free = [i for i, p in enumerate(self.hw) if p is None]
            for vector in ([3] if self.sw else []) + ([1] if step else []):
                addr = self._handler(v, vector)
                if addr is None:
                    # No 64-bit IDT yet (the guest is still setting up, in ring 0):
                    # step until it has one, then put the catch points on it.
                    self._no_idt.add(v.vcpu.index)
                    continue
                if not free:
                    self._say_once(f"catch{vector}", f"no debug register left to watch the guest's vector {vector} "
                                   "handler: ring-3 " + ("breakpoints" if vector == 3 else "steps") + " will not stop")
                    continue
                i = free.pop()
                dr[i] = addr
                dr7 |= 1 << (2 * i)
                catches[addr] = vector
            step = step or v.vcpu.index in self._no_idt
        self._catch[v.vcpu.index] = catches
        control = 0
        if self.sw:
            control |= h.KVM_GUESTDBG_USE_SW_BP
        if dr7:
            control |= h.KVM_GUESTDBG_USE_HW_BP
            dr[7] = dr7
        if step:
            control |= h.KVM_GUESTDBG_SINGLESTEP
        if control:
            control |= h.KVM_GUESTDBG_ENABLE
        v.vcpu.set_guest_debug(control, dr)

    def _handler(self, v: VcpuThread, vector: int) -> int | None:
        """The address of the guest's handler for ``vector`` (its 64-bit IDT gate), if present."""
        sregs = v.vcpu.get_sregs()
        if not sregs.efer & EFER_LMA or 16 * vector + 15 > sregs.idt.limit:
            return None
        try:
            gate = self.read_memory(v.vcpu.index, sregs.idt.base + 16 * vector, 16)
        except (NotMapped, MemoryAccessError):
            return None
        if len(gate) < 16 or gate[5] & 0x8E != 0x8E:  # present, a 64-bit interrupt or trap gate
            return None
        return int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16 | \
            int.from_bytes(gate[8:12], "little") << 32

    # --- on the vCPU thread ----------------------------------------------------------

    def _on_exit(self, v: VcpuThread, exit: Exit) -> bool:
        from ..kvm.exits import DebugExit, InternalErrorExit

        i = v.vcpu.index
        if isinstance(exit, DebugExit):
            if i in self._passing:  # one step past a catch point: arm it again
                self._passing.discard(i)
                self._arm(v, i in self._stepping)
                return True
            if i in self._no_idt and i not in self._stepping and not exit.dr6 & 0xF:
                self._arm(v, False)  # a step of our own, waiting for the IDT
                return True
            vector = self._catch.get(i, {}).get(exit.pc)
            if vector is not None and exit.dr6 & 0xF:
                return self._caught(v, vector)
            if exit.exception == 3:
                if exit.pc in self.sw:
                    return self._stop(v, SIGTRAP, "swbreak:;")
                return self._give_back_int3(v)
            hit = [p for s, p in enumerate(self.hw) if p is not None and exit.dr6 >> s & 1]
            if hit:
                p = hit[0]
                kind = {"exec": "hwbreak", "write": "watch", "read": "rwatch", "access": "awatch"}[p.kind]
                return self._stop(v, SIGTRAP, "hwbreak:;" if kind == "hwbreak" else f"{kind}:{p.addr:x};")
            return self._stop(v, SIGTRAP, "")  # a step (DR6.BS) or a debug exit we cannot place
        if isinstance(exit, InternalErrorExit) and exit.suberror == h.KVM_INTERNAL_ERROR_EMULATION and self.sw:
            regs = read_registers(v.vcpu)
            if regs.pc in self.sw:  # PVM: the emulator gave up on our int3 in ring 0
                return self._stop(v, SIGTRAP, "swbreak:;")
        return False

    def _stop(self, v: VcpuThread, signal: int, reason: str) -> bool:
        with self._lock:
            self._events.append(StopEvent(v.vcpu.index, signal, reason))
        v.request(v.PAUSED)
        os.write(self._wake_w, b"!")
        return True

    def _caught(self, v: VcpuThread, vector: int) -> bool:
        """The vCPU is on the first instruction of the guest's #BP or #DB handler."""
        i = v.vcpu.index
        regs = read_registers(v.vcpu)
        try:
            frame = self.read_memory(i, regs.rsp, 40)
        except (NotMapped, MemoryAccessError):
            frame = b""
        if len(frame) == 40:
            rip, cs, rflags, rsp, ss = (int.from_bytes(frame[k:k + 8], "little") for k in range(0, 40, 8))
            if cs & 3 == 3:
                if vector == 3 and rip - 1 in self.sw:
                    self._unwind(v, rip - 1, cs, rflags, rsp, ss)
                    return self._stop(v, SIGTRAP, "swbreak:;")
                if vector == 1 and i in self._stepping:
                    self._unwind(v, rip, cs, rflags, rsp, ss)
                    return self._stop(v, SIGTRAP, "")
        # the guest's own exception: let its handler run
        self._passing.add(i)
        self._arm(v, True, catch=False)
        return True

    def _unwind(self, v: VcpuThread, rip: int, cs: int, rflags: int, rsp: int, ss: int) -> None:
        """Put back the ring-3 state an exception delivery saved, as if it had not happened."""
        vcpu = v.vcpu
        sregs = vcpu.get_sregs()
        new_cs, new_ss = self._segment(v, sregs, cs), self._segment(v, sregs, ss)
        regs = vcpu.get_regs()
        regs.rip, regs.rsp, regs.rflags = rip, rsp, rflags & ~TF
        sregs.cs, sregs.ss = new_cs, new_ss
        vcpu.set_regs(regs)
        vcpu.set_sregs(sregs)

    def _segment(self, v: VcpuThread, sregs: h.kvm_sregs, selector: int) -> h.kvm_segment:
        """The segment register state loading ``selector`` from the GDT gives."""
        if selector < 4:
            return h.kvm_segment(selector=selector, unusable=1)
        if selector & 4 or (selector | 7) > sregs.gdt.limit:
            raise PyhvError(f"selector {selector:#x} is not in the GDT")
        d = self.read_memory(v.vcpu.index, sregs.gdt.base + (selector & ~7), 8)
        limit = int.from_bytes(d[0:2], "little") | (d[6] & 0xF) << 16
        base = int.from_bytes(d[2:4], "little") | d[4] << 16 | d[7] << 24
        access, flags = d[5], d[6] >> 4
        g = flags >> 3 & 1
        return h.kvm_segment(
            base=base, limit=(limit << 12 | 0xFFF) if g else limit, selector=selector,
            type=(access & 0xF) | 1, present=access >> 7, dpl=access >> 5 & 3, db=flags >> 2 & 1,
            s=access >> 4 & 1, l=flags >> 1 & 1, g=g, avl=flags & 1, unusable=0,
        )

    def _give_back_int3(self, v: VcpuThread) -> bool:
        """A host that intercepts every #BP (USE_SW_BP): the guest's own int3 is
        injected again as the soft exception it was (KVM knows its length)."""
        self._say_once("inject", "re-injecting an int3 of the guest's own")
        events = v.vcpu.get_vcpu_events()
        events.exception.injected, events.exception.nr, events.exception.has_error_code = 1, 3, 0
        v.vcpu.set_vcpu_events(events)
        return True

    def _say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(text)

    @staticmethod
    def _say(text: str) -> None:
        print(f"pyhv: gdb: {text}", file=sys.stderr, flush=True)
