"""pyhvd's side of BVT scheduling: one Dispatcher over every domain's vCPUs.

With ``pyhvd --cpu-pool CPUS`` the dispatcher (:mod:`pyhv.sched.dispatcher`)
runs in pyhvd's ``sched`` thread and owns the vCPU threads of every domain on
those CPUs; without it, parameters are still kept and shown, and apply once a
pool is given.  Domains are known to the dispatcher by id.  The ``sched-sync``
thread adds domains that are running but not scheduled (new ones, re-attached
ones, and rebooted ones, whose vCPU threads are new) twice a second; the
dispatcher drops threads that ended by itself.

Parameters come from the domain configuration's ``[sched]`` table (weight,
warp_ms, warp_limit_ms, unwarp_ms) and change at run time through the API.
The context-switch allowance is global and kept in STATE_DIR/sched.json.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from ..errors import PyhvError
from ..model import DescriptionError, Sched, sched_from_plain
from .registry import DomainRecord, Refused, Registry
from .store import read_json, write_json

MS = 1_000_000
DEFAULT_CTX_ALLOW_MS = 5


def bvt_params(sched: Sched) -> Any:
    from ..sched.bvt import BvtParams

    return BvtParams(weight=sched.weight, warp_ns=sched.warp_ms * MS, warp_limit_ns=sched.warp_limit_ms * MS,
                     unwarp_ns=sched.unwarp_ms * MS)


class Scheduler:
    def __init__(self, registry: Registry, pool: list[int] | None, log: Callable[[str], None]) -> None:
        self.registry = registry
        self.pool = pool
        self.log = log
        self.path = os.path.join(registry.state_dir, "sched.json")
        self.ctx_allow_ms = self._load_ctx_allow()
        self.dispatcher: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if pool is not None:
            from ..sched.dispatcher import Dispatcher

            self.dispatcher = Dispatcher(pool, ctx_allow_ns=self.ctx_allow_ms * MS)

    def _load_ctx_allow(self) -> int:
        value = (read_json(self.path) or {}).get("ctx_allow_ms", DEFAULT_CTX_ALLOW_MS)
        return value if isinstance(value, int) and 1 <= value <= 10_000 else DEFAULT_CTX_ALLOW_MS

    # --- threads ---------------------------------------------------------------------

    def start(self) -> None:
        if self.dispatcher is None:
            return
        run = threading.Thread(target=self.dispatcher.run, args=(self._stop,), name="sched", daemon=True)
        sync = threading.Thread(target=self._sync_loop, name="sched-sync", daemon=True)
        self._threads = [run, sync]
        for t in self._threads:
            t.start()
        self.log(f"BVT dispatcher on CPUs {self.pool}, context-switch allowance {self.ctx_allow_ms} ms")

    def _sync_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 - keep scheduling; say what went wrong
                self.log(f"sched: {e!r}")

    def sync(self) -> None:
        """Schedule every running domain the dispatcher does not have; forget gone ones."""
        scheduled = set(self.dispatcher.domains())
        records = {str(r.id): r for r in self.registry.all() if r.crashed is None and r.pid}
        for key in scheduled - set(records):
            self.dispatcher.remove_domain(key)
        for key in set(records) - scheduled:
            record = records[key]
            try:
                info = record.call("info", timeout=2.0)
            except Refused:
                continue  # starting, stopping or stuck: next round
            tids = [v["tid"] for v in info["vcpu"]]
            if not tids or not all(tids):
                continue
            if record.description is None:
                continue
            try:  # info names the VMM and its threads as the host knows them (a confined VMM is a child)
                self.dispatcher.add_domain(key, info["pid"], tids, bvt_params(record.description.sched))
            except PyhvError as e:
                self.log(f"sched: cannot schedule domain {record.name}: {e}")

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        if self.dispatcher is not None:
            self.dispatcher.close()  # every vCPU thread back to the host's scheduler

    # --- control -----------------------------------------------------------------------

    def set_domain(self, record: DomainRecord, changes: dict[str, Any]) -> Sched:
        """Change some of a domain's parameters; they apply at once and persist."""
        if not isinstance(changes, dict) or not changes:
            raise Refused("give at least one of weight, warp_ms, warp_limit_ms, unwarp_ms", 400)
        assert record.description is not None
        try:
            params = sched_from_plain({**record.description.sched._asdict(), **changes}, ("sched",))
            bvt = bvt_params(params)
        except DescriptionError as e:
            raise Refused(str(e), 400) from None
        if self.dispatcher is not None and str(record.id) in self.dispatcher.domains():
            self.dispatcher.set_params(str(record.id), bvt)
        record.description = record.description._replace(sched=params)
        self.registry.save_description(record)
        return params

    def set_ctx_allow(self, ms: Any) -> None:
        if not isinstance(ms, int) or isinstance(ms, bool) or not 1 <= ms <= 10_000:
            raise Refused("ctx_allow_ms: must be an integer from 1 to 10000", 400)
        if self.dispatcher is not None:
            for rq in self.dispatcher.queues.values():
                rq.ctx_allow_ns = ms * MS
        self.ctx_allow_ms = ms
        write_json(self.path, {"ctx_allow_ms": ms})  # never through a symbolic link

    # --- what is shown -------------------------------------------------------------------

    def vcpu_metrics(self) -> dict[str, list[dict[str, Any]]]:
        """Per domain id: each vCPU's AVT, EVT and share of its pool CPU."""
        out: dict[str, list[dict[str, Any]]] = {}
        if self.dispatcher is None:
            return out
        for m in self.dispatcher.metrics():
            out.setdefault(m.domain, []).append(m.as_dict())
        return out

    def _dispatcher_cpu(self) -> float:
        """CPU time the dispatcher's thread has used, in seconds."""
        if not self._threads or self._threads[0].native_id is None:
            return 0.0
        try:
            with open(f"/proc/self/task/{self._threads[0].native_id}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def domain_view(self, record: DomainRecord, metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        assert record.description is not None
        params = record.description.sched
        return {"id": record.id, "name": record.name, **params._asdict(),
                "scheduled": str(record.id) in metrics, "vcpus": metrics.get(str(record.id), [])}

    def view(self) -> dict[str, Any]:
        metrics = self.vcpu_metrics()
        return {
            "enabled": self.dispatcher is not None,
            "pool": self.pool or [],
            "ctx_allow_ms": self.ctx_allow_ms,
            "dispatcher_cpu_seconds": self._dispatcher_cpu(),
            "domains": [self.domain_view(r, metrics) for r in self.registry.all()],
        }
