"""pyhvd's table of domains: names and ids, and what happens to them.

The registry holds a :class:`~pyhv.toolstack.record.DomainRecord` per domain,
each with its checked :class:`~pyhv.model.Description`, and puts the other
parts together: the directories on disk (:mod:`.store`), the domain
processes (:mod:`.processes`), host resources such as TAPs (:mod:`.hostres`).
Its own jobs are admission (a name is reserved by one create at a time and
can never be confused with an id), the crash policy for VMM processes that
die (``on_crash``), admitting domains that arrive by live migration, and
re-attaching after a pyhvd restart: because everything is on disk and the
domain processes run in their own sessions, a new pyhvd rebuilds the table
from the directories and notices which domains died meanwhile.

Threads: API request threads call create/find/destroy (the table under
``lock``); the monitor thread hears of every process exit and hands it to a
``reap`` thread; ``migration-listen`` hands each incoming stream to an
``incoming`` thread.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import model
from ..errors import PyhvError
from ..model import Description
from . import hostres, processes
from .processes import START_TIMEOUT
from .record import DomainRecord, Refused
from .store import DomainStore

__all__ = ["DomainRecord", "Refused", "Registry"]

#: clone processes started at once (each starts Python and maps the snapshot)
CLONE_STARTS = 4


class Registry:
    def __init__(self, run_dir: str, state_dir: str, log: Any = print) -> None:
        self.store = DomainStore(run_dir, state_dir)
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.log = log
        self.lock = threading.Lock()
        self.domains: dict[int, DomainRecord] = {}
        self._starting: set[str] = set()  # names reserved by creates in progress
        self._monitor = processes.Monitor(self._reap)
        self._closed = False
        self._migration_server: Any = None
        #: the uid/gid range confined domains take ((first, count); None: pyhvd --no-jail)
        self.jail_ids: tuple[int, int] | None = None

    # --- names and ids --------------------------------------------------------------------

    def _next_id(self) -> int:
        """Domain ids are never reused, across pyhvd restarts too."""
        return self.store.next_id(self.domains)

    def find(self, ref: str) -> DomainRecord:
        """A domain by id or name (names are never all digits); Refused(404) if there is none."""
        with self.lock:
            if ref.isdigit():
                if int(ref) in self.domains:
                    return self.domains[int(ref)]
            else:
                for d in self.domains.values():
                    if d.name == ref:
                        return d
        raise Refused(f"no domain {ref!r}", 404)

    def all(self) -> list[DomainRecord]:
        with self.lock:
            return sorted(self.domains.values(), key=lambda d: d.id)

    def admit_plain(self, config: Any) -> Description:
        """:meth:`admit` for the plain form (the API's JSON, a file's TOML)."""
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
        host = hostres.host_memory()
        if host and description.memory > host:
            raise Refused(f"memory: {description.memory >> 20} MiB is more than this host's "
                          f"{host >> 20} MiB of RAM", 400)
        with self.lock:
            if description.name in self._starting or any(d.name == description.name for d in self.domains.values()):
                raise Refused(f"a domain named {description.name!r} already exists", 409)
            self._starting.add(description.name)
        return description

    # --- create, restore ----------------------------------------------------------------------

    def create(self, config: Any, paused: bool = False, restore: str = "", verify: bool = False) -> DomainRecord:
        """Check a description (plain values, as the API and files give it), start the
        VMM process, wait until the guest runs (booted, or restored from snapshot
        ``restore``, its memory checked first with ``verify``)."""
        return self.start(self.admit_plain(config), paused, restore, verify)

    def start(self, description: Description, paused: bool = False, restore: str = "",
              verify: bool = False) -> DomainRecord:
        """Start a description that :meth:`admit` reserved the name of; the name is
        released, and nothing of a refused start is left behind, on every path."""
        log_dir = self.store.log_dir_of(description.name)
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
                    self.store.remove_run_dir(self.store.run_dir_of(domid))
                if not had_log_dir:
                    self.store.remove_unused_log_dir(log_dir)

    def restore(self, path: str, paused: bool = False, name: str = "", verify: bool = False) -> DomainRecord:
        """A domain from a snapshot file, checked here before anything starts;
        with ``verify`` the domain process also checks every memory CRC before
        the guest runs (reading the whole file)."""
        description = self._saved(path)
        try:
            if name or not description.name:
                description = description._replace(name=model.check_name(name or _file_stem(path)))
        except model.DescriptionError as e:
            raise Refused(str(e), 400) from None
        return self.start(self.admit(description), paused, restore=path, verify=verify)

    def clone(self, path: str, count: int, prefix: str = "", paused: bool = False,
              verify: bool = False) -> list[DomainRecord]:
        """``count`` domains from one snapshot file, named ``PREFIX-1`` ... (the
        prefix: the saved domain's name), each with its own NICs' TAPs and MACs,
        vsock socket and CID (:func:`pyhv.model.clone`) and, being restored, its
        own VM generation ID.  Their memory is the one file, mapped copy-on-write.
        All start or none: if one is refused, those already started are destroyed.
        ``verify`` checks the file's CRCs once, in the first clone, before the
        others start (:data:`CLONE_STARTS` at a time)."""
        if not 1 <= count <= model.MAX_CLONES:
            raise Refused(f"clones: must be an integer between 1 and {model.MAX_CLONES}", 400)
        saved = self._saved(path)
        try:
            descriptions = [model.clone(saved, i, prefix or saved.name or _file_stem(path))
                            for i in range(1, count + 1)]
        except model.DescriptionError as e:
            raise Refused(str(e), 400) from None
        admitted: list[Description] = []
        try:
            for description in descriptions:
                admitted.append(self.admit(description))
        except Refused:
            with self.lock:
                self._starting.difference_update(d.name for d in admitted)
            raise
        started: list[DomainRecord] = []
        if verify:  # once, in the first clone, before any runs; the others map the same checked file
            try:
                started.append(self.start(admitted.pop(0), paused, restore=path, verify=True))
            except BaseException:
                with self.lock:
                    self._starting.difference_update(d.name for d in admitted)
                raise
        errors: list[BaseException] = []
        lock = threading.Lock()

        def start(description: Description) -> None:
            try:
                record = self.start(description, paused, restore=path)
            except BaseException as e:  # noqa: BLE001 - reported below, after the others
                with lock:
                    errors.append(e)
                return
            with lock:
                started.append(record)

        # A few at a time: each clone is a process that starts Python and maps the file.
        with ThreadPoolExecutor(max_workers=CLONE_STARTS, thread_name_prefix="clone") as pool:
            list(pool.map(start, admitted))
        if errors:
            for record in started:
                self.destroy(record)
            raise errors[0]
        return sorted(started, key=lambda r: int(r.name.rsplit("-", 1)[1]))

    def _saved(self, path: str) -> Description:
        """The description a snapshot file holds, the file checked; Refused(400) if it is no good."""
        from ..vmm.snapshot import Snapshot

        if not os.path.isabs(path):
            raise Refused(f"path: must be an absolute path (got {path!r})", 400)
        try:
            snapshot = Snapshot(path)
        except PyhvError as e:
            raise Refused(str(e), 400) from None
        try:
            return snapshot.description
        finally:
            snapshot.close()

    def _spawn(
        self, domid: int, description: Description | None, paused: bool, extra: dict[str, Any],
        incoming: Any = None, key: bytes = b"",
    ) -> DomainRecord:
        """Start a domain process and wait for its word.  ``incoming``: an accepted
        migration connection, handed over; the domain comes from the stream."""
        run_dir = self.store.make_run_dir(domid)
        log_dir = self.store.make_log_dir(description.name) if description is not None else run_dir
        record = DomainRecord(domid, description, run_dir, log_dir)
        meta = {"id": domid, "description": model.to_plain(description) if description is not None else None,
                "paused": paused, "log_dir": log_dir, "created": record.created, **extra}
        meta["jail"] = self._jail(domid, description)
        try:
            taps = hostres.open_taps(description) if description is not None else []
        except Refused:
            self.store.remove_run_dir(run_dir)
            raise
        meta["nic_fds"] = [t.fd for t in taps]
        handed = [incoming.fileno()] if incoming is not None else []
        if handed:
            meta.update(incoming=True, incoming_fd=handed[0])
        try:
            self.store.write_meta(run_dir, meta)  # an OSError here (a full disk) is the caller's 503
        except BaseException:
            for t in taps:
                t.close()
            raise
        try:
            env = {"PYHV_MIGRATION_KEY": key.hex()} if key else {}
            record.popen, ready = processes.spawn(run_dir, log_dir, [*meta["nic_fds"], *handed], env)
        except OSError as e:
            self.store.remove_run_dir(run_dir)
            raise Refused(f"cannot start the domain process: {_os_problem(e)}", 500) from None
        finally:
            for t in taps:
                t.close()  # the domain holds them now; the TAPs go away with it
        record.pid = record.popen.pid
        record.start_time = processes.start_time(record.pid)
        self.store.write_pid(run_dir, record.pid, record.start_time)
        claimed = ""
        try:
            reply = processes.read_ready(ready.fileno(), START_TIMEOUT)
            if "claim" in reply:  # a migrated domain announces itself
                claimed, answer = self._claim(record, reply["claim"])
                ready.sendall(json.dumps(answer).encode() + b"\n")
                if answer["ok"]:
                    reply = processes.read_ready(ready.fileno(), START_TIMEOUT)
                else:  # let it tell the source why before it goes
                    reply = processes.read_ready(ready.fileno(), 10.0)
                    reply = answer
        finally:
            ready.close()
            if claimed:
                with self.lock:
                    self._starting.discard(claimed)
        if not reply.get("ok"):
            processes.kill(record)
            self.store.remove_run_dir(run_dir)
            raise Refused(str(reply.get("error", "the domain failed to start")), 400 if "error" in reply else 500)
        with self.lock:
            self.domains[domid] = record
        self._monitor.watch(record)
        self.log(f"domain {domid} ({record.name}) {'arrived' if incoming is not None else 'started'}, pid {record.pid}")
        return record

    def _jail(self, domid: int, description: Description | None) -> dict[str, int] | None:
        """How the domain is confined (pyhv/jail/), or None, said loudly in pyhvd's log."""
        name = description.name if description is not None else "arriving by migration"
        from ..jail.plan import JailError, plan

        why = ("pyhvd --no-jail" if self.jail_ids is None else
               "it arrives by live migration, which needs the host's network" if description is None else
               "jail = false in its description" if not description.jail else "")
        if not why and description is not None:
            try:
                plan(description, "/", 0)  # what cannot be confined yet says so (back ends pyhv starts)
            except JailError as e:
                why = str(e)
            if description.fs or any(x.vhost_user for x in description.disks):
                # a vhost-user back end's socket must accept the jail's uid, and the
                # seccomp policy has not been measured with vhost-user devices
                why = why or "vhost-user devices (virtio-fs, vhost-user disks) are not confined yet"
        if why:
            self.log(f"WARNING: domain {domid} ({name}) runs NOT confined: {why}")
            return None
        assert self.jail_ids is not None
        return {"first_id": self.jail_ids[0], "count": self.jail_ids[1]}

    def save_description(self, record: DomainRecord) -> None:
        """Persist a changed description (e.g. scheduling parameters) for the next pyhvd."""
        if record.description is not None:
            self.store.update_meta(record.run_dir, {"description": model.to_plain(record.description)})

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
        domid = 0
        try:
            with self.lock:
                domid = self._next_id()
            self._spawn(domid, None, False, {}, incoming=sock, key=key)
        except PyhvError as e:
            self.log(f"incoming migration from {peer[0]}: {e}")
        except OSError as e:
            if domid:
                self.store.remove_run_dir(self.store.run_dir_of(domid))
            self.log(f"incoming migration from {peer[0]}: {_os_problem(e)}")
        finally:
            sock.close()

    def _claim(self, record: DomainRecord, config: Any) -> tuple[str, dict[str, Any]]:
        """Admit a domain arriving by migration: (the name reserved, the answer)."""
        try:
            description = self.admit_plain(config)
        except Refused as e:
            return "", {"ok": False, "error": str(e)}
        try:
            log_dir = self.store.make_log_dir(description.name)
            meta = {"id": record.id, "description": model.to_plain(description), "log_dir": log_dir}
            self.store.update_meta(record.run_dir, meta)
        except OSError as e:
            return description.name, {"ok": False, "error": f"cannot admit domain {description.name}: {_os_problem(e)}"}
        record.description, record.log_dir = description, log_dir
        return description.name, {"ok": True, "meta": meta}

    # --- removal, exits and the crash policy ---------------------------------------------------

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
        if not processes.wait_gone(record, timeout):
            processes.kill(record)
        processes.wait_gone(record, 5.0)
        self._reap(record)

    def wait_ended(self, record: DomainRecord, timeout: float = 10.0) -> None:
        """Wait until a domain ending on its own (saved, then destroyed) has gone, and
        reap it, so the verb returns with it gone: a confined domain's supervisor ends
        a moment after its VMM (pyhv/jail/)."""
        if processes.wait_gone(record, timeout):
            self._reap(record)

    def _remove(self, record: DomainRecord, why: str) -> None:
        with self.lock:
            if self.domains.pop(record.id, None) is None:
                return
        self._monitor.forget(record)
        self.store.remove_run_dir(record.run_dir)
        self.log(f"domain {record.id} ({record.name}) {why}")

    def _reap(self, record: DomainRecord) -> None:
        """The VMM process ended: read why, apply the description's policy."""
        if record.popen is not None:
            record.popen.wait()
        with self.lock:
            if record.id not in self.domains or record.reaped:
                return
            record.reaped = True
        if record.destroying:
            self._remove(record, "destroyed")
            return
        status = self.store.read_status(record.run_dir)
        if status is not None:
            self._remove(record, f"ended: {status.get('reason')} {status.get('detail') or ''}".rstrip())
            return
        self._vmm_crashed(record, "the VMM process died")

    def _vmm_crashed(self, record: DomainRecord, why: str) -> None:
        """A VMM process died without saying why (killed, or a bug): ``on_crash``
        decides, as the domain process itself does for guest crashes."""
        assert record.description is not None
        on_crash = record.description.lifecycle.on_crash
        if on_crash == "preserve":
            record.crashed = why
            record.pid = 0
            self.store.write_crashed(record.run_dir, why)
            self.log(f"domain {record.id} ({record.name}) crashed: {why}; preserved (on_crash=preserve)")
            return
        self._remove(record, f"crashed: {why}; on_crash={on_crash}")
        if on_crash == "restart":
            try:
                new = self.start(self.admit(record.description))
                self.log(f"domain {record.name} restarted as {new.id} (on_crash=restart)")
            except PyhvError as e:
                self.log(f"domain {record.name}: restart after a crash failed: {e}")

    def start_monitor(self) -> None:
        self._monitor.start()

    # --- after a pyhvd restart ---------------------------------------------------------------

    def reattach(self) -> None:
        """Rebuild the table from the run directory."""
        for domid, run_dir in self.store.entries():
            meta = self.store.read_meta(run_dir)
            if domid is None or meta is None:
                self.log(f"ignoring {run_dir}: not a domain directory")
                continue
            try:
                record = DomainRecord(domid, model.from_plain(meta.get("description")), run_dir, meta["log_dir"])
            except (PyhvError, KeyError) as e:
                self.log(f"ignoring {run_dir}: its domain.json is not valid: {e}")
                continue
            record.created = meta.get("created", record.created)
            record.pid, start_time = self.store.read_pid(run_dir)
            with self.lock:
                self.domains[record.id] = record
            crashed = self.store.read_crashed(run_dir)
            if crashed is not None:
                record.crashed, record.pid = crashed, 0
                continue
            if record.pid and processes.start_time(record.pid) == start_time:
                record.start_time = start_time
                self._monitor.watch(record)
                self.log(f"domain {record.id} ({record.name}) re-attached, pid {record.pid}")
                continue
            self._reap(record)  # it ended while pyhvd was away

    def close(self) -> None:
        self._closed = True
        if self._migration_server is not None:
            self._migration_server.close()
        self._monitor.close()


def _file_stem(path: str) -> str:
    """A snapshot file's name without its directory and extension: a restored domain's default name."""
    return os.path.splitext(os.path.basename(path))[0]


def _os_problem(e: OSError) -> str:
    """One line for an OSError, also for one raised as OSError(errno) alone."""
    if e.strerror:
        text = e.strerror
    elif e.args and isinstance(e.args[0], int):
        text = os.strerror(e.args[0])
    else:
        text = str(e) or type(e).__name__
    return f"{text} ({e.filename})" if e.filename else text
