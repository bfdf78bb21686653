"""Carrying a jail plan out: the domain process confined before its guest runs.

Order (every step before the first thread starts, so each per-thread property
is set once and inherited by every thread made afterwards):

1. :func:`hand_over` (still the host's root, in the host's namespaces): open
   the images the plan names and bind the unix sockets it listens on; the
   builder later asks for them by name (:data:`pyhv._sys.files.HANDED`).
   The caller has opened its console, control socket and TAPs likewise.
2. :func:`enter`: unshare a PID namespace and **fork**.  A new PID namespace
   only takes a process's children, and the VMM cannot be moved into one, so
   the confined VMM is a child.  We fork here, in the domain process, rather
   than have pyhvd spawn the child into namespaces: this way ``pyhv run``,
   ``pyhv domain`` (under pyhvd) and the ``jailer`` share one path, the
   child inherits every descriptor and Python object opened in step 1 with
   no passing protocol, and the one who confines is the one who knows what
   must stay open.  The parent stays outside as a small supervisor: it
   forwards SIGINT/SIGTERM/SIGHUP/SIGUSR2, waits, reports how the child
   ended, removes the jail directory and the socket names the child cannot
   remove, and exits with the child's status.
3. The child (PID 1 of its namespace): new mount, IPC, UTS, network and cgroup
   namespaces; ``/`` made private; the jail root bind-mounted onto itself;
   device nodes (owned by the jail's uid), the plan's bind mounts (read-only,
   nosuid, nodev, noexec), a ``/proc`` showing only its own PID namespace's
   processes (``subset=pid``); ``pivot_root`` into it, the old root detached,
   ``/`` remounted read-only; every descriptor but the kept ones closed, the
   environment cleared, rlimits set; no supplementary groups, the jail's gid
   and uid (which empties the permitted and effective capability sets), the
   bounding, inheritable and ambient sets emptied, ``no_new_privs`` set.

The child cannot read a Python module after ``pivot_root``: :func:`preload`
imports every module the VMM may import lazily first.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from .._sys import files, privs, seccomp
from ..errors import PyhvError
from . import policy
from .plan import Plan

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup")

#: the packages whose modules the VMM may import lazily (start-up time): every module in
#: them is imported before the jail hides the source, so a module added there later
#: is never missing inside a jail
PRELOAD_PACKAGES = ("pyhv.vmm", "pyhv.vcpu", "pyhv.kvm", "pyhv.devices", "pyhv.backends", "pyhv.boot",
                    "pyhv.debug", "pyhv.model", "pyhv.jail")
#: single modules and the standard library's lazily imported ones
PRELOAD = (
    "pyhv.paging", "pyhv.memory",
    "calendar", "contextlib", "select", "stat", "tempfile", "json", "socket", "resource", "encodings.idna",
    "binascii", "traceback", "linecache",
)



class JailFailed(PyhvError):
    """The jail could not be set up (one line: which step, why)."""


def jail_dir(run_dir: str, jail_id: str) -> str:
    """Where a domain's jail lives on the host: ``RUN_DIR/jail/ID`` (its root is ``root`` inside)."""
    return os.path.join(run_dir, "jail", jail_id)


def preload() -> None:
    import pkgutil

    for package in PRELOAD_PACKAGES:
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, package + "."):
            importlib.import_module(info.name)
    for name in PRELOAD:
        importlib.import_module(name)
    privs.load_libraries()
    seccomp.load_library()


def hand_over(plan: Plan) -> list[int]:
    """Open the plan's host files and bind its sockets, recorded in ``files.HANDED``;
    the descriptors made.  A file that cannot be opened is left out: the build
    inside the jail then fails naming it, as it would outside."""
    from ..backends.vsock_uds import bind_listener

    made: list[int] = []
    for f in plan.files:
        base = (os.O_RDWR if f.writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not hang
        for direct in (False, True) if f.direct else (False,):
            if (f.path, direct) in files.HANDED:
                continue
            try:
                fd = os.open(f.path, base | (os.O_DIRECT if direct else 0))
            except (OSError, ValueError):
                continue
            os.set_blocking(fd, True)
            files.HANDED[(f.path, direct)] = fd
            made.append(fd)
    for path in plan.sockets:
        try:
            sock = bind_listener(path)
        except OSError as e:
            raise JailFailed(f"cannot listen on {path}: {e.strerror or e}") from None
        files.HANDED[(path, False)] = sock.detach()
        made.append(files.HANDED[(path, False)])
    return made


def hand(path: str, fd: int) -> None:
    """Hand ``fd`` over under the name ``path`` (the builder or a save asks by it)."""
    files.HANDED[(path, False)] = fd


def remove_if_empty(path: str) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError:
        pass


def _ns_ids() -> dict[str, str]:
    out = {}
    for ns in NAMESPACES:
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = "?"
    return out


#: the host's namespaces, as the process saw them before it was confined (for the report)
HOST_NAMESPACES: dict[str, str] = {}
#: the baseline filter the confined process installed (for the report)
SECCOMP: list[policy.Summary] = []


def enter(plan: Plan, jail_id: str, keep: list[int], hand: list[int], cleanup: list[str]) -> int | None:
    """Confine into ``plan.root`` (``jail_dir(...)/root``, made here and removed at
    the end): returns None in the confined child, which goes on to run the
    domain; in the supervisor, returns the child's exit status once it ended
    (128+N if a signal N ended it).  The child keeps 0-2, ``keep``, ``hand``
    and the handed files' descriptors; the supervisor closes ``hand`` and the
    handed files (a TAP or a disk's lock must not outlive the child there).
    ``cleanup``: names the supervisor removes at the end (sockets bound
    before the jail, which the child cannot remove)."""
    root = plan.root
    home = os.path.dirname(root)
    try:
        os.makedirs(os.path.dirname(home), mode=0o700, exist_ok=True)
        os.mkdir(home, 0o700)
        os.mkdir(root, 0o755)
    except OSError as e:
        raise JailFailed(f"cannot make the jail directory {home}: {e.strerror}") from None
    HOST_NAMESPACES.update(_ns_ids())
    preload()
    breakout = os.environ.get("PYHV_TEST_BREAKOUT")  # tests only: the environment is cleared in the jail
    if breakout:
        from .breakout import attempt
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        privs.unshare(privs.CLONE_NEWPID)
        pid = os.fork()
    except OSError as e:
        _remove(home)
        raise JailFailed(f"cannot make the jail's PID namespace: {e.strerror or e}") from None
    if pid == 0:
        try:
            confine(plan, jail_id, keep + hand)
        except OSError as e:
            raise JailFailed(f"cannot confine the domain: {e}") from None
        if breakout:
            attempt(breakout)
        return None
    return _supervise(pid, home, hand, cleanup)


def _supervise(pid: int, home: str, hand: list[int], cleanup: list[str]) -> int:
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(s, forward)
    for fd in [*hand, *files.HANDED.values()]:
        try:
            os.close(fd)
        except OSError:
            pass
    files.HANDED.clear()
    _, status = os.waitpid(pid, 0)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(s, signal.SIG_DFL)
    _remove(home)
    for path in cleanup:
        try:
            os.unlink(path)
        except OSError:
            pass
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        why = f" (seccomp: {_seccomp_culprit(pid)})" if signum == signal.SIGSYS else ""
        print(f"pyhv: the confined VMM was killed by {signal.Signals(signum).name}{why}", file=sys.stderr, flush=True)
        return 128 + signum
    return os.WEXITSTATUS(status)


def _seccomp_culprit(pid: int, wait: float = 1.0) -> str:
    """The system call the kernel's seccomp audit record (type 1326) names for
    process ``pid`` (host pid), read from /dev/kmsg; the record comes through
    kauditd a moment after the kill, so it is looked for up to ``wait`` seconds."""
    import re
    import time

    pattern = re.compile(rf"type=1326 .*\bpid={pid} .*\bsyscall=(\d+)")
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            return f"system call not known: /dev/kmsg: {e.strerror}"
        found = None
        try:
            while True:
                try:
                    record = os.read(fd, 8192).decode(errors="replace")
                except BlockingIOError:
                    break
                except OSError:  # EPIPE: records overwritten while reading
                    continue
                match = pattern.search(record)
                if match:
                    found = int(match.group(1))
        finally:
            os.close(fd)
        if found is not None:
            return f"system call {seccomp.syscall_name(found)} ({found})"
        if time.monotonic() > deadline:
            return "system call not in the kernel log"
        time.sleep(0.05)


def _remove(home: str) -> None:
    """The jail directory: device nodes, empty mount points, the root; symbolic
    links are never followed (none is made there)."""
    for top, dirs, names in os.walk(home, topdown=False):
        for name in names:
            os.unlink(os.path.join(top, name))
        for name in dirs:
            path = os.path.join(top, name)
            (os.unlink if os.path.islink(path) else os.rmdir)(path)
    os.rmdir(home)


def confine(
    plan: Plan, jail_id: str, keep: list[int], netns: int | None = None, jailer: bool = False, filtered: bool = True,
) -> None:
    """Confine the calling process (single-threaded) as the plan says.  Its
    network namespace is a new one, or the one ``netns`` refers to (the
    ``jailer``'s ``--netns``).  ``jailer``: Firecracker's jailer layout, whose
    root the user fills (kernel, disks, owned by the jail's uid) and in which
    the front end makes its API socket, so it stays writable; its ``/run`` is
    made for the socket."""
    import resource

    flags = privs.CLONE_NEWNS | privs.CLONE_NEWIPC | privs.CLONE_NEWUTS | privs.CLONE_NEWCGROUP
    if netns is None:
        flags |= privs.CLONE_NEWNET
    else:
        privs.setns(netns, privs.CLONE_NEWNET)
    privs.unshare(flags)
    privs.mount(None, "/", None, privs.MS_REC | privs.MS_PRIVATE)
    root = plan.root
    privs.mount(root, root, None, privs.MS_BIND)
    for path, major, minor in plan.devices:
        node = os.path.join(root, path)
        os.makedirs(os.path.dirname(node), mode=0o755, exist_ok=True)
        if os.path.lexists(node):
            os.unlink(node)  # a jailer root used before
        os.mknod(node, 0o600 | 0o020000, os.makedev(major, minor))  # S_IFCHR
        os.chown(node, plan.uid, plan.gid)
    if jailer:
        run = os.path.join(root, "run")
        os.makedirs(run, mode=0o755, exist_ok=True)
        os.chown(run, plan.uid, plan.gid)
    hidden = privs.MS_NOSUID | privs.MS_NODEV | privs.MS_NOEXEC
    for m in plan.mounts:
        target = os.path.join(root, m.target)
        if os.path.isdir(m.source):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        privs.mount(m.source, target, None, privs.MS_BIND | privs.MS_REC)
        privs.mount(None, target, None,
                    privs.MS_BIND | privs.MS_REMOUNT | hidden | (privs.MS_RDONLY if m.readonly else 0))
    proc = os.path.join(root, "proc")
    os.makedirs(proc, 0o555, exist_ok=True)
    privs.mount("proc", proc, "proc", hidden, "subset=pid")
    os.chdir(root)
    privs.pivot_root(".", ".")
    privs.umount2(".", privs.MNT_DETACH)
    os.chdir("/")
    privs.mount(None, "/", None,
                privs.MS_BIND | privs.MS_REMOUNT | privs.MS_NOSUID | (0 if jailer else privs.MS_RDONLY))
    privs.sethostname(f"pyhv-{jail_id}"[:64])
    wanted = {0, 1, 2, *keep, *files.HANDED.values()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in wanted:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory listing's own descriptor
    os.environ.clear()
    for name, value in plan.rlimits:
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
    os.setgroups([])
    os.setresgid(plan.gid, plan.gid, plan.gid)
    privs.drop_bounding_set()  # needs CAP_SETPCAP: before the uid changes
    os.setresuid(plan.uid, plan.uid, plan.uid)  # from 0: the permitted and effective sets empty
    # the supervisor gone (killed): so is the domain.  Set after the ids change, which clears it.
    # Not under the jailer, whose parent leaves (--new-pid-ns) or which is the process itself
    if not jailer:
        privs.set_parent_death_signal(signal.SIGKILL)
    privs.clear_capabilities()
    privs.set_no_new_privs()
    if not filtered:
        return
    SECCOMP.append(policy.install_baseline(os.getpid(), jailer))  # last: every thread made from now on has it
    from ..vcpu import thread

    thread.on_thread_start = policy.narrow


def report() -> str:
    """What the confined process can still reach: its namespaces (own or the
    host's), ids, capabilities, no_new_privs, seccomp mode, mounts."""
    lines = []
    now = _ns_ids()
    for ns in NAMESPACES:
        own = "own" if HOST_NAMESPACES.get(ns) not in (None, now[ns]) else "host's"
        lines.append(f"jail: namespace {ns} {now[ns]} ({own})")
    wanted = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
              "Seccomp_filters")
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                lines.append(f"jail: {key} {' '.join(value.split())}")
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            lines.append(f"jail: mount {fields[1]} {fields[2]} {fields[3]}")
    lines.append(f"jail: cwd {os.getcwd()} files {sorted(os.listdir('/'))}")
    for summary in SECCOMP:
        lines.append(f"jail: seccomp baseline: {summary.rules} rules, {summary.instructions} BPF instructions, "
                     f"{summary.ioctls} ioctl requests, default kill-process")
    for kind, names in policy.NARROWED.items():
        lines.append(f"jail: seccomp {kind} threads also refuse (EPERM): {' '.join(names)}")
    return "\n".join(lines)
