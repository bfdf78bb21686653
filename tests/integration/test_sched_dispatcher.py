"""The BVT dispatcher over real domain processes: it finds their vCPU threads,
confines them to the pool, puts them in the classes it decides, and gives
them back as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pyhv.sched.bvt import BvtParams
from pyhv.sched.dispatcher import Dispatcher, vcpu_threads

from ..conftest import PROBE, ROOT

pytestmark = pytest.mark.kvm

MS = 1_000_000


def _start(cmdline: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", cmdline,
         "--debug-exit"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _vcpu0(p: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tids = vcpu_threads(p.pid)
        if 0 in tids:
            return tids[0]
        time.sleep(0.01)
    raise AssertionError("no vcpu0 thread appeared")


def test_dispatcher_confines_and_classes_real_vcpu_threads() -> None:
    pool = max(0, (os.cpu_count() or 1) - 1)
    burn = _start("probe.test=burn probe.secs=3 probe.n=1000")
    lat = _start("probe.test=latency probe.n=400")
    try:
        tb, tl = _vcpu0(burn), _vcpu0(lat)
        before = os.sched_getaffinity(tb)
        d = Dispatcher([pool], ctx_allow_ns=5 * MS)
        d.add_domain("burn", burn.pid, [tb], BvtParams(weight=1))
        d.add_domain("lat", lat.pid, [tl], BvtParams(weight=1, warp_ns=50 * MS))
        assert os.sched_getaffinity(tb) == {pool} and os.sched_getaffinity(tl) == {pool}
        seen_fifo = seen_other = False
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            d.step()
            seen_fifo |= os.sched_getscheduler(tl) == os.SCHED_FIFO       # asleep, armed
            seen_other |= os.sched_getscheduler(tb) == os.SCHED_OTHER     # the burner, chosen
            time.sleep(0.001)
        assert seen_fifo and seen_other
        m = {x.domain: x for x in d.metrics()}
        assert m["burn"].cpu_ns > 0 and m["burn"].avt_ns > 0
        d.close()
        assert os.sched_getscheduler(tl) == os.SCHED_OTHER
        assert os.sched_getaffinity(tb) == before
        out, _ = burn.communicate(timeout=30)
        assert b"probe: burn done" in out and b"probe: result=pass" in out
    finally:
        for p in (burn, lat):
            p.kill()
            p.wait()
