"""pyhvd's REST API: JSON over HTTP/1.1 on a unix socket.

Routes are listed once, in :data:`ROUTES`; the OpenAPI document
(:mod:`pyhv.toolstack.openapi`, served at ``/openapi.json``) describes the same
table.  ``DOM`` is a domain's id or name.  Every error is a JSON object
``{"error": "one line"}`` with 400 (bad request: nothing changed), 403 (a
snapshot path outside pyhvd's snapshot directory), 404 (no such domain or
route), 409 (refused in the domain's state), 413 (a body over 1 MiB), 501
(not supported yet), 503 (pyhvd cannot serve it now: too many connections, or
out of a resource such as disk space), 504 (the domain did not answer in
time) or 500.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..errors import PyhvError
from ..model.files import MAX_DEPTH, MAX_SIZE, too_deep
from .registry import DomainRecord, Refused, Registry
from .sched import Scheduler

MAX_BODY = MAX_SIZE
#: connections served at once; more are answered 503 and closed at once
MAX_CONNECTIONS = 64
#: how long ``list`` waits for each domain's answer
LIST_TIMEOUT = 2.0


class Api:
    """The operations behind the routes; each returns (status, body)."""

    def __init__(
        self, registry: Registry, scheduler: Scheduler | None = None, migration_key: bytes = b"",
        snapshot_dir: str | None = None,
    ) -> None:
        self.registry = registry
        #: save and restore paths must resolve to a file under this directory ("/": anywhere)
        self.snapshot_dir = os.path.realpath(snapshot_dir or os.path.join(registry.state_dir, "snapshots"))
        self.migration_key = migration_key
        self.scheduler = scheduler or Scheduler(registry, None, lambda message: None)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fanout")

    # --- helpers -----------------------------------------------------------------

    def _ask_all(self, op: str, records: list[DomainRecord]) -> list[dict[str, Any] | None]:
        """Ask every domain at once; None for those that did not answer in time."""

        def ask(record: DomainRecord) -> dict[str, Any] | None:
            try:
                return record.call(op, timeout=LIST_TIMEOUT)
            except Refused:
                return None

        return list(self.pool.map(ask, records))

    # --- domains -------------------------------------------------------------------

    def list_domains(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        records = self.registry.all()
        infos = self._ask_all("info", records)
        return 200, [r.summary(i) for r, i in zip(records, infos, strict=True)]

    def create_domain(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"config"}, optional={"paused"})
        if not isinstance(body["config"], dict):
            raise Refused("config: must be an object (the domain configuration)", 400)
        paused = body.get("paused", False)
        if not isinstance(paused, bool):
            raise Refused("paused: must be true or false", 400)
        record = self.registry.create(body["config"], paused)
        return 201, {"id": record.id, "name": record.name, "pid": record.pid}

    def get_domain(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        info = record.call("info")
        return 200, {**record.summary(info), "vcpu": info["vcpu"], "balloon": info["balloon"],
                     "restarts": info["restarts"], "config": _plain(record),
                     "console_socket": record.console_path, "control_socket": record.control_path}

    def destroy_domain(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        self.registry.destroy(record)
        return 200, {}

    def simple_op(self, op: str) -> Callable[..., tuple[int, Any]]:
        def handler(record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
            _fields(body)
            record.call(op)
            return 200, {}

        return handler

    def set_memory(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"target"})
        record.call("mem-set", bytes=_int(body, "target"))
        return 200, {}

    def set_maxmem(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"maxmem"})
        record.call("mem-max", bytes=_int(body, "maxmem"))
        return 200, {}

    def list_vcpus(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        return 200, record.call("info")["vcpu"]

    def pin_vcpu(self, record: DomainRecord, vcpu: str, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"cpus"})
        cpus = body["cpus"]
        if not isinstance(cpus, list) or not cpus or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096 for c in cpus
        ):
            raise Refused("cpus: must be a non-empty list of host CPU numbers", 400)
        record.call("vcpu-pin", vcpu="all" if vcpu == "all" else int(vcpu), cpus=cpus)
        return 200, {}

    def console(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        limit = query.get("bytes", str(64 << 10))
        if not limit.isdigit() or not 0 < int(limit) <= 8 << 20:
            raise Refused("bytes: must be a number from 1 to 8388608", 400)
        try:
            with open(record.console_log, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - int(limit)))
                data = f.read()
        except FileNotFoundError:
            data = b""
        return 200, {"log": data.decode("utf-8", "replace")}

    def domain_metrics(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        return 200, record.call("metrics")

    def devices(self, kind: str) -> Callable[..., tuple[int, Any]]:
        def handler(record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
            key = "disks" if kind == "disks" else "nics"
            return 200, _plain(record)[key]

        return handler

    def hotplug(self, record: DomainRecord, *args: Any) -> tuple[int, Any]:
        raise Refused("not supported yet: devices are fixed when the domain is created (no hotplug)", 501)

    def start_gdb(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        """A GDB stub in the domain: on a unix socket in its run directory, or on
        ``listen`` = tcp:HOST:PORT.  pyhvd names the socket, never the caller."""
        _fields(body, optional={"listen"})
        listen = body.get("listen", "unix:" + os.path.join(record.run_dir, "gdb.sock"))
        if "listen" in body and not _tcp_address(listen):
            raise Refused("listen: must be tcp:HOST:PORT (without it the stub listens on a unix "
                          "socket in the domain's run directory)", 400)
        current = record.call("gdb", query=True).get("address")
        if current:  # asked first: listening anew would take the name from the stub that has it
            raise Refused(f"a GDB stub already listens on {current}", 409)
        sock = _gdb_listener(listen)  # pyhvd listens, the domain serves: a confined one can do no more
        try:
            return 200, record.call("gdb", fds=(sock.fileno(),), listen=listen)
        finally:
            sock.close()

    def stop_gdb(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        reply = record.call("gdb", stop=True)
        _remove_socket(os.path.join(record.run_dir, "gdb.sock"))
        return 200, reply

    def metrics_text(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        from .metrics import prometheus

        records = self.registry.all()
        return 200, prometheus(records, self._ask_all("metrics", records), self._ask_all("info", records),
                               self.scheduler.vcpu_metrics())

    # --- save, restore, migrate ------------------------------------------------------------

    def _snapshot_path(self, path: Any) -> str:
        """``path`` resolved (symbolic links and ``..``), refused unless it lies in
        the snapshot directory: pyhvd runs as root and must not write or read
        files for a caller where the caller could not."""
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise Refused("path: must be an absolute file name", 400)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.snapshot_dir]) != self.snapshot_dir:
            raise Refused(f"path: {path} is outside the snapshot directory {self.snapshot_dir} "
                          "(pyhvd --snapshot-dir)", 403)
        return real

    def save_domain(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"path"}, optional={"then", "force"})
        then, force = body.get("then", "destroy"), body.get("force", False)
        if then not in ("destroy", "continue", "pause"):
            raise Refused("then: must be destroy, continue or pause", 400)
        if not isinstance(force, bool):
            raise Refused("force: must be true or false", 400)
        path = self._snapshot_path(body["path"])
        reply = save_through(record, path, then, force)
        if then == "destroy":
            self.registry.wait_ended(record)
        return 200, reply

    def restore_domain(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"path"}, optional={"paused", "name", "verify"})
        path, paused, name = body["path"], body.get("paused", False), body.get("name", "")
        verify = body.get("verify", False)
        if not isinstance(path, str) or not isinstance(name, str) or not isinstance(paused, bool) \
                or not isinstance(verify, bool):
            raise Refused("path and name must be strings, paused and verify true or false", 400)
        record = self.registry.restore(self._snapshot_path(path), paused, name, verify)
        return 201, {"id": record.id, "name": record.name, "pid": record.pid}

    def clone_domains(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"path", "count"}, optional={"paused", "name", "verify"})
        path, count, paused, name = body["path"], body["count"], body.get("paused", False), body.get("name", "")
        verify = body.get("verify", False)
        if not isinstance(path, str) or not isinstance(name, str) or not isinstance(paused, bool) \
                or not isinstance(verify, bool) or not isinstance(count, int) or isinstance(count, bool):
            raise Refused("path and name must be strings, count an integer, paused and verify true or false", 400)
        records = self.registry.clone(self._snapshot_path(path), count, name, paused, verify)
        return 201, {"domains": [{"id": r.id, "name": r.name, "pid": r.pid} for r in records]}

    def migrate_domain(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"host", "port"})
        host, port = body["host"], body["port"]
        if not isinstance(host, str) or not host or not isinstance(port, int) or isinstance(port, bool) \
                or not 0 < port < 65536:
            raise Refused("host must be a name or address, port a number from 1 to 65535", 400)
        if not self.migration_key:
            raise Refused("this pyhvd has no migration key (start it with --migration-key FILE)", 409)
        # pyhvd connects and passes the connection: a confined domain has no network
        try:
            conn = socket.create_connection((host, port), timeout=60)
        except OSError as e:
            raise Refused(f"migration to {host}:{port} failed, the machine runs on here: cannot connect: "
                          f"{e.strerror or e}", 409) from None
        with conn:
            reply = record.call("migrate", timeout=900, fds=(conn.fileno(),), host=host, port=port,
                                key=self.migration_key.hex())
        self.registry.wait_ended(record)  # it runs there now; here it ends
        return 200, reply

    # --- scheduling ---------------------------------------------------------------------

    def get_sched(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        return 200, self.scheduler.view()

    def put_sched(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, required={"ctx_allow_ms"})
        self.scheduler.set_ctx_allow(body["ctx_allow_ms"])
        return 200, {}

    def get_domain_sched(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        return 200, self.scheduler.domain_view(record, self.scheduler.vcpu_metrics())

    def put_domain_sched(self, record: DomainRecord, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        _fields(body, optional={"weight", "warp_ms", "warp_limit_ms", "unwarp_ms"})
        self.scheduler.set_domain(record, body)
        return 200, {}

    def openapi(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        from .openapi import document

        return 200, document()

    def version(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        return 200, {"version": __version__, "domains": len(self.registry.all())}


def _fields(body: Any, required: set[str] = frozenset(), optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise Refused("the request body must be a JSON object", 400)
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise Refused(f"{unknown[0]}: unknown field", 400)
    missing = sorted(required - set(body))
    if missing:
        raise Refused(f"{missing[0]}: required", 400)


def _int(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 52:
        raise Refused(f"{key}: must be a number of bytes", 400)
    return value


def _gdb_listener(spec: str) -> Any:
    """A socket listening on a GDB stub's address; Refused in one line if it cannot."""
    from ..debug.gdbstub import listen

    try:
        return listen(spec)
    except OSError as e:
        raise Refused(f"gdb: cannot listen on {spec}: {e.strerror or e}", 409) from None


def _remove_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket (the stub's, which a confined domain cannot remove)."""
    import stat

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _tcp_address(spec: Any) -> bool:
    """Whether ``spec`` is a GDB stub's tcp:HOST:PORT (no flags)."""
    from ..debug.gdbstub import parse_address
    from ..errors import UsageError

    if not isinstance(spec, str):
        return False
    try:
        family, _, wait = parse_address(spec)
    except UsageError:
        return False
    return family == "tcp" and not wait


def routes(api: Api) -> list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]]:
    """(method, path pattern, handler); a ``{dom}`` group is resolved to its record."""
    table: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
        ("GET", "/openapi.json", api.openapi),
        ("GET", "/version", api.version),
        ("GET", "/metrics", api.metrics_text),
        ("GET", "/domains", api.list_domains),
        ("POST", "/domains", api.create_domain),
        ("POST", "/restore", api.restore_domain),
        ("POST", "/clone", api.clone_domains),
        ("GET", "/domains/{dom}", api.get_domain),
        ("DELETE", "/domains/{dom}", api.destroy_domain),
        ("POST", "/domains/{dom}/pause", api.simple_op("pause")),
        ("POST", "/domains/{dom}/unpause", api.simple_op("unpause")),
        ("POST", "/domains/{dom}/shutdown", api.simple_op("shutdown")),
        ("POST", "/domains/{dom}/reboot", api.simple_op("reboot")),
        ("POST", "/domains/{dom}/save", api.save_domain),
        ("POST", "/domains/{dom}/migrate", api.migrate_domain),
        ("PUT", "/domains/{dom}/memory", api.set_memory),
        ("PUT", "/domains/{dom}/maxmem", api.set_maxmem),
        ("GET", "/domains/{dom}/vcpus", api.list_vcpus),
        ("PUT", "/domains/{dom}/vcpus/{vcpu}/affinity", api.pin_vcpu),
        ("GET", "/domains/{dom}/console", api.console),
        ("GET", "/domains/{dom}/metrics", api.domain_metrics),
        ("POST", "/domains/{dom}/gdb", api.start_gdb),
        ("DELETE", "/domains/{dom}/gdb", api.stop_gdb),
        ("GET", "/sched", api.get_sched),
        ("PUT", "/sched", api.put_sched),
        ("GET", "/domains/{dom}/sched", api.get_domain_sched),
        ("PUT", "/domains/{dom}/sched", api.put_domain_sched),
        ("GET", "/domains/{dom}/disks", api.devices("disks")),
        ("POST", "/domains/{dom}/disks", api.hotplug),
        ("DELETE", "/domains/{dom}/disks/{index}", api.hotplug),
        ("GET", "/domains/{dom}/nics", api.devices("nics")),
        ("POST", "/domains/{dom}/nics", api.hotplug),
        ("DELETE", "/domains/{dom}/nics/{index}", api.hotplug),
    ]
    out = []
    for method, path, handler in table:
        pattern = re.escape(path).replace(r"\{dom\}", "(?P<dom>[^/]+)")
        pattern = pattern.replace(r"\{vcpu\}", "(?P<vcpu>all|[0-9]{1,4})").replace(r"\{index\}", "(?P<index>[0-9]{1,4})")
        out.append((method, re.compile(f"^{pattern}$"), handler))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops sending mid-request loses its connection
    server_version = f"pyhvd/{__version__}"
    server: Server

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pyhvd logs what changes, not every request

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body()
            status, payload = self._route(url.path, query, body)
        except Refused as e:
            status, payload = e.http_status, {"error": str(e)}
        except PyhvError as e:
            status, payload = 409, {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - a bug fails the request, not pyhvd
            self.server.log(f"internal error on {self.command} {self.path}: {e!r}")
            status, payload = 500, {"error": f"internal error: {e!r}"}
        self._send(status, payload)

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Refused("chunked request bodies are not accepted; send Content-Length", 400)
        if length is None:
            return None
        if not length.isdigit():
            self.close_connection = True
            raise Refused("Content-Length must be a number of bytes", 400)
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise Refused(f"the request body is larger than {MAX_BODY} bytes", 413)
        raw = self.rfile.read(int(length))
        if not raw:
            return None
        try:
            body = json.loads(raw)
            deep = too_deep(body)
        except (ValueError, UnicodeDecodeError):
            raise Refused("the request body is not valid JSON", 400) from None
        except RecursionError:
            body, deep = None, True
        if deep:
            raise Refused(f"the request body nests arrays or objects more than {MAX_DEPTH} deep", 400)
        return body

    def _route(self, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        allowed = []
        for method, pattern, handler in self.server.routes:
            m = pattern.match(path)
            if m is None:
                continue
            if method != self.command:
                allowed.append(method)
                continue
            groups = m.groupdict()
            if "dom" not in groups:
                return handler(body, query)
            record = self.server.api.registry.find(groups.pop("dom"))
            return handler(record, *groups.values(), body, query)
        if allowed:
            raise Refused(f"{self.command} is not allowed on {path} (allowed: {', '.join(allowed)})", 405)
        raise Refused(f"no such resource: {path}", 404)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One thread per connection, at most ``max_connections`` of them: a client
    that opens thousands of connections gets 503s, not thousands of threads,
    and an idle connection is dropped after ``Handler.timeout`` seconds."""

    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128  # many clients at once (concurrent creates) must not see EAGAIN

    def __init__(self, path: str, api: Api, log: Callable[[str], None], max_connections: int = MAX_CONNECTIONS) -> None:
        self.api = api
        self.routes = routes(api)
        self.log = log
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(path, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 without a thread and without waiting for the client."""
        body = json.dumps({"error": f"pyhvd is busy: {self.max_connections} connections open already; "
                                    "try again"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            try:
                request.recv(MAX_BODY)  # what the client sent already: closing on unread data resets it
            except BlockingIOError:
                pass
            request.send(head + body)  # a few hundred bytes: fits in an empty socket buffer
        except OSError:
            pass
        self.shutdown_request(request)

def _plain(record: DomainRecord) -> dict[str, Any]:
    """A domain's description as the API shows it (the plain form it was created with)."""
    from ..model import to_plain

    assert record.description is not None
    return to_plain(record.description)


def save_through(record: DomainRecord, path: str, then: str, force: bool) -> dict[str, Any]:
    """Save a domain to ``path``: pyhvd makes the temporary file beside it and passes
    its descriptor with the request (a confined domain sees no snapshot
    directory), and names it ``path`` once the domain has written it, with the
    same rules as a save of its own: an existing ``path`` only with ``force``
    and only if it is a pyhv snapshot."""
    from ..vmm import snapshot

    try:
        tmp, fd = snapshot.open_temporary(path, force)
    except PyhvError as e:
        raise Refused(str(e), 409) from None
    try:
        try:
            reply = record.call("save", timeout=600, fds=(fd,), path=path, then=then, force=force)
        finally:
            os.close(fd)
        snapshot.put_in_place(tmp, path, force)
    except PyhvError as e:
        snapshot.discard_temporary(tmp)
        if isinstance(e, Refused):
            raise
        raise Refused(str(e), 409) from None
    except BaseException:
        snapshot.discard_temporary(tmp)
        raise
    return reply
