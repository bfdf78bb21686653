"""Boot-to-all-CPUs-online: pyhv against QEMU on the probe's ``smp`` workload.

    python bench/smp.py [--repeats 5] [--cpus 1,2,4,8]

For each vCPU count both VMMs boot the same probe binary with
``probe.test=smp``; the probe brings every AP in the MADT up with INIT-SIPI-SIPI
and prints ``probe: smp cpus_online=N expected=N`` once all are running.  The
figure is the wall time from spawning the VMM to that line on its stdout
(median of the repeats, VMMs interleaved in each repeat), and the table shows
pyhv/QEMU.  A run whose probe did not report every CPU, or did not pass, is a
failed cell, not a number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from exits import EXPECTED_RC, MEMORY_MIB, PROBE_ELF, REPO

# microvm with its ACPI tables (the probe finds the CPUs through the MADT).
QEMU_MACHINE = "microvm,x-option-roms=off,rtc=off,isa-serial=on,pcie=off"


def command(vmm: str, kernel: Path, cpus: int) -> tuple[list[str], dict[str, str] | None]:
    cmdline = "probe.test=smp"
    if vmm == "pyhv":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel), "--cmdline", cmdline,
                "--debug-exit", "--memory", f"{MEMORY_MIB}M", "--vcpus", str(cpus)], env
    return ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE, "-smp", str(cpus),
            "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", str(kernel), "-append", cmdline,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"], None


def time_to_online(vmm: str, kernel: Path, cpus: int, timeout: float) -> tuple[float | None, str]:
    """Seconds from spawn to the cpus_online line, or None and why."""
    cmd, env = command(vmm, kernel, cpus)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd=REPO)
    online_at: float | None = None
    online_line = b""
    assert p.stdout is not None
    for line in p.stdout:
        if b"cpus_online=" in line and online_at is None:
            online_at = time.perf_counter() - t0
            online_line = line
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return None, "timed out"
    if online_at is None:
        return None, f"no cpus_online line (exit {rc})"
    want = f"cpus_online={cpus} expected={cpus}".encode()
    if want not in online_line:
        return None, online_line.decode(errors="replace").strip()
    if rc != EXPECTED_RC[vmm]:
        return None, f"exit status {rc}"
    return online_at, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpus", default="1,2,4,8")
    ap.add_argument("--kernel", type=Path, default=PROBE_ELF)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    counts = [int(c) for c in args.cpus.split(",")]
    if not args.kernel.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    vmms = ("pyhv", "qemu")
    samples: dict[tuple[str, int], list[float]] = {(v, n): [] for v in vmms for n in counts}
    failures: dict[tuple[str, int], str] = {}
    for rep in range(args.repeats):
        for n in counts:
            order = vmms if rep % 2 == 0 else vmms[::-1]
            for vmm in order:
                if (vmm, n) in failures:
                    continue
                t, why = time_to_online(vmm, args.kernel, n, args.timeout)
                if t is None:
                    failures[(vmm, n)] = why
                else:
                    samples[(vmm, n)].append(t * 1e3)
    print(f"kernel: {args.kernel}\nboot to all CPUs online, ms (median of {args.repeats}); probe.test=smp\n")
    print(f"{'vCPUs':>6} {'pyhv':>10} {'qemu':>10} {'pyhv/qemu':>10}")
    for n in counts:
        cells = []
        for vmm in vmms:
            s = samples[(vmm, n)]
            cells.append(statistics.median(s) if s and (vmm, n) not in failures else None)
        ratio = f"{cells[0] / cells[1]:.2f}x" if None not in cells else "-"
        shown = [f"{c:10.1f}" if c is not None else f"{'failed':>10}" for c in cells]
        print(f"{n:>6} {shown[0]} {shown[1]} {ratio:>10}")
    for (vmm, n), why in failures.items():
        print(f"  {vmm} with {n} vCPUs failed: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
