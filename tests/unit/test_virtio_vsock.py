"""virtio-vsock with real unix sockets on the host side and a fake driver on the guest
side; the I/O thread is replaced by calling the watched callbacks by hand."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio import vsock as vsock_module
from pyhv.devices.virtio.vsock import (
    HEADER,
    HOST_CID,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_RW,
    RX,
    TX,
    TYPE_STREAM,
    Vsock,
)

from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

CID = 3


class Loop:
    """Stands in for the I/O thread: remembers watches, runs them on demand."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, on_read: Callable[[], None] | None, on_write: Callable[[], None] | None) -> None:
        if on_read:
            self.readers[fd] = on_read
        else:
            self.readers.pop(fd, None)

    def run(self) -> None:
        for _ in range(4):
            for cb in list(self.readers.values()):
                cb()


class Guest:
    def __init__(self, tmp_path: Path) -> None:
        self.ram = FakeGuestRam(1 << 20)
        self.loop = Loop()
        self.dev = Vsock(self.ram, CID, str(tmp_path / "v.sock"))
        self.dev.watch = self.loop.watch
        self.dev.listen()
        self.t = m.VirtioMmio(self.dev, Line())
        self.rx = FakeDriver(self.ram, size=16, desc_addr=0x1000, avail_addr=0x2000, used_addr=0x3000, data_addr=0x10000)
        self.tx = FakeDriver(self.ram, size=16, desc_addr=0x4000, avail_addr=0x5000, used_addr=0x6000, data_addr=0x40000)
        ev = FakeDriver(self.ram, size=16, desc_addr=0x7000, avail_addr=0x8000, used_addr=0x9000, data_addr=0x70000)
        bring_up_mmio(self.t, [self.rx, self.tx, ev])
        self.heads: list[int] = []
        self.seen = 0

    def post_rx(self, n: int = 4) -> None:
        for _ in range(n):
            self.heads.append(self.rx.add_chain(writable=[4096]))
        self.t.write(m.NOTIFY_OFFSET, 4, RX)

    def received(self) -> list[tuple[tuple[int, ...], bytes]]:
        out = []
        while self.seen < self.rx.used_idx():
            head, length = self.rx.used_elem(self.seen)
            addr = struct.unpack("<QIHH", self.ram.read(self.rx.desc_addr + 16 * head, 16))[0]
            data = self.ram.read(addr, length)
            out.append((HEADER.unpack_from(data), data[HEADER.size :]))
            self.seen += 1
        return out

    def send(self, op: int, src_port: int, dst_port: int, payload: bytes = b"", src_cid: int = CID) -> None:
        header = HEADER.pack(src_cid, HOST_CID, src_port, dst_port, len(payload), TYPE_STREAM, op, 0, 65536, 0)
        self.tx.add_chain(readable=[header + payload])
        self.t.write(m.NOTIFY_OFFSET, 4, TX)


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    g = Guest(tmp_path)
    yield g
    g.dev.close()


def _host_connect(guest: Guest, port: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(guest.dev.uds)
    s.sendall(f"CONNECT {port}\n".encode())
    s.settimeout(2)
    guest.loop.run()
    return s


def test_host_connect_becomes_a_request_to_the_guest_port(guest: Guest) -> None:
    guest.post_rx()
    _host_connect(guest, 1234)
    (header, _), = guest.received()
    assert (header[0], header[1], header[3], header[6]) == (HOST_CID, CID, 1234, OP_REQUEST)


def test_guest_response_answers_ok_and_data_flows_both_ways(guest: Guest) -> None:
    guest.post_rx(8)
    host = _host_connect(guest, 1234)
    (request, _), = guest.received()
    host_port = request[2]
    guest.send(OP_RESPONSE, 1234, host_port)
    ok = host.recv(64)
    host.sendall(b"ping")
    guest.loop.run()
    (rw, payload), = guest.received()
    guest.send(OP_RW, 1234, host_port, b"pong")
    assert ok == f"OK {host_port}\n".encode() and (rw[6], payload) == (OP_RW, b"ping") and host.recv(64) == b"pong"


def test_guest_connect_reaches_the_host_socket_named_after_the_port(guest: Guest, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "v.sock_5000"))
    listener.listen(1)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    peer, _ = listener.accept()
    guest.send(OP_RW, 40000, 5000, b"hello")
    (response, _), = guest.received()
    assert response[6] == OP_RESPONSE and peer.recv(64) == b"hello"


def test_guest_connect_to_a_port_nobody_listens_on_is_reset(guest: Guest) -> None:
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5001)
    (header, _), = guest.received()
    assert header[6] == OP_RST


def test_packet_with_a_foreign_source_cid_is_ignored_and_counted(guest: Guest) -> None:
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000, src_cid=99)
    assert guest.dev.bad_packets == 1 and guest.received() == [] and not guest.dev.status & 0x40


def test_host_closing_tells_the_guest(guest: Guest) -> None:
    guest.post_rx(8)
    host = _host_connect(guest, 1234)
    (request, _), = guest.received()
    guest.send(OP_RESPONSE, 1234, request[2])
    host.recv(64)
    host.close()
    guest.loop.run()
    assert [h[6] for h, _ in guest.received()] == [4]  # SHUTDOWN


def test_garbage_instead_of_connect_closes_the_host_socket(guest: Guest) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(guest.dev.uds)
    s.sendall(b"HELLO\n")
    s.settimeout(2)
    guest.loop.run()
    assert s.recv(64) == b"" and guest.dev.conns == {}


def test_data_larger_than_a_receive_buffer_is_split_with_matching_lengths(guest: Guest) -> None:
    for _ in range(4):
        guest.heads.append(guest.rx.add_chain(writable=[HEADER.size + 1000]))
    guest.t.write(m.NOTIFY_OFFSET, 4, RX)
    host = _host_connect(guest, 1234)
    (request, _), = guest.received()
    guest.send(OP_RESPONSE, 1234, request[2])
    host.recv(64)
    host.sendall(bytes(2500))
    guest.loop.run()
    packets = guest.received()
    assert [(h[4], len(p)) for h, p in packets] == [(1000, 1000), (1000, 1000), (500, 500)]


def test_control_replies_a_guest_never_takes_are_capped(guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vsock_module, "MAX_PENDING_CONTROL", 2)
    for port in range(5001, 5005):  # nobody listens: each asks for a reset, no receive buffer takes it
        guest.send(OP_REQUEST, 40000, port)
    assert len(guest.dev.pending) == 2 and guest.dev.dropped_control == 2
    guest.post_rx()
    assert [h[6] for h, _ in guest.received()] == [OP_RST, OP_RST]


def test_a_second_request_on_the_same_ports_replaces_the_first_connection(guest: Guest, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "v.sock_5000"))
    listener.listen(2)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    first, _ = listener.accept()
    guest.send(OP_REQUEST, 40000, 5000)
    second, _ = listener.accept()
    first.settimeout(2)
    assert first.recv(64) == b""  # the host socket of the first is closed, not leaked
    assert len(guest.dev.conns) == 1
    second.close()
    first.close()
