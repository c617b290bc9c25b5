from __future__ import annotations

from common.ratelimit import TokenBucketLimiter


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_burst_then_refill_with_retry_after():
    clock = Clock()
    lim = TokenBucketLimiter(6, clock=clock)  # one token every 10 s
    assert all(lim.check("u").allowed for _ in range(6))
    denied = lim.check("u")
    assert not denied.allowed and 1 <= denied.retry_after_seconds <= 10
    clock.t += 10
    assert lim.check("u").allowed
    assert not lim.check("u").allowed


def test_users_are_independent_and_zero_disables():
    lim = TokenBucketLimiter(1, clock=Clock())
    assert lim.check("a").allowed and not lim.check("a").allowed
    assert lim.check("b").allowed
    off = TokenBucketLimiter(0)
    assert all(off.check("a").allowed for _ in range(1000))


def test_memory_is_bounded():
    lim = TokenBucketLimiter(5, clock=Clock(), max_users=10)
    for i in range(100):
        lim.check(f"user{i}")
    assert len(lim._buckets) == 10
