"""What a domain's jail holds, worked out from its description alone.

:func:`plan` names every host file handed over as an open descriptor (the
kernel, the initrd and fw_cfg files read-only; disks as described, with an
O_DIRECT descriptor for ``cache=none``), every unix socket bound before the
jail (vsock), every bind mount (the vsock socket's directory, read-only: the
process connects to ``uds_PORT`` there but creates nothing), device node and
resource limit the jailed process needs, and picks its uid/gid from a range.
It reads no files and changes nothing; :mod:`pyhv.jail.enter` carries a plan
out.
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


class HostFile(NamedTuple):
    path: str  # the name the builder asks for (as the description gives it)
    writable: bool
    direct: bool  # an O_DIRECT descriptor as well (cache=none)


class Plan(NamedTuple):
    root: str
    uid: int
    gid: int
    files: tuple[HostFile, ...]
    sockets: tuple[str, ...]  # unix sockets the domain listens on, bound before it is confined
    mounts: tuple[Mount, ...]
    devices: tuple[tuple[str, int, int], ...]
    rlimits: tuple[tuple[str, int], ...]


class JailError(ValueError):
    """A description or id range a jail cannot be planned for."""


def _inside(path: str) -> str:
    return os.path.normpath(path).lstrip("/")


#: the uid/gid range pyhvd's domains take by default: [DEFAULT_FIRST_ID, DEFAULT_FIRST_ID + DEFAULT_COUNT)
DEFAULT_FIRST_ID = 100000
DEFAULT_COUNT = 65536
#: ``pyhv run --jail`` takes RUN_FIRST_ID + (pid mod DEFAULT_COUNT): apart from pyhvd's, since
#: domains sharing a uid share its task limit
RUN_FIRST_ID = DEFAULT_FIRST_ID + DEFAULT_COUNT


def plan(d: Description, root: str, index: int, first_id: int = DEFAULT_FIRST_ID, count: int = DEFAULT_COUNT,
         nofile: int = 1024, fsize: int = 1 << 40) -> Plan:
    """The jail for domain number ``index`` under ``root``; ids come from [first_id, first_id+count)."""
    if not os.path.isabs(root):
        raise JailError(f"jail root {root!r} is not an absolute path")
    if first_id <= 0 or not 0 <= index < count:
        raise JailError(f"domain number {index} is outside the id range {first_id}+{count}")
    files = [HostFile(d.payload.firmware or d.payload.kernel, False, False)]
    if d.payload.initrd:
        files.append(HostFile(d.payload.initrd, False, False))
    files += [HostFile(x.file, False, False) for x in d.fw_cfg if x.file]
    files += [HostFile(x.path, not x.readonly, x.cache == "none") for x in d.disks if x.path]
    mounts: list[Mount] = []
    sockets: tuple[str, ...] = ()
    # back ends pyhv would start itself (virtiofsd, qemu-storage-daemon) cannot be
    # started from inside a jail, which may not execute anything
    for key, value in [(f"fs[{i}].path", f.path) for i, f in enumerate(d.fs)] + [
            (f"disks[{i}].base", x.base) for i, x in enumerate(d.disks)]:
        if value:
            raise JailError(f"{key}: a confined domain cannot start its own back end; "
                            "give the socket of one started outside, or run without the jail")
    # vhost-user back ends' unix sockets are reached through their folders
    folders = [os.path.dirname(os.path.abspath(x.vhost_user)) for x in d.disks if x.vhost_user]
    folders += [os.path.dirname(os.path.abspath(f.socket)) for f in d.fs if f.socket]
    if d.vsock is not None:
        folders.append(os.path.dirname(os.path.abspath(d.vsock.uds)))
        sockets = (d.vsock.uds,)
    mounts += [Mount(folder, _inside(folder), True) for folder in dict.fromkeys(folders)]
    # NPROC counts the tasks of the (per-domain) uid: vCPU threads, the io thread,
    # control and console threads, with room for requests in flight
    nproc = d.vcpus + 128
    return Plan(root, first_id + index, first_id + index, tuple(files), sockets, tuple(mounts), DEVICES,
                (("NOFILE", nofile), ("FSIZE", fsize), ("NPROC", nproc)))
