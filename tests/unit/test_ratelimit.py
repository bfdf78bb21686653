"""Token buckets and rate limiters with a fake clock."""

from __future__ import annotations

import pytest

from pyhv.devices.ratelimit import RateLimiter, TokenBucket
from pyhv.model import Bucket, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_gives_its_size_then_makes_callers_wait_for_the_refill() -> None:
    clock = Clock()
    b = TokenBucket(10, 1000, clock=clock)
    for _ in range(10):
        assert b.wait(1) == 0.0
        b.take(1)
    assert b.wait(1) == pytest.approx(0.1)
    clock.now += 0.05
    assert b.wait(1) == pytest.approx(0.05)
    clock.now += 0.05
    assert b.wait(1) == 0.0


def test_refill_never_goes_past_the_size() -> None:
    clock = Clock()
    b = TokenBucket(10, 1000, clock=clock)
    b.take(10)
    clock.now += 60
    b.take(10)
    assert b.wait(1) == pytest.approx(0.1)


def test_one_time_burst_is_spent_first_and_never_comes_back() -> None:
    clock = Clock()
    b = TokenBucket(10, 1000, burst=5, clock=clock)
    b.take(5)
    assert (b.burst, b.budget) == (0, 10.0)
    b.take(10)
    clock.now += 10
    assert (b.burst, b.wait(11)) == (0, 0.0)  # an oversized request waits only for a full bucket


def test_an_oversized_request_goes_through_a_full_bucket_and_is_paid_for_with_time() -> None:
    clock = Clock()
    b = TokenBucket(10, 1000, clock=clock)
    assert b.wait(30) == 0.0
    b.take(30)  # 20 tokens of debt
    assert b.wait(1) == pytest.approx(2.1)


def test_limiter_takes_from_both_buckets_or_from_neither() -> None:
    clock = Clock()
    limiter = RateLimiter(TokenBucket(1000, 1000, clock=clock), TokenBucket(10, 1000, clock=clock))
    assert limiter.wait(1, 600) == 0.0
    assert limiter.wait(1, 600) == pytest.approx(0.2)  # bandwidth short; the op is not taken
    assert (limiter.ops.budget if limiter.ops else None, limiter.throttled) == (9.0, 1)


def test_limiter_without_take_only_checks_and_charge_takes_whatever_the_budget() -> None:
    clock = Clock()
    limiter = RateLimiter(None, TokenBucket(2, 1000, clock=clock))
    assert limiter.wait(1, 0, take=False) == 0.0
    limiter.charge(3, 0)
    assert limiter.wait(1, 0, take=False) == pytest.approx(1.0)


def test_limiter_of_a_description_limit() -> None:
    assert RateLimiter.of(None) is None and RateLimiter.of(RateLimit()) is None
    limiter = RateLimiter.of(RateLimit(ops=Bucket(5, 100, 2)))
    assert limiter is not None and limiter.bandwidth is None and limiter.ops is not None
    assert (limiter.ops.size, limiter.ops.refill_ms, limiter.ops.burst) == (5, 100, 2)


@pytest.mark.parametrize("size,refill,burst", [(0, 1000, 0), (10, 0, 0), (10, 10, -1)])
def test_bucket_refuses_impossible_parameters(size: int, refill: int, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(size, refill, burst)
