#!/usr/bin/env python3
"""Exit-cost benchmark: pyhv against QEMU and a minimal C floor.

Run from the repository root:

    python bench/exits.py [--repeats 5] [--n 200000] [--vmm floor,pyhv,qemu]

Every VMM boots the same probe guest (guests/build/probe.elf).  For each
workload (``pio``: outb to port 0x0b00 from guest ring 3; ``mmio``: 32-bit
writes to unmapped guest-physical 0xd0000000) the probe runs twice, with
``probe.n`` small and large; the per-exit cost is

    (wall_large - wall_small) / (n_large - n_small)

so process start-up, guest boot and teardown cancel out.  The median over
``--repeats`` rounds is reported; within a round the VMMs are interleaved
(and their order rotated) so that host noise hits all of them alike.

It also measures, on ``probe.test=hello``, the time from spawning the VMM to
the first byte of guest serial output, and the VMM process's peak resident
set size with a 128 MiB guest: ``ru_maxrss`` of the VMM as reaped by
bench/floor/build/peakrss, a small fork/exec/wait4 wrapper (a direct
``os.wait4`` on a child spawned from Python reports at least the
interpreter's own peak, see peakrss.c).

Only ratios taken within one run are meaningful: the host is shared.
Python >= 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLOOR_DIR = REPO / "bench" / "floor"
FLOOR_BIN = FLOOR_DIR / "build" / "floor"
PEAKRSS_BIN = FLOOR_DIR / "build" / "peakrss"
GUESTS_DIR = REPO / "guests"
PROBE_ELF = GUESTS_DIR / "build" / "probe.elf"

VMMS = ("floor", "pyhv", "qemu")
WORKLOADS = ("pio", "mmio")
MEMORY_MIB = 128
PASS_MARKER = b"probe: result=pass"

# Exit status of a passing probe run.  QEMU's isa-debug-exit turns the value
# v written to port 0xf4 into status (v << 1) | 1, so a 0 becomes 1.
EXPECTED_RC = {"floor": 0, "pyhv": 0, "qemu": 1}

# pyhv/floor and pyhv/qemu per-exit targets.
FLOOR_TARGET = 1.25
QEMU_TARGET = 1.0

# QEMU machine: microvm, stripped to what the probe uses.
#   x-option-roms=off  no option ROMs for the firmware to scan
#   rtc/pit/pic=off    no legacy timer/interrupt devices (the probe polls)
#   isa-serial=on      COM1 at 0x3f8, wired to -serial stdio
#   acpi=off           no ACPI tables to build (saves start-up and RSS)
#   pcie=off           no PCIe host bridge
# The kernel is booted through its PVH note by the microvm firmware.  The
# probe's port 0x0b00 and MMIO 0xd0000000 are unassigned in this machine, so
# every access is a full exit to QEMU's user-space dispatcher (there is no
# in-kernel device or coalescing range on them).  The default CPU model is
# used: -cpu host/max abort under this host's KVM.
QEMU_MACHINE = ("microvm,x-option-roms=off,rtc=off,pit=off,pic=off,"
                "isa-serial=on,acpi=off,pcie=off")


# --------------------------------------------------------------------------
# running one VMM process


@dataclass
class Run:
    ok: bool
    reason: str = ""
    wall: float = 0.0             # spawn to reaped, seconds
    first_output: float | None = None   # spawn to first stdout byte, seconds
    maxrss_kib: int = 0
    rc: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""


def run_vmm(cmd: list[str], env: dict[str, str] | None, expected_rc: int,
            timeout: float) -> Run:
    """Spawn cmd, collect its output, reap it with os.wait4 and check it."""
    t0 = time.perf_counter()
    try:
        # Own session, so a timeout can kill the VMM and anything it spawned;
        # stdin from /dev/null keeps QEMU's stdio chardev off the terminal.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=REPO, start_new_session=True)
    except OSError as e:
        return Run(False, f"cannot start {cmd[0]}: {e.strerror or e}")

    out = bytearray()
    err = bytearray()
    first: float | None = None
    timed_out = False
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    deadline = t0 + timeout
    try:
        while sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data is out and first is None:
                    first = time.perf_counter() - t0
                key.data.extend(chunk)
    finally:
        sel.close()
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        proc.stderr.close()

    run = Run(True, "", wall, first, usage.ru_maxrss, proc.returncode,
              bytes(out), bytes(err))
    problems = []
    if timed_out:
        problems.append(f"timed out after {timeout:g} s")
    elif run.rc != expected_rc:
        if run.rc < 0:
            problems.append(f"killed by {signal.Signals(-run.rc).name}")
        else:
            problems.append(f"exit status {run.rc} (expected {expected_rc})")
    if PASS_MARKER not in run.stdout:
        problems.append(f"no '{PASS_MARKER.decode()}' in output")
    if problems:
        run.ok = False
        detail = _last_line(run.stderr) or _last_line(run.stdout)
        run.reason = "; ".join(problems) + (f": {detail}" if detail else "")
    return run


def run_peakrss(cmd: list[str], env: dict[str, str] | None, expected_rc: int,
                timeout: float) -> tuple[Run, float | None]:
    """Run cmd under peakrss; return the run and the VMM's peak RSS in MiB."""
    fd, path = tempfile.mkstemp(prefix="pyhv-bench-rss-")
    os.close(fd)
    try:
        r = run_vmm([str(PEAKRSS_BIN), path] + cmd, env, expected_rc, timeout)
        try:
            text = Path(path).read_text().strip()
            rss = int(text) / 1024 if text else None
        except (OSError, ValueError):
            rss = None
    finally:
        os.unlink(path)
    if r.ok and rss is None:
        r.ok = False
        r.reason = "peakrss reported nothing"
    return r, rss


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= 160 else line[:157] + "..."


# --------------------------------------------------------------------------
# command lines


def vmm_command(vmm: str, kernel: Path, cmdline: str) -> tuple[list[str], dict[str, str] | None]:
    if vmm == "floor":
        return [str(FLOOR_BIN), "-m", str(MEMORY_MIB), str(kernel), cmdline], None
    if vmm == "pyhv":
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
        # -S: the domain process runs without site (its boot path is the
        # standard library only), as a toolstack starts it; see bench/README.md.
        return [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel),
                "--cmdline", cmdline, "--debug-exit",
                "--memory", f"{MEMORY_MIB}M"], env
    if vmm == "qemu":
        return ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE,
                "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config",
                "-nographic", "-no-reboot", "-serial", "stdio",
                "-kernel", str(kernel), "-append", cmdline,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"], None
    raise ValueError(vmm)


# --------------------------------------------------------------------------
# prerequisites


def _make(directory: Path) -> str | None:
    """Run make in directory; return None on success, else a reason."""
    if shutil.which("make") is None:
        return "make not found"
    print(f"building: make -C {directory.relative_to(REPO)}", file=sys.stderr)
    r = subprocess.run(["make", "-C", str(directory)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        return (f"make -C {directory.relative_to(REPO)} failed: "
                f"{_last_line(r.stdout)}")
    return None


def prepare(vmms: list[str], kernel: Path, build_probe: bool) -> tuple[str | None, dict[str, str]]:
    """Build what is missing.  Returns (probe problem, {vmm: problem})."""
    probe_problem = None
    if not kernel.is_file():
        if build_probe:
            probe_problem = _make(GUESTS_DIR)
        if probe_problem is None and not kernel.is_file():
            probe_problem = f"probe kernel {kernel} not found"

    vmm_problem: dict[str, str] = {}
    # bench/floor builds both the floor VMM and the peakrss helper.
    stale = False
    for binary in (FLOOR_BIN, PEAKRSS_BIN):
        src = FLOOR_DIR / (binary.name + ".c")
        if (not binary.is_file()
                or (src.is_file() and src.stat().st_mtime > binary.stat().st_mtime)):
            stale = True
    if stale:
        why = _make(FLOOR_DIR)
        if why and "floor" in vmms and not FLOOR_BIN.is_file():
            vmm_problem["floor"] = why
    if "qemu" in vmms and shutil.which("qemu-system-x86_64") is None:
        vmm_problem["qemu"] = "qemu-system-x86_64 not found"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        for v in vmms:
            vmm_problem.setdefault(v, "/dev/kvm not accessible")
    return probe_problem, vmm_problem


# --------------------------------------------------------------------------
# measurement


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    failed: str | None = None

    @property
    def value(self) -> float | None:
        if self.failed or not self.samples:
            return None
        return statistics.median(self.samples)

    def fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason


METRICS = ("pio", "mmio", "startup", "rss")
METRIC_LABEL = {
    "pio": "pio us/exit",
    "mmio": "mmio us/exit",
    "startup": "start-to-output ms",
    "rss": "peak RSS MiB",
}


def measure(vmms: list[str], kernel: Path, args) -> dict[str, dict[str, Cell]]:
    cells = {v: {m: Cell() for m in METRICS} for v in vmms}
    n_small, n_large = args.n_small, args.n
    dn = n_large - n_small

    for rep in range(args.repeats):
        # Rotate the order each round so no VMM always runs first or last.
        k = rep % len(vmms)
        order = vmms[k:] + vmms[:k]

        for wl in WORKLOADS:
            for vmm in order:
                cell = cells[vmm][wl]
                if cell.failed:
                    continue
                walls = []
                for n in (n_small, n_large):
                    cmd, env = vmm_command(vmm, kernel, f"probe.test={wl} probe.n={n} probe.ring={args.ring}")
                    r = run_vmm(cmd, env, EXPECTED_RC[vmm], args.timeout)
                    if not r.ok:
                        cell.fail(f"probe.n={n}: {r.reason}")
                        break
                    walls.append(r.wall)
                else:
                    cell.samples.append((walls[1] - walls[0]) / dn * 1e6)
                    _progress(args, rep, vmm, wl, cell.samples[-1], "us/exit")

        # Start-up: spawned directly, time to the first byte on stdout.
        for vmm in order:
            st = cells[vmm]["startup"]
            if st.failed:
                continue
            cmd, env = vmm_command(vmm, kernel, "probe.test=hello")
            r = run_vmm(cmd, env, EXPECTED_RC[vmm], args.timeout)
            if not r.ok:
                st.fail(r.reason)
            elif r.first_output is None:
                st.fail("no output on stdout")
            else:
                if not r.stdout.startswith(b"probe:"):
                    print(f"note: {vmm} stdout does not start with guest output: "
                          f"{r.stdout[:40]!r}", file=sys.stderr)
                st.samples.append(r.first_output * 1e3)
                _progress(args, rep, vmm, "hello", st.samples[-1], "ms to output")

        # Peak RSS: a separate hello run under peakrss.
        for vmm in order:
            rss = cells[vmm]["rss"]
            if rss.failed:
                continue
            cmd, env = vmm_command(vmm, kernel, "probe.test=hello")
            if PEAKRSS_BIN.is_file():
                r, mib = run_peakrss(cmd, env, EXPECTED_RC[vmm], args.timeout)
            else:
                r = run_vmm(cmd, env, EXPECTED_RC[vmm], args.timeout)
                mib = r.maxrss_kib / 1024
                if rep == 0:
                    print(f"note: {PEAKRSS_BIN.relative_to(REPO)} missing; peak RSS "
                          "from os.wait4 includes the benchmark's own peak",
                          file=sys.stderr)
            if not r.ok:
                rss.fail(r.reason)
                continue
            rss.samples.append(mib)
            _progress(args, rep, vmm, "rss", mib, "MiB")
    return cells


def _progress(args, rep: int, vmm: str, what: str, value: float, unit: str) -> None:
    if args.verbose:
        print(f"  [{rep + 1}/{args.repeats}] {vmm:5} {what:5} {value:9.3f} {unit}",
              file=sys.stderr)


# --------------------------------------------------------------------------
# report


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(x: float | None, failed: bool = False, places: int = 2) -> str:
    if failed:
        return "FAIL"
    if x is None:
        return "-"
    return f"{x:.{places}f}"


def report(cells, vmms: list[str], args, kernel: Path, probe_problem: str | None) -> dict:
    def val(vmm, m):
        return cells[vmm][m].value if vmm in cells else None

    rows = []
    for m in METRICS:
        row = {"metric": METRIC_LABEL[m]}
        for v in VMMS:
            c = cells.get(v, {}).get(m)
            row[v] = c
        row["pyhv/floor"] = _ratio(val("pyhv", m), val("floor", m))
        row["pyhv/qemu"] = _ratio(val("pyhv", m), val("qemu", m))
        rows.append(row)

    print(f"kernel: {kernel}")
    print(f"n = {args.n_small} .. {args.n}, repeats = {args.repeats}, "
          f"guest memory = {MEMORY_MIB} MiB; medians")
    print()
    cols = list(VMMS) + ["pyhv/floor", "pyhv/qemu"]
    head = f"{'':20}" + "".join(f"{c:>12}" for c in cols)
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['metric']:20}"
        for v in VMMS:
            c = row[v]
            if c is None:
                line += f"{'-':>12}"
            else:
                places = 1 if row["metric"].startswith(("start", "peak")) else 2
                line += f"{_fmt(c.value, c.failed is not None, places):>12}"
        for r in ("pyhv/floor", "pyhv/qemu"):
            line += f"{(f'{row[r]:.2f}x' if row[r] is not None else '-'):>12}"
        print(line)

    # The ratios include the guest's own work per iteration and the kernel
    # round trip, both shared by every VMM; the excess over the floor is the
    # VMM's user-space cost per exit alone.
    excess = []
    for wl in WORKLOADS:
        parts = []
        for v in ("pyhv", "qemu"):
            a, f = val(v, wl), val("floor", wl)
            if a is not None and f is not None:
                parts.append(f"{v} {a - f:+.2f} us")
        if parts:
            excess.append(f"{wl}: " + ", ".join(parts))
    if excess:
        print()
        print("per-exit excess over floor: " + "; ".join(excess))

    failures = [] if probe_problem else [
        (v, m, cells[v][m].failed) for v in vmms for m in METRICS if cells[v][m].failed]
    if probe_problem or failures:
        print()
        print("failures:")
        if probe_problem:
            print(f"  probe: {probe_problem}")
        for v, m, why in failures:
            print(f"  {v} {METRIC_LABEL[m]}: {why}")

    print()
    print("targets (per exit, pio and mmio):")
    targets = []
    for name, other, limit in (("pyhv <= 1.25x floor per exit", "floor", FLOOR_TARGET),
                               ("pyhv <= qemu", "qemu", QEMU_TARGET)):
        parts, met = [], True
        for wl in WORKLOADS:
            r = _ratio(val("pyhv", wl), val(other, wl))
            if r is None:
                parts.append(f"{wl} n/a")
                met = None
            else:
                parts.append(f"{wl} {r:.2f}x")
                if met is not None and r > limit:
                    met = False
        verdict = {True: "MET", False: "NOT MET", None: "UNKNOWN"}[met]
        print(f"  {name:32} {verdict:8} ({', '.join(parts)})")
        targets.append({"target": name, "limit": limit, "met": met})

    return {
        "host": {"kernel": platform.release(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"n_small": args.n_small, "n_large": args.n,
                   "repeats": args.repeats, "memory_mib": MEMORY_MIB,
                   "probe": str(kernel), "vmms": vmms,
                   "qemu_machine": QEMU_MACHINE},
        "probe_problem": probe_problem,
        "results": {v: {m: {"median": cells[v][m].value,
                            "samples": cells[v][m].samples,
                            "failed": cells[v][m].failed,
                            "unit": METRIC_LABEL[m].split()[-1]}
                        for m in METRICS} for v in vmms},
        "excess_over_floor_us": {
            wl: {v: (val(v, wl) - val("floor", wl))
                 if val(v, wl) is not None and val("floor", wl) is not None else None
                 for v in ("pyhv", "qemu")}
            for wl in WORKLOADS},
        "ratios": {row["metric"]: {"pyhv/floor": row["pyhv/floor"],
                                   "pyhv/qemu": row["pyhv/qemu"]} for row in rows},
        "targets": targets,
    }


# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Per-exit cost, start-up time and "
                                "peak RSS of pyhv, QEMU and the C floor.")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds; medians are reported (default 5)")
    p.add_argument("--n", type=int, default=200000,
                   help="exits in the large run (default 200000)")
    p.add_argument("--ring", type=int, choices=(0, 3), default=0,
                   help="run the probe's exit loop in ring 0 (default: a few emulated "
                        "instructions per exit) or ring 3 (through the probe's int3 gate on PVM)")
    p.add_argument("--n-small", type=int, default=1000,
                   help="exits in the small run (default 1000)")
    p.add_argument("--vmm", default=",".join(VMMS),
                   help="comma-separated subset of floor,pyhv,qemu")
    p.add_argument("--kernel", type=Path, default=PROBE_ELF,
                   help="probe ELF (default guests/build/probe.elf)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed per VMM run (default 600)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also dump the results as JSON (to FILE, or stdout)")
    p.add_argument("--no-build", action="store_true",
                   help="do not run make for a missing probe")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every sample to stderr as it is taken")
    args = p.parse_args(argv)

    vmms = [v.strip() for v in args.vmm.split(",") if v.strip()]
    bad = [v for v in vmms if v not in VMMS]
    if bad or not vmms:
        p.error(f"--vmm: unknown VMM {', '.join(bad) or '(none)'}; choose from {', '.join(VMMS)}")
    args.vmms = [v for v in VMMS if v in vmms]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not 0 < args.n_small < args.n:
        p.error("need 0 < --n-small < --n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Measure pyhv as deployed: byte-compiled (PYTHONDONTWRITEBYTECODE may be set here).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "pyhv")], check=False)
    kernel = args.kernel.resolve()
    probe_problem, vmm_problem = prepare(args.vmms, kernel, not args.no_build)

    if probe_problem:
        cells = {v: {m: Cell(failed=probe_problem) for m in METRICS} for v in args.vmms}
    else:
        runnable = [v for v in args.vmms if v not in vmm_problem]
        # Run a private copy, so that a rebuild of the probe during the
        # benchmark cannot mix two binaries (or remove the file).
        with tempfile.TemporaryDirectory(prefix="pyhv-bench-") as tmp:
            snapshot = Path(tmp) / kernel.name
            shutil.copyfile(kernel, snapshot)
            cells = measure(runnable, snapshot, args) if runnable else {}
        for v, why in vmm_problem.items():
            cells[v] = {m: Cell(failed=why) for m in METRICS}
    cells = {v: cells[v] for v in args.vmms}

    data = report(cells, args.vmms, args, kernel, probe_problem)
    if args.json:
        text = json.dumps(data, indent=2)
        if args.json == "-":
            print()
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
