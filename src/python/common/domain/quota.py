"""Admission rules for generation requests, as pure functions over one quota record per user.

Every generation costs real money (Veo, Imagen), so admitting one is a decision that must hold
across every API instance and thread. The stores make it atomic: one transaction reads the
user's quota record (and, if configured, the global one), applies ``admit`` below and writes the
new record together with the new creation. Nothing here does I/O, so the SQLite, Firestore and
in-memory stores enforce the same rules and none of them re-implements them.

A user's record holds:

* ``active``: the ids of their unfinished creations (bounded by the cap). Ids, not a counter,
  so releasing is idempotent (a job finishing twice, a cancel racing a completion, the sweeper
  reconciling) and the sweeper can recompute the set from the creations themselves.
* ``recent``: when their last admissions happened, newest last, at most ``per_minute`` of them:
  a sliding 60 s window, so "N per minute" means N in ANY 60 s, not 2N across a minute boundary.

The optional global ceiling counts admissions of all users per calendar minute in one record
(it is a write hot spot, which is acceptable at Veo's scale and bounded by the ceiling itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

from common.domain.timestamps import from_iso, to_iso

WINDOW = timedelta(seconds=60)
# A user at the cap waits for a creation to finish; images take seconds, videos minutes.
ACTIVE_RETRY_AFTER_SECONDS = 15


@dataclass(frozen=True)
class QuotaPolicy:
    """0 disables a limit."""

    max_active: int = 10
    per_minute: int = 30
    global_per_minute: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.max_active or self.per_minute or self.global_per_minute)


@dataclass(frozen=True)
class UserQuota:
    user_id: str
    active: Mapping[str, datetime] = field(default_factory=dict)
    recent: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class GlobalQuota:
    window_start: datetime | None = None
    count: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted; ``code`` is stable, ``message`` is safe to show."""

    code: str
    message: str
    retry_after_seconds: int


def _seconds_until(when: datetime, now: datetime) -> int:
    return max(1, math.ceil((when - now).total_seconds()))


def _minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def admit(
    user: UserQuota,
    glob: GlobalQuota | None,
    policy: QuotaPolicy,
    creation_id: str,
    now: datetime,
) -> tuple[UserQuota, GlobalQuota | None] | Refusal:
    """The records to write if ``creation_id`` is admitted now, or the Refusal.

    A refused request consumes nothing. Admitting an id that is already active changes nothing
    (a retried store call must not take a second slot)."""
    if creation_id in user.active:
        return user, glob
    if policy.max_active > 0 and len(user.active) >= policy.max_active:
        return Refusal(
            "too_many_active",
            f"you already have {len(user.active)} creations in progress "
            f"(limit {policy.max_active}); wait for one to finish",
            ACTIVE_RETRY_AFTER_SECONDS,
        )
    recent = tuple(t for t in user.recent if t > now - WINDOW)
    if policy.per_minute > 0 and len(recent) >= policy.per_minute:
        # The oldest admission in the window leaves it first.
        oldest = recent[len(recent) - policy.per_minute]
        return Refusal(
            "rate_limited",
            f"at most {policy.per_minute} generation requests per minute",
            _seconds_until(oldest + WINDOW, now),
        )
    new_glob = glob
    if policy.global_per_minute > 0:
        current = glob or GlobalQuota()
        minute = _minute(now)
        count = current.count if current.window_start == minute else 0
        if count >= policy.global_per_minute:
            return Refusal(
                "busy",
                "the service is at capacity right now; try again in a minute",
                _seconds_until(minute + WINDOW, now),
            )
        new_glob = GlobalQuota(window_start=minute, count=count + 1)
    active = dict(user.active)
    if policy.max_active > 0:
        active[creation_id] = now
    if policy.per_minute > 0:
        recent = (recent + (now,))[-policy.per_minute :]
    else:
        recent = ()
    return replace(user, active=active, recent=recent), new_glob


def release(user: UserQuota, creation_id: str) -> UserQuota:
    """Free the slot ``creation_id`` held; a no-op when it holds none."""
    if creation_id not in user.active:
        return user
    active = {k: v for k, v in user.active.items() if k != creation_id}
    return replace(user, active=active)


# --- Serialisation shared by the stores ------------------------------------------------------


def user_to_dict(q: UserQuota) -> dict[str, Any]:
    return {
        "user_id": q.user_id,
        "active": {k: to_iso(v) for k, v in q.active.items()},
        "active_count": len(q.active),  # lets Firestore query records holding slots
        "recent": [to_iso(t) for t in q.recent],
    }


def user_from_dict(user_id: str, d: Mapping[str, Any] | None) -> UserQuota:
    if not d:
        return UserQuota(user_id)
    active = {str(k): from_iso(v) for k, v in (d.get("active") or {}).items()}
    recent = tuple(sorted(from_iso(t) for t in d.get("recent") or ()))
    return UserQuota(user_id, active, recent)


def global_to_dict(q: GlobalQuota) -> dict[str, Any]:
    return {
        "window_start": to_iso(q.window_start) if q.window_start else None,
        "count": q.count,
    }


def global_from_dict(d: Mapping[str, Any] | None) -> GlobalQuota:
    if not d or not d.get("window_start"):
        return GlobalQuota()
    return GlobalQuota(from_iso(d["window_start"]), int(d.get("count") or 0))
