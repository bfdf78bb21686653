"""Save, restore and live migration: pyhv against QEMU, same probe, same run.

    python bench/snapshot.py [--sizes 128M,1G,4G] [--repeats 3] [--migrate-size 1G]

Both VMMs run the probe's ``memsum`` workload over a quarter of the guest's
memory and are saved once it has finished its first round (read from the
round count it keeps in guest memory), so a quarter of RAM holds data and
the rest was never touched:

* **save**: the machine is paused and written to a file.  pyhv: ``Machine.save``
  in this process (the API the daemon uses), without fsync -- as QEMU's
  ``cat`` does not sync either -- and again with fsync (``save+sync``).  QEMU:
  ``stop``, then ``migrate "exec:cat > FILE"`` on its monitor (max-bandwidth
  unlimited); the time is the ``total time`` QEMU reports, and ``save wall``
  is until ``info migrate`` says completed (about 0.8 s later here).  Before
  each timed save the host writes back dirty pages (``sync``), so no save
  pays for the previous one's writeback.
* **file**: the file's size, and the bytes it takes on disk (pyhv leaves
  never-touched memory as holes).
* **restore**: spawn to running.  pyhv: ``pyhv run --restore FILE`` until it
  says ``running`` on stderr; QEMU: ``-incoming "exec:cat FILE"`` until
  ``info status`` says paused (loaded, as the source was when saved), then
  ``cont`` until it says running.  Both include starting the process.  pyhv maps
  memory from the file and reads it as the guest touches it; QEMU reads it
  all first.

Migration: a ``--migrate-size`` guest running memsum over a quarter of its
memory at full speed (it rewrites all of it every round), to a destination
process on this host over TCP.  pyhv: ``pyhv.vmm.migrate.migrate`` in this
process to ``pyhv run --incoming``; QEMU: ``migrate -d tcp:...`` to
``-incoming tcp:...`` with max-bandwidth unlimited; both stop and copy once
the memory left could go in 1 s at the rate seen so far (QEMU's
downtime-limit 1000; pyhv's ``max_downtime=1.0``): the same target for both.  Total time
and downtime are what each VMM reports (pyhv: paused until the destination
said it resumed; QEMU: its ``downtime``).  Medians of the repeats; the
ratios are pyhv / QEMU (below 1 is pyhv faster or smaller).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exits import PROBE_ELF, REPO

sys.path.insert(0, str(REPO))

from pyhv.model import describe, format_size  # noqa: E402
from pyhv.vmm import build  # noqa: E402
from pyhv.vmm import migrate as mg  # noqa: E402

QEMU_MACHINE = "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,pcie=off"
KEY = b"bench-migration-key-0123456789"
#: the downtime both VMMs aim for when they decide to stop and copy, seconds
DOWNTIME_LIMIT = 1.0
COUNTER_ADDR = 0x1FF000  # memsum keeps its finished rounds there
MiB = 1 << 20


def parse_size(text: str) -> int:
    n, unit = int(text[:-1]), text[-1].upper()
    return n << {"M": 20, "G": 30}[unit]


def memsum(size: int, rounds: int = 10**9) -> str:
    return f"probe.test=memsum probe.mb={size // 4 // MiB} probe.n={rounds}"


def pyhv_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def wait_file(path: Path, pattern: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text(errors="replace")):
            return
        time.sleep(0.005)
    raise RuntimeError(f"{pattern!r} not seen in {path}")


def settle() -> None:
    """Write back what earlier runs left dirty, so that no save pays for another's writeback."""
    os.sync()
    time.sleep(0.2)


def pyhv_first_round(machine: object, timeout: float = 120.0) -> None:
    """Wait until memsum finished a round: all of its memory holds data."""
    deadline = time.monotonic() + timeout
    while int.from_bytes(machine.memory.read(COUNTER_ADDR, 8), "little") < 1:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError("memsum did not finish a round")
        time.sleep(0.005)


def qemu_first_round(hmp: Hmp, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(r"0*1ff000: (0x[0-9a-f]+)", hmp.cmd(f"xp /1gx {COUNTER_ADDR:#x}"))
        if m and int(m.group(1), 16) >= 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("memsum did not finish a round under QEMU")
        time.sleep(0.005)


# --- QEMU through its human monitor ---------------------------------------------------------


class Hmp:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.sock.settimeout(timeout)
        self._read_prompt()

    def _read_prompt(self) -> str:
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QEMU monitor closed")
            buf += chunk
        return buf.decode(errors="replace")

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        return self._read_prompt()

    def wait(self, line: str, pattern: str, timeout: float = 600.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.cmd(line)
            if re.search(pattern, out):
                return out
            if re.search(r"status: (failed|cancelled)", out):
                raise RuntimeError(f"{line}: {out.strip()}")
        raise RuntimeError(f"{line}: {pattern!r} not reached")

    def close(self) -> None:
        self.sock.close()


def qemu(size: int, cmdline: str, monitor: str, serial: Path, incoming: str | None = None) -> subprocess.Popen[bytes]:
    cmd = ["qemu-system-x86_64", "-enable-kvm", "-M", QEMU_MACHINE, "-m", f"{size // MiB}M", "-nodefaults",
           "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
           "-monitor", f"unix:{monitor},server,nowait", "-kernel", str(PROBE_ELF), "-append", cmdline,
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    if incoming:
        cmd += ["-incoming", incoming]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p: subprocess.Popen[bytes]) -> None:
    p.kill()
    p.wait()


def qemu_save_restore(size: int, work: Path) -> dict[str, float]:
    snap, mon, log = work / "qemu.snap", str(work / "qemu.mon"), work / "qemu.log"
    p = qemu(size, memsum(size), mon, log)
    try:
        hmp = Hmp(mon)
        qemu_first_round(hmp)
        hmp.cmd("migrate_set_parameter max-bandwidth 100G")  # the default limit is for live links
        hmp.cmd("stop")
        settle()
        t0 = time.perf_counter()
        hmp.cmd(f'migrate "exec:cat > {snap}"')
        out = hmp.wait("info migrate", r"Migration status: completed")
        wall = time.perf_counter() - t0
        total = re.search(r"total time: (\d+) ms", out)
        save = int(total.group(1)) / 1000 if total else wall
        hmp.close()
    finally:
        stop(p)
    st = snap.stat()
    mon2 = str(work / "qemu2.mon")
    t0 = time.perf_counter()
    p = qemu(size, memsum(size), mon2, work / "qemu2.log", incoming=f"exec:cat {snap}")
    try:
        hmp = Hmp(mon2)
        # it comes back as the source was when saved, paused: continue it once loaded
        hmp.wait("info status", r"VM status: paused\r?\n")
        hmp.cmd("cont")
        hmp.wait("info status", r"VM status: running")
        restore = time.perf_counter() - t0
        hmp.close()
    finally:
        stop(p)
    snap.unlink()
    return {"save": save, "save wall": wall, "size": st.st_size, "disk": st.st_blocks * 512, "restore": restore}


def pyhv_save_restore(size: int, work: Path) -> dict[str, float]:
    snap, log = work / "pyhv.snap", work / "pyhv.log"
    machine = build(describe(kernel=str(PROBE_ELF), cmdline=memsum(size), memory=format_size(size), serial=f"file:{log}",
                                  debug_exit=True))
    try:
        machine.start()
        pyhv_first_round(machine)
        machine.pause()
        settle()
        info = machine.save(str(snap), sync=False)
        snap.unlink()
        settle()
        synced = machine.save(str(snap), sync=True)
    finally:
        machine.close()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-S", "-m", "pyhv", "run", "--restore", str(snap), "--serial", "none"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=pyhv_env(), cwd=REPO)
    try:
        assert p.stderr is not None
        line = p.stderr.readline().decode(errors="replace")
        restore = time.perf_counter() - t0
        if "running" not in line:
            raise RuntimeError(f"pyhv restore: {line.strip() or p.stderr.read().decode()}")
    finally:
        stop(p)
    snap.unlink()
    return {"save": info.seconds, "save+sync": synced.seconds, "size": info.size, "disk": info.allocated,
            "restore": restore}


# --- migration -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pyhv_migrate(size: int, work: Path) -> dict[str, float]:
    keyfile, log = work / "key", work / "pyhv-src.log"
    keyfile.write_bytes(KEY)
    dest = subprocess.Popen([sys.executable, "-S", "-m", "pyhv", "run", "--incoming", "127.0.0.1:0",
                             "--migration-key", str(keyfile), "--serial", "none"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=pyhv_env(), cwd=REPO)
    machine = None
    try:
        assert dest.stderr is not None
        m = re.search(r":(\d+)$", dest.stderr.readline().decode().strip())
        if not m:
            raise RuntimeError("pyhv --incoming did not say where it listens")
        machine = build(describe(kernel=str(PROBE_ELF), cmdline=memsum(size), memory=format_size(size), serial=f"file:{log}",
                                      debug_exit=True))
        machine.start()
        pyhv_first_round(machine)
        stats = mg.migrate(machine, ("127.0.0.1", int(m.group(1))), KEY, max_downtime=DOWNTIME_LIMIT)
        return {"total": stats.total_seconds, "downtime": stats.downtime_seconds,
                "sent": stats.bytes_sent, "rounds": stats.rounds}
    finally:
        if machine is not None:
            machine.close()
        stop(dest)


def qemu_migrate(size: int, work: Path) -> dict[str, float]:
    port = free_port()
    dst = qemu(size, memsum(size), str(work / "dst.mon"), work / "dst.log", incoming=f"tcp:127.0.0.1:{port}")
    src = None
    try:
        Hmp(str(work / "dst.mon")).close()  # listening once the monitor answers
        src = qemu(size, memsum(size), str(work / "src.mon"), work / "src.log")
        hmp = Hmp(str(work / "src.mon"))
        qemu_first_round(hmp)
        hmp.cmd("migrate_set_parameter max-bandwidth 100G")
        hmp.cmd(f"migrate_set_parameter downtime-limit {int(DOWNTIME_LIMIT * 1000)}")
        hmp.cmd(f"migrate -d tcp:127.0.0.1:{port}")
        out = hmp.wait("info migrate", r"Migration status: completed", timeout=300)
        hmp.close()
        total = re.search(r"total time: (\d+) ms", out)
        down = re.search(r"downtime: (\d+) ms", out)
        sent = re.search(r"transferred ram: (\d+) kbytes", out)
        if not (total and down):
            raise RuntimeError(f"unreadable info migrate: {out}")
        return {"total": int(total.group(1)) / 1000, "downtime": int(down.group(1)) / 1000,
                "sent": int(sent.group(1)) * 1024 if sent else 0, "rounds": 0}
    finally:
        for p in (src, dst):
            if p is not None:
                stop(p)


# --- report ----------------------------------------------------------------------------------


def median(samples: list[dict[str, float]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "MiB":
        return f"{value / MiB:.1f} MiB"
    return f"{value:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128M,1G,4G")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--migrate-size", default="1G")
    ap.add_argument("--vmm", default="pyhv,qemu")
    args = ap.parse_args()
    if not PROBE_ELF.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    # Measure pyhv as deployed: byte-compiled (PYTHONDONTWRITEBYTECODE may be set here).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "pyhv")], check=False)
    vmms = args.vmm.split(",")
    if "qemu" in vmms and not shutil.which("qemu-system-x86_64"):
        print("qemu-system-x86_64 not found: QEMU left out", file=sys.stderr)
        vmms.remove("qemu")
    runners = {"pyhv": (pyhv_save_restore, pyhv_migrate), "qemu": (qemu_save_restore, qemu_migrate)}
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="pyhv-snapbench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    migrations: dict[str, list[dict[str, float]]] = {v: [] for v in vmms}
    try:
        for rep in range(args.repeats):
            for size in sizes:
                for vmm in vmms if rep % 2 == 0 else vmms[::-1]:
                    try:
                        results.setdefault((vmm, size), []).append(runners[vmm][0](size, work))
                    except Exception as e:  # noqa: BLE001 - one failing VMM must not hide the other
                        failures.append(f"{vmm} save/restore {size // MiB} MiB: {e}")
            for vmm in vmms if rep % 2 == 0 else vmms[::-1]:
                try:
                    migrations[vmm].append(runners[vmm][1](parse_size(args.migrate_size), work))
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{vmm} migration: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"probe: {PROBE_ELF}; workload memsum over a quarter of RAM; medians of {args.repeats}\n")
    print(f"{'guest':>6} {'metric':>10} {'pyhv':>12} {'qemu':>12} {'pyhv/qemu':>10}")
    for size in sizes:
        for key, unit in (("save", "ms"), ("save+sync", "ms"), ("save wall", "ms"), ("size", "MiB"), ("disk", "MiB"), ("restore", "ms")):
            p = median(results.get(("pyhv", size), []), key)
            q = median(results.get(("qemu", size), []), key)
            label = f"{size // MiB}M" if key == "save" else ""
            print(f"{label:>6} {key:>10} {fmt(p, unit):>12} {fmt(q, unit):>12} {ratio(p, q):>10}")
    print(f"\nmigration of a {args.migrate_size} guest (memsum over a quarter of it, dirtying all of it every round):")
    print(f"{'':>6} {'metric':>10} {'pyhv':>12} {'qemu':>12} {'pyhv/qemu':>10}")
    for key, unit in (("total", "ms"), ("downtime", "ms"), ("sent", "MiB")):
        p, q = median(migrations.get("pyhv", []), key), median(migrations.get("qemu", []), key)
        print(f"{'':>6} {key:>10} {fmt(p, unit):>12} {fmt(q, unit):>12} {ratio(p, q):>10}")
    for f in failures:
        print(f"  failed: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
