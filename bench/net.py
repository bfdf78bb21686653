"""virtio-net: throughput and round trip, pyhv against QEMU (-netdev tap) and the host's veth.

    python bench/net.py [--repeats 3] [--secs 3] [--offload]

Each VMM gets the same persistent TAP (``pbnet0``, host address 10.0.2.1/24,
created with netlink through pyroute2) and the same probe:

* guest to host: ``probe.test=netbench`` sends UDP frames (1472-byte and
  18-byte payloads, i.e. full-size and 64-byte frames) to 10.0.2.1:9 for
  ``--secs``; a UDP socket on the host counts what arrives;
* host to guest: this script sends UDP frames to the guest's port 9000 for
  ``--secs`` while the probe counts them (its ``rx_mbps``);
* round trip: ``probe.test=netping`` pings 10.0.2.1 (the host answers), 200
  times, and reports the median.

With ``--offload`` every row is measured a second time with the probe
negotiating virtio-net's offloads (``probe.features=offload``: CSUM,
GUEST_CSUM, HOST_UFO, MRG_RXBUF; QEMU's virtio-net-pci has them switched on
explicitly), and a row sends 65,000-byte datagrams as single GSO_UDP frames.

The limit is the host itself: the same UDP sends between two network
namespaces over a veth pair (Python sender and receiver, as in the host-to-guest
case).  Medians of the repeats; ratios are pyhv / QEMU and pyhv / limit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from exits import PROBE_ELF, REPO

TAP = "pbnet0"
HOST_IP, GUEST_IP = "10.0.2.1", "10.0.2.15"
SIZES = {"large": 1472, "small": 18}
#: the datagram of the offload-only row: one GSO_UDP frame, cut up by the host
GSO_SIZE = 65000
#: virtio-net-pci properties for the offload rows (QEMU's defaults, spelled out)
QEMU_OFFLOADS = ",csum=on,guest_csum=on,host_ufo=on,host_tso4=on,host_tso6=on,guest_tso4=on,guest_tso6=on,mrg_rxbuf=on"


def make_tap() -> None:
    """A persistent TAP with a vnet header, up, with the host address (pyroute2)."""
    from pyroute2 import IPRoute

    subprocess.run(["ip", "tuntap", "del", TAP, "mode", "tap"], capture_output=True, check=False)
    subprocess.run(["ip", "tuntap", "add", TAP, "mode", "tap", "vnet_hdr"], check=True)
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=TAP)[0]
        ip.addr("add", index=idx, address=HOST_IP, prefixlen=24)
        ip.link("set", index=idx, state="up")


def drop_tap() -> None:
    subprocess.run(["ip", "tuntap", "del", TAP, "mode", "tap"], capture_output=True, check=False)


def vmm_command(vmm: str, kernel: Path, cmdline: str, offload: bool = False) -> tuple[list[str], dict[str, str] | None]:
    if offload:
        cmdline += " probe.features=offload"
    if vmm == "pyhv":
        return [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(kernel), "--cmdline", cmdline,
                "--debug-exit", "--net", f"tap={TAP},mac=52:54:00:12:34:56"], dict(os.environ, PYTHONPATH=str(REPO))
    return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,pcie=on,acpi=on", "-m", "256M", "-nodefaults",
            "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", cmdline, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:12:34:56" + (QEMU_OFFLOADS if offload else "")], None


def probe_fields(out: str, key: str, field: str) -> dict[str, str]:
    """The fields of the last ``probe: KEY ...`` line that has ``field``."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith(f"probe: {key} ") and f" {field}=" in line:
            found = dict(t.partition("=")[::2] for t in shlex.split(line[len("probe: "):]) if "=" in t)
    return found


def guest_to_host(vmm: str, kernel: Path, size: int, secs: int, offload: bool = False) -> float | str:
    """MB/s of UDP payload arriving on the host from the guest."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind((HOST_IP, 9))
    rx.settimeout(0.5)
    got = 0
    first = last = 0.0
    cmd, env = vmm_command(vmm, kernel, f"probe.test=netbench probe.size={size} probe.secs={secs} probe.ip={GUEST_IP} probe.peer={HOST_IP}", offload)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + secs + 30
    while time.monotonic() < deadline and p.poll() is None:
        try:
            n = len(rx.recv(65536))
        except socket.timeout:
            continue
        now = time.perf_counter()
        first = first or now
        last = now
        got += n
    p.kill()
    p.wait()
    rx.close()
    if got == 0 or last <= first:
        return "no frames arrived"
    return got / (last - first) / 1e6


def host_to_guest(vmm: str, kernel: Path, size: int, secs: int, offload: bool = False) -> float | str:
    """MB/s the probe reports receiving while this process sends to it."""
    cmd, env = vmm_command(vmm, kernel, f"probe.test=netbench probe.size={size} probe.n=0 probe.secs={secs} probe.ip={GUEST_IP} probe.peer={HOST_IP}", offload)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
    stop = threading.Event()

    def blast() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payload = bytes(size)
        while not stop.is_set():
            try:
                s.sendto(payload, (GUEST_IP, 9000))
            except OSError:
                time.sleep(0.001)
        s.close()

    th = threading.Thread(target=blast, daemon=True)
    th.start()
    try:
        out, _ = p.communicate(timeout=secs + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    stop.set()
    fields = probe_fields(out, "netbench", "rx_mbps")
    if "rx_mbps" not in fields:
        return "no netbench line"
    return float(fields["rx_mbps"]) / 8  # probe reports megabits


_RECEIVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("10.7.0.2", 9)); s.settimeout(1.0)
got, first, last = 0, 0.0, 0.0
end = time.monotonic() + float(sys.argv[1]) + 3
while time.monotonic() < end:
    try:
        n = len(s.recv(65536))
    except socket.timeout:
        if got:
            break
        continue
    now = time.perf_counter(); first = first or now; last = now; got += n
print(got / (last - first) / 1e6 if last > first else 0.0)
"""
_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(int(sys.argv[2])); end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        s.sendto(payload, ("10.7.0.2", 9))
    except OSError:
        pass
"""


def veth_limit(size: int, secs: int) -> float | str:
    """MB/s of UDP payload between two namespaces over veth: what the host can do."""
    cmds = [
        ["netns", "add", "pbnsA"], ["netns", "add", "pbnsB"],
        ["link", "add", "pbva", "netns", "pbnsA", "type", "veth", "peer", "name", "pbvb", "netns", "pbnsB"],
        ["-n", "pbnsA", "addr", "add", "10.7.0.1/24", "dev", "pbva"], ["-n", "pbnsB", "addr", "add", "10.7.0.2/24", "dev", "pbvb"],
        ["-n", "pbnsA", "link", "set", "pbva", "up"], ["-n", "pbnsB", "link", "set", "pbvb", "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(["ip", *c], check=True, capture_output=True)
        rx = subprocess.Popen(["ip", "netns", "exec", "pbnsB", sys.executable, "-c", _RECEIVER, str(secs)],
                              stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        subprocess.run(["ip", "netns", "exec", "pbnsA", sys.executable, "-c", _SENDER, str(secs), str(size)], check=True)
        out, _ = rx.communicate(timeout=secs + 10)
        return float(out.strip() or 0) or "nothing arrived over the veth"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as e:
        return f"veth set-up or run failed: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", "pbnsA"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", "pbnsB"], capture_output=True, check=False)


def round_trip(vmm: str, kernel: Path, offload: bool = False) -> float | str:
    cmd, env = vmm_command(vmm, kernel, f"probe.test=netping probe.n=200 probe.ip={GUEST_IP} probe.peer={HOST_IP}", offload)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL, check=False)
    fields = probe_fields(p.stdout, "netping", "rtt_us_p50")
    if "rtt_us_p50" not in fields:
        return "no netping line"
    return float(fields["rtt_us_p50"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--kernel", type=Path, default=PROBE_ELF)
    ap.add_argument("--offload", action="store_true", help="measure every row again with offloads negotiated")
    args = ap.parse_args()
    limits = {k: veth_limit(s, args.secs) for k, s in SIZES.items()}
    rows: list[tuple[str, Callable[[str], float | str]]] = []
    for off in (False, True) if args.offload else (False,):
        tag = "+offload " if off else ""
        rows += [(f"{tag}guest->host {k} MB/s", lambda v, s=s, o=off: guest_to_host(v, args.kernel, s, args.secs, o)) for k, s in SIZES.items()]
        rows += [(f"{tag}host->guest {k} MB/s", lambda v, s=s, o=off: host_to_guest(v, args.kernel, s, args.secs, o)) for k, s in SIZES.items()]
        rows.append((f"{tag}round trip us (p50)", lambda v, o=off: round_trip(v, args.kernel, o)))
    if args.offload:
        rows.append(("+offload guest->host 64K MB/s", lambda v: guest_to_host(v, args.kernel, GSO_SIZE, args.secs, True)))
    make_tap()
    results: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], str] = {}
    try:
        for rep in range(args.repeats):
            for name, fn in rows:
                for vmm in (("pyhv", "qemu") if rep % 2 == 0 else ("qemu", "pyhv")):
                    if (name, vmm) in failures:
                        continue
                    r = fn(vmm)
                    if isinstance(r, str):
                        failures[(name, vmm)] = r
                    else:
                        results.setdefault((name, vmm), []).append(r)
    finally:
        drop_tap()
    print(f"virtio-net over TAP {TAP}; {args.secs:g} s per transfer; medians of {args.repeats}\n")
    print(f"{'':30} {'limit':>10} {'pyhv':>10} {'qemu':>10} {'pyhv/qemu':>10} {'pyhv/limit':>11}")
    for name, _ in rows:
        cells = [statistics.median(results[(name, v)]) if (name, v) in results and (name, v) not in failures else None for v in ("pyhv", "qemu")]
        size = next((k for k in SIZES if f" {k} " in name), None)
        limit = limits.get(size) if size else None
        lim = limit if isinstance(limit, float) else None
        shown = [f"{c:10.1f}" if c is not None else f"{'failed':>10}" for c in cells]
        ratio = f"{cells[0] / cells[1]:9.2f}x" if None not in cells and cells[1] else f"{'-':>10}"
        to_limit = f"{cells[0] / lim:10.2f}x" if cells[0] is not None and lim else f"{'-':>11}"
        shown_lim = f"{lim:10.1f}" if lim else f"{'-':>10}"
        print(f"{name:30} {shown_lim} {shown[0]} {shown[1]} {ratio} {to_limit}")
    for size_name, limit in limits.items():
        if isinstance(limit, str):
            print(f"  limit ({size_name}): {limit}")
    for (name, vmm), why in failures.items():
        print(f"  {vmm} {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
