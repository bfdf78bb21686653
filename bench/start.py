#!/usr/bin/env python3
"""Start, restore and clone: pyhv against QEMU, same probe, same run.

    python bench/start.py [--repeats 5] [--clones 100] [--memory 256] [--fill 16] [--vmm pyhv,qemu]

Every figure is wall time from spawning (or asking pyhvd) to a line the guest
printed, read from its console file; medians of ``--repeats``:

* **create to first output**: the probe's ``hello`` workload until it prints
  ``probe: boot``.  pyhv cold: ``python -S -m pyhv run``; pyhv under pyhvd:
  ``POST /domains`` until the domain's console log has it; QEMU:
  ``qemu-system-x86_64 -M microvm -kernel``.
* **restore to running**: a ``--memory`` MiB guest running the probe's
  ``ticker`` (one line a millisecond) after writing ``--fill`` MiB of its RAM, saved
  once; then spawn to the first ``probe: tick`` line the restored guest
  prints.  pyhv cold: ``pyhv run --restore FILE``; under pyhvd: ``POST
  /restore``; QEMU: ``-incoming "exec:cat FILE"`` of a file saved with
  ``migrate "exec:cat > FILE"`` from the running guest, so it starts running
  once loaded.
* **clones**: ``--clones`` domains from one snapshot of the same guest ticking
  once a second.  pyhv: ``POST
  /clone`` to pyhvd (each clone a process mapping the file MAP_PRIVATE);
  QEMU: as many ``-incoming`` processes started at once (each reads the whole
  file into its own memory).  Clones per second: the count over the time until
  every clone printed a tick; then, a second later, each process's PSS and
  RSS from ``/proc/PID/smaps_rollup`` (PSS splits shared pages between the
  processes sharing them), as the mean.  The ticker waits for its next tick
  by spinning in ring 3, so every running clone keeps a vCPU busy and the later
  clones start on a saturated host, under both VMMs.

Ratios are pyhv / QEMU (below 1: pyhv faster or smaller).  Firecracker's
published targets are printed as reference lines: they were measured on other
hardware (an i3.metal host with VT-x), not here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from density import memory_kib, wait_logs
from exits import PROBE_ELF, REPO
from snapshot import Hmp, qemu, stop

sys.path.insert(0, str(REPO))

from pyhv.toolstack.client import Client  # noqa: E402

MiB = 1 << 20
PYHV = [sys.executable, "-S", "-m", "pyhv", "run"]
TICKER = "probe.test=ticker probe.n=1"
#: the clones' guest ticks once a second: a hundred guests printing a line a millisecond
#: would spend the host's CPUs on serial-port exits while the later ones start
SLOW_TICKER = "probe.test=ticker probe.n=1000"
#: Firecracker's SPECIFICATION.md (i3.metal, VT-x), and the restore figure its snapshot benchmarks aim for
FIRECRACKER = [
    "VMM start to API socket: <= 8 CPU ms (wall typically 12 ms, 6-60 ms)",
    "InstanceStart to the guest's /sbin/init (2 vCPUs, 256 MiB): <= 125 ms",
    "VMM memory overhead (2 vCPUs, 256 MiB): <= 5 MiB",
    "snapshot restore (load to resumed): <= 8 ms",
]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def wait_text(paths: list[Path], text: str, deadline: float) -> float:
    """Poll (every millisecond) until every file holds ``text``; the time the last one did."""
    return wait_logs(paths, deadline, text, 0.001)


def timed_process(argv: list[str], log: Path, text: str, timeout: float = 60.0) -> float:
    """Spawn ``argv`` (its guest's console going to ``log``) until the guest printed ``text``."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env(), cwd=REPO)
    try:
        return wait_text([log], text, t0 + timeout) - t0
    finally:
        stop(p)


class Pyhvd:
    """A private pyhvd under ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.snapshots = self.state / "snapshots"
        self.env = dict(env(), PYHV_RUN_DIR=str(tmp / "run"), PYHV_STATE_DIR=str(self.state))
        self.log = open(tmp / "pyhvd.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pyhv.toolstack.daemon import main; sys.exit(main())"],
            env=self.env, stdout=self.log, stderr=self.log)
        self.client = Client(str(tmp / "run" / "pyhvd.sock"), timeout=600)
        for _ in range(400):
            try:
                self.client.get("/version")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError("pyhvd did not start")

    def console(self, name: str) -> Path:
        return self.state / "domains" / name / "console.log"

    def destroy_all(self) -> None:
        for d in self.client.get("/domains"):
            self.client.delete(f"/domains/{d['id']}")

    def close(self) -> None:
        try:
            self.destroy_all()
        finally:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.log.close()


def median(fn: Callable[[int], float], repeats: int) -> float:
    return statistics.median(fn(i) for i in range(repeats))


# --- create to first output -----------------------------------------------------------------


def start_pyhv(work: Path, repeats: int, memory: int) -> float:
    def once(i: int) -> float:
        log = work / f"start-pyhv{i}.log"
        return timed_process([*PYHV, "--kernel", str(PROBE_ELF), "--cmdline", "probe.test=hello",
                              "--memory", f"{memory}M", "--serial", f"file:{log}"], log, "probe: boot")
    return median(once, repeats)


def start_pyhvd(d: Pyhvd, repeats: int, memory: int) -> float:
    def once(i: int) -> float:
        name = f"start{i}"
        t0 = time.monotonic()
        d.client.post("/domains", {"config": {"name": name, "kernel": str(PROBE_ELF), "cmdline": "probe.test=hello",
                                              "memory": memory}})
        t = wait_text([d.console(name)], "probe: boot", t0 + 60) - t0
        d.destroy_all()
        return t
    return median(once, repeats)


def start_qemu(work: Path, repeats: int, memory: int) -> float:
    def once(i: int) -> float:
        log = work / f"start-qemu{i}.log"
        t0 = time.monotonic()
        p = qemu(memory * MiB, "probe.test=hello", str(work / f"start-qemu{i}.mon"), log)
        try:
            return wait_text([log], "probe: boot", t0 + 60) - t0
        finally:
            stop(p)
    return median(once, repeats)


# --- snapshots and restore -----------------------------------------------------------------------


def pyhv_snapshot(d: Pyhvd, memory: int, fill: int, ticker: str, name: str) -> Path:
    """Boot the ticker under pyhvd, let it fill its memory and tick, save it (destroying it)."""
    d.client.post("/domains", {"config": {"name": name, "kernel": str(PROBE_ELF), "memory": memory,
                                          "cmdline": f"{ticker} probe.mb={fill}"}})
    wait_text([d.console(name)], "probe: tick n=2 ", time.monotonic() + 120)
    snap = d.snapshots / f"{name}.snap"
    d.client.post(f"/domains/{name}/save", {"path": str(snap)})
    return snap


def restore_pyhv(snap: Path, work: Path, repeats: int) -> float:
    def once(i: int) -> float:
        log = work / f"restore-pyhv{i}.log"
        return timed_process([*PYHV, "--restore", str(snap), "--serial", f"file:{log}"], log, "probe: tick")
    return median(once, repeats)


def restore_pyhvd(d: Pyhvd, snap: Path, repeats: int) -> float:
    def once(i: int) -> float:
        name = f"restored{i}"
        t0 = time.monotonic()
        d.client.post("/restore", {"path": str(snap), "name": name})
        t = wait_text([d.console(name)], "probe: tick", t0 + 60) - t0
        d.destroy_all()
        return t
    return median(once, repeats)


def qemu_snapshot(work: Path, memory: int, fill: int, ticker: str, name: str) -> Path:
    """The same guest under QEMU, saved while running (so a restore starts running once loaded)."""
    snap, log, mon = work / f"qemu-{name}.snap", work / f"qemu-{name}.log", str(work / f"qemu-{name}.mon")
    p = qemu(memory * MiB, f"{ticker} probe.mb={fill}", mon, log)
    try:
        wait_text([log], "probe: tick n=2 ", time.monotonic() + 120)
        hmp = Hmp(mon)
        hmp.cmd("migrate_set_parameter max-bandwidth 100G")
        hmp.cmd(f'migrate "exec:cat > {snap}"')
        hmp.wait("info migrate", r"Migration status: completed")
        hmp.close()
    finally:
        stop(p)
    return snap


def restore_qemu(snap: Path, work: Path, repeats: int, memory: int) -> float:
    def once(i: int) -> float:
        log = work / f"restore-qemu{i}.log"
        t0 = time.monotonic()
        p = qemu(memory * MiB, TICKER, str(work / f"restore-qemu{i}.mon"), log, incoming=f"exec:cat {snap}")
        try:
            return wait_text([log], "probe: tick", t0 + 60) - t0
        finally:
            stop(p)
    return median(once, repeats)


# --- clones ----------------------------------------------------------------------------------------


def clones_pyhv(d: Pyhvd, snap: Path, n: int) -> dict[str, float]:
    t0 = time.monotonic()
    reply = d.client.post("/clone", {"path": str(snap), "count": n, "name": "clone"})
    started = time.monotonic() - t0
    names = [x["name"] for x in reply["domains"]]
    ticking = wait_text([d.console(name) for name in names], "probe: tick", t0 + 600) - t0
    time.sleep(1.0)
    mems = [memory_kib(x["pid"]) for x in reply["domains"]]
    d.destroy_all()
    return {"started": started, "ticking": ticking, "rss": sum(m[0] for m in mems) / n,
            "pss": sum(m[1] for m in mems) / n}


def clones_qemu(snap: Path, work: Path, n: int, memory: int) -> dict[str, float]:
    procs: list[subprocess.Popen[bytes]] = []
    logs = [work / f"clone-qemu{i}.log" for i in range(n)]
    t0 = time.monotonic()
    try:
        for i, log in enumerate(logs):
            procs.append(qemu(memory * MiB, TICKER, str(work / f"clone-qemu{i}.mon"), log,
                              incoming=f"exec:cat {snap}"))
        started = time.monotonic() - t0
        ticking = wait_text(logs, "probe: tick", t0 + 600) - t0
        time.sleep(1.0)
        mems = [memory_kib(p.pid) for p in procs]
        return {"started": started, "ticking": ticking, "rss": sum(m[0] for m in mems) / n,
                "pss": sum(m[1] for m in mems) / n}
    finally:
        for p in procs:
            stop(p)


# --- the run -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clones", type=int, default=100, help="clones of one snapshot (default 100)")
    ap.add_argument("--memory", type=int, default=256, help="guest MiB (default 256)")
    ap.add_argument("--fill", type=int, default=16, help="MiB the saved guest wrote (default 16)")
    ap.add_argument("--vmm", default="pyhv,qemu")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = ap.parse_args()
    vmms = args.vmm.split(",")
    if args.fill + 32 > args.memory:
        ap.error("--fill must leave 32 MiB of --memory for the probe")
    subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "pyhv")], check=True)
    results: dict[str, dict[str, float]] = {"pyhv": {}, "pyhvd": {}, "qemu": {}}
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        work = Path(tmp)
        if "pyhv" in vmms:
            d = Pyhvd(work)
            try:
                results["pyhv"]["start"] = start_pyhv(work, args.repeats, args.memory)
                results["pyhvd"]["start"] = start_pyhvd(d, args.repeats, args.memory)
                snap = pyhv_snapshot(d, args.memory, args.fill, TICKER, "base")
                results["pyhv"]["restore"] = restore_pyhv(snap, work, args.repeats)
                results["pyhvd"]["restore"] = restore_pyhvd(d, snap, args.repeats)
                clones = clones_pyhv(d, pyhv_snapshot(d, args.memory, args.fill, SLOW_TICKER, "slow"), args.clones)
                results["pyhvd"].update({f"clones_{k}": v for k, v in clones.items()})
            finally:
                d.close()
        if "qemu" in vmms:
            results["qemu"]["start"] = start_qemu(work, args.repeats, args.memory)
            snap = qemu_snapshot(work, args.memory, args.fill, TICKER, "base")
            results["qemu"]["restore"] = restore_qemu(snap, work, args.repeats, args.memory)
            slow = qemu_snapshot(work, args.memory, args.fill, SLOW_TICKER, "slow")
            clones = clones_qemu(slow, work, args.clones, args.memory)
            results["qemu"].update({f"clones_{k}": v for k, v in clones.items()})
    for r in results.values():
        if "clones_ticking" in r:
            r["clones_per_second"] = args.clones / r["clones_ticking"]
    report(results, args)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, dict[str, float]], args: Any) -> None:
    print(f"probe guest, {args.memory} MiB, 1 vCPU; medians of {args.repeats}; {args.clones} clones of one snapshot "
          f"of a guest that wrote {args.fill} MiB")
    print(f"{'':34s} {'pyhv':>10s} {'pyhvd':>10s} {'qemu':>10s} {'pyhv/qemu':>10s} {'pyhvd/qemu':>10s}")

    def row(label: str, key: str, scale: float = 1.0) -> None:
        values = [results[v].get(key) for v in ("pyhv", "pyhvd", "qemu")]
        cells = [f"{v * scale:10.1f}" if v is not None else f"{'-':>10s}" for v in values]
        q = values[2]
        ratios = [f"{v / q:10.2f}" if v is not None and q else f"{'-':>10s}" for v in values[:2]]
        print(f"{label:34s} {' '.join(cells)} {' '.join(ratios)}")

    row("create to first output, ms", "start", 1000)
    row("restore to running (a tick), ms", "restore", 1000)
    row("clones: request to all started, s", "clones_started")
    row("clones: all ticking, s", "clones_ticking")
    row("clones per second", "clones_per_second")
    row("PSS per clone, MiB", "clones_pss", 1 / 1024)
    row("RSS per clone, MiB", "clones_rss", 1 / 1024)
    print("Firecracker's published figures (other hardware, for reference):")
    for line in FIRECRACKER:
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
