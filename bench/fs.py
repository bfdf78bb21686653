"""virtio-fs: pyhv against QEMU, both with Debian's virtiofsd on the same directory.

    python bench/fs.py [--repeats 3] [--mb 64] [--n 1000] [--irq msix|poll]

The probe's ``fsbench`` workload measures in the guest, with the TSC, one
request at a time: a sequential read of a ``--mb`` MiB file in 64 KiB READs,
then ``--n`` small-file cycles (LOOKUP, OPEN, a 4 KiB READ, RELEASE) on it.
Each run gets a fresh virtiofsd (``-o sandbox=namespace,cache=auto``) on the
same directory: pyhv starts its own (``--fs tag=...,path=DIR``); QEMU gets one
this script starts, through ``-chardev socket`` and ``-device
vhost-user-fs-pci`` with its RAM in ``memory-backend-memfd,share=on``.  The
data path is virtiofsd's either way; what differs is the VMM's part: the
kick (an ioeventfd in both) and the completion interrupt (an irqfd in both),
and everything around them.  Medians of the repeats, runs alternating in
order; ratios pyhv/QEMU (higher is better for pyhv).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blk import QEMU_MACHINE
from exits import PROBE_ELF, REPO

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
METRICS = ("seq_read_mbps", "small_files_per_s", "requests_per_s")
TAG = "bench"
FILE = "big.bin"


def probe_cmdline(mb: int, n: int, irq: str) -> str:
    return f"probe.test=fsbench probe.path={FILE} probe.mb={mb} probe.n={n} probe.irq={irq}"


def start_virtiofsd(directory: str, sock: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={directory}", "-o", "sandbox=namespace",
                             "-o", "cache=auto", "-o", "log_level=err"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("virtiofsd did not start")
        time.sleep(0.01)
    return proc


def guest_run(vmm: str, kernel: Path, directory: str, workdir: str, cmdline: str, timeout: float) -> dict[str, float] | str:
    daemon = None
    if vmm == "pyhv":
        cmd = [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel), "--cmdline", cmdline,
               "--debug-exit", "--memory", "512M", "--fs", f"tag={TAG},path={directory}"]
        env: dict[str, str] | None = dict(os.environ, PYTHONPATH=str(REPO))
    else:
        sock = os.path.join(workdir, "qemu-vfs.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        daemon = start_virtiofsd(directory, sock)
        cmd = ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE + ",memory-backend=mem", "-m", "512M",
               "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-nodefaults", "-no-user-config",
               "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel), "-append", cmdline,
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
               "-chardev", f"socket,id=vfs,path={sock}", "-device", f"vhost-user-fs-pci,chardev=vfs,tag={TAG}"]
        env = None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
    for line in p.stdout.splitlines():
        if line.startswith("probe: fsbench "):
            fields = dict(tok.partition("=")[::2] for tok in shlex.split(line[len("probe: "):]) if "=" in tok)
            try:
                return {m: float(fields[m]) for m in METRICS}
            except (KeyError, ValueError):
                return f"unreadable line: {line}"
    tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no output"])[-1]
    return f"no fsbench line (exit {p.returncode}): {tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--irq", choices=("msix", "poll"), default="msix")
    ap.add_argument("--kernel", type=Path, default=PROBE_ELF)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if not args.kernel.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    workdir = tempfile.mkdtemp(prefix="pyhv-fsbench-")
    directory = os.path.join(workdir, "shared")
    os.mkdir(directory)
    with open(os.path.join(directory, FILE), "wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(1 << 20))
    cols = ("pyhv", "qemu")
    samples: dict[str, dict[str, list[float]]] = {c: {m: [] for m in METRICS} for c in cols}
    failures: dict[str, str] = {}
    cmdline = probe_cmdline(args.mb, args.n, args.irq)
    try:
        for rep in range(args.repeats):
            for col in (cols if rep % 2 == 0 else cols[::-1]):
                if col in failures:
                    continue
                result = guest_run(col, args.kernel, directory, workdir, cmdline, args.timeout)
                if isinstance(result, str):
                    failures[col] = result
                else:
                    for m in METRICS:
                        samples[col][m].append(result[m])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(col: str, m: str) -> float | None:
        return statistics.median(samples[col][m]) if samples[col][m] and col not in failures else None

    print(f"kernel: {args.kernel}\n{cmdline}; virtiofsd {VIRTIOFSD}; medians of {args.repeats}\n")
    print(f"{'':18} {'pyhv':>10} {'qemu':>10} {'pyhv/qemu':>10}")
    for m in METRICS:
        p, q = med("pyhv", m), med("qemu", m)
        cells = [f"{v:10.0f}" if v is not None else f"{'-':>10}" for v in (p, q)]
        ratio = f"{p / q:9.2f}x" if p and q else f"{'-':>10}"
        print(f"{m:18} {' '.join(cells)} {ratio}")
    for col, why in failures.items():
        print(f"  {col} failed: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
