"""Per-user admission control for generation requests (each one costs real money on Veo).

Two limits, both answered with 429 + Retry-After by the API:
- a token bucket per user (``PHOENIX_RATE_LIMIT_PER_MINUTE``; bursts up to the same number),
  kept in process memory: on Cloud Run each instance enforces it separately, so the effective
  limit is per instance. That bounds abuse cheaply; the concurrency cap below is global.
- a cap on a user's unfinished creations (``PHOENIX_MAX_ACTIVE_PER_USER``), counted from the
  store, so it holds across instances and across the old and new dispatch paths.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int = 0


class TokenBucketLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 100_000,
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, user_id: str) -> Decision:
        if self.per_minute <= 0:  # 0 disables the limit
            return Decision(True)
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(user_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                self._buckets[user_id] = (tokens - 1.0, now)
                allowed = Decision(True)
            else:
                self._buckets[user_id] = (tokens, now)
                wait = (1.0 - tokens) / self._rate
                allowed = Decision(False, max(1, int(wait + 0.999)))
            while len(self._buckets) > self._max_users:  # forget the least recently seen
                self._buckets.popitem(last=False)
            return allowed
