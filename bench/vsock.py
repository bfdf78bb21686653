"""vsock throughput and round trip: a host program talking to the probe's echo server.

    python bench/vsock.py [--repeats 3] [--mb 32] [--rounds 2000]

pyhv runs the probe with ``probe.test=vsock`` (an echo server on guest port
1234) and ``--vsock cid=3,uds=...``; this script connects through the unix
socket with Firecracker's ``CONNECT 1234`` handshake, then measures
(a) throughput: ``--mb`` MiB sent and echoed back, in 64 KiB writes, and
(b) round trip: ``--rounds`` 64-byte messages, one at a time (median).
QEMU has no user-space vsock on this host (no /dev/vhost-vsock), so the peer is
the limit: the same two measurements over a unix socket pair with an echo
thread in this process.  Ratios are pyhv / limit.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from exits import PROBE_ELF, REPO

PORT = 1234
CHUNK = 64 * 1024


def measure(sock: socket.socket, mb: int, rounds: int) -> tuple[float, float]:
    """(MiB/s echoed, median round trip in us) over a connected stream."""
    payload = os.urandom(CHUNK)
    total = mb << 20
    received = 0

    def reader() -> None:
        nonlocal received
        while received < total:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)

    t = time.perf_counter()
    th = threading.Thread(target=reader)
    th.start()
    sent = 0
    while sent < total:
        sock.sendall(payload)
        sent += len(payload)
    th.join(timeout=120)
    mbps = (received >> 20) / (time.perf_counter() - t)
    msg = b"x" * 64
    rtts = []
    for _ in range(rounds):
        t = time.perf_counter()
        sock.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(sock.recv(64 - got))
        rtts.append((time.perf_counter() - t) * 1e6)
    return mbps, statistics.median(rtts)


def host_limit(mb: int, rounds: int) -> tuple[float, float]:
    a, b = socket.socketpair()

    def echo() -> None:
        while data := b.recv(1 << 20):
            b.sendall(data)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    try:
        return measure(a, mb, rounds)
    finally:
        a.close()


def pyhv_run(kernel: Path, mb: int, rounds: int) -> tuple[float, float] | str:
    d = tempfile.mkdtemp(prefix="pyhv-vsock-")
    uds = os.path.join(d, "v.sock")
    p = subprocess.Popen(
        [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel), "--cmdline",
         f"probe.test=vsock probe.port={PORT} probe.n=1 probe.secs=600", "--debug-exit",
         "--vsock", f"cid=3,uds={uds}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if b"listening" in line:
                break
        else:
            return "the probe never listened: " + (p.stderr.read().decode().strip().splitlines() or ["?"])[-1]  # type: ignore[union-attr]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uds)
        s.sendall(f"CONNECT {PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                return "connection refused by the guest"
            line += chunk
        if not line.startswith(b"OK "):
            return f"handshake answered {line!r}"
        result = measure(s, mb, rounds)
        s.close()
        return result
    finally:
        p.kill()
        p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--kernel", type=Path, default=PROBE_ELF)
    args = ap.parse_args()
    pyhv: list[tuple[float, float]] = []
    host: list[tuple[float, float]] = []
    failure = ""
    for _ in range(args.repeats):
        host.append(host_limit(args.mb, args.rounds))
        r = pyhv_run(args.kernel, args.mb, args.rounds)
        if isinstance(r, str):
            failure = r
            break
        pyhv.append(r)
    print(f"vsock echo: {args.mb} MiB in 64 KiB writes; {args.rounds} round trips of 64 bytes; medians of {args.repeats}\n")
    print(f"{'':24} {'limit':>10} {'pyhv':>10} {'pyhv/limit':>11}")
    for i, (name, unit) in enumerate((("throughput", "MiB/s"), ("round trip", "us"))):
        lim = statistics.median(h[i] for h in host)
        val = statistics.median(p[i] for p in pyhv) if pyhv else None
        shown = f"{val:10.1f}" if val is not None else f"{'failed':>10}"
        ratio = f"{val / lim:10.2f}x" if val is not None else f"{'-':>11}"
        print(f"{name + ' (' + unit + ')':24} {lim:10.1f} {shown} {ratio}")
    if failure:
        print(f"  pyhv failed: {failure}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
