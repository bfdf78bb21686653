"""Typed VM exits: plain values decoded from a vCPU's ``kvm_run`` page.

The vCPU loop decodes port and MMIO exits inline for speed (see
pyhv.vcpu.loop); everything rarer, and every exit shown to a user or through the
API, goes through :func:`decode`.
"""

from __future__ import annotations

import struct
from typing import Any
from dataclasses import dataclass

from .._sys import kvm_h as h

_EXIT = h.KVM_RUN_OFF_EXIT

#: anything struct.unpack_from reads: bytes, bytearray, memoryview, the mmap'd kvm_run
Buffer = Any


@dataclass(frozen=True, slots=True)
class Exit:
    reason: int

    @property
    def name(self) -> str:
        return EXIT_NAMES.get(self.reason, f"exit {self.reason}")


@dataclass(frozen=True, slots=True)
class IoExit(Exit):
    port: int
    size: int
    is_write: bool
    count: int
    data_offset: int


@dataclass(frozen=True, slots=True)
class MmioExit(Exit):
    addr: int
    size: int
    is_write: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class DebugExit(Exit):
    """KVM_EXIT_DEBUG (with KVM_SET_GUEST_DEBUG on): ``exception`` is 1 (#DB:
    single-step, hardware breakpoint or watchpoint; which one is in ``dr6``) or 3
    (#BP: an int3); ``pc`` is the linear address of the instruction (for #BP the
    int3 itself, not yet executed)."""

    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True)
class HltExit(Exit):
    pass


@dataclass(frozen=True, slots=True)
class ShutdownExit(Exit):
    """Triple fault (or another shutdown condition the CPU entered)."""


@dataclass(frozen=True, slots=True)
class FailEntryExit(Exit):
    hardware_entry_failure_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalErrorExit(Exit):
    suberror: int
    data: tuple[int, ...]

    @property
    def description(self) -> str:
        return INTERNAL_ERROR_NAMES.get(self.suberror, f"suberror {self.suberror}")


@dataclass(frozen=True, slots=True)
class SystemEventExit(Exit):
    type: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnknownExit(Exit):
    pass


EXIT_NAMES = {
    h.KVM_EXIT_UNKNOWN: "unknown",
    h.KVM_EXIT_EXCEPTION: "exception",
    h.KVM_EXIT_IO: "io",
    h.KVM_EXIT_HYPERCALL: "hypercall",
    h.KVM_EXIT_DEBUG: "debug",
    h.KVM_EXIT_HLT: "hlt",
    h.KVM_EXIT_MMIO: "mmio",
    h.KVM_EXIT_IRQ_WINDOW_OPEN: "irq-window-open",
    h.KVM_EXIT_SHUTDOWN: "shutdown (triple fault)",
    h.KVM_EXIT_FAIL_ENTRY: "entry failure",
    h.KVM_EXIT_INTR: "interrupted",
    h.KVM_EXIT_NMI: "nmi",
    h.KVM_EXIT_INTERNAL_ERROR: "internal error",
    h.KVM_EXIT_SYSTEM_EVENT: "system event",
}

INTERNAL_ERROR_NAMES = {
    h.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    h.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    h.KVM_INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
    h.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason",
}


def decode(run: Buffer) -> Exit:
    """Decode the exit recorded in a ``kvm_run`` page."""
    (reason,) = struct.unpack_from("<I", run, h.KVM_RUN_OFF_EXIT_REASON)
    if reason == h.KVM_EXIT_IO:
        direction, size, port, count, data_offset = struct.unpack_from("<BBHIQ", run, _EXIT)
        return IoExit(reason, port, size, direction == h.KVM_EXIT_IO_OUT, count, data_offset)
    if reason == h.KVM_EXIT_MMIO:
        addr, data, length, is_write = struct.unpack_from("<Q8sIB", run, _EXIT)
        length = min(length, 8)
        return MmioExit(reason, addr, length, bool(is_write), data[:length])
    if reason == h.KVM_EXIT_HLT:
        return HltExit(reason)
    if reason == h.KVM_EXIT_DEBUG:
        exception, _pad, pc, dr6, dr7 = struct.unpack_from("<IIQQQ", run, _EXIT)
        return DebugExit(reason, exception, pc, dr6, dr7)
    if reason == h.KVM_EXIT_SHUTDOWN:
        return ShutdownExit(reason)
    if reason == h.KVM_EXIT_FAIL_ENTRY:
        failure, cpu = struct.unpack_from("<QI", run, _EXIT)
        return FailEntryExit(reason, failure, cpu)
    if reason == h.KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata = struct.unpack_from("<II", run, _EXIT)
        data = struct.unpack_from("<16Q", run, _EXIT + 8)[: min(ndata, 16)]
        return InternalErrorExit(reason, suberror, tuple(data))
    if reason == h.KVM_EXIT_SYSTEM_EVENT:
        type_, ndata = struct.unpack_from("<II", run, _EXIT)
        data = struct.unpack_from("<16Q", run, _EXIT + 8)[: min(ndata, 16)]
        return SystemEventExit(reason, type_, tuple(data))
    return UnknownExit(reason)
