"""virtio-vsock's protocol with a fake driver on the guest side and a scripted vsock
host (streams of bytes, no sockets) on the other; the I/O thread is a fake that
runs the watched callbacks on demand.  The unix-socket host is in test_vsock_uds.py."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio import vsock as vsock_module
from pyhv.devices.virtio.queue import VIRTQ_USED_F_NO_NOTIFY
from pyhv.devices.virtio.vsock import (
    BUF_ALLOC,
    HEADER,
    HOST_CID,
    OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_RW,
    OP_SHUTDOWN,
    RX,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    TX,
    TYPE_STREAM,
    Vsock,
)

from .backend_fakes import FakeIo, FakeVsockHost, ScriptedStream
from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

CID = 3
GUEST_PORT = 1234
Packet = tuple[tuple[int, ...], bytes]


class Guest:
    def __init__(self) -> None:
        self.ram = FakeGuestRam(1 << 20)
        self.io = FakeIo()
        self.host = FakeVsockHost()
        self.dev = Vsock(self.ram, CID, self.host, self.io)
        self.t = m.VirtioMmio(self.dev, Line())
        self.rx = FakeDriver(self.ram, size=16, desc_addr=0x1000, avail_addr=0x2000, used_addr=0x3000, data_addr=0x10000)
        self.tx = FakeDriver(self.ram, size=16, desc_addr=0x4000, avail_addr=0x5000, used_addr=0x6000, data_addr=0x40000)
        ev = FakeDriver(self.ram, size=16, desc_addr=0x7000, avail_addr=0x8000, used_addr=0x9000, data_addr=0x70000)
        bring_up_mmio(self.t, [self.rx, self.tx, ev])
        self.seen = 0

    def post_rx(self, n: int = 4, size: int = 4096) -> None:
        for _ in range(n):
            self.rx.add_chain(writable=[size])
        self.t.write(m.NOTIFY_OFFSET, 4, RX)

    def received(self) -> list[Packet]:
        out = []
        while self.seen < self.rx.used_idx():
            head, length = self.rx.used_elem(self.seen)
            addr = struct.unpack("<QIHH", self.ram.read(self.rx.desc_addr + 16 * head, 16))[0]
            data = self.ram.read(addr, length)
            out.append((HEADER.unpack_from(data), data[HEADER.size :]))
            self.seen += 1
        return out

    def ops(self) -> list[int]:
        return [h[6] for h, _ in self.received()]

    def send(
        self, op: int, src_port: int, dst_port: int, payload: bytes = b"", src_cid: int = CID, flags: int = 0,
        buf_alloc: int = 65536, fwd_cnt: int = 0,
    ) -> None:
        header = HEADER.pack(src_cid, HOST_CID, src_port, dst_port, len(payload), TYPE_STREAM, op, flags, buf_alloc, fwd_cnt)
        self.tx.add_chain(readable=[header + payload])
        self.t.write(m.NOTIFY_OFFSET, 4, TX)

    def accepted(self, early: bytes = b"", buf_alloc: int = 65536) -> tuple[ScriptedStream, int]:
        """A host program connects to GUEST_PORT and the guest accepts: its stream and host port."""
        stream = self.host.host_connects(GUEST_PORT, early)
        (request, _), = self.received()
        self.send(OP_RESPONSE, GUEST_PORT, request[2], buf_alloc=buf_alloc)
        return stream, request[2]


@pytest.fixture
def guest() -> Guest:
    return Guest()


# --- connections the host opens ------------------------------------------------------


def test_host_connect_becomes_a_request_to_the_guest_port(guest: Guest) -> None:
    guest.post_rx()
    guest.host.host_connects(GUEST_PORT)
    (header, _), = guest.received()
    assert (header[0], header[1], header[3], header[6]) == (HOST_CID, CID, GUEST_PORT, OP_REQUEST)


def test_host_connects_get_distinct_host_ports(guest: Guest) -> None:
    guest.post_rx()
    guest.host.host_connects(GUEST_PORT)
    guest.host.host_connects(GUEST_PORT)
    first, second = (h[2] for h, _ in guest.received())
    assert first != second and first >= vsock_module.FIRST_HOST_PORT


def test_guest_response_confirms_to_the_host_and_data_flows_both_ways(guest: Guest) -> None:
    guest.post_rx(8)
    stream, host_port = guest.accepted()
    stream.incoming.append(b"ping")
    guest.io.run()
    (rw, payload), = guest.received()
    guest.send(OP_RW, GUEST_PORT, host_port, b"pong")
    assert stream.confirmed == host_port and (rw[6], payload) == (OP_RW, b"ping") and stream.received == b"pong"


def test_bytes_the_host_sent_before_the_guest_accepted_follow_the_response(guest: Guest) -> None:
    guest.post_rx(8)
    _, host_port = guest.accepted(early=b"early")
    (rw, payload), = guest.received()
    assert (rw[2], rw[6], payload) == (host_port, OP_RW, b"early")


def test_host_stream_is_not_read_before_the_guest_accepts(guest: Guest) -> None:
    guest.post_rx()
    stream = guest.host.host_connects(GUEST_PORT)
    stream.incoming.append(b"too soon")
    guest.io.run()
    assert guest.ops() == [OP_REQUEST] and list(stream.incoming) == [b"too soon"]


def test_host_end_gone_when_confirming_resets_the_guest(guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    guest.post_rx(8)
    stream = guest.host.host_connects(GUEST_PORT)
    (request, _), = guest.received()
    monkeypatch.setattr(stream, "confirm", _raise_broken_pipe)
    guest.send(OP_RESPONSE, GUEST_PORT, request[2])
    assert guest.ops() == [OP_RST] and stream.closed and guest.dev.conns == {}


def _raise_broken_pipe(host_port: int) -> None:
    raise BrokenPipeError


def test_host_closing_tells_the_guest(guest: Guest) -> None:
    guest.post_rx(8)
    stream, _ = guest.accepted()
    stream.incoming.append(b"")
    guest.io.run()
    (header, _), = guest.received()
    assert (header[6], header[7]) == (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    assert stream.fileno() not in guest.io.readers


# --- connections the guest opens -----------------------------------------------------


def test_guest_connect_reaches_the_host_port_and_gets_a_response(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    guest.send(OP_RW, 40000, 5000, b"hello")
    (response, _), = guest.received()
    (stream,) = guest.host.connected[5000]
    assert (response[2], response[3], response[6]) == (5000, 40000, OP_RESPONSE) and stream.received == b"hello"


def test_guest_connect_to_a_port_nobody_listens_on_is_reset(guest: Guest) -> None:
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5001)
    (header, _), = guest.received()
    assert (header[2], header[3], header[6]) == (5001, 40000, OP_RST) and guest.dev.conns == {}


def test_a_second_request_on_the_same_ports_replaces_the_first_connection(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    guest.send(OP_REQUEST, 40000, 5000)
    first, second = guest.host.connected[5000]
    assert first.closed and not second.closed and list(guest.dev.conns) == [(5000, 40000)]


def test_guest_shutdown_of_sending_shuts_the_host_stream_for_writing(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.send(OP_REQUEST, 40000, 5000)
    guest.send(OP_SHUTDOWN, 40000, 5000, flags=SHUTDOWN_SEND)
    (stream,) = guest.host.connected[5000]
    assert stream.write_shut and not stream.closed


def test_guest_shutdown_of_both_directions_closes_the_host_stream_with_a_reset(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    guest.send(OP_SHUTDOWN, 40000, 5000, flags=SHUTDOWN_SEND | SHUTDOWN_RCV)
    (stream,) = guest.host.connected[5000]
    assert stream.closed and guest.ops() == [OP_RESPONSE, OP_RST] and guest.dev.conns == {}


def test_guest_reset_closes_the_host_stream_without_an_answer(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000)
    guest.send(OP_RST, 40000, 5000)
    (stream,) = guest.host.connected[5000]
    assert stream.closed and guest.ops() == [OP_RESPONSE] and stream.fileno() not in guest.io.readers


def test_device_reset_closes_every_host_stream(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.send(OP_REQUEST, 40000, 5000)
    guest.t.write(m.STATUS, 4, 0)
    (stream,) = guest.host.connected[5000]
    assert stream.closed and guest.dev.conns == {} and not guest.dev.pending


# --- flow control ------------------------------------------------------------------------


def test_data_larger_than_a_receive_buffer_is_split_with_matching_lengths(guest: Guest) -> None:
    guest.post_rx(4, size=HEADER.size + 1000)
    stream, _ = guest.accepted()
    stream.incoming.append(bytes(2500))
    guest.io.run()
    packets = guest.received()
    assert [(h[4], len(p)) for h, p in packets] == [(1000, 1000), (1000, 1000), (500, 500)]


def test_host_is_read_no_further_than_the_guest_credit(guest: Guest) -> None:
    guest.post_rx(8)
    stream, _ = guest.accepted(buf_alloc=100)
    stream.incoming.append(bytes(300))
    guest.io.run()
    packets = guest.received()
    assert [(h[6], len(p)) for h, p in packets] == [(OP_RW, 100), (OP_CREDIT_REQUEST, 0)]
    assert stream.fileno() not in guest.io.readers and len(stream.incoming[0]) == 200


def test_credit_update_from_the_guest_resumes_host_reads(guest: Guest) -> None:
    guest.post_rx(8)
    stream, host_port = guest.accepted(buf_alloc=100)
    stream.incoming.append(bytes(150))
    guest.io.run()
    guest.received()
    guest.send(OP_CREDIT_UPDATE, GUEST_PORT, host_port, buf_alloc=100, fwd_cnt=100)
    guest.io.run()
    assert [(h[6], len(p)) for h, p in guest.received()] == [(OP_RW, 50)] and not stream.incoming


def test_credit_request_from_the_guest_is_answered_with_the_host_fwd_cnt(guest: Guest) -> None:
    guest.post_rx(8)
    _, host_port = guest.accepted()
    guest.send(OP_RW, GUEST_PORT, host_port, b"abc")
    guest.send(OP_CREDIT_REQUEST, GUEST_PORT, host_port)
    (header, _), = guest.received()
    assert (header[6], header[8], header[9]) == (OP_CREDIT_UPDATE, BUF_ALLOC, 3)


def test_bytes_the_host_cannot_take_yet_wait_for_it_to_be_writable(guest: Guest) -> None:
    guest.post_rx(8)
    stream, host_port = guest.accepted()
    stream.room = 2
    guest.send(OP_RW, GUEST_PORT, host_port, b"hello")
    waiting = stream.fileno() in guest.io.writers
    stream.room = 100
    guest.io.run()
    assert waiting and stream.received == b"hello" and stream.fileno() not in guest.io.writers


def test_host_taking_a_quarter_of_the_buffer_sends_a_credit_update(guest: Guest) -> None:
    guest.post_rx(8)
    _, host_port = guest.accepted()
    for _ in range(BUF_ALLOC // 4 // 32768):
        guest.send(OP_RW, GUEST_PORT, host_port, bytes(32768))
    (header, _), = guest.received()
    assert (header[6], header[9]) == (OP_CREDIT_UPDATE, BUF_ALLOC // 4)


def test_guest_sending_past_its_credit_is_reset_and_counted(guest: Guest) -> None:
    guest.post_rx(8)
    stream, host_port = guest.accepted()
    stream.room = 0
    for _ in range(BUF_ALLOC // 32768 + 1):
        guest.send(OP_RW, GUEST_PORT, host_port, bytes(32768))
    assert guest.ops() == [OP_RST] and stream.closed and guest.dev.bad_packets == 1 and not guest.dev.status & 0x40


# --- a hostile guest ---------------------------------------------------------------------


def test_packet_with_a_foreign_source_cid_is_ignored_and_counted(guest: Guest) -> None:
    guest.host.listening.add(5000)
    guest.post_rx()
    guest.send(OP_REQUEST, 40000, 5000, src_cid=99)
    assert guest.dev.bad_packets == 1 and guest.received() == [] and not guest.dev.status & 0x40


def test_packet_for_no_connection_is_reset(guest: Guest) -> None:
    guest.post_rx()
    guest.send(OP_RW, 40000, 5000, b"stray")
    assert guest.ops() == [OP_RST]


def test_reset_for_no_connection_is_not_answered(guest: Guest) -> None:
    guest.post_rx()
    guest.send(OP_RST, 40000, 5000)
    assert guest.received() == []


def test_control_replies_a_guest_never_takes_are_capped(guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vsock_module, "MAX_PENDING_CONTROL", 2)
    for port in range(5001, 5005):  # nobody listens: each asks for a reset, no receive buffer takes it
        guest.send(OP_REQUEST, 40000, port)
    assert len(guest.dev.pending) == 2 and guest.dev.dropped_control == 2
    guest.post_rx()
    assert guest.ops() == [OP_RST, OP_RST]


def test_receive_buffer_too_small_for_a_header_is_returned_empty(guest: Guest) -> None:
    guest.post_rx(1, size=HEADER.size - 1)
    guest.send(OP_REQUEST, 40000, 5001)
    _, written = guest.rx.used_elem(0)
    guest.seen = 1
    guest.post_rx(1)
    assert written == 0 and guest.dev.bad_packets == 1 and guest.ops() == [OP_RST]


# --- batching ---------------------------------------------------------------------------


def test_bulk_host_data_fills_several_receive_buffers_in_few_reads(guest: Guest) -> None:
    guest.post_rx(8)
    stream, _ = guest.accepted()
    data = bytes(range(256)) * 80  # 20480 bytes: six 4096-byte buffers (44-byte header each)
    stream.incoming.append(data)
    guest.io.run(rounds=1)
    packets = guest.received()
    assert b"".join(p for _, p in packets) == data and {h[6] for h, _ in packets} == {OP_RW}
    assert [h[4] for h, _ in packets] == [len(p) for _, p in packets] and len(packets) == 6
    assert stream.reads <= 3, stream.reads  # 1, 2, then 4 chains offered


def test_host_reads_stop_at_the_guest_credit(guest: Guest) -> None:
    guest.post_rx(8)
    stream, _ = guest.accepted(buf_alloc=5000)
    stream.incoming.append(bytes(20000))
    guest.io.run(rounds=1)
    assert sum(len(p) for _, p in guest.received()) == 5000


def test_short_host_message_takes_one_buffer_and_leaves_the_rest_posted(guest: Guest) -> None:
    guest.post_rx(4)
    stream, _ = guest.accepted()
    stream.incoming.append(b"hello")
    guest.io.run(rounds=1)
    stream.incoming.append(b"again")
    guest.io.run(rounds=1)
    assert [p for _, p in guest.received()] == [b"hello", b"again"] and guest.rx.used_idx() == 3


def test_host_end_of_stream_becomes_a_shutdown_in_the_next_posted_buffer(guest: Guest) -> None:
    guest.post_rx(4)
    stream, _ = guest.accepted()
    stream.incoming.append(b"")
    guest.io.run(rounds=1)
    (header, payload), = guest.received()
    assert (header[6], header[7], payload) == (OP_SHUTDOWN, 3, b"")


def test_guest_packets_of_one_pass_reach_the_host_in_one_send(guest: Guest) -> None:
    guest.post_rx()
    stream, host_port = guest.accepted()
    for i in range(5):
        header = HEADER.pack(CID, HOST_CID, GUEST_PORT, host_port, 3, TYPE_STREAM, OP_RW, 0, 65536, 0)
        guest.tx.add_chain(readable=[header, b"%03d" % i])
    guest.t.write(m.NOTIFY_OFFSET, 4, TX)
    assert (bytes(stream.received), stream.sends) == (b"000001002003004", 1)


def test_guest_data_before_its_shutdown_reaches_the_host_first(guest: Guest) -> None:
    guest.post_rx()
    stream, host_port = guest.accepted()
    rw = HEADER.pack(CID, HOST_CID, GUEST_PORT, host_port, 4, TYPE_STREAM, OP_RW, 0, 65536, 0)
    shut = HEADER.pack(CID, HOST_CID, GUEST_PORT, host_port, 0, TYPE_STREAM, OP_SHUTDOWN, 2, 65536, 0)
    guest.tx.add_chain(readable=[rw + b"last"])
    guest.tx.add_chain(readable=[shut])
    guest.t.write(m.NOTIFY_OFFSET, 4, TX)
    assert (bytes(stream.received), stream.write_shut_at) == (b"last", 4)


@settings(max_examples=int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(1, 6000), min_size=1, max_size=8),  # receive buffer sizes
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3), st.binary(max_size=300)), max_size=6),  # op, flags, data
    st.binary(max_size=30000),  # what the host sends
)
def test_random_buffers_and_packets_never_escape_the_device(
    rx_sizes: list[int], packets: list[tuple[int, int, bytes]], host_data: bytes
) -> None:
    guest = Guest()
    for size in rx_sizes:
        guest.rx.add_chain(writable=[size])
    guest.t.write(m.NOTIFY_OFFSET, 4, RX)
    stream = guest.host.host_connects(GUEST_PORT)
    guest.send(OP_RESPONSE, GUEST_PORT, vsock_module.FIRST_HOST_PORT)
    stream.incoming.append(host_data)
    guest.io.run(rounds=2)
    for op, flags, data in packets:
        guest.send(op, GUEST_PORT, vsock_module.FIRST_HOST_PORT, data, flags=flags)
    guest.io.run(rounds=2)
    got = guest.rx.used_idx()
    assert got <= len(rx_sizes) and guest.dev.failure is None


def test_receive_queue_asks_for_no_kicks_while_buffers_last_and_for_kicks_when_a_packet_waits(guest: Guest) -> None:
    guest.post_rx(2)
    stream, _ = guest.accepted()  # the request took the first buffer
    flags_with_a_buffer = guest.rx.used_flags()
    stream.incoming.append(b"one")
    guest.io.run(rounds=1)  # takes the last buffer
    stream.incoming.append(b"two")
    guest.io.run(rounds=1)  # waits: nowhere to put it
    waiting_flags = guest.rx.used_flags()
    guest.post_rx(1)
    assert (flags_with_a_buffer, waiting_flags) == (VIRTQ_USED_F_NO_NOTIFY, 0)
    assert [p for _, p in guest.received()] == [b"one", b"two"]
