"""The virtio-MMIO transport against virtio 1.2, 4.2.2: what a guest writes to
its registers is checked, and hostile register traffic (hypothesis) never
raises, never changes the device's identity and leaves the interrupt line
following InterruptStatus.  Examples per property: PYHV_FUZZ_EXAMPLES (default 200)."""

from __future__ import annotations

import json
import os

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.virtio import mmio as m
from pyhv.devices.virtio.device import CONFIG_INTERRUPT, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK
from pyhv.devices.virtio.rng import Rng

from pyhv.devices.state import DeviceStateError
from pyhv.errors import UsageError
from pyhv.vmm.mmio import MmioWiring

from .test_fw_cfg import _machine_devices
from .test_virtio_devices import Line
from .virtio_fakes import FakeDriver, FakeGuestRam, bring_up_mmio

EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RAM = 1 << 20


def _rng(ram: FakeGuestRam | None = None) -> tuple[m.VirtioMmio, Line, FakeGuestRam]:
    ram = ram or FakeGuestRam(RAM)
    line = Line()
    return m.VirtioMmio(Rng(ram, entropy=bytes), line), line, ram


def test_queue_num_above_queue_num_max_marks_the_device_needs_reset_at_driver_ok() -> None:
    transport, _, ram = _rng()
    driver = FakeDriver(ram, size=16)
    driver.size = 2 * transport.device.queues[0].max_size

    bring_up_mmio(transport, [driver])

    assert transport.read(m.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert not transport.device.queues[0].active


def test_queue_ready_with_a_ring_outside_ram_marks_the_device_needs_reset() -> None:
    transport, line, ram = _rng()
    driver = FakeDriver(ram, size=16, used_addr=RAM - 8)

    bring_up_mmio(transport, [driver])

    assert transport.read(m.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert transport.read(m.INTERRUPT_STATUS, 4) == m.INT_CONFIG_CHANGE and line.level


def test_feature_selects_beyond_two_words_read_zero_and_take_nothing() -> None:
    transport, _, _ = _rng()
    transport.write(m.STATUS, 4, 1 | 2)
    transport.write(m.DEVICE_FEATURES_SEL, 4, 2)
    transport.write(m.DRIVER_FEATURES_SEL, 4, 0xFFFF_FFFF)
    transport.write(m.DRIVER_FEATURES, 4, 0xFFFF_FFFF)

    assert transport.read(m.DEVICE_FEATURES, 4) == 0
    assert transport.device.driver_features == 0


def test_features_not_offered_leave_features_ok_clear() -> None:
    transport, _, _ = _rng()
    transport.write(m.STATUS, 4, 1 | 2)
    transport.write(m.DRIVER_FEATURES_SEL, 4, 1)
    transport.write(m.DRIVER_FEATURES, 4, 0x8000_0001)  # VERSION_1 and bit 63

    transport.write(m.STATUS, 4, 1 | 2 | STATUS_FEATURES_OK)

    assert not transport.read(m.STATUS, 4) & STATUS_FEATURES_OK


def test_queue_registers_freeze_at_driver_ok_and_queue_reset_is_ignored() -> None:
    transport, _, ram = _rng()
    driver = FakeDriver(ram, size=16)
    bring_up_mmio(transport, [driver])
    queue = transport.device.queues[0]

    transport.write(m.QUEUE_NUM, 4, 4)
    transport.write(m.QUEUE_DESC_LOW, 4, 0x5000)
    transport.write(m.QUEUE_READY, 4, 0)
    transport.write(m.QUEUE_RESET, 4, 1)

    assert (queue.size, queue.desc_addr, queue.ready, queue.active) == (16, driver.desc_addr, True, True)
    assert transport.read(m.STATUS, 4) & STATUS_DRIVER_OK


def test_a_queue_select_naming_no_queue_reads_queue_num_max_zero_and_takes_no_writes() -> None:
    transport, _, _ = _rng()
    transport.write(m.QUEUE_SEL, 4, 7)

    transport.write(m.QUEUE_NUM, 4, 8)
    transport.write(m.QUEUE_READY, 4, 1)

    assert (transport.read(m.QUEUE_NUM_MAX, 4), transport.read(m.QUEUE_READY, 4)) == (0, 0)


def test_status_zero_resets_the_device_the_selectors_and_lowers_the_line() -> None:
    transport, line, ram = _rng()
    bring_up_mmio(transport, [FakeDriver(ram, size=16, used_addr=RAM - 8)])  # fails: config interrupt
    transport.write(m.QUEUE_SEL, 4, 3)

    transport.write(m.STATUS, 4, 0x100)  # the low byte is the status: a reset

    assert (transport.read(m.STATUS, 4), transport.read(m.INTERRUPT_STATUS, 4), transport.queue_sel) == (0, 0, 0)
    assert not line.level


def test_an_acknowledgement_that_leaves_a_reason_pending_gives_the_line_a_new_edge() -> None:
    levels: list[bool] = []
    transport = m.VirtioMmio(Rng(FakeGuestRam(RAM), entropy=bytes), levels.append)
    transport._interrupt(0)
    transport._interrupt(CONFIG_INTERRUPT)

    transport.write(m.INTERRUPT_ACK, 4, m.INT_USED_BUFFER)

    assert levels == [True, True, False, True] and transport.read(m.INTERRUPT_STATUS, 4) == m.INT_CONFIG_CHANGE


def test_narrow_and_unaligned_register_accesses_are_ignored() -> None:
    transport, _, _ = _rng()
    transport.write(m.STATUS, 2, 1)
    transport.write(m.STATUS + 1, 4, 1)

    assert (transport.read(m.STATUS, 4), transport.read(m.MAGIC_VALUE, 2), transport.read(m.MAGIC_VALUE + 2, 4)) == (0, 0, 0)


registers = st.sampled_from(
    [m.MAGIC_VALUE, m.VERSION_REG, m.DEVICE_ID, m.DEVICE_FEATURES, m.DEVICE_FEATURES_SEL, m.DRIVER_FEATURES,
     m.DRIVER_FEATURES_SEL, m.QUEUE_SEL, m.QUEUE_NUM_MAX, m.QUEUE_NUM, m.QUEUE_READY, m.NOTIFY_OFFSET,
     m.INTERRUPT_STATUS, m.INTERRUPT_ACK, m.STATUS, *m._ADDR_REGS, m.QUEUE_RESET, m.CONFIG_GENERATION, m.CONFIG]
) | st.integers(0, m.WINDOW_SIZE - 1)
access = st.tuples(st.booleans(), registers, st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1))


@FUZZ
@given(st.booleans(), st.lists(access, max_size=60), st.binary(max_size=0x300))
def test_random_register_traffic_never_escapes_the_transport(
    running: bool, ops: list[tuple[bool, int, int, int]], rings: bytes
) -> None:
    transport, line, ram = _rng()
    if running:  # a device serving queue 0, whose rings hold whatever the guest wrote there
        bring_up_mmio(transport, [FakeDriver(ram, size=16)])
    ram.write(0x1000, rings)
    for is_write, offset, size, value in ops:
        if is_write:
            transport.write(offset, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= transport.read(offset, size) < 1 << (8 * size)
        assert line.level == bool(transport.interrupt_status)
    assert (transport.read(m.MAGIC_VALUE, 4), transport.read(m.VERSION_REG, 4), transport.read(m.DEVICE_ID, 4)) == (
        m.MAGIC, m.VERSION, 4)
    assert transport.interrupt_status & ~(m.INT_USED_BUFFER | m.INT_CONFIG_CHANGE) == 0


@FUZZ
@given(st.lists(access, max_size=40))
def test_a_saved_transport_restores_to_the_same_registers_after_random_traffic(ops: list[tuple[bool, int, int, int]]) -> None:
    transport, _, ram = _rng()
    bring_up_mmio(transport, [FakeDriver(ram, size=16)])
    for is_write, offset, size, value in ops:
        if is_write:
            transport.write(offset, size, value & ((1 << (8 * size)) - 1))
    copy, line, _ = _rng(ram)

    copy.set_state(transport.state())

    assert copy.state() == transport.state() and line.level == bool(transport.interrupt_status)


# --- the machine's MMIO devices in snapshots (vmm/devices.py, vmm/mmio.py) ----------------------------


def _wiring(ram: FakeGuestRam, count: int) -> MmioWiring:
    wiring = MmioWiring()
    for _ in range(count):
        wiring.add(Rng(ram, entropy=bytes), lambda gsi, level: None)
    return wiring


def test_mmio_devices_get_windows_lines_and_command_line_parameters_in_order() -> None:
    wiring = _wiring(FakeGuestRam(RAM), 2)

    assert [(base, gsi) for base, gsi, _ in wiring.windows()] == [(0xF000_0000, 5), (0xF000_1000, 6)]
    assert wiring.cmdline() == "virtio_mmio.device=4K@0xf0000000:5 virtio_mmio.device=4K@0xf0001000:6"


def test_machine_state_carries_a_running_mmio_device_into_a_fresh_machine() -> None:
    ram = FakeGuestRam(RAM)
    devices = _machine_devices(_wiring(ram, 1))
    bring_up_mmio(devices.mmio.transports[0], [FakeDriver(ram, size=16)])
    fresh = _machine_devices(_wiring(ram, 1))

    fresh.set_state(json.loads(json.dumps(devices.state())))

    assert fresh.state()["mmio"] == devices.state()["mmio"]
    assert [place for place, _ in fresh.virtio()] == ["mmio0"] and fresh.virtio()[0][1].queues[0].active


def test_machine_state_without_mmio_part_restores_a_machine_without_mmio_devices() -> None:
    state = _machine_devices().state()
    del state["mmio"]  # as a snapshot from before virtio-MMIO has it

    _machine_devices().set_state(state)

    with pytest.raises(DeviceStateError, match=r"mmio state: devices at \[\], this machine has \['0'\]"):
        _machine_devices(_wiring(FakeGuestRam(RAM), 1)).set_state(state)


def test_more_mmio_devices_than_interrupt_lines_are_refused_with_one_line() -> None:
    wiring = _wiring(FakeGuestRam(RAM), 15)

    with pytest.raises(UsageError, match="transport mmio: at most 15 virtio devices"):
        wiring.add(Rng(FakeGuestRam(RAM)), lambda gsi, level: None)
