"""The system calls that confine a process: namespaces, mounts, pivot_root,
capabilities and prctl, none of which the standard library of Python 3.11 wraps.

Each call raises OSError naming itself.  Numbers are x86-64's (the only
architecture pyhv runs on) and come from <linux/sched.h>, <linux/mount.h>,
<linux/prctl.h>, <linux/capability.h> and <asm/unistd_64.h>.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP = 40  # CAP_CHECKPOINT_RESTORE; a drop of an unknown number fails with EINVAL and is ignored

SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, name: str, what: str = "") -> None:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}{' ' + what if what else ''}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), "mount", target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root", new_root)


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    _check(result, "prctl", str(option))
    return int(result)


def set_parent_death_signal(signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum)


def drop_bounding_set() -> None:
    """Drop every capability from the calling thread's bounding set (needs CAP_SETPCAP)."""
    for cap in range(CAP_LAST_CAP + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno != 22:  # EINVAL: a capability this kernel does not know
                raise


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities() -> None:
    """Empty the calling thread's ambient, effective, permitted and inheritable sets."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


_kept: list[ctypes.CDLL] = []


def load_libraries() -> None:
    """Load what glibc would dlopen later, which a process that can no longer see
    the host's files could not: libgcc_s (pthread_exit unwinds a thread's stack
    through it; glibc aborts the process without it)."""
    _kept.append(ctypes.CDLL("libgcc_s.so.1"))


def syscall(nr: int, *args: int) -> int:
    """A raw system call (the break-out checks make ones pyhv never does); raises OSError."""
    result = _libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    _check(result, "syscall", str(nr))
    return int(result)


def setns(fd: int, nstype: int) -> None:
    """Join the namespace ``fd`` refers to (e.g. a network namespace under /var/run/netns)."""
    _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    _check(_libc.setns(fd, nstype), "setns")
