"""What a machine is made of, as validated plain values."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from ..errors import UsageError
from ..memory import PAGE_SIZE, MiB

MIN_MEMORY = 16 * MiB
MAX_MEMORY = 1 << 40
MAX_VCPUS = 255  # xAPIC IDs are 8 bits; 0xff is the broadcast ID
BOOT_PROTOCOLS = ("auto", "linux", "pvh", "multiboot")
ON_REBOOT = ("destroy", "restart")
ON_POWEROFF = ("destroy", "restart")
MAX_DISKS = 16

_UNITS = {"": MiB, "k": 1 << 10, "m": MiB, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "memory") -> int:
    """``256M``, ``1G``, ``512`` (MiB), ``65536k``; case-insensitive, optional trailing B/iB."""
    s = text.strip().lower()
    for suffix in ("ib", "b"):
        if s.endswith(suffix) and len(s) > len(suffix) and not s[-len(suffix) - 1].isdigit():
            s = s[: -len(suffix)]
            break
    unit = s[-1:] if s[-1:] in _UNITS and not s[-1:].isdigit() else ""
    number = s[: len(s) - len(unit)]
    if not number.isdigit():
        raise UsageError(f"{what} {text!r}: expected a size such as 256M or 2G")
    return int(number) * _UNITS[unit]


class DiskConfig(NamedTuple):
    path: str
    readonly: bool = False
    serial: str = ""


def parse_disk(spec: str) -> DiskConfig:
    """``PATH[,ro][,serial=TEXT]`` (the path may not contain a comma)."""
    path, *opts = spec.split(",")
    if not path:
        raise UsageError(f"--disk {spec!r}: missing the image path")
    readonly, serial = False, ""
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key == "ro" and not eq:
            readonly = True
        elif key == "serial" and eq:
            if len(value.encode()) > 20 or not value.isprintable():
                raise UsageError(f"--disk {spec!r}: serial must be at most 20 printable bytes")
            serial = value
        else:
            raise UsageError(f"--disk {spec!r}: unknown option {opt!r} (expected ro or serial=...)")
    return DiskConfig(path, readonly, serial)


class NetConfig(NamedTuple):
    tap: str
    mac: str = ""  # empty: derived from the TAP name
    bridge: str = ""
    fd: int = -1  # an open TAP handed over by the toolstack, instead of opening ``tap``


def parse_net(spec: str) -> NetConfig:
    """``tap=NAME[,mac=52:54:00:12:34:56][,bridge=BR]`` or ``fd=N[,mac=...]``."""
    fields: dict[str, str] = {}
    for opt in spec.split(","):
        key, eq, value = opt.partition("=")
        if key not in ("tap", "mac", "bridge", "fd") or not eq or not value or key in fields:
            raise UsageError(f"--net {spec!r}: expected tap=NAME|fd=N[,mac=XX:XX:XX:XX:XX:XX][,bridge=NAME]")
        fields[key] = value
    if "fd" in fields:
        if not fields["fd"].isdigit() or "tap" in fields or "bridge" in fields:
            raise UsageError(f"--net {spec!r}: fd=N takes a file descriptor number, without tap= or bridge=")
        fd = int(fields["fd"])
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"--net {spec!r}: file descriptor {fd} is not open") from None
        mac = fields.get("mac", "")
        if mac:
            parse_mac(mac, f"--net {spec!r}")
        return NetConfig(f"fd{fd}", mac, "", fd)
    if "tap" not in fields:
        raise UsageError(f"--net {spec!r}: tap=NAME (or fd=N) is required")
    if len(fields["tap"]) > 15:
        raise UsageError(f"--net {spec!r}: interface names are at most 15 characters")
    mac = fields.get("mac", "")
    if mac:
        parse_mac(mac, f"--net {spec!r}")
    return NetConfig(fields["tap"], mac, fields.get("bridge", ""))


def parse_mac(text: str, what: str = "mac") -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise UsageError(f"{what}: MAC address must look like 52:54:00:12:34:56")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise UsageError(f"{what}: MAC address must look like 52:54:00:12:34:56") from None
    if mac[0] & 1:
        raise UsageError(f"{what}: {text} is a multicast address")
    return mac


def default_mac(tap: str) -> bytes:
    """A locally administered MAC derived from the TAP name (stable across runs)."""
    import binascii

    h = binascii.crc32(tap.encode())
    return bytes((0x52, 0x54, 0x00, (h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF))


class VsockConfig(NamedTuple):
    cid: int
    uds: str


def parse_vsock(spec: str) -> VsockConfig:
    """``cid=N,uds=PATH`` (Firecracker's host-side convention)."""
    fields = dict(opt.partition("=")[::2] for opt in spec.split(","))
    if set(fields) != {"cid", "uds"} or not fields["uds"] or not fields["cid"].isdigit():
        raise UsageError(f"--vsock {spec!r}: expected cid=N,uds=PATH")
    cid = int(fields["cid"])
    if not 3 <= cid < 0xFFFF_FFFF:
        raise UsageError(f"--vsock {spec!r}: guest CID must be at least 3 (0-2 are reserved)")
    if len(fields["uds"].encode()) > 90:
        raise UsageError(f"--vsock {spec!r}: socket path too long for a unix socket (with _PORT added)")
    return VsockConfig(cid, fields["uds"])


class MachineConfig:
    """Validated on construction; treat as read-only afterwards."""

    def __init__(
        self,
        kernel: str,
        initrd: str | None = None,
        cmdline: str = "",
        memory: int = 256 * MiB,
        vcpus: int = 1,
        debug_exit: bool = False,
        serial: str = "stdio",
        boot: str = "auto",
        on_reboot: str = "destroy",
        on_poweroff: str = "destroy",
        disks: Sequence[DiskConfig] = (),
        rng: bool = False,
        nets: Sequence[NetConfig] = (),
        balloon: bool = False,
        vsock: VsockConfig | None = None,
    ) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.vcpus = vcpus
        self.debug_exit = debug_exit
        self.serial = serial
        self.boot = boot
        self.on_reboot = on_reboot
        self.on_poweroff = on_poweroff
        self.disks = tuple(disks)
        self.rng = rng
        self.nets = tuple(nets)
        self.balloon = balloon
        self.vsock = vsock
        self._validate()

    def __repr__(self) -> str:
        return f"MachineConfig({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def _validate(self) -> None:
        if not MIN_MEMORY <= self.memory <= MAX_MEMORY:
            raise UsageError(f"memory {self.memory // MiB} MiB: must be between 16 MiB and 1 TiB")
        if self.memory % PAGE_SIZE:
            raise UsageError("memory must be a multiple of 4 KiB")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise UsageError(f"vcpus {self.vcpus}: must be between 1 and {MAX_VCPUS}")
        if self.boot not in BOOT_PROTOCOLS:
            raise UsageError(f"boot {self.boot!r}: expected one of {', '.join(BOOT_PROTOCOLS)}")
        if self.on_reboot not in ON_REBOOT:
            raise UsageError(f"on_reboot {self.on_reboot!r}: expected one of {', '.join(ON_REBOOT)}")
        if len(self.disks) > MAX_DISKS:
            raise UsageError(f"{len(self.disks)} disks: at most {MAX_DISKS}")
        if self.on_poweroff not in ON_POWEROFF:
            raise UsageError(f"on_poweroff {self.on_poweroff!r}: expected one of {', '.join(ON_POWEROFF)}")
