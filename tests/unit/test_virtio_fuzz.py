"""Hypothesis: random requests and random rings fed to virtio-blk and virtio-rng.

Whatever the guest puts in memory, ``notify`` returns normally: a bad request
is answered with an error status, a bad ring sets DEVICE_NEEDS_RESET.  Bounded
in CI; ``PYHV_FUZZ_EXAMPLES=20000 pytest tests/unit/test_virtio_fuzz.py`` for a
long run.
"""

from __future__ import annotations

import os
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.backends.block import RawDisk
from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio.blk import Blk
from pyhv.devices.virtio.device import STATUS_DEVICE_NEEDS_RESET
from pyhv.devices.virtio.rng import Rng

from .test_virtio_devices import Line, _bring_up
from .virtio_fakes import FakeDriver, FakeGuestRam

EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200"))
RAM = 1 << 20

_IMAGE = tempfile.NamedTemporaryFile(prefix="pyhv-fuzz-", suffix=".img", delete=False)
_IMAGE.truncate(64 * 1024)
_IMAGE.close()

request = st.tuples(
    st.integers(0, 20),  # type
    st.integers(0, (1 << 64) - 1),  # sector
    st.lists(st.integers(0, 70000), max_size=4),  # readable data lengths
    st.lists(st.integers(0, 70000), max_size=4),  # writable lengths (status included)
    st.binary(max_size=64),  # payload bytes
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request, min_size=1, max_size=6))
def test_random_blk_requests_never_escape_the_device(reqs: list[tuple[int, int, list[int], list[int], bytes]]) -> None:
    ram = FakeGuestRam(RAM)
    dev = Blk(ram, RawDisk(_IMAGE.name))
    transport = m.VirtioMmio(dev, Line())
    driver = FakeDriver(ram, size=16, data_addr=0x8000)
    _bring_up(transport, driver)
    for kind, sector, readable, writable, payload in reqs:
        header = struct.pack("<IIQ", kind, 0, sector & ((1 << 64) - 1))
        bufs = [header] + [payload.ljust(n, b"\0")[: max(n, 1)] for n in readable]
        driver.add_chain(readable=bufs, writable=[max(n, 1) for n in writable[:3]])
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert driver.used_idx() == len(reqs) or dev.status & STATUS_DEVICE_NEEDS_RESET
    dev.disk.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=256, max_size=256), st.binary(min_size=40, max_size=40), st.integers(0, 0xFFFF))
def test_random_ring_memory_never_escapes_the_rng(table: bytes, avail: bytes, avail_idx: int) -> None:
    ram = FakeGuestRam(RAM)
    dev = Rng(ram, entropy=bytes)
    transport = m.VirtioMmio(dev, Line())
    driver = FakeDriver(ram, size=16)
    _bring_up(transport, driver)
    ram.write(0x1000, table)  # 16 descriptors
    ram.write(0x2000, avail)  # available ring: flags, idx, 16 entries, used_event
    driver.set_avail_idx(avail_idx)
    transport.write(m.NOTIFY_OFFSET, 4, 0)
    assert dev.status & STATUS_DEVICE_NEEDS_RESET or driver.used_idx() <= 16
