"""virtio-blk throughput: pyhv against QEMU and the host reading the file itself.

    python bench/blk.py [--repeats 3] [--mb 64] [--n 4096]

The probe's ``blkbench`` workload (polling driver, ring 3) measures in the
guest, with the TSC: sequential 1 MiB writes and reads over ``--mb`` MiB, and
``--n`` random 4 KiB writes and reads with 32 requests in flight.  pyhv and QEMU
(``-device virtio-blk-pci``) each get a fresh copy of the same image.  The
"host" column is this process doing the same I/O on a copy of the image with
pwrite/pread (the page cache, as both VMMs use): the limit a VMM can approach.
Medians of the repeats; the targets are sequential >= 90% of host and 4 KiB
IOPS >= QEMU's.

    python bench/blk.py --iops 200 --mb 1 --n 600

limits both VMMs' disks to 200 requests a second (pyhv: ``--disk IMG,ops=200/1000``,
a token bucket; QEMU: ``throttling.iops-total=200``) and prints each one's measured
random IOPS as a fraction of the limit (at most about 1.0, plus what the bucket
held when the phase began).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exits import PROBE_ELF, REPO

IMAGE_MB = 256
METRICS = ("seq_write_mbps", "seq_read_mbps", "rand_write_iops", "rand_read_iops")
QEMU_MACHINE = "microvm,x-option-roms=off,rtc=off,isa-serial=on,pcie=on,acpi=on"


def probe_cmdline(mb: int, n: int) -> str:
    return f"probe.test=blkbench probe.mb={mb} probe.n={n} probe.qd=32"


def command(vmm: str, kernel: Path, image: str, cmdline: str, iops: int = 0) -> tuple[list[str], dict[str, str] | None]:
    if vmm == "pyhv":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        disk = f"{image},ops={iops}/1000" if iops else image
        return [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel), "--cmdline", cmdline,
                "--debug-exit", "--memory", "512M", "--disk", disk], env
    throttle = f",throttling.iops-total={iops}" if iops else ""
    return ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE, "-m", "512M", "-nodefaults",
            "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", cmdline, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={image},if=none,id=d0,format=raw,cache=writeback{throttle}",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"], None


def guest_run(vmm: str, kernel: Path, image: str, cmdline: str, timeout: float, iops: int = 0) -> dict[str, float] | str:
    cmd, env = command(vmm, kernel, image, cmdline, iops)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    for line in p.stdout.splitlines():
        if line.startswith("probe: blkbench ") and "seq_write_mbps=" in line:
            fields = dict(tok.partition("=")[::2] for tok in shlex.split(line[len("probe: "):]) if "=" in tok)
            try:
                return {m: float(fields[m]) for m in METRICS}
            except (KeyError, ValueError):
                return f"unreadable line: {line}"
    tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no output"])[-1]
    return f"no blkbench line (exit {p.returncode}): {tail}"


def host_run(image: str, mb: int, n: int) -> dict[str, float]:
    """The same I/O pattern from this process, straight on the file."""
    fd = os.open(image, os.O_RDWR)
    try:
        chunk = os.urandom(1 << 20)
        t = time.perf_counter()
        for i in range(mb):
            os.pwrite(fd, chunk, i << 20)
        seq_w = mb / (time.perf_counter() - t)  # into the page cache, like the guests' writes
        t = time.perf_counter()
        for i in range(mb):
            os.pread(fd, 1 << 20, i << 20)
        seq_r = mb / (time.perf_counter() - t)
        rnd = random.Random(1)
        offsets = [rnd.randrange(IMAGE_MB * 256) * 4096 for _ in range(n)]
        block = os.urandom(4096)
        t = time.perf_counter()
        for off in offsets:
            os.pwrite(fd, block, off)
        rand_w = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        rand_r = n / (time.perf_counter() - t)
    finally:
        os.close(fd)
    return {"seq_write_mbps": seq_w, "seq_read_mbps": seq_r, "rand_write_iops": rand_w, "rand_read_iops": rand_r}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--kernel", type=Path, default=PROBE_ELF)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--iops", type=int, default=0, help="limit both VMMs' disks to this many requests a second")
    args = ap.parse_args()
    if not args.kernel.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    workdir = tempfile.mkdtemp(prefix="pyhv-blkbench-")
    master = os.path.join(workdir, "master.img")
    with open(master, "wb") as f:
        f.truncate(IMAGE_MB << 20)
    cols = ("host", "pyhv", "qemu")
    samples: dict[str, dict[str, list[float]]] = {c: {m: [] for m in METRICS} for c in cols}
    failures: dict[str, str] = {}
    cmdline = probe_cmdline(args.mb, args.n)
    try:
        for rep in range(args.repeats):
            for col in (cols if rep % 2 == 0 else cols[::-1]):
                image = os.path.join(workdir, f"{col}.img")
                shutil.copyfile(master, image)
                result = host_run(image, args.mb, args.n) if col == "host" else (
                    guest_run(col, args.kernel, image, cmdline, args.timeout, args.iops) if col not in failures else None
                )
                if isinstance(result, str):
                    failures[col] = result
                elif result is not None:
                    for m in METRICS:
                        samples[col][m].append(result[m])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(col: str, m: str) -> float | None:
        return statistics.median(samples[col][m]) if samples[col][m] and col not in failures else None

    print(f"kernel: {args.kernel}\n{cmdline}; image {IMAGE_MB} MiB; medians of {args.repeats}\n")
    print(f"{'':18} {'host':>10} {'pyhv':>10} {'qemu':>10} {'pyhv/host':>10} {'pyhv/qemu':>10}")
    for m in METRICS:
        h, p, q = med("host", m), med("pyhv", m), med("qemu", m)
        cells = [f"{v:10.0f}" if v is not None else f"{'-':>10}" for v in (h, p, q)]
        ph = f"{p / h:9.2f}x" if p and h else f"{'-':>10}"
        pq = f"{p / q:9.2f}x" if p and q else f"{'-':>10}"
        print(f"{m:18} {' '.join(cells)} {ph} {pq}")
    for col, why in failures.items():
        print(f"  {col} failed: {why}")
    seq = [med("pyhv", m) and med("host", m) and med("pyhv", m) / med("host", m) for m in METRICS[:2]]  # type: ignore[operator]
    iops = [med("pyhv", m) and med("qemu", m) and med("pyhv", m) / med("qemu", m) for m in METRICS[2:]]  # type: ignore[operator]
    if args.iops:
        print(f"\nlimited to {args.iops} requests/s (measured random IOPS / limit):")
        for m in METRICS[2:]:
            cells = [f"{col} {v / args.iops:.2f}" for col in ("pyhv", "qemu") if (v := med(col, m)) is not None]
            print(f"  {m:18} {'   '.join(cells)}")
        return 1 if failures else 0
    print("\ntargets:")
    print(f"  sequential >= 0.90x host: {'MET' if all(s and s >= 0.9 for s in seq) else 'NOT MET'}  {seq}")
    print(f"  4 KiB IOPS >= qemu:       {'MET' if all(i and i >= 1.0 for i in iops) else 'NOT MET'}  {iops}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
