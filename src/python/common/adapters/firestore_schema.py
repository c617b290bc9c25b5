"""How creations and quota records are laid out in Firestore: one layout, two clients.

The API and the sweeper talk to Firestore through google-cloud-firestore (gRPC,
``firestore_store``); the jobs through its REST API with the standard library
(``firestore_rest_store``), because a job pays its imports before every claim. Both must read
what the other wrote, so the collection names, document ids and field types live here, and
nothing here imports a Google SDK.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, NamedTuple

from common.domain import creation as lifecycle
from common.domain.creation import Creation
from common.ports import ScanQuery

COLLECTION = "creations"
# Admission: quotas/u_<hash of user id> per user, quotas/global for the optional ceiling. The
# id is hashed because user ids are not guaranteed to be valid document ids ("/", "__x__").
QUOTA_COLLECTION = "quotas"
GLOBAL_QUOTA = "global"
# Every admission of one user contends on one document: more attempts than the default 5.
QUOTA_TX_ATTEMPTS = 20

# Stored as Firestore timestamps (not ISO strings), so the console shows dates and range
# queries compare instants. ``updated_at`` is always the server's commit time, written by the
# client as a server-timestamp transform: API instances and job containers have independent
# clocks, and the sweeper compares ``updated_at`` across them.
TIMESTAMP_FIELDS = (
    "created_at",
    "updated_at",
    "lease_expires_at",
    "claimed_at",
    "finished_at",
    "dispatched_at",
    "start_marker_at",
    "cancel_requested_at",
    "cancelled_at",
)


def quota_doc_id(user_id: str) -> str:
    return "u_" + hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


def creation_document(c: Creation) -> dict[str, Any]:
    """The creation's fields with its timestamps as aware UTC datetimes; each client replaces
    ``updated_at`` with its own server-timestamp sentinel."""
    doc = lifecycle.to_dict(c)
    for name in TIMESTAMP_FIELDS:
        value = getattr(c, name)
        doc[name] = value.astimezone(timezone.utc) if value is not None else None
    return doc


class ScanPlan(NamedTuple):
    """``CreationStore.scan`` as one Firestore query: ``(field, operator, value)`` filters
    (operators as the REST API names them), the order and the filter applied afterwards."""

    where: list[tuple[str, str, Any]]
    order_by: str
    limit: int
    created_after_in_memory: datetime | None


def plan_scan(filters: ScanQuery) -> ScanPlan | None:
    """The query both adapters send for ``scan`` (None: nothing can match).

    Firestore orders only by a field it also range-filters first, so ``created_after`` alone
    (the dashboard's query) is served from the ``created_at`` index and re-sorted afterwards;
    combined with ``updated_before`` it is applied in memory after the ``updated_at`` query (no
    caller combines them; the limit then counts before it). The deployed composite indexes
    serve exactly these shapes (tests/integration/test_firestore_indexes.py)."""
    statuses, updated_before, created_after, limit = filters
    where: list[tuple[str, str, Any]] = []
    if statuses is not None:
        values = [s.value for s in statuses]
        if not values:
            return None
        where.append(("status", "IN", values))
    if created_after is not None and updated_before is None:
        where.append(("created_at", "GREATER_THAN_OR_EQUAL", created_after))
        return ScanPlan(where, "created_at", limit, None)
    if updated_before is not None:
        where.append(("updated_at", "LESS_THAN", updated_before))
    return ScanPlan(where, "updated_at", limit, created_after)


def finish_scan(found: list[Creation], plan: ScanPlan) -> list[Creation]:
    """Oldest ``updated_at`` first, like the other stores."""
    if plan.created_after_in_memory is not None:
        found = [c for c in found if c.created_at >= plan.created_after_in_memory]
    found.sort(key=lambda c: c.updated_at)
    return found
