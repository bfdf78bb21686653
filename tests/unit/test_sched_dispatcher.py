"""The BVT dispatcher over a fake host: what it reads, how it charges, which
scheduling class each vCPU thread is put in."""

from __future__ import annotations

import os

import pytest

from pyhv.errors import UsageError
from pyhv.sched.bvt import BvtParams
from pyhv.sched.dispatcher import IDLE, NORMAL, READY, RUN, Dispatcher, TaskGone

MS = 1_000_000


class FakeTask:
    def __init__(self) -> None:
        self.run_ns = 0
        self.runnable = False
        self.gone = False

    def read(self) -> tuple[int, bool]:
        if self.gone:
            raise TaskGone()
        return self.run_ns, self.runnable

    def close(self) -> None:
        pass


class FakeHost:
    def __init__(self) -> None:
        self.tasks: dict[int, FakeTask] = {}
        self.affinity: dict[int, set[int]] = {}
        self.cls: dict[int, str] = {}
        self.class_calls = 0

    def task(self, tid: int) -> FakeTask:
        return self.tasks.setdefault(tid, FakeTask())

    def open_task(self, pid: int, tid: int) -> FakeTask:
        del pid
        return self.task(tid)

    def get_affinity(self, tid: int) -> set[int]:
        return self.affinity.get(tid, {0, 1})

    def set_affinity(self, tid: int, cpus: set[int]) -> None:
        self.affinity[tid] = set(cpus)

    def set_class(self, tid: int, cls: str) -> None:
        self.cls[tid] = cls
        self.class_calls += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make(enforce: bool = True) -> tuple[Dispatcher, FakeHost, Clock]:
    host, clock = FakeHost(), Clock()
    d = Dispatcher([0], ctx_allow_ns=5 * MS, period_ns=1 * MS, enforce=enforce, host=host, clock=clock)
    return d, host, clock


def test_classes_follow_the_bvt_decision() -> None:
    d, host, clock = make()
    a, b, c = host.task(101), host.task(102), host.task(103)
    a.runnable = b.runnable = True                   # two burners; c is halted
    d.add_domain("a", 1, [101], BvtParams(weight=1))
    d.add_domain("b", 2, [102], BvtParams(weight=1))
    d.add_domain("c", 3, [103], BvtParams(weight=1, warp_ns=50 * MS))
    assert host.affinity == {101: {0}, 102: {0}, 103: {0}}

    # t=0: a and b wake level; a (added first) is chosen for C = 5 ms.  c is
    # asleep but warped: armed to preempt the moment it wakes.
    d.step()
    assert host.cls == {101: RUN, 102: IDLE, 103: READY}

    # t=5: a used its 5 ms: b's turn.
    clock.now = 5 * MS
    a.run_ns = 5 * MS
    d.step()
    assert host.cls == {101: IDLE, 102: RUN, 103: READY}

    # t=6: the host let c in when it woke (FIFO), it has run 0.1 ms: it is
    # the chosen one now, and stays at FIFO while it runs warped.
    clock.now = 6 * MS
    b.run_ns = 1 * MS - 100_000
    c.runnable, c.run_ns = True, 100_000
    d.step()
    assert host.cls == {101: IDLE, 102: IDLE, 103: READY}
    assert d.queues[0].current is d._vcpus[2].entity
    m = {x.domain: x for x in d.metrics()}
    assert m["c"].warped and m["c"].evt_ns == m["c"].avt_ns - 50 * MS
    # It woke some time since the last round: the wake rule uses the virtual
    # times of that round (SVT = b's A = 0), then its 0.1 ms is charged.
    assert m["c"].avt_ns == 100_000

    # t=7: c halted again (still armed); b (smaller A than a) runs.
    clock.now = 7 * MS
    c.runnable = False
    d.step()
    assert host.cls == {101: IDLE, 102: RUN, 103: READY}


def test_a_warped_vcpu_that_keeps_running_drops_to_idle_when_its_slice_ends() -> None:
    # W = 6 ms, C = 5 ms.  c wakes and is chosen with a slice of
    # (E_a - E_c) + C = (0 - (0 - 6)) + 5 = 11 ms; it computes all along.
    d, host, clock = make()
    a, c = host.task(1), host.task(3)
    a.runnable = True
    d.add_domain("a", 1, [1], BvtParams())
    d.add_domain("c", 3, [3], BvtParams(warp_ns=6 * MS))
    d.step()
    assert host.cls == {1: RUN, 3: READY}
    c.runnable = True
    d.step()
    assert host.cls == {1: IDLE, 3: READY}
    clock.now = c.run_ns = 11 * MS
    d.step()                                         # E_c = 11 - 6 = 5 >= E_a + C
    assert host.cls == {1: RUN, 3: IDLE}


def test_an_unwarped_sleeper_waits_at_idle() -> None:
    d, host, clock = make()
    a = host.task(1)
    a.runnable = True                                # task 2 (s) is asleep
    d.add_domain("a", 1, [1], BvtParams())
    d.add_domain("s", 2, [2], BvtParams())
    d.step()
    # s would wake level with a (A = SVT), not C ahead: no preemption.
    clock.now = 1 * MS
    a.run_ns = 1 * MS
    d.step()
    assert host.cls == {1: RUN, 2: IDLE}


def test_shares_in_metrics() -> None:
    d, host, clock = make()
    x, y = host.task(1), host.task(2)
    x.runnable = y.runnable = True
    d.add_domain("x", 1, [1], BvtParams(weight=1))
    d.add_domain("y", 2, [2], BvtParams(weight=3))
    d.step()
    d.reset_baseline()
    clock.now = 100 * MS
    x.run_ns, y.run_ns = 25 * MS, 75 * MS
    d.step()
    m = {v.domain: v for v in d.metrics()}
    assert (m["x"].share, m["y"].share) == (0.25, 0.75)
    assert (m["x"].cpu_frac, m["y"].cpu_frac) == (0.25, 0.75)
    assert m["x"].as_dict()["avt_ns"] == m["x"].avt_ns


def test_dispatcher_off_confines_and_accounts_but_sets_no_class() -> None:
    d, host, clock = make(enforce=False)
    t = host.task(7)
    t.runnable = True
    d.add_domain("a", 1, [7], BvtParams())
    clock.now = 3 * MS
    t.run_ns = 3 * MS
    d.step()
    assert host.affinity[7] == {0} and host.class_calls == 0
    assert d.metrics()[0].cpu_ns == 3 * MS


def test_a_thread_that_exits_is_dropped() -> None:
    d, host, _ = make()
    host.task(1).runnable = True
    d.add_domain("a", 1, [1], BvtParams())
    d.step()
    host.task(1).gone = True
    d.step()
    assert d.domains() == [] and d.metrics() == []


def test_close_gives_threads_back() -> None:
    d, host, _ = make()
    host.affinity[5] = {0, 1}
    host.task(5).runnable = True
    d.add_domain("a", 1, [5], BvtParams())
    d.step()
    assert host.cls[5] == RUN and host.affinity[5] == {0}
    d.close()
    assert host.cls[5] == NORMAL and host.affinity[5] == {0, 1}


def test_set_params_takes_effect() -> None:
    d, host, _ = make()
    host.task(1).runnable = True
    d.add_domain("a", 1, [1], BvtParams())
    d.set_params("a", BvtParams(weight=4))
    assert d.metrics()[0].weight == 4
    with pytest.raises(UsageError, match="sched: no domain b"):
        d.set_params("b", BvtParams())


def test_bad_input_is_a_one_line_error() -> None:
    host = FakeHost()
    with pytest.raises(UsageError, match="the CPU pool is empty"):
        Dispatcher([], host=host)
    with pytest.raises(UsageError, match="no CPU 4096 on this host"):
        Dispatcher([4096], host=host)
    with pytest.raises(UsageError, match="period must be"):
        Dispatcher([0], period_ns=10, host=host)
    d = Dispatcher([0], host=host)
    d.add_domain("a", 1, [1], BvtParams())
    with pytest.raises(UsageError, match="domain a is already scheduled"):
        d.add_domain("a", 1, [2], BvtParams())
    with pytest.raises(UsageError, match="has no vCPU threads"):
        d.add_domain("b", 1, [], BvtParams())


def test_threads_spread_over_the_pool() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    host = FakeHost()
    d = Dispatcher([0, 1], host=host)
    d.add_domain("a", 1, [1, 2, 3], BvtParams())
    assert [host.affinity[t] for t in (1, 2, 3)] == [{0}, {1}, {0}]
