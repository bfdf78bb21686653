"""The VMM runtime: one lifecycle policy and one control protocol for every front end."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyhv.errors import PyhvError
from pyhv.model import Lifecycle, from_plain
from pyhv.vcpu import Stop, StopKind
from pyhv.vmm import control
from pyhv.vmm.runtime import Action, Runtime, decide

MiB = 1 << 20


@pytest.mark.parametrize(
    "kind,lifecycle,action",
    [
        (StopKind.RESET, Lifecycle(on_reboot="restart"), Action.RESTART),
        (StopKind.RESET, Lifecycle(on_reboot="destroy"), Action.END),
        (StopKind.POWEROFF, Lifecycle(on_poweroff="destroy"), Action.END),
        (StopKind.POWEROFF, Lifecycle(on_poweroff="restart"), Action.RESTART),
        (StopKind.DEBUG_EXIT, Lifecycle(on_poweroff="restart"), Action.END),
        (StopKind.CRASH, Lifecycle(on_crash="destroy"), Action.END),
        (StopKind.CRASH, Lifecycle(on_crash="restart"), Action.RESTART),
        (StopKind.ERROR, Lifecycle(on_crash="preserve"), Action.PRESERVE),
        (StopKind.REBOOT, Lifecycle(on_reboot="destroy"), Action.RESTART),
        (StopKind.DESTROY, Lifecycle(on_poweroff="restart"), Action.END),
        (StopKind.SAVED, Lifecycle(on_crash="restart"), Action.END),
        (StopKind.MIGRATED, Lifecycle(), Action.END),
    ],
)
def test_each_stop_under_each_policy_has_one_meaning(kind: StopKind, lifecycle: Lifecycle, action: Action) -> None:
    assert decide(Stop(kind, 0, "words that are never compared"), lifecycle) is action


class FakeMachine:
    state = "running"

    def __init__(self) -> None:
        self.vcpus: list[Any] = []
        self.balloon = SimpleNamespace(target_pages=0, actual_pages=0, set_target=None)
        self.targets: list[int] = []
        self.devices: dict[str, Any] = {}

    def set_balloon_target(self, size: int) -> None:
        self.targets.append(size)

    def nvram(self) -> tuple[float, bytes]:
        return 0.0, bytes(128)

    def pause(self, timeout: float = 5.0) -> None:
        self.state = "paused"

    def resume(self) -> None:
        self.state = "running"

    def save(self, path: str, description: Any = None, force: bool = False, into: int | None = None) -> Any:
        raise PyhvError(f"cannot create {path}.tmp: No such file or directory")


def runtime_with(machine: FakeMachine) -> Runtime:
    runtime = Runtime(from_plain({"kernel": "/k", "memory": "256M", "maxmem": "512M", "balloon": True}), console=None)
    runtime.machine, runtime.state = machine, "running"
    return runtime


def test_mem_set_asks_the_balloon_for_the_difference() -> None:
    machine = FakeMachine()
    runtime_with(machine).handle({"op": "mem-set", "bytes": 192 * MiB})
    assert machine.targets == [64 * MiB]


@pytest.mark.parametrize(
    "request_,message",
    [
        ({"op": "frobnicate"}, "unknown operation 'frobnicate'"),
        ({"op": ["x"]}, "unknown operation"),
        ({"op": "mem-set", "bytes": "lots"}, "bytes must be an integer"),
        ({"op": "mem-set", "bytes": 1 << 40}, "out of range"),
        ({"op": "vcpu-pin", "vcpu": 0, "cpus": [True]}, "cpus must be"),
        ({"op": "save", "path": "rel"}, "absolute"),
        ({"op": "migrate", "host": "h", "port": 1, "key": "zz"}, "hex"),
    ],
)
def test_bad_requests_are_refused_in_one_line(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(PyhvError) as e:
        runtime_with(FakeMachine()).handle(request_)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_failed_save_leaves_the_domain_running_as_before() -> None:
    machine = FakeMachine()
    runtime = runtime_with(machine)
    with pytest.raises(PyhvError, match="No such file"):
        runtime.handle({"op": "save", "path": "/nonexistent/dir/snap", "then": "pause"})
    assert (machine.state, runtime.state) == ("running", "running")


_FD_PASSING = """
import os, sys
from pyhv.vmm import control
seen = []
def handler(request):
    fd = request.get("fd")
    seen.append(os.read(fd, 5) if isinstance(fd, int) else fd)
    return {}
server = control.Server(sys.argv[1], handler)
r, w = os.pipe()
os.write(w, b"hello")
control.call(sys.argv[1], {"op": "save"}, fds=(r,))
control.call(sys.argv[1], {"op": "save", "fd": 0})
server.close()
print(seen)
"""


def test_a_descriptor_passed_with_a_request_reaches_the_handler_and_json_cannot_forge_one(tmp_path: Path) -> None:
    # in a process of its own: descriptor numbers other tests' threads left behind cannot interfere
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FD_PASSING, str(tmp_path / "control")], capture_output=True,
                         text=True, check=False, env=dict(os.environ, PYTHONPATH=str(Path(control.__file__).parents[2])))
    assert out.stdout.strip() == "[b'hello', None]", out.stderr


def test_mem_max_changes_the_description_the_domain_travels_with() -> None:
    runtime = runtime_with(FakeMachine())
    runtime.handle({"op": "mem-max", "bytes": 1024 * MiB})
    assert runtime.description.maxmem == 1024 * MiB


def test_control_server_answers_one_json_line_per_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    server = control.Server(path, lambda request: {"echo": request["op"]})
    try:
        reply = control.call(path, {"op": "info"})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"not json\n")
            garbled = json.loads(s.makefile().readline())
    finally:
        server.close()
    assert reply == {"echo": "info"} and garbled == {"ok": False, "error": "request is not JSON"}


def test_a_destroy_that_arrives_while_the_guest_reboots_ends_the_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyhv.vmm import builder

    def signal_between_machines(machine: Any) -> None:  # after the reboot was decided, before the next build
        runtime.stop(StopKind.DESTROY, 143, "stopped by SIGTERM")

    runtime = Runtime(from_plain({"kernel": "/k"}), console=None, on_machine_end=signal_between_machines)
    built: list[Any] = []

    class Rebooting(FakeMachine):
        state = "created"

        def start(self) -> None:
            self.state = "running"

        def wait(self, timeout: float) -> Stop:
            return Stop(StopKind.RESET, 0, "guest reset")

        def request_stop(self, stop: Stop) -> None:
            pass

        def close(self) -> None:
            pass

    def build(*args: Any, **kwargs: Any) -> FakeMachine:
        built.append(Rebooting())
        return built[-1]

    monkeypatch.setattr(builder, "build", build)
    ending = runtime.run()
    assert (ending.reason, ending.status, len(built)) == ("destroy", 143, 1)


def _reset_then_power_off(monkeypatch: pytest.MonkeyPatch, plain: dict[str, str], keyword: str) -> list[Any]:
    """Run a domain whose first machine resets and second powers off; what each build got as ``keyword``."""
    from pyhv.vmm import builder

    given: list[Any] = []

    class Resetting(FakeMachine):
        state = "created"

        def start(self) -> None:
            self.state = "running"

        def wait(self, timeout: float) -> Stop:
            return Stop(StopKind.RESET if len(given) == 1 else StopKind.POWEROFF, 0, "words")

        def nvram(self) -> tuple[float, bytes]:
            return 1.5, bytes([len(given)]) * 128

        def keep_memory(self) -> str:
            return "the RAM of the machine that reset"

        def close(self) -> None:
            pass

    def build(*args: Any, **kwargs: Any) -> FakeMachine:
        given.append(kwargs.get(keyword))
        return Resetting()

    monkeypatch.setattr(builder, "build", build)
    assert Runtime(from_plain(plain), console=None).run().reason == "poweroff"
    return given


def test_the_next_machine_after_a_reset_gets_the_cmos_of_the_one_that_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _reset_then_power_off(monkeypatch, {"kernel": "/k"}, "nvram") == [None, (1.5, bytes([1]) * 128)]


@pytest.mark.parametrize("plain,kept", [({"firmware": "/bios.bin"}, True), ({"kernel": "/k"}, False)])
def test_a_firmware_machine_keeps_its_ram_over_a_guest_reset_and_a_kernel_boot_does_not(
    monkeypatch: pytest.MonkeyPatch, plain: dict[str, str], kept: bool
) -> None:
    given = _reset_then_power_off(monkeypatch, plain, "warm")
    assert given == [None, "the RAM of the machine that reset" if kept else None]


def test_the_repl_runs_typed_code_over_the_control_socket_and_close_does_not_wait_for_it(tmp_path: Path) -> None:
    import time

    path = str(tmp_path / "control")
    runtime = runtime_with(FakeMachine())
    server = control.Server(path, runtime.handle)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(b'{"op": "repl"}\n')
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": True, "repl": "python"}
        s.sendall(b"print(6 * 7, machine.state)\nraise ValueError('x')\nprint('still here')\n")
        out = b""
        while b"still here" not in out:
            out += f.read1(4096)
        start = time.monotonic()
        server.close()  # an open prompt ends with the domain, at once
        assert time.monotonic() - start < 2
    finally:
        s.close()
    assert b"42 running" in out and b"ValueError: x" in out, out


def test_gdb_requests_are_checked_before_anything_listens(tmp_path: Path) -> None:
    runtime = runtime_with(FakeMachine())
    for bad in ({}, {"listen": 5}, {"listen": "tcp:x"}, {"listen": "unix:/a", "stop": True}):
        with pytest.raises(PyhvError):
            runtime.handle({"op": "gdb", **bad})
    assert runtime.handle({"op": "gdb", "stop": True}) == {"stopped": False}
    sock = str(tmp_path / "gdb.sock")
    assert runtime.handle({"op": "gdb", "listen": f"unix:{sock}"}) == {"address": sock}
    with pytest.raises(PyhvError, match="already listens"):
        runtime.handle({"op": "gdb", "listen": f"unix:{tmp_path}/other"})
    assert runtime.handle({"op": "gdb", "stop": True}) == {"stopped": True}


def test_a_gdb_socket_never_replaces_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("data")
    runtime = runtime_with(FakeMachine())
    with pytest.raises(PyhvError, match="cannot listen"):
        runtime.handle({"op": "gdb", "listen": f"unix:{precious}"})
    assert precious.read_text() == "data"


class DiskMachine(FakeMachine):
    """A machine whose disks can be swapped (or refuse to be) and whose keyboard is pressed."""

    def __init__(self, refuse: str = "") -> None:
        super().__init__()
        self.refuse = refuse
        self.swaps: list[tuple[int, str]] = []
        self.presses = 0

    def swap_disk(self, index: int, path: str) -> int:
        if self.refuse:
            raise PyhvError(self.refuse)
        self.swaps.append((index, path))
        return 2048

    def ctrl_alt_del(self) -> int:
        self.presses += 1
        return 11


def runtime_with_disks(machine: FakeMachine) -> Runtime:
    runtime = Runtime(from_plain({"kernel": "/k", "disks": [{"path": "/a.img", "serial": "root"},
                                                            {"path": "/b.img", "serial": "data", "readonly": True,
                                                             "rate_limit": {"ops": {"size": 5, "refill_ms": 10}}}]}),
                      console=None)
    runtime.machine, runtime.state = machine, "running"
    return runtime


def test_disk_swap_by_serial_swaps_that_disk_and_the_description_names_the_new_file() -> None:
    machine = DiskMachine()
    runtime = runtime_with_disks(machine)
    reply = runtime.handle({"op": "disk-swap", "serial": "data", "path": "/c.img"})
    disk = runtime.description.disks[1]
    assert (reply, machine.swaps) == ({"index": 1, "path": "/c.img", "sectors": 2048}, [(1, "/c.img")])
    assert (disk.path, disk.serial, disk.readonly, disk.rate_limit is not None) == ("/c.img", "data", True, True)


def test_a_refused_disk_swap_leaves_the_description_as_it_was() -> None:
    runtime = runtime_with_disks(DiskMachine(refuse="/c.img: disk image is in use"))
    with pytest.raises(PyhvError, match="in use"):
        runtime.handle({"op": "disk-swap", "index": 0, "path": "/c.img"})
    assert [d.path for d in runtime.description.disks] == ["/a.img", "/b.img"]


@pytest.mark.parametrize("request_,message", [
    ({"op": "disk-swap", "path": "/c.img"}, "give the disk's index or its serial"),
    ({"op": "disk-swap", "index": 0, "serial": "root", "path": "/c.img"}, "give the disk's index or its serial"),
    ({"op": "disk-swap", "serial": "nonesuch", "path": "/c.img"}, "no disk has the serial 'nonesuch'"),
    ({"op": "disk-swap", "index": 2, "path": "/c.img"}, "no disk 2 (the domain has 2)"),
    ({"op": "disk-swap", "index": True, "path": "/c.img"}, "no disk True"),
    ({"op": "disk-swap", "index": 0}, "path must be a file name"),
    ({"op": "disk-swap", "index": 0, "path": "/b.img"}, "the same image as"),
    ({"op": "disk-swap", "index": 0, "path": "/" + "x" * 5000}, "at most 4095"),
])
def test_bad_disk_swaps_are_refused_in_one_line(request_: dict[str, Any], message: str) -> None:
    machine = DiskMachine()
    with pytest.raises(PyhvError) as e:
        runtime_with_disks(machine).handle(request_)
    assert (message in str(e.value), "\n" in str(e.value), machine.swaps) == (True, False, [])


def test_ctrl_alt_del_presses_the_keys_on_the_running_machine() -> None:
    machine = DiskMachine()
    assert (runtime_with_disks(machine).handle({"op": "ctrl-alt-del"}), machine.presses) == ({"bytes": 11}, 1)


class LimitMachine(FakeMachine):
    def __init__(self) -> None:
        super().__init__()
        self.limits: list[tuple[str, int, Any]] = []

    def set_rate_limit(self, queue: str, index: int, limit: Any) -> None:
        self.limits.append((queue, index, limit))


def test_rate_limit_requests_reach_the_machine_and_the_description() -> None:
    machine = LimitMachine()
    runtime = Runtime(from_plain({"kernel": "/k", "disks": [{"path": "/a.img"}], "nics": [{"tap": "t0"}]}), console=None)
    runtime.machine, runtime.state = machine, "running"
    runtime.handle({"op": "rate-limit", "index": 0, "limit": {"ops": {"size": 5, "refill_ms": 10}}})
    runtime.handle({"op": "rate-limit", "nic": 0, "direction": "tx", "limit": {"bandwidth": {"size": 9, "refill_ms": 1}}})
    with pytest.raises(PyhvError, match="direction must be rx or tx"):
        runtime.handle({"op": "rate-limit", "nic": 0, "direction": "up", "limit": None})
    with pytest.raises(PyhvError, match="refill_ms"):
        runtime.handle({"op": "rate-limit", "index": 0, "limit": {"ops": {"size": 5, "refill_ms": 0}}})
    d = runtime.description
    assert [(q, i, str(lim)) for q, i, lim in machine.limits] == [
        ("disk", 0, str(d.disks[0].rate_limit)), ("tx", 0, str(d.nics[0].tx_rate_limit))]
    assert (d.disks[0].rate_limit.ops.size if d.disks[0].rate_limit and d.disks[0].rate_limit.ops else None,
            d.nics[0].rx_rate_limit) == (5, None)
