"""A token bucket per client, for routes that anyone who reaches the gateway may call (the demo page's token mint,
docs/contract.md#demo-page).

Each client (by address) has a bucket of ``burst`` tokens that refills at ``rate`` tokens per second; a request takes
one token or is refused, and the refusal says how long until a token is there. The table of buckets is bounded: at
``max_clients`` the client heard from least recently is forgotten, which at worst gives that client a fresh burst.
A bucket that has refilled completely holds no information, so forgetting it changes nothing.

Pure: the caller passes the clock reading (monotonic seconds) with every request.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

# Float slack: a client that waits exactly the ``retry_after`` it was told is let through despite rounding.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Verdict:
    """A request's answer: allowed, or refused until ``retry_after`` seconds from now have passed."""

    allowed: bool
    retry_after: float = 0.0

    @property
    def retry_after_whole_seconds(self) -> int:
        """``Retry-After`` is whole seconds: rounded up, so that a client which waits that long is let through."""
        return max(1, math.ceil(self.retry_after))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by client; see the module docstring."""

    def __init__(self, *, rate: float, burst: int, max_clients: int) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be positive, burst and max_clients at least 1")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, now: float) -> Verdict:
        """One request from ``client`` at ``now``: take a token if there is one."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(client)
            # A clock reading earlier than the last (never from a monotonic clock) refills nothing.
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return Verdict(True)
        return Verdict(False, (1.0 - bucket.tokens) / self.rate)
