"""An in-process creation store: the fake for fast unit tests (no I/O), and the reference the
contract tests hold the real adapters to. A lock gives it the same atomic ``update``."""

from __future__ import annotations

import threading
from typing import Callable

from common.domain import quota as quotas
from common.domain.creation import Creation
from common.domain.errors import NotFound
from common.domain.quota import GlobalQuota, Refusal, UserQuota
from common.ports import AdmissionAsk, CreationStore, ScanQuery


class InMemoryCreationStore(CreationStore):
    def __init__(self) -> None:
        self._items: dict[str, Creation] = {}
        self._quotas: dict[str, UserQuota] = {}
        self._global = GlobalQuota()
        self._lock = threading.Lock()

    def add(self, creation: Creation) -> None:
        with self._lock:
            if creation.id in self._items:
                raise ValueError(f"creation {creation.id} already exists")
            self._items[creation.id] = creation

    def get(self, creation_id: str) -> Creation | None:
        return self._items.get(creation_id)

    def update(self, creation_id: str, change: Callable[[Creation], Creation]) -> Creation:
        with self._lock:
            current = self._items.get(creation_id)
            if current is None:
                raise NotFound(creation_id)
            updated = change(current)
            self._items[creation_id] = updated
            if updated.status.terminal and not current.status.terminal:
                self._release_locked(updated.user_id, creation_id)
            return updated

    def list_for_user(self, user_id: str, limit: int) -> list[Creation]:
        mine = [c for c in self._items.values() if c.user_id == user_id]
        mine.sort(key=lambda c: (c.created_at, c.id), reverse=True)
        return mine[:limit]

    def _scan(self, filters: ScanQuery) -> list[Creation]:
        statuses, updated_before, created_after, limit = filters
        wanted = set(statuses) if statuses is not None else None
        found = [
            c
            for c in self._items.values()
            if (wanted is None or c.status in wanted)
            and (updated_before is None or c.updated_at < updated_before)
            and (created_after is None or c.created_at >= created_after)
        ]
        found.sort(key=lambda c: c.updated_at)
        return found[:limit]

    def delete(self, creation_id: str) -> bool:
        with self._lock:
            return self._items.pop(creation_id, None) is not None

    def ping(self) -> None:
        return None

    # --- admission ------------------------------------------------------------------------

    def _admit(self, ask: AdmissionAsk) -> Refusal | None:
        user_id, creation_id, policy, now, insert = ask
        with self._lock:
            if insert is not None and insert.id in self._items:
                raise ValueError(f"creation {insert.id} already exists")
            user = self._quotas.get(user_id) or UserQuota(user_id)
            decided = quotas.admit(user, self._global, policy, creation_id, now)
            if isinstance(decided, Refusal):
                return decided
            self._quotas[user_id], glob = decided
            self._global = glob or self._global
            if insert is not None:
                self._items[insert.id] = insert
            return None

    def _release_locked(self, user_id: str, creation_id: str) -> None:
        user = self._quotas.get(user_id)
        if user is not None:
            self._quotas[user_id] = quotas.release(user, creation_id)

    def release_quota(self, user_id: str, creation_id: str) -> None:
        with self._lock:
            self._release_locked(user_id, creation_id)

    def quota(self, user_id: str) -> UserQuota:
        with self._lock:
            return self._quotas.get(user_id) or UserQuota(user_id)

    def quota_holders(self, limit: int = 1000) -> list[UserQuota]:
        with self._lock:
            return [q for q in self._quotas.values() if q.active][:limit]
