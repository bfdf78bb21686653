"""The BVT dispatcher: makes the host run the vCPU threads of a CPU pool the
way the BVT policy (``bvt.py``) decides.

Mechanism (docs/SCHEDULING.md has the reasoning and the error bounds):

- Each vCPU thread is placed on one CPU of the pool (sched_setaffinity), the
  least loaded when it is added; each pool CPU has its own BVT run queue.
- Every ``period`` (1 ms) the dispatcher reads each thread's CPU time
  (``/proc/PID/task/TID/schedstat``, ns) and state (``.../stat``, R or not),
  charges the CPU used, turns state changes into BVT wakes and blocks, and
  when a slice has run out or a wake asks for it, lets the policy decide.
- The decision is expressed through the host scheduler's classes: the chosen
  vCPU runs SCHED_OTHER, the other runnable ones SCHED_IDLE (they get only
  what the chosen one leaves: no CPU is wasted when it halts), and a halted
  vCPU that would preempt the moment it wakes (a warped one) waits at
  SCHED_FIFO, so the host switches to it as soon as KVM wakes its thread,
  without waiting for the dispatcher to notice.  A warped vCPU stays at
  SCHED_FIFO while it is the chosen one (until its slice or warp ends).
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import PyhvError, UsageError
from .bvt import DEFAULT_CTX_ALLOW_NS, BvtParams, Entity, RunQueue

#: host scheduling classes a vCPU thread is put in
RUN = "run"         # the chosen vCPU of its pool CPU (unless warped): SCHED_OTHER
IDLE = "idle"       # runnable but not chosen, or asleep and not entitled to preempt: SCHED_IDLE
READY = "ready"     # asleep and would preempt on waking, or chosen and warped: SCHED_FIFO
NORMAL = "normal"   # not managed (dispatcher off, or released): SCHED_OTHER

READY_PRIORITY = 1
#: the dispatcher's own thread runs above READY so a vCPU can never lock it out
DISPATCHER_PRIORITY = 2

DEFAULT_PERIOD_NS = 1_000_000

_VCPU_COMM = re.compile(rb"vcpu(\d+)\n?$")


class TaskGone(Exception):
    """The thread has exited."""


class Task(Protocol):
    def read(self) -> tuple[int, bool]:
        """(CPU time used so far in ns, runnable now).  Raises TaskGone."""
        ...

    def close(self) -> None: ...


class Host(Protocol):
    def open_task(self, pid: int, tid: int) -> Task: ...

    def get_affinity(self, tid: int) -> set[int]: ...

    def set_affinity(self, tid: int, cpus: set[int]) -> None: ...

    def set_class(self, tid: int, cls: str) -> None: ...


class ProcTask:
    """A thread's CPU time and state from /proc, read with pread on files kept
    open (about a microsecond each)."""

    def __init__(self, pid: int, tid: int) -> None:
        base = f"/proc/{pid}/task/{tid}"
        try:
            self._schedstat = os.open(f"{base}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TaskGone(f"no thread {tid} in process {pid}") from None
        try:
            self._stat = os.open(f"{base}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            os.close(self._schedstat)
            raise TaskGone(f"no thread {tid} in process {pid}") from None

    def read(self) -> tuple[int, bool]:
        try:
            ss = os.pread(self._schedstat, 128, 0)
            st = os.pread(self._stat, 1024, 0)
        except (ProcessLookupError, FileNotFoundError):
            raise TaskGone() from None
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):
                raise TaskGone() from None
            raise
        if not ss or not st:
            raise TaskGone()
        # stat: "tid (comm) S ..."; comm may hold anything, the state follows the last ')'
        k = st.rindex(b")")
        return int(ss.split(None, 1)[0]), st[k + 2:k + 3] == b"R"

    def close(self) -> None:
        for fd in (self._schedstat, self._stat):
            try:
                os.close(fd)
            except OSError:
                pass


class LinuxHost:
    """The real host: affinity and scheduling policy through the os module."""

    def open_task(self, pid: int, tid: int) -> Task:
        return ProcTask(pid, tid)

    def get_affinity(self, tid: int) -> set[int]:
        return os.sched_getaffinity(tid)

    def set_affinity(self, tid: int, cpus: set[int]) -> None:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass                        # gone: the next read notices
        except OSError as e:
            raise PyhvError(f"sched: cannot confine thread {tid} to CPUs {sorted(cpus)}: {e.strerror}") from None

    def set_class(self, tid: int, cls: str) -> None:
        if cls == READY:
            policy, prio = os.SCHED_FIFO, READY_PRIORITY
        elif cls == IDLE:
            policy, prio = os.SCHED_IDLE, 0
        else:
            policy, prio = os.SCHED_OTHER, 0
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(prio))
        except ProcessLookupError:
            pass
        except OSError as e:
            raise PyhvError(f"sched: cannot set the scheduling class of thread {tid}: {e.strerror}") from None


def vcpu_threads(pid: int) -> dict[int, int]:
    """The vCPU threads of a domain process: {vCPU index: TID}, found by the
    names the threads give themselves (``vcpuN``)."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise PyhvError(f"sched: no process {pid}") from None
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm", "rb") as f:
                m = _VCPU_COMM.match(f.read())
        except FileNotFoundError:
            continue
        if m:
            out[int(m.group(1))] = int(t)
    return out


@dataclass(eq=False)
class _Vcpu:
    domain: str
    index: int
    pid: int
    tid: int
    cpu: int
    entity: Entity
    task: Task
    last_run_ns: int
    old_affinity: set[int]
    cls: str | None = None


@dataclass(frozen=True)
class VcpuMetrics:
    domain: str
    vcpu: int
    tid: int
    cpu: int                # the pool CPU it is placed on
    weight: int
    avt_ns: int             # actual virtual time (ns of CPU at weight 1)
    evt_ns: int             # effective virtual time (avt - warp when warped)
    warped: bool
    runnable: bool
    cpu_ns: int             # CPU time used, all told
    share: float            # of the CPU time its pool CPU gave vCPUs, since the baseline
    cpu_frac: float         # of the wall time since the baseline

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Dispatcher:
    """Enforces BVT over the vCPU threads of a pool of host CPUs.

    Thread-safe: ``add_domain``, ``remove_domain``, ``set_params`` and
    ``metrics`` may be called from other threads while ``run`` loops.
    With ``enforce=False`` it confines and accounts but leaves the host's
    scheduler alone (the plain-host baseline).
    """

    def __init__(
        self,
        pool: Iterable[int],
        ctx_allow_ns: int = DEFAULT_CTX_ALLOW_NS,
        period_ns: int = DEFAULT_PERIOD_NS,
        enforce: bool = True,
        host: Host | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        cpus = sorted(set(pool))
        if not cpus:
            raise UsageError("sched: the CPU pool is empty")
        ncpu = os.cpu_count() or 1
        bad = [c for c in cpus if not 0 <= c < ncpu]
        if bad:
            raise UsageError(f"sched: no CPU {bad[0]} on this host (CPUs 0..{ncpu - 1})")
        if not 100_000 <= period_ns <= 100_000_000:
            raise UsageError(f"sched: the period must be 100000..100000000 ns, not {period_ns}")
        self.pool = cpus
        self.period_ns = period_ns
        self.enforce = enforce
        self.host: Host = host or LinuxHost()
        self.clock = clock
        self.queues = {c: RunQueue(ctx_allow_ns) for c in cpus}
        self._deadline = dict.fromkeys(cpus, 0)
        self._vcpus: list[_Vcpu] = []
        self._lock = threading.Lock()
        self._baseline: dict[tuple[str, int], int] = {}
        self._baseline_time = clock()
        #: CPU time the dispatcher's loop has used (ns) and its steps
        self.busy_ns = 0
        self.steps = 0

    # -- domains -------------------------------------------------------------

    def add_domain(self, name: str, pid: int, tids: Iterable[int], params: BvtParams) -> None:
        """Take over a domain's vCPU threads (``tids`` in vCPU order)."""
        tids = list(tids)
        if not tids:
            raise UsageError(f"sched: domain {name} has no vCPU threads")
        with self._lock:
            if any(v.domain == name for v in self._vcpus):
                raise UsageError(f"sched: domain {name} is already scheduled")
            now = self.clock()
            for i, tid in enumerate(tids):
                cpu = min(self.pool, key=lambda c: (len(self.queues[c].entities), c))
                old = self.host.get_affinity(tid)
                self.host.set_affinity(tid, {cpu})
                task = self.host.open_task(pid, tid)
                run_ns, _ = task.read()
                e = Entity(f"{name}/vcpu{i}", params)
                self.queues[cpu].add(e, now, runnable=False)    # its state comes with the next step
                self._vcpus.append(_Vcpu(name, i, pid, tid, cpu, e, task, run_ns, old))
                self._baseline[(name, i)] = e.cpu_ns

    def remove_domain(self, name: str) -> None:
        with self._lock:
            for v in [v for v in self._vcpus if v.domain == name]:
                self._release(v)

    def set_params(self, name: str, params: BvtParams) -> None:
        with self._lock:
            vs = [v for v in self._vcpus if v.domain == name]
            if not vs:
                raise UsageError(f"sched: no domain {name}")
            now = self.clock()
            for v in vs:
                self.queues[v.cpu].set_params(v.entity, params, now)
                self._deadline[v.cpu] = 0           # decide again at the next step

    def domains(self) -> list[str]:
        with self._lock:
            return sorted({v.domain for v in self._vcpus})

    def _release(self, v: _Vcpu) -> None:
        self._vcpus.remove(v)
        self.queues[v.cpu].remove(v.entity)
        self._deadline[v.cpu] = 0
        v.task.close()
        if v.cls not in (None, NORMAL):
            self.host.set_class(v.tid, NORMAL)
        try:
            self.host.set_affinity(v.tid, v.old_affinity)
        except PyhvError:
            pass

    def close(self) -> None:
        """Give every thread back to the host as it was."""
        with self._lock:
            for v in list(self._vcpus):
                self._release(v)

    # -- the loop --------------------------------------------------------------

    def step(self) -> int:
        """One round: read, charge, decide, apply.  Returns the ns until the
        next round is due."""
        with self._lock:
            now = self.clock()
            self.steps += 1
            wait = self.period_ns
            for cpu, rq in self.queues.items():
                vs = [v for v in self._vcpus if v.cpu == cpu]
                self._step_cpu(cpu, rq, vs, now)
                wait = min(wait, max(0, self._deadline[cpu] - now))
            return max(wait, 50_000)

    def _step_cpu(self, cpu: int, rq: RunQueue, vs: list[_Vcpu], now: int) -> None:
        need = now >= self._deadline[cpu] or rq.current is None
        seen: list[tuple[_Vcpu, int, bool]] = []
        for v in vs:
            try:
                run_ns, runnable = v.task.read()
            except TaskGone:
                self._release(v)
                need = True
                continue
            seen.append((v, max(0, run_ns - v.last_run_ns), runnable))
            v.last_run_ns = run_ns
        # Wakes first, with the virtual times as they were (the wake rule),
        # then the CPU used since the last round, then the blocks.
        for v, ran, runnable in seen:
            if not v.entity.runnable and (runnable or ran > 0) and rq.wake(v.entity, now):
                need = True
        for v, ran, _ in seen:
            if ran:
                rq.account(v.entity, ran, now)
        for v, _, runnable in seen:
            if v.entity.runnable and not runnable:
                rq.block(v.entity, now)
                need = True
        if need:
            _, slice_ns = rq.pick(now)
            self._deadline[cpu] = now + slice_ns
        if self.enforce:
            for v, _, _ in seen:
                e = v.entity
                if e is rq.current:
                    cls = READY if e.warping else RUN
                elif e.runnable:
                    cls = IDLE
                else:
                    cls = READY if rq.would_preempt(e, now) else IDLE
                if cls != v.cls:
                    self.host.set_class(v.tid, cls)
                    v.cls = cls

    def run(self, stop: threading.Event, realtime: bool = True) -> None:
        """Loop until ``stop`` is set.  With ``realtime`` the calling thread
        runs SCHED_FIFO above the READY vCPUs while it loops (if the host
        allows), so that no vCPU can lock the dispatcher out."""
        raised = False
        if realtime and self.enforce:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DISPATCHER_PRIORITY))
                raised = True
            except OSError:
                pass
        t0 = time.thread_time_ns()
        try:
            while not stop.is_set():
                wait = self.step()
                stop.wait(wait / 1e9)
        finally:
            self.busy_ns += time.thread_time_ns() - t0
            if raised:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    # -- metrics ------------------------------------------------------------------

    def reset_baseline(self) -> None:
        """Shares in ``metrics`` are counted from now on."""
        with self._lock:
            self._baseline = {(v.domain, v.index): v.entity.cpu_ns for v in self._vcpus}
            self._baseline_time = self.clock()

    def metrics(self) -> list[VcpuMetrics]:
        """Per vCPU: its virtual times and its share of its pool CPU."""
        with self._lock:
            wall = max(1, self.clock() - self._baseline_time)
            used = {(v.domain, v.index): v.entity.cpu_ns - self._baseline.get((v.domain, v.index), 0)
                    for v in self._vcpus}
            per_cpu: dict[int, int] = {}
            for v in self._vcpus:
                per_cpu[v.cpu] = per_cpu.get(v.cpu, 0) + used[(v.domain, v.index)]
            out = []
            for v in self._vcpus:
                u = used[(v.domain, v.index)]
                total = per_cpu[v.cpu]
                e = v.entity
                out.append(VcpuMetrics(
                    domain=v.domain, vcpu=v.index, tid=v.tid, cpu=v.cpu, weight=e.params.weight,
                    avt_ns=e.avt, evt_ns=e.evt, warped=e.warping, runnable=e.runnable, cpu_ns=e.cpu_ns,
                    share=u / total if total else 0.0, cpu_frac=u / wall,
                ))
            return out
