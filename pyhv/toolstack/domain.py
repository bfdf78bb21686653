"""A domain's VMM process: one machine, its control socket and its console.

pyhvd starts it detached (its own session, stdin closed) as::

    python -S -m pyhv domain DIR

DIR is the domain's run directory.  pyhvd writes ``DIR/domain.json`` (id,
name, the configuration as a mapping, whether to start paused, where the logs
go) before starting the process; the process creates ``DIR/control.sock``
(requests, see :mod:`pyhv.toolstack.control`) and ``DIR/console.sock``, writes
one JSON line to the file descriptor named by ``PYHV_READY_FD`` once the guest
runs (or failed to start), and ``DIR/status.json`` (why it ended) just before
it exits.  So the process needs nothing from pyhvd after it has started: it
keeps running while pyhvd stops and starts again.

Threads: the main thread owns the Machine and runs the lifecycle loop (build,
run, restart on reboot); the control thread accepts requests and runs each in
a short-lived thread, which only calls Machine methods that are safe from any
thread (pause, resume, request_stop, set_balloon_target) or reads counters.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from ..errors import PyhvError
from ..vcpu import Stop, StopKind
from . import control
from .domconfig import DomainConfig, mismatch, parse

#: how long a pause or shutdown may take before the request fails
OP_TIMEOUT = 5.0


class Domain:
    def __init__(self, run_dir: str, meta: dict[str, Any], config: DomainConfig) -> None:
        from ..backends.console import LogConsole

        self.run_dir = run_dir
        self.meta = meta
        self.config = config
        self.id: int = meta["id"]
        self.name = config.name
        self.maxmem = config.maxmem
        log_dir = meta["log_dir"]
        self.console = LogConsole(os.path.join(log_dir, "console.log"), os.path.join(run_dir, "console.sock"))
        self.machine: Any = None
        self.state = "starting"  # running, paused, shutdown, crashed (preserve), dying
        self.restarts = 0
        self.started = time.time()
        self.balloon_target = 0
        self._lock = threading.Lock()
        self._wanted: Stop | None = None  # a stop asked for through the control socket
        self._wake = threading.Event()
        self._paused_wanted = bool(meta.get("paused", False))

    # --- the lifecycle loop (main thread) -----------------------------------------

    def run(self, ready_fd: int, snapshot: Any = None, first: Any = None) -> dict[str, Any]:
        """The lifecycle loop.  The first machine is restored from ``snapshot``,
        or is ``first`` (migrated in, already running), or is booted afresh;
        any later one (a reboot) boots afresh."""
        from ..vmm import build

        cfg = self.config.machine
        nic_fds = self.meta.get("nic_fds", [])
        while True:
            if self._wanted is not None:  # destroyed while (re)starting
                _tell(ready_fd, {"ok": False, "error": f"domain {self.name} was {self._wanted.detail} while starting"})
                return {"reason": self._wanted.detail, "status": 0, "detail": "stopped while starting"}
            if first is not None:
                machine, first = first, None
            else:
                try:
                    machine = build(_with_taps(cfg if snapshot is None else snapshot.config, nic_fds),
                                    console=self.console, restore=snapshot)
                except PyhvError as e:
                    _tell(ready_fd, {"ok": False, "error": str(e)})
                    return {"reason": "error", "status": e.exit_status, "detail": str(e)}
                finally:
                    if snapshot is not None:
                        snapshot.close()  # the memory stays mapped from the file
                        snapshot = None
            with self._lock:
                self.machine = machine
                if machine.state == "created":
                    if self._paused_wanted:
                        for v in machine.vcpus:
                            v.request(v.PAUSED)  # taken before the first instruction
                    machine.start()
                elif self._paused_wanted:
                    machine.pause()
                self.state = "paused" if self._paused_wanted else "running"
                if self._wanted is not None:  # asked while the machine was being built
                    machine.request_stop(self._wanted)
            if self.balloon_target and machine.balloon is not None:
                machine.set_balloon_target(self.balloon_target)
            ready_fd = _tell(ready_fd, {"ok": True, "pid": os.getpid()})
            stop = None
            while stop is None:
                stop = machine.wait(0.5)
            wanted = self._wanted
            with self._lock:
                self.state = "dying"
            outcome = self._outcome(stop, wanted)
            if outcome == "preserve":
                with self._lock:
                    self.state = "crashed"
                print(f"pyhv: domain {self.name} crashed: {stop.detail}; preserved (on_crash=preserve)", file=sys.stderr)
                while self._wanted is None or self._wanted.detail != "destroyed":
                    self._wake.wait()  # until destroyed
                    self._wake.clear()
                machine.close()
                return {"reason": "destroyed", "status": 0, "detail": "destroyed after a crash"}
            machine.close()
            with self._lock:
                self.machine = None
            if outcome == "restart":
                self.restarts += 1
                self._paused_wanted = False
                self._wanted = None
                print(f"pyhv: domain {self.name}: {stop.detail or stop.kind.value}; restarting", file=sys.stderr)
                continue
            return {"reason": outcome, "status": stop.status, "detail": stop.detail}

    def _outcome(self, stop: Stop, wanted: Stop | None) -> str:
        """restart, preserve, or the reason the domain ends with."""
        cfg = self.config
        if wanted is not None and wanted.detail in ("migrated", "saved"):
            return wanted.detail  # the domain lives on elsewhere
        if wanted is not None and stop is wanted:
            if wanted.detail == "reboot":
                return "restart"
            return wanted.detail  # destroyed or shutdown
        if stop.kind is StopKind.RESET:
            return "restart" if cfg.machine.on_reboot == "restart" else "reboot"
        if stop.kind in (StopKind.POWEROFF, StopKind.DEBUG_EXIT):
            return "restart" if cfg.machine.on_poweroff == "restart" else "poweroff"
        if stop.kind in (StopKind.CRASH, StopKind.ERROR):
            print(f"pyhv: domain {self.name}: {stop.detail}", file=sys.stderr)
            if cfg.on_crash == "restart":
                return "restart"
            return "preserve" if cfg.on_crash == "preserve" else "crash"
        return "destroyed"

    def stop(self, how: str) -> None:
        """destroyed, shutdown or reboot: ask the running machine to stop."""
        stop = Stop(StopKind.HOST, 0, how)
        with self._lock:
            self._wanted = stop
            machine = self.machine
            self.state = "dying" if how == "destroyed" else "shutdown" if how == "shutdown" else self.state
        if machine is not None:
            machine.request_stop(stop)
        self._wake.set()

    # --- requests (control threads) ---------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise PyhvError(f"unknown operation {op!r}")
        return handler(self, request)

    def _running_machine(self) -> Any:
        with self._lock:
            machine = self.machine
            state = self.state
        if machine is None or state not in ("running", "paused"):
            raise PyhvError(f"domain {self.name} is {state}")
        return machine

    def op_info(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            machine, state = self.machine, self.state
        vcpus = _vcpu_info(machine) if machine is not None else []
        if state == "running" and vcpus and all(v["host_state"] == "S" for v in vcpus):
            state = "blocked"  # every vCPU halted, waiting for an interrupt
        balloon = None
        if machine is not None and machine.balloon is not None:
            balloon = {"target": machine.balloon.target_pages << 12, "actual": machine.balloon.actual_pages << 12}
        return {
            "id": self.id,
            "name": self.name,
            "pid": os.getpid(),
            "state": state,
            "memory": self.config.machine.memory,
            "maxmem": self.maxmem,
            "current_memory": self.config.machine.memory - (balloon["actual"] if balloon else 0),
            "vcpus": len(vcpus) or self.config.machine.vcpus,
            "vcpu": vcpus,
            "cpu_time": time.process_time(),
            "started": self.started,
            "restarts": self.restarts,
            "balloon": balloon,
        }

    def op_pause(self, request: dict[str, Any]) -> dict[str, Any]:
        machine = self._running_machine()
        machine.pause(OP_TIMEOUT)
        with self._lock:
            self.state = "paused"
        return {}

    def op_unpause(self, request: dict[str, Any]) -> dict[str, Any]:
        machine = self._running_machine()
        machine.resume()
        with self._lock:
            self.state = "running"
        return {}

    def op_destroy(self, request: dict[str, Any]) -> dict[str, Any]:
        self.stop("destroyed")
        return {}

    def op_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        self._running_machine()
        self.stop("shutdown")
        return {}

    def op_reboot(self, request: dict[str, Any]) -> dict[str, Any]:
        self._running_machine()
        self.stop("reboot")
        return {}

    def op_mem_set(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request.get("bytes")
        memory = self.config.machine.memory
        if not isinstance(target, int) or isinstance(target, bool):
            raise PyhvError("mem-set: bytes must be an integer")
        limit = min(memory, self.maxmem)
        if not 16 << 20 <= target <= limit:
            raise PyhvError(f"mem-set: {target >> 20} MiB is out of range (16 MiB to {limit >> 20} MiB)")
        machine = self._running_machine()
        if machine.balloon is None:
            raise PyhvError(f"domain {self.name} has no balloon device (balloon = true in its configuration)")
        self.balloon_target = memory - target
        machine.set_balloon_target(self.balloon_target)
        return {}

    def op_mem_max(self, request: dict[str, Any]) -> dict[str, Any]:
        value = request.get("bytes")
        if not isinstance(value, int) or isinstance(value, bool) or value < 16 << 20:
            raise PyhvError("mem-max: bytes must be an integer of at least 16 MiB")
        if value < self.config.machine.memory - self.balloon_target:
            raise PyhvError("mem-max: below the domain's current memory; lower it with mem-set first")
        self.maxmem = value
        return {}

    def op_vcpu_pin(self, request: dict[str, Any]) -> dict[str, Any]:
        machine = self._running_machine()
        index, cpus = request.get("vcpu"), request.get("cpus")
        if not isinstance(cpus, list) or not cpus or not all(isinstance(c, int) and c >= 0 for c in cpus):
            raise PyhvError("vcpu-pin: cpus must be a non-empty list of host CPU numbers")
        targets = machine.vcpus if index == "all" else None
        if targets is None:
            if not isinstance(index, int) or not 0 <= index < len(machine.vcpus):
                raise PyhvError(f"vcpu-pin: no vCPU {index!r} (the domain has {len(machine.vcpus)})")
            targets = [machine.vcpus[index]]
        for v in targets:
            try:
                os.sched_setaffinity(v.tid, set(cpus))
            except OSError as e:
                raise PyhvError(f"vcpu-pin: cannot pin vCPU {v.vcpu.index} to {cpus}: {e.strerror}") from None
        return {}

    def op_save(self, request: dict[str, Any]) -> dict[str, Any]:
        """Save the whole domain to ``path``; then ``destroy`` it (the default,
        as xl does), let it ``continue``, or leave it ``pause``d.  An existing
        ``path`` is replaced only with ``force`` and only if it is a pyhv snapshot."""
        path, then, force = request.get("path"), request.get("then", "destroy"), request.get("force", False)
        if not isinstance(path, str) or not os.path.isabs(path):
            raise PyhvError("save: path must be an absolute file name")
        if then not in ("destroy", "continue", "pause"):
            raise PyhvError("save: then must be destroy, continue or pause")
        if not isinstance(force, bool):
            raise PyhvError("save: force must be true or false")
        machine = self._running_machine()
        with self._lock:
            was_running = self.state == "running"
        if then != "continue":
            machine.pause(OP_TIMEOUT)
            with self._lock:
                self.state = "paused"
        try:
            info = machine.save(path, domain=self.meta["config"], force=force)
        except BaseException:
            if then != "continue" and was_running:  # a failed save leaves the domain as it was
                machine.resume()
                with self._lock:
                    self.state = "running"
            raise
        if then == "destroy":
            self.stop("saved")
        return {"path": path, "bytes": info.size, "seconds": info.seconds}

    def op_migrate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Live-migrate to a pyhvd listening at host:port; on success this domain ends here."""
        host, port, key = request.get("host"), request.get("port"), request.get("key")
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise PyhvError("migrate: host must be a string and port a number from 1 to 65535")
        if not isinstance(key, str):
            raise PyhvError("migrate: no key")
        machine = self._running_machine()
        with self._lock:
            self._wanted = Stop(StopKind.HOST, 0, "migrated")  # how the loop will know, if it works
        try:
            stats = machine.migrate((host, port), bytes.fromhex(key), domain=self.meta["config"])
        except (PyhvError, ValueError) as e:
            with self._lock:
                self._wanted = None
            raise PyhvError(str(e)) from None
        self._wake.set()
        return {"seconds": stats.total_seconds, "downtime": stats.downtime_seconds, "rounds": stats.rounds}

    def op_metrics(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            machine = self.machine
        out: dict[str, Any] = {"cpu_time": time.process_time(), "vcpu": [], "disks": [], "nics": []}
        if machine is None:
            return out
        out["vcpu"] = _vcpu_info(machine)
        for name, dev in machine.devices.items():  # counters by what the device keeps
            if hasattr(dev, "bytes_written"):
                out["disks"].append({"device": name, "read_bytes": dev.bytes_read, "write_bytes": dev.bytes_written})
            elif hasattr(dev, "tx_dropped"):
                out["nics"].append({
                    "device": name, "rx_bytes": dev.rx_bytes, "tx_bytes": dev.tx_bytes,
                    "rx_frames": dev.rx_frames, "tx_frames": dev.tx_frames,
                    "rx_dropped": dev.rx_dropped, "tx_dropped": dev.tx_dropped,
                })
        return out


OPS = {
    "info": Domain.op_info,
    "pause": Domain.op_pause,
    "unpause": Domain.op_unpause,
    "destroy": Domain.op_destroy,
    "shutdown": Domain.op_shutdown,
    "reboot": Domain.op_reboot,
    "mem-set": Domain.op_mem_set,
    "mem-max": Domain.op_mem_max,
    "vcpu-pin": Domain.op_vcpu_pin,
    "metrics": Domain.op_metrics,
    "save": Domain.op_save,
    "migrate": Domain.op_migrate,
}


def _vcpu_info(machine: Any) -> list[dict[str, Any]]:
    out = []
    for v in machine.vcpus:
        cpu_ns, host_state, affinity, where = 0, "?", [], -1
        if v.tid:
            try:
                with open(f"/proc/self/task/{v.tid}/schedstat") as f:
                    cpu_ns = int(f.read().split()[0])
                with open(f"/proc/self/task/{v.tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                host_state, where = fields[0], int(fields[36])
                affinity = sorted(os.sched_getaffinity(v.tid))
            except (OSError, ValueError, IndexError):
                pass  # the thread has just ended
        out.append({
            "index": v.vcpu.index, "tid": v.tid, "state": v.state, "host_state": host_state,
            "cpu_ns": cpu_ns, "cpu": where, "affinity": affinity,
            "exits": {"io": v.counts[0], "mmio": v.counts[1], "other": v.counts[2]},
        })
    return out


def _with_taps(cfg: Any, fds: list[int]) -> Any:
    """The configuration with each NIC on (a duplicate of) the TAP pyhvd opened:
    a machine closes its backends, and a rebooted one needs them again."""
    from ..vmm import MachineConfig

    if not fds:
        return cfg
    settings = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    settings["nets"] = [n._replace(fd=os.dup(fd), bridge="") for n, fd in zip(cfg.nets, fds, strict=True)]
    return MachineConfig(**settings)


def _tell(fd: int, message: dict[str, Any]) -> int:
    """Send the one readiness line to pyhvd; -1 afterwards."""
    if fd >= 0:
        try:
            control.send_message(fd, message)
        except OSError:
            pass
        os.close(fd)
    return -1


def _write_status(run_dir: str, status: dict[str, Any]) -> None:
    status = dict(status, time=time.time())
    tmp = os.path.join(run_dir, "status.json.tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(run_dir, "status.json"))


def main(argv: list[str]) -> int:
    """``pyhv domain DIR``: run the domain pyhvd described in DIR/domain.json."""
    from ..vcpu.thread import install_kick_handler

    if len(argv) != 1:
        print("usage: pyhv domain DIR (started by pyhvd)", file=sys.stderr)
        return 2
    run_dir = argv[0]
    ready_fd = int(os.environ.pop("PYHV_READY_FD", "-1"))
    install_kick_handler()
    try:
        with open(os.path.join(run_dir, "domain.json")) as f:
            meta = json.load(f)
        if meta.get("incoming"):
            return _main_incoming(run_dir, meta, ready_fd)
        snapshot = None
        if meta.get("restore"):
            from ..vmm.snapshot import Snapshot

            snapshot = Snapshot(meta["restore"])
            if meta.get("verify"):
                try:
                    snapshot.verify_memory()  # every CRC, before anything is built
                except BaseException:
                    snapshot.close()
                    raise
        domain = Domain(run_dir, meta, parse(meta["config"]))
    except (OSError, ValueError, KeyError, TypeError, PyhvError) as e:
        _tell(ready_fd, {"ok": False, "error": f"cannot start the domain: {e}"})
        print(f"pyhv: cannot start the domain in {run_dir}: {e}", file=sys.stderr)
        return 2
    return _serve(domain, run_dir, lambda: domain.run(ready_fd, snapshot=snapshot))


def _serve(domain: Domain, run_dir: str, body: Any) -> int:
    """Run ``body`` (the lifecycle loop) with the control socket up and signals
    mapped to destroy; write status.json at the end."""

    def on_signal(signum: int, frame: object) -> None:
        domain.stop("destroyed")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    server = control.Server(os.path.join(run_dir, "control.sock"), domain.handle)
    try:
        status = body()
    finally:
        server.close()
        domain.console.close()
    _write_status(run_dir, status)
    return 0 if status["reason"] in ("destroyed", "shutdown", "poweroff", "reboot", "saved", "migrated") else 1


def _main_incoming(run_dir: str, meta: dict[str, Any], ready_fd: int) -> int:
    """A domain arriving by live migration on the connection pyhvd accepted.

    Once the source has authenticated and announced the domain, pyhvd is asked
    (over the readiness channel) to admit it: it checks the configuration and
    the name and answers with the domain's id, name and log directory.  Only
    then is anything built; a refusal makes the source run on."""
    import socket

    from ..vmm import migrate

    sock = socket.socket(fileno=meta["incoming_fd"])
    key = bytes.fromhex(os.environ.pop("PYHV_MIGRATION_KEY", ""))
    made: list[Domain] = []

    def claim(description: Any, machine: Any) -> Any:
        if not isinstance(description, dict):
            raise migrate.MigrationError("the source sent no domain description (not a pyhvd domain)")
        try:
            differs = mismatch(parse(description).machine, machine)
        except PyhvError as e:
            raise migrate.MigrationError(f"the domain description is not valid: {e}") from None
        if differs:
            raise migrate.MigrationError(f"the domain description does not match the machine ({differs})")
        control.send_message(ready_fd, {"claim": description})
        answer = control.read_message(ready_fd, 30.0)
        if isinstance(answer, str) or not answer.get("ok"):
            why = answer if isinstance(answer, str) else answer.get("error", "no answer")
            raise migrate.MigrationError(f"refused by the destination: {why}")
        meta.update(answer["meta"])
        made.append(Domain(run_dir, meta, parse(meta["config"])))
        return made[0].console

    try:
        machine = migrate.receive_connection(sock, key, claim=claim)
    except PyhvError as e:
        _tell(ready_fd, {"ok": False, "error": str(e)})
        print(f"pyhv: incoming migration failed: {e}", file=sys.stderr)
        return 1
    if machine is None:
        _tell(ready_fd, {"ok": False, "error": "the peer did not authenticate"})
        return 1
    domain = made[0]
    return _serve(domain, run_dir, lambda: domain.run(ready_fd, first=machine))
