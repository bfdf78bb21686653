"""The scheduler workloads of the probe: burn and latency."""

from __future__ import annotations

import pytest

from .probe import run_probe

pytestmark = pytest.mark.kvm


def test_burn_reports_growing_work_then_passes() -> None:
    run = run_probe("probe.test=burn probe.secs=1 probe.n=100")
    progress = [f for f in run.lines() if "burn" in f and "work" in f and "done" not in f]
    assert len(progress) >= 5, run.stdout
    ms = [int(f["ms"]) for f in progress]
    work = [int(f["work"]) for f in progress]
    assert ms == sorted(ms) and work == sorted(work) and work[-1] > work[0] > 0
    assert ms[-1] >= 1000
    done = run.line("done")
    assert int(done["work"]) >= work[-1]
    assert run.line("result")["result"] == "pass" and run.status == 0


def test_latency_prints_ordered_percentiles_and_passes() -> None:
    run = run_probe("probe.test=latency probe.n=50")
    head = run.line("apic_hz")
    assert head["n"] == "50" and int(head["tsc_hz"]) > 0
    lat = run.line("p99_us")
    p = [float(lat[k]) for k in ("min_us", "p50_us", "p99_us", "max_us")]
    assert p == sorted(p) and p[0] >= 0
    assert lat["early"] == "0"
    assert run.line("result")["result"] == "pass" and run.status == 0


def test_latency_refuses_zero_samples() -> None:
    run = run_probe("probe.test=latency probe.n=0")
    assert "probe.n" in run.line("error")["error"]
    assert run.status == 1
