"""How creations and quota records are laid out in Firestore: one layout, two clients.

The API and the sweeper talk to Firestore through google-cloud-firestore (gRPC,
``firestore_store``); the jobs through its REST API with the standard library
(``firestore_rest_store``), because a job pays its imports before every claim. Both must read
what the other wrote, so the collection names, document ids and field types live here, and
nothing here imports a Google SDK.
"""

from __future__ import annotations

import hashlib
from datetime import timezone
from typing import Any

from common.domain import creation as lifecycle
from common.domain.creation import Creation

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
