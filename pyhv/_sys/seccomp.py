"""A thin layer over libseccomp (2.5, ``libseccomp.so.2``): build a filter, load it.

Only what pyhv's policy (pyhv/jail/policy.py) uses: a context with a default
action, rules with argument comparisons, loading, syscall names and numbers,
and the compiled program's length.  Constants are <seccomp.h>'s.
"""

from __future__ import annotations

import ctypes
import os

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(errno: int) -> int:  # noqa: N802 (the C macro's name)
    return 0x00050000 | (errno & 0xFFFF)


# enum scmp_compare
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7

SCMP_ARCH_NATIVE = 0


class scmp_arg_cmp(ctypes.Structure):  # noqa: N801 (the C name)
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_loaded: list[ctypes.CDLL] = []  # loaded on first use: pyhv run without --jail never pays for it


def _seccomp() -> ctypes.CDLL:
    if not _loaded:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(scmp_arg_cmp)]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
        lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # a malloc-ed string
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _loaded.append(lib)
    return _loaded[0]


def load_library() -> None:
    """Load libseccomp now (a confined process cannot open it later)."""
    _seccomp()


def syscall_number(name: str) -> int:
    """The x86-64 number of syscall ``name``; ValueError if libseccomp does not know it."""
    nr = int(_seccomp().seccomp_syscall_resolve_name(name.encode()))
    if nr < 0:
        raise ValueError(f"unknown syscall {name!r}")
    return nr


def syscall_name(nr: int) -> str:
    lib = _seccomp()
    ptr = lib.seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr)
    if not ptr:
        return f"syscall {nr}"
    name = ctypes.string_at(ptr).decode()
    ctypes.CDLL(None).free(ctypes.c_void_p(ptr))
    return name


class Arg:
    """One argument comparison: argument ``index`` ``op`` ``a`` (``b`` for MASKED_EQ: mask a, value b)."""

    def __init__(self, index: int, op: int, a: int, b: int = 0) -> None:
        self.index, self.op, self.a, self.b = index, op, a, b


class Filter:
    """A libseccomp filter context; raises OSError on failure."""

    def __init__(self, default_action: int) -> None:
        self._lib = _seccomp()
        self._ctx = self._lib.seccomp_init(default_action)
        if not self._ctx:
            raise OSError(0, "seccomp_init failed")
        self.rules = 0

    def add(self, action: int, name: str, *args: Arg) -> None:
        cmps = (scmp_arg_cmp * max(1, len(args)))()
        for i, a in enumerate(args):
            cmps[i] = scmp_arg_cmp(a.index, a.op, a.a, a.b)
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, syscall_number(name), len(args), cmps)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
        self.rules += 1

    def program_length(self) -> int:
        """The compiled BPF program's instructions (8 bytes each)."""
        r, w = os.pipe()
        try:
            rc = self._lib.seccomp_export_bpf(self._ctx, w)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            os.close(w)
            w = -1
            size = 0
            while chunk := os.read(r, 1 << 16):
                size += len(chunk)
            return size // 8
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def load(self) -> None:
        """Install the filter on the calling thread (and the threads it makes from now on)."""
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def release(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None
