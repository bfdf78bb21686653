"""What a domain's jail holds, worked out from its description alone.

:func:`plan` names every bind mount (read-only where the guest may not write),
device node and resource limit the jailed process needs, and picks its uid/gid
from a range.  It reads no files and changes nothing; carrying a plan out is a
separate, privileged step.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..model import Description

#: device nodes a domain process needs: (path inside the jail, major, minor)
DEVICES = (("dev/kvm", 10, 232), ("dev/net/tun", 10, 200), ("dev/urandom", 1, 9))


class Mount(NamedTuple):
    source: str  # absolute host path
    target: str  # path inside the jail root, relative
    readonly: bool


class Plan(NamedTuple):
    root: str
    uid: int
    gid: int
    mounts: tuple[Mount, ...]
    devices: tuple[tuple[str, int, int], ...]
    rlimits: tuple[tuple[str, int], ...]


class JailError(ValueError):
    """A description or id range a jail cannot be planned for."""


def _inside(path: str) -> str:
    return os.path.normpath(path).lstrip("/")


def plan(d: Description, root: str, index: int, first_id: int = 100000, count: int = 65536,
         nofile: int = 1024, fsize: int = 1 << 40) -> Plan:
    """The jail for domain number ``index`` under ``root``; ids come from [first_id, first_id+count)."""
    if not os.path.isabs(root):
        raise JailError(f"jail root {root!r} is not an absolute path")
    if first_id <= 0 or not 0 <= index < count:
        raise JailError(f"domain number {index} is outside the id range {first_id}+{count}")
    mounts: list[Mount] = [Mount(d.payload.kernel, _inside(d.payload.kernel), True)]
    if d.payload.initrd:
        mounts.append(Mount(d.payload.initrd, _inside(d.payload.initrd), True))
    mounts += [Mount(x.path, _inside(x.path), x.readonly) for x in d.disks if x.path]
    mounts += [Mount(x.base, _inside(x.base), True) for x in d.disks if x.base]  # shared bases: never written
    # unix sockets are reached through their folders (vsock's PATH_PORT, vhost-user back ends'),
    # a shared directory as itself
    folders = [os.path.dirname(x.vhost_user) for x in d.disks if x.vhost_user]
    folders += [os.path.dirname(f.socket) for f in d.fs if f.socket] + [f.path for f in d.fs if f.path]
    if d.vsock is not None:
        folders.append(os.path.dirname(d.vsock.uds))
    mounts += [Mount(folder, _inside(folder), False) for folder in dict.fromkeys(folders)]
    for m in mounts:
        if not os.path.isabs(m.source):
            raise JailError(f"{m.source!r} is not an absolute path")
    return Plan(root, first_id + index, first_id + index, tuple(mounts), DEVICES,
                (("NOFILE", nofile), ("FSIZE", fsize), ("NPROC", 1)))
