"""virtio-balloon with real guest memory (anonymous and memfd), no /dev/kvm."""

from __future__ import annotations

import struct

import pytest

from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio.balloon import DEFLATE, INFLATE, Balloon
from pyhv.memory import MiB, GuestMemory

from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, bring_up_mmio

PAGE = 4096


def _rss_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


@pytest.fixture(params=[False, True], ids=["anonymous", "memfd"])
def mem(request: pytest.FixtureRequest) -> GuestMemory:
    g = GuestMemory(64 * MiB, memfd=request.param)
    yield g
    g.close()


def _balloon(mem: GuestMemory) -> tuple[Balloon, m.VirtioMmio, FakeDriver, FakeDriver, Line]:
    dev = Balloon(mem)
    line = Line()
    transport = m.VirtioMmio(dev, line)
    inflate = FakeDriver(mem, size=16, desc_addr=0x1000, avail_addr=0x2000, used_addr=0x3000, data_addr=0x10000)
    deflate = FakeDriver(mem, size=16, desc_addr=0x4000, avail_addr=0x5000, used_addr=0x6000, data_addr=0x20000)
    stats = FakeDriver(mem, size=16, desc_addr=0x7000, avail_addr=0x8000, used_addr=0x9000, data_addr=0x30000)
    bring_up_mmio(transport, [inflate, deflate, stats])
    return dev, transport, inflate, deflate, line


def test_inflated_pages_leave_the_host_rss(mem: GuestMemory) -> None:
    dev, transport, inflate, _, _ = _balloon(mem)
    base = 16 * MiB
    mem.write(base, b"\xaa" * (16 * MiB))  # the guest touched 16 MiB
    before = _rss_pages()
    for chunk in range(16):
        pfns = range((base >> 12) + chunk * 256, (base >> 12) + (chunk + 1) * 256)
        inflate.add_chain(readable=[struct.pack(f"<{len(pfns)}I", *pfns)])
        transport.write(m.NOTIFY_OFFSET, 4, INFLATE)
    dropped = before - _rss_pages()
    assert dev.inflated == 4096 and dropped >= 3500 and mem.read(base, 4) == bytes(4)


def test_pfn_outside_ram_is_skipped_not_fatal(mem: GuestMemory) -> None:
    dev, transport, inflate, _, _ = _balloon(mem)
    inflate.add_chain(readable=[struct.pack("<2I", 0xFFFFF, (32 * MiB) >> 12)])
    transport.write(m.NOTIFY_OFFSET, 4, INFLATE)
    assert (dev.bad_pfns, dev.inflated, dev.status & 0x40, inflate.used_idx()) == (1, 1, 0, 1)


def test_deflate_returns_pages_to_the_guest(mem: GuestMemory) -> None:
    dev, transport, inflate, deflate, _ = _balloon(mem)
    inflate.add_chain(readable=[struct.pack("<I", (32 * MiB) >> 12)])
    transport.write(m.NOTIFY_OFFSET, 4, INFLATE)
    deflate.add_chain(readable=[struct.pack("<I", (32 * MiB) >> 12)])
    transport.write(m.NOTIFY_OFFSET, 4, DEFLATE)
    assert dev.inflated == 0 and deflate.used_idx() == 1


def test_new_target_is_in_config_and_raises_a_config_interrupt(mem: GuestMemory) -> None:
    dev, transport, _, _, line = _balloon(mem)
    dev.set_target(1234)
    assert transport.read(m.CONFIG, 4) == 1234 and transport.read(m.INTERRUPT_STATUS, 4) & m.INT_CONFIG_CHANGE and line.level


def test_guest_reports_actual_through_config(mem: GuestMemory) -> None:
    dev, transport, _, _, _ = _balloon(mem)
    transport.write(m.CONFIG + 4, 4, 77)
    assert dev.actual_pages == 77 and transport.read(m.CONFIG + 4, 4) == 77


def test_stats_buffer_is_parsed_and_kept_until_requested(mem: GuestMemory) -> None:
    dev, transport, _, _, _ = _balloon(mem)
    stats = FakeDriver(mem, size=16, desc_addr=0x7000, avail_addr=0x8000, used_addr=0x9000, data_addr=0x30000)
    stats.add_chain(readable=[struct.pack("<HQHQ", 4, 1000, 5, 5000)])
    transport.write(m.NOTIFY_OFFSET, 4, 2)
    held = stats.used_idx()
    dev.request_stats()
    assert dev.stats == {"free_memory": 1000, "total_memory": 5000} and (held, stats.used_idx()) == (0, 1)
