"""The Machine API in-process: pause/resume, vCPU state, power-off, reboot."""

from __future__ import annotations

import os
import struct
import time

import pytest

from pyhv.vcpu import StopKind
from pyhv.model import describe
from pyhv.vmm import Machine, build

from ..conftest import PROBE

pytestmark = pytest.mark.kvm

COUNTER_ADDR = 0x1FF000  # where the probe's counter workload keeps its count


def _wait_for(path: str, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            out = f.read()
        if text in out:
            return out
        time.sleep(0.01)
    raise AssertionError(f"{text!r} not printed within {timeout}s; got:\n{out}")


def _counter(machine: Machine) -> int:
    return int(struct.unpack("<Q", machine.memory.read(COUNTER_ADDR, 8))[0])


@pytest.fixture
def counting(tmp_path: os.PathLike[str]) -> Machine:
    log = os.path.join(tmp_path, "console")
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=counter", serial=f"file:{log}", vcpus=2))
    machine.start()
    _wait_for(log, f"addr={COUNTER_ADDR:#x}")
    yield machine
    machine.close()


def test_pause_freezes_the_guest_counter(counting: Machine) -> None:
    counting.pause()
    first = _counter(counting)
    time.sleep(0.2)
    assert _counter(counting) == first and counting.state == "paused"


def test_resume_continues_the_guest_counter(counting: Machine) -> None:
    counting.pause()
    paused = _counter(counting)
    counting.resume()
    time.sleep(0.2)
    assert _counter(counting) > paused and counting.state == "running"


def test_paused_vcpu_state_is_readable_and_in_ring3(counting: Machine) -> None:
    counting.pause()
    state = counting.vcpu_state(0)
    assert state.sregs["cs"]["dpl"] == 3 and state.sregs["efer"] & 0x400 and len(state.lapic) == 1024


def test_resume_keeps_the_guest_state_it_paused_with(counting: Machine) -> None:
    counting.pause()
    before = counting.vcpu_state(0)
    counting.resume()
    counting.pause()
    after = counting.vcpu_state(0)
    assert (after.sregs["cr3"], after.sregs["gdt"], after.msrs[0x1B]) == (
        before.sregs["cr3"], before.sregs["gdt"], before.msrs[0x1B]
    )


def test_state_of_a_running_vcpu_is_refused(counting: Machine) -> None:
    with pytest.raises(Exception, match="pause the machine first"):
        counting.vcpu_state(0)


def test_each_vcpu_reports_its_own_apic_id(counting: Machine) -> None:
    counting.pause()
    assert [counting.vcpu_state(i).apic_id for i in range(2)] == [0, 1]


def test_stop_ends_a_paused_machine(counting: Machine) -> None:
    counting.pause()
    assert counting.stop().kind is StopKind.DESTROY and counting.state == "stopped"


def test_guest_poweroff_is_a_poweroff_stop(tmp_path: os.PathLike[str]) -> None:
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=poweroff", serial="none"))
    machine.start()
    stop = machine.wait(30)
    machine.close()
    assert stop is not None and (stop.kind, stop.status) == (StopKind.POWEROFF, 0)
