"""The machine description: what a domain is made of, described once.

Every front end produces a :class:`Description` and nothing else: ``pyhv run``
options (:mod:`pyhv.model.options`), TOML files and the API's JSON
(:mod:`pyhv.model.files`, both through :func:`from_plain`), snapshots and
migration streams (which carry :func:`to_plain`'s output and come back through
:func:`from_plain`).  So a resource is described, checked and serialised here
and nowhere else, and every limit is a constant of this module.

The plain form is the TOML/JSON schema::

    name = "web1"
    kernel = "guests/build/probe.elf"   # initrd, cmdline, boot = auto|linux|pvh|multiboot
    # firmware = "/usr/share/seabios/bios.bin"  # instead of a kernel: a BIOS ROM run from the reset vector
    memory = "256M"          # or an integer number of MiB
    maxmem = "512M"          # the most mem-set may give it (default: memory)
    vcpus = 2
    on_poweroff = "destroy"  # destroy | restart
    on_reboot = "restart"    # destroy | restart
    on_crash = "destroy"     # destroy | restart | preserve
    serial = "stdio"         # stdio | none | file:PATH (domains under pyhvd: their console log)
    debug_exit = "off"       # isa-debug-exit at 0xf4: a guest write of V ends the domain with a status:
                             # "pyhv" (or true): V & 0xff; "qemu": (V << 1) | 1 as QEMU's; "off" (or false)
    jail = true              # pyhvd confines the domain's VMM (README: Confinement); false opts out
    balloon = true
    rng = true
    transport = "pci"        # how virtio devices are attached: pci (virtio-pci, MSI-X) | mmio
                             # (virtio-mmio windows, announced as virtio_mmio.device= on the command line;
                             # at most 15 devices)
    vmgenid = true           # VM Generation ID (default on): a new one at boot and at every restore

    [[disks]]
    path = "/var/lib/pyhv/web1.img"
    readonly = false
    serial = "web1-root"     # at most 20 bytes: what the guest reads with GET_ID
    cache = "writeback"      # writeback (host page cache) | none (O_DIRECT)
    rate_limit = { ops = { size = 1000, refill_ms = 1000 }, bandwidth = { size = 52428800, refill_ms = 1000 } }
                             # token buckets (Firecracker's): size tokens (requests, bytes) refilled
                             # every refill_ms; burst = N extra tokens once; either bucket may be left out

    [[disks]]                # copy-on-write: a qcow2 overlay over a shared raw base image,
    path = "/var/lib/pyhv/web1-data.qcow2"   # created if missing, served by qemu-storage-daemon
    base = "/var/lib/pyhv/base.img"          # (a vhost-user-blk device; or vhost_user = "SOCKET" alone)

    [[nics]]
    tap = "web1-0"
    mac = "52:54:00:12:34:56"
    bridge = "br0"
    rx_rate_limit = { bandwidth = { size = 12500000, refill_ms = 1000, burst = 0 } }   # and tx_rate_limit

    [[fw_cfg]]               # QEMU's fw_cfg: files the guest's firmware or OS reads by name
    name = "opt/org.example/role"   # at most 55 printable ASCII bytes; opt/ is the users' space
    string = "web"           # or file = "/path" (read when the machine is built)

    [[fs]]                   # virtio-fs: a host directory the guest mounts by its tag
    tag = "shared"           # 1-36 bytes, what the guest names it by (mount -t virtiofs shared /mnt)
    path = "/srv/web1"       # pyhv starts Debian's virtiofsd on this directory, ended with the domain
    # socket = "/run/vfs.sock"  # or: a vhost-user back end already listening there (not both)

    [vsock]
    cid = 3
    uds = "/run/pyhv/web1.vsock"

    [sched]
    weight = 256
    warp_ms = 0
    warp_limit_ms = 2000
    unwarp_ms = 1000

A problem is a :class:`DescriptionError` that carries the key's path
(``("disks", 1, "serial")``) and a message; each front end names the key in
its own syntax (``disks[1].serial: ...`` in a file, ``--disk 'x,serial=...':
serial: ...`` on the command line).

The records are ``NamedTuple``s, not dataclasses: they are as immutable, and
``dataclasses`` (through ``inspect``) costs a domain process about 10 ms at
start-up.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from ..errors import UsageError

MiB = 1 << 20
PAGE_SIZE = 4096

# --- limits: each one lives here and only here -----------------------------------------
MIN_MEMORY = 16 * MiB
MAX_MEMORY = 1 << 40
MAX_VCPUS = 255  # xAPIC IDs are 8 bits; 0xff is the broadcast ID
MAX_DISKS = 16
MAX_NICS = 16
DISK_SERIAL_MAX = 20  # VIRTIO_BLK_ID_BYTES
IFNAME_MAX = 15  # IFNAMSIZ - 1
#: sun_path is 108 bytes; guest connections to host port P use PATH_P (up to 11 more)
VSOCK_UDS_MAX = 90
VSOCK_CID_MIN = 3  # 0-2 are reserved (hypervisor, local, host)
VSOCK_CID_MAX = 0xFFFF_FFFE  # 0xffffffff is VMADDR_CID_ANY
NAME_MAX = 64
MAX_CLONES = 1000  # domains one restore request may make from one snapshot
PATH_MAX = 4095  # bytes of a host file name (PATH_MAX less the terminating NUL)
SCHED_WEIGHT_MAX = 65535
SCHED_WARP_MAX_MS = 10_000
SCHED_LIMIT_MAX_MS = 3_600_000
MAX_FS = 8
FS_TAG_MAX = 36  # virtio-fs config: tag[36], NUL-padded (virtio 1.2, 5.11.4)
UNIX_PATH_MAX = 107  # sun_path[108] with its NUL
MAX_FW_CFG = 16  # user entries (QEMU has 32 file slots; pyhv's own files take some)
FW_CFG_NAME_MAX = 55  # name[56] in fw_cfg's directory, with its NUL
FW_CFG_DATA_MAX = 16 * MiB  # each entry's bytes, a file's or a string's
BUCKET_SIZE_MAX = 1 << 62  # tokens in a rate limiter's bucket (requests or bytes)
BUCKET_REFILL_MAX_MS = 3_600_000
#: fw_cfg files pyhv itself provides: a user entry may not take their names
FW_CFG_OWN_NAMES = ("bootorder", "etc/e820")

BOOT_PROTOCOLS = ("auto", "linux", "pvh", "multiboot")
ON_POWEROFF = ("destroy", "restart")
ON_REBOOT = ("destroy", "restart")
ON_CRASH = ("destroy", "restart", "preserve")
DEBUG_EXIT_MAPPINGS = ("off", "pyhv", "qemu")
DISK_CACHE = ("writeback", "none")
#: the machine's one virtio transport: every virtio device sits on PCI, or every one on an MMIO window
TRANSPORTS = ("pci", "mmio")
#: virtio devices on the mmio transport: one IOAPIC line each, and 15 lines are free (vmm/mmio.py)
MAX_MMIO_DEVICES = 15

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (NAME_MAX - 1)
_MAC = r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}"  # patterns compiled on first use (re's cache): start-up pays nothing


class DescriptionError(UsageError):
    """A value that is not a valid description: ``path`` names the key, from the top."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{key_name(path)}: {message}" if path else message)


def key_name(path: tuple[str | int, ...]) -> str:
    """``("disks", 1, "serial")`` -> ``disks[1].serial`` (the key as a file spells it)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# --- the records -----------------------------------------------------------------------


class Payload(NamedTuple):
    """What boots: a kernel image, its initrd and command line, and how to enter it;
    or (``firmware``, then ``kernel`` is empty) a BIOS ROM the vCPU runs from the reset vector."""

    kernel: str
    initrd: str = ""
    cmdline: str = ""
    boot: str = "auto"
    firmware: str = ""


class Bucket(NamedTuple):
    """A token bucket: ``size`` tokens, refilled at ``size`` per ``refill_ms``
    milliseconds, and ``burst`` tokens more once, at the start."""

    size: int
    refill_ms: int
    burst: int = 0


class RateLimit(NamedTuple):
    """A queue's limits: ``bandwidth`` in bytes, ``ops`` in requests (or frames)."""

    bandwidth: Bucket | None = None
    ops: Bucket | None = None


class Disk(NamedTuple):
    """A virtio-blk disk: the raw image at ``path`` (pyhv does the I/O); or, with
    ``base``, a qcow2 overlay at ``path`` over that raw base image, served by a
    qemu-storage-daemon pyhv starts (a vhost-user-blk device); or, with
    ``vhost_user`` instead of ``path``, a vhost-user-blk back end already
    listening on that socket."""

    path: str
    readonly: bool = False
    serial: str = ""
    cache: str = "writeback"
    rate_limit: RateLimit | None = None
    base: str = ""
    vhost_user: str = ""


class Nic(NamedTuple):
    tap: str
    mac: str = ""  # empty: derived from the TAP name
    bridge: str = ""
    rx_rate_limit: RateLimit | None = None  # frames to the guest
    tx_rate_limit: RateLimit | None = None  # frames from the guest


class Vsock(NamedTuple):
    cid: int
    uds: str


class Fs(NamedTuple):
    """A virtio-fs device: its ``tag`` and either the ``socket`` of a running
    vhost-user back end or a directory ``path`` pyhv serves with its own virtiofsd."""

    tag: str
    socket: str = ""
    path: str = ""


class FwCfgEntry(NamedTuple):
    """A named fw_cfg file: a host file's contents (read when the machine is
    built) or, without ``file``, the ``string``'s UTF-8 bytes."""

    name: str
    file: str = ""
    string: str = ""


class Sched(NamedTuple):
    """Borrowed-Virtual-Time parameters (docs/SCHEDULING.md)."""

    weight: int = 256
    warp_ms: int = 0
    warp_limit_ms: int = 2000
    unwarp_ms: int = 1000


class Lifecycle(NamedTuple):
    """What each way of ending does: the same under ``pyhv run`` and pyhvd."""

    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"


class Description(NamedTuple):
    """A whole domain.  Build it with :func:`from_plain` (or a front end's
    parser), which checks everything; treat it as read-only."""

    payload: Payload
    name: str = ""
    memory: int = 256 * MiB
    maxmem: int = 256 * MiB
    vcpus: int = 1
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    vsock: Vsock | None = None
    fw_cfg: tuple[FwCfgEntry, ...] = ()
    fs: tuple[Fs, ...] = ()
    rng: bool = False
    balloon: bool = False
    serial: str = "stdio"
    debug_exit: str = "off"  # one of DEBUG_EXIT_MAPPINGS
    transport: str = "pci"
    vmgenid: bool = True
    jail: bool = True
    lifecycle: Lifecycle = Lifecycle()
    sched: Sched = Sched()


#: the plain form's top-level keys, in the order :func:`to_plain` writes them
TOP_KEYS = (
    "name", "kernel", "initrd", "cmdline", "boot", "firmware", "memory", "maxmem", "vcpus", "on_poweroff",
    "on_reboot", "on_crash", "serial", "debug_exit", "jail", "balloon", "rng", "vmgenid", "transport", "disks",
    "nics", "vsock", "fw_cfg", "fs", "sched",
)
DISK_KEYS = tuple(Disk._fields)
NIC_KEYS = tuple(Nic._fields)
VSOCK_KEYS = tuple(Vsock._fields)
FW_CFG_KEYS = tuple(FwCfgEntry._fields)
FS_KEYS = tuple(Fs._fields)
SCHED_KEYS = tuple(Sched._fields)


# --- plain values -> description (files, the API, snapshots, migration) ----------------------


def from_plain(data: Any) -> Description:
    """The description a plain mapping (decoded TOML or JSON) gives, every value checked."""
    if not isinstance(data, dict):
        raise DescriptionError((), "a domain description must be a table (an object)")
    _known(data, TOP_KEYS, ())
    memory = parse_size(data.get("memory", Description._field_defaults["memory"] // MiB), ("memory",))
    maxmem = parse_size(data["maxmem"], ("maxmem",)) if "maxmem" in data else memory
    if maxmem < memory:
        raise DescriptionError(("maxmem",), "must be at least memory")
    name = _str(data, "name", ())
    if "name" in data:  # a domain may go unnamed (pyhv run), but a name given must be one
        check_name(name, ("name",))
    disks = tuple(disk_from_plain(d, ("disks", i)) for i, d in enumerate(_array(data, "disks", MAX_DISKS)))
    _unique([d.path or f"\0{i}" for i, d in enumerate(disks)], "disks", "path", "the same image as")
    nics = tuple(nic_from_plain(n, ("nics", i)) for i, n in enumerate(_array(data, "nics", MAX_NICS)))
    vsock = vsock_from_plain(data["vsock"], ("vsock",)) if data.get("vsock") is not None else None
    fw_cfg = tuple(fw_cfg_from_plain(e, ("fw_cfg", i)) for i, e in enumerate(_array(data, "fw_cfg", MAX_FW_CFG)))
    _unique([e.name for e in fw_cfg], "fw_cfg", "name", "the same name as")
    fs = tuple(fs_from_plain(f, ("fs", i)) for i, f in enumerate(_array(data, "fs", MAX_FS)))
    _unique([f.tag for f in fs], "fs", "tag", "the same tag as")
    rng, balloon = _bool(data, "rng", False, ()), _bool(data, "balloon", False, ())
    transport = _choice(data, "transport", TRANSPORTS, Description._field_defaults["transport"], ())
    virtio = len(disks) + len(nics) + rng + balloon + (vsock is not None)
    if transport == "mmio" and (fs or any(x.vhost_user or x.base for x in disks)):
        raise DescriptionError(("transport",), "mmio: vhost-user devices (fs, disks with base or vhost_user) "
                                               "are on PCI only")
    if transport == "mmio" and virtio > MAX_MMIO_DEVICES:
        raise DescriptionError(("transport",), f"mmio: {virtio} virtio devices, at most {MAX_MMIO_DEVICES} "
                                               "(one interrupt line each)")
    return Description(
        payload=payload_from_plain(data),
        name=name,
        memory=memory,
        maxmem=maxmem,
        vcpus=_int(data, "vcpus", 1, 1, MAX_VCPUS, ()),
        disks=disks,
        nics=nics,
        vsock=vsock,
        fw_cfg=fw_cfg,
        fs=fs,
        rng=rng,
        balloon=balloon,
        serial=check_serial(_str(data, "serial", ()) or "stdio", ("serial",)),
        debug_exit=_debug_exit(data.get("debug_exit", "off")),
        transport=transport,
        vmgenid=_bool(data, "vmgenid", True, ()),
        jail=_bool(data, "jail", True, ()),
        lifecycle=Lifecycle(
            on_poweroff=_choice(data, "on_poweroff", ON_POWEROFF, Lifecycle._field_defaults["on_poweroff"], ()),
            on_reboot=_choice(data, "on_reboot", ON_REBOOT, Lifecycle._field_defaults["on_reboot"], ()),
            on_crash=_choice(data, "on_crash", ON_CRASH, Lifecycle._field_defaults["on_crash"], ()),
        ),
        sched=sched_from_plain(data.get("sched", {}), ("sched",)),
    )


def payload_from_plain(data: dict[str, Any]) -> Payload:
    """A kernel (with initrd, command line, protocol), or a firmware ROM and nothing of those."""
    firmware = _path(data, "firmware", ())
    if firmware:
        extra = [key for key in ("kernel", "initrd", "cmdline", "boot") if data.get(key)]
        if extra:  # QEMU would hand a kernel to SeaBIOS's linuxboot option ROM, which pyhv does not have
            raise DescriptionError((extra[0],), "not with firmware: the firmware boots from its own devices")
        return Payload(kernel="", firmware=firmware)
    return Payload(
        kernel=_path(data, "kernel", (), required=True),
        initrd=_path(data, "initrd", ()),
        cmdline=_str(data, "cmdline", ()),
        boot=_choice(data, "boot", BOOT_PROTOCOLS, Payload._field_defaults["boot"], ()),
    )


def disk_from_plain(d: Any, at: tuple[str | int, ...]) -> Disk:
    _table(d, DISK_KEYS, at)
    serial = _str(d, "serial", at)
    if len(serial.encode()) > DISK_SERIAL_MAX or not serial.isprintable():
        raise DescriptionError((*at, "serial"), f"at most {DISK_SERIAL_MAX} printable bytes")
    socket = _path(d, "vhost_user", at)
    if socket:
        # the back end is all of the disk: its image, its read-only state, its GET_ID answer
        for key in ("path", "base", "readonly", "serial", "cache", "rate_limit"):
            if key in d:
                raise DescriptionError((*at, key), "not with vhost_user (the back end decides)")
        if len(socket.encode()) > UNIX_PATH_MAX:
            raise DescriptionError((*at, "vhost_user"), f"a unix socket path is at most {UNIX_PATH_MAX} bytes")
        return Disk(path="", vhost_user=socket)
    path = _path(d, "path", at, required=True)
    if not path:
        raise DescriptionError((*at, "path"), "must not be empty")
    base = _path(d, "base", at)
    if base and serial:
        raise DescriptionError((*at, "serial"), "not with base (qemu-storage-daemon answers GET_ID)")
    if base and d.get("rate_limit") is not None:
        raise DescriptionError((*at, "rate_limit"), "not with base (qemu-storage-daemon serves the queue)")
    if base == path:
        raise DescriptionError((*at, "base"), "the overlay (path) cannot be its own base")
    return Disk(
        path=path,
        readonly=_bool(d, "readonly", False, at),
        serial=serial,
        cache=_choice(d, "cache", DISK_CACHE, Disk._field_defaults["cache"], at),
        rate_limit=rate_limit_from_plain(d, "rate_limit", at),
        base=base,
    )


def nic_from_plain(n: Any, at: tuple[str | int, ...]) -> Nic:
    _table(n, NIC_KEYS, at)
    tap = _str(n, "tap", at, required=True)
    if not 1 <= len(tap) <= IFNAME_MAX:
        raise DescriptionError((*at, "tap"), f"interface names are 1-{IFNAME_MAX} characters")
    mac = _str(n, "mac", at)
    if mac:
        parse_mac(mac, (*at, "mac"))
    bridge = _str(n, "bridge", at)
    if len(bridge) > IFNAME_MAX:
        raise DescriptionError((*at, "bridge"), f"interface names are 1-{IFNAME_MAX} characters")
    return Nic(tap, mac, bridge, rate_limit_from_plain(n, "rx_rate_limit", at),
               rate_limit_from_plain(n, "tx_rate_limit", at))


def rate_limit_from_plain(data: dict[str, Any], key: str, at: tuple[str | int, ...]) -> RateLimit | None:
    """``{bandwidth = BUCKET, ops = BUCKET}`` (either may be absent or null) under ``key``; None if no limit."""
    value = data.get(key)
    if value is None:
        return None
    where = (*at, key)
    _table(value, RateLimit._fields, where)
    buckets = {}
    for name in RateLimit._fields:
        b = value.get(name)
        if b is None:
            continue
        _table(b, Bucket._fields, (*where, name))
        if "size" not in b or "refill_ms" not in b:
            raise DescriptionError((*where, name), "a bucket needs size and refill_ms")
        buckets[name] = Bucket(_int(b, "size", 0, 1, BUCKET_SIZE_MAX, (*where, name)),
                               _int(b, "refill_ms", 0, 1, BUCKET_REFILL_MAX_MS, (*where, name)),
                               _int(b, "burst", 0, 0, BUCKET_SIZE_MAX, (*where, name)))
    return RateLimit(**buckets) if buckets else None


def rate_limit_to_plain(limit: RateLimit | None) -> dict[str, Any] | None:
    if limit is None:
        return None
    return {name: b._asdict() for name, b in limit._asdict().items() if b is not None}


def vsock_from_plain(v: Any, at: tuple[str | int, ...]) -> Vsock:
    _table(v, VSOCK_KEYS, at)
    uds = _str(v, "uds", at, required=True)
    if len(uds.encode()) > VSOCK_UDS_MAX:
        raise DescriptionError((*at, "uds"), f"socket path longer than {VSOCK_UDS_MAX} bytes (PATH_PORT must fit a unix socket)")
    return Vsock(_int(v, "cid", VSOCK_CID_MIN, VSOCK_CID_MIN, VSOCK_CID_MAX, at), uds)


def fw_cfg_from_plain(e: Any, at: tuple[str | int, ...]) -> FwCfgEntry:
    _table(e, FW_CFG_KEYS, at)
    name = _str(e, "name", at, required=True)
    if not 0 < len(name) <= FW_CFG_NAME_MAX or not name.isascii() or not name.isprintable():
        raise DescriptionError((*at, "name"), f"1-{FW_CFG_NAME_MAX} printable ASCII characters")
    if name in FW_CFG_OWN_NAMES or name.startswith("etc/"):
        raise DescriptionError((*at, "name"), "etc/ and bootorder are pyhv's own (user entries go under opt/)")
    if ("file" in e) == ("string" in e):
        raise DescriptionError(at, "exactly one of file and string")
    if "file" in e:
        path = _path(e, "file", at)
        if not path:
            raise DescriptionError((*at, "file"), "must not be empty")
        return FwCfgEntry(name, file=path)
    text = _str(e, "string", at)
    if len(text.encode()) > FW_CFG_DATA_MAX:
        raise DescriptionError((*at, "string"), f"longer than {FW_CFG_DATA_MAX // MiB} MiB")
    return FwCfgEntry(name, string=text)


def fs_from_plain(f: Any, at: tuple[str | int, ...]) -> Fs:
    _table(f, FS_KEYS, at)
    tag = _str(f, "tag", at, required=True)
    if not 0 < len(tag.encode()) <= FS_TAG_MAX or not tag.isprintable():
        raise DescriptionError((*at, "tag"), f"1-{FS_TAG_MAX} printable bytes")
    if bool(f.get("socket")) == bool(f.get("path")):
        raise DescriptionError(at, "exactly one of socket (a running back end) and path (a directory to share)")
    socket = _path(f, "socket", at)
    if len(socket.encode()) > UNIX_PATH_MAX:
        raise DescriptionError((*at, "socket"), f"a unix socket path is at most {UNIX_PATH_MAX} bytes")
    return Fs(tag, socket=socket, path=_path(f, "path", at))


def vhost_user_devices(d: Description) -> list[str]:
    """The description's vhost-user devices, named as its keys are (``fs[0]``): a machine
    with any shares its RAM (memfd) with their back ends, and cannot be saved yet."""
    return [f"disks[{i}] (vhost-user-blk)" for i, x in enumerate(d.disks) if x.base or x.vhost_user] + [
        f"fs[{i}] (virtio-fs {f.tag!r})" for i, f in enumerate(d.fs)]


def sched_from_plain(s: Any, at: tuple[str | int, ...]) -> Sched:
    _table(s, SCHED_KEYS, at)
    return Sched(
        weight=_int(s, "weight", 256, 1, SCHED_WEIGHT_MAX, at),
        warp_ms=_int(s, "warp_ms", 0, 0, SCHED_WARP_MAX_MS, at),
        warp_limit_ms=_int(s, "warp_limit_ms", 2000, 0, SCHED_LIMIT_MAX_MS, at),
        unwarp_ms=_int(s, "unwarp_ms", 1000, 0, SCHED_LIMIT_MAX_MS, at),
    )


def _debug_exit(value: Any) -> str:
    """``true`` and ``false`` are ``"pyhv"`` and ``"off"`` (the key was a boolean first)."""
    if isinstance(value, bool):
        return "pyhv" if value else "off"
    if not isinstance(value, str) or value not in DEBUG_EXIT_MAPPINGS:
        raise DescriptionError(("debug_exit",), f"must be one of {', '.join(DEBUG_EXIT_MAPPINGS)} (or true, false)")
    return value


def debug_exit_status(mapping: str, value: int) -> int:
    """The exit status a guest's write of ``value`` to debug-exit asks for under ``mapping``:
    pyhv's own (the value's low byte: a write of 0 looks like a power-off, 1 like a
    crash) or QEMU's ``(value << 1) | 1`` (odd, never 0; only a write of 0 gives a
    crash's 1), both as an 8-bit process status."""
    return ((value << 1) | 1) & 0xFF if mapping == "qemu" else value & 0xFF


def check_name(name: str, at: tuple[str | int, ...] = ("name",)) -> str:
    """Names are never all digits (those are domain ids) and hold no control characters."""
    if not re.fullmatch(_NAME, name) or name.isdigit():
        raise DescriptionError(
            at, f"1-{NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit, not all digits"
        )
    return name


def check_serial(value: str, at: tuple[str | int, ...]) -> str:
    if value in ("stdio", "none") or (value.startswith("file:") and len(value) > 5):
        return value
    raise DescriptionError(at, f"{value!r:.60}: expected stdio, none or file:PATH")


# --- description -> plain values ---------------------------------------------------------------


def to_plain(d: Description) -> dict[str, Any]:
    """Plain JSON values that :func:`from_plain` turns back into ``d``; every key written."""
    plain = {
        "name": d.name,
        "kernel": d.payload.kernel,
        "initrd": d.payload.initrd,
        "cmdline": d.payload.cmdline,
        "boot": d.payload.boot,
        "firmware": d.payload.firmware,
        "memory": format_size(d.memory),
        "maxmem": format_size(d.maxmem),
        "vcpus": d.vcpus,
        "on_poweroff": d.lifecycle.on_poweroff,
        "on_reboot": d.lifecycle.on_reboot,
        "on_crash": d.lifecycle.on_crash,
        "serial": d.serial,
        "debug_exit": d.debug_exit,
        "jail": d.jail,
        "balloon": d.balloon,
        "rng": d.rng,
        "vmgenid": d.vmgenid,
        "transport": d.transport,
        "disks": [{"vhost_user": x.vhost_user} if x.vhost_user else
                  {**{k: v for k, v in x._asdict().items() if k not in ("base", "vhost_user") or v},
                   "rate_limit": rate_limit_to_plain(x.rate_limit)} for x in d.disks],
        "nics": [{**x._asdict(), "rx_rate_limit": rate_limit_to_plain(x.rx_rate_limit),
                  "tx_rate_limit": rate_limit_to_plain(x.tx_rate_limit)} for x in d.nics],
        "vsock": None if d.vsock is None else d.vsock._asdict(),
        "fw_cfg": [{"name": e.name, "file": e.file} if e.file else {"name": e.name, "string": e.string}
                   for e in d.fw_cfg],
        "fs": [{k: v for k, v in f._asdict().items() if v} for f in d.fs],
        "sched": d.sched._asdict(),
    }
    if not d.name:
        del plain["name"]
    if d.payload.firmware:
        for key in ("kernel", "initrd", "cmdline", "boot"):
            del plain[key]
    else:
        del plain["firmware"]
    return plain


def clone(d: Description, index: int, prefix: str) -> Description:
    """The description of clone ``index`` (1, 2, ...) of a domain saved as ``d``:
    named ``PREFIX-INDEX``, each NIC on TAP ``TAP-INDEX`` with a random locally
    administered MAC, vsock on ``UDS-INDEX`` with CID ``cid + index``.  Clones
    share the snapshot's memory file, so they cannot share a writable disk."""
    import os

    name = check_name(f"{prefix}-{index}")
    for i, disk in enumerate(d.disks):
        if not disk.readonly:
            raise DescriptionError(("disks", i, "path"), "a writable disk cannot be shared by clones "
                                   "(make it read-only, or give each clone its own image)")
    nics = []
    for i, nic in enumerate(d.nics):
        tap = f"{nic.tap}-{index}"
        if len(tap) > IFNAME_MAX:
            raise DescriptionError(("nics", i, "tap"), f"{tap}: a clone's interface name is at most {IFNAME_MAX} characters")
        mac = bytearray(os.urandom(6))
        mac[0] = mac[0] & 0xFC | 0x02  # unicast, locally administered
        nics.append(nic._replace(tap=tap, mac=":".join(f"{b:02x}" for b in mac)))
    vsock = d.vsock
    if vsock is not None:
        uds, cid = f"{vsock.uds}-{index}", vsock.cid + index
        if len(uds.encode()) > VSOCK_UDS_MAX:
            raise DescriptionError(("vsock", "uds"), f"{uds}: a clone's socket path is longer than {VSOCK_UDS_MAX} bytes")
        if cid > VSOCK_CID_MAX:
            raise DescriptionError(("vsock", "cid"), f"clone {index} would have CID {cid}, above {VSOCK_CID_MAX}")
        vsock = Vsock(cid, uds)
    return d._replace(name=name, nics=tuple(nics), vsock=vsock)


def paths(d: Description) -> list[tuple[str, str]]:
    """Every host file the description names, with its key: (key, path)."""
    out = [("firmware", d.payload.firmware)] if d.payload.firmware else [("kernel", d.payload.kernel)]
    if d.payload.initrd:
        out.append(("initrd", d.payload.initrd))
    out += [(f"disks[{i}].{key}", value) for i, x in enumerate(d.disks)
            for key, value in (("path", x.path), ("base", x.base), ("vhost_user", x.vhost_user)) if value]
    if d.vsock is not None:
        out.append(("vsock.uds", d.vsock.uds))
    out += [(f"fw_cfg[{i}].file", e.file) for i, e in enumerate(d.fw_cfg) if e.file]
    out += [(f"fs[{i}].{key}", value) for i, f in enumerate(d.fs) for key, value in (("socket", f.socket),
                                                                                     ("path", f.path)) if value]
    return out


def with_absolute_paths(d: Description, base: str) -> Description:
    """``d`` with its relative file names made absolute, relative to ``base``."""
    import os

    def fix(path: str) -> str:
        return os.path.normpath(os.path.join(base, path)) if path else path

    payload = d.payload._replace(kernel=fix(d.payload.kernel), initrd=fix(d.payload.initrd),
                                 firmware=fix(d.payload.firmware))
    return d._replace(
        payload=payload,
        disks=tuple(x._replace(path=fix(x.path), base=fix(x.base), vhost_user=fix(x.vhost_user)) for x in d.disks),
        vsock=None if d.vsock is None else d.vsock._replace(uds=fix(d.vsock.uds)),
        fw_cfg=tuple(e._replace(file=fix(e.file)) for e in d.fw_cfg),
        fs=tuple(f._replace(socket=fix(f.socket), path=fix(f.path)) for f in d.fs),
    )


# --- values ------------------------------------------------------------------------------------

_UNITS = {"": MiB, "k": 1 << 10, "m": MiB, "g": 1 << 30, "t": 1 << 40}
_SIZE_HINT = 'must be a size such as "256M" or "2G", or a number of MiB'


def parse_size(value: Any, at: tuple[str | int, ...]) -> int:
    """``256M``, ``1G``, ``512`` (MiB), ``65536k``, case-insensitive with optional B/iB,
    or an integer number of MiB; checked against the memory limits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DescriptionError(at, _SIZE_HINT)
    size = value * MiB if isinstance(value, int) else _size_text(value, at)
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise DescriptionError(at, f"{size // MiB} MiB: must be between {MIN_MEMORY // MiB} MiB and 1 TiB")
    if size % PAGE_SIZE:
        raise DescriptionError(at, "must be a multiple of 4 KiB")
    return size


def _size_text(text: str, at: tuple[str | int, ...]) -> int:
    s = text.strip().lower()
    for suffix in ("ib", "b"):
        if s.endswith(suffix) and len(s) > len(suffix) and not s[-len(suffix) - 1].isdigit():
            s = s[: -len(suffix)]
            break
    unit = s[-1:] if s[-1:] in _UNITS and not s[-1:].isdigit() else ""
    number = s[: len(s) - len(unit)]
    if not number.isdigit() or len(number) > 16:
        raise DescriptionError(at, f"{text!r:.40}: {_SIZE_HINT}")
    return int(number) * _UNITS[unit]


def format_size(size: int) -> str:
    """The shortest exact size text: ``256M``, ``2G``, ``65540k``."""
    for unit, scale in (("G", 1 << 30), ("M", MiB)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size >> 10}k"


def parse_mac(text: str, at: tuple[str | int, ...] = ("mac",)) -> bytes:
    if not re.fullmatch(_MAC, text):
        raise DescriptionError(at, "a MAC address looks like 52:54:00:12:34:56")
    mac = bytes.fromhex(text.replace(":", ""))
    if mac[0] & 1:
        raise DescriptionError(at, f"{text} is a multicast address")
    return mac


def default_mac(tap: str) -> bytes:
    """A locally administered MAC derived from the TAP name (stable across runs)."""
    import binascii

    h = binascii.crc32(tap.encode())
    return bytes((0x52, 0x54, 0x00, (h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF))


def _unique(values: list[str], section: str, key: str, problem: str) -> None:
    """Refuse the second of two equal values: ``disks[1].path: the same image as disks[0]``."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            raise DescriptionError((section, i, key), f"{problem} {section}[{first[value]}]")
        first[value] = i


def _known(table: dict[str, Any], keys: tuple[str, ...], at: tuple[str | int, ...]) -> None:
    unknown = sorted(str(k) for k in set(table) - set(keys))
    if unknown:
        raise DescriptionError((*at, unknown[0]), f"unknown key (known: {', '.join(sorted(keys))})")


def _table(value: Any, keys: tuple[str, ...], at: tuple[str | int, ...]) -> None:
    if not isinstance(value, dict):
        raise DescriptionError(at, "must be a table (an object)")
    _known(value, keys, at)


def _array(data: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DescriptionError((key,), f"must be an array of tables ([[{key}]])")
    if len(value) > limit:
        raise DescriptionError((key,), f"{len(value)} given: at most {limit}")
    return value


def _str(data: dict[str, Any], key: str, at: tuple[str | int, ...], required: bool = False) -> str:
    if key not in data or (data[key] is None and not required):
        if required:
            raise DescriptionError((*at, key), "required")
        return ""
    value = data[key]
    if not isinstance(value, str):
        raise DescriptionError((*at, key), "must be a string")
    if "\0" in value:
        raise DescriptionError((*at, key), "must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # a JSON "\ud800" escape: no UTF-8 for a host or guest to read
        raise DescriptionError((*at, key), "must be valid Unicode (a lone surrogate is not)") from None
    return value


def _path(data: dict[str, Any], key: str, at: tuple[str | int, ...], required: bool = False) -> str:
    """A host file name: a string, at most PATH_MAX - 1 bytes (the kernel would refuse more)."""
    value = _str(data, key, at, required)
    if len(value.encode()) > PATH_MAX:
        raise DescriptionError((*at, key), f"a file name of {len(value.encode())} bytes: at most {PATH_MAX}")
    return value


def _int(data: dict[str, Any], key: str, default: int, low: int, high: int, at: tuple[str | int, ...]) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DescriptionError((*at, key), f"must be an integer between {low} and {high}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool, at: tuple[str | int, ...]) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise DescriptionError((*at, key), "must be true or false")
    return value


def _choice(data: dict[str, Any], key: str, choices: tuple[str, ...], default: str, at: tuple[str | int, ...]) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise DescriptionError((*at, key), f"must be one of {', '.join(choices)}")
    return value


def json_schema() -> dict[str, Any]:
    """The plain form as a JSON Schema (the API's DomainConfig), from the same limits."""
    size = {"oneOf": [{"type": "string", "pattern": "^[0-9]+([kKmMgGtT]([iI]?[bB])?)?$"},
                      {"type": "integer", "minimum": MIN_MEMORY // MiB, "maximum": MAX_MEMORY // MiB}],
            "description": 'a size such as "256M" or "2G", or an integer number of MiB'}
    ifname = {"type": "string", "minLength": 1, "maxLength": IFNAME_MAX}
    ms = {"type": "integer", "minimum": 0, "maximum": SCHED_LIMIT_MAX_MS}
    bucket = {"type": "object", "nullable": True, "additionalProperties": False, "required": ["size", "refill_ms"],
              "properties": {"size": {"type": "integer", "minimum": 1, "maximum": BUCKET_SIZE_MAX},
                             "refill_ms": {"type": "integer", "minimum": 1, "maximum": BUCKET_REFILL_MAX_MS},
                             "burst": {"type": "integer", "minimum": 0, "maximum": BUCKET_SIZE_MAX}}}
    limit = {"type": "object", "nullable": True, "additionalProperties": False,
             "properties": {"bandwidth": bucket, "ops": bucket},
             "description": "token buckets: bandwidth in bytes, ops in requests (frames for a NIC)"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "oneOf": [{"required": ["kernel"]}, {"required": ["firmware"]}],
        "properties": {
            "name": {"type": "string", "pattern": f"^(?![0-9]+$)[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}$",
                     "description": "not all digits (those are domain ids)"},
            "kernel": {"type": "string", "description": "absolute path of a bzImage, ELF, PVH or Multiboot kernel "
                                                        "(or, instead, firmware)"},
            "firmware": {"type": "string", "description": "absolute path of a BIOS ROM image (SeaBIOS's bios.bin) "
                                                          "run from the reset vector, instead of a kernel"},
            "initrd": {"type": "string"},
            "cmdline": {"type": "string"},
            "boot": {"type": "string", "enum": list(BOOT_PROTOCOLS)},
            "memory": size,
            "maxmem": size,
            "vcpus": {"type": "integer", "minimum": 1, "maximum": MAX_VCPUS},
            "on_poweroff": {"type": "string", "enum": list(ON_POWEROFF)},
            "on_reboot": {"type": "string", "enum": list(ON_REBOOT)},
            "on_crash": {"type": "string", "enum": list(ON_CRASH)},
            "serial": {"type": "string", "description": "stdio, none or file:PATH (pyhvd: the console log)"},
            "debug_exit": {"oneOf": [{"type": "string", "enum": list(DEBUG_EXIT_MAPPINGS)}, {"type": "boolean"}],
                           "description": "pyhv: a write of V ends with status V & 0xff; qemu: (V << 1) | 1; "
                                          "true is pyhv, false is off"},
            "jail": {"type": "boolean", "default": True,
                     "description": "pyhvd confines the domain's VMM; false opts out"},
            "balloon": {"type": "boolean"},
            "rng": {"type": "boolean"},
            "transport": {"type": "string", "enum": list(TRANSPORTS),
                          "description": "pci: virtio-pci devices; mmio: virtio-mmio windows named on the command line"},
            "vmgenid": {"type": "boolean", "default": True,
                        "description": "a VM Generation ID device: a new GUID at boot and at every restore"},
            "disks": {"type": "array", "maxItems": MAX_DISKS, "items": {
                "type": "object", "additionalProperties": False,
                "oneOf": [{"required": ["path"]}, {"required": ["vhost_user"]}],
                "properties": {"path": {"type": "string", "description": "the raw image, or with base the qcow2 overlay"},
                               "readonly": {"type": "boolean"},
                               "serial": {"type": "string", "maxLength": DISK_SERIAL_MAX},
                               "cache": {"type": "string", "enum": list(DISK_CACHE)}, "rate_limit": limit,
                               "base": {"type": "string", "description":
                                        "a raw base image shared read-only: path is a qcow2 overlay over it, "
                                        "served by qemu-storage-daemon (created if missing)"},
                               "vhost_user": {"type": "string", "maxLength": UNIX_PATH_MAX,
                                              "description": "a vhost-user-blk back end's socket (without path)"}}}},
            "nics": {"type": "array", "maxItems": MAX_NICS, "items": {
                "type": "object", "additionalProperties": False, "required": ["tap"],
                "properties": {"tap": ifname, "mac": {"type": "string"}, "bridge": ifname,
                               "rx_rate_limit": limit, "tx_rate_limit": limit}}},
            "vsock": {"type": "object", "nullable": True, "additionalProperties": False, "required": ["uds"],
                      "properties": {"cid": {"type": "integer", "minimum": VSOCK_CID_MIN, "maximum": VSOCK_CID_MAX},
                                     "uds": {"type": "string", "maxLength": VSOCK_UDS_MAX}}},
            "fw_cfg": {"type": "array", "maxItems": MAX_FW_CFG, "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "oneOf": [{"required": ["file"]}, {"required": ["string"]}],
                "properties": {"name": {"type": "string", "minLength": 1, "maxLength": FW_CFG_NAME_MAX,
                                        "description": "printable ASCII; opt/ is the users' space (QEMU's rule)"},
                               "file": {"type": "string", "minLength": 1,
                                        "description": f"a host file of at most {FW_CFG_DATA_MAX // MiB} MiB"},
                               "string": {"type": "string"}}}},
            "fs": {"type": "array", "maxItems": MAX_FS, "items": {
                "type": "object", "additionalProperties": False, "required": ["tag"],
                "oneOf": [{"required": ["socket"]}, {"required": ["path"]}],
                "properties": {"tag": {"type": "string", "minLength": 1, "maxLength": FS_TAG_MAX},
                               "socket": {"type": "string", "minLength": 1, "maxLength": UNIX_PATH_MAX,
                                          "description": "a vhost-user back end's unix socket"},
                               "path": {"type": "string", "minLength": 1,
                                        "description": "a host directory pyhv shares through its own virtiofsd"}}}},
            "sched": {"type": "object", "additionalProperties": False, "properties": {
                "weight": {"type": "integer", "minimum": 1, "maximum": SCHED_WEIGHT_MAX},
                "warp_ms": {"type": "integer", "minimum": 0, "maximum": SCHED_WARP_MAX_MS},
                "warp_limit_ms": ms,
                "unwarp_ms": ms}},
        },
    }


def describe(**plain: Any) -> Description:
    """``describe(kernel="vmlinuz", memory="1G", vcpus=2)``: :func:`from_plain` with keywords
    (the Python API's way to say what to build)."""
    return from_plain(plain)
