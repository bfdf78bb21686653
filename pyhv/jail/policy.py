"""The seccomp policy of a confined domain process: what each thread may call.

Two layers, because seccomp filters are per thread, inherited by the threads
a thread makes, and stack (the strictest answer wins):

* the **baseline**, installed by the confined child before it starts any
  thread, so every thread has it: the system calls the VMM makes after
  start-up (measured with ``strace -f`` on the probe's workloads, plus the
  control, console, vsock, save and restart paths), with arguments checked
  where they matter: ``ioctl`` only with the KVM requests of ``_sys/kvm_h``,
  the TAP's TUNSETOFFLOAD and the terminal and FIONBIO/FIOCLEX ones;
  ``socket``/``socketpair`` only AF_UNIX; ``mmap``/``mprotect`` never with
  PROT_EXEC (nothing is made executable after start-up); ``tgkill`` only
  within the process; ``clone``/``clone3`` only threads (no new process);
  ``prctl`` only PR_SET_NAME/PR_GET_NAME/PR_SET_NO_NEW_PRIVS; ``seccomp`` (it
  can only add filters).  Anything else kills the process
  (SECCOMP_RET_KILL_PROCESS: no code of the compromised process runs after
  the call), and the supervisor outside the jail names the system call from
  the kernel's audit record (``/dev/kmsg``, type 1326).
* **narrowing**, installed by each vCPU thread (whose exits run the device
  models a hostile guest drives) and by the ``io`` thread as they start:
  neither opens files, nor makes, binds or accepts sockets (the io thread
  still accepts and connects vsock's unix sockets, so it keeps those).

One filter with per-thread rules is not possible: a filter sees the system
call and its arguments, not which thread made it.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from .._sys import kvm_h, seccomp, tun
from .._sys.seccomp import SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ, Arg

#: allowed with any arguments
PLAIN = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "close", "lseek", "fstat", "newfstatat", "statx", "fcntl", "dup", "dup3", "pipe2", "getdents64",
    "readlink", "readlinkat", "stat", "lstat", "access", "faccessat", "faccessat2", "getcwd", "openat", "unlink",
    "unlinkat", "fsync", "fdatasync", "ftruncate", "fallocate",
    "fadvise64", "sync_file_range", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2",
    "poll", "ppoll", "select", "pselect6", "accept4", "bind", "listen", "connect", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "munmap", "mremap", "madvise", "brk", "futex", "set_robust_list", "get_robust_list", "rseq",
    "set_tid_address", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "sched_yield",
    "sched_getaffinity", "sched_setaffinity", "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid",
    "getegid", "getrandom", "getrusage", "times", "uname", "sysinfo", "exit", "exit_group",
    "memfd_create",  # guest memory shared with vhost-user back ends (never executable: no PROT_EXEC, no execve)
    "seccomp",  # only ever adds filters: the vCPU and io threads narrow theirs
)

#: ioctl requests outside KVM: TUNSETOFFLOAD, the terminal (TCGETS, TCSETS, TCSETSW, TCSETSF), FIONBIO,
#: FIONCLEX, FIOCLEX (CPython's setblocking and set_inheritable)
OTHER_IOCTLS = (tun.TUNSETOFFLOAD, 0x5401, 0x5402, 0x5403, 0x5404, 0x5421, 0x5450, 0x5451)

PROT_EXEC = 4
PR_SET_NAME, PR_GET_NAME, PR_SET_NO_NEW_PRIVS = 15, 16, 38
CLONE_THREAD = 0x00010000

#: what the narrowing filters refuse, per thread kind (EPERM: the thread's caller hears an error it reports)
NARROWED = {
    "vcpu": ("openat", "unlinkat", "socket", "socketpair", "connect", "accept4", "bind", "listen", "fallocate"),
    "io": ("openat", "unlinkat", "socket", "socketpair", "bind", "listen"),
}


class Summary(NamedTuple):
    rules: int
    instructions: int  # of the compiled BPF program
    ioctls: int


def ioctl_requests() -> list[int]:
    """Every KVM request _sys/kvm_h.py defines (type 0xAE) and the few others pyhv makes."""
    kvm = sorted({v for k, v in vars(kvm_h).items() if k.startswith("KVM_") and isinstance(v, int)
                  and (v >> 8) & 0xFF == kvm_h.KVMIO})
    return kvm + list(OTHER_IOCTLS)


#: what the jailer's Firecracker front end opens itself, by name, inside its root (Firecracker's model:
#: the TAP, created beforehand and owned by the jail's uid): TUNSETIFF, TUNSETVNETHDRSZ, and the
#: interface flags (read, and set only where the TAP is down, which then fails without CAP_NET_ADMIN)
JAILER_IOCTLS = (tun.TUNSETIFF, tun.TUNSETVNETHDRSZ, tun.SIOCGIFFLAGS, tun.SIOCSIFFLAGS)


def baseline(pid: int, jailer: bool = False, action: int = seccomp.SCMP_ACT_KILL_PROCESS) -> seccomp.Filter:
    """The process-wide filter of a confined VMM whose pid (in its namespace) is
    ``pid``; the ``jailer``'s front end may also open TAPs by name."""
    f = seccomp.Filter(action)
    allow = seccomp.SCMP_ACT_ALLOW
    for name in PLAIN:
        f.add(allow, name)
    for request in dict.fromkeys(ioctl_requests() + list(JAILER_IOCTLS if jailer else ())):
        f.add(allow, "ioctl", Arg(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
    for name in ("socket", "socketpair"):
        f.add(allow, name, Arg(0, SCMP_CMP_EQ, socket.AF_UNIX))
    for name in ("mmap", "mprotect"):
        f.add(allow, name, Arg(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
    f.add(allow, "tgkill", Arg(0, SCMP_CMP_EQ, pid))
    f.add(allow, "clone", Arg(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    # clone3 passes its flags in memory, which a filter cannot read: refuse it with
    # ENOSYS so glibc falls back to clone, whose flags are checked above
    f.add(seccomp.SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")
    for option in (PR_SET_NAME, PR_GET_NAME, PR_SET_NO_NEW_PRIVS):
        f.add(allow, "prctl", Arg(0, SCMP_CMP_EQ, option))
    return f


def narrowing(kind: str) -> seccomp.Filter:
    f = seccomp.Filter(seccomp.SCMP_ACT_ALLOW)
    for name in NARROWED[kind]:
        f.add(seccomp.SCMP_ACT_ERRNO(errno.EPERM), name)
    return f


def install_baseline(pid: int, jailer: bool = False) -> Summary:
    f = baseline(pid, jailer)
    try:
        summary = Summary(f.rules, f.program_length(), len(set(ioctl_requests())))
        f.load()
    finally:
        f.release()
    return summary


def narrow(kind: str) -> None:
    """Install ``kind``'s narrowing on the calling thread."""
    f = narrowing(kind)
    try:
        f.load()
    finally:
        f.release()
