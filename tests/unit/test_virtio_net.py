"""virtio-net through the MMIO transport with a datagram socket pair standing in
for the TAP (same frame boundaries, same readv/writev), no /dev/kvm."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from pyhv.backends.tap import VNET_HDR_SIZE, Tap
from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio.net import MAX_FRAME, RX, TX, Net
from pyhv.errors import UsageError
from pyhv.model import Nic, default_mac, nic_from_plain, options

from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

MAC = bytes.fromhex("525400123456")
FRAME = bytes.fromhex("ffffffffffff525400123456" "0806") + bytes(46)


class Pair:
    def __init__(self) -> None:
        self.guest_side, self.host_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.guest_side.setblocking(False)


@pytest.fixture
def pair() -> Pair:
    p = Pair()
    yield p
    p.host_side.close()


def _net(ram: FakeGuestRam, pair: Pair) -> tuple[Net, m.VirtioMmio, FakeDriver, FakeDriver]:
    tap = Tap(name="test0", fd=os.dup(pair.guest_side.fileno()))
    pair.guest_side.close()
    dev = Net(ram, tap, MAC)
    transport = m.VirtioMmio(dev, Line())
    rx = FakeDriver(ram, size=16, desc_addr=0x1000, avail_addr=0x2000, used_addr=0x3000, data_addr=0x10000)
    tx = FakeDriver(ram, size=16, desc_addr=0x4000, avail_addr=0x5000, used_addr=0x6000, data_addr=0x40000)
    _bring_up_two(transport, rx, tx)
    return dev, transport, rx, tx


def _bring_up_two(transport: m.VirtioMmio, rx: FakeDriver, tx: FakeDriver) -> None:
    bring_up_mmio(transport, [rx, tx])


def test_transmitted_frame_reaches_the_tap_with_its_header(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    dev, transport, _, tx = _net(ram, pair)
    tx.add_chain(readable=[bytes(VNET_HDR_SIZE), FRAME])
    transport.write(m.NOTIFY_OFFSET, 4, TX)
    assert pair.host_side.recv(4096) == bytes(VNET_HDR_SIZE) + FRAME and tx.used_idx() == 1


def test_frame_with_offload_bits_is_dropped_and_the_device_keeps_going(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    dev, transport, _, tx = _net(ram, pair)
    tx.add_chain(readable=[b"\x01" + bytes(VNET_HDR_SIZE - 1), FRAME])
    tx.add_chain(readable=[bytes(VNET_HDR_SIZE), FRAME])
    transport.write(m.NOTIFY_OFFSET, 4, TX)
    assert pair.host_side.recv(4096) == bytes(VNET_HDR_SIZE) + FRAME and (dev.tx_dropped, dev.tx_frames) == (1, 1)


def test_oversized_frame_is_dropped(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    dev, transport, _, tx = _net(ram, pair)
    tx.add_chain(readable=[bytes(VNET_HDR_SIZE), bytes(MAX_FRAME)])
    transport.write(m.NOTIFY_OFFSET, 4, TX)
    assert (dev.tx_dropped, tx.used_idx()) == (1, 1)


def test_received_frame_lands_in_a_posted_buffer_with_num_buffers_1(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    dev, transport, rx, _ = _net(ram, pair)
    head = rx.add_chain(writable=[2048])
    transport.write(m.NOTIFY_OFFSET, 4, RX)
    pair.host_side.send(bytes(VNET_HDR_SIZE) + FRAME)
    dev.tap_readable()
    addr, *_ = struct.unpack("<QIHH", ram.read(rx.desc_addr + 16 * head, 16))
    got = ram.read(addr, VNET_HDR_SIZE + len(FRAME))
    assert rx.used_elem(0) == (head, VNET_HDR_SIZE + len(FRAME)) and got[10:12] == b"\x01\x00" and got[12:] == FRAME


def test_receive_without_posted_buffers_leaves_the_frame_in_the_tap(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    dev, transport, rx, _ = _net(ram, pair)
    pair.host_side.send(bytes(VNET_HDR_SIZE) + FRAME)
    dev.tap_readable()
    head = rx.add_chain(writable=[2048])
    transport.write(m.NOTIFY_OFFSET, 4, RX)
    assert rx.used_idx() == 1 and rx.used_elem(0)[0] == head


def test_config_space_holds_the_mac_and_link_up(pair: Pair) -> None:
    ram = FakeGuestRam(1 << 20)
    _, transport, _, _ = _net(ram, pair)
    mac = bytes(transport.read(m.CONFIG + i, 1) for i in range(6))
    assert mac == MAC and transport.read(m.CONFIG + 6, 2) == 1


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
    assert (fd, nic) == (r, (f"fd{r}", "52:54:00:00:00:09", ""))


def test_net_spec_with_a_closed_fd_is_refused() -> None:
    with pytest.raises(UsageError, match="not open"):
        parse_net("fd=987")
