"""Break-out attempts a confined VMM makes when a test asks for one.

``PYHV_TEST_BREAKOUT=WHAT[:ARG]`` (read before the environment is cleared;
nothing here runs without it) makes the confined child try, on its main
thread right after it was confined, what a guest that took over the device
model would: run a program, read a host secret or another domain's disk,
reach the network, trace, mount, become root, signal another process, move
itself to another cgroup.  Each attempt must be refused (it prints
``pyhv: breakout WHAT: denied (ERRNO)`` and the domain runs on) or kill the
process (the supervisor names the system call).  tests/integration/test_jail.py
asserts on which.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from .._sys import privs

SYS_PTRACE = 101
PTRACE_ATTACH = 16


def _execve(arg: str) -> None:
    os.execv("/bin/sh", ["sh", "-c", "id"])


def _open(path: str) -> None:
    os.close(os.open(path, os.O_RDONLY))


def _inet(arg: str) -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def _ptrace(arg: str) -> None:
    privs.syscall(SYS_PTRACE, PTRACE_ATTACH, int(arg or "1"), 0, 0)


def _mount(arg: str) -> None:
    privs.mount("tmpfs", "/proc", "tmpfs", 0)


def _setuid(arg: str) -> None:
    os.setuid(0)


def _kill(arg: str) -> None:
    os.kill(int(arg), 9)


def _cgroup(arg: str) -> None:
    fd = os.open(arg or "/sys/fs/cgroup/cpu/tasks", os.O_WRONLY)
    os.write(fd, b"0")


ATTEMPTS = {
    "execve": _execve, "open-shadow": lambda arg: _open("/etc/shadow"), "open-disk": _open, "inet": _inet,
    "ptrace": _ptrace, "mount": _mount, "setuid": _setuid, "kill": _kill, "cgroup": _cgroup,
}


def attempt(spec: str) -> None:
    what, _, arg = spec.partition(":")
    try:
        ATTEMPTS[what](arg)
    except OSError as e:
        print(f"pyhv: breakout {what}: denied ({errno.errorcode.get(e.errno or 0, e.errno)})", file=sys.stderr,
              flush=True)
        return
    print(f"pyhv: breakout {what}: NOT denied", file=sys.stderr, flush=True)
