"""Helpers shared by the loaders: reading images, RAM checks, command line, initrd."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from pyhv.boot._types import GuestRam
from pyhv.boot.layout import (
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIGH_MEMORY_START,
    LOW_RESERVED_END,
    PAGE_SIZE,
    PYHV_LOW_AREAS,
    align_down,
)
from pyhv._sys.files import open_handed
from pyhv.errors import ImageError

_READ_CHUNK = 1 << 22


def read_image(path: str) -> bytes:
    """The whole content of the regular file *path*; any failure is an ImageError."""
    try:
        fd = open_handed(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ImageError(path, f"cannot open: {err.strerror or err}") from None
    except ValueError:  # a NUL character in the path
        raise ImageError(repr(path), "cannot open: the path contains a NUL character") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(path, "is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise ImageError(path, "not a regular file")
        chunks: list[bytes] = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise ImageError(path, f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def ram_contains(mem: GuestRam, start: int, size: int) -> bool:
    """Whether ``[start, start+size)`` lies inside one RAM range."""
    return any(base <= start and start + size <= base + length for base, length in mem.ram_ranges())


def low_ram_top(mem: GuestRam, path: str) -> int:
    """End of the RAM range at address 0; it must reach past the first megabyte."""
    ranges = mem.ram_ranges()
    if not ranges or ranges[0][0] != 0 or ranges[0][1] <= HIGH_MEMORY_START:
        raise ImageError(path, "guest RAM must start at 0 and be larger than 1 MiB")
    return ranges[0][1]


def check_load_range(mem: GuestRam, path: str, start: int, size: int, what: str) -> None:
    """Refuse to load ``[start, start+size)`` over one of pyhv's own areas in the
    first MiB (layout.PYHV_LOW_AREAS: boot structures, the command line, the BIOS
    area) or past the top of low RAM.

    Low RAM is the only RAM below 4 GiB, which is all that 32-bit entry points
    and the boot page tables reach; the rest of the first MiB is the kernel's.
    """
    end = start + size
    for area in PYHV_LOW_AREAS:
        if start < area.end and area.start < end:
            raise ImageError(
                path, f"{what} at [{start:#x}, {end:#x}) overlaps pyhv's {area.name} at [{area.start:#x}, {area.end:#x})"
            )
    top = low_ram_top(mem, path)
    if end > top:
        raise ImageError(path, f"{what} at [{start:#x}, {end:#x}) does not fit in guest RAM below {top:#x}")


_ZERO_CHUNK = bytes(1 << 20)


def write_zeros(mem: GuestRam, addr: int, size: int) -> None:
    """Zero ``[addr, addr+size)`` in chunks of at most 1 MiB."""
    end = addr + size
    while addr < end:
        count = min(end - addr, len(_ZERO_CHUNK))
        mem.write(addr, _ZERO_CHUNK[:count])
        addr += count


def write_cmdline(mem: GuestRam, path: str, cmdline: str, max_len: int = CMDLINE_MAX - 1) -> int:
    """Write *cmdline* NUL-terminated at CMDLINE_ADDR; return that address.

    *max_len* is the most characters (bytes, without the NUL) accepted.
    """
    try:
        data = cmdline.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ImageError(path, "the command line is not valid text (lone surrogate)") from None
    limit = min(max_len, CMDLINE_MAX - 1)
    if b"\0" in data:
        raise ImageError(path, "the command line contains a NUL character")
    if len(data) > limit:
        raise ImageError(path, f"command line is {len(data)} bytes long; this kernel accepts at most {limit}")
    mem.write(CMDLINE_ADDR, data + b"\0")
    return CMDLINE_ADDR


class Placed(NamedTuple):
    """A blob placed in guest memory."""

    addr: int
    size: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def place_initrd(mem: GuestRam, path: str, limit: int, occupied: list[tuple[int, int]]) -> Placed:
    """Load the file *path* at the highest page-aligned address below *limit*.

    *limit* is exclusive; the initrd stays above 1 MiB and clear of every
    ``[start, end)`` range in *occupied* (the kernel).
    """
    data = read_image(path)
    size = len(data)
    if size == 0:
        raise ImageError(path, "initrd is empty")
    addr = align_down(limit - size, PAGE_SIZE)
    moved = True
    while moved and addr >= LOW_RESERVED_END:
        moved = False
        for start, end in occupied:
            if start < addr + size and addr < end:
                addr = align_down(start - size, PAGE_SIZE)
                moved = True
    if addr < LOW_RESERVED_END or not ram_contains(mem, addr, size):
        raise ImageError(
            path,
            f"initrd is {size} bytes; it does not fit in guest RAM "
            f"between 1 MiB and {limit:#x} next to the kernel",
        )
    mem.write(addr, data)
    return Placed(addr, size)
