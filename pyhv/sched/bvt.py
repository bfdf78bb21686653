"""Borrowed-Virtual-Time scheduling policy (Duda & Cheriton, SOSP'99; Xen's
sched_bvt.c), for one CPU's run queue.

Pure policy: no threads, no clocks, no KVM.  Every call that needs the time
is given it (``now``, integer nanoseconds of real time), and CPU time used is
reported to it (``account``).  The dispatcher owns the mechanism.

Terms, per entity (one per vCPU):

- *weight* w (per domain): its share of the CPU is w / (sum of the runnable
  weights).  Xen calls 1/w the *MCU advance*.
- *actual virtual time* A: advances by ``ran / w`` for ``ran`` ns of CPU, so
  virtual time is measured in nanoseconds of CPU at weight 1.  The division
  keeps its remainder, so A is exact over any number of charges.
- *warp* W (virtual ns): a warping entity's *effective virtual time* is
  E = A - W, otherwise E = A.  The runnable entity with the smallest E runs.
- *warp time limit* L (real ns of CPU, 0 = none): an entity runs warped for at
  most L per warp; then it is unwarped, and may warp again only after the
  *unwarp requirement* U (real ns) has passed.  A warp starts when the entity
  wakes (or is added runnable) and ends when it blocks.
- *context-switch allowance* C (real ns, one per run queue): the running
  entity i is preempted by j only once E_j <= E_i - C / w_i, so that
  entities with equal E do not thrash.  A decision lets the chosen entity
  run until its E passes the next-smallest E by C / w.
- *scheduler virtual time* SVT: the smallest A of the runnable entities.
  An entity that wakes gets A = max(A, SVT): a sleeper does not bank the
  virtual time it did not use.

Because A only ever grows by CPU used / weight, and the runnable entity with
the smallest E is the one that runs, two always-runnable entities' A stay
within C / w + W of each other: the long-run shares follow the weights, and
warping only borrows from an entity's own future (Duda & Cheriton, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

MS = 1_000_000

#: Xen's default context-switch allowance (5 ms)
DEFAULT_CTX_ALLOW_NS = 5 * MS
#: the slice given when only one entity is runnable (Xen: 10 C), so the
#: decision is looked at again from time to time
LONE_SLICE_FACTOR = 10

MAX_WEIGHT = 1_000_000
MAX_TIME_NS = 3600 * 1_000_000_000      # parameters above an hour are surely mistakes


@dataclass(frozen=True)
class BvtParams:
    """A domain's BVT parameters (all its vCPUs share them)."""

    weight: int = 1
    warp_ns: int = 0            # W, virtual ns (ns of CPU at weight 1)
    warp_limit_ns: int = 0      # L, real ns of CPU run warped per warp; 0: no limit
    unwarp_ns: int = 0          # U, real ns before warping again after L ran out

    def __post_init__(self) -> None:
        check_params(self)

    @property
    def warps(self) -> bool:
        return self.warp_ns > 0


def check_params(p: BvtParams) -> None:
    """Raise UsageError (one line) if a parameter is out of range."""
    for name in ("weight", "warp_ns", "warp_limit_ns", "unwarp_ns"):
        v = getattr(p, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise UsageError(f"bvt: {name} must be an integer, not {v!r}")
    if not 1 <= p.weight <= MAX_WEIGHT:
        raise UsageError(f"bvt: weight must be 1..{MAX_WEIGHT}, not {p.weight}")
    for name in ("warp_ns", "warp_limit_ns", "unwarp_ns"):
        v = getattr(p, name)
        if not 0 <= v <= MAX_TIME_NS:
            raise UsageError(f"bvt: {name} must be 0..{MAX_TIME_NS} ns, not {v}")


def check_ctx_allow(ns: int) -> int:
    if not isinstance(ns, int) or isinstance(ns, bool):
        raise UsageError(f"bvt: context-switch allowance must be an integer, not {ns!r}")
    if not 1000 <= ns <= MAX_TIME_NS:
        raise UsageError(f"bvt: context-switch allowance must be 1000..{MAX_TIME_NS} ns, not {ns}")
    return ns


@dataclass(eq=False)
class Entity:
    """One schedulable vCPU.  Its fields are the policy's; read them, but
    change them only through the run queue."""

    name: str
    params: BvtParams
    avt: int = 0                # A, virtual ns
    runnable: bool = False
    warping: bool = False       # in a warp now (E = A - W)
    warp_ran_ns: int = 0        # CPU run in the current warp
    unwarped_at: int | None = None   # when L last ran out (None: never)
    cpu_ns: int = 0             # all CPU time charged
    _rem: int = field(default=0, repr=False)   # remainder of the last division by the weight
    _seq: int = field(default=0, repr=False)   # tie-break: order of addition

    @property
    def evt(self) -> int:
        """E: the effective virtual time."""
        return self.avt - self.params.warp_ns if self.warping else self.avt


class RunQueue:
    """The BVT state of one CPU: its entities, the current one, SVT and C."""

    def __init__(self, ctx_allow_ns: int = DEFAULT_CTX_ALLOW_NS) -> None:
        self.ctx_allow_ns = check_ctx_allow(ctx_allow_ns)
        self.entities: list[Entity] = []
        self.current: Entity | None = None
        self.svt = 0
        self._next_seq = 0

    # -- membership and parameters ---------------------------------------

    def add(self, e: Entity, now: int, runnable: bool = True) -> Entity:
        """Join the queue with A = SVT (a newcomer starts level with the others)."""
        if e in self.entities:
            raise UsageError(f"bvt: {e.name} is already on this run queue")
        e._seq = self._next_seq
        self._next_seq += 1
        e.avt = max(e.avt, self.svt)
        e._rem = 0
        self.entities.append(e)
        if runnable:
            self._become_runnable(e, now)
        return e

    def remove(self, e: Entity) -> None:
        self.entities.remove(e)
        if self.current is e:
            self.current = None
        e.runnable = False

    def set_params(self, e: Entity, params: BvtParams, now: int) -> None:
        """New parameters take effect from the next decision; a warp in
        progress ends if the new parameters have no warp."""
        e.params = params
        if not params.warps:
            e.warping = False
            e.warp_ran_ns = 0
        elif e.runnable and not e.warping and self._may_warp(e, now):
            e.warping = True

    # -- events -----------------------------------------------------------

    def account(self, e: Entity, ran_ns: int, now: int) -> None:
        """Charge ``ran_ns`` of CPU to ``e`` (which may or may not be current):
        A += ran / w; a warp that has now run for L ends."""
        if ran_ns < 0:
            raise ValueError(f"negative run time {ran_ns}")
        e.cpu_ns += ran_ns
        q, e._rem = divmod(ran_ns + e._rem, e.params.weight)
        e.avt += q
        if e.warping:
            e.warp_ran_ns += ran_ns
            limit = e.params.warp_limit_ns
            if limit and e.warp_ran_ns >= limit:
                e.warping = False
                e.warp_ran_ns = 0
                e.unwarped_at = now

    def wake(self, e: Entity, now: int) -> bool:
        """``e`` became runnable.  Returns True if it should preempt the
        current entity now (then call ``pick``)."""
        if e.runnable:
            return False
        self._update_svt()
        self._become_runnable(e, now)
        cur = self.current
        if cur is None or not cur.runnable:
            return True
        return e.evt <= cur.evt - self._allow_virt(cur)

    def block(self, e: Entity, now: int) -> None:
        """``e`` stopped being runnable (halted, paused).  Its warp ends."""
        del now
        e.runnable = False
        e.warping = False
        e.warp_ran_ns = 0
        if self.current is e:
            self.current = None

    def pick(self, now: int) -> tuple[Entity | None, int]:
        """Decide who runs next and for how long at most (ns) before the
        next decision.  Charge the CPU used so far first (``account``).
        Returns (None, C) when nothing is runnable."""
        run = [e for e in self.entities if e.runnable]
        self._update_svt(run)
        if not run:
            self.current = None
            return None, self.ctx_allow_ns
        best = min(run, key=_order)
        cur = self.current
        chosen = best
        if cur is not None and cur.runnable and cur is not best:
            if best.evt > cur.evt - self._allow_virt(cur):
                chosen = cur            # not enough ahead: no switch
        self.current = chosen
        others = [e for e in run if e is not chosen]
        if others:
            second = min(others, key=_order)
            # Run until E passes the runner-up's by C / w.  A current entity
            # kept although not the smallest has gap > -C / w: still > 0.
            gap = second.evt - chosen.evt                # virtual ns
            slice_ns = gap * chosen.params.weight + self.ctx_allow_ns
        else:
            slice_ns = LONE_SLICE_FACTOR * self.ctx_allow_ns
        if chosen.warping and chosen.params.warp_limit_ns:
            slice_ns = min(slice_ns, chosen.params.warp_limit_ns - chosen.warp_ran_ns)
        return chosen, max(1, slice_ns)

    def would_preempt(self, e: Entity, now: int) -> bool:
        """If the blocked entity ``e`` woke now, would it preempt the current
        one at once?  (What ``wake`` would answer, without changing anything.)
        A mechanism uses it to arm a sleeper so that the host lets it in the
        moment it wakes."""
        run = [x for x in self.entities if x.runnable and x is not e]
        svt = min((x.avt for x in run), default=self.svt)
        evt = max(e.avt, svt) - (e.params.warp_ns if self._may_warp(e, now) else 0)
        cur = self.current
        if cur is None or not cur.runnable or cur is e:
            return True
        return evt <= cur.evt - self._allow_virt(cur)

    # -- internals ----------------------------------------------------------

    def _allow_virt(self, e: Entity) -> int:
        """C in e's virtual time."""
        return self.ctx_allow_ns // e.params.weight

    def _may_warp(self, e: Entity, now: int) -> bool:
        if not e.params.warps:
            return False
        return e.unwarped_at is None or now - e.unwarped_at >= e.params.unwarp_ns

    def _become_runnable(self, e: Entity, now: int) -> None:
        e.avt = max(e.avt, self.svt)
        e.runnable = True
        e.warp_ran_ns = 0
        e.warping = self._may_warp(e, now)

    def _update_svt(self, run: list[Entity] | None = None) -> None:
        if run is None:
            run = [e for e in self.entities if e.runnable]
        if run:
            self.svt = min(e.avt for e in run)


def _order(e: Entity) -> tuple[int, int]:
    return (e.evt, e._seq)


@dataclass(frozen=True)
class EntityMetrics:
    name: str
    weight: int
    avt: int
    evt: int
    warping: bool
    runnable: bool
    cpu_ns: int
    share: float        # of the CPU time charged on its run queue since the baseline


def metrics(rq: RunQueue, baseline: dict[str, int] | None = None) -> list[EntityMetrics]:
    """Per entity: A, E and its share of the CPU time charged on this run
    queue (since ``baseline``, a map of name -> cpu_ns from an earlier call
    of ``cpu_baseline``, or since the start)."""
    base = baseline or {}
    used = {e.name: e.cpu_ns - base.get(e.name, 0) for e in rq.entities}
    total = sum(used.values())
    return [
        EntityMetrics(
            name=e.name, weight=e.params.weight, avt=e.avt, evt=e.evt, warping=e.warping,
            runnable=e.runnable, cpu_ns=e.cpu_ns, share=(used[e.name] / total) if total else 0.0,
        )
        for e in rq.entities
    ]


def cpu_baseline(rq: RunQueue) -> dict[str, int]:
    return {e.name: e.cpu_ns for e in rq.entities}
