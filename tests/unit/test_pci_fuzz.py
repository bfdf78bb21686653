"""Hostile guests: random config, CF8/CFC, ECAM and MSI-X accesses never raise, never
change a device's identity, and never make the root report overlapping BARs.

Examples per property: PYHV_FUZZ_EXAMPLES (default 200)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.pci.config import MEM64, PciConfigSpace
from pyhv.devices.pci.device import PciDevice
from pyhv.devices.pci.msix import MsixCapability, MsixTable
from pyhv.devices.pci.root import ECAM_SIZE, PciRoot

EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VENDOR, DEVICE = 0x1AF4, 0x1041


class MappedBars:
    """What on_bar_change has mapped; refuses overlaps and unmaps of what is not there."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[int, int], tuple[int, int]] = {}

    def change(self, device: PciDevice, bar: int, old: int | None, new: int | None) -> None:
        key = (id(device), bar)
        assert self.ranges.get(key, (None, 0))[0] == old
        self.ranges.pop(key, None)
        size = device.config.bar(bar).size  # type: ignore[union-attr]
        for start, length in self.ranges.values():
            assert new is None or new + size <= start or start + length <= new
        if new is not None:
            self.ranges[key] = (new, size)


class Device(PciDevice):
    def __init__(self) -> None:
        super().__init__(PciConfigSpace(VENDOR, DEVICE, 0x020000))
        self.config.add_bar(0, 0x1000)
        self.config.add_bar(2, 0x4000, MEM64, prefetchable=True)
        self.config.add_capability(0x09, bytes(14), b"\xff" * 14)
        self.msix = MsixTable(3, lambda address, data: None)
        MsixCapability(self.config, self.msix, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800)


def make_root(mapped: MappedBars) -> tuple[PciRoot, list[Device]]:
    root = PciRoot((0xC000_0000, 0x10_0000), on_bar_change=mapped.change)
    devices = [Device(), Device()]
    for device in devices:
        root.add_device(device)
    for region in root.regions():
        mapped.ranges[(id(region.device), region.bar)] = (region.address, region.size)
    return root, devices


def identities(root: PciRoot) -> list[int]:
    return [root.config_read(slot, 0, 0, 4) for slot in range(4)] + [root.config_read(1, 0, 8, 4)]


SIZES = st.sampled_from([0, 1, 2, 3, 4, 8])
VALUES = st.integers(0, (1 << 64) - 1)
INTERESTING = st.sampled_from([0, 0xFFFF_FFFF, 0xC000_0000, 0xC000_1000, 0xC000_4000, 0xC00F_F000, 0x2, 0x6])
CONFIG_WRITES = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-4, 4100), SIZES, st.one_of(VALUES, INTERESTING)), max_size=60
)


@FUZZ
@given(CONFIG_WRITES)
def test_random_config_writes_keep_identity_and_never_overlap_bars(
    writes: list[tuple[int, int, int, int]],
) -> None:
    mapped = MappedBars()
    root, _ = make_root(mapped)
    before = identities(root)
    for slot, register, size, value in writes:
        root.config_write(slot, 0, register, size, value)
    assert identities(root) == before
    assert {(r.address, r.size) for r in root.regions()} == set(mapped.ranges.values())


PORT_OPS = st.lists(
    st.tuples(st.booleans(), st.integers(0, 7), SIZES, st.one_of(VALUES, INTERESTING, st.integers(0x8000_0000, 0x8FFF_FFFF))),
    max_size=80,
)


@FUZZ
@given(PORT_OPS)
def test_random_cf8_cfc_sequences_never_raise_or_change_identity(ops: list[tuple[bool, int, int, int]]) -> None:
    root, _ = make_root(MappedBars())
    before = identities(root)
    io = root.config_io
    access = (lambda o, s, v: io.read(o, s), io.write)
    for is_write, offset, size, value in ops:
        access[is_write](offset, size, value)
    assert identities(root) == before


ECAM_OPS = st.lists(
    st.tuples(st.booleans(), st.integers(-8, ECAM_SIZE + 8), SIZES, st.one_of(VALUES, INTERESTING)), max_size=80
)


@FUZZ
@given(ECAM_OPS)
def test_random_ecam_accesses_never_raise_or_change_identity(ops: list[tuple[bool, int, int, int]]) -> None:
    root, _ = make_root(MappedBars())
    before = identities(root)
    ecam = root.config_mmio
    access = (lambda o, s, v: ecam.read(o, s), ecam.write)
    for is_write, offset, size, value in ops:
        access[is_write](offset, size, value)
    assert identities(root) == before


MSIX_OPS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(-8, 0x40), SIZES, VALUES, st.integers(-1, 0x10000)), max_size=60
)


@FUZZ
@given(MSIX_OPS)
def test_random_msix_table_pba_and_notify_never_raise(ops: list[tuple[int, int, int, int, int]]) -> None:
    delivered: list[tuple[int, int]] = []
    table = MsixTable(3, lambda address, data: delivered.append((address, data)))
    actions = [
        lambda o, s, v, n: table.write(o, s, v),
        lambda o, s, v, n: table.read(o, s),
        lambda o, s, v, n: table.pba.read(o, s),
        lambda o, s, v, n: table.notify(n),
        lambda o, s, v, n: table.set_control(bool(v & 1), bool(v & 2)),
    ]
    for action, offset, size, value, vector in ops:
        actions[action](offset, size, value, vector)
    assert all(table.read(16 * v + 12, 4) in (0, 1) for v in range(3)) and table.pba.read(0, 8) < 8
