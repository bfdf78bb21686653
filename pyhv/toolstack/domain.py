"""``pyhv domain DIR``: a domain's VMM process under pyhvd.

pyhvd starts it detached (its own session, stdin closed) as::

    python -S -m pyhv domain DIR

DIR is the domain's run directory.  pyhvd writes ``DIR/domain.json`` (id,
the domain's description in its plain form, whether to start paused, where
the logs go, the TAP descriptors it hands over) before starting the process;
the process creates ``DIR/control.sock`` (requests, :mod:`pyhv.vmm.control`)
and ``DIR/console.sock``, writes one JSON line to the descriptor named by
``PYHV_READY_FD`` once the guest runs (or failed to start), and
``DIR/status.json`` (how it ended) just before it exits.  So the process
needs nothing from pyhvd after it has started: it keeps running while pyhvd
stops and starts again.

The domain itself is run by :class:`pyhv.vmm.runtime.Runtime`, the same
lifecycle as ``pyhv run``; this module is only the way in from pyhvd.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from .._sys import files
from ..errors import PyhvError
from ..model import Description, from_plain
from ..vcpu import StopKind
from ..vmm import control
from ..vmm.runtime import Ending, Runtime

#: how a domain process ends: 0 when the domain ended as asked or as the guest chose
CLEAN_ENDINGS = {k.value for k in (
    StopKind.DESTROY, StopKind.SHUTDOWN, StopKind.POWEROFF, StopKind.RESET, StopKind.SAVED, StopKind.MIGRATED,
    StopKind.DEBUG_EXIT,
)}


def _runtime(run_dir: str, meta: dict[str, Any], description: Description, ready_fd: int) -> Runtime:
    from ..backends.console import LogConsole

    console = LogConsole(os.path.join(meta["log_dir"], "console.log"), os.path.join(run_dir, "console.sock"))
    fds = meta.get("nic_fds", [])
    return Runtime(
        description, console, taps=dict(enumerate(fds)), paused=bool(meta.get("paused", False)), domid=meta["id"],
        on_ready=lambda reply: _tell(ready_fd, reply),
    )


def _tell(fd: int, message: dict[str, Any]) -> None:
    """Send the one readiness line to pyhvd."""
    if fd >= 0:
        try:
            control.send_message(fd, message)
        except OSError:
            pass
        os.close(fd)


def _write_status(run_dir: str, ending: Ending) -> None:
    """``status.json``, replaced whole and never through a symbolic link; a failure is one line."""
    if _status_fd[0] >= 0:  # confined: the supervisor writes the file
        try:
            os.write(_status_fd[0], json.dumps(ending._asdict()).encode())
        except OSError as e:
            print(f"pyhv: cannot send the domain's status: {e.strerror}", file=sys.stderr)
        return
    from .store import write_json

    try:
        write_json(os.path.join(run_dir, "status.json"), dict(ending._asdict(), time=time.time()))
    except OSError as e:
        print(f"pyhv: cannot write {os.path.join(run_dir, 'status.json')}: {e.strerror or e}", file=sys.stderr)


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
        meta = json.loads(files.read_file(os.path.join(run_dir, "domain.json"), 16 << 20))
        if not isinstance(meta, dict):
            raise ValueError("domain.json is not an object")
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
        runtime = _runtime(run_dir, meta, from_plain(meta["description"]), ready_fd)
        control_sock = None
        if meta.get("jail"):
            status, control_sock = _confine(run_dir, meta, runtime, snapshot, ready_fd)
            if status is not None:  # the supervisor: the confined child ran the domain
                return status
    except (OSError, ValueError, KeyError, TypeError, PyhvError) as e:
        print(f"pyhv: cannot start the domain in {run_dir}: {e}", file=sys.stderr, flush=True)
        _tell(ready_fd, {"ok": False, "error": f"cannot start the domain: {e}"})  # pyhvd may kill us now
        return 2
    return _serve(runtime, run_dir, lambda: runtime.run(snapshot=snapshot), control_sock)


#: in a confined domain: where status.json's content goes (the supervisor writes the file)
_status_fd = [-1]


def _confine(run_dir: str, meta: dict[str, Any], runtime: Runtime, snapshot: Any, ready_fd: int) -> tuple[int | None, Any]:
    """Confine the domain (pyhv/jail/enter.py) with what it needs from the host
    open: (None, the control socket) in the confined child; (its exit status,
    None) in the supervisor, which writes ``status.json`` from what the child
    sent on a pipe (it cannot see the run directory)."""
    from ..backends.unixsock import listen_unix
    from ..jail import enter, plan

    jail = meta["jail"]
    domains_dir = os.path.dirname(os.path.abspath(run_dir))  # RUN_DIR/domains
    jail_id = f"domain-{meta['id']}"
    root = os.path.join(enter.jail_dir(os.path.dirname(domains_dir), jail_id), "root")
    p = plan.plan(runtime.description, root, meta["id"] % jail["count"], jail["first_id"], jail["count"])
    hand = enter.hand_over(p)
    control_path = os.path.join(run_dir, "control.sock")
    control_sock = listen_unix(control_path, 64)
    status_r, status_w = os.pipe()
    keep = runtime.console.fds() + ([snapshot.fd] if snapshot is not None else [])
    hand += [*runtime.taps.values(), ready_fd, control_sock.fileno(), status_w]
    cleanup = [*p.sockets, control_path, os.path.join(run_dir, "console.sock")]
    status = enter.enter(p, jail_id, keep, hand, cleanup)
    if status is None:  # status_r was closed with every descriptor the jail keeps not
        _status_fd[0] = status_w
        runtime.confined = True
        return None, control_sock
    control_sock.detach()  # closed with the descriptors handed to the child
    with open(status_r, "rb") as f:
        data = f.read(1 << 16)
    if data:
        try:
            _write_status(run_dir, Ending(**json.loads(data)))
        except (ValueError, TypeError):
            print("pyhv: the confined domain sent a garbled status", file=sys.stderr)
    return status, None


def _serve(runtime: Runtime, run_dir: str, body: Any, control_sock: Any = None) -> int:
    """Run ``body`` (the lifecycle loop) with the control socket up (``control_sock``:
    bound before the domain was confined) and signals mapped to destroy; write
    status.json at the end."""

    def on_signal(signum: int, frame: object) -> None:
        runtime.stop(StopKind.DESTROY, 0, f"destroyed by {signal.Signals(signum).name}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    server = control.Server(os.path.join(run_dir, "control.sock"), runtime.handle, sock=control_sock)
    try:
        ending = body()
    finally:
        server.close()
        runtime.console.close()
    _write_status(run_dir, ending)
    unknown = ending.reason == StopKind.MIGRATED.value and ending.status != 0  # the hand-over's outcome is unknown
    return 0 if ending.reason in CLEAN_ENDINGS and not unknown else 1


def _main_incoming(run_dir: str, meta: dict[str, Any], ready_fd: int) -> int:
    """A domain arriving by live migration on the connection pyhvd accepted.

    Once the source has authenticated and announced the domain, pyhvd is asked
    (over the readiness channel) to admit it: it checks the description and
    the name and answers with the domain's id and log directory.  Only then is
    anything built; a refusal makes the source run on."""
    import socket

    from ..model import to_plain
    from ..vmm import migrate

    sock = socket.socket(fileno=meta["incoming_fd"])
    key = bytes.fromhex(os.environ.pop("PYHV_MIGRATION_KEY", ""))
    made: list[Runtime] = []

    def claim(description: Description) -> Any:
        if not description.name:
            raise migrate.MigrationError("the source sent a domain without a name (not a pyhvd domain)")
        control.send_message(ready_fd, {"claim": to_plain(description)})
        answer = control.read_message(ready_fd, 30.0)
        if isinstance(answer, str) or not answer.get("ok"):
            why = answer if isinstance(answer, str) else answer.get("error", "no answer")
            raise migrate.MigrationError(f"refused by the destination: {why}")
        meta.update(answer["meta"])
        made.append(_runtime(run_dir, meta, description, ready_fd))
        # the TAPs are opened here by name; joining bridges is pyhvd's job (pyroute2)
        unbridged = tuple(n._replace(bridge="") for n in description.nics)
        return made[0].console, description._replace(nics=unbridged)

    try:
        machine = migrate.receive_connection(sock, key, claim=claim)
    except PyhvError as e:
        print(f"pyhv: incoming migration failed: {e}", file=sys.stderr, flush=True)
        _tell(ready_fd, {"ok": False, "error": str(e)})  # pyhvd may kill us now
        return 1
    if machine is None:
        _tell(ready_fd, {"ok": False, "error": "the peer did not authenticate"})
        return 1
    runtime = made[0]
    return _serve(runtime, run_dir, lambda: runtime.run(first=machine))
