"""Disk images behind virtio-blk: a raw file (or block device) opened once.

The builder opens the image (or is handed its file descriptor), so the device
process never opens paths after start-up.  Reads and writes go straight
between the file and guest memory with preadv/pwritev on views of guest RAM.

Caching (a disk's ``cache`` key): ``writeback`` goes through the host's page
cache; ``none`` opens the image with O_DIRECT, so guest data bypasses it.  In
both the device offers VIRTIO_BLK_F_FLUSH and a guest FLUSH is fdatasync: what
the guest wrote before a completed FLUSH is on stable storage either way (with
O_DIRECT the drive's own write cache still needs it).  O_DIRECT wants sector-
aligned offsets, lengths and buffer addresses; a request that is not aligned
goes through a second, buffered descriptor of the same file, which Linux keeps
coherent with direct I/O (it writes back and invalidates the cached range first).
An open image is locked as QEMU locks it: a whole-file OFD write lock for a
read-write disk, a shared (read) lock for a read-only one, so a second
machine (pyhv or QEMU) cannot open it read-write while this one uses it, nor
read it while this one writes.  A machine hands its locks over at the end of
a live migration (:meth:`RawDisk.unlock`, :meth:`RawDisk.relock`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from .._sys import libc
from .._sys import lock as _lock
from .._sys.files import HANDED, open_handed
from ..errors import ImageError

SECTOR_SIZE = 512


class RawDisk:
    def __init__(self, path: str, readonly: bool = False, fd: int | None = None, direct: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.direct = direct
        self._direct_fd = -1  # with cache=none: the O_DIRECT descriptor for aligned requests
        if fd is None:
            flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
            try:
                fd = open_handed(path, flags)
            except OSError as e:
                raise ImageError(path, f"cannot open disk image: {e.strerror}") from None
        self.fd = fd
        if direct:
            try:
                mode = os.O_RDONLY if readonly else os.O_RDWR
                flags = mode | os.O_DIRECT | os.O_CLOEXEC
                # a confined process has no /proc/self/fd: its O_DIRECT descriptor was handed over
                handed = (path, True) in HANDED
                self._direct_fd = open_handed(path, flags) if handed else os.open(f"/proc/self/fd/{fd}", flags)
            except OSError as e:
                os.close(fd)
                raise ImageError(path, f"cache=none: cannot open the image with O_DIRECT: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISBLK(st.st_mode):
                size = os.lseek(fd, 0, os.SEEK_END)
            elif stat.S_ISREG(st.st_mode):
                size = st.st_size
            else:
                raise ImageError(path, "disk image must be a regular file or a block device")
        except ImageError:
            os.close(fd)
            raise
        if size % SECTOR_SIZE:
            os.close(fd)
            raise ImageError(path, f"disk image size {size} is not a multiple of {SECTOR_SIZE} bytes")
        self.size = size
        try:
            self.relock()
        except ImageError:
            os.close(fd)
            raise

    def relock(self) -> None:
        """Take this image's lock (write for read-write, shared for read-only);
        ImageError if another machine or program holds a conflicting one."""
        try:
            locked = _lock.ofd_lock(self.fd, write=not self.readonly)
        except OSError as e:
            raise ImageError(self.path, f"cannot lock disk image: {e.strerror}") from None
        if not locked:
            raise ImageError(self.path, "disk image is in use by another domain or program (it holds a lock on it)")

    def unlock(self) -> None:
        """Let another machine have the image (the end of a live migration); no
        I/O may happen until :meth:`relock`."""
        try:
            _lock.ofd_unlock(self.fd)
        except OSError:
            pass  # a lock that cannot be released goes with the descriptor

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    def readv(self, offset: int, buffers: list[memoryview]) -> int:
        return self._transfer(os.preadv, offset, buffers)

    def writev(self, offset: int, buffers: list[memoryview]) -> int:
        return self._transfer(os.pwritev, offset, buffers)

    def _transfer(self, op: Callable[[int, list[memoryview], int], int], offset: int, buffers: list[memoryview]) -> int:
        """preadv/pwritev until every buffer is done (a short transfer is retried)."""
        fd = self._direct_fd if self._direct_fd >= 0 and _aligned(offset, buffers) else self.fd
        done = 0
        while buffers:
            n = op(fd, buffers, offset + done)
            if n <= 0:
                raise OSError(5, "short transfer (end of the image?)")
            done += n
            buffers = _advance(buffers, n)
        return done

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        libc.fallocate(self.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if may_unmap:
            try:
                self.discard(offset, length)
                return
            except OSError:
                pass
        try:
            libc.fallocate(self.fd, libc.FALLOC_FL_ZERO_RANGE | libc.FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError:
            zero = bytes(min(length, 1 << 20))
            done = 0
            while done < length:
                done += os.pwrite(self.fd, zero[: length - done], offset + done)

    def close(self) -> None:
        for fd in (self.fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._direct_fd = -1


def _aligned(offset: int, buffers: list[memoryview]) -> bool:
    """Whether O_DIRECT can take this request: offset, lengths and addresses on sector boundaries."""
    if offset % SECTOR_SIZE:
        return False
    for b in buffers:
        if len(b) % SECTOR_SIZE or libc.view_address(b) % SECTOR_SIZE:
            return False
    return True


def check_distinct(paths: list[str]) -> None:
    """Refuse one image given twice (by any name: the same device and inode)."""
    seen: dict[tuple[int, int], str] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue  # opening it says why
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ImageError(path, f"the same disk image as {seen[key]}: a machine opens each image once")
        seen[key] = path


def _advance(buffers: list[memoryview], n: int) -> list[memoryview]:
    """The buffers left after ``n`` bytes were transferred."""
    out = list(buffers)
    while out and n >= len(out[0]):
        n -= len(out[0])
        out.pop(0)
    if out and n:
        out[0] = out[0][n:]
    return out
