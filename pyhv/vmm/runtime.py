"""The VMM runtime: one domain's lifecycle loop and its control requests.

Every front end runs a domain through this one class: ``pyhv run`` in the
foreground (its console on the terminal or a file, requests on ``--control
PATH``), ``pyhv domain DIR`` under pyhvd (its console log and socket,
requests on ``DIR/control.sock``).  So a guest that powers off, reboots or
crashes gets the same treatment everywhere: :func:`decide` maps the reason a
machine stopped and the domain's lifecycle policy to what happens next.

Threads: the caller's thread owns the Machine and runs :meth:`Runtime.run`
(build, start, wait, decide, build again on a restart); requests arrive on
other threads (the control socket's, signal handlers) and call only Machine
methods that are safe from any thread (pause, resume, request_stop,
set_balloon_target, save, migrate) or read counters.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import PyhvError
from ..model import MIN_MEMORY, Description, Lifecycle, from_plain, to_plain
from ..vcpu import Stop, StopKind
from ..vcpu.state import HOST_KINDS

#: how long a pause may take before the request fails
OP_TIMEOUT = 5.0


class Action(enum.Enum):
    RESTART = "restart"  # boot the domain again
    PRESERVE = "preserve"  # keep the crashed machine for inspection until destroyed
    END = "end"  # the domain ends


class Ending(NamedTuple):
    """How a domain ended: ``reason`` (the stop kind's value), the exit status, words for people."""

    reason: str
    status: int
    detail: str


def decide(stop: Stop, lifecycle: Lifecycle) -> Action:
    """What a stop means under a lifecycle policy: the same in every front end."""
    kind = stop.kind
    if kind is StopKind.REBOOT:
        return Action.RESTART
    if kind is StopKind.RESET:
        return Action.RESTART if lifecycle.on_reboot == "restart" else Action.END
    if kind is StopKind.POWEROFF:
        return Action.RESTART if lifecycle.on_poweroff == "restart" else Action.END
    if kind in (StopKind.CRASH, StopKind.ERROR):
        return {"restart": Action.RESTART, "preserve": Action.PRESERVE}.get(lifecycle.on_crash, Action.END)
    # debug-exit ends the VMM with the guest's status (as QEMU's isa-debug-exit
    # does, whatever -no-reboot says); host requests other than reboot end it
    return Action.END


class Runtime:
    """One domain: its description, the machine running it now, and the requests on it.

    ``taps`` are open TAP descriptors for the NICs (index -> fd), kept by the
    runtime (each machine gets duplicates, since a machine closes its
    backends and a restarted one needs them again).  ``on_ready(reply)`` hears
    once, when the first machine runs (``{"ok": True, ...}``) or failed to
    start (``{"ok": False, "error": ...}``).  ``on_machine_end(machine)`` is
    called after each machine stopped, before it is closed."""

    def __init__(
        self, description: Description, console: Any, *, taps: dict[int, int] | None = None,
        paused: bool = False, domid: int = 0, on_ready: Callable[[dict[str, Any]], None] | None = None,
        on_machine_end: Callable[[Any], None] | None = None, vcpu_prefix: str = "vcpu",
    ) -> None:
        self.description = description
        self.vcpu_prefix = vcpu_prefix  # vCPU threads are named this + their index
        self.console = console
        self.taps = dict(taps or {})
        self.id = domid
        self.machine: Any = None
        self.state = "starting"  # running, paused, shutdown, crashed (preserve), dying
        self.restarts = 0
        self.started = time.time()
        self.balloon_target = 0
        self._on_ready = on_ready
        self._on_machine_end = on_machine_end
        self._lock = threading.Lock()
        self._wanted: Stop | None = None  # a stop the host asked for
        self._wake = threading.Event()
        self._paused_wanted = paused
        self.gdb: Any = None  # the GDB stub (debug/gdbstub.py) while one listens
        self.confined = False  # in a jail (pyhv/jail/): no network, no host paths

    @property
    def name(self) -> str:
        return self.description.name or "(unnamed)"

    # --- the lifecycle loop (the caller's thread) -----------------------------------------

    def run(self, snapshot: Any = None, first: Any = None) -> Ending:
        """Run the domain until it ends.  The first machine is restored from
        ``snapshot`` (which is closed here), or is ``first`` (migrated in, already
        running), or is booted afresh; any later one (a restart) boots afresh."""
        from .builder import build

        nvram = None  # the CMOS clock's battery-backed bytes, kept across restarts as on a PC
        ram = None  # a firmware machine's RAM, kept across a guest reset as on a PC
        try:
            while True:
                wanted = self._wanted
                if wanted is not None and wanted.kind is not StopKind.REBOOT:  # ended while (re)starting
                    self._ready({"ok": False, "error": f"domain {self.name} was stopped ({wanted.kind.value}) while starting"})
                    return Ending(wanted.kind.value, wanted.status, "stopped while starting")
                if first is not None:
                    machine, first = first, None
                else:
                    try:
                        taps = {i: os.dup(fd) for i, fd in self.taps.items()}
                        machine = build(self.description, console=self.console, restore=snapshot, taps=taps,
                                        nvram=nvram, vcpu_prefix=self.vcpu_prefix, warm=ram)
                        ram = None  # the machine owns it now (build closes it on failure)
                    except PyhvError as e:
                        if not self._ready({"ok": False, "error": str(e)}):
                            _say(f"{self._who()}{e}")  # a restart failed: nobody is waiting to hear it
                        return Ending(StopKind.ERROR.value, e.exit_status, str(e))
                    finally:
                        if snapshot is not None:
                            snapshot.close()  # the memory stays mapped from the file
                            snapshot = None
                stop = self._run_machine(machine)
                action = decide(stop, self.description.lifecycle)
                if self._wanted is not None and self._wanted.kind in (HOST_KINDS - {StopKind.REBOOT}):
                    stop, action = self._wanted, Action.END  # the host's word is the last
                if stop.kind in (StopKind.CRASH, StopKind.ERROR):
                    _say(f"{self._who()}{stop.detail}")
                if action is Action.PRESERVE:
                    return self._preserve(machine, stop)
                if self._on_machine_end is not None:
                    self._on_machine_end(machine)
                nvram = machine.nvram()
                if action is Action.RESTART and stop.kind is StopKind.RESET and self.description.payload.firmware:
                    # A reset line keeps RAM on a PC, and firmware relies on it: SeaBIOS finds itself
                    # already set up and resumes as the CMOS shutdown status byte says
                    ram = machine.keep_memory()
                machine.close()
                with self._lock:
                    self.machine = None
                if action is Action.END:
                    return Ending(stop.kind.value, stop.status, stop.detail)
                self.restarts += 1
                self._paused_wanted = False
                with self._lock:  # a reboot asked for is used up; a destroy that came meanwhile is not
                    if self._wanted is not None and self._wanted.kind is StopKind.REBOOT:
                        self._wanted = None
                _say(f"{self._who()}{_what(stop)}; restarting ({_policy(stop)})")
        finally:
            if ram is not None:  # kept for a machine that was never built
                ram.close()
            for fd in self.taps.values():
                os.close(fd)
            self.taps.clear()
            self.stop_gdb()

    def _run_machine(self, machine: Any) -> Stop:
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
        self._ready({"ok": True, "pid": os.getpid()})
        stop = None
        while stop is None:
            stop = machine.wait(0.5)
        with self._lock:
            self.state = "dying"
        return stop

    def _preserve(self, machine: Any, stop: Stop) -> Ending:
        with self._lock:
            self.state = "crashed"
        _say(f"{self._who()}crashed: {stop.detail}; preserved (on_crash=preserve) until destroyed")
        while self._wanted is None:
            self._wake.wait()
            self._wake.clear()
        if self._on_machine_end is not None:
            self._on_machine_end(machine)
        machine.close()
        with self._lock:
            self.machine = None
        return Ending(StopKind.CRASH.value, stop.status, f"destroyed after a crash: {stop.detail}")

    def _ready(self, reply: dict[str, Any]) -> bool:
        """Tell ``on_ready`` (once); whether anyone heard it."""
        if self._on_ready is None:
            return False
        on_ready, self._on_ready = self._on_ready, None
        on_ready(reply)
        return True

    def _who(self) -> str:
        return f"domain {self.description.name}: " if self.description.name else ""

    def stop(self, kind: StopKind, status: int = 0, detail: str = "") -> None:
        """Ask the domain to end (or, REBOOT, to boot again); safe from any thread
        and from signal handlers.  The first request wins."""
        stop = Stop(kind, status, detail or kind.value)
        with self._lock:
            if self._wanted is None or self._wanted.kind is StopKind.REBOOT:
                self._wanted = stop
            machine = self.machine
            if kind is StopKind.DESTROY:
                self.state = "dying"
            elif kind is StopKind.SHUTDOWN:
                self.state = "shutdown"
        if machine is not None:
            machine.request_stop(self._wanted)
        self._wake.set()

    # --- requests (control threads) ---------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> Any:
        """The answer's fields, or a control.Stream (``repl``)."""
        op = request.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise PyhvError(f"unknown operation {str(op)[:40]!r} (known: {', '.join(sorted(OPS))})")
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
        vcpus = vcpu_info(machine) if machine is not None else []
        if state == "running" and vcpus and all(v["host_state"] == "S" for v in vcpus):
            state = "blocked"  # every vCPU halted, waiting for an interrupt
        balloon = None
        if machine is not None and machine.balloon is not None:
            balloon = {"target": machine.balloon.target_pages << 12, "actual": machine.balloon.actual_pages << 12}
        d = self.description
        return {
            "id": self.id,
            "name": d.name,
            "pid": os.getpid(),
            "state": state,
            "memory": d.memory,
            "maxmem": d.maxmem,
            "current_memory": d.memory - (balloon["actual"] if balloon else 0),
            "vcpus": len(vcpus) or d.vcpus,
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
        self.stop(StopKind.DESTROY, 0, "destroyed")
        return {}

    def op_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        self._running_machine()
        self.stop(StopKind.SHUTDOWN, 0, "shut down")
        return {}

    def op_reboot(self, request: dict[str, Any]) -> dict[str, Any]:
        self._running_machine()
        self.stop(StopKind.REBOOT, 0, "rebooted by the host")
        return {}

    def op_mem_set(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request.get("bytes")
        memory = self.description.memory
        if not isinstance(target, int) or isinstance(target, bool):
            raise PyhvError("mem-set: bytes must be an integer")
        limit = min(memory, self.description.maxmem)
        if not MIN_MEMORY <= target <= limit:
            raise PyhvError(f"mem-set: {target >> 20} MiB is out of range ({MIN_MEMORY >> 20} MiB to {limit >> 20} MiB)")
        machine = self._running_machine()
        if machine.balloon is None:
            raise PyhvError(f"domain {self.name} has no balloon device (balloon = true in its description)")
        self.balloon_target = memory - target
        machine.set_balloon_target(self.balloon_target)
        return {}

    def op_mem_max(self, request: dict[str, Any]) -> dict[str, Any]:
        value = request.get("bytes")
        if not isinstance(value, int) or isinstance(value, bool) or value < MIN_MEMORY:
            raise PyhvError(f"mem-max: bytes must be an integer of at least {MIN_MEMORY >> 20} MiB")
        if value < self.description.memory - self.balloon_target:
            raise PyhvError("mem-max: below the domain's current memory; lower it with mem-set first")
        self.description = self.description._replace(maxmem=value)
        return {}

    def op_ctrl_alt_del(self, request: dict[str, Any]) -> dict[str, Any]:
        """Ctrl-Alt-Del on the guest's keyboard: the guest decides what it means
        (Linux reboots), unlike ``reboot``, which resets the machine from outside."""
        return {"bytes": self._running_machine().ctrl_alt_del()}

    def op_disk_swap(self, request: dict[str, Any]) -> dict[str, Any]:
        """Swap the image behind a disk (``index`` in the description, or
        ``serial``) for the file at ``path`` while the guest runs; the guest
        sees the new capacity through a configuration change.  The description
        names the new file from now on (a later snapshot or restart uses it)."""
        path = request.get("path")
        if not isinstance(path, str) or not path:
            raise PyhvError("disk-swap: path must be a file name")
        index = self._disk_index(request, "disk-swap")
        plain = to_plain(self.description)
        plain["disks"][index]["path"] = os.path.abspath(path)
        description = from_plain(plain)
        machine = self._running_machine()
        sectors = machine.swap_disk(index, description.disks[index].path)
        self.description = description
        return {"index": index, "path": description.disks[index].path, "sectors": sectors}

    def op_rate_limit(self, request: dict[str, Any]) -> dict[str, Any]:
        """A new rate limit (``limit``: the description's plain form, or null for
        none) on a disk (``index`` or ``serial``) or on one direction of a NIC
        (``nic``: its index, ``direction``: rx or tx), in force at once and kept
        in the description."""
        limit = request.get("limit")
        plain = to_plain(self.description)
        if "nic" in request:
            nic, direction = request.get("nic"), request.get("direction")
            if not isinstance(nic, int) or isinstance(nic, bool) or not 0 <= nic < len(self.description.nics):
                raise PyhvError(f"rate-limit: no NIC {str(nic)[:20]} (the domain has {len(self.description.nics)})")
            if direction not in ("rx", "tx"):
                raise PyhvError("rate-limit: direction must be rx or tx")
            plain["nics"][nic][f"{direction}_rate_limit"] = limit
            description = from_plain(plain)
            queue, index = str(direction), nic
            new = getattr(description.nics[nic], f"{direction}_rate_limit")
        else:
            index = self._disk_index(request, "rate-limit")
            plain["disks"][index]["rate_limit"] = limit
            description = from_plain(plain)
            queue, new = "disk", description.disks[index].rate_limit
        self._running_machine().set_rate_limit(queue, index, new)
        self.description = description
        return {}

    def _disk_index(self, request: dict[str, Any], op: str) -> int:
        """The disk a request names by ``index`` or by ``serial`` (exactly one)."""
        index, serial = request.get("index"), request.get("serial")
        disks = self.description.disks
        if (index is None) == (serial is None):
            raise PyhvError(f"{op}: give the disk's index or its serial")
        if serial is not None:
            found = [i for i, d in enumerate(disks) if isinstance(serial, str) and serial and d.serial == serial]
            if len(found) != 1:
                raise PyhvError(f"{op}: no disk has the serial {str(serial)[:40]!r}")
            return found[0]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(disks):
            raise PyhvError(f"{op}: no disk {str(index)[:20]} (the domain has {len(disks)})")
        return index

    def op_vcpu_pin(self, request: dict[str, Any]) -> dict[str, Any]:
        machine = self._running_machine()
        index, cpus = request.get("vcpu"), request.get("cpus")
        if not isinstance(cpus, list) or not cpus or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096 for c in cpus
        ):
            raise PyhvError("vcpu-pin: cpus must be a non-empty list of host CPU numbers")
        targets = machine.vcpus if index == "all" else None
        if targets is None:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(machine.vcpus):
                raise PyhvError(f"vcpu-pin: no vCPU {str(index)[:20]!r} (the domain has {len(machine.vcpus)})")
            targets = [machine.vcpus[index]]
        for v in targets:
            try:
                os.sched_setaffinity(v.tid, set(cpus))
            except OSError as e:
                raise PyhvError(f"vcpu-pin: cannot pin vCPU {v.vcpu.index} to {cpus}: {e.strerror}") from None
        return {}

    def op_save(self, request: dict[str, Any]) -> dict[str, Any]:
        """Save the whole domain to ``path``; then ``destroy`` it (the default,
        as xl does), let it ``continue``, or leave it ``pause``d.  A save that
        fails leaves the domain as it was.  An existing ``path`` is replaced
        only with ``force`` and only if it is a pyhv snapshot.  With a descriptor
        passed along (``fd``, pyhvd's temporary for a confined domain) the
        snapshot is written through it and ``path`` is only its name."""
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
        fd = request.get("fd")
        try:
            info = machine.save(path, description=self.description, force=force,
                                into=os.dup(fd) if isinstance(fd, int) else None)
        except BaseException:
            if then != "continue" and was_running:
                machine.resume()
                with self._lock:
                    self.state = "running"
            raise
        if then == "destroy":
            self.stop(StopKind.SAVED, 0, f"saved to {path}")
        return {"path": path, "bytes": info.size, "seconds": info.seconds}

    def op_migrate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Live-migrate to a pyhvd (or ``pyhv run --incoming``) at host:port; on success
        this domain ends here.  A migration that failed before the commit leaves it
        running; one whose outcome is unknown after the commit ends it here, stopped
        (status 1, the one-line reason), and the request fails with that reason."""
        host, port, key = request.get("host"), request.get("port"), request.get("key")
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise PyhvError("migrate: host must be a string and port a number from 1 to 65535")
        if not isinstance(key, str):
            raise PyhvError("migrate: no key")
        try:
            secret = bytes.fromhex(key)
        except ValueError:
            raise PyhvError("migrate: the key must be hex") from None
        from .migrate import HandoverUnknown

        fd = request.get("fd")  # connected by pyhvd: a confined domain has no network
        if self.confined and not isinstance(fd, int):
            raise PyhvError(f"migrate: domain {self.name} is confined and has no network: "
                            "its connection must come with the request")
        machine = self._running_machine()
        connection = None
        if isinstance(fd, int):
            import socket

            connection = socket.socket(fileno=os.dup(fd))
        try:
            stats = machine.migrate((host, port), secret, description=self.description, connection=connection)
        except HandoverUnknown as e:
            self.stop(StopKind.MIGRATED, 1, str(e))
            _say(f"{self._who()}{e}")
            raise
        self.stop(StopKind.MIGRATED, 0, f"migrated to {host}:{port}")
        return {"seconds": stats.total_seconds, "downtime": stats.downtime_seconds, "rounds": stats.rounds}

    # --- debugging: the GDB stub and the Python prompt --------------------------------------

    def start_gdb(self, spec: str) -> str:
        """Serve the GDB remote protocol on ``spec`` (``unix:PATH`` or ``tcp:HOST:PORT``)
        against whichever machine runs; where it listens."""
        if self.confined:
            raise PyhvError(f"gdb: domain {self.name} is confined: the stub cannot listen outside its jail")
        from ..debug.gdbstub import Server

        with self._lock:
            if self.gdb is not None:
                raise PyhvError(f"a GDB stub already listens on {self.gdb.remote}")
            self.gdb = Server(spec, lambda: self.machine,
                              lambda: self.stop(StopKind.DESTROY, 0, "killed by the debugger"))
            return str(self.gdb.remote)

    def stop_gdb(self) -> bool:
        with self._lock:
            gdb, self.gdb = self.gdb, None
        if gdb is not None:
            gdb.close()
        return gdb is not None

    def op_gdb(self, request: dict[str, Any]) -> dict[str, Any]:
        listen, stop = request.get("listen"), request.get("stop", False)
        if stop is True and listen is None:
            return {"stopped": self.stop_gdb()}
        if not isinstance(listen, str) or stop is not False:
            raise PyhvError("gdb: give listen (unix:PATH or tcp:HOST:PORT) or stop: true")
        return {"address": self.start_gdb(listen)}

    def op_repl(self, request: dict[str, Any]) -> Any:
        from ..debug import repl
        from .control import Stream

        def serve(conn: Any) -> None:
            with self._lock:
                machine = self.machine
            namespace = {"machine": machine, "runtime": self, "description": self.description}
            repl.serve(conn, namespace, self.name)

        return Stream({"repl": "python"}, serve)

    def op_metrics(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            machine = self.machine
        out: dict[str, Any] = {"cpu_time": time.process_time(), "vcpu": [], "disks": [], "nics": []}
        if machine is None:
            return out
        from ..devices.virtio.blk import Blk
        from ..devices.virtio.net import Net

        out["vcpu"] = vcpu_info(machine)
        for place, disk in machine.devices.of_type(Blk):
            out["disks"].append({"device": place, "read_bytes": disk.bytes_read, "write_bytes": disk.bytes_written})
        for place, nic in machine.devices.of_type(Net):
            out["nics"].append({
                "device": place, "rx_bytes": nic.rx_bytes, "tx_bytes": nic.tx_bytes,
                "rx_frames": nic.rx_frames, "tx_frames": nic.tx_frames,
                "rx_dropped": nic.rx_dropped, "tx_dropped": nic.tx_dropped,
            })
        return out


OPS: dict[str, Callable[[Runtime, dict[str, Any]], Any]] = {
    "info": Runtime.op_info,
    "pause": Runtime.op_pause,
    "unpause": Runtime.op_unpause,
    "destroy": Runtime.op_destroy,
    "shutdown": Runtime.op_shutdown,
    "reboot": Runtime.op_reboot,
    "mem-set": Runtime.op_mem_set,
    "mem-max": Runtime.op_mem_max,
    "vcpu-pin": Runtime.op_vcpu_pin,
    "disk-swap": Runtime.op_disk_swap,
    "rate-limit": Runtime.op_rate_limit,
    "ctrl-alt-del": Runtime.op_ctrl_alt_del,
    "metrics": Runtime.op_metrics,
    "save": Runtime.op_save,
    "migrate": Runtime.op_migrate,
    "gdb": Runtime.op_gdb,
    "repl": Runtime.op_repl,
}


def vcpu_info(machine: Any) -> list[dict[str, Any]]:
    """Each vCPU thread as the host sees it: CPU time, state, where it runs, exits by reason."""
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


def _what(stop: Stop) -> str:
    return {
        StopKind.RESET: "guest rebooted", StopKind.POWEROFF: "guest powered off",
        StopKind.REBOOT: "rebooted by the host",
    }.get(stop.kind, stop.detail or stop.kind.value)


def _policy(stop: Stop) -> str:
    return {
        StopKind.RESET: "on_reboot=restart", StopKind.POWEROFF: "on_poweroff=restart",
        StopKind.CRASH: "on_crash=restart", StopKind.ERROR: "on_crash=restart",
    }.get(stop.kind, "asked by the host")


def _say(text: str) -> None:
    print(f"pyhv: {text}", file=sys.stderr, flush=True)
