"""The GDB remote protocol's framing and the stub's replies to scripted packets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyhv.debug import rsp, x86
from pyhv.debug.gdbstub import Session, parse_address
from pyhv.errors import UsageError


def test_checksum_is_the_byte_sum_modulo_256() -> None:
    assert rsp.checksum(b"OK") == 0x9A and rsp.frame(b"OK") == b"$OK#9a"


def test_reader_returns_a_packet_with_a_good_checksum() -> None:
    assert rsp.Reader().feed(b"$qC#b4") == [rsp.Packet(b"qC")]


def test_reader_reports_a_bad_checksum() -> None:
    (event,) = rsp.Reader().feed(b"$qC#00")
    assert isinstance(event, rsp.BadPacket) and "checksum" in event.reason


def test_reader_reports_non_hex_checksum_digits() -> None:
    (event,) = rsp.Reader().feed(b"$qC#zz")
    assert isinstance(event, rsp.BadPacket)


def test_reader_keeps_a_packet_split_across_feeds() -> None:
    reader = rsp.Reader()
    first = reader.feed(b"$q")
    assert first == [] and reader.feed(b"C#b4") == [rsp.Packet(b"qC")]


def test_reader_sees_acks_and_interrupt_between_packets() -> None:
    assert rsp.Reader().feed(b"+-\x03") == [rsp.Ack(True), rsp.Ack(False), rsp.Interrupt()]


def test_noise_between_packets_is_dropped() -> None:
    assert rsp.Reader().feed(b"garbage" + rsp.frame(b"g")) == [rsp.Packet(b"g")]


def test_escaped_bytes_are_restored() -> None:
    raw = b"X0,2:" + rsp.escape(b"#}")
    assert rsp.Reader().feed(rsp.frame(raw)) == [rsp.Packet(b"X0,2:#}")]


def test_run_length_expands_to_count_minus_29_copies() -> None:
    assert rsp.decode(b"0* ") == b"0" * 4  # ' ' is 32: 3 more copies


def test_dangling_escape_is_a_bad_packet() -> None:
    (event,) = rsp.Reader().feed(rsp.frame(b"abc}"))
    assert isinstance(event, rsp.BadPacket)


def test_run_without_a_byte_before_is_a_bad_packet() -> None:
    (event,) = rsp.Reader().feed(rsp.frame(b"*!"))
    assert isinstance(event, rsp.BadPacket)


def test_overlong_packet_is_refused() -> None:
    events = rsp.Reader().feed(b"$" + b"a" * (rsp.PACKET_SIZE + 10) + b"#00")
    assert isinstance(events[0], rsp.BadPacket)


def test_dollar_inside_a_packet_starts_over() -> None:
    events = rsp.Reader().feed(b"$ab$" + rsp.frame(b"g")[1:])
    assert isinstance(events[0], rsp.BadPacket) and events[1] == rsp.Packet(b"g")


@given(st.binary(max_size=300))
def test_escape_then_decode_gives_the_data_back(data: bytes) -> None:
    assert rsp.decode(rsp.escape(data)) == data


@given(st.binary(max_size=600))
def test_reader_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    rsp.Reader().feed(data)


def test_target_description_numbers_registers_in_order() -> None:
    xml = x86.target_xml()
    assert '<reg name="rip" bitsize="64" type="code_ptr" regnum="16"/>' in xml and 'name="efer"' in xml


def test_gdb_addresses_parse_unix_tcp_and_wait() -> None:
    assert (parse_address("unix:/tmp/g.sock"), parse_address("tcp:127.0.0.1:1234,wait")) == (
        ("unix", "/tmp/g.sock", False), ("tcp", ("127.0.0.1", 1234), True),
    )


@pytest.mark.parametrize("spec", ["tcp:1234", "udp:x:1", "unix:", "unix:/x,now"])
def test_bad_gdb_address_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_address(spec)


class _Conn:
    def __init__(self) -> None:
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data


class _Target:
    """Enough of a DebugTarget for packets that need no machine."""

    vcpus: list[object] = [object(), object()]

    def read_memory(self, vcpu: int, va: int, size: int) -> bytes:
        raise ValueError("unused")


def _session() -> tuple[Session, _Conn]:
    conn = _Conn()
    return Session(conn, _Target(), lambda: None), conn  # type: ignore[arg-type]


def test_session_acks_a_packet_and_lists_one_thread_per_vcpu() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"qfThreadInfo"))
    assert bytes(conn.sent) == b"+" + rsp.frame(b"m1,2")


def test_session_naks_a_bad_checksum() -> None:
    session, conn = _session()
    session.on_bytes(b"$g#00")
    assert bytes(conn.sent) == b"-"


def test_session_answers_a_malformed_memory_read_with_an_error() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"mzz,4"))
    assert bytes(conn.sent) == b"+" + rsp.frame(b"E01")


def test_session_answers_an_unknown_thread_with_an_error() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"T9"))
    assert bytes(conn.sent) == b"+" + rsp.frame(b"E01")


def test_session_answers_unknown_packets_empty() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"vMustReplyEmpty"))
    assert bytes(conn.sent) == b"+" + rsp.frame(b"")


def test_session_stops_acking_after_no_ack_mode() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"QStartNoAckMode") + rsp.frame(b"qsThreadInfo"))
    assert bytes(conn.sent) == b"+" + rsp.frame(b"OK") + rsp.frame(b"l")


def test_session_resends_the_last_reply_on_a_nak() -> None:
    session, conn = _session()
    session.on_bytes(rsp.frame(b"qsThreadInfo") + b"-")
    assert bytes(conn.sent) == b"+" + rsp.frame(b"l") * 2
