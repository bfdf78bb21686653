"""virtio-net through the MMIO transport with a scripted frame backend standing in
for the TAP and a fake I/O thread, no /dev/kvm; and the TAP's frame calls on a
datagram socket pair (same frame boundaries, same readv/writev)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.backends.interfaces import VNET_HDR_SIZE
from pyhv.backends.tap import Tap
from pyhv.devices.virtio import mmio as m
from pyhv.backends.interfaces import OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO
from pyhv.devices.virtio import net as n
from pyhv.devices.virtio.net import MAX_FRAME, MAX_GSO_FRAME, RX, TX, Net
from pyhv.devices.state import DeviceStateError
from pyhv.devices.virtio.queue import VIRTQ_USED_F_NO_NOTIFY
from pyhv.errors import UsageError
from pyhv.model import Nic, default_mac, nic_from_plain, options

from .backend_fakes import FakeIo, ScriptedFrames
from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

MAC = bytes.fromhex("525400123456")
FRAME = bytes.fromhex("ffffffffffff525400123456" "0806") + bytes(46)
HEADER = bytes(VNET_HDR_SIZE)
FUZZ_EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200"))


class Rig:
    def __init__(self, features: int = 1 << 32, can: int = 0) -> None:
        self.ram = FakeGuestRam(1 << 20)
        self.frames = ScriptedFrames()
        self.frames.can = can
        self.io = FakeIo()
        self.dev = Net(self.ram, self.frames, MAC, self.io)
        self.transport = m.VirtioMmio(self.dev, Line())
        self.rx = FakeDriver(self.ram, size=16, desc_addr=0x1000, avail_addr=0x2000, used_addr=0x3000, data_addr=0x10000)
        self.tx = FakeDriver(self.ram, size=16, desc_addr=0x4000, avail_addr=0x5000, used_addr=0x6000, data_addr=0x40000)
        bring_up_mmio(self.transport, [self.rx, self.tx], features)

    def kick(self, queue: int) -> None:
        self.transport.write(m.NOTIFY_OFFSET, 4, queue)

    def rx_buffer(self, head: int, length: int) -> bytes:
        addr, *_ = struct.unpack("<QIHH", self.ram.read(self.rx.desc_addr + 16 * head, 16))
        return self.ram.read(addr, length)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_transmitted_frame_reaches_the_backend_with_its_header(rig: Rig) -> None:
    rig.tx.add_chain(readable=[HEADER, FRAME])
    rig.kick(TX)
    assert rig.frames.sent == [HEADER + FRAME] and rig.tx.used_idx() == 1
    assert (rig.dev.tx_frames, rig.dev.tx_bytes) == (1, len(FRAME))


def test_frame_with_offload_bits_is_dropped_and_the_device_keeps_going(rig: Rig) -> None:
    rig.tx.add_chain(readable=[b"\x01" + bytes(VNET_HDR_SIZE - 1), FRAME])
    rig.tx.add_chain(readable=[HEADER, FRAME])
    rig.kick(TX)
    assert rig.frames.sent == [HEADER + FRAME] and (rig.dev.tx_dropped, rig.dev.tx_frames) == (1, 1)


def test_header_split_across_buffers_is_still_checked(rig: Rig) -> None:
    rig.tx.add_chain(readable=[b"\x00\x01", bytes(VNET_HDR_SIZE - 2) + FRAME])
    rig.kick(TX)
    assert rig.frames.sent == [] and rig.dev.tx_dropped == 1


def test_oversized_frame_is_dropped(rig: Rig) -> None:
    rig.tx.add_chain(readable=[HEADER, bytes(MAX_FRAME)])
    rig.kick(TX)
    assert (rig.dev.tx_dropped, rig.tx.used_idx(), rig.frames.sent) == (1, 1, [])


def test_frame_no_longer_than_its_header_is_dropped(rig: Rig) -> None:
    rig.tx.add_chain(readable=[HEADER])
    rig.kick(TX)
    assert (rig.dev.tx_dropped, rig.tx.used_idx(), rig.frames.sent) == (1, 1, [])


@pytest.mark.parametrize("error", [BlockingIOError(), OSError(errno.EIO, "I/O error")])
def test_backend_refusing_a_frame_drops_it_and_completes_the_request(rig: Rig, error: OSError) -> None:
    rig.frames.send_error = error
    rig.tx.add_chain(readable=[HEADER, FRAME])
    rig.kick(TX)
    assert (rig.dev.tx_dropped, rig.dev.tx_frames, rig.tx.used_idx()) == (1, 0, 1)
    assert not rig.dev.status & 0x40


def test_received_frame_lands_in_a_posted_buffer_with_num_buffers_1(rig: Rig) -> None:
    head = rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    got = rig.rx_buffer(head, VNET_HDR_SIZE + len(FRAME))
    assert rig.rx.used_elem(0) == (head, VNET_HDR_SIZE + len(FRAME)) and got[10:12] == b"\x01\x00" and got[12:] == FRAME
    assert (rig.dev.rx_frames, rig.dev.rx_bytes) == (1, len(FRAME))


def test_received_frame_gets_num_buffers_when_the_header_spans_buffers(rig: Rig) -> None:
    head = rig.rx.add_chain(writable=[8, 2048])
    rig.kick(RX)
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    addr, *_ = struct.unpack("<QIHH", rig.ram.read(rig.rx.desc_addr + 16 * (head + 1), 16))
    assert rig.rx.used_elem(0) == (head, VNET_HDR_SIZE + len(FRAME)) and rig.ram.read(addr, 4) == b"\x00\x00\x01\x00"


def test_receive_without_posted_buffers_leaves_the_frame_in_the_backend(rig: Rig) -> None:
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    head = rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    assert rig.rx.used_idx() == 1 and rig.rx.used_elem(0)[0] == head and not rig.frames.incoming


@pytest.mark.parametrize("frame", [b"\x00" * (VNET_HDR_SIZE - 1), OSError(errno.EIO, "I/O error")])
def test_short_or_failed_receive_uses_the_buffer_empty_and_counts_a_drop(rig: Rig, frame: bytes | OSError) -> None:
    head = rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.append(frame)
    rig.dev.backend_readable()
    assert rig.rx.used_elem(0) == (head, 0) and (rig.dev.rx_dropped, rig.dev.rx_frames) == (1, 0)


def test_backend_is_watched_while_receive_buffers_are_posted(rig: Rig) -> None:
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    watched = rig.frames.fd in rig.io.readers
    rig.frames.incoming.append(HEADER + FRAME)
    rig.io.run(rounds=1)
    assert watched and rig.rx.used_idx() == 1 and rig.frames.fd not in rig.io.readers


def test_kick_after_buffers_ran_out_watches_the_backend_again(rig: Rig) -> None:
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    unwatched = rig.frames.fd not in rig.io.readers
    rig.rx.add_chain(writable=[2048])
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    assert unwatched and rig.frames.fd in rig.io.readers


def test_device_reset_stops_watching_the_backend(rig: Rig) -> None:
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.transport.write(m.STATUS, 4, 0)
    assert rig.frames.fd not in rig.io.readers


def test_backend_readable_after_a_device_failure_reads_nothing(rig: Rig) -> None:
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.dev.fail("test")
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    assert rig.frames.incoming and rig.rx.used_idx() == 0


def test_receive_queue_asks_for_no_kicks_while_it_has_buffers_and_for_kicks_when_they_run_out(rig: Rig) -> None:
    rig.rx.add_chain(writable=[2048])
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    flags_with_buffers = rig.rx.used_flags()
    rig.frames.incoming.extend([HEADER + FRAME, HEADER + FRAME])
    rig.dev.backend_readable()
    assert (flags_with_buffers, rig.rx.used_flags(), rig.rx.used_idx()) == (VIRTQ_USED_F_NO_NOTIFY, 0, 2)


def test_a_reply_waiting_in_the_backend_when_the_guest_transmits_comes_in_with_the_pass(rig: Rig) -> None:
    head = rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.append(HEADER + FRAME)  # the host answered while taking the frame
    rig.tx.add_chain(readable=[HEADER + FRAME])
    rig.kick(TX)
    assert (rig.frames.sent, rig.rx.used_idx(), rig.rx.used_elem(0)) == (
        [HEADER + FRAME],
        1,
        (head, VNET_HDR_SIZE + len(FRAME)),
    )


def test_config_space_holds_the_mac_and_link_up(rig: Rig) -> None:
    mac = bytes(rig.transport.read(m.CONFIG + i, 1) for i in range(6))
    assert mac == MAC and rig.transport.read(m.CONFIG + 6, 2) == 1


def test_device_is_named_after_its_backend(rig: Rig) -> None:
    assert rig.dev.name == "virtio-net(fake0)"


# --- offloads ------------------------------------------------------------------------

ALL_OFFLOADS = OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_UFO
HOST_GSO = 1 << 32 | 1 << n.VIRTIO_NET_F_CSUM | 1 << n.VIRTIO_NET_F_HOST_TSO4 | 1 << n.VIRTIO_NET_F_HOST_UFO
GUEST_GSO = 1 << 32 | 1 << n.VIRTIO_NET_F_GUEST_CSUM | 1 << n.VIRTIO_NET_F_GUEST_TSO4 | 1 << n.VIRTIO_NET_F_MRG_RXBUF


def _hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, start: int = 0, offset: int = 0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, start, offset, 0)


def test_offloads_are_offered_only_when_the_backend_can_do_them() -> None:
    without, with_all = Rig().dev.device_features(), Rig(can=ALL_OFFLOADS).dev.device_features()
    offload_bits = HOST_GSO | GUEST_GSO | 1 << n.VIRTIO_NET_F_HOST_TSO6 | 1 << n.VIRTIO_NET_F_GUEST_TSO6
    offload_bits &= ~(1 << 32 | 1 << n.VIRTIO_NET_F_MRG_RXBUF)
    assert (without & offload_bits, with_all & offload_bits) == (0, offload_bits)


def test_backend_offloads_follow_the_guest_features_the_driver_accepted() -> None:
    rig = Rig(features=GUEST_GSO, can=ALL_OFFLOADS)
    rig.transport.write(m.STATUS, 4, 0)
    assert rig.frames.offload == [OFFLOAD_CSUM | OFFLOAD_TSO4, 0]


def test_tso_without_its_checksum_feature_is_refused_at_features_ok() -> None:
    rig = Rig(features=1 << 32 | 1 << n.VIRTIO_NET_F_HOST_TSO4, can=ALL_OFFLOADS)
    assert not rig.transport.read(m.STATUS, 4) & 8 and rig.frames.offload == []


def test_frame_asking_for_a_checksum_is_sent_with_its_header_when_csum_was_negotiated() -> None:
    rig = Rig(features=HOST_GSO, can=ALL_OFFLOADS)
    header = _hdr(flags=n.VIRTIO_NET_HDR_F_NEEDS_CSUM, start=34, offset=6)
    rig.tx.add_chain(readable=[header + FRAME])
    rig.kick(TX)
    assert (rig.frames.sent, rig.dev.tx_dropped) == ([header + FRAME], 0)


def test_gso_frame_of_64_kib_is_sent_when_host_tso4_was_negotiated() -> None:
    rig = Rig(features=HOST_GSO, can=ALL_OFFLOADS)
    frame = FRAME + bytes(MAX_GSO_FRAME - VNET_HDR_SIZE - len(FRAME))
    header = _hdr(n.VIRTIO_NET_HDR_F_NEEDS_CSUM, n.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    rig.tx.add_chain(readable=[header, frame])
    rig.kick(TX)
    assert (len(rig.frames.sent), rig.dev.tx_bytes, rig.dev.tx_dropped) == (1, len(frame), 0)


@pytest.mark.parametrize(
    ("features", "header", "length"),
    [
        (1 << 32, _hdr(flags=1, start=34, offset=6), len(FRAME)),  # CSUM not negotiated
        (HOST_GSO, _hdr(flags=2), len(FRAME)),  # DATA_VALID is for receive only
        (HOST_GSO, _hdr(flags=1, start=len(FRAME) - 6, offset=6), len(FRAME)),  # checksum past the end
        (HOST_GSO, _hdr(1, n.VIRTIO_NET_HDR_GSO_TCPV6, 54, 1448, 34, 16), len(FRAME)),  # TSO6 not negotiated
        (HOST_GSO, _hdr(1, 0x81, 54, 1448, 34, 16), len(FRAME)),  # ECN was not offered
        (HOST_GSO, _hdr(0, n.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16), len(FRAME)),  # GSO without NEEDS_CSUM
        (HOST_GSO, _hdr(1, n.VIRTIO_NET_HDR_GSO_TCPV4, 54, 0, 34, 16), len(FRAME)),  # gso_size 0
        (HOST_GSO, _hdr(1, n.VIRTIO_NET_HDR_GSO_TCPV4, 65000, 1448, 34, 16), len(FRAME)),  # hdr_len past the end
        (HOST_GSO, _hdr(flags=1, start=34, offset=6), MAX_FRAME),  # no GSO type: at most MAX_FRAME
        (HOST_GSO, _hdr(1, n.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16), MAX_GSO_FRAME - VNET_HDR_SIZE + 1),
    ],
    ids=["csum-not-negotiated", "data-valid", "csum-outside", "tso6", "ecn", "gso-no-csum", "gso-size-0",
         "hdr-len", "big-no-gso", "too-big-gso"],
)
def test_malformed_offload_header_drops_the_frame_and_the_device_keeps_going(
    features: int, header: bytes, length: int
) -> None:
    rig = Rig(features=features, can=ALL_OFFLOADS)
    rig.tx.add_chain(readable=[header, (FRAME + bytes(length))[:length]])
    rig.tx.add_chain(readable=[HEADER, FRAME])
    rig.kick(TX)
    assert (rig.frames.sent, rig.dev.tx_dropped, rig.tx.used_idx(), rig.dev.status & 0x40) == (
        [HEADER + FRAME],
        1,
        2,
        0,
    )


def test_mergeable_receive_spreads_a_large_frame_over_several_buffers() -> None:
    rig = Rig(features=GUEST_GSO, can=ALL_OFFLOADS)
    heads = [rig.rx.add_chain(writable=[2048]) for _ in range(4)]
    rig.kick(RX)
    frame = bytes(range(256)) * 24  # 6144 bytes: four 2048-byte buffers with the header
    rig.frames.incoming.append(HEADER + frame)
    rig.dev.backend_readable()
    got = b"".join(rig.rx_buffer(h, rig.rx.used_elem(i)[1]) for i, h in enumerate(heads))
    assert [rig.rx.used_elem(i) for i in range(4)] == [(heads[0], 2048), (heads[1], 2048), (heads[2], 2048), (heads[3], 12)]
    assert (got[10:12], got[12:], rig.dev.rx_frames) == (b"\x04\x00", frame, 1)


def test_mergeable_receive_with_too_few_buffers_drops_the_frame_and_keeps_the_rest_posted() -> None:
    rig = Rig(features=GUEST_GSO, can=ALL_OFFLOADS)
    first, second = rig.rx.add_chain(writable=[2048]), rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.append(HEADER + bytes(6000))
    rig.dev.backend_readable()
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    assert ([rig.rx.used_elem(0), rig.rx.used_elem(1)], rig.dev.rx_dropped, rig.dev.rx_frames) == (
        [(first, 0), (second, VNET_HDR_SIZE + len(FRAME))],
        1,
        1,
    )


def test_mergeable_receive_of_a_small_frame_uses_one_buffer() -> None:
    rig = Rig(features=GUEST_GSO, can=ALL_OFFLOADS)
    head = rig.rx.add_chain(writable=[2048])
    rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.append(HEADER + FRAME)
    rig.dev.backend_readable()
    assert (rig.rx.used_idx(), rig.rx.used_elem(0), rig.rx_buffer(head, 12)[10:12]) == (
        1,
        (head, VNET_HDR_SIZE + len(FRAME)),
        b"\x01\x00",
    )


def test_restored_device_switches_the_backend_to_the_offloads_the_guest_had_accepted() -> None:
    state = Rig(features=GUEST_GSO, can=ALL_OFFLOADS).dev.state()
    target = Rig(can=ALL_OFFLOADS)
    target.frames.offload.clear()
    target.dev.set_state(state)
    assert target.frames.offload[-1] == OFFLOAD_CSUM | OFFLOAD_TSO4  # after the reset's 0


def test_state_with_offloads_is_refused_by_a_device_whose_backend_cannot_do_them() -> None:
    state = Rig(features=GUEST_GSO, can=ALL_OFFLOADS).dev.state()
    with pytest.raises(DeviceStateError, match="never offered"):
        Rig().dev.set_state(state)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=10, max_size=10), st.integers(VNET_HDR_SIZE + 1, MAX_GSO_FRAME + 16), st.integers(0, 127))
def test_random_transmit_headers_never_escape_the_device(fields: bytes, length: int, features: int) -> None:
    chosen = 1 << 32 | 1 << n.VIRTIO_NET_F_CSUM | 1 << n.VIRTIO_NET_F_GUEST_CSUM  # what the others build on
    chosen |= sum(1 << bit for i, (bit, _, _) in enumerate(n._OFFLOAD_FEATURES) if features >> i & 1)
    rig = Rig(features=chosen, can=ALL_OFFLOADS)
    rig.tx.add_chain(readable=[fields + b"\0\0" + bytes(length - VNET_HDR_SIZE)])
    rig.kick(TX)
    assert rig.tx.used_idx() == 1 and rig.dev.tx_frames + rig.dev.tx_dropped == 1 and not rig.dev.status & 0x40


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.integers(1, 5000), min_size=1, max_size=3), min_size=1, max_size=16),
    st.lists(st.integers(0, MAX_GSO_FRAME + 100), min_size=1, max_size=6),
    st.booleans(),
)
def test_random_receive_buffers_and_frame_sizes_never_escape_the_device(
    chains: list[list[int]], sizes: list[int], mergeable: bool
) -> None:
    rig = Rig(features=GUEST_GSO if mergeable else 1 << 32, can=ALL_OFFLOADS)
    for writable in chains:
        rig.rx.add_chain(writable=writable)
    rig.kick(RX)
    rig.frames.incoming.extend(bytes(n) for n in sizes)
    rig.dev.backend_readable()
    assert rig.rx.used_idx() <= len(chains) and not rig.dev.status & 0x40
    assert rig.dev.rx_frames + rig.dev.rx_dropped + len(rig.frames.incoming) == len(sizes)


# --- the TAP's frame calls -----------------------------------------------------------


@pytest.fixture
def tap_pair() -> Iterator[tuple[Tap, socket.socket]]:
    guest_side, host_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    guest_side.setblocking(False)
    tap = Tap(name="test0", fd=os.dup(guest_side.fileno()))
    guest_side.close()
    yield tap, host_side
    tap.close()
    host_side.close()


def test_tap_sends_one_frame_gathered_from_its_views(tap_pair: tuple[Tap, socket.socket]) -> None:
    tap, host = tap_pair
    tap.send([memoryview(HEADER), memoryview(FRAME)])
    assert host.recv(4096) == HEADER + FRAME


def test_tap_receives_one_frame_scattered_into_its_views(tap_pair: tuple[Tap, socket.socket]) -> None:
    tap, host = tap_pair
    host.send(HEADER + FRAME)
    host.send(b"next frame")
    first, rest = bytearray(VNET_HDR_SIZE), bytearray(2048)
    n = tap.recv_into([memoryview(first), memoryview(rest)])
    assert n == VNET_HDR_SIZE + len(FRAME) and bytes(first) == HEADER and rest[: len(FRAME)] == FRAME


def test_tap_with_no_frame_waiting_raises_blocking_io_error(tap_pair: tuple[Tap, socket.socket]) -> None:
    tap, _ = tap_pair
    with pytest.raises(BlockingIOError):
        tap.recv_into([memoryview(bytearray(2048))])


def test_net_spec_parses_and_default_mac_is_stable() -> None:
    spec, _ = parse_net("tap=tap0,mac=52:54:00:aa:bb:cc,bridge=br0")
    assert (spec.tap, spec.mac, spec.bridge) == ("tap0", "52:54:00:aa:bb:cc", "br0")
    assert default_mac("tap0") == default_mac("tap0") and default_mac("tap0")[:3] == b"\x52\x54\x00"


@pytest.mark.parametrize("spec", ["", "tap=", "mac=52:54:00:00:00:01", "tap=t,mac=01:00:00:00:00:00", "tap=t,color=red", "tap=" + "x" * 16])
def test_bad_net_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_net(spec)


def parse_net(spec: str) -> tuple[Nic, int | None]:
    """``--net SPEC`` as ``pyhv run`` reads it, checked as the description checks a NIC."""
    plain, fd = options.net(spec)
    return nic_from_plain(plain, ("nics", 0)), fd


def test_net_spec_with_a_handed_over_fd_parses() -> None:
    r, w = os.pipe()
    nic, fd = parse_net(f"fd={r},mac=52:54:00:00:00:09")
    os.close(r)
    os.close(w)
    assert (fd, nic) == (r, Nic(f"fd{r}", "52:54:00:00:00:09", ""))


def test_net_spec_with_a_closed_fd_is_refused() -> None:
    with pytest.raises(UsageError, match="not open"):
        parse_net("fd=987")


class Timers:
    """A fake clock and the I/O thread's call_later: callbacks run when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, object]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: object) -> None:
        self.due.append((delay, fn))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due, self.due = self.due, []
        for _, fn in due:
            fn()  # type: ignore[operator]


def test_transmit_over_its_ops_limit_waits_for_the_bucket(rig: Rig) -> None:
    from pyhv.devices.ratelimit import RateLimiter, TokenBucket

    t = Timers()
    rig.dev.limit(TX, RateLimiter(ops=TokenBucket(2, 100, clock=t.clock)), t.call_later)
    for _ in range(3):
        rig.tx.add_chain(readable=[HEADER, FRAME])
    rig.kick(TX)
    at_once, delays = len(rig.frames.sent), [round(d, 3) for d, _ in t.due]
    t.advance(0.05)
    assert (at_once, delays, len(rig.frames.sent), rig.tx.used_idx()) == (2, [0.05], 3, 3)


def test_receive_over_its_bandwidth_limit_stops_watching_until_the_bucket_refills(rig: Rig) -> None:
    from pyhv.devices.ratelimit import RateLimiter, TokenBucket

    t = Timers()
    rig.dev.limit(RX, RateLimiter(bandwidth=TokenBucket(len(FRAME), 1000, clock=t.clock)), t.call_later)
    for _ in range(4):
        rig.rx.add_chain(writable=[2048])
    rig.kick(RX)
    rig.frames.incoming.extend([HEADER + FRAME, HEADER + FRAME])
    rig.io.run()
    first, watching = rig.rx.used_idx(), bool(rig.io.readers)
    t.advance(1.0)
    rig.io.run()
    assert (first, watching, rig.rx.used_idx(), rig.dev.rx_frames) == (1, False, 2, 2)
