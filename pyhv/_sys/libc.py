"""libc calls pyhv needs that the standard library does not wrap: mmap with an
address we can hand to KVM, munmap, madvise, and views on raw host memory."""

from __future__ import annotations

import ctypes
import mmap as _mmap
import os

# The process already has libc loaded: CDLL(None) finds its symbols without
# ctypes.util.find_library, which would import subprocess (start-up time).
_libc = ctypes.CDLL(None, use_errno=True)

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

PROT_READ = _mmap.PROT_READ
PROT_WRITE = _mmap.PROT_WRITE
MAP_SHARED = _mmap.MAP_SHARED
MAP_PRIVATE = _mmap.MAP_PRIVATE
MAP_ANONYMOUS = _mmap.MAP_ANONYMOUS
MAP_NORESERVE = 0x4000
MADV_DONTNEED = 4
MADV_MERGEABLE = 12
MAP_FAILED = ctypes.c_void_p(-1).value


def _err(name: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{name}: {os.strerror(e)}")


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """Map memory; return its host address.  Raises OSError."""
    addr = _libc.mmap(None, length, prot, flags, fd, offset)
    if addr is None or addr == MAP_FAILED:
        raise _err("mmap")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        raise _err("munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc.madvise(addr, length, advice) != 0:
        raise _err("madvise")


def view(addr: int, length: int) -> memoryview:
    """A writable byte view of ``length`` bytes of host memory at ``addr``.

    The caller guarantees the mapping outlives the view: pyhv.memory releases
    every view before it unmaps.
    """
    return memoryview((ctypes.c_ubyte * length).from_address(addr)).cast("B")


def map_vcpu_run(fd: int, size: int) -> _mmap.mmap:
    """Map a vCPU's ``struct kvm_run`` page(s)."""
    return _mmap.mmap(fd, size, _mmap.MAP_SHARED, _mmap.PROT_READ | _mmap.PROT_WRITE)


_libc.fallocate.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with mode flags (os.posix_fallocate has none).  Raises OSError."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        raise _err("fallocate")


_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

PR_SET_NAME = 15


def set_thread_name(name: str) -> None:
    """Name the calling OS thread (``comm``, at most 15 bytes), so that host
    tools and the scheduler can tell its threads apart.  Best effort."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def mincore(addr: int, length: int) -> bytes:
    """One byte per page of ``[addr, addr+length)``: bit 0 set if the page is resident."""
    pages = (length + 4095) // 4096
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(addr, length, vec) != 0:
        raise _err("mincore")
    return bytes(vec)


def buffer_address(buf: bytearray) -> int:
    """The address of a bytearray's storage (valid while it is not resized)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def view_address(view: memoryview) -> int:
    """The address of a writable buffer's first byte; -1 for one ctypes cannot reach (read-only)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view)) if len(view) else 0
    except (TypeError, ValueError):
        return -1
