"""The production creation store: one Firestore document per creation, id = creation id.

The document is ``lifecycle.to_dict`` (the one schema every store shares) with its timestamps
stored as Firestore timestamps, so the console shows dates and range queries compare instants,
not strings. ``updated_at`` is always the server's commit time (SERVER_TIMESTAMP): API instances
and job containers have independent clocks, and the sweeper compares ``updated_at`` across them.

``update`` runs read -> lifecycle function -> write inside a Firestore transaction, which is
what makes the claim safe when Cloud Tasks delivers twice: the second transaction is aborted
and retried, re-reads the claimed record and the lifecycle raises AlreadyClaimed.

Queries need the composite indexes in ``src/python/api/deploy/firestore.indexes.json``.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from common import observability
from common.adapters import firestore_schema as schema
from common.adapters.process_wide import process_wide
from common.config import Settings
from common.domain import creation as lifecycle
from common.domain import quota as quotas
from common.domain.creation import Creation
from common.domain.errors import NotFound
from common.domain.quota import Refusal, UserQuota
from common.ports import AdmissionAsk, CreationStore, ScanQuery

COLLECTION = schema.COLLECTION
QUOTA_COLLECTION = schema.QUOTA_COLLECTION
# The REST API's operator names (firestore_schema's plans) as the SDK spells them.
_SDK_OPERATORS = {"EQUAL": "==", "IN": "in", "GREATER_THAN_OR_EQUAL": ">=", "LESS_THAN": "<"}


def firestore_client(project: str, database: str = "(default)") -> firestore.Client:
    """The process-wide client for ``project``/``database`` (``process_wide``). The key
    includes FIRESTORE_EMULATOR_HOST so a test switching emulators never gets a stale channel.
    """
    return _firestore_client(project, database, os.environ.get("FIRESTORE_EMULATOR_HOST", ""))


@process_wide
def _firestore_client(project: str, database: str, emulator: str) -> firestore.Client:
    observability.instrument_grpc()  # before the channel exists: its calls become spans
    # With FIRESTORE_EMULATOR_HOST set the library connects there without credentials, but it
    # still needs a project id to build document paths.
    kwargs: dict[str, Any] = {"database": database}
    if project or emulator:
        kwargs["project"] = project or "phoenix-local"
    return firestore.Client(**kwargs)


def _to_document(c: Creation) -> dict[str, Any]:
    doc = schema.creation_document(c)
    doc["updated_at"] = firestore.SERVER_TIMESTAMP
    return doc


def _from_document(data: Mapping[str, Any] | None) -> Creation:
    if data is None:  # only called for snapshots that exist
        raise NotFound("document vanished while reading")
    return lifecycle.from_dict(data)


def _commit_time(value: Any, fallback: datetime) -> datetime:
    """A write's commit time is the value Firestore stored for SERVER_TIMESTAMP."""
    if value is None:
        return fallback
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    # protobuf Timestamp (Transaction.commit_time is the raw proto)
    return value.ToDatetime(tzinfo=timezone.utc)


class FirestoreCreationStore(CreationStore):
    def __init__(self, client: firestore.Client, *, prefix: str = "") -> None:
        self._client = client
        self._collection = client.collection(f"{prefix}{COLLECTION}")
        self._quotas = client.collection(f"{prefix}{QUOTA_COLLECTION}")

    @classmethod
    def from_settings(cls, settings: Settings) -> "FirestoreCreationStore":
        client = firestore_client(settings.gcp_project, settings.firestore_database)
        return cls(client, prefix=settings.firestore_prefix)

    @property
    def collection_name(self) -> str:
        return self._collection.id

    def add(self, creation: Creation) -> None:
        try:
            self._collection.document(creation.id).create(_to_document(creation))
        except gexc.AlreadyExists:
            raise ValueError(f"creation {creation.id} already exists") from None

    def get(self, creation_id: str) -> Creation | None:
        snap = self._collection.document(creation_id).get()
        return _from_document(snap.to_dict()) if snap.exists else None

    def update(self, creation_id: str, change: Callable[[Creation], Creation]) -> Creation:
        ref = self._collection.document(creation_id)

        # The function may run several times: Firestore retries it when a concurrent
        # transaction touched the document (Aborted). ``change`` is a pure lifecycle function,
        # so re-running it on the fresh record is exactly right.
        @firestore.transactional
        def apply(tx: firestore.Transaction) -> tuple[Creation, bool]:
            snap = ref.get(transaction=tx)
            if not snap.exists:
                raise NotFound(creation_id)
            current = _from_document(snap.to_dict())
            updated = change(current)
            if updated is current:
                return current, False
            if updated.status.terminal and not current.status.terminal:
                # Free the user's admission slot in the same transaction (reads before writes).
                self._release_in_tx(tx, updated.user_id, creation_id)
            tx.set(ref, _to_document(updated))
            return updated, True

        tx = self._client.transaction()
        result, written = apply(tx)
        if not written:
            return result
        committed = _commit_time(getattr(tx, "commit_time", None), result.updated_at)
        return _with_updated_at(result, committed)

    def list_for_user(self, user_id: str, limit: int) -> list[Creation]:
        # Needs the (user_id ASC, created_at DESC) composite index; Firestore breaks created_at
        # ties by document id in the same direction, like the SQLite store's "id DESC".
        query = (
            self._collection.where(filter=FieldFilter("user_id", "==", user_id))
            .order_by("created_at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [_from_document(s.to_dict()) for s in query.stream()]

    def _scan(self, filters: ScanQuery) -> list[Creation]:
        plan = schema.plan_scan(filters)
        if plan is None:
            return []
        query: Any = self._collection
        for field, op, value in plan.where:
            query = query.where(filter=FieldFilter(field, _SDK_OPERATORS[op], value))
        query = query.order_by(plan.order_by).limit(plan.limit)
        return schema.finish_scan([_from_document(s.to_dict()) for s in query.stream()], plan)

    def delete(self, creation_id: str) -> bool:
        ref = self._collection.document(creation_id)
        if not ref.get().exists:
            return False
        ref.delete()
        return True

    def ping(self) -> None:
        # A bounded read of one (possibly missing) document: proves auth and reachability.
        self._collection.document("_ping").get(timeout=5)

    # --- admission ------------------------------------------------------------------------

    def _quota_ref(self, user_id: str) -> Any:
        return self._quotas.document(schema.quota_doc_id(user_id))

    def _release_in_tx(self, tx: firestore.Transaction, user_id: str, creation_id: str) -> None:
        qref = self._quota_ref(user_id)
        snap = qref.get(transaction=tx)
        if not snap.exists:
            return
        user = quotas.user_from_dict(user_id, snap.to_dict())
        released = quotas.release(user, creation_id)
        if released is not user:
            tx.set(qref, quotas.user_to_dict(released))

    def _admit(self, ask: AdmissionAsk) -> Refusal | None:
        user_id, creation_id, policy, now, insert = ask
        qref = self._quota_ref(user_id)
        gref = self._quotas.document(schema.GLOBAL_QUOTA)
        cref = self._collection.document(insert.id) if insert is not None else None

        @firestore.transactional
        def apply(tx: firestore.Transaction) -> Refusal | None:
            if cref is not None and cref.get(transaction=tx).exists:
                raise ValueError(f"creation {cref.id} already exists")
            snap = qref.get(transaction=tx)
            user = quotas.user_from_dict(user_id, snap.to_dict() if snap.exists else None)
            glob = None
            if policy.global_per_minute > 0:
                gsnap = gref.get(transaction=tx)
                glob = quotas.global_from_dict(gsnap.to_dict() if gsnap.exists else None)
            decided = quotas.admit(user, glob, policy, creation_id, now)
            if isinstance(decided, Refusal):
                return decided
            new_user, new_glob = decided
            if cref is not None and insert is not None:
                tx.create(cref, _to_document(insert))
            if new_user is not user:
                tx.set(qref, quotas.user_to_dict(new_user))
            if new_glob is not None and new_glob is not glob:
                tx.set(gref, quotas.global_to_dict(new_glob))
            return None

        try:
            return apply(self._client.transaction(max_attempts=schema.QUOTA_TX_ATTEMPTS))
        except gexc.AlreadyExists:
            raise ValueError(f"creation {creation_id} already exists") from None
        except ValueError as exc:
            # Still contended after every attempt (one user's burst on one document): nothing
            # was written, so this is a refusal to retry shortly, never a 500.
            if isinstance(exc.__cause__, gexc.Aborted) or "attempts" in str(exc):
                return Refusal("busy", "too many requests at once; try again in a moment", 1)
            raise

    def release_quota(self, user_id: str, creation_id: str) -> None:
        @firestore.transactional
        def apply(tx: firestore.Transaction) -> None:
            self._release_in_tx(tx, user_id, creation_id)

        apply(self._client.transaction(max_attempts=schema.QUOTA_TX_ATTEMPTS))

    def quota(self, user_id: str) -> UserQuota:
        snap = self._quota_ref(user_id).get()
        return quotas.user_from_dict(user_id, snap.to_dict() if snap.exists else None)

    def quota_holders(self, limit: int = 1000) -> list[UserQuota]:
        query = self._quotas.where(filter=FieldFilter("active_count", ">", 0)).limit(limit)
        found = []
        for snap in query.stream():
            data = snap.to_dict() or {}
            user_id = data.get("user_id")
            if isinstance(user_id, str):
                found.append(quotas.user_from_dict(user_id, data))
        return found


def _with_updated_at(c: Creation, updated_at: datetime) -> Creation:
    return dataclasses.replace(c, updated_at=updated_at)
