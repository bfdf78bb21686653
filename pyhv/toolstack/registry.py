"""pyhvd's view of the domains: ids and names, the domain processes, crashes.

Every domain lives in ``RUN_DIR/domains/ID/``: ``domain.json`` (what pyhvd
asked for), ``pid`` (the VMM process and its start time, so a recycled pid is
never mistaken for it), the domain's sockets, and ``status.json`` once it ended.
The domain's logs go to ``STATE_DIR/domains/NAME/`` and outlive it.  Because all
of that is on disk and the VMM processes run in their own sessions, pyhvd can
be killed and started again: :meth:`Registry.reattach` rebuilds the table from
the directories and notices which domains died meanwhile.

Threads: API request threads call create/find/remove under ``lock``; the
monitor thread waits on every VMM process's pidfd and handles exits.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from .. import model
from ..errors import PyhvError
from ..model import Description
from ..vmm import control

#: how long a new domain may take to boot its machine
START_TIMEOUT = 60.0
#: how long a request to one domain may take
CALL_TIMEOUT = 5.0


class Refused(PyhvError):
    """A request pyhvd understood but cannot carry out (the HTTP status says why)."""

    def __init__(self, message: str, http_status: int = 409) -> None:
        super().__init__(message)
        self.http_status = http_status


class DomainRecord:
    def __init__(self, domid: int, description: Description | None, run_dir: str, log_dir: str) -> None:
        self.id = domid
        #: the domain as pyhvd admitted it (None only while a migration is arriving)
        self.description = description
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.pid = 0
        self.start_time = ""
        self.pidfd = -1
        self.popen: subprocess.Popen[bytes] | None = None
        self.crashed: str | None = None  # why, when the VMM process died and on_crash=preserve
        self.destroying = False
        self.reaped = False
        self.created = time.time()

    @property
    def name(self) -> str:
        return self.description.name if self.description is not None else ""

    @property
    def control_path(self) -> str:
        return os.path.join(self.run_dir, "control.sock")

    @property
    def console_path(self) -> str:
        return os.path.join(self.run_dir, "console.sock")

    @property
    def console_log(self) -> str:
        return os.path.join(self.log_dir, "console.log")

    def call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        if self.crashed is not None:
            raise Refused(f"domain {self.name} has crashed ({self.crashed}); destroy it")
        try:
            return control.call(self.control_path, {"op": op, **args}, timeout)
        except control.ControlError as e:
            if e.transport:
                raise Refused(f"domain {self.name}: {e}", 504 if e.timeout else 409) from None
            raise Refused(str(e), 409) from None

    def summary(self, info: dict[str, Any] | None) -> dict[str, Any]:
        """What ``list`` shows; ``info`` is the domain's own answer (None: it did not answer)."""
        d = self.description
        assert d is not None
        out = {
            "id": self.id, "name": self.name, "pid": self.pid,
            "memory": d.memory, "maxmem": d.maxmem, "vcpus": d.vcpus,
            "state": "crashed" if self.crashed else "unknown", "cpu_time": 0.0, "created": self.created,
        }
        if info is not None:
            out.update(
                state=info["state"], memory=info["current_memory"], maxmem=info["maxmem"],
                vcpus=info["vcpus"], cpu_time=info["cpu_time"],
            )
        return out


def _proc_start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""  # a zombie has ended


class Registry:
    def __init__(self, run_dir: str, state_dir: str, log: Any = print) -> None:
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.domains_dir = os.path.join(run_dir, "domains")
        self.log = log
        self.lock = threading.Lock()
        self.domains: dict[int, DomainRecord] = {}
        self._starting: set[str] = set()  # names reserved by creates in progress
        for d, mode in ((run_dir, 0o700), (self.domains_dir, 0o700), (state_dir, 0o700)):
            os.makedirs(d, mode=mode, exist_ok=True)
            os.chmod(d, mode)
        self._epoll = select.epoll()
        self._by_fd: dict[int, DomainRecord] = {}
        self._closed = False
        self._migration_server: Any = None
        self._monitor = threading.Thread(target=self._watch, name="monitor", daemon=True)

    # --- ids ------------------------------------------------------------------------

    def _next_id(self) -> int:
        """Domain ids are never reused, across pyhvd restarts too."""
        path = os.path.join(self.state_dir, "next-domid")
        try:
            with open(path) as f:
                domid = int(f.read())
        except (OSError, ValueError):
            domid = 1
        domid = max([domid, *[d + 1 for d in self.domains]])
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{domid + 1}\n")
        os.replace(tmp, path)
        return domid

    # --- lookups ----------------------------------------------------------------------

    def find(self, ref: str) -> DomainRecord:
        """A domain by id or name; Refused(404) if there is none."""
        with self.lock:
            if ref.isdigit() and int(ref) in self.domains:
                return self.domains[int(ref)]
            for d in self.domains.values():
                if d.name == ref:
                    return d
        raise Refused(f"no domain {ref!r}", 404)

    def all(self) -> list[DomainRecord]:
        with self.lock:
            return sorted(self.domains.values(), key=lambda d: d.id)

    # --- create -------------------------------------------------------------------------

    def create(self, config: Any, paused: bool = False, restore: str = "", verify: bool = False) -> DomainRecord:
        """Check a description (plain values, as the API and files give it), start the
        VMM process, wait until the guest runs (booted, or restored from snapshot
        ``restore``, its memory checked first with ``verify``)."""
        return self.start(self.admit_plain(config), paused, restore, verify)

    def start(self, description: Description, paused: bool = False, restore: str = "",
              verify: bool = False) -> DomainRecord:
        """Start a description that :meth:`admit` reserved the name of; the name is
        released, and nothing of a refused start is left behind, on every path."""
        log_dir = os.path.join(self.state_dir, "domains", description.name)
        had_log_dir = os.path.isdir(log_dir)
        domid, record = 0, None
        try:
            with self.lock:
                domid = self._next_id()
            extra: dict[str, Any] = {"restore": restore, "verify": verify} if restore else {}
            record = self._spawn(domid, description, paused, extra)
            return record
        except OSError as e:
            raise Refused(f"cannot create domain {description.name}: {_os_problem(e)}", 503) from None
        finally:
            with self.lock:
                self._starting.discard(description.name)
            if record is None:  # refused: leave nothing of it behind
                if domid:
                    shutil.rmtree(os.path.join(self.domains_dir, str(domid)), ignore_errors=True)
                if not had_log_dir:
                    _remove_unused_log_dir(log_dir)

    def admit_plain(self, config: Any) -> Description:
        try:
            description = model.from_plain(config)
        except model.DescriptionError as e:
            raise Refused(str(e), 400) from None
        return self.admit(description)

    def admit(self, description: Description) -> Description:
        """Check what pyhvd itself requires of a domain and reserve its name (the
        caller releases it from ``_starting``)."""
        if not description.name:
            raise Refused("name: required", 400)
        for key, path in model.paths(description):
            if not os.path.isabs(path):
                raise Refused(f"{key}: must be an absolute path (got {path!r})", 400)
        host = _host_memory()
        if host and description.memory > host:
            raise Refused(f"memory: {description.memory >> 20} MiB is more than this host's "
                          f"{host >> 20} MiB of RAM", 400)
        with self.lock:
            if description.name in self._starting or any(d.name == description.name for d in self.domains.values()):
                raise Refused(f"a domain named {description.name!r} already exists", 409)
            self._starting.add(description.name)
        return description

    def restore(self, path: str, paused: bool = False, name: str = "", verify: bool = False) -> DomainRecord:
        """A domain from a snapshot file, checked here before anything starts;
        with ``verify`` the domain process also checks every memory CRC before
        the guest runs (reading the whole file)."""
        from ..vmm.snapshot import Snapshot

        if not os.path.isabs(path):
            raise Refused(f"path: must be an absolute path (got {path!r})", 400)
        try:
            snapshot = Snapshot(path)
        except PyhvError as e:
            raise Refused(str(e), 400) from None
        try:
            description = snapshot.description
        finally:
            snapshot.close()
        try:
            if name or not description.name:
                description = description._replace(
                    name=model.check_name(name or os.path.splitext(os.path.basename(path))[0])
                )
        except model.DescriptionError as e:
            raise Refused(str(e), 400) from None
        return self.start(self.admit(description), paused, restore=path, verify=verify)

    def _spawn(
        self, domid: int, description: Description | None, paused: bool, extra: dict[str, Any],
        incoming: Any = None, key: bytes = b"",
    ) -> DomainRecord:
        """Start a domain process and wait for its word.  ``incoming``: an accepted
        migration connection, handed over; the domain comes from the stream."""
        import socket

        run_dir = os.path.join(self.domains_dir, str(domid))
        os.makedirs(run_dir, mode=0o700)
        name = description.name if description is not None else ""
        log_dir = os.path.join(self.state_dir, "domains", name) if name else run_dir
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        record = DomainRecord(domid, description, run_dir, log_dir)
        meta = {"id": domid, "description": model.to_plain(description) if description is not None else None,
                "paused": paused, "log_dir": log_dir, "created": record.created, **extra}
        taps = self._open_taps(description, run_dir) if description is not None else []
        nic_fds = [t.fd for t in taps]
        meta["nic_fds"] = nic_fds
        handed = [incoming.fileno()] if incoming is not None else []
        if handed:
            meta.update(incoming=True, incoming_fd=handed[0])
        _write_json(os.path.join(run_dir, "domain.json"), meta)
        ours, theirs = socket.socketpair()
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYHV_READY_FD=str(theirs.fileno()), PYTHONPATH=package_parent)
        if key:
            env["PYHV_MIGRATION_KEY"] = key.hex()
        try:
            with open(os.path.join(log_dir, "vmm.log"), "ab") as out:
                record.popen = subprocess.Popen(
                    [sys.executable, "-S", "-m", "pyhv", "domain", run_dir],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=(theirs.fileno(), *nic_fds, *handed), env=env, cwd="/",
                )
        except OSError as e:
            ours.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise Refused(f"cannot start the domain process: {e.strerror}", 500) from None
        finally:
            theirs.close()
            for t in taps:
                t.close()  # the domain holds them now; the TAPs go away with it
        record.pid = record.popen.pid
        record.start_time = _proc_start_time(record.pid)
        with open(os.path.join(run_dir, "pid"), "w") as f:
            f.write(f"{record.pid} {record.start_time}\n")
        claimed = ""
        try:
            reply = _read_ready(ours.fileno(), START_TIMEOUT)
            if "claim" in reply:  # a migrated domain announces itself
                claimed, answer = self._claim(record, reply["claim"])
                ours.sendall(json.dumps(answer).encode() + b"\n")
                if answer["ok"]:
                    reply = _read_ready(ours.fileno(), START_TIMEOUT)
                else:  # let it tell the source why before it goes
                    reply = _read_ready(ours.fileno(), 10.0)
                    reply = answer
        finally:
            ours.close()
            if claimed:
                with self.lock:
                    self._starting.discard(claimed)
        if not reply.get("ok"):
            _kill(record)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise Refused(str(reply.get("error", "the domain failed to start")), 400 if "error" in reply else 500)
        with self.lock:
            self.domains[domid] = record
        self._watch_pid(record)
        self.log(f"domain {domid} ({record.name}) {'arrived' if incoming is not None else 'started'}, pid {record.pid}")
        return record

    def _claim(self, record: DomainRecord, config: Any) -> tuple[str, dict[str, Any]]:
        """Admit a domain arriving by migration: (the name reserved, the answer)."""
        try:
            description = self.admit_plain(config)
        except Refused as e:
            return "", {"ok": False, "error": str(e)}
        record.description = description
        record.log_dir = os.path.join(self.state_dir, "domains", description.name)
        os.makedirs(record.log_dir, mode=0o700, exist_ok=True)
        meta = {"id": record.id, "description": model.to_plain(description), "log_dir": record.log_dir}
        path = os.path.join(record.run_dir, "domain.json")
        _write_json(path, {**(_read_json(path) or {}), **meta})
        return description.name, {"ok": True, "meta": meta}

    # --- live migration in ------------------------------------------------------------------

    def listen_for_migrations(self, host: str, port: int, key: bytes) -> int:
        """Accept migrations on host:port (TCP) in a thread; the port listened on."""
        from ..vmm import migrate

        try:
            server = migrate.listen(host, port)
        except PyhvError as e:
            raise Refused(str(e), 500) from None
        self._migration_server = server

        def accept() -> None:
            while not self._closed:
                try:
                    sock, peer = server.accept()
                except OSError:
                    return
                threading.Thread(target=self._incoming, args=(sock, peer, key), name="incoming", daemon=True).start()

        threading.Thread(target=accept, name="migration-listen", daemon=True).start()
        return int(server.getsockname()[1])

    def _incoming(self, sock: Any, peer: Any, key: bytes) -> None:
        try:
            with self.lock:
                domid = self._next_id()
            self._spawn(domid, None, False, {}, incoming=sock, key=key)
        except PyhvError as e:
            self.log(f"incoming migration from {peer[0]}: {e}")
        except OSError as e:
            self.log(f"incoming migration from {peer[0]}: {_os_problem(e)}")
        finally:
            sock.close()

    def _open_taps(self, description: Description, run_dir: str) -> list[Any]:
        """Open each NIC's TAP and join its bridge here, in the toolstack (as Xen's
        vif scripts do in dom0): the domain process gets the open descriptors."""
        from ..backends.tap import Tap

        taps: list[Any] = []
        try:
            for nic in description.nics:
                taps.append(Tap(nic.tap, bridge=nic.bridge))
        except PyhvError as e:
            for t in taps:
                t.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise Refused(str(e), 409) from None
        return taps

    def save_description(self, record: DomainRecord) -> None:
        """Persist a changed description (e.g. scheduling parameters) for the next pyhvd."""
        path = os.path.join(record.run_dir, "domain.json")
        meta = _read_json(path)
        if meta is not None and record.description is not None:
            _write_json(path, {**meta, "description": model.to_plain(record.description)})

    # --- removal and exits ----------------------------------------------------------------

    def destroy(self, record: DomainRecord, timeout: float = 10.0) -> None:
        """Stop the domain now; its process ends and the monitor removes it."""
        if record.crashed is not None or record.pid == 0:
            self._remove(record, "destroyed")
            return
        record.destroying = True
        try:
            record.call("destroy", timeout=2.0)
        except Refused:
            pass
        if not _wait_gone(record, timeout):
            _kill(record)
        _wait_gone(record, 5.0)
        self._reap(record)

    def _remove(self, record: DomainRecord, why: str) -> None:
        with self.lock:
            if self.domains.pop(record.id, None) is None:
                return
            if record.pidfd >= 0:
                self._by_fd.pop(record.pidfd, None)
                try:
                    self._epoll.unregister(record.pidfd)
                except OSError:
                    pass
                os.close(record.pidfd)
                record.pidfd = -1
        shutil.rmtree(record.run_dir, ignore_errors=True)
        self.log(f"domain {record.id} ({record.name}) {why}")

    def _reap(self, record: DomainRecord) -> None:
        """The VMM process ended: read why, apply the configuration's policy."""
        if record.popen is not None:
            record.popen.wait()
        with self.lock:
            if record.id not in self.domains or record.reaped:
                return
            record.reaped = True
        if record.destroying:
            self._remove(record, "destroyed")
            return
        status = _read_json(os.path.join(record.run_dir, "status.json"))
        if status is not None:
            self._remove(record, f"ended: {status.get('reason')} {status.get('detail') or ''}".rstrip())
            return
        self._vmm_crashed(record, "the VMM process died")

    def _vmm_crashed(self, record: DomainRecord, why: str) -> None:
        assert record.description is not None
        on_crash = record.description.lifecycle.on_crash
        if on_crash == "preserve":
            record.crashed = why
            record.pid = 0
            _write_json(os.path.join(record.run_dir, "crashed.json"), {"why": why, "time": time.time()})
            self.log(f"domain {record.id} ({record.name}) crashed: {why}; preserved (on_crash=preserve)")
            return
        self._remove(record, f"crashed: {why}; on_crash={on_crash}")
        if on_crash == "restart":
            try:
                new = self.start(self.admit(record.description))
                self.log(f"domain {record.name} restarted as {new.id} (on_crash=restart)")
            except PyhvError as e:
                self.log(f"domain {record.name}: restart after a crash failed: {e}")

    # --- the monitor thread ---------------------------------------------------------------

    def _watch_pid(self, record: DomainRecord) -> None:
        try:
            fd = os.pidfd_open(record.pid)
        except OSError:  # already gone
            threading.Thread(target=self._reap, args=(record,), daemon=True).start()
            return
        with self.lock:
            record.pidfd = fd
            self._by_fd[fd] = record
            self._epoll.register(fd, select.EPOLLIN)

    def start_monitor(self) -> None:
        self._monitor.start()

    def _watch(self) -> None:
        while not self._closed:
            try:
                events = self._epoll.poll(0.5)
            except OSError:
                return
            for fd, _ in events:
                with self.lock:
                    record = self._by_fd.pop(fd, None)
                    if record is not None:
                        self._epoll.unregister(fd)
                        os.close(fd)
                        record.pidfd = -1
                if record is not None:
                    # exits are handled off this thread: a restart must not block the others
                    threading.Thread(target=self._reap, args=(record,), name="reap", daemon=True).start()

    # --- after a pyhvd restart ---------------------------------------------------------------

    def reattach(self) -> None:
        """Rebuild the table from the run directory."""
        for entry in sorted(os.listdir(self.domains_dir), key=lambda e: (len(e), e)):
            run_dir = os.path.join(self.domains_dir, entry)
            meta = _read_json(os.path.join(run_dir, "domain.json"))
            if not entry.isdigit() or meta is None:
                self.log(f"ignoring {run_dir}: not a domain directory")
                continue
            try:
                record = DomainRecord(int(entry), model.from_plain(meta.get("description")), run_dir, meta["log_dir"])
            except (PyhvError, KeyError) as e:
                self.log(f"ignoring {run_dir}: its domain.json is not valid: {e}")
                continue
            record.created = meta.get("created", record.created)
            try:
                with open(os.path.join(run_dir, "pid")) as f:
                    pid_text, start_time = f.read().split()
                record.pid = int(pid_text)
            except (OSError, ValueError):
                record.pid, start_time = 0, ""
            with self.lock:
                self.domains[record.id] = record
            crashed = _read_json(os.path.join(run_dir, "crashed.json"))
            if crashed is not None:
                record.crashed, record.pid = crashed.get("why", "crashed"), 0
                continue
            if record.pid and _proc_start_time(record.pid) == start_time:
                record.start_time = start_time
                self._watch_pid(record)
                self.log(f"domain {record.id} ({record.name}) re-attached, pid {record.pid}")
                continue
            self._reap(record)  # it ended while pyhvd was away

    def close(self) -> None:
        self._closed = True
        if self._migration_server is not None:
            self._migration_server.close()
        self._monitor.join(1.0) if self._monitor.is_alive() else None
        self._epoll.close()


def _host_memory() -> int:
    """The host's RAM in bytes (MemTotal); 0 if /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_problem(e: OSError) -> str:
    """One line for an OSError, also for one raised as OSError(errno) alone."""
    if e.strerror:
        text = e.strerror
    elif e.args and isinstance(e.args[0], int):
        text = os.strerror(e.args[0])
    else:
        text = str(e) or type(e).__name__
    return f"{text} ({e.filename})" if e.filename else text


def _remove_unused_log_dir(log_dir: str) -> None:
    """Remove a domain's log directory that a refused create made, if nothing
    in it was written (a failed start's vmm.log says why, and stays)."""
    try:
        entries = [os.path.join(log_dir, e) for e in os.listdir(log_dir)]
        if not all(os.path.isfile(e) and not os.path.islink(e) and os.path.getsize(e) == 0 for e in entries):
            return
        for e in entries:
            os.unlink(e)
        os.rmdir(log_dir)
    except OSError:
        pass


def _read_ready(fd: int, timeout: float) -> dict[str, Any]:
    reply = control.read_message(fd, timeout)
    if reply == "timeout":
        return {"ok": False, "error": f"the domain did not start within {timeout:g} s"}
    if reply == "closed":
        return {"ok": False, "error": "the domain process ended while starting (see its vmm.log)"}
    if isinstance(reply, str):
        return {"ok": False, "error": "garbled start-up message"}
    return reply


def _kill(record: DomainRecord) -> None:
    if record.pid and _proc_start_time(record.pid) == record.start_time:
        try:
            os.kill(record.pid, 9)
        except ProcessLookupError:
            pass


def _wait_gone(record: DomainRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.popen is not None:
            if record.popen.poll() is not None:
                return True
        elif _proc_start_time(record.pid) != record.start_time:
            return True
        time.sleep(0.02)
    return False


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: str, value: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)
