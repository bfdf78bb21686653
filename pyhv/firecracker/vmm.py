"""The microVM behind the API: pre-boot configuration, then the VMM runtime.

:class:`Microvm` answers each request of Firecracker's API as Firecracker
does, with ``(status, body)``.  Before InstanceStart it edits the pre-boot
configuration (:mod:`pyhv.firecracker.config`); InstanceStart (or a snapshot
load) translates it into a machine description and hands it to the main
thread, which runs :class:`pyhv.vmm.runtime.Runtime` (:meth:`Microvm.serve`);
the request waits until the machine runs or failed to start.  After that,
requests become the runtime's control requests (pause, unpause, mem-set,
save, metrics).  Requests are handled one at a time, as Firecracker's API
thread does.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import __version__
from ..errors import PyhvError
from ..model import Description
from . import config as fc
from .config import Fault
from .log import Log

#: how long InstanceStart or a snapshot load waits for the machine to run
START_TIMEOUT = 120.0
#: vCPU thread names, as Firecracker's (``fc_vcpu 0``, ...): tools such as Kata find them so
VCPU_THREAD_PREFIX = "fc_vcpu "

Reply = tuple[int, Any]
NO_CONTENT: Reply = (204, None)


class Start(NamedTuple):
    """What the main thread is asked to run: a description, or a snapshot to restore."""

    description: Description
    snapshot: Any  # an opened pyhv.vmm.snapshot.Snapshot, or None
    paused: bool
    done: threading.Event
    reply: list[dict[str, Any]]


class Microvm:
    def __init__(self, instance_id: str, log: Log, transport: str = "mmio") -> None:
        self.id = instance_id
        self.log = log
        self.transport = transport  # of the virtio devices: mmio as Firecracker's, pci with --enable-pci
        self.config = fc.FcConfig()
        self.runtime: Any = None  # set by the main thread once a machine is being run
        self.booted = False
        self.metrics_path = ""
        self._lock = threading.Lock()
        self._starts: queue.Queue[Start | None] = queue.Queue()
        self._stopping: list[int] = []  # a signal number once one asked the process to end
        self._pci_warned = False
        self._routes = self.routes()

    # --- the route table -----------------------------------------------------------------

    def routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., Reply]]]:
        pre, post = self._pre, self._post
        table: list[tuple[str, str, Callable[..., Reply]]] = [
            ("GET", "/", self.describe_instance),
            ("GET", "/version", lambda body: (200, {"firecracker_version": fc.FIRECRACKER_VERSION})),
            ("GET", "/vm/config", self.get_vm_config),
            ("GET", "/machine-config", lambda body: (200, dict(self.config.machine))),
            ("PUT", "/machine-config", pre("machine-config", lambda b: fc.put_machine_config(self.config, b))),
            ("PATCH", "/machine-config", pre("machine-config", lambda b: fc.put_machine_config(self.config, b, True))),
            ("PUT", "/boot-source", pre("boot-source", self._boot_source)),
            ("PUT", "/drives/(?P<id>[^/]*)", pre("drives", lambda b, i: fc.put_drive(self.config, i, b))),
            ("PATCH", "/drives/(?P<id>[^/]*)", post("drives", self.patch_drive)),
            ("PATCH", "/network-interfaces/(?P<id>[^/]*)", post("network-interfaces", self.patch_network_interface)),
            ("PUT", "/network-interfaces/(?P<id>[^/]*)",
             pre("network-interfaces", lambda b, i: fc.put_network_interface(self.config, i, b))),
            ("PUT", "/vsock", pre("vsock", lambda b: fc.put_vsock(self.config, b))),
            ("PUT", "/entropy", pre("entropy", lambda b: fc.put_entropy(self.config, b))),
            ("PUT", "/balloon", pre("balloon", lambda b: fc.put_balloon(self.config, b))),
            ("GET", "/balloon", self.get_balloon),
            ("PATCH", "/balloon", self.patch_balloon),
            ("PUT", "/logger", self.put_logger),
            ("PUT", "/metrics", self.put_metrics),
            ("PUT", "/actions", self.actions),
            ("PATCH", "/vm", post("vm", self.patch_vm)),
            ("PUT", "/snapshot/create", post("snapshot/create", self.snapshot_create)),
            ("PUT", "/snapshot/load", self.snapshot_load),
        ]
        table += [(method, path, self._unserved(what)) for method, path, what in UNSERVED]
        return [(method, re.compile(f"^{path}$"), handler) for method, path, handler in table]

    def _unserved(self, what: str) -> Callable[..., Reply]:
        def refuse(body: Any, *ids: str) -> Reply:
            raise Fault(f"{what}: not supported by pyhv's Firecracker front end")

        return refuse

    def handle(self, method: str, path: str, body: Any) -> Reply:
        """One request: (status, JSON body or None); every refusal is 400 with a fault_message."""
        with self._lock:
            try:
                problem = request_problem(method, body)
                if problem:
                    return 400, fault(problem)
                for m, pattern, handler in self._routes:
                    match = pattern.match(path)
                    if match is not None and m == method:
                        if any(not i for i in match.groups()):
                            raise Fault("The ID cannot be empty.")
                        return handler(body, *match.groups())
                return 400, fault(invalid_path(method, path))
            except Fault as e:
                return 400, fault(str(e))
            except PyhvError as e:
                return 400, fault(str(e))

    def _pre(self, what: str, change: Callable[..., fc.FcConfig]) -> Callable[..., Reply]:
        """A pre-boot-only request that replaces the configuration (or changes nothing)."""

        def handler(body: Any, *ids: str) -> Reply:
            if self.booted:
                raise Fault(f"{what}: not supported after the microVM has started")
            self.config = change(body, *ids)
            return NO_CONTENT

        return handler

    def _post(self, what: str, handler: Callable[..., Reply]) -> Callable[..., Reply]:
        def checked(body: Any, *ids: str) -> Reply:
            if not self.booted:
                raise Fault(f"{what}: not supported before the microVM has started")
            return handler(body, *ids)

        return checked

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.runtime.handle({"op": op, **args})
        return result

    # --- requests -----------------------------------------------------------------------------

    def state(self) -> str:
        if not self.booted:
            return "Not started"
        return "Paused" if self.runtime is not None and self.runtime.state == "paused" else "Running"

    def describe_instance(self, body: Any) -> Reply:
        return 200, {"id": self.id, "state": self.state(), "vmm_version": f"{fc.FIRECRACKER_VERSION} (pyhv {__version__})",
                     "app_name": "Firecracker"}

    def get_vm_config(self, body: Any) -> Reply:
        out = fc.vm_config(self.config)
        out["logger"] = self.log.settings()
        out["metrics"] = {"metrics_path": self.metrics_path} if self.metrics_path else None
        return 200, out

    def _boot_source(self, body: Any) -> fc.FcConfig:
        new = fc.put_boot_source(self.config, body)
        assert new.boot_source is not None
        pci_off = " pci=off" in f" {new.boot_source.get('boot_args', '')}"
        if pci_off and self.transport == "pci" and not self._pci_warned:
            self._pci_warned = True
            self.log.warn("boot_args has pci=off: with --enable-pci a Linux guest will not find pyhv's devices, "
                          "which are then virtio-PCI")
        return new

    def patch_drive(self, body: Any, drive_id: str) -> Reply:
        """A new ``path_on_host``: the runtime's disk-swap (the file is checked
        and locked before anything changes; the guest sees a configuration change);
        a new ``rate_limiter``: the runtime's rate-limit."""
        config, index, changes = fc.patch_drive(self.config, drive_id, body)
        what = f"drives[{drive_id}]"
        if "path_on_host" in changes:
            self._change(f"{what}.path_on_host", "disk-swap", index=index, path=changes["path_on_host"])
            self.config = self.config._replace(drives=tuple(
                {**x, "path_on_host": changes["path_on_host"]} if x["drive_id"] == drive_id else x
                for x in self.config.drives))
        if "rate_limiter" in changes:
            self._change(f"{what}.rate_limiter", "rate-limit", index=index, limit=fc.limit_plain(changes["rate_limiter"]))
        self.config = config
        return NO_CONTENT

    def patch_network_interface(self, body: Any, iface_id: str) -> Reply:
        config, index, changes = fc.patch_network_interface(self.config, iface_id, body)
        for key, limiter in changes.items():
            self._change(f"network-interfaces[{iface_id}].{key}", "rate-limit", nic=index,
                         direction=key[:2], limit=fc.limit_plain(limiter))
        self.config = config
        return NO_CONTENT

    def _change(self, what: str, op: str, **args: Any) -> None:
        """A runtime request on behalf of a PATCH, its refusal named by the field."""
        try:
            self._ask(op, **args)
        except PyhvError as e:
            raise Fault(f"{what}: {e}") from None

    def get_balloon(self, body: Any) -> Reply:
        if self.config.balloon is None:
            raise Fault("balloon: no balloon device is configured")
        return 200, dict(self.config.balloon)

    def patch_balloon(self, body: Any) -> Reply:
        balloon = fc.patch_balloon(self.config.balloon, body)
        target = fc.balloon_target(balloon["amount_mib"], self.config.machine["mem_size_mib"])
        if self.booted:
            self._ask("mem-set", bytes=target)
        self.config = self.config._replace(balloon=balloon)
        return NO_CONTENT

    def put_logger(self, body: Any) -> Reply:
        b = fc.fields(body, "logger", {}, {"log_path": str, "level": str, "show_level": bool,
                                           "show_log_origin": bool, "module": str})
        self.log.configure(**b)
        return NO_CONTENT

    def put_metrics(self, body: Any) -> Reply:
        b = fc.fields(body, "metrics", {"metrics_path": str}, {})
        if self.metrics_path:
            raise Fault("metrics: the metrics system is already initialised")
        try:
            os.close(os.open(b["metrics_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644))
        except OSError as e:
            raise Fault(f"metrics.metrics_path: cannot open {b['metrics_path']!r}: {e.strerror}") from None
        self.metrics_path = b["metrics_path"]
        return NO_CONTENT

    def flush_metrics(self) -> None:
        """One JSON line of pyhv's counters (not Firecracker's metrics schema) to the metrics file."""
        if not self.metrics_path:
            raise Fault("FlushMetrics: the metrics system is not initialised (PUT /metrics first)")
        counters = self._ask("metrics") if self.booted and self.runtime is not None else {}
        line = json.dumps({"utc_timestamp_ms": int(time.time() * 1000), "pyhv": counters}) + "\n"
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise Fault(f"FlushMetrics: cannot write {self.metrics_path!r}: {e.strerror}") from None

    def actions(self, body: Any) -> Reply:
        b = fc.fields(body, "actions", {"action_type": str}, {})
        action = b["action_type"]
        if action == "InstanceStart":
            if self.booted:
                raise Fault("InstanceStart: the microVM has already started")
            description = fc.describe(self.config, self.id, self.transport)
            self._start(description, None, paused=False)
            if self.config.balloon is not None and self.config.balloon["amount_mib"]:
                self._ask("mem-set", bytes=fc.balloon_target(self.config.balloon["amount_mib"],
                                                             self.config.machine["mem_size_mib"]))
            return NO_CONTENT
        if action == "FlushMetrics":
            self.flush_metrics()
            return NO_CONTENT
        if action == "SendCtrlAltDel":
            if not self.booted:
                raise Fault("SendCtrlAltDel: not supported before the microVM has started")
            self._ask("ctrl-alt-del")
            return NO_CONTENT
        raise Fault(f"actions.action_type: {action!r:.40} is not one of FlushMetrics, InstanceStart, SendCtrlAltDel")

    def patch_vm(self, body: Any) -> Reply:
        b = fc.fields(body, "vm", {"state": str}, {})
        ops = {"Paused": "pause", "Resumed": "unpause"}
        if b["state"] not in ops:
            raise Fault(f"vm.state: {b['state']!r:.40} is not Paused or Resumed")
        self._ask(ops[b["state"]])
        return NO_CONTENT

    def snapshot_create(self, body: Any) -> Reply:
        b = fc.fields(body, "snapshot/create", {"snapshot_path": str, "mem_file_path": str},
                      {"snapshot_type": str})
        if b.setdefault("snapshot_type", "Full") != "Full":
            raise Fault(f"snapshot/create.snapshot_type: {b['snapshot_type']!r:.20}: only Full snapshots are supported")
        if self.state() != "Paused":
            raise Fault("snapshot/create: the microVM must be paused first (PATCH /vm Paused)")
        snap, mem = os.path.abspath(b["snapshot_path"]), os.path.abspath(b["mem_file_path"])
        self._ask("save", path=snap, then="continue")
        if mem != snap:
            link_memory_file(mem, snap)
        self.log.info(f"snapshot saved to {snap} (memory included; {mem} links to it)")
        return NO_CONTENT

    def snapshot_load(self, body: Any) -> Reply:
        from ..vmm.snapshot import Snapshot

        b = fc.fields(body, "snapshot/load", {"snapshot_path": str},
                      {"mem_file_path": str, "mem_backend": dict, "enable_diff_snapshots": bool, "resume_vm": bool})
        if self.booted:
            raise Fault("snapshot/load: not supported after the microVM has started")
        if self.config.touched:
            raise Fault("snapshot/load: not allowed after boot resources were configured")
        if ("mem_file_path" in b) == ("mem_backend" in b):
            raise Fault("snapshot/load: give exactly one of mem_file_path and mem_backend")
        if "mem_backend" in b:
            mb = fc.fields(b["mem_backend"], "snapshot/load.mem_backend", {"backend_type": str, "backend_path": str}, {})
            if mb["backend_type"] != "File":
                raise Fault(f"snapshot/load.mem_backend.backend_type: {mb['backend_type']!r:.20}: only File is supported")
            mem = mb["backend_path"]
        else:
            mem = b["mem_file_path"]
        if not os.path.exists(mem):
            raise Fault(f"snapshot/load: memory file {mem!r} does not exist")
        snapshot = Snapshot(os.path.abspath(b["snapshot_path"]), serial="stdio")
        if not _same_file(mem, b["snapshot_path"]):
            self.log.info(f"the guest's memory comes from {b['snapshot_path']} (pyhv snapshots hold it); {mem} is not read")
        try:
            config = fc.from_description(snapshot.description)
        except BaseException:
            snapshot.close()
            raise
        self._start(snapshot.description, snapshot, paused=not b.get("resume_vm", False))
        self.config = config
        return NO_CONTENT

    # --- the main thread -----------------------------------------------------------------------

    def _start(self, description: Description, snapshot: Any, paused: bool) -> None:
        """Hand the machine to the main thread and wait until it runs (or failed to)."""
        start = Start(description, snapshot, paused, threading.Event(), [])
        self._starts.put(start)
        if not start.done.wait(START_TIMEOUT):
            raise Fault(f"the microVM did not start within {START_TIMEOUT:.0f} s")
        reply = start.reply[0]
        if not reply.get("ok"):
            raise Fault(str(reply.get("error", "the microVM did not start")).splitlines()[0])
        self.booted = True

    def stop(self, signum: int) -> None:
        """A signal asked the process to end: destroy the machine, or stop waiting for one."""
        from ..vcpu import StopKind

        self._stopping.append(signum)
        runtime = self.runtime
        if runtime is not None:
            runtime.stop(StopKind.DESTROY, 128 + signum, f"stopped by signal {signum}")

    def serve(self, console_factory: Callable[[], Any]) -> int:
        """The main thread: wait for a machine to run, run it until it ends; the exit status."""
        from ..vcpu import StopKind
        from ..vmm.runtime import Runtime

        while not self._stopping:
            try:
                start = self._starts.get(timeout=0.2)
            except queue.Empty:
                continue
            if start is None:  # the configuration file's InstanceStart failed
                return 1
            try:
                console = console_factory()
            except PyhvError as e:
                start.reply.append({"ok": False, "error": str(e)})
                start.done.set()
                continue

            def ready(reply: dict[str, Any], start: Start = start) -> None:
                start.reply.append(reply)
                start.done.set()

            runtime = Runtime(start.description, console, paused=start.paused, on_ready=ready,
                              vcpu_prefix=VCPU_THREAD_PREFIX)
            self.runtime = runtime
            if self._stopping:
                runtime.stop(StopKind.DESTROY, 128 + self._stopping[0])
            try:
                ending = runtime.run(snapshot=start.snapshot)
            finally:
                console.close()
            if not start.reply:  # run() ended without saying (it always says; be safe)
                ready({"ok": False, "error": ending.detail})
            if self.booted:
                self.log.info(f"the microVM ended: {ending.detail} (status {ending.status})")
                return ending.status
            self.runtime = None
        return 128 + self._stopping[0] if self._stopping else 0

    def start_now(self) -> None:
        """--config-file: boot right away (the main thread is not serving yet)."""
        threading.Thread(target=self._boot_from_file, name="config-start", daemon=True).start()

    def _boot_from_file(self) -> None:
        reply = self.handle("PUT", "/actions", {"action_type": "InstanceStart"})
        if reply[0] != 204:
            self.log.error(f"InstanceStart from the configuration file failed: {reply[1]['fault_message']}")
            self._starts.put(None)


def link_memory_file(mem: str, snap: str) -> None:
    """``mem_file_path`` after a save: a symbolic link to the snapshot, which holds the memory."""
    tmp = f"{mem}.pyhv-link"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(snap, tmp)
        os.replace(tmp, mem)
    except OSError as e:
        raise Fault(f"snapshot/create.mem_file_path: cannot link {mem!r} to the snapshot: {e.strerror}") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def fault(message: str) -> dict[str, str]:
    """Firecracker's error body: one line."""
    return {"fault_message": " ".join(message.split())}


#: Firecracker v1.10.1's routes pyhv does not serve: method, path pattern, what they are
UNSERVED = [
    ("GET", "/balloon/statistics", "balloon statistics"),
    ("PATCH", "/balloon/statistics", "balloon statistics"),
    ("PUT", "/cpu-config", "cpu-config (CPU templates)"),
    ("GET", "/mmds", "MMDS"),
    ("PUT", "/mmds", "MMDS"),
    ("PATCH", "/mmds", "MMDS"),
    ("PUT", "/mmds/config", "MMDS"),
]


def request_problem(method: str, body: Any) -> str:
    """What Firecracker says of a request whatever its path: a GET with a body,
    a PUT or PATCH without one, a method it does not know ("" if none)."""
    if method == "GET":
        return "GET request cannot have a body." if body is not None else ""
    if method in ("PUT", "PATCH"):
        return "" if body is not None else f"Empty {method} request."
    return f"Unsupported HTTP method {method[:10]!r}: Firecracker's API takes GET, PUT and PATCH."


def invalid_path(method: str, path: str) -> str:
    """Firecracker's answer to a path it does not know: it names the first component."""
    first = path.lstrip("/").split("/", 1)[0]
    return f"Invalid request method and/or path: {method} {first[:100]}."
