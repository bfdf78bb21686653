"""The ctypes mirrors in pyhv._sys match the machine's <linux/kvm.h>.

A C program compiled against the system header prints every mirrored
structure's size, every field's offset and every ioctl number; the test
compares them with what ctypes computed.  No number is copied by hand.
"""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import pytest

from pyhv._sys import kvm_h as h


def _c_fields(struct: type) -> list[str]:
    names = []
    for name, *_ in struct._fields_:
        if name == "u" and struct is h.kvm_run:
            continue
        names.append(name)
    if struct is h.kvm_run:
        names += [f"{member}.{field}" for member, field in h.KVM_RUN_UNION_FIELDS]
    return names


def _py_offset(struct: type, path: str) -> int:
    """Offset of a (possibly dotted) field; kvm_run's exit union is anonymous in C."""
    offset, t = 0, struct
    parts = path.split(".")
    if struct is h.kvm_run and len(parts) > 1:
        offset, t = h.kvm_run.u.offset, h._run_exit
    for part in parts:
        offset += getattr(t, part).offset
        t = {n: ft for n, ft, *_ in t._fields_}[part]
    return offset


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed (run scripts/setup)"
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for struct in h.STRUCTS:
        c = struct._c_name_
        lines.append(f'printf("%s %zu\\n", "sizeof {c}", sizeof({c}));')
        for path in _c_fields(struct):
            lines.append(f'printf("%s %zu\\n", "offsetof {c} {path}", offsetof({c}, {path}));')
    for name in h.IOCTLS:
        lines.append(f'printf("%s %lu\\n", "ioctl {name}", (unsigned long)({name}));')
    lines += ["return 0;", "}"]
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "abi.c", d / "abi"
    src.write_text("\n".join(lines))
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


@pytest.mark.parametrize("struct", [s for s in h.STRUCTS if s is not h.kvm_run], ids=lambda s: s._c_name_)
def test_struct_size_matches_kernel_header(struct: type, c_layout: dict[str, int]) -> None:
    assert ctypes.sizeof(struct) == c_layout[f"sizeof {struct._c_name_}"]


def test_kvm_run_head_is_a_prefix_of_the_kernel_struct(c_layout: dict[str, int]) -> None:
    # pyhv mirrors kvm_run up to kvm_dirty_regs; the sync-regs area after it is not used.
    assert h.kvm_run.kvm_dirty_regs.offset == c_layout["offsetof struct kvm_run kvm_dirty_regs"]


@pytest.mark.parametrize(
    "struct,path",
    [(s, p) for s in h.STRUCTS for p in _c_fields(s)],
    ids=lambda v: v if isinstance(v, str) else v._c_name_,
)
def test_field_offset_matches_kernel_header(struct: type, path: str, c_layout: dict[str, int]) -> None:
    assert _py_offset(struct, path) == c_layout[f"offsetof {struct._c_name_} {path}"]


@pytest.mark.parametrize("name", sorted(h.IOCTLS))
def test_ioctl_number_matches_kernel_header(name: str, c_layout: dict[str, int]) -> None:
    assert h.IOCTLS[name] == c_layout[f"ioctl {name}"]


def test_hot_path_offsets_match_kernel_header(c_layout: dict[str, int]) -> None:
    assert (h.KVM_RUN_OFF_EXIT_REASON, h.KVM_RUN_OFF_IMMEDIATE_EXIT, h.KVM_RUN_OFF_EXIT) == (
        c_layout["offsetof struct kvm_run exit_reason"],
        c_layout["offsetof struct kvm_run immediate_exit"],
        c_layout["offsetof struct kvm_run io.direction"],
    )


def test_only_sys_imports_ctypes_fcntl_mmap() -> None:
    root = pathlib.Path(h.__file__).resolve().parent.parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "_sys" not in p.parts
        and any(
            line.startswith((f"import {m}", f"from {m} "))
            for line in p.read_text().splitlines()
            for m in ("ctypes", "fcntl", "mmap")
        )
    ]
    assert offenders == []
