"""The balloon takes memory back from a running probe guest: the VMM's RSS drops."""

from __future__ import annotations

import os
import re
import time

import pytest

from pyhv.model import describe
from pyhv.vmm import build

from ..conftest import PROBE

pytestmark = pytest.mark.kvm

MiB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _wait(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_inflating_64_mib_drops_the_vmm_rss_and_deflating_gives_it_back(tmp_path: os.PathLike[str]) -> None:
    log = os.path.join(tmp_path, "console")
    machine = build(describe(kernel=str(PROBE), cmdline="probe.test=balloon probe.secs=60", serial=f"file:{log}",
                                  memory="512M", balloon=True))
    try:
        machine.start()
        # the whole field, not just the line's start: the console file fills as the guest prints
        ready = r"balloon ready .* pool_base=(0x[0-9a-f]+) "
        assert _wait(lambda: re.search(ready, open(log).read()) is not None)
        pool = int(re.search(ready, open(log).read()).group(1), 16)  # type: ignore[union-attr]
        machine.memory.write(pool, b"\xaa" * (64 * MiB))  # make the pool resident, as a busy guest would
        before = _rss()
        machine.set_balloon_target(64 * MiB)
        inflated = _wait(lambda: machine.balloon.inflated == 64 * MiB // 4096)  # type: ignore[union-attr]
        after = _rss()
        machine.set_balloon_target(0)
        deflated = _wait(lambda: machine.balloon.actual_pages == 0)  # type: ignore[union-attr]
    finally:
        machine.close()
    assert inflated and deflated and before - after >= 56 * MiB
