"""virtio-net, virtio-vsock and the probe guest's workloads for them
(guests/README.md, "Network, vsock and balloon", describes the lines).

The network tests put a persistent TAP in the host's namespace, give it
HOST_IP/24 and hand it to pyhv with ``--net tap=NAME``; the guest answers
on GUEST_IP.  The vsock tests use pyhv's ``--vsock cid=3,uds=PATH`` with
Firecracker's convention: the host connects to PATH and writes
``CONNECT <port>\\n``, and a guest connection to host port P reaches the unix
socket ``PATH_P``.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from ..conftest import PROBE, ROOT
from .probe import Run

pytestmark = pytest.mark.kvm

GUEST_MAC = "52:54:00:12:34:56"
VSOCK_CID = 3


# -- a guest running in the background -----------------------------------------


class Guest:
    """pyhv running the probe while the test talks to it."""

    def __init__(self, cmdline: str, *extra: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyhv",
                "run",
                "--kernel",
                str(PROBE),
                "--cmdline",
                cmdline,
                "--debug-exit",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "".join(self._out) + "\nstderr:\n" + "".join(self._err)

    def wait_line(self, text: str, timeout: float = 30) -> dict[str, str]:
        """The fields of the first ``probe:`` line containing ``text``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._out:
                    if line.startswith("probe: ") and text in line:
                        return _fields(line)
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)
                ):
                    raise AssertionError(f"no line with {text!r}:\n{''.join(self._out)}{''.join(self._err)}")
                self._cond.wait(min(left, 0.1))

    def finish(self, timeout: float = 60) -> Run:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(5)
        return Run(self.proc.returncode, "".join(self._out), "".join(self._err))

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _fields(line: str) -> dict[str, str]:
    out = {}
    for token in shlex.split(line[len("probe: ") :]):
        key, _, value = token.partition("=")
        out[key] = value
    return out


def _passed(run: Run) -> bool:
    return run.line("result")["result"] == "pass" and run.status == 0


# -- the TAP -------------------------------------------------------------------


@dataclass
class Tap:
    name: str
    host_ip: str
    guest_ip: str


def _subnet_in_use(prefix: str) -> bool:
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    return any(line.startswith(prefix + ".0/24") for line in routes.splitlines())


@pytest.fixture
def tap() -> Iterator[Tap]:
    """A persistent TAP with an address of its own, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to set up a TAP")
    # 10.0.2.0/24 as in the guest's defaults, unless something else has it.
    prefix = next(p for p in [f"10.0.{n}" for n in range(2, 250)] if not _subnet_in_use(p))
    name = f"pyhvt{os.getpid() % 100000}"
    subprocess.run(["ip", "tuntap", "add", name, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{prefix}.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield Tap(name, f"{prefix}.1", f"{prefix}.15")
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def _net_args(tap: Tap) -> list[str]:
    return ["--net", f"tap={tap.name},mac={GUEST_MAC}"]


def _ip_opts(tap: Tap) -> str:
    return f"probe.ip={tap.guest_ip} probe.peer={tap.host_ip}"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ping(tap: Tap, count: int, size: int = 56, timeout: float = 2.0) -> int:
    """ICMP echo requests from the host through the TAP; replies that match."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, tap.name.encode())
    ident = os.getpid() & 0xFFFF
    answered = 0
    try:
        for seq in range(count):
            data = bytes((seq + i) & 0xFF for i in range(size))
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            s.sendto(
                struct.pack("!BBHHH", 8, 0, _checksum(head + data), ident, seq) + data, (tap.guest_ip, 0)
            )
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                packet, (src, _) = s.recvfrom(65535)
                ihl = (packet[0] & 15) * 4
                icmp = packet[ihl:]
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if src == tap.guest_ip and kind == 0 and rid == ident and rseq == seq:
                    assert _checksum(icmp) == 0, "bad ICMP checksum in the reply"
                    assert _checksum(packet[:ihl]) == 0, "bad IP header checksum in the reply"
                    assert icmp[8:] == data, "the reply does not carry the request's data"
                    answered += 1
                    break
    finally:
        s.close()
    return answered


# -- net -----------------------------------------------------------------------


def test_net_answers_arp_and_ping_from_the_host(tap: Tap) -> None:
    with Guest(f"probe.test=net probe.n=4 probe.secs=30 {_ip_opts(tap)}", *_net_args(tap)) as guest:
        hello = guest.wait_line("net mac=")
        assert hello["mac"] == GUEST_MAC and hello["ip"] == tap.guest_ip, hello
        assert _ping(tap, 3) == 3, guest.output()
        assert _ping(tap, 1, size=1400) == 1, guest.output()
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    summary = run.line("icmp_replies")
    assert summary["icmp_replies"] == "4" and int(summary["arp_replies"]) >= 1, summary


def test_net_without_pings_fails_after_its_time(tap: Tap) -> None:
    with Guest(f"probe.test=net probe.secs=1 {_ip_opts(tap)}", *_net_args(tap)) as guest:
        run = guest.finish()
    assert run.status == 1 and run.line("result")["result"] == "fail", run.stdout + run.stderr
    assert run.line("icmp_replies")["icmp_replies"] == "0"


def test_netping_measures_round_trips_to_the_host(tap: Tap) -> None:
    with Guest(f"probe.test=netping probe.n=20 {_ip_opts(tap)}", *_net_args(tap)) as guest:
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    assert run.line("peer_mac")["peer_mac"].count(":") == 5
    ping = run.line("rtt_us_p50")
    assert ping["sent"] == "20" and ping["received"] == "20", ping
    assert 0 < int(ping["rtt_us_p50"]) <= int(ping["rtt_us_p99"]) <= int(ping["rtt_us_max"]), ping


@pytest.mark.parametrize(
    ("irq", "features", "frames", "size"),
    [("poll", "none", 3000, 1000), ("msix", "none", 3000, 1000), ("poll", "offload", 300, 60000)],
    ids=["poll", "msix", "offload"],
)
def test_netbench_sends_and_receives_udp(tap: Tap, irq: str, features: str, frames: int, size: int) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind((tap.host_ip, 9))
    sink.settimeout(0.2)
    got: list[int] = []

    def drain() -> None:
        n = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = sink.recv(65536)
            except socket.timeout:
                if n:
                    break
                continue
            assert len(data) == size
            n += 1
        got.append(n)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with Guest(
            f"probe.test=netbench probe.n={frames} probe.size={size} probe.secs=3 probe.irq={irq}"
            f" probe.features={features} {_ip_opts(tap)}",
            *_net_args(tap),
        ) as guest:
            guest.wait_line("rx=ready")
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(500):
                out.sendto(bytes([i & 0xFF]) * 512, (tap.guest_ip, 9000))
                if i % 50 == 49:
                    time.sleep(0.005)
            out.close()
            run = guest.finish()
    finally:
        reader.join()
        sink.close()
    assert _passed(run), run.stdout + run.stderr
    bench = run.line("tx_mbps")
    assert bench["tx_frames"] == str(frames) and int(bench["tx_mbps"]) > 0, bench
    assert 0 < int(bench["rx_frames"]) <= 500 and int(bench["rx_bytes"]) == 512 * int(bench["rx_frames"]), (
        bench
    )
    assert got and 0 < got[0] <= frames, got
    negotiated = int(bench["features"], 16)
    offloads = 1 << 0 | 1 << 1 | 1 << 14 | 1 << 15  # CSUM, GUEST_CSUM, HOST_UFO, MRG_RXBUF
    assert negotiated & offloads == (offloads if features == "offload" else 0), bench


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_nethostile_device_keeps_working_or_recovers(tap: Tap, irq: str) -> None:
    with Guest(f"probe.test=nethostile probe.irq={irq} {_ip_opts(tap)}", *_net_args(tap)) as guest:
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    cases = [f for f in run.lines() if "nethostile" in f and "case" in f]
    assert [c["case"] for c in cases] == ["oversized", "bad_hdr", "hdr_only", "short_hdr", "writable"]
    for case in cases:
        assert case["ok"] == "1" and case["good_tx"] == "1", case
        if case["needs_reset"] == "1":
            assert case["recovered"] == "1", case


def test_net_without_a_device_fails_cleanly() -> None:
    with Guest("probe.test=net probe.secs=1") as guest:
        run = guest.finish()
    assert run.status == 1 and "virtio-net" in run.line("error")["error"], run.stdout + run.stderr


# -- vsock ---------------------------------------------------------------------


def _uds(tmp_path: Path) -> str:
    path = str(tmp_path / "v.sock")
    assert len(path) + len("_65535") < 108, "unix socket path too long"
    return path


def _vsock_args(uds: str) -> list[str]:
    return ["--vsock", f"cid={VSOCK_CID},uds={uds}"]


def _connect(uds: str, port: int, timeout: float = 10) -> socket.socket:
    """Firecracker's handshake: CONNECT <port>, then OK <host port>."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        byte = s.recv(1)
        if not byte:
            s.close()
            raise ConnectionRefusedError(f"vsock port {port}: closed before OK ({line!r})")
        line += byte
    words = line.split()
    assert len(words) == 2 and words[0] == b"OK" and words[1].isdigit(), line
    return s


def _echo_through(s: socket.socket, data: bytes, chunk: int) -> bytes:
    """Write data and read the echo at the same time; returns what came back."""
    s.setblocking(False)
    back = bytearray()
    sent = 0
    deadline = time.monotonic() + 60
    while len(back) < len(data):
        assert time.monotonic() < deadline, f"echo stalled: sent {sent}, got {len(back)} of {len(data)}"
        readable, writable, _ = select.select([s], [s] if sent < len(data) else [], [], 1)
        if writable:
            sent += s.send(data[sent : sent + chunk])
        if readable:
            piece = s.recv(1 << 16)
            if not piece:
                break
            back += piece
    return bytes(back)


def _ping_pong(s: socket.socket, data: bytes, chunk: int) -> bytes:
    """Write one chunk, read its echo, then the next: never more than a chunk in flight."""
    back = bytearray()
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        s.sendall(piece)
        want = len(back) + len(piece)
        while len(back) < want:
            got = s.recv(want - len(back))
            if not got:
                return bytes(back)
            back += got
    return bytes(back)


def _echo_clients(uds: str, count: int, size: int, chunk: int, streaming: bool = True) -> list[bool]:
    results: list[bool] = []
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        try:
            data = bytes((seed * 31 + i * 7 + (i >> 9)) & 0xFF for i in range(size))
            with _connect(uds, 1234) as s:
                back = _echo_through(s, data, chunk) if streaming else _ping_pong(s, data, chunk)
                results.append(back == data)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    if errors:
        raise errors[0]
    return results


def test_vsock_echo_server_serves_several_connections_at_once(tmp_path: Path) -> None:
    uds = _uds(tmp_path)
    with Guest("probe.test=vsock probe.n=3 probe.secs=60", *_vsock_args(uds)) as guest:
        ready = guest.wait_line("listening")
        assert ready["cid"] == str(VSOCK_CID) and ready["port"] == "1234", ready
        # 1000 bytes at a time, each echoed before the next goes out.
        assert _echo_clients(uds, 3, 20000, 1000, streaming=False) == [True] * 3, guest.output()
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    done = run.line("served")
    assert done["served"] == "3" and done["bytes"] == str(3 * 20000) and done["errors"] == "0", done


def test_vsock_bulk_echo_keeps_to_the_credit(tmp_path: Path) -> None:
    """1 MiB each way on two connections, written in big pieces: the host side
    must split what it sends into the guest's 4 KiB buffers and pick up the
    credit the guest returns in its data packets."""
    uds = _uds(tmp_path)
    with Guest("probe.test=vsock probe.n=2 probe.secs=60", *_vsock_args(uds)) as guest:
        guest.wait_line("listening")
        assert _echo_clients(uds, 2, 1 << 20, 1 << 16) == [True] * 2, guest.output()
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    done = run.line("served")
    assert done["served"] == "2" and done["bytes"] == str(2 << 20) and done["errors"] == "0", done


def test_vsock_slow_reader_is_held_back_by_credit(tmp_path: Path) -> None:
    """The host writes 512 KiB without reading: the guest's echo stops when the
    host side's buffer is full and resumes once the host reads."""
    uds = _uds(tmp_path)
    size = 512 * 1024
    data = bytes((i * 13 + (i >> 10)) & 0xFF for i in range(size))
    with Guest("probe.test=vsock probe.n=1 probe.secs=60", *_vsock_args(uds)) as guest:
        guest.wait_line("listening")
        with _connect(uds, 1234) as s:
            failed: list[OSError] = []

            def write() -> None:
                try:
                    s.sendall(data)
                except OSError as e:
                    failed.append(e)

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(1.0)
            back = bytearray()
            while len(back) < size:
                piece = s.recv(1 << 16)
                assert piece, f"closed after {len(back)} bytes:\n{guest.output()}"
                back += piece
            writer.join(30)
        assert not failed and bytes(back) == data
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    assert run.line("served")["bytes"] == str(size)


def test_vsock_refuses_other_ports_and_extra_connections(tmp_path: Path) -> None:
    uds = _uds(tmp_path)
    with Guest("probe.test=vsock probe.n=1 probe.secs=60", *_vsock_args(uds)) as guest:
        guest.wait_line("listening")
        with pytest.raises(ConnectionRefusedError):
            _connect(uds, 4321).close()
        with _connect(uds, 1234) as s:
            # probe.n=1: a second connection to the port is one too many.
            with pytest.raises(ConnectionRefusedError):
                _connect(uds, 1234).close()
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        run = guest.finish()
    assert _passed(run), run.stdout + run.stderr
    done = run.line("served")
    assert done["served"] == "1" and done["bytes"] == "4" and done["refused"] == "2", done
    assert int(done["rst_sent"]) >= 3, done


class EchoHost:
    """A unix-socket echo server at PATH_<port>: where guest connections to the host go."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.connections: list[int] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        total = 0
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                conn.sendall(data)
                total += len(data)
        self.connections.append(total)

    def close(self) -> None:
        for t in self._threads:
            t.join(10)
        self.sock.close()


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_vsockclient_connects_to_the_host_and_checks_the_echo(tmp_path: Path, irq: str) -> None:
    uds = _uds(tmp_path)
    host = EchoHost(f"{uds}_5000")
    try:
        with Guest(
            f"probe.test=vsockclient probe.conns=3 probe.n=40 probe.size=1000 probe.irq={irq}",
            *_vsock_args(uds),
        ) as guest:
            run = guest.finish()
    finally:
        host.close()
    assert _passed(run), run.stdout + run.stderr
    client = run.line("rtt_us_p50")
    assert client["ok"] == "1" and client["bytes"] == str(3 * 40 * 1000), client
    assert client["messages"] == "120" and int(client["rtt_us_p50"]) > 0, client
    assert sorted(host.connections) == [40 * 1000] * 3


def test_vsockclient_to_a_port_nobody_listens_on_fails(tmp_path: Path) -> None:
    uds = _uds(tmp_path)
    with Guest("probe.test=vsockclient probe.port=5999 probe.n=1 probe.secs=10", *_vsock_args(uds)) as guest:
        run = guest.finish()
    assert run.status == 1 and run.line("result")["result"] == "fail", run.stdout + run.stderr
    client = run.line("rtt_us_p50")
    assert client["ok"] == "0" and client["conns_completed"] == "0", client
