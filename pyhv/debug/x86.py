"""The x86-64 registers as GDB numbers them, and the target description saying so.

GDB learns the register layout of ``g``/``G``/``p``/``P`` from the target
description (qXfer:features:read, "Target Descriptions" in the GDB manual):
registers are numbered in the order the XML lists them.  The names and
features follow GDB's own i386/64bit-core.xml, 64bit-sse.xml and
64bit-segments.xml (amd64 checks for those names); the control registers and
EFER are a feature of our own, ``org.pyhv.x86.sys``.  Values are little-endian.
"""

from __future__ import annotations

from typing import NamedTuple

from ..vcpu.registers import GPRS, Registers


class Reg(NamedTuple):
    name: str
    bits: int
    type: str
    feature: str


_CORE, _SSE, _SEG, _SYS = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", "org.pyhv.x86.sys"
_X87_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

REGISTERS: list[Reg] = [
    *(Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", _CORE) for n in GPRS),
    Reg("rip", 64, "code_ptr", _CORE),
    Reg("eflags", 32, "int32", _CORE),
    *(Reg(n, 32, "int32", _CORE) for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Reg(f"st{i}", 80, "i387_ext", _CORE) for i in range(8)),
    *(Reg(n, 32, "int", _CORE) for n in _X87_CTRL),
    *(Reg(f"xmm{i}", 128, "vec128", _SSE) for i in range(16)),
    Reg("mxcsr", 32, "int", _SSE),
    Reg("fs_base", 64, "int", _SEG),
    Reg("gs_base", 64, "int", _SEG),
    *(Reg(n, 64, "int", _SYS) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")),
]
NUMBER = {r.name: i for i, r in enumerate(REGISTERS)}
#: what P may change (the rest answers E: see pyhv/vcpu/registers.py)
WRITABLE = frozenset([*GPRS, "rip", "eflags", *(f"st{i}" for i in range(8)), *_X87_CTRL,
                      *(f"xmm{i}" for i in range(16)), "mxcsr"])

_VEC128 = """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
"""


def target_xml() -> str:
    parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
             "<architecture>i386:x86-64</architecture>"]
    feature = ""
    for i, r in enumerate(REGISTERS):
        if r.feature != feature:
            if feature:
                parts.append("</feature>")
            feature = r.feature
            parts.append(f'<feature name="{feature}">')
            if feature == _SSE:
                parts.append(_VEC128)
        group = ' group="float"' if r.name.startswith("st") or r.name in _X87_CTRL else ""
        group = ' group="vector"' if r.name.startswith("xmm") else group
        group = ' group="system"' if r.feature == _SYS else group
        parts.append(f'<reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{group}/>')
    parts += ["</feature>", "</target>"]
    return "\n".join(parts)


def _full_tag(abridged: int) -> int:
    """FXSAVE's tag byte to the x87 tag word GDB shows: 00 valid, 11 empty."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def _abridged_tag(full: int) -> int:
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


def values(r: Registers) -> list[bytes]:
    """Every register of :data:`REGISTERS` as GDB wants its bytes."""
    ints: dict[str, int] = {n: getattr(r, n) for n in (*GPRS, "rip", "cs", "ss", "ds", "es", "fs", "gs",
                                                       "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8",
                                                       "efer", "mxcsr", "fop")}
    ints.update(eflags=r.rflags, fctrl=r.fcw, fstat=r.fsw, ftag=_full_tag(r.ftw), fiseg=0,
                fioff=r.fip & 0xFFFF_FFFF, foseg=0, fooff=r.fdp & 0xFFFF_FFFF)
    out = []
    for reg in REGISTERS:
        if reg.name.startswith("st"):
            out.append(r.st[int(reg.name[2:])])
        elif reg.name.startswith("xmm"):
            out.append(r.xmm[int(reg.name[3:])])
        else:
            out.append((ints[reg.name] & ((1 << reg.bits) - 1)).to_bytes(reg.bits // 8, "little"))
    return out


def with_value(r: Registers, number: int, data: bytes) -> Registers:
    """``r`` with register ``number`` set from GDB's bytes; ValueError if it may not be written."""
    if not 0 <= number < len(REGISTERS):
        raise ValueError(f"no register {number}")
    reg = REGISTERS[number]
    if reg.name not in WRITABLE:
        raise ValueError(f"{reg.name} is read-only here")
    if len(data) != reg.bits // 8:
        raise ValueError(f"{reg.name} takes {reg.bits // 8} bytes, not {len(data)}")
    if reg.name.startswith("st"):
        i = int(reg.name[2:])
        return r.replace(st=r.st[:i] + (data,) + r.st[i + 1:])
    if reg.name.startswith("xmm"):
        i = int(reg.name[3:])
        return r.replace(xmm=r.xmm[:i] + (data,) + r.xmm[i + 1:])
    value = int.from_bytes(data, "little")
    field = {"eflags": "rflags", "fctrl": "fcw", "fstat": "fsw", "fioff": "fip", "fooff": "fdp"}.get(reg.name, reg.name)
    if reg.name == "ftag":
        return r.replace(ftw=_abridged_tag(value))
    if reg.name in ("fiseg", "foseg"):
        return r  # no segment in 64-bit FXSAVE state
    return r.replace(**{field: value})


def with_values(r: Registers, data: bytes) -> Registers:
    """``r`` with the writable registers taken from a ``G`` packet's bytes (the rest ignored)."""
    offset = 0
    for i, reg in enumerate(REGISTERS):
        n = reg.bits // 8
        if offset + n > len(data):
            break  # GDB may send fewer registers than it knows
        if reg.name in WRITABLE:
            r = with_value(r, i, data[offset:offset + n])
        offset += n
    return r
