"""Domain configuration files (TOML), validated before anything starts.

The same schema serves files and (later) the API: :func:`parse` takes the
decoded mapping, :func:`load` reads a file.  Every problem is a
:class:`~pyhv.errors.UsageError` that names the key, e.g.
``vcpus: must be an integer between 1 and 255``.

Example::

    name = "web1"
    kernel = "guests/build/probe.elf"
    cmdline = "probe.test=hello"
    memory = "256M"          # or an integer number of MiB
    maxmem = "512M"
    vcpus = 2
    on_poweroff = "destroy"  # destroy | restart
    on_reboot = "restart"
    on_crash = "destroy"     # destroy | restart | preserve
    balloon = true
    rng = true

    [[disks]]
    path = "/var/lib/pyhv/web1.img"
    readonly = false
    serial = "web1-root"

    [[nics]]
    tap = "web1-0"
    mac = "52:54:00:12:34:56"
    bridge = "br0"

    [vsock]
    cid = 3
    uds = "/run/pyhv/web1.vsock"

    [sched]
    weight = 256
    warp_ms = 0
    warp_limit_ms = 2000
    unwarp_ms = 1000
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from ..errors import UsageError
from ..vmm.config import (
    BOOT_PROTOCOLS,
    MAX_VCPUS,
    DiskConfig,
    MachineConfig,
    NetConfig,
    VsockConfig,
    parse_mac,
    parse_size,
)
from ..memory import MiB

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only (fullmatch); not all digits
ON_CRASH = ("destroy", "restart", "preserve")
TOP_KEYS = {
    "name", "kernel", "initrd", "cmdline", "memory", "maxmem", "vcpus", "boot", "on_poweroff", "on_reboot",
    "on_crash", "disks", "nics", "vsock", "balloon", "rng", "sched", "serial",
}


class SchedParams(NamedTuple):
    weight: int = 256
    warp_ms: int = 0
    warp_limit_ms: int = 2000
    unwarp_ms: int = 1000


class DomainConfig(NamedTuple):
    name: str
    machine: MachineConfig
    maxmem: int
    on_crash: str
    sched: SchedParams


def load(path: str) -> DomainConfig:
    data = load_mapping(path)
    try:
        return parse(data)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def load_mapping(path: str) -> dict[str, Any]:
    """The file's TOML as a mapping, not yet validated."""
    import tomllib

    from .limits import MAX_DEPTH, MAX_SIZE, too_deep

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)
        if len(data) > MAX_SIZE:
            raise UsageError(f"{path}: larger than {MAX_SIZE >> 20} MiB: not a domain configuration")
        mapping = tomllib.loads(data.decode())
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        mapping = None
    if mapping is None or too_deep(mapping):
        raise UsageError(f"{path}: arrays or tables nested more than {MAX_DEPTH} deep")
    return mapping


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``key=value`` from the command line (``sched.weight=512`` reaches into a table).

    The value is TOML when it parses as a TOML value (``2``, ``true``,
    ``"text"``), otherwise the plain string, so ``cmdline=probe.test=counter``
    needs no quotes."""
    import tomllib

    key, eq, text = assignment.partition("=")
    if not eq or not key:
        raise UsageError(f"{assignment!r}: expected key=value")
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        value = text
    *tables, last = key.split(".")
    target = data
    for t in tables:
        target = target.setdefault(t, {})
        if not isinstance(target, dict):
            raise UsageError(f"{key}: {t} is not a table")
    target[last] = value


def absolutize(data: dict[str, Any], base: str) -> None:
    """Make the file paths in a configuration absolute, relative to ``base``."""
    import os

    def fix(table: Any, key: str) -> None:
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = os.path.normpath(os.path.join(base, table[key]))

    fix(data, "kernel")
    fix(data, "initrd")
    for d in data.get("disks", []) if isinstance(data.get("disks"), list) else []:
        fix(d, "path")
    fix(data.get("vsock"), "uds")


def parse(data: dict[str, Any]) -> DomainConfig:
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    name = _str(data, "name", required=True)
    if not NAME_RE.fullmatch(name) or name.isdigit():
        raise UsageError("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, not all digits")
    memory = _size(data, "memory", 256 * MiB)
    maxmem = _size(data, "maxmem", memory)
    if maxmem < memory:
        raise UsageError("maxmem: must be at least memory")
    vcpus = _int(data, "vcpus", 1, 1, MAX_VCPUS)
    boot = _choice(data, "boot", BOOT_PROTOCOLS, "auto")
    machine = MachineConfig(
        kernel=_str(data, "kernel", required=True),
        initrd=_str(data, "initrd") or None,
        cmdline=_str(data, "cmdline"),
        memory=memory,
        vcpus=vcpus,
        serial=_str(data, "serial") or "none",
        boot=boot,
        on_reboot=_choice(data, "on_reboot", ("destroy", "restart"), "restart"),
        on_poweroff=_choice(data, "on_poweroff", ("destroy", "restart"), "destroy"),
        disks=[_disk(d, i) for i, d in enumerate(_list(data, "disks"))],
        nets=[_nic(n, i) for i, n in enumerate(_list(data, "nics"))],
        balloon=_bool(data, "balloon", False),
        rng=_bool(data, "rng", False),
        vsock=_vsock(data["vsock"]) if "vsock" in data else None,
    )
    return DomainConfig(name, machine, maxmem, _choice(data, "on_crash", ON_CRASH, "destroy"), _sched(data.get("sched", {})))


def mismatch(described: MachineConfig, actual: MachineConfig) -> str:
    """The first machine setting in which a domain's description and the machine
    it travels with (a snapshot, a migration) differ; "" if they agree.  Where
    COM1 goes, debug-exit and how NICs are plugged (descriptor, bridge) do not count."""
    def plain(config: MachineConfig, key: str) -> Any:
        value = getattr(config, key)
        return [(n.tap, n.mac) for n in value] if key == "nets" else value

    for key in vars(described):
        if key.startswith("_") or key in ("serial", "debug_exit"):
            continue
        if plain(described, key) != plain(actual, key):
            return key
    return ""


# --- one helper per kind of value --------------------------------------------------


def _str(data: dict[str, Any], key: str, required: bool = False, where: str = "") -> str:
    if key not in data:
        if required:
            raise UsageError(f"{where}{key}: required")
        return ""
    value = data[key]
    if not isinstance(value, str):
        raise UsageError(f"{where}{key}: must be a string")
    return value


def _int(data: dict[str, Any], key: str, default: int, low: int, high: int, where: str = "") -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{where}{key}: must be an integer between {low} and {high}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool, where: str = "") -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise UsageError(f"{where}{key}: must be true or false")
    return value


def _choice(data: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise UsageError(f"{key}: must be one of {', '.join(choices)}")
    return str(value)


def _size(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise UsageError(f"{key}: must be a size such as \"256M\" or a number of MiB")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise UsageError(f"{key}: must be a size such as \"256M\" or a number of MiB")
    return parse_size(value, key)


def _list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{key}: must be an array of tables ([[{key}]])")
    return value


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise UsageError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(keys))})")


def _disk(d: dict[str, Any], i: int) -> DiskConfig:
    where = f"disks[{i}]."
    _known(d, {"path", "readonly", "serial"}, where)
    serial = _str(d, "serial", where=where)
    if len(serial.encode()) > 20 or not serial.isprintable():
        raise UsageError(f"{where}serial: at most 20 printable bytes")
    return DiskConfig(_str(d, "path", required=True, where=where), _bool(d, "readonly", False, where), serial)


def _nic(n: dict[str, Any], i: int) -> NetConfig:
    where = f"nics[{i}]."
    _known(n, {"tap", "mac", "bridge"}, where)
    tap = _str(n, "tap", required=True, where=where)
    if not 1 <= len(tap) <= 15:
        raise UsageError(f"{where}tap: interface names are 1-15 characters")
    mac = _str(n, "mac", where=where)
    if mac:
        parse_mac(mac, f"{where}mac")
    return NetConfig(tap, mac, _str(n, "bridge", where=where))


def _vsock(v: Any) -> VsockConfig:
    if not isinstance(v, dict):
        raise UsageError("vsock: must be a table with cid and uds")
    _known(v, {"cid", "uds"}, "vsock.")
    return VsockConfig(_int(v, "cid", 3, 3, 0xFFFF_FFFE, "vsock."), _str(v, "uds", required=True, where="vsock."))


def _sched(s: Any) -> SchedParams:
    if not isinstance(s, dict):
        raise UsageError("sched: must be a table")
    _known(s, set(SchedParams._fields), "sched.")
    return SchedParams(
        weight=_int(s, "weight", 256, 1, 65535, "sched."),
        warp_ms=_int(s, "warp_ms", 0, 0, 10_000, "sched."),
        warp_limit_ms=_int(s, "warp_limit_ms", 2000, 0, 3_600_000, "sched."),
        unwarp_ms=_int(s, "unwarp_ms", 1000, 0, 3_600_000, "sched."),
    )
