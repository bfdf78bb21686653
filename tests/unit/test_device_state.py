"""Every device's state() / set_state() contract, checked the same way for each.

* state() is plain values: it survives a JSON round trip unchanged;
* a fresh device given that state reports the same state, and works on
  (a virtio device serves the next request on the restored queue);
* set_state() on hostile input (hypothesis mutates a real state: wrong
  types, out-of-range numbers, missing and extra keys) raises a PyhvError
  with one line naming the device, never anything else, and then the
  device's state is what it was before the call.

Bounded in CI; ``PYHV_FUZZ_EXAMPLES=5000`` for a long run.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv._sys import kvm_h as h
from pyhv.backends.block import RawDisk
from pyhv.devices.legacy.fw_cfg import FwCfg
from pyhv.devices.legacy.i8042 import I8042
from pyhv.devices.legacy.rtc import Rtc
from pyhv.devices.legacy.uart import Uart
from pyhv.devices.pci.config import MEM32, PciConfigSpace
from pyhv.devices.pci.msix import MsixTable
from pyhv.devices.pci.root import PciRoot
from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio import pci as vp
from pyhv.devices.virtio.balloon import Balloon
from pyhv.devices.virtio.blk import Blk
from pyhv.devices.virtio.net import Net
from pyhv.devices.virtio.rng import Rng
from pyhv.devices.virtio.vsock import Vsock
from pyhv.errors import PyhvError
from pyhv.vcpu import cpustate

from .backend_fakes import FakeIo, FakeVsockHost, ScriptedFrames
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "60"))
RAM = 1 << 20
# each disk its own image: an image is locked by the device that has it open
_IMAGES = tempfile.TemporaryDirectory(prefix="pyhv-state-")
_IMAGE_NUMBERS = itertools.count()


def _image() -> str:
    path = Path(_IMAGES.name) / f"{next(_IMAGE_NUMBERS)}.img"
    with open(path, "wb") as f:
        f.truncate(64 * 1024)
    return str(path)


def _bring_up_pci(t: vp.VirtioPci, drivers: list[FakeDriver]) -> None:
    """What a driver does through the virtio PCI common configuration."""
    w = t.bar_write
    t.config.write(0x04, 2, 0x6)  # memory decoding and bus mastering
    w(0, vp.DEVICE_STATUS, 1, 1)
    w(0, vp.DEVICE_STATUS, 1, 3)
    w(0, vp.DRIVER_FEATURE_SELECT, 4, 1)
    w(0, vp.DRIVER_FEATURE, 4, 1)  # VERSION_1
    w(0, vp.DEVICE_STATUS, 1, 3 | 8)
    w(0, vp.CONFIG_MSIX_VECTOR, 2, 0)
    for q, d in enumerate(drivers):
        w(0, vp.QUEUE_SELECT, 2, q)
        w(0, vp.QUEUE_SIZE, 2, d.size)
        w(0, vp.QUEUE_MSIX_VECTOR, 2, 1)
        for reg, addr in ((vp.QUEUE_DESC, d.desc_addr), (vp.QUEUE_DRIVER, d.avail_addr), (vp.QUEUE_DEVICE, d.used_addr)):
            w(0, reg, 8, addr)
        w(0, vp.QUEUE_ENABLE, 2, 1)
    w(0, vp.DEVICE_STATUS, 1, 3 | 8 | 4)
    t.msix.write(0, 4, 0xFEE0_0000)
    t.msix.write(16 + 12, 4, 0)  # vector 1 unmasked


def _drivers(ram: FakeGuestRam, n: int) -> list[FakeDriver]:
    return [
        FakeDriver(ram, size=8, desc_addr=0x1000 + 0x1000 * i, avail_addr=0x4000 + 0x1000 * i,
                   used_addr=0x8000 + 0x1000 * i, data_addr=0x20000 + 0x8000 * i)
        for i in range(n)
    ]


# Each case: name -> (make a fresh device on ``ram``, exercise it into an interesting state)
def _uart(ram: FakeGuestRam) -> Any:
    return Uart(lambda data: None)


def _exercise_uart(dev: Any, ram: FakeGuestRam) -> None:
    dev.write(3, 1, 0x83)
    dev.write(0, 1, 0x01)
    dev.write(3, 1, 0x03)
    dev.write(1, 1, 0x03)
    dev.write(7, 1, 0x5A)
    dev.enqueue(b"hello")


def _rtc(ram: FakeGuestRam) -> Any:
    return Rtc(mem_below_4g=RAM, clock=lambda: 1_700_000_000.0)


def _exercise_rtc(dev: Any, ram: FakeGuestRam) -> None:
    dev.index_port.write(0, 1, 0x40)
    dev.data_port.write(0, 1, 0x77)
    dev.index_port.write(0, 1, 0x0B)
    dev.data_port.write(0, 1, 0x86)  # SET: time writes wait
    dev.index_port.write(0, 1, 0x00)
    dev.data_port.write(0, 1, 0x30)


def _i8042(ram: FakeGuestRam) -> Any:
    return I8042(lambda: None)


def _exercise_i8042(dev: Any, ram: FakeGuestRam) -> None:
    dev.write_port(0x64, 0x60)


def _fw_cfg(ram: FakeGuestRam) -> Any:
    return FwCfg(ram, ram_size=RAM, nb_cpus=1, max_cpus=1, files=[("opt/a", b"0123456789")])


def _exercise_fw_cfg(dev: Any, ram: FakeGuestRam) -> None:
    dev.ports.write(0, 2, dev.key_of("opt/a"))
    dev.ports.read(1, 1)
    dev.ports.read(1, 1)
    dev.dma.write(0, 4, 0x0100_0000)  # high half 1, big-endian


def _config(ram: FakeGuestRam) -> Any:
    c = PciConfigSpace(0x1AF4, 0x1042, 0x018000)
    c.add_bar(0, 0x4000, MEM32)
    return c


def _exercise_config(dev: Any, ram: FakeGuestRam) -> None:
    dev.write(0x04, 2, 0x6)
    dev.write(0x10, 4, 0xC000_4000)
    dev.write(0x3C, 1, 11)


def _msix(ram: FakeGuestRam) -> Any:
    return MsixTable(4, lambda a, d: None)


def _exercise_msix(dev: Any, ram: FakeGuestRam) -> None:
    dev.write(16, 8, 0xFEE0_1000)
    dev.write(24, 4, 0x41)
    dev.set_control(True, True)
    dev.notify(1)


def _root(ram: FakeGuestRam) -> Any:
    return PciRoot()


def _exercise_root(dev: Any, ram: FakeGuestRam) -> None:
    dev.config_io.write(0, 4, 0x8000_0010)
    dev.config_write(0, 0, 0x0C, 1, 0x10)


def _virtio_pci(make: Callable[[FakeGuestRam], Any]) -> Callable[[FakeGuestRam], Any]:
    return lambda ram: vp.VirtioPci(make(ram), lambda a, d: None)


def _exercise_virtio_pci(dev: Any, ram: FakeGuestRam) -> None:
    drivers = _drivers(ram, len(dev.device.queues))
    _bring_up_pci(dev, drivers)
    dev.device._fake_drivers = drivers


def _virtio_mmio(make: Callable[[FakeGuestRam], Any]) -> Callable[[FakeGuestRam], Any]:
    return lambda ram: m.VirtioMmio(make(ram), lambda level: None)


def _exercise_virtio_mmio(dev: Any, ram: FakeGuestRam) -> None:
    drivers = _drivers(ram, len(dev.device.queues))
    bring_up_mmio(dev, drivers)
    dev.device._fake_drivers = drivers


def _blk(ram: FakeGuestRam) -> Any:
    return Blk(ram, RawDisk(_image()))


def _rng(ram: FakeGuestRam) -> Any:
    return Rng(ram)


def _net(ram: FakeGuestRam) -> Any:
    return Net(ram, ScriptedFrames(), b"\x52\x54\x00\x12\x34\x56", FakeIo())


def _balloon(ram: FakeGuestRam) -> Any:
    b = Balloon(ram)
    b.set_target(16)
    return b


def _exercise_balloon(dev: Any, ram: FakeGuestRam) -> None:
    _exercise_virtio_pci(dev, ram)
    stats = dev.device._fake_drivers[2]
    stats.add_chain(readable=[struct.pack("<HQ", 4, 1 << 20)])  # one statistic: free memory
    dev.device.notify(2)  # the device keeps the buffer until the host wants new numbers


def _vsock(ram: FakeGuestRam) -> Any:
    return Vsock(ram, 3, FakeVsockHost(), FakeIo())


CASES: dict[str, tuple[Callable[[FakeGuestRam], Any], Callable[[Any, FakeGuestRam], None]]] = {
    "uart": (_uart, _exercise_uart),
    "rtc": (_rtc, _exercise_rtc),
    "i8042": (_i8042, _exercise_i8042),
    "fw_cfg": (_fw_cfg, _exercise_fw_cfg),
    "pci-config": (_config, _exercise_config),
    "msix": (_msix, _exercise_msix),
    "pci-root": (_root, _exercise_root),
    "virtio-pci-blk": (_virtio_pci(_blk), _exercise_virtio_pci),
    "virtio-pci-rng": (_virtio_pci(_rng), _exercise_virtio_pci),
    "virtio-pci-net": (_virtio_pci(_net), _exercise_virtio_pci),
    "virtio-pci-balloon": (_virtio_pci(_balloon), _exercise_balloon),
    "virtio-pci-vsock": (_virtio_pci(_vsock), _exercise_virtio_pci),
    "virtio-mmio-blk": (_virtio_mmio(_blk), _exercise_virtio_mmio),
    "virtio-mmio-rng": (_virtio_mmio(_rng), _exercise_virtio_mmio),
}


def _made(name: str) -> tuple[Any, FakeGuestRam]:
    make, exercise = CASES[name]
    ram = FakeGuestRam(RAM)
    dev = make(ram)
    exercise(dev, ram)
    return dev, ram


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_round_trips_through_json_into_a_fresh_device(name: str) -> None:
    dev, ram = _made(name)
    state = dev.state()
    plain = json.loads(json.dumps(state))
    fresh = CASES[name][0](ram)
    fresh.set_state(plain)
    assert fresh.state() == state == plain


@pytest.mark.parametrize("name", ["virtio-pci-rng", "virtio-mmio-rng", "virtio-pci-blk"])
def test_restored_virtio_device_serves_the_next_request(name: str) -> None:
    dev, ram = _made(name)
    driver = dev.device._fake_drivers[0]
    first = driver.add_chain(writable=[16]) if "rng" in name else None
    if first is not None:
        dev.device.notify(0)
    fresh = CASES[name][0](ram)
    fresh.set_state(json.loads(json.dumps(dev.state())))
    before = driver.used_idx()
    if "rng" in name:
        driver.add_chain(writable=[32])
    else:
        driver.add_chain(readable=[struct.pack("<IIQ", 0, 0, 0)], writable=[512, 1])
    fresh.device.notify(0)
    assert driver.used_idx() == before + 1


def test_restored_balloon_gives_back_the_statistics_buffer_it_held() -> None:
    dev, ram = _made("virtio-pci-balloon")
    assert dev.device.state()["device"]["stats_head"] is not None
    fresh = CASES["virtio-pci-balloon"][0](ram)
    fresh.set_state(json.loads(json.dumps(dev.state())))
    stats = dev.device._fake_drivers[2]
    before = stats.used_idx()
    fresh.device.request_stats()
    assert stats.used_idx() == before + 1


def test_restored_vsock_tells_the_guest_its_connections_are_gone() -> None:
    dev, ram = _made("virtio-pci-vsock")
    events = dev.device._fake_drivers[2]
    events.add_chain(writable=[8])
    fresh = CASES["virtio-pci-vsock"][0](ram)
    fresh.set_state(json.loads(json.dumps(dev.state())))
    before = events.used_idx()
    fresh.device.after_restore()
    head, written = events.used_elem(before)
    assert events.used_idx() == before + 1 and written == 4
    fresh.device.after_restore()  # once only
    assert events.used_idx() == before + 1


# --- hostile input ------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
    st.text(max_size=8), st.just("zz"), st.just([]), st.just({}),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:40]):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(state: Any, data: st.DataObject) -> Any:
    state = copy.deepcopy(state)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(state)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                state = data.draw(json_leaf)
            continue
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if action == "replace":
            parent[key] = data.draw(json_leaf)
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "delete" and isinstance(parent, list):
            parent.pop(key)
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(json_leaf)
        else:
            parent.append(data.draw(json_leaf))
    return state


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_state_is_refused_cleanly_and_changes_nothing(name: str, data: st.DataObject) -> None:
    dev, ram = _made(name)
    good = json.loads(json.dumps(dev.state()))
    target = CASES[name][0](ram)
    before = target.state()
    bad = _mutate(good, data)
    try:
        target.set_state(bad)
    except PyhvError as e:
        assert "\n" not in str(e) and str(e)
        assert target.state() == before
    else:
        json.dumps(target.state())  # whatever it took, it can give back as plain values


# --- vCPU state ----------------------------------------------------------------------------


def _zero_vcpu_plain() -> dict[str, Any]:
    state = cpustate.VcpuState(
        index=0,
        regs=dict.fromkeys(cpustate.GPRS, 0),
        sregs={
            **{name: dict.fromkeys(cpustate.SEGMENT_FIELDS, 0) for name in cpustate.SEGMENTS},
            "gdt": {"base": 0, "limit": 0}, "idt": {"base": 0, "limit": 0},
            **dict.fromkeys(("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"), 0),
            "interrupt_bitmap": [0, 0, 0, 0],
        },
        fpu=cpustate._struct(h.kvm_fpu()),
        xsave=bytes(h.sizeof(h.kvm_xsave)),
        xcrs={0: 1},
        msrs={0x10: 5, 0x1B: 0xFEE00900},
        lapic=bytes(h.sizeof(h.kvm_lapic_state)),
        events=cpustate._struct(h.kvm_vcpu_events()),
        mp_state=0,
        debugregs=cpustate._struct(h.kvm_debugregs()),
    )
    return json.loads(json.dumps(cpustate.to_plain(state)))


def test_vcpu_state_round_trips_through_plain_values() -> None:
    plain = _zero_vcpu_plain()
    assert cpustate.to_plain(cpustate.from_plain(plain)) == plain


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(data=st.data())
def test_hostile_vcpu_state_is_refused_with_one_line(data: st.DataObject) -> None:
    bad = _mutate(_zero_vcpu_plain(), data)
    try:
        cpustate.from_plain(bad)
    except PyhvError as e:
        assert "\n" not in str(e) and str(e)


def test_restored_vsock_takes_its_new_cid_and_tells_the_guest_to_read_it_again() -> None:
    dev, ram = _made("virtio-pci-vsock")
    events = dev.device._fake_drivers[2]
    events.add_chain(writable=[8])
    clone = Vsock(ram, 9, FakeVsockHost(), FakeIo())  # a clone of the saved machine, with its own CID
    fresh = _virtio_pci(lambda _ram: clone)(ram)
    before = events.used_idx()

    fresh.set_state(json.loads(json.dumps(dev.state())))
    fresh.device.after_restore()

    assert clone.read_config(0, 8) == 9 and fresh.device.state()["device"]["guest_cid"] == 9
    assert events.used_idx() == before + 1  # VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the guest reads the CID again
