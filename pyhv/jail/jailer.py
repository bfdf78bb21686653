"""``jailer``: Firecracker's jailer command line, confining pyhv's Firecracker front end.

    jailer --id ID --exec-file FILE --uid UID --gid GID
           [--chroot-base-dir DIR (/srv/jailer)] [--netns PATH] [--daemonize] [--new-pid-ns]
           [--cgroup FILE=VALUE]... [--cgroup-version 1|2] [--parent-cgroup PATH]
           [--resource-limit fsize=N|no-file=N]... [-- FRONT-END ARGS...]

As Firecracker's: the root is ``DIR/<exec-file's name>/ID/root`` (made if
missing; the user puts the kernel and disks there, owned by UID, and names
them by their paths inside it), with ``dev/kvm``, ``dev/net/tun`` and
``dev/urandom`` owned by UID:GID; the process joins ``--netns`` (a network
namespace file, e.g. /var/run/netns/NAME), its cgroups, takes the resource
limits (``fsize`` default unlimited, ``no-file`` default 2048), and with
``--daemonize`` calls setsid and sends its standard streams to /dev/null.  The
front end is given the arguments after ``--`` and ``--id ID``; its API socket
(``/run/firecracker.socket`` unless ``--api-sock`` says otherwise) is inside the root.

Unlike Firecracker's jailer, nothing is executed: ``--exec-file`` names the
binary for the directory layout and must be an existing file, and pyhv's
Firecracker front end (:mod:`pyhv.firecracker`) runs in this process once it
is confined (pyhv/jail/enter.py: namespaces, pivot_root, UID/GID, no
capabilities, no_new_privs, the seccomp baseline, which the front end's
``--no-seccomp`` leaves off).  With ``--new-pid-ns`` it runs as pid 1 of a new
PID namespace: the jailer forks, writes the child's pid to
``<root>/<exec-file's name>.pid`` and exits, as Firecracker's does.

cgroups: version 1 (this host's) writes each ``FILE=VALUE`` to
``/sys/fs/cgroup/<controller>/<parent>/ID/FILE`` and the process to its
``tasks``; version 2 writes under ``/sys/fs/cgroup/<parent>/ID/`` and
``cgroup.procs`` (written as Firecracker does, not tried on a v2 host here).
``--parent-cgroup`` defaults to the exec file's name.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from ..errors import PyhvError, UsageError

DEFAULT_BASE = "/srv/jailer"
CGROUP_ROOT = "/sys/fs/cgroup"
_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # Firecracker's: alphanumeric and hyphens, at most 64
_VALUED = {"--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir", "--netns", "--cgroup",
           "--cgroup-version", "--parent-cgroup", "--resource-limit"}
_FLAGS = {"--daemonize", "--new-pid-ns"}
_REPEATED = {"--cgroup", "--resource-limit"}


class Args:
    def __init__(self, argv: Sequence[str]) -> None:
        args = list(argv)
        self.rest: list[str] = []
        if "--" in args:
            at = args.index("--")
            args, self.rest = args[:at], args[at + 1:]
        values: dict[str, list[str]] = {}
        flags: set[str] = set()
        while args:
            arg = args.pop(0)
            name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if name in _FLAGS and not eq:
                flags.add(name)
                continue
            if name not in _VALUED:
                raise UsageError(f"unknown option {arg!r} (see jailer --help)")
            if not eq:
                if not args:
                    raise UsageError(f"{name} needs a value")
                value = args.pop(0)
            if name in values and name not in _REPEATED:
                raise UsageError(f"{name} given twice")
            values.setdefault(name, []).append(value)
        for required in ("--id", "--exec-file", "--uid", "--gid"):
            if required not in values:
                raise UsageError(f"{required} is required")
        self.id = values["--id"][0]
        if not _ID.match(self.id):
            raise UsageError(f"--id {self.id!r}: 1 to 64 letters, digits and hyphens")
        self.exec_file = values["--exec-file"][0]
        if not os.path.isfile(self.exec_file):
            raise UsageError(f"--exec-file {self.exec_file}: not a file")
        self.uid = _number(values["--uid"][0], "--uid")
        self.gid = _number(values["--gid"][0], "--gid")
        self.base = values.get("--chroot-base-dir", [DEFAULT_BASE])[0]
        if not os.path.isabs(self.base):
            raise UsageError(f"--chroot-base-dir {self.base!r}: must be an absolute path")
        self.netns = values.get("--netns", [""])[0]
        self.daemonize = "--daemonize" in flags
        self.new_pid_ns = "--new-pid-ns" in flags
        self.cgroup_version = values.get("--cgroup-version", ["1"])[0]
        if self.cgroup_version not in ("1", "2"):
            raise UsageError(f"--cgroup-version {self.cgroup_version!r}: 1 or 2")
        self.exec_name = os.path.basename(self.exec_file)
        self.parent_cgroup = values.get("--parent-cgroup", [self.exec_name])[0]
        if os.path.isabs(self.parent_cgroup) or ".." in self.parent_cgroup.split("/"):
            raise UsageError(f"--parent-cgroup {self.parent_cgroup!r}: a relative path without ..")
        self.cgroups: list[tuple[str, str]] = []
        for spec in values.get("--cgroup", []):
            file, eq, value = spec.partition("=")
            if not eq or not re.match(r"^[a-z_]+\.[a-z_.]+$", file):
                raise UsageError(f"--cgroup {spec!r}: expected FILE=VALUE, e.g. cpuset.cpus=0")
            self.cgroups.append((file, value))
        self.limits = {"FSIZE": -1, "NOFILE": 2048}
        for spec in values.get("--resource-limit", []):
            key, eq, value = spec.partition("=")
            limit = {"fsize": "FSIZE", "no-file": "NOFILE"}.get(key)
            if limit is None or not eq:
                raise UsageError(f"--resource-limit {spec!r}: expected fsize=N or no-file=N")
            self.limits[limit] = _number(value, f"--resource-limit {key}")

    @property
    def root(self) -> str:
        return os.path.join(self.base, self.exec_name, self.id, "root")


def _number(text: str, what: str) -> int:
    if not text.isdigit() or int(text) >= 1 << 32:
        raise UsageError(f"{what} {text!r}: expected a number")
    return int(text)


def join_cgroups(a: Args, pid: int) -> list[str]:
    """Write each cgroup setting and ``pid`` into its cgroup; the directories made."""
    made: list[str] = []
    if not a.cgroups:
        return made
    targets: dict[str, str] = {}
    for file, value in a.cgroups:
        controller = file.split(".")[0]
        base = os.path.join(CGROUP_ROOT, controller) if a.cgroup_version == "1" else CGROUP_ROOT
        if not os.path.isdir(base):
            raise PyhvError(f"--cgroup {file}: no cgroup controller at {base} (cgroup version {a.cgroup_version})")
        folder = os.path.join(base, a.parent_cgroup, a.id)
        made += _make_cgroup(base, os.path.join(a.parent_cgroup, a.id), controller == "cpuset" and a.cgroup_version == "1")
        try:
            with open(os.path.join(folder, file), "w") as f:
                f.write(value)
        except OSError as e:
            raise PyhvError(f"--cgroup {file}={value}: {e.strerror}") from None
        targets[folder] = "tasks" if a.cgroup_version == "1" else "cgroup.procs"
    for folder, procs in targets.items():
        with open(os.path.join(folder, procs), "w") as f:
            f.write(str(pid))
    return made


def _make_cgroup(base: str, relative: str, cpuset: bool) -> list[str]:
    """Each missing level of ``base/relative``; a v1 cpuset level takes its parent's
    cpus and mems (an empty cpuset takes no task), as Firecracker's jailer does."""
    made: list[str] = []
    here = base
    for part in relative.split("/"):
        parent, here = here, os.path.join(here, part)
        if os.path.isdir(here):
            continue
        os.mkdir(here)
        made.append(here)
        if cpuset:
            for name in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(parent, name)) as src, open(os.path.join(here, name), "w") as dst:
                    dst.write(src.read().strip() or "\n")
    return made


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        return _run(Args(argv))
    except PyhvError as e:
        print(f"jailer: {e}", file=sys.stderr)
        return e.exit_status


def _run(a: Args) -> int:
    from .._sys import privs
    from . import enter
    from .plan import DEVICES, Plan

    if os.geteuid() != 0:
        raise UsageError("jailer needs root (it makes namespaces, device nodes and drops to --uid)")
    os.makedirs(a.root, mode=0o755, exist_ok=True)
    netns = -1
    if a.netns:
        try:
            netns = os.open(a.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PyhvError(f"--netns {a.netns}: {e.strerror}") from None
    join_cgroups(a, os.getpid())
    if a.daemonize:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    rlimits = tuple((name, value) for name, value in a.limits.items() if value >= 0)
    plan = Plan(a.root, a.uid, a.gid, (), (), (), DEVICES, rlimits)
    from .. import firecracker

    enter.preload()
    for name in ("pyhv.firecracker.server", "pyhv.firecracker.vmm", "pyhv.firecracker.config",
                 "pyhv.firecracker.log", "http", "email.utils"):
        __import__(name)
    if a.new_pid_ns:
        privs.unshare(privs.CLONE_NEWPID)
        pid = os.fork()
        if pid:
            with open(os.path.join(a.root, f"{a.exec_name}.pid"), "w") as f:
                f.write(f"{pid}\n")
            return 0
    try:
        enter.confine(plan, a.id, [], netns if netns >= 0 else None, jailer=True,
                      filtered="--no-seccomp" not in a.rest)
    except OSError as e:
        raise PyhvError(f"cannot confine: {e}") from None
    return int(firecracker.main([*a.rest, "--id", a.id]))
