"""File locks: flock(2) on a lock file, and open file description (OFD) record
locks on whole files (``fcntl(F_OFD_SETLK)``), the kind QEMU takes on disk images.

An OFD lock belongs to the open file description, not to the process: two
opens of the same file in one process conflict like two processes do, it is
released when the last descriptor of that open is closed, and a descriptor
inherited across fork or exec keeps holding it.  Locks are advisory: they keep
out those who ask (other pyhv domains, QEMU), not a plain ``dd``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

F_RDLCK = fcntl.F_RDLCK
F_WRLCK = fcntl.F_WRLCK
F_UNLCK = fcntl.F_UNLCK
F_OFD_SETLK = fcntl.F_OFD_SETLK  # Linux 3.15

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class flock(ctypes.Structure):
    """``struct flock`` (x86-64 glibc), as fcntl(F_OFD_SETLK) reads it."""

    _c_name_ = "struct flock"
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def flock_exclusive(fd: int) -> bool:
    """Take an exclusive flock(2) on ``fd`` without waiting; False if someone holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    return True


def ofd_lock(fd: int, write: bool) -> bool:
    """Lock the whole file behind ``fd`` (a write lock needs ``fd`` open for
    writing, a read lock for reading) without waiting; False if a conflicting
    lock is held, by any process or by another open in this one."""
    request = flock(F_WRLCK if write else F_RDLCK, os.SEEK_SET, 0, 0, 0)  # l_len 0: to the end, and beyond
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, bytes(request))
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    return True


def ofd_unlock(fd: int) -> None:
    """Release this open's lock on the whole file behind ``fd``."""
    fcntl.fcntl(fd, F_OFD_SETLK, bytes(flock(F_UNLCK, os.SEEK_SET, 0, 0, 0)))
