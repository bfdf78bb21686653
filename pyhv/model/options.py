"""``pyhv run`` option strings -> the description's plain form.

This module only knows the command-line syntax (``--disk PATH[,ro][,serial=S]
[,cache=none|writeback][,ops=LIMIT][,bw=LIMIT]``, ``--disk base=B,overlay=P``, ``--disk vhost-user=S``,
``--net tap=NAME[,mac=M][,bridge=BR][,rx-ops=LIMIT][,rx-bw=LIMIT][,tx-ops=LIMIT][,tx-bw=LIMIT]`` where a
LIMIT is a token bucket ``SIZE/REFILL_MS[+BURST]``, ``--vsock cid=N,uds=PATH``, ``--fw-cfg
name=NAME,file=PATH|string=TEXT``, ``--fs tag=TAG,socket=PATH|path=DIR``, sizes, numbers); what a value may be is checked once, by
:func:`pyhv.model.from_plain`, and its errors are named here by the option
that carried the value.

A NIC may also be a TAP descriptor handed over by the caller (``--net fd=N``):
that is a host resource, not part of the description, so it comes back apart
(a NIC index -> descriptor map).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from . import Description, DescriptionError, from_plain, key_name

#: description key -> the option of ``pyhv run`` that carries it
OPTION_OF = {
    "kernel": "--kernel", "firmware": "--firmware", "initrd": "--initrd", "cmdline": "--cmdline", "boot": "--boot", "memory": "--memory",
    "maxmem": "--maxmem", "vcpus": "--vcpus", "on_poweroff": "--on-poweroff", "on_reboot": "--on-reboot",
    "on_crash": "--on-crash", "serial": "--serial", "debug_exit": "--debug-exit", "balloon": "--balloon",
    "rng": "--rng", "disks": "--disk", "nics": "--net", "vsock": "--vsock", "name": "--name",
    "fw_cfg": "--fw-cfg", "transport": "--transport", "fs": "--fs", "vmgenid": "--no-vmgenid",
}


#: a rate-limit option -> (description key, bucket)
LIMIT_OPTIONS = {
    "ops": ("rate_limit", "ops"), "bw": ("rate_limit", "bandwidth"),
    "rx-ops": ("rx_rate_limit", "ops"), "rx-bw": ("rx_rate_limit", "bandwidth"),
    "tx-ops": ("tx_rate_limit", "ops"), "tx-bw": ("tx_rate_limit", "bandwidth"),
}


#: ``--disk`` keys naming the disk itself (the form without a leading PATH) -> description keys
_DISK_NAMED = {"vhost-user": "vhost_user", "base": "base", "overlay": "path"}


def disk(spec: str) -> dict[str, Any]:
    """``PATH[,ro][,serial=TEXT][,cache=none|writeback][,ops=LIMIT][,bw=LIMIT]``,
    ``base=BASE,overlay=PATH[,ro][,cache=...]`` or ``vhost-user=SOCKET`` (values may not contain a comma)."""
    path, *opts = spec.split(",")
    out: dict[str, Any] = {"path": path}
    if path.partition("=")[0] in _DISK_NAMED:
        out, opts = {}, [path, *opts]
    elif not path:
        raise UsageError(f"--disk {spec!r}: missing the image path")
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key == "ro" and not eq:
            out["readonly"] = True
        elif key in ("serial", "cache") and eq and key not in out:
            out[key] = value
        elif key in ("ops", "bw") and eq:
            _limit(out, key, value, f"--disk {spec!r}")
        elif key in _DISK_NAMED and eq and _DISK_NAMED[key] not in out:
            out[_DISK_NAMED[key]] = value
        else:
            raise UsageError(f"--disk {spec!r}: unknown option {opt!r} (expected ro, serial=TEXT, "
                             "cache=none|writeback, ops=LIMIT, bw=LIMIT, base=BASE,overlay=PATH or vhost-user=SOCKET)")
    return out


def _limit(out: dict[str, Any], option: str, text: str, what: str) -> None:
    """``SIZE/REFILL_MS[+BURST]`` into ``out[key][bucket]`` (the model checks the numbers)."""
    key, bucket = LIMIT_OPTIONS[option]
    size, slash, rest = text.partition("/")
    refill, plus, burst = rest.partition("+")
    numbers = [size, refill] + ([burst] if plus else [])
    if not slash or not all(n.isdigit() for n in numbers) or bucket in out.get(key, {}):
        raise UsageError(f"{what}: {option}={text!r}: expected SIZE/REFILL_MS[+BURST] (numbers), once")
    out.setdefault(key, {})[bucket] = {"size": int(size), "refill_ms": int(refill), "burst": int(burst or 0)}


def net(spec: str) -> tuple[dict[str, Any], int | None]:
    """``tap=NAME[,mac=52:54:00:12:34:56][,bridge=BR]`` or ``fd=N[,mac=...]``, and rate
    limits (``rx-ops``, ``rx-bw``, ``tx-ops``, ``tx-bw``)."""
    fields: dict[str, str] = {}
    limits: dict[str, Any] = {}
    for opt in spec.split(","):
        key, eq, value = opt.partition("=")
        if key in LIMIT_OPTIONS and key not in ("ops", "bw") and eq:
            _limit(limits, key, value, f"--net {spec!r}")
            continue
        if key not in ("tap", "mac", "bridge", "fd") or not eq or not value or key in fields:
            raise UsageError(f"--net {spec!r}: expected tap=NAME|fd=N[,mac=XX:XX:XX:XX:XX:XX][,bridge=NAME]")
        fields[key] = value
    fd = None
    if "fd" in fields:
        if not fields["fd"].isdigit() or "tap" in fields or "bridge" in fields:
            raise UsageError(f"--net {spec!r}: fd=N takes a file descriptor number, without tap= or bridge=")
        fd = int(fields.pop("fd"))
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"--net {spec!r}: file descriptor {fd} is not open") from None
        fields["tap"] = f"fd{fd}"
    elif "tap" not in fields:
        raise UsageError(f"--net {spec!r}: tap=NAME (or fd=N) is required")
    return {**fields, **limits}, fd


def vsock(spec: str) -> dict[str, Any]:
    """``cid=N,uds=PATH`` (Firecracker's host-side convention)."""
    fields = dict(opt.partition("=")[::2] for opt in spec.split(","))
    if set(fields) != {"cid", "uds"}:
        raise UsageError(f"--vsock {spec!r}: expected cid=N,uds=PATH")
    return {"cid": _number(fields["cid"]), "uds": fields["uds"]}


def fw_cfg(spec: str) -> dict[str, Any]:
    """``name=NAME,file=PATH`` or ``name=NAME,string=TEXT`` (QEMU's -fw_cfg).  Everything
    after ``file=`` or ``string=`` is the value, commas included; the name ends at the
    first comma."""
    head, comma, rest = spec.partition(",")
    key, eq, value = rest.partition("=")
    if not head.startswith("name=") or not comma or key not in ("file", "string") or not eq:
        raise UsageError(f"--fw-cfg {spec!r}: expected name=NAME,file=PATH or name=NAME,string=TEXT")
    return {"name": head[len("name="):], key: value}


def fs(spec: str) -> dict[str, Any]:
    """``tag=TAG,socket=PATH`` or ``tag=TAG,path=DIR`` (the last value may not contain a comma)."""
    fields: dict[str, str] = {}
    for opt in spec.split(","):
        key, eq, value = opt.partition("=")
        if key not in ("tag", "socket", "path") or not eq or key in fields:
            raise UsageError(f"--fs {spec!r}: expected tag=TAG,socket=PATH or tag=TAG,path=DIR")
        fields[key] = value
    return dict(fields)


def _number(text: str) -> int | str:
    """An integer where the text is one; else the text, for the description to refuse."""
    return int(text) if text.isdigit() and len(text) < 20 else text


def plain_from_options(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[int, int], dict[str, str]]:
    """The plain form of the options given (``values``: option dest -> value; None
    or an empty list means not given), the handed-over TAPs (NIC index -> fd), and
    each key's option text, to name it in errors."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    fds: dict[int, int] = {}
    for key in ("kernel", "firmware", "initrd", "cmdline", "boot", "memory", "maxmem", "serial", "on_poweroff",
                "on_reboot", "on_crash", "name", "transport"):
        value = values.get(key)
        if value is not None:
            out[key] = value
            given[key] = f"{OPTION_OF[key]} {value!r}"
    if values.get("vcpus") is not None:
        out["vcpus"] = _number(values["vcpus"])
        given["vcpus"] = f"--vcpus {values['vcpus']!r}"
    if values.get("debug_exit") is not None:  # the bare flag is "pyhv"; the value is the model's to check
        out["debug_exit"] = values["debug_exit"]
        given["debug_exit"] = f"--debug-exit={values['debug_exit']}"
    for key in ("balloon", "rng"):
        if values.get(key):
            out[key] = True
            given[key] = OPTION_OF[key]
    if values.get("no_vmgenid"):
        out["vmgenid"] = False
        given["vmgenid"] = OPTION_OF["vmgenid"]
    if values.get("disk"):
        out["disks"] = [disk(spec) for spec in values["disk"]]
        given.update({f"disks[{i}]": f"--disk {spec!r}" for i, spec in enumerate(values["disk"])})
    if values.get("net"):
        out["nics"] = []
        for i, spec in enumerate(values["net"]):
            nic, fd = net(spec)
            out["nics"].append(nic)
            given[f"nics[{i}]"] = f"--net {spec!r}"
            if fd is not None:
                fds[i] = fd
    if values.get("fw_cfg"):
        out["fw_cfg"] = [fw_cfg(spec) for spec in values["fw_cfg"]]
        given.update({f"fw_cfg[{i}]": f"--fw-cfg {spec!r}" for i, spec in enumerate(values["fw_cfg"])})
    if values.get("fs"):
        out["fs"] = [fs(spec) for spec in values["fs"]]
        given.update({f"fs[{i}]": f"--fs {spec!r}" for i, spec in enumerate(values["fs"])})
    if values.get("vsock"):
        out["vsock"] = vsock(values["vsock"])
        given["vsock"] = f"--vsock {values['vsock']!r}"
    return out, fds, given


def describe(plain: dict[str, Any], given: Mapping[str, str], source: str = "") -> Description:
    """:func:`from_plain`, with an error named by the option that carried the value
    (or, for a value from the file ``source``, by the file and the key)."""
    try:
        return from_plain(plain)
    except DescriptionError as e:
        raise UsageError(error_text(e, given, source)) from None


def error_text(e: DescriptionError, given: Mapping[str, str], source: str = "") -> str:
    path = e.path
    for depth in (2, 1):  # disks[0].serial is carried by --disk #0; memory by --memory
        head = key_name(path[:depth])
        if head in given:
            rest = key_name(path[depth:])
            return f"{given[head]}: {rest + ': ' if rest else ''}{e.message}"
    return f"{source}: {e}" if source else str(e)
