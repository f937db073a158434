"""Overload protection for the agent API: per-client token buckets and a concurrency gate.

Both are plain objects with an injected clock, so their arithmetic is tested without sleeping;
webhook.middleware.AgentLimits applies them to requests before a body is read.

Per-client buckets (`RateLimiter`): a bucket holds up to `burst` tokens and gains `rate` a
second; a request takes one or is refused with the time until one is there. Buckets live in a
bounded LRU: a client inventing keys (node names are not secret, and challenges are
unauthenticated) evicts the least recently used buckets instead of growing memory. An evicted
bucket comes back full, so eviction can only let a request through, never refuse one.

The gate (`ConcurrencyGate`): at most `limit` agent requests are served at once and at most
`queue` more wait, in arrival order, on the event loop; a request beyond both is refused at
once. Waiting is bounded by the queue's length times the service time, which is what keeps an
overloaded verifier's answers prompt: beyond the queue, the client is told to come back. The
second half of the queue is kept for requests that finish what an earlier one started.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

Monotonic = Callable[[], float]

# A cluster's nodes (Kubernetes supports 5,000) fit many times over; at about 200 bytes a bucket
# the table stays under 20 MiB however many keys a client invents.
MAX_BUCKETS: Final = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per key. `rate` tokens a second, at most `burst` (>= 1) banked."""

    def __init__(
        self, rate: float, burst: int, *, max_buckets: int = MAX_BUCKETS, clock: Monotonic = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate must be positive, burst and max_buckets at least 1")
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Take a token for `key`: 0.0 when it had one, else the seconds until it will have."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # max(): a clock that stepped back must not drain the bucket.
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After value (whole seconds, RFC 9110) no earlier than `seconds` from now."""
    return str(max(1, math.ceil(seconds)))


class ConcurrencyGate:
    """At most `limit` holders at once and `queue` waiting (FIFO) on the event loop.

    `full()` and entering happen with no await between them in the caller, so on one event loop
    the check cannot go stale before the request is counted.
    """

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("limit must be at least 1 and queue at least 0")
        self.limit = limit
        self.queue = queue
        self.active = 0
        self.waiting = 0
        # Created on first use: asyncio primitives belong to the loop that first waits on them.
        self._semaphore: asyncio.Semaphore | None = None

    def full(self, *, finishes: bool = True) -> bool:
        """No room for one more request. One that starts a round of requests (an enrollment, a
        challenge) may only fill the first half of the queue; one that finishes it (activation,
        evidence) the whole: overloaded, the verifier completes the rounds it began instead of
        starting new ones whose second step would be shed, wasting the first."""
        room = self.queue if finishes else self.queue // 2
        return self.active + self.waiting >= self.limit + room

    async def __aenter__(self) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.active -= 1
        assert self._semaphore is not None
        self._semaphore.release()
