"""A vCPU's whole machine state as plain values.

Read while the vCPU is paused (or stopped): general and special registers,
FPU/XSAVE and XCRs, MSRs, the local APIC page, pending events, the MP state and
debug registers, i.e. everything a context switch between machines must carry
(and what save/restore will write out).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._sys import kvm_h as h
from ..errors import PyhvError
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


class VcpuState(NamedTuple):
    index: int  # type: ignore[assignment]  # (shadows tuple.index, which nothing here uses)
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


# --- the write side -------------------------------------------------------------------


class StateError(PyhvError):
    """A vCPU state that is malformed (wrong keys, types or ranges)."""


def _fill(obj: Any, value: Any, what: str, partial: bool = False) -> None:
    """Store plain ``value`` (as :func:`_struct` made it) into ctypes structure ``obj``.

    Every field is checked against its C type: integers in range, arrays of the
    right length, bytes of the right size.  ``partial`` allows fields to be
    missing (they keep what ``obj`` holds)."""
    if not isinstance(value, dict):
        raise StateError(f"{what}: expected a mapping")
    fields = {name: t for name, t, *_ in obj._fields_}
    unknown = set(value) - set(fields)
    if unknown:
        raise StateError(f"{what}: unknown field {sorted(unknown)[0]!r}")
    for name, t in fields.items():
        if name not in value:
            if partial:
                continue
            raise StateError(f"{what}: missing field {name!r}")
        v = value[name]
        if hasattr(t, "_fields_"):
            _fill(getattr(obj, name), v, f"{what}.{name}", partial)
        elif hasattr(t, "_length_"):
            _fill_array(getattr(obj, name), t, v, f"{what}.{name}")
        else:
            setattr(obj, name, _checked_int(t, v, f"{what}.{name}"))


def _fill_array(arr: Any, t: Any, v: Any, what: str) -> None:
    if not isinstance(v, list) or len(v) != t._length_:
        raise StateError(f"{what}: expected a list of {t._length_}")
    inner = t._type_
    for i, item in enumerate(v):
        if hasattr(inner, "_length_"):  # an array of byte arrays (FPU and XMM registers)
            if not isinstance(item, bytes) or len(item) != inner._length_:
                raise StateError(f"{what}[{i}]: expected {inner._length_} bytes")
            arr[i][:] = list(item)
        else:
            arr[i] = _checked_int(inner, item, f"{what}[{i}]")


def _checked_int(t: Any, v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise StateError(f"{what}: expected an integer")
    low, high = h.int_range(t)
    if not low <= v <= high:
        raise StateError(f"{what}: {v} does not fit {8 * h.sizeof(t)} bits")
    return v


def check_state(state: VcpuState) -> None:
    """Check every value of ``state`` (e.g. one read from a file) without touching a vCPU."""
    _build_structs(state)


def _build_structs(state: VcpuState) -> tuple[Any, ...]:
    if not isinstance(state.regs, dict) or set(state.regs) != set(GPRS):
        raise StateError("registers: expected exactly " + ", ".join(GPRS))
    regs = h.kvm_regs()
    _fill(regs, state.regs, "regs")
    sregs = h.kvm_sregs()
    s = state.sregs
    if not isinstance(s, dict):
        raise StateError("sregs: expected a mapping")
    want = set(SEGMENTS) | {"gdt", "idt", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "interrupt_bitmap"}
    if set(s) != want:
        raise StateError("sregs: wrong set of fields")
    for name in SEGMENTS:
        seg = s[name]
        if not isinstance(seg, dict) or set(seg) != set(SEGMENT_FIELDS):
            raise StateError(f"sregs.{name}: wrong set of fields")
        _fill(getattr(sregs, name), seg, f"sregs.{name}", partial=True)
    for name in ("gdt", "idt"):
        if not isinstance(s[name], dict) or set(s[name]) != {"base", "limit"}:
            raise StateError(f"sregs.{name}: expected base and limit")
        _fill(getattr(sregs, name), s[name], f"sregs.{name}", partial=True)
    _fill(sregs, {k: s[k] for k in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "interrupt_bitmap")},
          "sregs", partial=True)
    fpu = h.kvm_fpu()
    _fill(fpu, state.fpu, "fpu")
    events = h.kvm_vcpu_events()
    _fill(events, state.events, "events")
    dbg = h.kvm_debugregs()
    _fill(dbg, state.debugregs, "debugregs")
    for label, blob, size in (("xsave", state.xsave, h.sizeof(h.kvm_xsave)),
                              ("lapic", state.lapic, h.sizeof(h.kvm_lapic_state))):
        if not isinstance(blob, bytes) or len(blob) != size:
            raise StateError(f"{label}: expected {size} bytes")
    for label, table, limit in (("xcrs", state.xcrs, h.KVM_MAX_XCRS), ("msrs", state.msrs, 256)):
        if not isinstance(table, dict) or len(table) > limit:
            raise StateError(f"{label}: expected a mapping of at most {limit}")
        for k, v in table.items():
            _checked_int(h.U32, k, f"{label} index")
            _checked_int(h.U64, v, f"{label}[{k:#x}]")
    _checked_int(h.U32, state.mp_state, "mp_state")
    if state.mp_state not in (h.KVM_MP_STATE_RUNNABLE, h.KVM_MP_STATE_UNINITIALIZED, h.KVM_MP_STATE_INIT_RECEIVED,
                              h.KVM_MP_STATE_HALTED, h.KVM_MP_STATE_SIPI_RECEIVED):
        raise StateError(f"mp_state {state.mp_state!r} is not a KVM MP state")
    return regs, sregs, fpu, events, dbg


def write_state(vcpu: Vcpu, state: VcpuState) -> None:
    """Put ``state`` into ``vcpu`` (which must not be running), checking it first.

    The order follows what KVM needs: special registers before MSRs and the
    LAPIC (APIC_BASE decides the APIC mode), the LAPIC before pending events,
    MP state last but one, so a halted or waiting CPU stays so."""
    regs, sregs, fpu, events, dbg = _build_structs(state)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
    vcpu.set_fpu(fpu)
    vcpu.set_xsave(state.xsave)  # after the FPU: XSAVE holds the same legacy area, and more
    if state.xcrs:
        vcpu.set_xcrs(state.xcrs)
    vcpu.set_msrs(state.msrs)
    vcpu.set_lapic(state.lapic)
    vcpu.set_mp_state(state.mp_state)
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR
    vcpu.set_vcpu_events(events)
    dbg.flags = 0
    vcpu.set_debugregs(dbg)


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2


# --- plain values (JSON) ----------------------------------------------------------------


def to_plain(state: VcpuState) -> dict[str, Any]:
    """``state`` as JSON-able values: bytes as hex strings, integer-keyed tables as pairs."""
    return {
        "index": state.index,
        "regs": dict(state.regs),
        "sregs": state.sregs,
        "fpu": _hexify(state.fpu),
        "xsave": state.xsave.hex(),
        "xcrs": sorted([k, v] for k, v in state.xcrs.items()),
        "msrs": sorted([k, v] for k, v in state.msrs.items()),
        "lapic": state.lapic.hex(),
        "events": state.events,
        "mp_state": state.mp_state,
        "debugregs": state.debugregs,
    }


def from_plain(d: Any) -> VcpuState:
    """The inverse of :func:`to_plain`, checked throughout (StateError on anything wrong)."""
    keys = {"index", "regs", "sregs", "fpu", "xsave", "xcrs", "msrs", "lapic", "events", "mp_state", "debugregs"}
    if not isinstance(d, dict) or set(d) != keys:
        raise StateError("vCPU state: wrong set of keys")
    index = _checked_int(h.U8, d["index"], "vCPU index")
    state = VcpuState(
        index=index,
        regs=d["regs"],
        sregs=d["sregs"],
        fpu=_unhexify(d["fpu"], "fpu"),
        xsave=_bytes(d["xsave"], "xsave"),
        xcrs=_pairs(d["xcrs"], "xcrs"),
        msrs=_pairs(d["msrs"], "msrs"),
        lapic=_bytes(d["lapic"], "lapic"),
        events=d["events"],
        mp_state=d["mp_state"],
        debugregs=d["debugregs"],
    )
    check_state(state)
    return state


def _hexify(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _hexify(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_hexify(x) for x in v]
    return v


def _unhexify(v: Any, what: str) -> Any:
    if not isinstance(v, dict):
        raise StateError(f"{what}: expected a mapping")
    out = dict(v)
    for key in ("fpr", "xmm"):
        if isinstance(out.get(key), list):
            out[key] = [_bytes(x, f"{what}.{key}") for x in out[key]]
    return out


def _bytes(v: Any, what: str) -> bytes:
    if not isinstance(v, str) or len(v) > 1 << 16:
        raise StateError(f"{what}: expected a hex string")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise StateError(f"{what}: not a hex string") from None


def _pairs(v: Any, what: str) -> dict[int, int]:
    if not isinstance(v, list) or len(v) > 256 or not all(isinstance(p, list) and len(p) == 2 for p in v):
        raise StateError(f"{what}: expected a list of [index, value] pairs")
    out = {}
    for k, x in v:
        out[_checked_int(h.U32, k, f"{what} index")] = _checked_int(h.U64, x, f"{what} value")
    return out
