"""``pyhvd``: the control domain.

    pyhvd [--run-dir /run/pyhv] [--state-dir /var/lib/pyhv] [--socket PATH] [--cpu-pool CPUS]
          [--migration-key FILE] [--migration-listen HOST:PORT] [--snapshot-dir DIR]
          [--jail-uids FIRST:COUNT] [--no-jail]

Listens on ``RUN_DIR/pyhvd.sock`` (0600) for the REST API (:mod:`.api`),
re-attaches to the domains a previous pyhvd left running, and runs until
SIGTERM or SIGINT.  Stopping pyhvd leaves every domain running.  With
``--cpu-pool CPUS`` (e.g. ``1`` or ``2-7``) the BVT dispatcher schedules every
domain's vCPUs on those host CPUs (docs/SCHEDULING.md); stopping pyhvd hands
them back to the host's scheduler.  ``--migration-key FILE`` (16 bytes or
more, the same on both hosts) lets domains migrate out, and with
``--migration-listen HOST:PORT`` in: each authenticated stream becomes a new
domain process.  The API saves snapshots to and restores them from files in
``--snapshot-dir`` only (default ``STATE_DIR/snapshots``, created 0700); a
path that resolves elsewhere is refused with 403.  ``--snapshot-dir /`` lifts
the restriction.

Every domain's VMM runs confined (README: Confinement): its own namespaces
and root under ``RUN_DIR/jail/domain-ID``, uid and gid FIRST + (ID mod COUNT)
(``--jail-uids``, default 100000:65536), no capabilities, a seccomp filter.
A domain with ``jail = false`` in its description, one arriving by live
migration, and every domain under ``--no-jail`` run unconfined, which pyhvd
logs as a warning.

pyhvd holds ``pyhvd.lock`` (flock) in its run and state directories while it
runs; a second pyhvd on either says which pid holds it and exits 1.

Threads: the main thread serves the socket (one thread per connection, from
socketserver, at most 64 at once: more get 503; idle ones close after 30 s);
the registry's monitor thread watches the domain processes.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from ..errors import PyhvError, UsageError

DEFAULT_RUN_DIR = "/run/pyhv"
DEFAULT_STATE_DIR = "/var/lib/pyhv"


def default_socket() -> str:
    return os.environ.get("PYHV_SOCKET") or os.path.join(os.environ.get("PYHV_RUN_DIR", DEFAULT_RUN_DIR), "pyhvd.sock")


def _log(message: str) -> None:
    print(f"pyhvd: {time.strftime('%Y-%m-%d %H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _parse(argv: list[str]) -> dict[str, str]:
    opts = {
        "--run-dir": os.environ.get("PYHV_RUN_DIR", DEFAULT_RUN_DIR),
        "--state-dir": os.environ.get("PYHV_STATE_DIR", DEFAULT_STATE_DIR),
        "--socket": "",
        "--cpu-pool": os.environ.get("PYHV_CPU_POOL", ""),
        "--migration-key": "",
        "--migration-listen": "",
        "--snapshot-dir": "",
        "--jail-uids": "",
        "--no-jail": "",
    }
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(print(__doc__) or 0)
        name, eq, value = arg.partition("=")
        if name not in opts:
            raise UsageError(f"unknown option {name!r} (options: {', '.join(opts)})")
        if name == "--no-jail":  # the one flag
            if eq:
                raise UsageError("--no-jail takes no value")
            opts[name] = "yes"
            continue
        if not eq:
            if not args:
                raise UsageError(f"{name} needs a value")
            value = args.pop(0)
        opts[name] = value
    opts["--socket"] = opts["--socket"] or os.path.join(opts["--run-dir"], "pyhvd.sock")
    opts["--snapshot-dir"] = opts["--snapshot-dir"] or os.path.join(opts["--state-dir"], "snapshots")
    if not os.path.isabs(opts["--snapshot-dir"]):
        raise UsageError(f"--snapshot-dir {opts['--snapshot-dir']!r}: must be an absolute path")
    return opts


def _jail_ids(text: str) -> tuple[int, int]:
    """``--jail-uids FIRST:COUNT``: the uid/gid range of confined domains."""
    from ..jail.plan import DEFAULT_COUNT, DEFAULT_FIRST_ID

    if not text:
        return DEFAULT_FIRST_ID, DEFAULT_COUNT
    first, sep, count = text.partition(":")
    if not sep or not first.isdigit() or not count.isdigit() or int(first) <= 0 or int(count) <= 0 \
            or int(first) + int(count) > 1 << 32:
        raise UsageError(f"--jail-uids {text!r}: expected FIRST:COUNT, positive, below 2^32")
    return int(first), int(count)


def _claim_socket(path: str) -> None:
    """Refuse to start twice; clear a socket a dead pyhvd left behind."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise PyhvError(f"another pyhvd is already serving {path}")


def _lock_dirs(dirs: list[str]) -> list[int]:
    """Hold ``pyhvd.lock`` in each directory (flock, exclusive) for as long as
    this pyhvd runs: two pyhvd on one run or state directory would each think
    the domains there are theirs.  The lock file names the holder's pid."""
    from .._sys.lock import flock_exclusive

    fds: list[int] = []
    try:
        for d in dict.fromkeys(os.path.realpath(d) for d in dirs):
            os.makedirs(d, mode=0o700, exist_ok=True)
            path = os.path.join(d, "pyhvd.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            if not flock_exclusive(fd):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise PyhvError(f"{d} is in use by another pyhvd (pid {holder}, holding {path})")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def serve(
    run_dir: str, state_dir: str, sock_path: str, pool: list[int] | None = None, key: bytes = b"",
    listen: tuple[str, int] | None = None, snapshot_dir: str = "", jail_ids: tuple[int, int] | None = None,
) -> int:
    from .api import Api, Server
    from .registry import Registry
    from .sched import Scheduler

    locks = _lock_dirs([run_dir, state_dir])  # held until pyhvd exits
    registry = Registry(run_dir, state_dir, log=_log)
    registry.jail_ids = jail_ids
    if jail_ids is None:
        _log("WARNING: --no-jail: domains run NOT confined (root, the host's namespaces, no seccomp)")
    snapshot_dir = snapshot_dir or os.path.join(state_dir, "snapshots")
    os.makedirs(snapshot_dir, mode=0o700, exist_ok=True)
    scheduler = Scheduler(registry, pool, _log)
    _claim_socket(sock_path)
    old_umask = os.umask(0o177)
    try:
        server = Server(sock_path, Api(registry, scheduler, key, snapshot_dir), _log)
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    registry.reattach()
    registry.start_monitor()
    scheduler.start()
    if listen is not None:
        port = registry.listen_for_migrations(listen[0], listen[1], key)
        _log(f"accepting migrations on {listen[0]}:{port}")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    _log(f"serving {sock_path} ({len(registry.all())} domains running)")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        scheduler.close()
        registry.close()
        for fd in locks:
            os.close(fd)
    _log("stopped; domains keep running")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        opts = _parse(sys.argv[1:] if argv is None else argv)
        if os.geteuid() != 0 and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise PyhvError("cannot use /dev/kvm: run pyhvd as root or as a member of the kvm group")
        pool = None
        if opts["--cpu-pool"]:
            from .xl import parse_cpus

            pool = parse_cpus(opts["--cpu-pool"])
        key, listen = b"", None
        if opts["--migration-key"]:
            from ..cmdline import read_migration_key

            key = read_migration_key(opts["--migration-key"])
        if opts["--migration-listen"]:
            from ..cmdline import parse_host_port

            if not key:
                raise UsageError("--migration-listen needs --migration-key FILE: migrations are authenticated")
            listen = parse_host_port(opts["--migration-listen"], "--migration-listen")
        jail_ids = None if opts["--no-jail"] else _jail_ids(opts["--jail-uids"])
        return serve(opts["--run-dir"], opts["--state-dir"], opts["--socket"], pool, key, listen,
                     opts["--snapshot-dir"], jail_ids)
    except PyhvError as e:
        print(f"pyhvd: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:
        print(f"pyhvd: {e.strerror}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
