"""pyhvd end to end: domains as processes, the xl-style verbs, reliability.

Every check on a guest's behaviour reads what the probe guest printed on its
console (the domain's console log), not what pyhv says about it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyhv.toolstack.client import ApiError

from .pyhvd import Daemon, daemon_fixture, vmm_pid

pytestmark = pytest.mark.kvm


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from daemon_fixture(tmp_path)


def test_create_list_pause_unpause_destroy(daemon: Daemon) -> None:
    d = daemon
    for name in ("t1", "t2", "t3"):
        r = d.pyhv("create", str(d.config(name, "ticker probe.n=50")))
        assert r.returncode == 0, r.stderr
        assert f"domain {name} created" in r.stdout
    for name in ("t1", "t2", "t3"):
        d.wait_for(name, "probe: tick n=2 ")
    listing = d.domains()
    assert sorted(listing) == ["t1", "t2", "t3"]
    assert all(x["state"] in ("running", "blocked") for x in listing.values())
    table = d.pyhv("list").stdout.splitlines()
    assert table[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    assert any(line.split()[0] == "t2" and line.split()[4] == "r-----" for line in table[1:])

    assert d.pyhv("pause", "t2").returncode == 0
    assert d.domains()["t2"]["state"] == "paused"
    frozen = d.ticks("t2")[-1]
    before_t1 = d.ticks("t1")[-1]
    d.ticks_reach("t1", before_t1 + 6)  # pausing t2 does not stop t1 ...
    assert d.ticks("t2")[-1] == frozen, "the paused guest kept printing"  # ... while t2 stays still
    assert d.pyhv("unpause", "t2").returncode == 0
    ticks = d.ticks_reach("t2", frozen + 1)
    assert ticks == list(range(1, len(ticks) + 1)), "the counter skipped or repeated after unpause"

    r = d.pyhv("destroy", "t3")
    assert r.returncode == 0, r.stderr
    assert sorted(d.domains()) == ["t1", "t2"]
    r = d.pyhv("pause", "t3")
    assert r.returncode == 1 and "no domain 't3'" in r.stderr


def test_twenty_concurrent_creates(daemon: Daemon) -> None:
    d = daemon
    results: dict[str, object] = {}

    def create(i: int) -> None:
        try:
            results[f"c{i}"] = d.client.post("/domains", {"config": d.config_dict(f"c{i}", "hello")})
        except ApiError as e:
            results[f"c{i}"] = e

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not failures
    ids = sorted(r["id"] for r in results.values())  # type: ignore[index]
    assert len(set(ids)) == 20
    listing = d.domains()
    assert sorted(listing) == sorted(f"c{i}" for i in range(20))
    for name in listing:
        log = d.wait_for(name, "probe: result=pass")
        assert 'cmdline="probe.test=hello"' in log
    # a second domain may not take a name in use
    with pytest.raises(ApiError) as e:
        d.client.post("/domains", {"config": d.config_dict("c3")})
    assert e.value.http_status == 409 and "already exists" in str(e.value)


def test_pyhvd_killed_and_restarted_finds_every_domain(daemon: Daemon) -> None:
    d = daemon
    for name in ("k1", "k2"):
        assert d.pyhv("create", str(d.config(name, "ticker probe.n=50"))).returncode == 0
    before = d.domains()
    d.kill(signal.SIGKILL)
    assert d.pyhv("list").returncode == 1  # nobody answers
    last = d.ticks("k1")[-1]
    d.ticks_reach("k1", last + 1)  # the guests kept running without pyhvd
    d.start()
    after = d.domains()
    assert {n: (x["id"], x["pid"]) for n, x in after.items()} == {n: (x["id"], x["pid"]) for n, x in before.items()}
    assert all(x["state"] in ("running", "blocked") for x in after.values())
    # the re-attached domains obey, and a new domain gets a fresh id
    assert d.pyhv("pause", "k1").returncode == 0
    assert d.domains()["k1"]["state"] == "paused"
    assert d.pyhv("create", str(d.config("k3"))).returncode == 0
    assert d.domains()["k3"]["id"] > max(x["id"] for x in before.values())
    assert d.pyhv("destroy", "k2").returncode == 0
    assert "k2" not in d.domains()


def test_vmm_crash_applies_on_crash_and_spares_the_others(daemon: Daemon) -> None:
    d = daemon
    for name, policy in (("keep", "preserve"), ("gone", "destroy"), ("again", "restart"), ("bystander", "destroy")):
        r = d.pyhv("create", str(d.config(name, "ticker probe.n=50", on_crash=policy)))
        assert r.returncode == 0, r.stderr
    before = d.domains()
    for name in ("keep", "gone", "again"):
        os.kill(before[name]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = d.domains()
        if (now.get("keep", {}).get("state") == "crashed" and "gone" not in now
                and now.get("again", {}).get("id", 0) > before["again"]["id"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"on_crash not applied: {now}\n{d.log()}")
    assert now["again"]["state"] in ("running", "blocked")
    d.wait_for("again", "probe: boot", timeout=10)
    assert d.console_log("again").count("probe: boot") == 2  # a fresh guest after the crash
    # the bystander never noticed
    assert now["bystander"]["pid"] == before["bystander"]["pid"]
    d.ticks_reach("bystander", d.ticks("bystander")[-1] + 1)
    # a preserved crash is listed until destroyed
    r = d.pyhv("list")
    assert any(line.split()[0] == "keep" and line.split()[4] == "----c-" for line in r.stdout.splitlines())
    assert d.pyhv("pause", "keep").returncode == 1
    assert d.pyhv("destroy", "keep").returncode == 0
    assert "keep" not in d.domains()


def test_a_stuck_domain_does_not_hang_the_api(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("stuck", "ticker probe.n=50"))).returncode == 0
    assert d.pyhv("create", str(d.config("fine"))).returncode == 0
    pid = vmm_pid(d.domains()["stuck"]["pid"])  # the VMM itself: under pyhvd a confined one is a child
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        listing = d.domains()
        assert time.monotonic() - t0 < 10
        assert listing["stuck"]["state"] == "unknown"
        assert listing["fine"]["state"] in ("running", "blocked")
        r = d.pyhv("pause", "stuck")
        assert r.returncode == 1 and "no answer" in r.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    assert d.pyhv("pause", "stuck").returncode == 0


def test_bad_requests_get_400_and_change_nothing(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("only"))).returncode == 0
    before = d.client.get("/domains")
    entries = sorted(os.listdir(d.run_dir / "domains"))
    good = d.config_dict("new")
    bad_bodies = [
        "{not json", "[1, 2]", json.dumps({"config": good, "surprise": 1}),
        json.dumps({"config": {**good, "vcpus": "two"}}), json.dumps({"config": {**good, "vcpus": 0}}),
        json.dumps({"config": {**good, "memory": "lots"}}), json.dumps({"config": {**good, "colour": "red"}}),
        json.dumps({"config": {**good, "kernel": "relative/path"}}), json.dumps({"config": good, "paused": "yes"}),
        json.dumps({"config": {**good, "kernel": "/etc/hostname"}}), json.dumps({}),
    ]
    import http.client
    import socket

    for body in bad_bodies:
        conn = http.client.HTTPConnection("pyhvd")
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(d.socket)
        conn.request("POST", "/domains", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        reply = json.loads(response.read())
        conn.close()
        assert response.status == 400, (body, reply)
        assert reply["error"] and "\n" not in reply["error"]
    for path, body in (("/domains/only/memory", {"target": -1}), ("/domains/only/memory", {"target": "1G"}),
                       ("/domains/only/vcpus/0/affinity", {"cpus": []}), ("/domains/only/maxmem", {})):
        with pytest.raises(ApiError) as e:
            d.client.put(path, body)
        assert e.value.http_status == 400
    assert d.client.get("/domains") == before or [x["name"] for x in d.client.get("/domains")] == ["only"]
    assert sorted(os.listdir(d.run_dir / "domains")) == entries
    # the CLI: bad usage is 2, with one line
    r = d.pyhv("create", str(d.config("x", vcpus=0)))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "vcpus" in r.stderr
    r = d.pyhv("vcpu-pin", "only", "0", "7-3")
    assert r.returncode == 2


def test_verbs_reboot_shutdown_console_dmesg_metrics(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("v", "ticker probe.n=50"))).returncode == 0
    d.wait_for("v", "probe: tick n=1 ")
    r = d.pyhv("dmesg", "v")
    assert r.returncode == 0 and "probe: ticker period_ms=50" in r.stdout
    r = d.pyhv("vcpu-list", "v")
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:3] == ["v", "1", "0"]
    r = d.pyhv("vcpu-pin", "v", "all", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(d.pyhv("vcpu-list", "--json", "v").stdout)[0]["affinity"] == [0]
    metrics = d.client.get("/metrics")
    assert 'pyhv_vcpu_cpu_seconds_total{domain="v",id="1",vcpu="0"}' in metrics
    assert 'pyhv_vcpu_exits_total{domain="v",id="1",vcpu="0",reason="io"}' in metrics
    r = d.pyhv("top", "-b", "-n", "2", "-d", "0.3")
    assert r.returncode == 0 and r.stdout.count("NAME") == 2
    # the console streams the guest's output live; a second client is turned away
    import subprocess
    import sys

    viewer = subprocess.Popen([sys.executable, "-m", "pyhv", "console", "v"], env=d.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert viewer.stdout is not None
        first = viewer.stdout.readline() + viewer.stdout.readline()
        assert b"probe: tick n=" in first
        r = d.pyhv("console", "v", input="")
        assert "console busy" in r.stdout
    finally:
        viewer.kill()
        viewer.wait()
    r = d.pyhv("mem-set", "v", "16M")
    assert r.returncode == 1 and "no balloon" in r.stderr
    r = d.pyhv("block-attach", "v", "/tmp/x.img")
    assert r.returncode == 1 and "not supported yet" in r.stderr
    assert d.pyhv("reboot", "v").returncode == 0
    log = d.wait_for("v", "probe: boot", timeout=10)
    deadline = time.monotonic() + 20
    while d.console_log("v").count("probe: boot") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.console_log("v").count("probe: boot") == 2, log
    r = d.pyhv("shutdown", "-w", "v")
    assert r.returncode == 0, r.stderr
    assert "v" not in d.domains()


def test_nics_are_plugged_by_pyhvd_into_their_bridge(daemon: Daemon) -> None:
    from pyroute2 import IPRoute

    d = daemon
    bridge, tap = f"pyhvbr{os.getpid() % 10000}", f"pyhvt{os.getpid() % 10000}"
    with IPRoute() as ip:
        ip.link("add", ifname=bridge, kind="bridge")
        try:
            config = d.config_dict("n", "hello", nics=[{"tap": tap, "bridge": bridge}])
            d.client.post("/domains", {"config": config})
            d.wait_for("n", "probe: result=pass")
            (link,) = ip.link_lookup(ifname=tap)
            assert ip.get_links(link)[0].get_attr("IFLA_MASTER") == ip.link_lookup(ifname=bridge)[0]
            # reboot: the domain keeps its adapter
            assert d.pyhv("reboot", "n").returncode == 0
            deadline = time.monotonic() + 20
            while d.console_log("n").count("probe: result=pass") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert d.console_log("n").count("probe: result=pass") == 2
            assert ip.link_lookup(ifname=tap)
            assert d.pyhv("destroy", "n").returncode == 0
            assert not ip.link_lookup(ifname=tap), "the TAP outlived its domain"
            # a bridge that does not exist: refused, nothing left behind
            bad = d.config_dict("m", "hello", nics=[{"tap": tap, "bridge": "nosuchbr0"}])
            with pytest.raises(ApiError) as e:
                d.client.post("/domains", {"config": bad})
            assert "nosuchbr0" in str(e.value)
            assert not ip.link_lookup(ifname=tap) and "m" not in d.domains()
        finally:
            ip.link("del", index=ip.link_lookup(ifname=bridge)[0])


def test_mem_set_balloons_the_guest(daemon: Daemon) -> None:
    d = daemon
    r = d.pyhv("create", str(d.config("b", "balloon probe.secs=30", balloon=True, memory=256)))
    assert r.returncode == 0, r.stderr
    d.wait_for("b", "probe: balloon ready")
    r = d.pyhv("mem-set", "b", "240M")
    assert r.returncode == 0, r.stderr
    d.wait_for("b", "probe: balloon target=4096 actual=4096")  # the guest gave 16 MiB back
    deadline = time.monotonic() + 10
    while d.domains()["b"]["memory"] != 240 << 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.domains()["b"]["memory"] == 240 << 20
    r = d.pyhv("mem-set", "b", "512M")
    assert r.returncode == 1 and "out of range" in r.stderr
    assert d.pyhv("mem-max", "b", "128M").returncode == 1  # below what it has now
    assert d.pyhv("mem-max", "b", "248M").returncode == 0
    r = d.pyhv("mem-set", "b", "250M")
    assert r.returncode == 1 and "out of range" in r.stderr


def _second_pyhvd(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from pyhv.toolstack.daemon import main; sys.exit(main())", *args],
        env=d.env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False,
    )


def test_a_second_pyhvd_on_the_same_run_or_state_directory_exits_naming_the_holder(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    assert d.proc is not None
    same_run = _second_pyhvd(d, "--socket", str(tmp_path / "other.sock"))
    same_state = _second_pyhvd(d, "--run-dir", str(tmp_path / "run2"))
    for r, directory in ((same_run, d.run_dir), (same_state, d.state_dir)):
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"{directory} is in use by another pyhvd (pid {d.proc.pid}" in r.stderr, r.stderr
    assert not (tmp_path / "other.sock").exists() and not (tmp_path / "run2" / "pyhvd.sock").exists()
    assert d.client.get("/version")["domains"] == 0


def test_a_second_domain_on_a_disk_image_in_use_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    disk = tmp_path / "shared.img"
    disk.write_bytes(bytes(1 << 20))
    assert d.pyhv("create", str(d.config("owner", "ticker probe.n=50", disks=[{"path": str(disk)}]))).returncode == 0
    entries = sorted(os.listdir(d.run_dir / "domains"))
    r = d.pyhv("create", str(d.config("thief", disks=[{"path": str(disk), "readonly": True}])))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"{disk}: disk image is in use" in r.stderr, r.stderr
    assert sorted(d.domains()) == ["owner"] and sorted(os.listdir(d.run_dir / "domains")) == entries


def test_debug_exit_ends_a_domain_even_with_on_poweroff_restart(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("dx", "hello", debug_exit=True, on_poweroff="restart"))).returncode == 0
    deadline = time.monotonic() + 30
    while "dx" in d.domains() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = d.console_log("dx")
    assert "dx" not in d.domains() and log.count("probe: boot") == 1 and "probe: result=pass" in log, log
