"""The vhost-user virtio device (transport side) and the irqfd routes that follow MSI-X."""

from __future__ import annotations

from typing import Any

import pytest

from pyhv.backends.vhost_user import QueueLayout, VhostUserError
from pyhv.devices.virtio.device import (
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
)
from pyhv.devices.virtio.pci import VirtioPci
from pyhv.devices.virtio.vhost_user import FS_DEVICE_ID, VhostUser, fs_config
from pyhv.vmm.irqroute import CallVector, GsiRoutes, default_irqchip_routes

from .virtio_fakes import FakeDriver, FakeGuestRam

VERSION_1 = 1 << 32
EVENT_IDX = 1 << 29
NOTIFY_ON_EMPTY = 1 << 24
PROTOCOL_FEATURES = 1 << 30


class ScriptedBackend:
    name = "fake"

    def __init__(self, features: int = VERSION_1 | EVENT_IDX | NOTIFY_ON_EMPTY | PROTOCOL_FEATURES) -> None:
        self.features = features
        self.started: list[tuple[int, list[Any]]] = []
        self.stops = 0
        self.kicks: list[int] = []
        self.fail_start: str | None = None
        self.gone: str | None = None

    def start(self, features: int, queues: Any) -> None:
        if self.fail_start:
            raise VhostUserError("fake", self.fail_start)
        self.started.append((features, list(queues)))

    def stop(self) -> dict[int, int]:
        self.stops += 1
        return {}

    def kick(self, index: int) -> None:
        self.kicks.append(index)

    def set_queue_fds(self, index: int, kick: int | None, call: int | None) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def idle_check(self) -> str | None:
        return self.gone


def make(backend: ScriptedBackend) -> tuple[VhostUser, FakeDriver]:
    mem = FakeGuestRam(1 << 20)
    dev = VhostUser(mem, backend, FS_DEVICE_ID, "virtio-fs 'x'", 2, fs_config("x", 1), 0, QueueLayout)
    return dev, FakeDriver(mem, size=16)


def bring_up(dev: VhostUser, driver: FakeDriver, features: int = VERSION_1) -> None:
    dev.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    dev.write_driver_features(0, features & 0xFFFF_FFFF)
    dev.write_driver_features(1, features >> 32)
    dev.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    driver.program(dev.queues[1])
    dev.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)


def test_offered_features_are_the_back_ends_less_what_pyhv_does_not_allow() -> None:
    dev, _ = make(ScriptedBackend())

    assert dev.offered_features() == VERSION_1 | EVENT_IDX


def test_fs_config_holds_the_tag_and_the_request_queue_count() -> None:
    dev, _ = make(ScriptedBackend())

    assert dev.read_config(0, 4) == int.from_bytes(b"x\0\0\0", "little")
    assert dev.read_config(36, 4) == 1


def test_driver_ok_hands_the_ready_rings_to_the_back_end() -> None:
    backend = ScriptedBackend()
    dev, driver = make(backend)

    bring_up(dev, driver, VERSION_1 | EVENT_IDX)

    assert backend.started == [(VERSION_1 | EVENT_IDX, [QueueLayout(1, 16, 0x1000, 0x2000, 0x3000, 0)])]


def test_reset_takes_the_rings_back() -> None:
    backend = ScriptedBackend()
    dev, driver = make(backend)
    bring_up(dev, driver)

    dev.write_status(0)

    assert backend.stops >= 1 and dev.status == 0


def test_a_failed_start_marks_the_device_needs_reset() -> None:
    backend = ScriptedBackend()
    backend.fail_start = "SET_VRING_ADDR refused (status 1)"
    dev, driver = make(backend)

    bring_up(dev, driver)

    assert dev.status & STATUS_DEVICE_NEEDS_RESET
    assert "SET_VRING_ADDR refused" in (dev.failure or "")


def test_a_back_end_that_goes_away_fails_the_device_and_says_so_once(capsys: pytest.CaptureFixture[str]) -> None:
    backend = ScriptedBackend()
    dev, driver = make(backend)
    bring_up(dev, driver)
    backend.gone = "the back end closed the connection"

    healthy = dev.backend_readable()
    dev.backend_readable()

    assert not healthy and dev.status & STATUS_DEVICE_NEEDS_RESET
    assert capsys.readouterr().err.count("closed the connection") == 1


def test_a_kick_that_reaches_pyhv_is_passed_to_the_back_end() -> None:
    backend = ScriptedBackend()
    dev, driver = make(backend)
    bring_up(dev, driver)

    dev.notify(1)

    assert backend.kicks == [1]


# --- irqfd routes ----------------------------------------------------------------------


class FakeVm:
    def __init__(self) -> None:
        self.tables: list[tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]] = []
        self.irqfds: dict[int, int] = {}

    def set_gsi_routing(self, irqchip: list[tuple[int, int, int]], msi: list[tuple[int, int, int]]) -> None:
        self.tables.append((irqchip, msi))

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        if deassign:
            del self.irqfds[fd]
        else:
            self.irqfds[fd] = gsi


class FakeIo:
    def __init__(self) -> None:
        self.watched: dict[int, Any] = {}

    def add_eventfd(self, fd: int, callback: Any) -> None:
        self.watched[fd] = callback

    def remove(self, fd: int) -> None:
        self.watched.pop(fd, None)


def transport_with_vectors() -> tuple[VirtioPci, list[tuple[int, int]]]:
    dev, _ = make(ScriptedBackend())
    sent: list[tuple[int, int]] = []
    t = VirtioPci(dev, lambda a, d: sent.append((a, d)))
    t.config.write(0x04, 2, 0x6)  # memory decoding and bus mastering
    return t, sent


def program_vector(t: VirtioPci, vector: int, address: int, data: int, masked: bool) -> None:
    t.msix.write(16 * vector, 4, address)
    t.msix.write(16 * vector + 8, 4, data)
    t.msix.write(16 * vector + 12, 4, int(masked))


def test_default_routes_keep_the_pic_and_ioapic_pins() -> None:
    routes = default_irqchip_routes()

    assert (0, 2, 0) in routes and (0, 0, 0) in routes and (9, 1, 1) in routes and (23, 2, 23) in routes
    assert not [r for r in routes if r[0] >= 16 and r[1] != 2]


def test_call_vector_follows_the_guests_msix_programming() -> None:
    t, _ = transport_with_vectors()
    vm, io = FakeVm(), FakeIo()
    call = CallVector(GsiRoutes(vm), io, lambda: t.msi_target(1), lambda: t.device.interrupt(1))  # type: ignore[arg-type]
    call.sync()
    assert call.fd in io.watched and call.fd not in vm.irqfds  # MSI-X off: the I/O thread relays

    t.queue_vectors[1] = 2
    program_vector(t, 2, 0xFEE0_0000, 0x4041, masked=False)
    t.msix.set_control(enabled=True, function_masked=False)
    call.sync()
    assert vm.irqfds == {call.fd: 24} and call.fd not in io.watched
    assert vm.tables[-1][1] == [(24, 0xFEE0_0000, 0x4041)]

    program_vector(t, 2, 0xFEE0_1000, 0x4042, masked=True)
    call.sync()
    assert call.fd not in vm.irqfds and call.fd in io.watched
    call.close()


def test_a_signal_relayed_while_masked_stays_pending_until_unmasked() -> None:
    t, sent = transport_with_vectors()
    vm, io = FakeVm(), FakeIo()
    call = CallVector(GsiRoutes(vm), io, lambda: t.msi_target(1), lambda: t.device.interrupt(1))  # type: ignore[arg-type]
    t.queue_vectors[1] = 2
    program_vector(t, 2, 0xFEE0_0000, 0x4041, masked=True)
    t.msix.set_control(enabled=True, function_masked=False)
    call.sync()

    io.watched[call.fd]()  # the back end signalled while the vector was masked
    pending = t.msix.pending(2)
    program_vector(t, 2, 0xFEE0_0000, 0x4041, masked=False)

    assert pending and sent == [(0xFEE0_0000, 0x4041)]
    call.close()


def test_a_vector_beyond_the_table_is_no_vector() -> None:
    t, _ = transport_with_vectors()

    t._common_write(0x16, 2, 1)  # queue_select
    t._common_write(0x1A, 2, t.msix.vectors)  # queue_msix_vector one past the table

    assert t.queue_vectors[1] == 0xFFFF and t.msi_target(1) is None


def test_clearing_bus_mastering_detaches_the_irqfd() -> None:
    t, _ = transport_with_vectors()
    vm, io = FakeVm(), FakeIo()
    call = CallVector(GsiRoutes(vm), io, lambda: t.msi_target(1), lambda: t.device.interrupt(1))  # type: ignore[arg-type]
    t.on_interrupt_change = call.sync
    t.queue_vectors[1] = 2
    program_vector(t, 2, 0xFEE0_0000, 0x4041, masked=False)
    t.msix.set_control(enabled=True, function_masked=False)
    attached = call.fd in vm.irqfds

    t.config.write(0x04, 2, 0x2)  # memory decoding only: the device may not write MSIs

    assert attached and call.fd not in vm.irqfds and call.fd in io.watched
    call.close()
