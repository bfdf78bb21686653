"""The ``pyhv`` verbs that talk to pyhvd, named and shaped after xl's.

Each verb is a function taking its arguments after the verb; it prints a
human table by default, JSON with ``--json``, and returns the exit status:
0 done, 1 refused (no such domain, wrong state, pyhvd unreachable), 2 bad usage.
``--socket PATH`` (or ``PYHV_SOCKET``) names pyhvd's socket.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ..errors import PyhvError, UsageError
from .client import Client

STATE_FLAGS = {"running": "r", "blocked": "b", "paused": "p", "shutdown": "s", "crashed": "c", "dying": "d"}


class Args:
    """Positional arguments and flags of one verb."""

    def __init__(self, argv: list[str], flags: set[str], valued: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.positional: list[str] = []
        self.flags: set[str] = set()
        self.values: dict[str, str] = {}
        args = list(argv)
        while args:
            arg = args.pop(0)
            name, eq, value = arg.partition("=")
            if arg.startswith("-") and len(arg) > 1 and not arg[1:].isdigit():
                if name in valued:
                    if not eq:
                        if not args:
                            raise UsageError(f"{name} needs a value")
                        value = args.pop(0)
                    self.values[name] = value
                elif arg in flags:
                    self.flags.add(arg)
                else:
                    raise UsageError(f"unknown option {arg!r}")
            else:
                self.positional.append(arg)

    def want(self, low: int, high: int, what: str) -> list[str]:
        if not low <= len(self.positional) <= high:
            raise UsageError(f"expected {what}")
        return self.positional


def _dom(ref: str) -> str:
    return "/domains/" + quote(ref, safe="")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[str]], header: list[str], right: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())


def _state(state: str) -> str:
    """xl's six state columns: r b p s c d."""
    flag = STATE_FLAGS.get(state)
    return "".join(f if f == flag else "-" for f in "rbpscd") if flag else state


# --- verbs ------------------------------------------------------------------------------


def create(client: Client, argv: list[str]) -> int:
    from .. import model
    from ..errors import UsageError
    from ..model import files

    args = Args(argv, {"-p", "-c", "--json"})
    rest = args.want(1, 10_000, "create FILE [-p] [-c] [key=value ...]")
    config = files.load_mapping(rest[0])
    for assignment in rest[1:]:
        files.apply_override(config, assignment)
    try:  # bad usage is found here, before pyhvd is asked
        description = model.from_plain(config)
    except model.DescriptionError as e:
        raise UsageError(f"{rest[0]}: {e}") from None
    # relative file names are the caller's: relative to where pyhv create runs
    description = model.with_absolute_paths(description, os.getcwd())
    reply = client.post("/domains", {"config": model.to_plain(description), "paused": "-p" in args.flags})
    if "--json" in args.flags:
        _print_json(reply)
    else:
        print(f"domain {reply['name']} created, id {reply['id']}" + (" (paused)" if "-p" in args.flags else ""))
    if "-c" in args.flags:
        return console(client, [str(reply["id"])])
    return 0


def list_(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"--json", "-l", "--long"})
    domains = client.get("/domains")
    wanted = args.positional
    if wanted:
        domains = [d for d in domains if str(d["id"]) in wanted or d["name"] in wanted]
        missing = set(wanted) - {str(d["id"]) for d in domains} - {d["name"] for d in domains}
        if missing:
            raise PyhvError(f"no domain {sorted(missing)[0]!r}")
    if "-l" in args.flags or "--long" in args.flags:
        domains = [client.get(_dom(str(d["id"]))) for d in domains]
        _print_json(domains)
        return 0
    if "--json" in args.flags:
        _print_json(domains)
        return 0
    rows = [
        [d["name"], str(d["id"]), str(d["memory"] >> 20), str(d["vcpus"]), _state(d["state"]), f"{d['cpu_time']:.1f}"]
        for d in domains
    ]
    _table(rows, ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"], right={1, 2, 3, 5})
    return 0


def _simple(op: str, done: str) -> Callable[[Client, list[str]], int]:
    def verb(client: Client, argv: list[str]) -> int:
        (dom,) = Args(argv, set()).want(1, 1, f"{op} DOMAIN")
        client.post(f"{_dom(dom)}/{op}")
        print(f"domain {dom} {done}")
        return 0

    return verb


def shutdown(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"-w"})
    (dom,) = args.want(1, 1, "shutdown [-w] DOMAIN")
    client.post(f"{_dom(dom)}/shutdown")
    if "-w" in args.flags:
        while True:
            try:
                client.get(_dom(dom))
            except PyhvError as e:
                if getattr(e, "http_status", 0) in (404, 409):
                    break
                raise
            time.sleep(0.1)
        print(f"domain {dom} shut down")
    else:
        print(f"domain {dom} shutting down")
    return 0


def destroy(client: Client, argv: list[str]) -> int:
    (dom,) = Args(argv, set()).want(1, 1, "destroy DOMAIN")
    client.delete(_dom(dom))
    print(f"domain {dom} destroyed")
    return 0


def mem_set(client: Client, argv: list[str], key: str = "target", path: str = "memory") -> int:
    from ..model import parse_size

    dom, size = Args(argv, set()).want(2, 2, f"mem-{'set' if key == 'target' else 'max'} DOMAIN SIZE")
    client.put(f"{_dom(dom)}/{path}", {key: parse_size(size, ("SIZE",))})
    print(f"domain {dom}: {'memory target' if key == 'target' else 'maximum memory'} set to {size}")
    return 0


def mem_max(client: Client, argv: list[str]) -> int:
    return mem_set(client, argv, "maxmem", "maxmem")


def vcpu_list(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"--json"})
    refs = args.want(0, 1000, "vcpu-list [DOMAIN ...]") or [str(d["id"]) for d in client.get("/domains")]
    rows, everything = [], []
    for ref in refs:
        info = client.get(_dom(ref))
        for v in info["vcpu"]:
            everything.append({"domain": info["name"], "id": info["id"], **v})
            rows.append([
                info["name"], str(info["id"]), str(v["index"]), str(v["cpu"]) if v["cpu"] >= 0 else "-",
                v["state"], f"{v['cpu_ns'] / 1e9:.1f}", _cpus(v["affinity"]),
            ])
    if "--json" in args.flags:
        _print_json(everything)
    else:
        _table(rows, ["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity"], right={1, 2, 3, 5})
    return 0


def _cpus(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus) + [-2]:
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [c]
    return ",".join(out) or "-"


def parse_cpus(text: str) -> list[int]:
    """"0-2,5" -> [0, 1, 2, 5]; "all" -> every online CPU."""
    if text == "all":
        return sorted(os.sched_getaffinity(0))
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise UsageError(f"CPU list {text!r}: expected e.g. 0-2,5 or all")
        a, b = int(low), int(high) if dash else int(low)
        if b < a or b > 4095:
            raise UsageError(f"CPU list {text!r}: bad range {part}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def vcpu_pin(client: Client, argv: list[str]) -> int:
    dom, vcpu, cpus = Args(argv, set()).want(3, 3, "vcpu-pin DOMAIN VCPU|all CPUS")
    if vcpu != "all" and not vcpu.isdigit():
        raise UsageError(f"VCPU {vcpu!r}: expected a number or all")
    client.put(f"{_dom(dom)}/vcpus/{vcpu}/affinity", {"cpus": parse_cpus(cpus)})
    print(f"domain {dom}: vCPU {vcpu} pinned to {cpus}")
    return 0


def info(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"--json"})
    args.want(0, 0, "info [--json]")
    version = client.get("/version")
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:]}
    host = {
        "host": os.uname().nodename, "release": os.uname().release, "nr_cpus": os.cpu_count(),
        "total_memory": meminfo.get("MemTotal", 0), "free_memory": meminfo.get("MemAvailable", 0),
        "pyhv_version": version["version"], "domains": version["domains"], "socket": client.path,
    }
    if "--json" in args.flags:
        _print_json(host)
    else:
        for key, value in host.items():
            shown = f"{int(value) >> 20} MiB" if key.endswith("memory") else value  # type: ignore[call-overload]
            print(f"{key:15s}: {shown}")
    return 0


def dmesg(client: Client, argv: list[str]) -> int:
    args = Args(argv, set(), {"--bytes"})
    (dom,) = args.want(1, 1, "dmesg DOMAIN [--bytes N]")
    limit = args.values.get("--bytes", str(64 << 10))
    log = client.get(f"{_dom(dom)}/console?bytes={quote(limit)}")["log"]
    sys.stdout.write(log)
    if log and not log.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def _relay(sock: Any, early: bytes = b"", escape: bool = False, half_close: bool = False) -> None:
    """Copy standard input to ``sock`` and ``sock`` (after ``early``, bytes that
    already arrived) to standard output until the socket ends.  ``escape``: Ctrl-]
    on a terminal stops it.  When input ends, ``half_close`` tells the other side
    (which then ends); otherwise its output keeps coming."""
    import select
    import socket

    from ..backends.console import ESCAPE_BYTE

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    escape = escape and os.isatty(stdin)
    if early:
        os.write(stdout, early)
    watched = [sock, stdin]
    while True:
        ready = select.select(watched, [], [])[0]
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                watched = [sock]  # input ended: keep showing output
                continue
            if escape and ESCAPE_BYTE in data:
                sock.sendall(data[: data.index(ESCAPE_BYTE)])
                return
            sock.sendall(data)


def console(client: Client, argv: list[str]) -> int:
    """Attach the terminal to the domain's serial console; Ctrl-] detaches."""
    import socket
    import termios
    import tty

    (dom,) = Args(argv, set()).want(1, 1, "console DOMAIN")
    info = client.get(_dom(dom))
    path = info["console_socket"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        raise PyhvError(f"cannot attach to {info['name']}'s console: {e.strerror}") from None
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    if interactive:
        tty.setraw(stdin)
        print(f"Connected to domain {info['name']}; escape character is ^]", end="\r\n", file=sys.stderr)
    try:
        _relay(sock, escape=True)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
    return 0


def gdb(client: Client, argv: list[str]) -> int:
    """Start (or, --stop, stop) a GDB remote stub in the domain; print where GDB connects."""
    args = Args(argv, {"--stop"})
    dom, *listen = args.want(1, 2, "gdb DOMAIN [tcp:HOST:PORT] | gdb --stop DOMAIN")
    if "--stop" in args.flags:
        if listen:
            raise UsageError("gdb --stop takes only the domain")
        stopped = client.delete(f"{_dom(dom)}/gdb").get("stopped")
        print(f"domain {dom}: GDB stub stopped" if stopped else f"domain {dom}: no GDB stub was listening")
        return 0
    reply = client.post(f"{_dom(dom)}/gdb", {"listen": listen[0]} if listen else {})
    print(f"domain {dom}: GDB stub listening; in gdb: target remote {reply['address']}")
    return 0


def attach(client: Client, argv: list[str]) -> int:
    """An interactive Python prompt inside the domain process (pyhv/debug/repl.py serves it)."""
    from ..vmm.control import open_stream

    (dom,) = Args(argv, set()).want(1, 1, "attach DOMAIN|CONTROL-SOCKET")
    # `pyhv run --control PATH`'s socket needs no pyhvd (domain names never hold a /)
    path = dom if os.sep in dom else client.get(_dom(dom))["control_socket"]
    sock, early = open_stream(path, {"op": "repl"})
    with sock:
        _relay(sock, early, half_close=True)
    return 0


def top(client: Client, argv: list[str]) -> int:
    """A live table like xentop; -b prints plain tables, -n N stops after N."""
    args = Args(argv, {"-b"}, {"-d", "-n"})
    args.want(0, 0, "top [-b] [-d SECONDS] [-n ITERATIONS]")
    try:
        delay = float(args.values.get("-d", "1"))
        count = int(args.values.get("-n", "0"))
    except ValueError:
        raise UsageError("-d takes seconds, -n a number of iterations") from None
    if delay <= 0 or count < 0:
        raise UsageError("-d must be positive and -n at least 0")
    batch = "-b" in args.flags or not sys.stdout.isatty()
    last: dict[int, tuple[float, float]] = {}
    shown = 0
    try:
        while True:
            now = time.monotonic()
            domains = client.get("/domains")
            sched = {d["id"]: d for d in client.get("/sched")["domains"]}
            lines = [f"pyhv top - {time.strftime('%H:%M:%S')}  {len(domains)} domains"]
            rows = []
            for d in domains:
                metrics = _metrics_or_none(client, d["id"])
                prev = last.get(d["id"])
                cpu = (d["cpu_time"] - prev[1]) / (now - prev[0]) * 100 if prev and now > prev[0] else 0.0
                last[d["id"]] = (now, d["cpu_time"])
                exits = sum(sum(v["exits"].values()) for v in metrics["vcpu"]) if metrics else 0
                blk = sum(x["read_bytes"] + x["write_bytes"] for x in metrics["disks"]) if metrics else 0
                net = sum(x["rx_bytes"] + x["tx_bytes"] for x in metrics["nics"]) if metrics else 0
                bvt = sched.get(d["id"], {}).get("vcpus", [])
                share = f"{sum(v['share'] for v in bvt) * 100:.1f}" if bvt else "-"
                avt = f"{max(v['avt_ns'] for v in bvt) / 1e6:.0f}" if bvt else "-"
                rows.append([
                    d["name"], str(d["id"]), _state(d["state"]), f"{d['cpu_time']:.1f}", f"{cpu:.1f}",
                    str(d["memory"] >> 20), str(d["vcpus"]), str(exits), str(blk >> 10), str(net >> 10),
                    share, avt,
                ])
            if not batch:
                sys.stdout.write("\x1b[H\x1b[2J")
            print("\n".join(lines))
            _table(rows, ["NAME", "ID", "STATE", "CPU(sec)", "CPU(%)", "MEM(M)", "VCPUS", "EXITS", "VBD(K)", "NET(K)",
                          "SHARE%", "AVT(ms)"], right=set(range(1, 12)) - {2})
            sys.stdout.flush()
            shown += 1
            if count and shown >= count:
                return 0
            time.sleep(delay)
            if batch:
                print()
    except KeyboardInterrupt:
        return 0


def _metrics_or_none(client: Client, domid: int) -> dict[str, Any] | None:
    try:
        value = client.get(f"/domains/{domid}/metrics")
    except PyhvError:
        return None
    return value if isinstance(value, dict) else None


def sched_bvt(client: Client, argv: list[str]) -> int:
    """Show or set BVT parameters: -d DOM with --weight/--warp/--warp-limit/--unwarp,
    or --ctx-allow alone; with neither, list every domain's parameters and vCPUs."""
    args = Args(argv, {"--json"}, {"-d", "--weight", "--warp", "--warp-limit", "--unwarp", "--ctx-allow"})
    args.want(0, 0, "sched-bvt [-d DOMAIN] [--weight N] [--warp MS] [--warp-limit MS] [--unwarp MS] [--ctx-allow MS]")
    keys = {"--weight": "weight", "--warp": "warp_ms", "--warp-limit": "warp_limit_ms", "--unwarp": "unwarp_ms"}
    changes = {}
    for option, key in keys.items():
        if option in args.values:
            value = args.values[option]
            if not value.isdigit():
                raise UsageError(f"{option} {value!r}: expected a whole number")
            changes[key] = int(value)
    dom = args.values.get("-d")
    if changes and dom is None:
        raise UsageError("say which domain with -d DOMAIN")
    if "--ctx-allow" in args.values:
        value = args.values["--ctx-allow"]
        if not value.isdigit():
            raise UsageError(f"--ctx-allow {value!r}: expected milliseconds")
        client.put("/sched", {"ctx_allow_ms": int(value)})
        print(f"context-switch allowance set to {value} ms")
    if changes:
        client.put(f"{_dom(dom)}/sched", changes)  # type: ignore[arg-type]
        print(f"domain {dom}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    if changes or "--ctx-allow" in args.values:
        return 0
    view = client.get("/sched")
    if dom is not None:
        view["domains"] = [client.get(f"{_dom(dom)}/sched")]
    if "--json" in args.flags:
        _print_json(view)
        return 0
    state = f"on CPUs {_cpus(view['pool'])}" if view["enabled"] else "off (start pyhvd with --cpu-pool CPUS)"
    print(f"BVT dispatcher {state}; context-switch allowance {view['ctx_allow_ms']} ms; "
          f"dispatcher CPU {view['dispatcher_cpu_seconds']:.2f} s")
    rows = []
    for d in view["domains"]:
        head = [d["name"], str(d["id"]), str(d["weight"]), str(d["warp_ms"]), str(d["warp_limit_ms"]),
                str(d["unwarp_ms"])]
        if not d["vcpus"]:
            rows.append(head + ["-", "-", "-", "-", "-"])
        for v in d["vcpus"]:
            rows.append(head + [str(v["vcpu"]), str(v["cpu"]), f"{v['avt_ns'] / 1e6:.1f}", f"{v['evt_ns'] / 1e6:.1f}",
                                f"{v['share'] * 100:.1f}"])
    _table(rows, ["Name", "ID", "Weight", "Warp(ms)", "WarpL(ms)", "Unwarp(ms)", "VCPU", "CPU", "AVT(ms)",
                  "EVT(ms)", "Share%"], right=set(range(1, 11)))
    return 0


def save(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"-c", "-p", "--force"})
    dom, path = args.want(2, 2, "save [-c|-p] [--force] DOMAIN FILE")
    if {"-c", "-p"} <= args.flags:
        raise UsageError("-c (continue) and -p (pause) exclude each other")
    then = "continue" if "-c" in args.flags else "pause" if "-p" in args.flags else "destroy"
    body: dict[str, Any] = {"path": os.path.abspath(path), "then": then}
    if "--force" in args.flags:
        body["force"] = True
    reply = client.post(f"{_dom(dom)}/save", body)
    done = {"destroy": "and destroyed", "continue": "and running on", "pause": "and paused"}[then]
    print(f"domain {dom} saved to {path} ({reply['bytes'] >> 20} MiB, {reply['seconds'] * 1000:.0f} ms) {done}")
    return 0


def restore(client: Client, argv: list[str]) -> int:
    args = Args(argv, {"-p", "--verify"}, {"--name", "--clone"})
    (path,) = args.want(1, 1, "restore [-p] [--verify] [--name NAME] [--clone N] FILE")
    body: dict[str, Any] = {"path": os.path.abspath(path), "paused": "-p" in args.flags}
    if "--verify" in args.flags:
        body["verify"] = True
    if "--name" in args.values:
        body["name"] = args.values["--name"]
    paused = " (paused)" if "-p" in args.flags else ""
    if "--clone" in args.values:
        count = args.values["--clone"]
        if not count.isdigit() or len(count) > 9:
            raise UsageError(f"--clone {count!r}: expected a number of domains")
        body["count"] = int(count)
        for domain in client.post("/clone", body)["domains"]:
            print(f"domain {domain['name']} cloned from {path}, id {domain['id']}{paused}")
        return 0
    reply = client.post("/restore", body)
    print(f"domain {reply['name']} restored from {path}, id {reply['id']}{paused}")
    return 0


#: the port `pyhv migrate` uses when none is given
MIGRATION_PORT = 8002


def migrate(client: Client, argv: list[str]) -> int:
    dom, target = Args(argv, set()).want(2, 2, "migrate DOMAIN HOST[:PORT]")
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, str(MIGRATION_PORT)
    if not host or not port.isdigit():
        raise UsageError(f"{target!r}: expected HOST or HOST:PORT")
    reply = client.post(f"{_dom(dom)}/migrate", {"host": host.strip("[]"), "port": int(port)})
    print(f"domain {dom} migrated to {target} in {reply['seconds']:.2f} s "
          f"(downtime {reply['downtime'] * 1000:.0f} ms, {reply['rounds']} pre-copy rounds)")
    return 0


def device_list(kind: str) -> Callable[[Client, list[str]], int]:
    def verb(client: Client, argv: list[str]) -> int:
        args = Args(argv, {"--json"})
        (dom,) = args.want(1, 1, f"{kind}-list DOMAIN")
        items = client.get(f"{_dom(dom)}/{'disks' if kind == 'block' else 'nics'}")
        if "--json" in args.flags:
            _print_json(items)
        elif kind == "block":
            _table([[str(i), d["path"], "ro" if d.get("readonly") else "rw", d.get("serial", "")]
                    for i, d in enumerate(items)], ["Idx", "Path", "Mode", "Serial"])
        else:
            _table([[str(i), n["tap"], n.get("mac", "") or "(default)", n.get("bridge", "")]
                    for i, n in enumerate(items)], ["Idx", "TAP", "MAC", "Bridge"])
        return 0

    return verb


def hotplug(kind: str, action: str) -> Callable[[Client, list[str]], int]:
    def verb(client: Client, argv: list[str]) -> int:
        args = Args(argv, set())
        dom = args.want(2, 10, f"{kind}-{action} DOMAIN ...")[0]
        path = f"{_dom(dom)}/{'disks' if kind == 'block' else 'nics'}"
        if action == "attach":
            client.post(path, {})
        else:
            client.delete(f"{path}/{args.positional[1]}")
        return 0

    return verb


VERBS: dict[str, tuple[str, Callable[[Client, list[str]], int]]] = {
    "create": ("create FILE [-p] [-c] [key=value ...]: start a domain from its TOML configuration", create),
    "list": ("list [-l] [--json] [DOMAIN ...]: domains and their state", list_),
    "console": ("console DOMAIN: attach to the serial console (Ctrl-] detaches)", console),
    "pause": ("pause DOMAIN: stop every vCPU where it is", _simple("pause", "paused")),
    "unpause": ("unpause DOMAIN: let a paused domain run on", _simple("unpause", "unpaused")),
    "shutdown": ("shutdown [-w] DOMAIN: power the domain off (-w: wait until it is gone)", shutdown),
    "reboot": ("reboot DOMAIN: reset the domain", _simple("reboot", "rebooting")),
    "destroy": ("destroy DOMAIN: stop the domain at once", destroy),
    "save": ("save [-c|-p] [--force] DOMAIN FILE: save the whole domain to FILE, then destroy it (-c: it runs "
             "on, -p: it stays paused; --force: FILE may be an earlier snapshot, replaced)", save),
    "restore": ("restore [-p] [--verify] [--name NAME] [--clone N] FILE: a domain from a saved FILE, running where "
                "it was saved (--verify: check all of its memory first; --clone N: N domains NAME-1..N, each with its "
                "own VM generation ID, MACs, TAPs and vsock)", restore),
    "migrate": ("migrate DOMAIN HOST[:PORT]: live-migrate to the pyhvd accepting migrations there "
                f"(port {MIGRATION_PORT})", migrate),
    "mem-set": ("mem-set DOMAIN SIZE: balloon the domain to SIZE", mem_set),
    "mem-max": ("mem-max DOMAIN SIZE: the most memory mem-set may give", mem_max),
    "vcpu-list": ("vcpu-list [--json] [DOMAIN ...]: vCPUs, where they run, their CPU time", vcpu_list),
    "vcpu-pin": ("vcpu-pin DOMAIN VCPU|all CPUS: confine vCPUs to host CPUs (e.g. 0-1,3)", vcpu_pin),
    "info": ("info [--json]: the host and pyhvd", info),
    "dmesg": ("dmesg DOMAIN [--bytes N]: the domain's console log", dmesg),
    "attach": ("attach DOMAIN|CONTROL-SOCKET: a Python prompt inside the domain (machine, runtime, description); Ctrl-D "
               "detaches", attach),
    "gdb": ("gdb DOMAIN [tcp:HOST:PORT] | gdb --stop DOMAIN: a GDB remote stub in the domain (a unix socket "
            "in its run directory unless tcp: is given)", gdb),
    "top": ("top [-b] [-d SECONDS] [-n N]: live view of every domain", top),
    "sched-bvt": ("sched-bvt [-d DOMAIN] [--weight N] [--warp MS] [--warp-limit MS] [--unwarp MS] "
                  "[--ctx-allow MS]: BVT scheduling parameters (none given: list them)", sched_bvt),
    "block-list": ("block-list DOMAIN: the domain's disks", device_list("block")),
    "block-attach": ("block-attach DOMAIN SPEC: hotplug a disk (not supported yet)", hotplug("block", "attach")),
    "block-detach": ("block-detach DOMAIN INDEX: unplug a disk (not supported yet)", hotplug("block", "detach")),
    "network-list": ("network-list DOMAIN: the domain's network adapters", device_list("network")),
    "network-attach": ("network-attach DOMAIN SPEC: hotplug an adapter (not supported yet)", hotplug("network", "attach")),
    "network-detach": ("network-detach DOMAIN INDEX: unplug an adapter (not supported yet)", hotplug("network", "detach")),
}


def run(verb: str, argv: list[str]) -> int:
    from .daemon import default_socket

    socket_path = default_socket()
    rest = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--socket" or arg.startswith("--socket="):
            socket_path = arg.partition("=")[2] or (args.pop(0) if args else "")
            if not socket_path:
                raise UsageError("--socket needs a path")
        else:
            rest.append(arg)
    return VERBS[verb][1](Client(socket_path), rest)
