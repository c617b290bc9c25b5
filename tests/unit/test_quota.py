"""The admission rules (common.domain.quota): cap, sliding per-minute window, global ceiling."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from common.domain import quota as q
from common.domain.quota import GlobalQuota, QuotaPolicy, Refusal, UserQuota

T0 = datetime(2026, 12, 1, 10, 0, 30, tzinfo=timezone.utc)


def _admit_many(policy: QuotaPolicy, n: int, *, at: datetime = T0, user=None, glob=None):
    user = user or UserQuota("u")
    results = []
    for i in range(n):
        decided = q.admit(user, glob, policy, f"c{i}", at)
        results.append(decided)
        if not isinstance(decided, Refusal):
            user, glob = decided
    return user, glob, results


def test_the_cap_counts_unfinished_creations_and_release_frees_a_slot():
    """Shown to fail when the unfinished-creation cap is removed (scratch branch
    scratch/promises-break-quota-cap, 2026-12-01)."""
    policy = QuotaPolicy(max_active=3, per_minute=0)
    user, _, results = _admit_many(policy, 5)
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(refused) == 2 and refused[0].code == "too_many_active"
    assert refused[0].retry_after_seconds > 0 and "limit 3" in refused[0].message
    assert set(user.active) == {"c0", "c1", "c2"}
    user = q.release(user, "c1")
    assert q.release(user, "c1") is user  # idempotent
    again = q.admit(user, None, policy, "c9", T0)
    assert not isinstance(again, Refusal) and set(again[0].active) == {"c0", "c2", "c9"}


def test_admitting_an_active_id_again_takes_no_second_slot():
    policy = QuotaPolicy(max_active=1, per_minute=1)
    user, _, _ = _admit_many(policy, 1)
    assert q.admit(user, None, policy, "c0", T0) == (user, None)


def test_per_minute_is_a_sliding_window_with_an_exact_retry_after():
    """Shown to fail when the per-minute check is removed (scratch branch
    scratch/promises-break-quota-rate, 2026-12-01)."""
    policy = QuotaPolicy(max_active=0, per_minute=5)
    user, _, results = _admit_many(policy, 7)
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert [isinstance(r, Refusal) for r in results] == [False] * 5 + [True] * 2
    assert refusals[0].code == "rate_limited" and refusals[0].retry_after_seconds == 60
    # 59 s later the window still holds all five; at 60 s they have left it.
    assert isinstance(q.admit(user, None, policy, "x", T0 + timedelta(seconds=59)), Refusal)
    assert not isinstance(q.admit(user, None, policy, "x", T0 + timedelta(seconds=60.001)), Refusal)
    # A calendar-minute boundary gives no second burst (T0 is hh:00:30, +31 s is hh:01:01).
    assert isinstance(q.admit(user, None, policy, "y", T0 + timedelta(seconds=31)), Refusal)


def test_refusals_consume_nothing():
    policy = QuotaPolicy(max_active=2, per_minute=2, global_per_minute=100)
    user, glob, _ = _admit_many(policy, 2, glob=GlobalQuota())
    for i in range(10):
        assert isinstance(q.admit(user, glob, policy, f"r{i}", T0), Refusal)
    assert glob.count == 2 and len(user.recent) == 2


def test_the_global_ceiling_counts_every_user_per_minute():
    policy = QuotaPolicy(max_active=0, per_minute=0, global_per_minute=3)
    glob = GlobalQuota()
    codes = []
    for i in range(5):
        decided = q.admit(UserQuota(f"user{i}"), glob, policy, f"c{i}", T0)
        if isinstance(decided, Refusal):
            codes.append(decided.code)
            assert decided.retry_after_seconds == 30  # until the next minute
        else:
            glob = decided[1]
    assert codes == ["busy", "busy"]
    nxt = q.admit(UserQuota("late"), glob, policy, "late", T0 + timedelta(seconds=30))
    assert not isinstance(nxt, Refusal) and nxt[1].count == 1


def test_records_round_trip_through_their_dicts():
    policy = QuotaPolicy(max_active=5, per_minute=5, global_per_minute=5)
    user, glob, _ = _admit_many(policy, 3, glob=GlobalQuota())
    assert q.user_from_dict("u", q.user_to_dict(user)) == user
    assert q.user_to_dict(user)["active_count"] == 3
    assert q.global_from_dict(q.global_to_dict(glob)) == glob
    assert q.user_from_dict("nobody", None) == UserQuota("nobody")
