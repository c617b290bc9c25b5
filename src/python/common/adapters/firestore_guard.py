"""The production concurrency guard: one Firestore document per guarded resource.

``concurrency/<resource>`` holds ``{"holders": {holder: expires_at}}``; each acquire, renew and
release is a transaction over that one document, so Cloud Run Jobs on any number of instances
share one cap (e.g. at most N Veo operations in flight). Expired holders are dropped on every
write, so a job killed while holding a slot frees it after its TTL.

One document is a write hot spot (Firestore sustains about one write per second per document
with contention), which is fine at Veo's scale: a handful of acquires per video plus one renewal
per poll interval. Contention shows up as retried transactions, not as wrong counts.

Only the video jobs take slots, so the guard speaks Firestore over REST with the standard
library, like the jobs' creation store (``firestore_rest_store``): no job loads
google-cloud-firestore.

Note: the local Firestore emulator has no transaction isolation, so tests against it check the
bookkeeping, not the race; the race is proven on the SQLite guard.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from common.adapters.firestore_rest_store import FirestoreRest, rest_client, run_transaction
from common.config import Settings
from common.ports import ConcurrencyGuard

COLLECTION = "concurrency"
MAX_ATTEMPTS = 20


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _doc_id(resource: str) -> str:
    return resource.replace("/", "_") or "_"


def _live(data: dict[str, Any] | None, now: datetime) -> dict[str, datetime]:
    holders = (data or {}).get("holders") or {}
    return {h: exp for h, exp in holders.items() if isinstance(exp, datetime) and exp > now}


class FirestoreConcurrencyGuard(ConcurrencyGuard):
    def __init__(
        self,
        rest: FirestoreRest,
        *,
        prefix: str = "",
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._rest = rest
        self._collection = f"{prefix}{COLLECTION}"
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> "FirestoreConcurrencyGuard":
        return cls(rest_client(settings), prefix=settings.firestore_prefix)

    def _doc(self, resource: str) -> str:
        return f"{self._rest.documents}/{self._collection}/{_doc_id(resource)}"

    def _run(self, resource: str, body: Callable[[dict[str, datetime], datetime], Any]) -> Any:
        name = self._doc(resource)

        def apply(tx: Any) -> Any:
            data = tx.get(name)
            now = self._clock()
            holders = _live(data, now)
            result, new_holders = body(holders, now)
            if new_holders is not None:
                # updated_at: written as the server's commit time (set_write's transform).
                tx.set(name, {"holders": new_holders, "updated_at": now})
            return result

        # More attempts than the default 5: every video job of the deployment writes this one
        # document (acquire, a renewal per poll, release), so aborted commits are expected.
        result, _ = run_transaction(self._rest, apply, attempts=MAX_ATTEMPTS)
        return result

    def acquire(self, resource: str, holder: str, *, limit: int, ttl: timedelta) -> bool:
        # Waiters poll this while the cap is reached. A plain read first keeps them out of
        # transactions (server SDK transactions lock what they read, which would stall the
        # holders' renewals); only an apparent free slot is claimed transactionally.
        current = self.holders(resource)
        if holder not in current and len(current) >= limit:
            return False

        def body(holders: dict[str, datetime], now: datetime) -> tuple[bool, Any]:
            if holder not in holders and len(holders) >= limit:
                return False, None
            return True, {**holders, holder: now + ttl}

        return bool(self._run(resource, body))

    def renew(
        self, resource: str, holder: str, *, ttl: timedelta, limit: int | None = None
    ) -> bool:
        def body(holders: dict[str, datetime], now: datetime) -> tuple[bool, Any]:
            held = holder in holders
            if not held and limit is not None and len(holders) >= limit:
                return False, None
            return held, {**holders, holder: now + ttl}

        return bool(self._run(resource, body))

    def release(self, resource: str, holder: str) -> None:
        def body(holders: dict[str, datetime], now: datetime) -> tuple[None, Any]:
            holders.pop(holder, None)
            return None, holders

        self._run(resource, body)

    def holders(self, resource: str) -> dict[str, datetime]:
        return _live(self._rest.get(self._doc(resource)), self._clock())

    def close(self) -> None:
        self._rest.close()
