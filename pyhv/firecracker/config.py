"""A microVM's pre-boot configuration in Firecracker's shape, and its one translation
into the machine description's plain form.

Firecracker configures a microVM resource by resource (``PUT /boot-source``,
``PUT /drives/ID``, ...) or all at once from a ``--config-file``; both arrive
here as the same bodies.  Each setter checks its body completely and then
returns a new :class:`FcConfig` (the records are immutable), so a bad request
changes nothing.  :func:`to_plain` is the only place that knows how a Firecracker
resource becomes a key of :mod:`pyhv.model`'s plain form, and :func:`describe`
runs :func:`pyhv.model.from_plain` on it, naming the Firecracker field of any
value the model refuses.  :func:`from_description` goes back the other way, for
``GET /vm/config`` after a snapshot was loaded.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ..model import MIN_MEMORY, MiB, Description, DescriptionError, check_name, from_plain

#: the Firecracker release whose API this front end follows
FIRECRACKER_VERSION = "1.10.1"
DEFAULT_ID = "anonymous-instance"
#: Firecracker's default boot arguments without ``pci=off``: pyhv's machine has a PCI root
#: whichever transport its virtio devices use
DEFAULT_BOOT_ARGS = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
MAX_VCPUS = 32  # Firecracker's limit (the swagger's MachineConfiguration.vcpu_count)
ID_MAX = 64


class Fault(Exception):
    """A request Firecracker would answer with 400 and this ``fault_message``."""


class FcConfig(NamedTuple):
    """The pre-boot configuration: each field is a resource's body as Firecracker
    shows it in ``GET /vm/config`` (absent resources are None or empty)."""

    boot_source: dict[str, Any] | None = None
    machine: dict[str, Any] = {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False,
                               "huge_pages": "None"}
    drives: tuple[dict[str, Any], ...] = ()
    nics: tuple[dict[str, Any], ...] = ()
    vsock: dict[str, Any] | None = None
    balloon: dict[str, Any] | None = None
    entropy: dict[str, Any] | None = None

    @property
    def touched(self) -> bool:
        """Whether any boot-specific resource was configured (then no snapshot may be loaded)."""
        return self != FcConfig()


# --- checking bodies ----------------------------------------------------------------------

_TYPES: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer", dict: "an object",
                           list: "an array"}


def fields(body: Any, what: str, required: dict[str, type], optional: dict[str, type]) -> dict[str, Any]:
    """``body`` checked as a JSON object with these keys and types; nulls of optional keys dropped."""
    if not isinstance(body, dict):
        raise Fault(f"{what}: the request body must be a JSON object")
    known = {**required, **optional}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise Fault(f"{what}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for key, kind in known.items():
        value = body.get(key)
        if value is None:
            if key in required:
                raise Fault(f"{what}: missing field {key!r}")
            continue
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok or (kind is int and value < 0):
            raise Fault(f"{what}.{key}: must be {_TYPES[kind]}{' (not negative)' if kind is int else ''}")
        out[key] = value
    return out


def _no_rate_limiter(body: dict[str, Any], what: str, *keys: str) -> None:
    for key in keys:
        limiter = body.pop(key, None)
        if limiter is not None and any(v is not None for v in limiter.values()):
            raise Fault(f"{what}.{key}: rate limiters are not supported by pyhv yet")


def _rate_limiter(body: dict[str, Any], what: str, key: str) -> None:
    """``body[key]`` checked as Firecracker's RateLimiter (kept as given, for ``GET /vm/config``)."""
    limiter = body.get(key)
    if limiter is None:
        return
    r = fields(limiter, f"{what}.{key}", {}, {"bandwidth": dict, "ops": dict})
    for name, bucket in r.items():
        fields(bucket, f"{what}.{key}.{name}", {"size": int, "refill_time": int}, {"one_time_burst": int})


def limit_plain(limiter: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checked Firecracker RateLimiter in the model's plain form (a bucket of size 0 or
    refill_time 0 is no limit, as in Firecracker)."""
    out = {}
    for name, bucket in (limiter or {}).items():
        if bucket and bucket["size"] and bucket["refill_time"]:
            out[name] = {"size": bucket["size"], "refill_ms": bucket["refill_time"],
                         "burst": bucket.get("one_time_burst") or 0}
    return out or None


def _readable(path: str, what: str, write: bool = False) -> None:
    mode = os.R_OK | (os.W_OK if write else 0)
    if not os.path.isfile(path) or not os.access(path, mode):
        raise Fault(f"{what}: cannot open {path!r} for {'reading and writing' if write else 'reading'}")


def _resource_id(path_id: str, body: dict[str, Any], key: str, what: str) -> None:
    if not path_id or len(path_id) > ID_MAX or not path_id.replace("_", "").replace("-", "").isalnum():
        raise Fault(f"{what}: the id must be 1-{ID_MAX} letters, digits, '_' or '-'")
    if body.get(key, path_id) != path_id:
        raise Fault(f"{what}: the {key} in the body ({body[key]!r:.40}) is not the one in the path")


# --- the resources: each returns a new configuration -------------------------------------------


def put_boot_source(cfg: FcConfig, body: Any) -> FcConfig:
    b = fields(body, "boot-source", {"kernel_image_path": str}, {"boot_args": str, "initrd_path": str})
    _readable(b["kernel_image_path"], "boot-source.kernel_image_path")
    if "initrd_path" in b:
        _readable(b["initrd_path"], "boot-source.initrd_path")
    return _checked(cfg._replace(boot_source=b))


def put_machine_config(cfg: FcConfig, body: Any, patch: bool = False) -> FcConfig:
    kinds: dict[str, type] = {"vcpu_count": int, "mem_size_mib": int}
    optional: dict[str, type] = {"smt": bool, "track_dirty_pages": bool, "huge_pages": str, "cpu_template": str}
    m = fields(body, "machine-config", {} if patch else kinds, {**optional, **(kinds if patch else {})})
    merged = {**(cfg.machine if patch else FcConfig().machine), **m}
    if not 1 <= merged["vcpu_count"] <= MAX_VCPUS:
        raise Fault(f"machine-config.vcpu_count: must be between 1 and {MAX_VCPUS}")
    if merged["smt"] and merged["vcpu_count"] > 1 and merged["vcpu_count"] % 2:
        raise Fault("machine-config.vcpu_count: must be 1 or even with smt")
    if merged["huge_pages"] not in ("None", "2M"):
        raise Fault("machine-config.huge_pages: must be None or 2M")
    if merged["huge_pages"] != "None":
        raise Fault("machine-config.huge_pages: huge pages are not supported by pyhv yet")
    if merged.get("cpu_template", "None") != "None":
        raise Fault("machine-config.cpu_template: CPU templates are not supported by pyhv yet")
    merged.pop("cpu_template", None)
    return _checked(cfg._replace(machine=merged))


def put_drive(cfg: FcConfig, drive_id: str, body: Any) -> FcConfig:
    what = f"drives[{drive_id}]"
    d = fields(body, what, {"drive_id": str, "is_root_device": bool},
               {"path_on_host": str, "is_read_only": bool, "partuuid": str, "cache_type": str,
                "io_engine": str, "rate_limiter": dict, "socket": str})
    _resource_id(drive_id, d, "drive_id", what)
    _rate_limiter(d, what, "rate_limiter")
    if "socket" in d:
        raise Fault(f"{what}.socket: vhost-user block devices are not supported by pyhv")
    if "path_on_host" not in d:
        raise Fault(f"{what}: missing field 'path_on_host'")
    if d.setdefault("cache_type", "Unsafe") not in ("Unsafe", "Writeback"):
        raise Fault(f"{what}.cache_type: must be Unsafe or Writeback")
    if d.setdefault("io_engine", "Sync") not in ("Sync", "Async"):
        raise Fault(f"{what}.io_engine: must be Sync or Async")
    d.setdefault("is_read_only", False)
    _readable(d["path_on_host"], f"{what}.path_on_host", write=not d["is_read_only"])
    others = [x for x in cfg.drives if x["drive_id"] != drive_id]
    if d["is_root_device"] and any(x["is_root_device"] for x in others):
        raise Fault(f"{what}.is_root_device: another drive is already the root device")
    drives = tuple(d if x["drive_id"] == drive_id else x for x in cfg.drives)
    if len(others) == len(cfg.drives):
        drives += (d,)
    return _checked(cfg._replace(drives=drives))


def patch_drive(cfg: FcConfig, drive_id: str, body: Any) -> tuple[FcConfig, int, dict[str, Any]]:
    """``PATCH /drives/ID`` (after boot): the configuration with the drive's new
    ``path_on_host`` and ``rate_limiter`` (buckets given replace those it had), the
    drive's index in the guest's order, and what changed.  The file itself is
    opened and checked by the runtime's disk-swap."""
    what = f"drives[{drive_id}]"
    d = fields(body, what, {"drive_id": str}, {"path_on_host": str, "rate_limiter": dict})
    _resource_id(drive_id, d, "drive_id", what)
    _rate_limiter(d, what, "rate_limiter")
    order = ordered_drives(cfg)
    index = next((i for i, x in enumerate(order) if x["drive_id"] == drive_id), None)
    if index is None:
        raise Fault(f"{what}: no such drive (known: {', '.join(x['drive_id'] for x in order) or 'none'})")
    changes = {k: v for k, v in d.items() if k != "drive_id"}
    if "rate_limiter" in changes:
        changes["rate_limiter"] = {**(order[index].get("rate_limiter") or {}), **changes["rate_limiter"]}
    drives = tuple({**x, **changes} if x["drive_id"] == drive_id else x for x in cfg.drives)
    return cfg._replace(drives=drives), index, changes


def patch_network_interface(cfg: FcConfig, iface_id: str, body: Any) -> tuple[FcConfig, int, dict[str, Any]]:
    """``PATCH /network-interfaces/ID`` (after boot): new rate limiters (buckets given
    replace those it had); the configuration, the interface's index and what changed."""
    what = f"network-interfaces[{iface_id}]"
    n = fields(body, what, {"iface_id": str}, {"rx_rate_limiter": dict, "tx_rate_limiter": dict})
    _resource_id(iface_id, n, "iface_id", what)
    index = next((i for i, x in enumerate(cfg.nics) if x["iface_id"] == iface_id), None)
    if index is None:
        raise Fault(f"{what}: no such interface (known: {', '.join(x['iface_id'] for x in cfg.nics) or 'none'})")
    changes: dict[str, Any] = {}
    for key in ("rx_rate_limiter", "tx_rate_limiter"):
        _rate_limiter(n, what, key)
        if key in n:
            changes[key] = {**(cfg.nics[index].get(key) or {}), **n[key]}
    nics = tuple({**x, **changes} if i == index else x for i, x in enumerate(cfg.nics))
    return cfg._replace(nics=nics), index, changes


def put_network_interface(cfg: FcConfig, iface_id: str, body: Any) -> FcConfig:
    what = f"network-interfaces[{iface_id}]"
    n = fields(body, what, {"iface_id": str, "host_dev_name": str},
               {"guest_mac": str, "rx_rate_limiter": dict, "tx_rate_limiter": dict})
    _resource_id(iface_id, n, "iface_id", what)
    _rate_limiter(n, what, "rx_rate_limiter")
    _rate_limiter(n, what, "tx_rate_limiter")
    for x in cfg.nics:
        if x["iface_id"] != iface_id and x["host_dev_name"] == n["host_dev_name"]:
            raise Fault(f"{what}.host_dev_name: {n['host_dev_name']!r} is already used by {x['iface_id']}")
        if x["iface_id"] != iface_id and n.get("guest_mac") and x.get("guest_mac", "").lower() == n["guest_mac"].lower():
            raise Fault(f"{what}.guest_mac: {n['guest_mac']} is already used by {x['iface_id']}")
    nics = tuple(n if x["iface_id"] == iface_id else x for x in cfg.nics)
    if all(x["iface_id"] != iface_id for x in cfg.nics):
        nics += (n,)
    return _checked(cfg._replace(nics=nics))


def put_vsock(cfg: FcConfig, body: Any) -> FcConfig:
    v = fields(body, "vsock", {"guest_cid": int, "uds_path": str}, {"vsock_id": str})
    v.pop("vsock_id", None)  # deprecated in Firecracker, and meaningless with one vsock device
    return _checked(cfg._replace(vsock=v))


def put_entropy(cfg: FcConfig, body: Any) -> FcConfig:
    e = fields(body, "entropy", {}, {"rate_limiter": dict})
    _no_rate_limiter(e, "entropy", "rate_limiter")
    return _checked(cfg._replace(entropy={}))


def put_balloon(cfg: FcConfig, body: Any) -> FcConfig:
    b = fields(body, "balloon", {"amount_mib": int, "deflate_on_oom": bool}, {"stats_polling_interval_s": int})
    if b.setdefault("stats_polling_interval_s", 0):
        raise Fault("balloon.stats_polling_interval_s: balloon statistics are not supported by pyhv yet (use 0)")
    return _checked(cfg._replace(balloon=b))


def patch_balloon(balloon: dict[str, Any] | None, body: Any) -> dict[str, Any]:
    """The balloon configuration with a new ``amount_mib`` (pre- or post-boot)."""
    if balloon is None:
        raise Fault("balloon: no balloon device is configured")
    b = fields(body, "balloon", {"amount_mib": int}, {})
    return {**balloon, **b}


def balloon_target(amount_mib: int, memory_mib: int) -> int:
    """The guest memory (bytes) a balloon of ``amount_mib`` leaves: the runtime's mem-set."""
    target = (memory_mib - amount_mib) * MiB
    if target < MIN_MEMORY:
        raise Fault(f"balloon.amount_mib: {amount_mib} MiB would leave the guest less than "
                    f"{MIN_MEMORY // MiB} MiB of its {memory_mib} MiB")
    return target


def apply_file(cfg: FcConfig, data: Any) -> tuple[FcConfig, dict[str, Any]]:
    """A ``--config-file`` (Firecracker's full-VM JSON) applied resource by resource;
    returns the configuration and the front end's own sections (logger, metrics)."""
    if not isinstance(data, dict):
        raise Fault("the configuration file must hold a JSON object")
    known = {"boot-source", "machine-config", "drives", "network-interfaces", "vsock", "balloon", "entropy",
             "logger", "metrics", "mmds-config", "cpu-config"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise Fault(f"unknown section {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for section in ("mmds-config", "cpu-config"):
        if data.get(section) is not None:
            raise Fault(f"{section}: not supported by pyhv yet")
    if data.get("boot-source") is None:
        raise Fault("boot-source: missing (the kernel to boot)")
    cfg = put_boot_source(cfg, data["boot-source"])
    if data.get("machine-config") is not None:
        cfg = put_machine_config(cfg, data["machine-config"])
    for key, setter, id_key in (("drives", put_drive, "drive_id"), ("network-interfaces", put_network_interface, "iface_id")):
        items = data.get(key) or []
        if not isinstance(items, list):
            raise Fault(f"{key}: must be an array")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get(id_key), str):
                raise Fault(f"{key}: each entry must be an object with a string {id_key}")
            cfg = setter(cfg, item[id_key], item)
    for key, put in (("vsock", put_vsock), ("balloon", put_balloon), ("entropy", put_entropy)):
        if data.get(key) is not None:
            cfg = put(cfg, data[key])
    return cfg, {k: data[k] for k in ("logger", "metrics") if data.get(k) is not None}


# --- the translation -----------------------------------------------------------------------------


def ordered_drives(cfg: FcConfig) -> list[dict[str, Any]]:
    """The drives in the guest's order: the root device first (/dev/vda), as Firecracker does."""
    return sorted(cfg.drives, key=lambda d: not d["is_root_device"])


def cmdline(cfg: FcConfig) -> str:
    """``boot_args`` as given (Firecracker's default without pci=off if none), plus the
    ``root=`` Firecracker adds for a root drive."""
    boot = cfg.boot_source or {}
    args = boot.get("boot_args", DEFAULT_BOOT_ARGS)
    root = next((d for d in cfg.drives if d["is_root_device"]), None)
    if root is not None:
        where = f"PARTUUID={root['partuuid']}" if root.get("partuuid") else "/dev/vda"
        args = f"{args} root={where} {'ro' if root['is_read_only'] else 'rw'}".strip()
    return str(args)


def to_plain(cfg: FcConfig, instance_id: str = DEFAULT_ID, kernel: str | None = None,
             transport: str = "mmio") -> dict[str, Any]:
    """The model's plain form of this configuration (``kernel`` stands in for a
    boot source not given yet, when a request is checked before one is).  Devices
    are virtio-MMIO, as Firecracker's are, unless ``transport`` (``--enable-pci``) says pci."""
    boot = cfg.boot_source or {}
    try:
        name = check_name(instance_id)
    except DescriptionError:
        name = ""  # Firecracker ids are freer than domain names; the domain goes unnamed
    plain: dict[str, Any] = {
        "name": name,
        "kernel": boot.get("kernel_image_path", kernel),
        "initrd": boot.get("initrd_path", ""),
        "cmdline": cmdline(cfg),
        "memory": cfg.machine["mem_size_mib"],
        "vcpus": cfg.machine["vcpu_count"],
        # a Firecracker process ends with its guest, however the guest ends
        "on_poweroff": "destroy", "on_reboot": "destroy", "on_crash": "destroy",
        "serial": "stdio",
        "balloon": cfg.balloon is not None,
        "rng": cfg.entropy is not None,
        "transport": transport,
        "disks": [{"path": d["path_on_host"], "readonly": d["is_read_only"], "serial": d["drive_id"][:20],
                   "cache": "writeback", "rate_limit": limit_plain(d.get("rate_limiter"))} for d in ordered_drives(cfg)],
        "nics": [{"tap": n["host_dev_name"], "mac": n.get("guest_mac", ""),
                  "rx_rate_limit": limit_plain(n.get("rx_rate_limiter")),
                  "tx_rate_limit": limit_plain(n.get("tx_rate_limiter"))} for n in cfg.nics],
        "vsock": None if cfg.vsock is None else {"cid": cfg.vsock["guest_cid"], "uds": cfg.vsock["uds_path"]},
    }
    if plain["kernel"] is None:
        del plain["kernel"]
    return plain


_DISK_FIELDS = {"path": "path_on_host", "readonly": "is_read_only", "serial": "drive_id", "cache": "cache_type",
                "rate_limit": "rate_limiter"}
_NIC_FIELDS = {"tap": "host_dev_name", "mac": "guest_mac", "bridge": "host_dev_name",
               "rx_rate_limit": "rx_rate_limiter", "tx_rate_limit": "tx_rate_limiter"}
_BUCKET_FIELDS = {"refill_ms": "refill_time", "burst": "one_time_burst"}
_TOP_FIELDS = {
    "kernel": "boot-source.kernel_image_path", "initrd": "boot-source.initrd_path",
    "cmdline": "boot-source.boot_args", "memory": "machine-config.mem_size_mib",
    "maxmem": "machine-config.mem_size_mib", "vcpus": "machine-config.vcpu_count", "name": "--id",
    "disks": "drives", "nics": "network-interfaces", "vsock": "vsock",
}


def field_name(cfg: FcConfig, path: tuple[str | int, ...]) -> str:
    """The Firecracker field a model key comes from: ``("disks", 0, "path")`` ->
    ``drives[rootfs].path_on_host``."""
    if not path:
        return "configuration"
    head = str(path[0])
    if head in ("disks", "nics") and len(path) >= 2 and isinstance(path[1], int):
        items = ordered_drives(cfg) if head == "disks" else list(cfg.nics)
        key = "drive_id" if head == "disks" else "iface_id"
        base = f"{_TOP_FIELDS[head]}[{items[path[1]][key]}]" if path[1] < len(items) else _TOP_FIELDS[head]
        names = _DISK_FIELDS if head == "disks" else _NIC_FIELDS
        rest = "".join(f".{_BUCKET_FIELDS.get(str(k), k)}" for k in path[3:])  # inside a rate limiter
        return f"{base}.{names.get(str(path[2]), path[2])}{rest}" if len(path) > 2 else base
    if head == "vsock" and len(path) > 1:
        return "vsock." + {"cid": "guest_cid", "uds": "uds_path"}.get(str(path[1]), str(path[1]))
    return _TOP_FIELDS.get(head, head)


def describe(cfg: FcConfig, instance_id: str = DEFAULT_ID, transport: str = "mmio") -> Description:
    """The machine description for InstanceStart: every value checked by the model."""
    if cfg.boot_source is None:
        raise Fault("InstanceStart: no boot source (PUT /boot-source first)")
    try:
        return from_plain(to_plain(cfg, instance_id, transport=transport))
    except DescriptionError as e:
        raise Fault(f"{field_name(cfg, e.path)}: {e.message}") from None


def _checked(cfg: FcConfig) -> FcConfig:
    """``cfg`` if the model accepts it (with a stand-in kernel before the boot source is set)."""
    if cfg.balloon is not None:
        balloon_target(cfg.balloon["amount_mib"], cfg.machine["mem_size_mib"])
    try:
        from_plain(to_plain(cfg, DEFAULT_ID, kernel="(not yet given)"))
    except DescriptionError as e:
        raise Fault(f"{field_name(cfg, e.path)}: {e.message}") from None
    return cfg


def vm_config(cfg: FcConfig) -> dict[str, Any]:
    """``GET /vm/config``: Firecracker's FullVmConfiguration of the microVM resources."""
    return {
        "balloon": cfg.balloon,
        "drives": list(cfg.drives),
        "boot-source": cfg.boot_source,
        "cpu-config": None,
        "logger": None,
        "machine-config": dict(cfg.machine),
        "metrics": None,
        "mmds-config": None,
        "network-interfaces": list(cfg.nics),
        "vsock": cfg.vsock,
        "entropy": cfg.entropy,
    }


def from_description(d: Description) -> FcConfig:
    """The configuration a description (a loaded snapshot's) shows as, in Firecracker's terms."""
    boot: dict[str, Any] = {"kernel_image_path": d.payload.kernel, "boot_args": d.payload.cmdline}
    if d.payload.initrd:
        boot["initrd_path"] = d.payload.initrd
    return FcConfig(
        boot_source=boot,
        machine={**FcConfig().machine, "vcpu_count": d.vcpus, "mem_size_mib": d.memory // MiB},
        drives=tuple({"drive_id": x.serial or f"drive{i}", "path_on_host": x.path, "is_root_device": False,
                      "is_read_only": x.readonly, "cache_type": "Writeback", "io_engine": "Sync",
                      **_limiter("rate_limiter", x.rate_limit)}
                     for i, x in enumerate(d.disks)),
        nics=tuple({"iface_id": f"eth{i}", "host_dev_name": x.tap, **({"guest_mac": x.mac} if x.mac else {}),
                    **_limiter("rx_rate_limiter", x.rx_rate_limit), **_limiter("tx_rate_limiter", x.tx_rate_limit)}
                   for i, x in enumerate(d.nics)),
        vsock=None if d.vsock is None else {"guest_cid": d.vsock.cid, "uds_path": d.vsock.uds},
        balloon={"amount_mib": 0, "deflate_on_oom": False, "stats_polling_interval_s": 0} if d.balloon else None,
        entropy={} if d.rng else None,
    )


def _limiter(key: str, limit: Any) -> dict[str, Any]:
    """``{key: RateLimiter}`` in Firecracker's shape for a model RateLimit (nothing for None)."""
    if limit is None:
        return {}
    return {key: {name: {"size": b.size, "refill_time": b.refill_ms, "one_time_burst": b.burst}
                  for name, b in limit._asdict().items() if b is not None}}
