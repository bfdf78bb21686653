#!/usr/bin/env python3
"""How many domains, how fast, how small: pyhv under pyhvd against QEMU.

    python bench/density.py [--domains 20] [--memory 128] [--vmm pyhv,qemu]

pyhv: a private pyhvd (its own run and state directories under a temporary
directory) gets ``--domains`` create requests at once; QEMU: the same number
of ``qemu-system-x86_64 -M microvm`` processes are started directly, at once.
Every guest is the probe's ``hello`` workload, which prints its lines,
``probe: result=pass``, and halts (an idle domain from then on).

Printed per VMM: the time from the first start to the last guest's
``result=pass`` and the resulting domains per second; then, with all of them
idle, the resident (RSS) and proportional (PSS, shared pages split between the
processes that share them) memory of one domain's process, as the mean over
the domains.  pyhvd's own memory is shown on its own line: it is shared by all
domains.  Ratios are pyhv/QEMU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "guests" / "build" / "probe.elf"
sys.path.insert(0, str(REPO))

from pyhv.toolstack.client import Client  # noqa: E402

QEMU_MACHINE = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off,pcie=off"
READY = "probe: result=pass"


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return values["Rss"], values["Pss"]


def wait_logs(paths: list[Path], deadline: float, text: str = READY, poll: float = 0.005) -> float:
    """Poll until every log holds ``text``; the time the last one did."""
    pending = set(paths)
    while pending:
        for p in list(pending):
            try:
                if text in p.read_text(errors="replace"):
                    pending.discard(p)
            except FileNotFoundError:
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} guests never printed {text!r} (e.g. {sorted(pending)[0]})")
        if pending:
            time.sleep(poll)
    return time.monotonic()


def run_pyhv(n: int, memory: int, tmp: Path) -> dict[str, float]:
    run_dir, state_dir = tmp / "run", tmp / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYHV_RUN_DIR=str(run_dir), PYHV_STATE_DIR=str(state_dir))
    log = open(tmp / "pyhvd.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-c", "import sys; from pyhv.toolstack.daemon import main; "
                               "sys.exit(main())"], env=env, stdout=log, stderr=log)
    client = Client(str(run_dir / "pyhvd.sock"), timeout=120)
    try:
        for _ in range(400):
            try:
                client.get("/version")
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        errors: list[str] = []

        def create(i: int) -> None:
            config = {"name": f"d{i}", "kernel": str(PROBE), "cmdline": "probe.test=hello", "memory": memory}
            try:
                client.post("/domains", {"config": config})
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))

        threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        logs = [state_dir / "domains" / f"d{i}" / "console.log" for i in range(n)]
        t1 = wait_logs(logs, t0 + 300)
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} creates failed, e.g. {errors[0]}")
        time.sleep(1.0)  # idle
        pids = [d["pid"] for d in client.get("/domains")]
        mems = [memory_kib(p) for p in pids]
        daemon_mem = memory_kib(daemon.pid)
        for d in client.get("/domains"):
            client.delete(f"/domains/{d['id']}")
        return {"seconds": t1 - t0, "rss": sum(m[0] for m in mems) / n, "pss": sum(m[1] for m in mems) / n,
                "daemon_rss": daemon_mem[0], "daemon_pss": daemon_mem[1]}
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        log.close()
        for pid_file in run_dir.glob("domains/*/pid"):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def run_qemu(n: int, memory: int, tmp: Path) -> dict[str, float]:
    procs = []
    logs = [tmp / f"qemu{i}.log" for i in range(n)]
    t0 = time.monotonic()
    try:
        for log in logs:
            procs.append(subprocess.Popen(
                ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE, "-m", f"{memory}M", "-nodefaults",
                 "-no-user-config", "-display", "none", "-serial", f"file:{log}", "-kernel", str(PROBE),
                 "-append", "probe.test=hello"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        t1 = wait_logs(logs, t0 + 300)
        time.sleep(1.0)
        mems = [memory_kib(p.pid) for p in procs]
        return {"seconds": t1 - t0, "rss": sum(m[0] for m in mems) / n, "pss": sum(m[1] for m in mems) / n}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--memory", type=int, default=128, help="guest MiB (default 128)")
    parser.add_argument("--vmm", default="pyhv,qemu")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args()
    vmms = args.vmm.split(",")
    if not PROBE.exists():
        subprocess.run(["make", "-C", str(REPO / "guests")], check=True)
    if "qemu" in vmms and shutil.which("qemu-system-x86_64") is None:
        print("density: qemu-system-x86_64 not found; run scripts/setup", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "pyhv")], check=True)
    results = {}
    for vmm in vmms:
        with tempfile.TemporaryDirectory(prefix=f"density-{vmm}-") as tmp:
            try:
                results[vmm] = (run_pyhv if vmm == "pyhv" else run_qemu)(args.domains, args.memory, Path(tmp))
            except RuntimeError as e:
                print(f"density: {vmm}: {e}", file=sys.stderr)
                return 1
    n = args.domains
    print(f"{n} domains of {args.memory} MiB, probe.test=hello, started at once")
    print(f"{'':30s} {'pyhv':>10s} {'qemu':>10s} {'pyhv/qemu':>10s}")

    def row(label: str, key: str, scale: float = 1.0, fmt: str = "{:10.1f}") -> None:
        p = results.get("pyhv", {}).get(key)
        q = results.get("qemu", {}).get(key)
        cells = [fmt.format(v * scale) if v is not None else f"{'-':>10s}" for v in (p, q)]
        ratio = f"{p / q:10.2f}" if p is not None and q else f"{'-':>10s}"
        print(f"{label:30s} {cells[0]} {cells[1]} {ratio}")

    row("all ready, s", "seconds", fmt="{:10.2f}")
    for r in results.values():
        r["per_second"] = n / r["seconds"]
    row("domains ready per second", "per_second")
    row("RSS per idle domain, MiB", "rss", 1 / 1024)
    row("PSS per idle domain, MiB", "pss", 1 / 1024)
    if "pyhv" in results:
        print(f"pyhvd itself (shared by all): RSS {results['pyhv']['daemon_rss'] / 1024:.1f} MiB, "
              f"PSS {results['pyhv']['daemon_pss'] / 1024:.1f} MiB")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
