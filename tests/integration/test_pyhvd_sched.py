"""pyhvd with the BVT dispatcher: parameters set and shown on running domains.

Shares and latencies are measured by bench/sched.py; these tests check that
the dispatcher takes every domain's vCPUs, that parameter changes reach it,
and that the guests keep running (their own progress lines)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pyhvd import Daemon, daemon_fixture

pytestmark = pytest.mark.kvm


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from daemon_fixture(tmp_path, "--cpu-pool", "1")


def _sched(d: Daemon, *args: str) -> dict:
    r = d.pyhv("sched-bvt", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _wait_scheduled(d: Daemon, names: set[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = _sched(d)
        if {x["name"] for x in view["domains"] if x["scheduled"]} >= names:
            return view
        time.sleep(0.1)
    raise AssertionError(f"not all of {names} were scheduled: {view}")


def test_sched_bvt_sets_and_shows_parameters_on_running_domains(daemon: Daemon) -> None:
    d = daemon
    for name, weight in (("light", 1), ("heavy", 3)):
        config = d.config(name, "burn probe.secs=600 probe.n=100", sched={"weight": weight, "warp_ms": 0})
        r = d.pyhv("create", str(config))
        assert r.returncode == 0, r.stderr
    view = _wait_scheduled(d, {"light", "heavy"})
    assert view["enabled"] and view["pool"] == [1]
    by_name = {x["name"]: x for x in view["domains"]}
    assert by_name["light"]["weight"] == 1 and by_name["heavy"]["weight"] == 3
    assert [v["weight"] for v in by_name["heavy"]["vcpus"]] == [3]
    # the vCPU threads are confined to the pool
    for name in ("light", "heavy"):
        vcpus = json.loads(d.pyhv("vcpu-list", "--json", name).stdout)
        assert [v["affinity"] for v in vcpus] == [[1]]
    # both guests make progress under the dispatcher (what they printed)
    for name in ("light", "heavy"):
        d.wait_for(name, "probe: burn ms=")

    # a change applies to the running domain, and persists in its configuration
    r = d.pyhv("sched-bvt", "-d", "light", "--weight", "5", "--warp", "20", "--warp-limit", "100", "--unwarp", "50")
    assert r.returncode == 0, r.stderr
    light = _sched(d, "-d", "light")["domains"][0]
    assert (light["weight"], light["warp_ms"], light["warp_limit_ms"], light["unwarp_ms"]) == (5, 20, 100, 50)
    assert [v["weight"] for v in light["vcpus"]] == [5]
    assert json.loads(d.pyhv("list", "-l", "light").stdout)[0]["config"]["sched"]["weight"] == 5
    assert d.pyhv("sched-bvt", "--ctx-allow", "7").returncode == 0
    assert _sched(d)["ctx_allow_ms"] == 7
    # virtual time advances; the human table and the metrics show it
    before = {x["name"]: x["vcpus"][0]["avt_ns"] for x in _sched(d)["domains"]}
    time.sleep(0.5)
    after = {x["name"]: x["vcpus"][0]["avt_ns"] for x in _sched(d)["domains"]}
    assert all(after[n] > before[n] for n in before), (before, after)
    table = d.pyhv("sched-bvt").stdout
    assert "BVT dispatcher on CPUs 1" in table and "AVT(ms)" in table
    assert 'pyhv_vcpu_bvt_share{domain="heavy"' in d.client.get("/metrics")
    top = d.pyhv("top", "-b", "-n", "1").stdout
    assert "SHARE%" in top

    # bad values: one line, status 2, nothing changed
    for args in (["-d", "light", "--weight", "0"], ["-d", "light", "--weight", "x"], ["--weight", "2"],
                 ["-d", "light", "--warp", "999999"], ["--ctx-allow", "0"]):
        r = d.pyhv("sched-bvt", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
    assert _sched(d, "-d", "light")["domains"][0]["weight"] == 5

    # stopping pyhvd hands the threads back to the host's scheduler; a new one takes them again
    import os
    import signal

    tids = [json.loads(d.pyhv("vcpu-list", "--json", n).stdout)[0]["tid"] for n in ("light", "heavy")]
    d.kill(signal.SIGTERM)
    for tid in tids:
        assert os.sched_getaffinity(tid) == os.sched_getaffinity(0)
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
    d.start()
    _wait_scheduled(d, {"light", "heavy"})
    assert all(os.sched_getaffinity(tid) == {1} for tid in tids)
    assert _sched(d, "-d", "light")["domains"][0]["weight"] == 5  # kept across the restart


def test_dispatcher_off_keeps_parameters(tmp_path: Path) -> None:
    for d in daemon_fixture(tmp_path):
        assert d.pyhv("create", str(d.config("p", "hello", sched={"weight": 9}))).returncode == 0
        view = _sched(d)
        assert not view["enabled"]
        assert view["domains"][0]["weight"] == 9 and not view["domains"][0]["scheduled"]
        assert d.pyhv("sched-bvt", "-d", "p", "--weight", "4").returncode == 0
        assert _sched(d)["domains"][0]["weight"] == 4
        assert "off (start pyhvd with --cpu-pool CPUS)" in d.pyhv("sched-bvt").stdout
