"""virtio-blk and virtio-rng driven through the virtio-mmio transport, with a
fake driver laying out the rings in fake guest memory (no /dev/kvm)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from pyhv.backends.block import RawDisk
from pyhv.devices.virtio import blk as b
from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio.device import STATUS_DEVICE_NEEDS_RESET, USED_BATCH, VirtioDevice
from pyhv.devices.virtio.queue import VIRTIO_F_VERSION_1
from pyhv.devices.virtio.rng import Rng

from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

MiB = 1 << 20


class Line:
    def __init__(self) -> None:
        self.level = False

    def __call__(self, level: bool) -> None:
        self.level = level


def _bring_up(transport: m.VirtioMmio, driver: FakeDriver, features: int = 1 << VIRTIO_F_VERSION_1) -> None:
    bring_up_mmio(transport, [driver], features)


@pytest.fixture
def ram() -> FakeGuestRam:
    return FakeGuestRam(4 * MiB)


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as f:
        f.truncate(MiB)
    return path


def _blk(ram: FakeGuestRam, image: str, readonly: bool = False, serial: str = "") -> tuple[b.Blk, m.VirtioMmio, FakeDriver, Line]:
    dev = b.Blk(ram, RawDisk(image, readonly=readonly), serial=serial)
    line = Line()
    transport = m.VirtioMmio(dev, line)
    driver = FakeDriver(ram, size=16)
    _bring_up(transport, driver)
    return dev, transport, driver, line


def _request(driver: FakeDriver, kind: int, sector: int, out: bytes = b"", in_len: int = 0) -> int:
    readable = [struct.pack("<IIQ", kind, 0, sector)] + ([out] if out else [])
    return driver.add_chain(readable=readable, writable=[in_len + 1] if in_len else [1])


def _status(ram: FakeGuestRam, driver: FakeDriver, head: int, in_len: int) -> int:
    """The status byte the device wrote for the chain at ``head``."""
    addr = driver.desc_addr + 16 * ((head + (1 if in_len == 0 else 1)) % driver.size)
    status_desc = struct.unpack("<QIHH", ram.read(addr, 16))
    # last descriptor of the chain is the writable one; find it by following next
    idx = head
    while True:
        a, length, flags, nxt = struct.unpack("<QIHH", ram.read(driver.desc_addr + 16 * idx, 16))
        if not flags & 1:
            return ram.read(a + length - 1, 1)[0]
        idx = nxt
    del status_desc


def test_mmio_identifies_a_version_2_device(ram: FakeGuestRam, image: str) -> None:
    transport = m.VirtioMmio(b.Blk(ram, RawDisk(image)), Line())
    assert (transport.read(m.MAGIC_VALUE, 4), transport.read(m.VERSION_REG, 4), transport.read(m.DEVICE_ID, 4)) == (m.MAGIC, 2, 2)


def test_blk_write_then_read_returns_the_data(ram: FakeGuestRam, image: str) -> None:
    dev, transport, driver, _ = _blk(ram, image)
    data = bytes(range(256)) * 4
    _request(driver, b.VIRTIO_BLK_T_OUT, 3, out=data)
    head = _request(driver, b.VIRTIO_BLK_T_IN, 3, in_len=1024)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    _, length = driver.used_elem(1)
    a, *_ = struct.unpack("<QIHH", ram.read(driver.desc_addr + 16 * ((head + 1) % 16), 16))
    assert driver.used_idx() == 2 and length == 1025 and ram.read(a, 1024) == data


def test_blk_write_lands_in_the_image_file(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, _ = _blk(ram, image)
    _request(driver, b.VIRTIO_BLK_T_OUT, 2, out=b"\xab" * 512)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    with open(image, "rb") as f:
        f.seek(1024)
        assert f.read(512) == b"\xab" * 512


def test_blk_read_beyond_the_end_is_ioerr_and_device_keeps_working(ram: FakeGuestRam, image: str) -> None:
    dev, transport, driver, _ = _blk(ram, image)
    bad = _request(driver, b.VIRTIO_BLK_T_IN, MiB // 512, in_len=512)
    good = _request(driver, b.VIRTIO_BLK_T_IN, 0, in_len=512)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert (_status(ram, driver, bad, 512), _status(ram, driver, good, 512)) == (b.VIRTIO_BLK_S_IOERR, b.VIRTIO_BLK_S_OK)
    assert not dev.status & STATUS_DEVICE_NEEDS_RESET


def test_blk_partial_sector_is_ioerr(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, _ = _blk(ram, image)
    head = _request(driver, b.VIRTIO_BLK_T_OUT, 0, out=b"x" * 100)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert _status(ram, driver, head, 0) == b.VIRTIO_BLK_S_IOERR


def test_blk_write_to_read_only_disk_is_ioerr(ram: FakeGuestRam, image: str) -> None:
    dev, transport, driver, _ = _blk(ram, image, readonly=True)
    head = _request(driver, b.VIRTIO_BLK_T_OUT, 0, out=b"x" * 512)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert _status(ram, driver, head, 0) == b.VIRTIO_BLK_S_IOERR and dev.device_features() >> b.VIRTIO_BLK_F_RO & 1


def test_blk_get_id_returns_the_serial(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, _ = _blk(ram, image, serial="pyhv-disk-0")
    head = _request(driver, b.VIRTIO_BLK_T_GET_ID, 0, in_len=20)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    a, *_ = struct.unpack("<QIHH", ram.read(driver.desc_addr + 16 * ((head + 1) % 16), 16))
    assert ram.read(a, 20).rstrip(b"\0") == b"pyhv-disk-0"


def test_blk_unknown_request_type_is_unsupp(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, _ = _blk(ram, image)
    head = _request(driver, 99, 0)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert _status(ram, driver, head, 0) == b.VIRTIO_BLK_S_UNSUPP


def test_blk_write_zeroes_zeroes_the_range(ram: FakeGuestRam, image: str) -> None:
    with open(image, "r+b") as f:
        f.write(b"\xff" * 4096)
    _, transport, driver, _ = _blk(ram, image)
    _request(driver, b.VIRTIO_BLK_T_WRITE_ZEROES, 0, out=struct.pack("<QII", 2, 4, 0))
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    with open(image, "rb") as f:
        content = f.read(4096)
    assert content[1024:3072] == bytes(2048) and content[:1024] == b"\xff" * 1024


def test_blk_discard_past_the_end_is_ioerr(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, _ = _blk(ram, image)
    head = _request(driver, b.VIRTIO_BLK_T_DISCARD, 0, out=struct.pack("<QII", MiB // 512 - 1, 2, 0))
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert _status(ram, driver, head, 0) == b.VIRTIO_BLK_S_IOERR


def test_blk_config_reports_capacity_in_sectors(ram: FakeGuestRam, image: str) -> None:
    _, transport, _, _ = _blk(ram, image)
    assert transport.read(m.CONFIG, 8) == MiB // 512


def test_used_buffer_raises_the_irq_until_acknowledged(ram: FakeGuestRam, image: str) -> None:
    _, transport, driver, line = _blk(ram, image)
    _request(driver, b.VIRTIO_BLK_T_FLUSH, 0)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    raised = (line.level, transport.read(m.INTERRUPT_STATUS, 4))
    transport.write(m.INTERRUPT_ACK, 4, m.INT_USED_BUFFER)
    assert raised == (True, m.INT_USED_BUFFER) and not line.level


def test_malformed_ring_sets_needs_reset_and_reset_recovers(ram: FakeGuestRam, image: str) -> None:
    dev, transport, driver, _ = _blk(ram, image)
    driver.write_desc(0, 0x9000, 16, 1, 0)  # descriptor 0 chains to itself
    driver.publish(0)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    broken = transport.read(m.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    transport.write(m.STATUS, 4, 0)
    fresh = FakeDriver(ram, size=16, desc_addr=0x11000, avail_addr=0x12000, used_addr=0x13000, data_addr=0x20000)
    _bring_up(transport, fresh)
    _request(fresh, b.VIRTIO_BLK_T_FLUSH, 0)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert broken and fresh.used_idx() == 1 and not dev.status & STATUS_DEVICE_NEEDS_RESET


def test_features_without_version_1_are_refused(ram: FakeGuestRam, image: str) -> None:
    transport = m.VirtioMmio(b.Blk(ram, RawDisk(image)), Line())
    transport.write(m.STATUS, 4, 3)
    transport.write(m.DRIVER_FEATURES, 4, 1 << b.VIRTIO_BLK_F_FLUSH)
    transport.write(m.STATUS, 4, 3 | 8)
    assert not transport.read(m.STATUS, 4) & 8


def test_queue_is_not_processed_before_driver_ok(ram: FakeGuestRam, image: str) -> None:
    dev: VirtioDevice = b.Blk(ram, RawDisk(image))
    driver = FakeDriver(ram, size=16)
    _request(driver, b.VIRTIO_BLK_T_FLUSH, 0)
    dev.notify(0)
    assert driver.used_idx() == 0


def test_rng_fills_the_buffer(ram: FakeGuestRam) -> None:
    dev = Rng(ram, entropy=lambda n: b"\x5a" * n)
    transport = m.VirtioMmio(dev, Line())
    driver = FakeDriver(ram, size=16)
    _bring_up(transport, driver)
    head = driver.add_chain(writable=[64])
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    a, *_ = struct.unpack("<QIHH", ram.read(driver.desc_addr + 16 * head, 16))
    assert driver.used_elem(0) == (head, 64) and ram.read(a, 64) == b"\x5a" * 64


def test_a_drain_longer_than_one_batch_publishes_every_chain_and_interrupts_once(ram: FakeGuestRam) -> None:
    dev = Rng(ram, entropy=lambda n: b"\x5a" * n)
    transport = m.VirtioMmio(dev, Line())
    driver = FakeDriver(ram, size=64)
    _bring_up(transport, driver)
    interrupts: list[int] = []
    dev.interrupt = interrupts.append
    for _ in range(USED_BATCH + 8):
        driver.add_chain(writable=[16])

    transport.write(m.NOTIFY_OFFSET, 4, 0)

    assert (driver.used_idx(), interrupts) == (USED_BATCH + 8, [0])


def test_disk_image_that_is_not_whole_sectors_is_refused(tmp_path: Path) -> None:
    from pyhv.errors import ImageError

    path = str(tmp_path / "odd.img")
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
    with pytest.raises(ImageError, match="multiple of 512"):
        RawDisk(path)


def test_missing_disk_image_is_an_image_error(tmp_path: Path) -> None:
    from pyhv.errors import ImageError

    with pytest.raises(ImageError, match="cannot open"):
        RawDisk(os.path.join(tmp_path, "nope.img"))


def test_blk_over_its_ops_limit_stops_until_the_bucket_refills(ram: FakeGuestRam, image: str) -> None:
    from pyhv.devices.ratelimit import RateLimiter, TokenBucket

    now = [0.0]
    timers: list[tuple[float, Any]] = []
    dev, transport, driver, _ = _blk(ram, image)
    dev.limit(0, RateLimiter(ops=TokenBucket(2, 1000, clock=lambda: now[0])), lambda delay, fn: timers.append((delay, fn)))
    for sector in range(3):
        _request(driver, b.VIRTIO_BLK_T_IN, sector, in_len=512)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    transport.write(m.NOTIFY_OFFSET, 4, 0)  # a kick while throttled changes nothing
    served_at_once, delays = driver.used_idx(), [round(d, 3) for d, _ in timers]
    now[0] += 0.5
    timers[0][1]()
    assert (served_at_once, delays, driver.used_idx()) == (2, [0.5], 3)


def test_blk_swap_disk_shows_the_new_capacity_after_a_configuration_change(
    ram: FakeGuestRam, image: str, tmp_path: Path,
) -> None:
    bigger = tmp_path / "bigger.img"
    bigger.write_bytes(b"\0" * (2 * MiB))
    dev, transport, _, _ = _blk(ram, image)
    generation = transport.read(m.CONFIG_GENERATION, 4)
    old = dev.swap_disk(RawDisk(str(bigger)))
    old.close()
    assert (transport.read(m.CONFIG_GENERATION, 4) != generation, transport.read(m.INTERRUPT_STATUS, 4) & 2,
            transport.read(m.CONFIG, 4)) == (True, 2, 2 * MiB // 512)
    with pytest.raises(ValueError):
        dev.swap_disk(RawDisk(image, readonly=True))


def test_blk_limit_lifted_while_waiting_serves_the_queue_at_once(ram: FakeGuestRam, image: str) -> None:
    from pyhv.devices.ratelimit import RateLimiter, TokenBucket

    timers: list[tuple[float, Any]] = []
    dev, transport, driver, _ = _blk(ram, image)
    dev.limit(0, RateLimiter(ops=TokenBucket(1, 60_000)), lambda delay, fn: timers.append((delay, fn)))
    for sector in range(3):
        _request(driver, b.VIRTIO_BLK_T_IN, sector, in_len=512)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    served = driver.used_idx()
    dev.limit(0, None, lambda delay, fn: timers.append((delay, fn)))
    timers[-1][1]()
    assert (served, timers[-1][0], driver.used_idx()) == (1, 0.0, 3)
