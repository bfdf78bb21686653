"""BVT policy against traces worked out by hand, and long-run fairness.

Times are in ms in the comments; the code works in ns (``MS`` = 1 ms).
Virtual time is ns of CPU at weight 1: running r ns at weight w adds r / w.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.errors import UsageError
from pyhv.sched.bvt import BvtParams, Entity, RunQueue, cpu_baseline, metrics

MS = 1_000_000


def ent(name: str, weight: int = 1, **kw: int) -> Entity:
    return Entity(name, BvtParams(weight=weight, **kw))


def test_weighted_sharing_trace() -> None:
    # a (weight 1) and b (weight 2), C = 2 ms, both runnable from t=0.
    rq = RunQueue(ctx_allow_ns=2 * MS)
    a = rq.add(ent("a", 1), 0)
    b = rq.add(ent("b", 2), 0)

    # t=0: E_a = E_b = 0; the tie goes to the first added.  a may run until
    # its E passes b's by C/w_a = 2: gap 0 * 1 + C = 2 ms.
    assert rq.pick(0) == (a, 2 * MS)
    rq.account(a, 2 * MS, 2 * MS)               # A_a = 2
    assert a.avt == 2 * MS

    # t=2: E_b = 0 <= E_a - C/w_a = 2 - 2 = 0: switch.  b runs until its E
    # passes a's by C/w_b = 1: (2 - 0) * 2 + 2 = 6 ms.
    assert rq.pick(2 * MS) == (b, 6 * MS)
    rq.account(b, 6 * MS, 8 * MS)               # A_b = 0 + 6/2 = 3
    assert b.avt == 3 * MS

    # t=8: E_a = 2 <= E_b - C/w_b = 3 - 1 = 2: switch.  (3 - 2) * 1 + 2 = 3 ms.
    assert rq.pick(8 * MS) == (a, 3 * MS)
    rq.account(a, 3 * MS, 11 * MS)              # A_a = 5

    # t=11: E_b = 3 <= 5 - 2: switch.  (5 - 3) * 2 + 2 = 6 ms.
    assert rq.pick(11 * MS) == (b, 6 * MS)
    rq.account(b, 6 * MS, 17 * MS)              # A_b = 6

    # t=17: E_a = 5 <= 6 - 1: switch.  (6 - 5) * 1 + 2 = 3 ms.
    assert rq.pick(17 * MS) == (a, 3 * MS)
    rq.account(a, 3 * MS, 20 * MS)              # A_a = 8

    # t=20: E_b = 6 <= 8 - 2: switch.  (8 - 6) * 2 + 2 = 6 ms.
    assert rq.pick(20 * MS) == (b, 6 * MS)
    rq.account(b, 6 * MS, 26 * MS)              # A_b = 9
    # After 26 ms: a ran 8, b ran 18, heading for 1:2; A within C/w of each other.
    assert (a.cpu_ns, b.cpu_ns) == (8 * MS, 18 * MS)
    assert (a.avt, b.avt) == (8 * MS, 9 * MS)


def test_no_switch_within_the_allowance() -> None:
    # C = 4 ms.  a runs 1 ms past b (A_a = 1, A_b = 0): 0 > 1 - 4, so a keeps
    # the CPU, and may run until its E is C/w = 4 past b's: (0 - 1) * 1 + 4 = 3 ms.
    rq = RunQueue(ctx_allow_ns=4 * MS)
    a = rq.add(ent("a"), 0)
    rq.add(ent("b"), 0)
    assert rq.pick(0)[0] is a
    rq.account(a, 1 * MS, 1 * MS)
    assert rq.pick(1 * MS) == (a, 3 * MS)


def test_warp_gives_the_waker_the_cpu_at_once() -> None:
    # The paper's scenario of a video player against a batch job: equal
    # weights, C = 2 ms; "video" warps back by W = 10 ms of virtual time.
    rq = RunQueue(ctx_allow_ns=2 * MS)
    batch = rq.add(ent("batch"), 0)
    video = rq.add(ent("video", warp_ns=10 * MS), 0, runnable=False)

    # t=0: batch is alone: a lone slice, 10 C.
    assert rq.pick(0) == (batch, 20 * MS)

    # t=5: batch has run 5 ms (A = 5); video wakes.  SVT = 5, so A_video =
    # max(0, 5) = 5 and, warped, E_video = 5 - 10 = -5 <= E_batch - C = 3:
    # preempt.  video may run until E passes batch's by C:
    # (5 - (-5)) * 1 + 2 = 12 ms.
    rq.account(batch, 5 * MS, 5 * MS)
    assert rq.wake(video, 5 * MS) is True
    assert (video.avt, video.evt) == (5 * MS, -5 * MS)
    assert rq.pick(5 * MS) == (video, 12 * MS)

    # t=6: video ran 1 ms (A = 6) and halts: the warp ends with the wait.
    rq.account(video, 1 * MS, 6 * MS)
    rq.block(video, 6 * MS)
    assert video.evt == video.avt == 6 * MS
    assert rq.pick(6 * MS) == (batch, 20 * MS)

    # t=10: batch at A = 9; video wakes: A = max(6, SVT 9) = 9, E = -1: it
    # preempts again.  It borrowed from its own future: its A is where
    # batch's is, not behind.
    rq.account(batch, 4 * MS, 10 * MS)
    assert rq.wake(video, 10 * MS) is True
    assert (video.avt, video.evt) == (9 * MS, -1 * MS)
    assert rq.pick(10 * MS)[0] is video


def test_without_warp_the_waker_waits_for_the_allowance() -> None:
    # The same as above without warp: at t=10 video wakes with A = E = 9 =
    # E_batch, not C ahead: no preemption; batch's decision stands and video
    # gets the CPU only once batch is C past it: (9 - 9) * 1 + 2 = 2 ms later.
    rq = RunQueue(ctx_allow_ns=2 * MS)
    batch = rq.add(ent("batch"), 0)
    video = rq.add(ent("video"), 0, runnable=False)
    rq.pick(0)
    rq.account(batch, 9 * MS, 9 * MS)
    assert rq.wake(video, 9 * MS) is False
    assert rq.pick(9 * MS) == (batch, 2 * MS)
    rq.account(batch, 2 * MS, 11 * MS)          # A_batch = 11 >= 9 + 2
    assert rq.pick(11 * MS)[0] is video


def test_a_sleeper_waking_does_not_claim_the_time_it_slept() -> None:
    # R runs alone for 100 ms (A_R = 100); S (same weight) slept with A = 0.
    rq = RunQueue(ctx_allow_ns=2 * MS)
    r = rq.add(ent("R"), 0)
    s = rq.add(ent("S"), 0, runnable=False)
    now = 0
    while now < 100 * MS:
        who, slice_ns = rq.pick(now)
        assert who is r and slice_ns == 20 * MS      # lone: 10 C
        rq.account(r, slice_ns, now + slice_ns)
        now += slice_ns
    assert r.avt == 100 * MS

    # t=100: S wakes.  Without the rule its A = 0 would give it the next
    # 100 ms.  With it, A_S = max(0, SVT = 100) = 100: level with R, so no
    # preemption (100 > 100 - 2).
    assert rq.wake(s, now) is False
    assert s.avt == 100 * MS
    # R keeps the CPU until it is C past S: (100 - 100) + 2 = 2 ms,
    assert rq.pick(now) == (r, 2 * MS)
    rq.account(r, 2 * MS, now + 2 * MS)              # A_R = 102
    now += 2 * MS
    # then S runs until it is C past R: (102 - 100) + 2 = 4 ms,
    assert rq.pick(now) == (s, 4 * MS)
    rq.account(s, 4 * MS, now + 4 * MS)              # A_S = 104
    now += 4 * MS
    # and they alternate in 4 ms turns from then on.
    assert rq.pick(now) == (r, 4 * MS)


def test_warp_limit_and_unwarp_requirement() -> None:
    # W = 10, L = 3, U = 5, C = 1, equal weights.
    rq = RunQueue(ctx_allow_ns=1 * MS)
    b = rq.add(ent("b"), 0)
    v = rq.add(ent("v", warp_ns=10 * MS, warp_limit_ns=3 * MS, unwarp_ns=5 * MS), 0)
    # t=0: E_v = -10.  Its slice is cut to what is left of L: min(11, 3) = 3 ms.
    assert rq.pick(0) == (v, 3 * MS)
    # t=3: v ran warped for L: unwarped at t=3, E_v = A_v = 3.  b (E 0) runs.
    rq.account(v, 3 * MS, 3 * MS)
    assert not v.warping and v.unwarped_at == 3 * MS and v.evt == 3 * MS
    assert rq.pick(3 * MS)[0] is b
    # v halts and wakes at t=5: only 2 ms since it was unwarped (< U): no warp.
    rq.block(v, 4 * MS)
    rq.account(b, 2 * MS, 5 * MS)
    rq.wake(v, 5 * MS)
    assert not v.warping
    # It halts again and wakes at t=9: 6 ms >= U: it warps again.
    rq.block(v, 6 * MS)
    rq.wake(v, 9 * MS)
    assert v.warping and v.evt == v.avt - 10 * MS


def test_would_preempt_tells_a_sleeper_what_a_wake_would_do() -> None:
    # C = 2.  cur runs with A = 10; s1 (A = 0, no warp) would wake at SVT =
    # 10: not C ahead.  s2 (W = 5) would wake at E = 10 - 5 = 5 <= 10 - 2.
    rq = RunQueue(ctx_allow_ns=2 * MS)
    cur = rq.add(ent("cur"), 0)
    s1 = rq.add(ent("s1"), 0, runnable=False)
    s2 = rq.add(ent("s2", warp_ns=5 * MS), 0, runnable=False)
    rq.pick(0)
    rq.account(cur, 10 * MS, 10 * MS)
    assert rq.would_preempt(s1, 10 * MS) is False
    assert rq.would_preempt(s2, 10 * MS) is True
    assert (s1.avt, s2.avt) == (0, 0)               # nothing changed
    assert rq.wake(s2, 10 * MS) is True


def test_remainders_make_virtual_time_exact() -> None:
    rq = RunQueue()
    e = rq.add(ent("e", 3), 0)
    for _ in range(3):
        rq.account(e, 1, 0)
    assert e.avt == 1
    for _ in range(3000):
        rq.account(e, 1000, 0)
    assert e.avt == 1 + 1_000_000


def test_nothing_runnable() -> None:
    rq = RunQueue(ctx_allow_ns=2 * MS)
    e = rq.add(ent("e"), 0)
    rq.block(e, 0)
    assert rq.pick(0) == (None, 2 * MS)


def test_metrics_report_avt_evt_and_share() -> None:
    rq = RunQueue(ctx_allow_ns=1 * MS)
    a = rq.add(ent("a", 1), 0)
    b = rq.add(ent("b", 3, warp_ns=5 * MS), 0)
    rq.account(a, 1 * MS, 1 * MS)
    rq.account(b, 3 * MS, 4 * MS)
    m = {x.name: x for x in metrics(rq)}
    assert (m["a"].avt, m["a"].evt, m["a"].share) == (1 * MS, 1 * MS, 0.25)
    assert (m["b"].avt, m["b"].evt, m["b"].share) == (1 * MS, -4 * MS, 0.75)
    base = cpu_baseline(rq)
    rq.account(a, 2 * MS, 6 * MS)
    m = {x.name: x for x in metrics(rq, base)}
    assert (m["a"].share, m["b"].share) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"weight": 0}, "bvt: weight must be 1..1000000, not 0"),
        ({"weight": 1.5}, "bvt: weight must be an integer, not 1.5"),
        ({"warp_ns": -1}, "bvt: warp_ns must be 0..3600000000000 ns, not -1"),
        ({"unwarp_ns": 10**13}, "bvt: unwarp_ns must be 0..3600000000000 ns, not 10000000000000"),
    ],
)
def test_bad_parameters_are_one_line_errors(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError) as ei:
        BvtParams(**kw)
    assert str(ei.value) == msg


def test_bad_allowance() -> None:
    with pytest.raises(UsageError, match="context-switch allowance must be 1000"):
        RunQueue(ctx_allow_ns=0)


def test_adding_twice_is_an_error() -> None:
    rq = RunQueue()
    e = rq.add(ent("e"), 0)
    with pytest.raises(UsageError, match="already on this run queue"):
        rq.add(e, 0)


@settings(max_examples=30, deadline=None)
@given(
    weights=st.lists(st.integers(1, 8), min_size=2, max_size=5),
    ctx_ms=st.integers(1, 10),
    fractions=st.lists(st.floats(0.3, 1.0), min_size=1, max_size=20),
    warp_first=st.booleans(),
)
def test_long_run_shares_follow_the_weights(
    weights: list[int], ctx_ms: int, fractions: list[float], warp_first: bool
) -> None:
    # Always-runnable entities; the mechanism obeys each decision only for a
    # fraction of its slice (decisions are revisited early); a warp, which
    # borrows, must not change the long-run shares.  An entity's A stays
    # within about W + 2 C / w of the others', so its share is off by at most
    # w (W + 2 C / w) / T, here under 7 / 600.
    rq = RunQueue(ctx_allow_ns=ctx_ms * MS)
    es = [
        rq.add(ent(f"e{i}", w, warp_ns=(5 * ctx_ms * MS if warp_first and i == 0 else 0)), 0)
        for i, w in enumerate(weights)
    ]
    total_time = 600 * ctx_ms * MS * sum(weights)
    now = 0
    k = 0
    while now < total_time:
        who, slice_ns = rq.pick(now)
        assert who is not None
        run = max(1, int(slice_ns * fractions[k % len(fractions)]))
        k += 1
        now += run
        rq.account(who, run, now)
    for e, w in zip(es, weights, strict=True):
        assert abs(e.cpu_ns / now - w / sum(weights)) < 0.02, (e, now)
