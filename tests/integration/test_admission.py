"""Admission through the HTTP API when several API instances share one store.

Each ``create_app`` below is a separate API instance (its own service objects, its own SQLite
connections) over one SQLite file, the way Cloud Run instances share one Firestore database.
The limits must hold for the user across the instances, not per instance. The cross-process
race (4 processes x 8 threads) is ``test_sqlite_admission_holds_across_processes_and_threads``
in the store contract and ``benchmarks/run admission``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from api.app import create_app
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc


def _instances(tmp_path: Path, n: int, **limits: Any) -> list:
    import dataclasses

    clients = []
    for _ in range(n):
        settings = dataclasses.replace(Settings(data_dir=tmp_path, dispatch="record"), **limits)
        app = create_app(
            settings,
            store=SqliteCreationStore(settings.sqlite_path),
            media=LocalMediaStore(tmp_path / "media"),
            dispatchers=lambda path: RecordingDispatcher(),
        )
        clients.append(app.test_client())
    return clients


def _post(client, user: str = "alice"):
    return client.post(
        "/api/generate/image", json={"prompt": "a fox"}, headers={"X-Phoenix-User": user}
    )


def test_the_per_minute_limit_is_per_user_across_instances_not_per_instance(tmp_path):
    clients = _instances(tmp_path, 3, rate_limit_per_minute=5, max_active_per_user=0)
    statuses = [_post(clients[i % 3]).status_code for i in range(15)]
    assert statuses.count(202) == 5, statuses
    refused = _post(clients[0])
    assert refused.status_code == 429
    assert refused.get_json()["error"]["reason"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _post(clients[1], "bob").status_code == 202  # another user is unaffected


def test_the_unfinished_cap_holds_under_simultaneous_requests_to_several_instances(tmp_path):
    clients = _instances(tmp_path, 4, rate_limit_per_minute=0, max_active_per_user=10)
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(40)

    def fire(client) -> None:
        start.wait()
        resp = _post(client)
        with lock:
            results.append((resp.status_code, resp.headers.get("Retry-After")))

    threads = [threading.Thread(target=fire, args=(clients[i % 4],)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [code for code, _ in results]
    assert codes.count(202) == 10 and codes.count(429) == 30, codes
    assert all(ra and int(ra) > 0 for code, ra in results if code == 429)


def test_a_finished_creation_gives_its_slot_back_at_once(tmp_path):
    clients = _instances(tmp_path, 2, rate_limit_per_minute=0, max_active_per_user=2)
    ids = [_post(clients[0]).get_json()["id"], _post(clients[1]).get_json()["id"]]
    assert _post(clients[0]).status_code == 429
    store = SqliteCreationStore(tmp_path / "creations.sqlite3")
    now = lc.utcnow()
    store.update(
        ids[0],
        lambda c: lc.fail(c, owner=None, now=now, error=lc.CreationError("x", "y")),
    )
    assert _post(clients[1]).status_code == 202
    assert _post(clients[0]).status_code == 429


def test_the_global_ceiling_counts_every_user(tmp_path):
    clients = _instances(
        tmp_path, 2, rate_limit_per_minute=0, max_active_per_user=0, global_rate_limit_per_minute=3
    )
    statuses = [_post(clients[i % 2], f"user{i}") for i in range(5)]
    assert [r.status_code for r in statuses] == [202, 202, 202, 429, 429]
    assert statuses[3].get_json()["error"]["reason"] == "busy"


def test_the_service_admits_a_retry_of_an_existing_creation_and_releases_on_request(tmp_path):
    """The two service-layer calls other features use: ``admit`` (a retry puts an old creation
    back in the queue: it needs a slot like a new one) and ``release`` (a creation removed or
    ended outside ``store.update`` gives its slot back)."""
    from api.creation_service import RateLimited

    (client,) = _instances(tmp_path, 1, rate_limit_per_minute=0, max_active_per_user=1)
    service = client.application.extensions["phoenix"].creations
    first = _post(client).get_json()["id"]
    assert _post(client).status_code == 429
    service.release("alice", first)  # e.g. deleted while pending
    service.release("alice", first)  # idempotent
    second = _post(client).get_json()["id"]
    store = client.application.extensions["phoenix"].store
    now = lc.utcnow()
    store.update(
        second, lambda c: lc.fail(c, owner=None, now=now, error=lc.CreationError("x", "y"))
    )
    service.admit("alice", second)  # retrying the failed one takes the slot...
    try:
        service.admit("alice", first)  # ...so another retry is refused, nothing written
    except RateLimited as exc:
        assert exc.reason == "too_many_active" and exc.retry_after_seconds > 0
    else:
        raise AssertionError("a second unfinished creation was admitted past the cap of 1")
    assert set(store.quota("alice").active) == {second}
