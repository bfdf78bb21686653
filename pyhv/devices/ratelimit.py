"""Rate limiting for virtio queues: Firecracker's token buckets.

A :class:`TokenBucket` holds up to ``size`` tokens and refills at ``size``
tokens per ``refill_ms`` milliseconds, continuously; ``burst`` tokens more
are there once, at the start, and never come back.  A :class:`RateLimiter`
has a bandwidth bucket (tokens are bytes) and an ops bucket (tokens are
requests or frames), either of which may be absent.  A device asks it
before serving a request; when it says to wait, the device stops serving
that queue and asks the I/O thread to call it back after that long
(:meth:`pyhv.vmm.iothread.IoThread.call_later`): nothing sleeps.

A request bigger than a whole bucket is let through once the bucket is
full, leaving it in debt (a negative budget), so it is paid for with time,
as Firecracker's over-consumption is.  Pure: the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


#: a shortfall this small is float rounding of the refill, not a missing token
EPSILON = 1e-6


class TokenBucket:
    def __init__(self, size: int, refill_ms: int, burst: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size <= 0 or refill_ms <= 0 or burst < 0:
            raise ValueError("a token bucket needs a positive size and refill time")
        self.size = size
        self.refill_ms = refill_ms
        self.burst = burst  # what is left of the one-time burst
        self.budget = float(size)
        self._rate = size / (refill_ms / 1000.0)  # tokens a second
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.budget = min(float(self.size), self.budget + (now - self._last) * self._rate)
        self._last = now

    def wait(self, tokens: int) -> float:
        """Seconds until ``tokens`` can be taken (0.0: now)."""
        if tokens <= self.burst:
            return 0.0
        self._refill()
        need = min(tokens - self.burst, self.size)  # an oversized request waits only for a full bucket
        short = need - self.budget
        return 0.0 if short <= EPSILON else short / self._rate

    def take(self, tokens: int) -> None:
        """Take ``tokens`` (after :meth:`wait` said 0.0, or by force: the budget may go negative)."""
        from_burst = min(tokens, self.burst)
        self.burst -= from_burst
        if tokens > from_burst:
            self._refill()
            self.budget -= tokens - from_burst


class RateLimiter:
    """A bandwidth bucket (bytes) and an ops bucket (requests), each optional."""

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None) -> None:
        self.bandwidth = bandwidth
        self.ops = ops
        self.throttled = 0  # times a queue had to wait

    @classmethod
    def of(cls, limit: Any, clock: Callable[[], float] = time.monotonic) -> RateLimiter | None:
        """The limiter a description's :class:`pyhv.model.RateLimit` asks for (None: no limit)."""
        if limit is None or (limit.bandwidth is None and limit.ops is None):
            return None

        def bucket(b: Any) -> TokenBucket | None:
            return None if b is None else TokenBucket(b.size, b.refill_ms, b.burst, clock)

        return cls(bucket(limit.bandwidth), bucket(limit.ops))

    def wait(self, ops: int, nbytes: int, take: bool = True) -> float:
        """0.0 and (with ``take``) the tokens taken, or the seconds to wait before
        asking again (nothing taken)."""
        wait = max(self.ops.wait(ops) if self.ops else 0.0, self.bandwidth.wait(nbytes) if self.bandwidth else 0.0)
        if wait > 0.0:
            self.throttled += 1
            return wait
        if take:
            self.charge(ops, nbytes)
        return 0.0

    def charge(self, ops: int, nbytes: int) -> None:
        """Take tokens whatever the budget (a received frame's bytes, known only once it is in)."""
        if self.ops is not None and ops:
            self.ops.take(ops)
        if self.bandwidth is not None and nbytes:
            self.bandwidth.take(nbytes)
