#!/usr/bin/env python3
"""Linux boot time: pyhv against QEMU (-M microvm and -M pc), inside the nested host.

Run from the repository root:

    python bench/linux_boot.py [--repeats 3] [--json [FILE]]

This host's KVM cannot run a Linux kernel, so the comparison runs inside the
nested host of tests/nested (an L1 Linux under QEMU's TCG with emulated AMD
SVM), built here with Debian's qemu-system-x86 added.  In L1, each VMM boots
the default guest (``pyhv image build``: Debian's cloud kernel and the
busybox initramfs) with the same command line (``console=ttyS0 quiet``),
256 MiB and 2 vCPUs, no other devices; QEMU with ``-enable-kvm -cpu host``
(pyhv too gives the guest KVM's supported CPUID).  The time measured is from
spawning the VMM to the guest's init printing its first line on the serial
console.  Rounds interleave the VMMs, rotating their order; the median per
VMM is reported with its ratio to pyhv's.

Everything runs at TCG speed, so absolute times are large and noisy; only the
ratios within one run mean anything.  Python >= 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.nested import l1  # noqa: E402 - the nested host's builder lives with its test

VMMS = ("pyhv", "qemu-microvm", "qemu-pc")


def measure(repeats: int, timeout: float) -> tuple[dict[str, list[float]], dict[str, int], str]:
    kernel, initrd = l1.build(with_qemu=True)
    p = subprocess.run(l1.qemu_command(kernel, initrd, f"bench{repeats}"), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout, check=False)
    log = p.stdout + p.stderr
    times: dict[str, list[float]] = {v: [] for v in VMMS}
    failures = dict.fromkeys(VMMS, 0)
    for vmm, value in re.findall(r"^bench: vmm=(\S+) round=\d+ init_s=(\S+)$", log, re.M):
        if value == "failed":
            failures[vmm] += 1
        else:
            times[vmm].append(float(value))
    return times, failures, log


def report(times: dict[str, list[float]], failures: dict[str, int], repeats: int) -> dict[str, object]:
    medians = {v: statistics.median(t) if t else None for v, t in times.items()}
    base = medians["pyhv"]
    print(f"start to guest init, Debian cloud kernel + busybox initramfs, {repeats} rounds, inside the nested host")
    print()
    head = f"{'vmm':14} {'median s':>9} {'min s':>7} {'max s':>7} {'/ pyhv':>7} {'failed':>6}"
    print(head)
    print("-" * len(head))
    for v in VMMS:
        t, m = times[v], medians[v]
        ratio = f"{m / base:7.2f}" if m and base else f"{'-':>7}"
        cells = f"{m:9.3f} {min(t):7.3f} {max(t):7.3f}" if t else f"{'-':>9} {'-':>7} {'-':>7}"
        print(f"{v:14} {cells} {ratio} {failures[v]:6d}")
    return {"repeats": repeats, "times_s": times, "median_s": medians, "failed": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the whole nested run")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="also write the numbers as JSON")
    ap.add_argument("--log", metavar="FILE", help="keep the nested host's whole serial output")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    times, failures, log = measure(args.repeats, args.timeout)
    if args.log:
        Path(args.log).write_text(log)
    if not any(times.values()):
        print("bench: no measurement came back from the nested host; its output ends with:", file=sys.stderr)
        print("\n".join(log.splitlines()[-20:]), file=sys.stderr)
        return 1
    result = report(times, failures, args.repeats)
    if args.json == "-":
        print()
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not any(failures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
