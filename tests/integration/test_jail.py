"""``pyhv run --jail``: the VMM confined (own namespaces and root, an unprivileged
uid, no capabilities, no_new_privs) still runs the probe's workloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import PROBE, ROOT
from .probe import Run, run_probe
from .test_probe_net import GUEST_MAC, Guest, Tap, _echo_clients, _ping
from .test_probe_net import tap  # noqa: F401 - the fixture

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(os.geteuid() != 0, reason="--jail needs root")]


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def _child(pid: int, timeout: float = 10.0) -> int:
    """The one child process of ``pid`` (the confined VMM under its supervisor)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"pyhv {pid} started no confined child")


def _start_ticker(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_RUN_DIR=str(run_dir))
    return subprocess.Popen(
        [sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline", "probe.test=ticker probe.n=20",
         "--jail", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def _wait_tick(p: subprocess.Popen[str]) -> str:
    """The next whole ``probe: tick`` line (one cut by a save's pause is skipped)."""
    assert p.stdout is not None
    line = p.stdout.readline()
    while not line.startswith("probe: tick "):
        assert line, "the guest stopped printing: " + (p.stderr.read() if p.poll() is not None and p.stderr else "")
        line = p.stdout.readline()
    return line


def test_jailed_probe_prints_its_pass_line_and_the_report_shows_the_confinement() -> None:
    run = run_probe("probe.test=hello", "--jail-report")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    report = dict(line.split(" ", 2)[1:] for line in run.stderr.splitlines() if line.startswith("jail: ")
                  and not line.startswith(("jail: namespace", "jail: mount")))
    assert report["Uid"].split()[0] != "0"
    assert report["CapEff"] == report["CapPrm"] == report["CapBnd"] == "0000000000000000"
    assert report["NoNewPrivs"] == "1"
    namespaces = [line for line in run.stderr.splitlines() if line.startswith("jail: namespace")]
    assert len(namespaces) == 6 and all(line.endswith("(own)") for line in namespaces), run.stderr


def test_jailed_vmm_is_unprivileged_and_rooted_in_its_jail_while_the_guest_runs(tmp_path: Path) -> None:
    p = _start_ticker(tmp_path)
    try:
        _wait_tick(p)
        vmm = _child(p.pid)
        status = _status(vmm)
        root = tmp_path / "jail" / f"run-{p.pid}" / "root"
        jail_root, seen_root = os.stat(root), os.stat(f"/proc/{vmm}/root")
        assert status["Uid"].split()[0] != "0" and status["Gid"].split()[0] != "0", status["Uid"]
        assert status["CapEff"] == "0000000000000000" and status["CapPrm"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert int(status["Seccomp_filters"]) >= 1
        vcpu = next(t for t in os.listdir(f"/proc/{vmm}/task")
                    if open(f"/proc/{vmm}/task/{t}/comm").read().strip() == "vcpu0")
        assert _status(int(vcpu))["Seccomp_filters"] == "2"  # the baseline and the vCPU's narrowing
        assert (seen_root.st_dev, seen_root.st_ino) == (jail_root.st_dev, jail_root.st_ino)
        assert sorted(os.listdir(f"/proc/{vmm}/root")) == ["dev", "proc"]
        for ns in ("mnt", "pid", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{vmm}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        _wait_tick(p)  # still running, confined
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not (tmp_path / "jail" / f"run-{p.pid}").exists()


def test_jailed_disk_and_rng_workloads_pass(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    run: Run = run_probe("probe.test=blk", "--disk", str(disk), "--rng", "--jail")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    run = run_probe("probe.test=rng", "--rng", "--jail")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr


def test_jail_refuses_options_it_cannot_honour_in_one_line(tmp_path: Path) -> None:
    run = run_probe("probe.test=hello", "--jail", "--gdb", f"unix:{tmp_path}/g")
    assert run.status == 2 and run.stderr.strip().splitlines() == [
        "pyhv: --gdb cannot go with --jail: the stub would listen outside the jail"]


def test_jailed_save_on_signal_writes_a_snapshot_that_restores_and_runs_on(tmp_path: Path) -> None:
    snap = tmp_path / "vm.snap"
    p = _start_ticker(tmp_path, "--snapshot-on-signal", str(snap))
    try:
        before = int(_wait_tick(p).split("n=")[1].split()[0])
        p.send_signal(signal.SIGUSR2)
        assert p.stderr is not None
        said = [p.stderr.readline()]
        while said[-1] and not said[-1].startswith("pyhv: saved snapshot"):
            said.append(p.stderr.readline())
        assert said[-1].startswith(f"pyhv: saved snapshot {snap}"), said
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_RUN_DIR=str(tmp_path))
    q = subprocess.Popen([sys.executable, "-m", "pyhv", "run", "--restore", str(snap), "--jail"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        after = int(_wait_tick(q).split("n=")[1].split()[0])
    finally:
        q.send_signal(signal.SIGTERM)
        q.communicate(timeout=30)
    assert after > before


def _request(path: str, request: str) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        return s.makefile().readline()


def test_jailed_vsock_echo_serves_host_connections(tmp_path: Path) -> None:
    uds = str(tmp_path / "v.sock")
    with Guest("probe.test=vsock probe.n=2 probe.secs=60", "--vsock", f"cid=3,uds={uds}", "--jail") as guest:
        guest.wait_line("listening")
        assert _echo_clients(uds, 2, 20000, 1000, streaming=False) == [True] * 2, guest.output()
        run = guest.finish()
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    assert run.line("served")["errors"] == "0"
    assert not os.path.exists(uds)  # bound before the jail, removed by the supervisor


def test_jailed_balloon_follows_a_target_set_over_the_control_socket(tmp_path: Path) -> None:
    control = str(tmp_path / "c.sock")
    with Guest("probe.test=balloon probe.n=1 probe.secs=60", "--balloon", "--memory", "128M", "--control", control,
               "--jail") as guest:
        guest.wait_line("balloon ready")
        assert '"ok": true' in _request(control, '{"op": "mem-set", "bytes": 100663296}'), guest.output()
        run = guest.finish()
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    done = run.line("changes")
    assert done["target"] == done["actual"] == str(32 << 20 >> 12), done


def test_jailed_net_answers_pings_through_a_tap_opened_before_the_jail(tap: Tap) -> None:  # noqa: F811
    with Guest(f"probe.test=net probe.n=3 probe.ip={tap.guest_ip} probe.peer={tap.host_ip} probe.secs=30",
               "--net", f"tap={tap.name},mac={GUEST_MAC}", "--jail") as guest:
        guest.wait_line("net mac=")
        assert _ping(tap, 3) == 3, guest.output()
        run = guest.finish()
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    assert run.line("icmp_replies")["icmp_replies"] == "3"


def test_jailed_guest_reboot_builds_the_machine_again_from_the_handed_descriptors(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    with Guest("probe.test=reboot-porta", "--disk", str(disk), "--jail") as guest:
        deadline = time.monotonic() + 30
        while guest.output().count("probe: boot entry") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        guest.proc.send_signal(signal.SIGTERM)
        run = guest.finish()
    assert run.stdout.count("probe: boot entry") >= 3, run.stdout + run.stderr
    assert run.status == 128 + signal.SIGTERM and "SIGSYS" not in run.stderr, run.stderr


# -- break-out attempts ------------------------------------------------------------------------

#: what the confined VMM tries (PYHV_TEST_BREAKOUT) -> the system call seccomp kills it for,
#: or None: refused with ENOENT (the path does not exist in the jail) and the guest runs on
BREAKOUTS = {
    "execve": "execve", "open-shadow": None, "open-disk": None, "inet": "socket", "ptrace": "ptrace",
    "mount": "mount", "setuid": "setuid", "kill": "kill", "cgroup": None,
}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """Another confined domain, with a disk, running through the attempts."""
    tmp = tmp_path_factory.mktemp("victim")
    disk = tmp / "victim.img"
    with open(disk, "wb") as f:
        f.write(b"victim" * 1000)
        f.truncate(1 << 20)
    p = _start_ticker(tmp, "--disk", f"{disk},ro")
    try:
        _wait_tick(p)
        yield p, _child(p.pid), disk
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)


@pytest.mark.parametrize("what", sorted(BREAKOUTS))
def test_breakout_attempt_is_refused_or_kills_the_vmm_naming_the_call(
    what: str, victim: tuple[subprocess.Popen[str], int, Path]
) -> None:
    p, victim_vmm, disk = victim
    before = disk.read_bytes()
    arg = {"open-disk": str(disk), "ptrace": str(victim_vmm), "kill": str(victim_vmm)}.get(what)
    spec = f"{what}:{arg}" if arg else what
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_TEST_BREAKOUT=spec)
    run = subprocess.run([sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE), "--cmdline",
                          "probe.test=hello", "--debug-exit", "--jail"],
                         capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60, check=False)
    syscall = BREAKOUTS[what]
    if syscall is None:
        assert f"pyhv: breakout {what}: denied (ENOENT)" in run.stderr, run.stderr
        assert Run(run.returncode, run.stdout, run.stderr).line("result")["result"] == "pass"
    else:
        assert run.returncode == 128 + signal.SIGSYS, run.stdout + run.stderr
        assert f"killed by SIGSYS (seccomp: system call {syscall} (" in run.stderr, run.stderr
        assert "probe:" not in run.stdout
    assert p.poll() is None and _status(victim_vmm)["State"][0] in "RS"  # the other domain runs on
    _wait_tick(p)
    assert disk.read_bytes() == before


# -- under pyhvd -------------------------------------------------------------------------------


def test_pyhvd_confines_its_domains_by_default_and_jail_false_opts_out_loudly(tmp_path: Path) -> None:
    from .pyhvd import daemon_fixture, vmm_pid

    for d in daemon_fixture(tmp_path, "--jail-uids", "300000:1000"):
        assert d.pyhv("create", str(d.config("boxed", "ticker probe.n=50"))).returncode == 0
        assert d.pyhv("create", str(d.config("open", "ticker probe.n=50", jail=False))).returncode == 0
        d.wait_for("boxed", "probe: tick n=2")
        d.wait_for("open", "probe: tick n=2")
        boxed, opened = d.domains()["boxed"], d.domains()["open"]
        vmm = vmm_pid(boxed["pid"])
        status = _status(vmm)
        assert status["Uid"].split()[0] == str(300000 + boxed["id"] % 1000)
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert os.readlink(f"/proc/{vmm}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert _status(vmm_pid(opened["pid"]))["Uid"].split()[0] == "0"
        assert f"WARNING: domain {opened['id']} (open) runs NOT confined: jail = false" in d.log()
        # pyhvd names the confined VMM's vCPU threads by their host ids
        (vcpu,) = json.loads(d.pyhv("vcpu-list", "--json", "boxed").stdout)
        with open(f"/proc/{vmm}/task/{vcpu['tid']}/comm") as f:
            assert f.read().strip() == "vcpu0"
        # console, save, restore
        assert "probe: tick" in d.pyhv("dmesg", "boxed").stdout
        snap = d.state_dir / "snapshots" / "boxed.snap"
        assert d.pyhv("save", "boxed", str(snap)).returncode == 0
        assert "boxed" not in d.domains()
        r = d.pyhv("restore", str(snap))
        assert r.returncode == 0, r.stderr
        before = d.console_log("boxed").count("probe: tick")
        deadline = time.monotonic() + 30
        while d.console_log("boxed").count("probe: tick") <= before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.console_log("boxed").count("probe: tick") > before + 2
        restored = d.domains()["boxed"]
        assert _status(vmm_pid(restored["pid"]))["Seccomp"] == "2"
        assert d.pyhv("destroy", "boxed").returncode == 0
        jail = d.run_dir / "jail" / f"domain-{restored['id']}"
        deadline = time.monotonic() + 10
        while jail.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not jail.exists()


# -- the jailer --------------------------------------------------------------------------------


def test_jailer_runs_the_firecracker_front_end_confined_in_firecracker_s_layout(tmp_path: Path) -> None:
    uid = 300999
    (tmp_path / "bin").mkdir()
    exec_file = tmp_path / "bin" / "firecracker"
    exec_file.write_text("")
    jail_id = f"j{os.getpid()}"
    root = tmp_path / "jail" / "firecracker" / jail_id / "root"
    root.mkdir(parents=True)
    (root / "probe.elf").write_bytes(PROBE.read_bytes())
    os.chown(root / "probe.elf", uid, uid)
    (root / "vm.json").write_text(json.dumps({
        "boot-source": {"kernel_image_path": "/probe.elf", "boot_args": "probe.test=hello"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}))
    cgroup = Path("/sys/fs/cgroup/cpuset/pyhv-test") / jail_id
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pyhv.jail.jailer import main; sys.exit(main())",
         "--id", jail_id, "--exec-file", str(exec_file), "--uid", str(uid), "--gid", str(uid),
         "--chroot-base-dir", str(tmp_path / "jail"), "--new-pid-ns", "--cgroup", "cpuset.cpus=0",
         "--parent-cgroup", "pyhv-test", "--resource-limit", "no-file=512",
         "--", "--no-api", "--config-file", "/vm.json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    vmm = 0
    try:
        assert p.wait(30) == 0, p.stderr.read() if p.stderr else ""  # the jailer exits once the child runs
        vmm = int((root / "firecracker.pid").read_text())
        assert p.stdout is not None
        lines = [p.stdout.readline() for _ in range(3)]
        status = _status(vmm)
        seen, jail_root = os.stat(f"/proc/{vmm}/root"), os.stat(root)
        with open(cgroup / "tasks") as f:
            tasks = f.read().split()
        with open(f"/proc/{vmm}/limits") as f:
            files_limit = next(line for line in f if line.startswith("Max open files")).split()[3]
    finally:
        if vmm:
            os.kill(vmm, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while os.path.exists(f"/proc/{vmm}") and time.monotonic() < deadline:
                time.sleep(0.1)
        p.communicate(timeout=10)
        for folder in (cgroup, cgroup.parent):
            if folder.exists():
                folder.rmdir()
    assert Run(0, "".join(lines), "").line("result")["result"] == "pass", lines
    assert status["Uid"].split()[0] == str(uid) and status["CapEff"] == "0000000000000000"
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
    assert (seen.st_dev, seen.st_ino) == (jail_root.st_dev, jail_root.st_ino)
    assert str(vmm) in tasks and files_limit == "512"
    assert sorted(os.listdir(root / "dev")) == ["kvm", "net", "urandom"]


def test_jailed_blk_workload_runs_on_a_vhost_user_socket_the_jail_uid_may_use(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # the socket's folder is bound into the jail: the jail's uid must reach the socket
    image, sock = tmp_path / "plain.img", tmp_path / "blk.sock"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    daemon = subprocess.Popen(["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={image}",
                               "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},"
                               "writable=on"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.chmod(0o777)
        run = run_probe("probe.test=blk probe.irq=msix", "--disk", f"vhost-user={sock}", "--memory", "64M", "--jail",
                        timeout=180)
    finally:
        daemon.terminate()
        daemon.wait()
    assert run.line("verified")["mismatches"] == "0"
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0, run.stderr
