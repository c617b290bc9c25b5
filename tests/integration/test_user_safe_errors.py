"""No user-facing output names a bucket, a service account, a URL or a traceback.

Every way a creation can fail is driven for real (the job runner with a generator or media
store that raises, provider errors, retries running out, the sweeper giving up on dispatch or
on time, a lease that keeps expiring, a job of the wrong kind) plus the API's own failure
answers (dispatch outage 503, unexpected 500, readiness 503, bad input, auth). Each failure's
internal text is stuffed with secrets; then everything a user can read (the creation, the list,
the error bodies) is grepped for them. The detail must still be kept for operators (the record's
``error.detail``), and every failed creation must carry a stable code and a non-empty message.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import DispatchError, GenerationError
from common.domain.failures import USER_MESSAGES
from common.job_runner import JobDeps, run_job
from common.ports import Generator
from common.sweeper import SweepPolicy, sweep

BUCKET = "phoenix-prod-media-7f3a"
ACCOUNT = "phoenix-jobs@phoenix-prod.iam.gserviceaccount.com"
URL = "https://storage.googleapis.com/upload/storage/v1/b/phoenix-prod-media-7f3a/o?x=1"
SECRET_TEXT = (
    f"403 POST {URL}: {ACCOUNT} does not have storage.objects.create access to "
    f'gs://{BUCKET}/creations/x.png\nTraceback (most recent call last):\n  File "/app/x.py"'
)
FORBIDDEN = [
    re.compile(re.escape(BUCKET)),
    re.compile(r"[\w.-]+@[\w-]+\.iam\.gserviceaccount\.com"),
    re.compile(r"https?://"),
    re.compile(r"gs://"),
    re.compile(r"Traceback|File \""),
    re.compile(r"\b[A-Z]\w+(Error|Exception)\b"),  # exception class names
]
USER = "victim"
ADMIN = "operator"


class Raising(Generator):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def generate(self, kind, prompt, params, ctx):  # type: ignore[no-untyped-def]
        raise self.exc


class Once(Generator):
    def generate(self, kind, prompt, params, ctx):  # type: ignore[no-untyped-def]
        from common.ports import GeneratedMedia

        return [GeneratedMedia(mime_type="image/png", data=b"png")]


class BrokenMedia(LocalMediaStore):
    def put(self, key: str, data: bytes, mime_type: str):  # type: ignore[no-untyped-def]
        raise PermissionError(SECRET_TEXT)


class DownDispatcher(RecordingDispatcher):
    def dispatch(self, payload):  # type: ignore[no-untyped-def]
        raise DispatchError(f"cloud tasks refused: {SECRET_TEXT}")


def _assert_clean(text: str, where: str) -> None:
    for pattern in FORBIDDEN:
        found = pattern.search(text)
        assert found is None, f"{where}: {found.group(0)!r} in {text[:500]!r}"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(
        data_dir=tmp_path,
        dispatch="record",
        rate_limit_per_minute=0,
        max_active_per_user=0,
        admins=(ADMIN,),
    )
    store = SqliteCreationStore(settings.sqlite_path)
    media = LocalMediaStore(settings.media_dir)
    state = {"down": False}

    def dispatchers(path: str) -> RecordingDispatcher:
        return DownDispatcher() if state["down"] else RecordingDispatcher()

    app = create_app(settings, store=store, media=media, dispatchers=dispatchers)
    return {"app": app, "client": app.test_client(), "store": store, "media": media, "state": state}


def _create(client: Any, kind: str = "image") -> str:
    body = {"prompt": "a fox"} if kind == "image" else {"prompt": "a fox", "duration_seconds": 4}
    resp = client.post(f"/api/generate/{kind}", json=body, headers={"X-Phoenix-User": USER})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return str(resp.get_json()["id"])


def _run(world: dict[str, Any], cid: str, gen: Generator, *, kind=Kind.IMAGE, media=None, **kw):
    deps = JobDeps(
        store=world["store"], generator=gen, media=media or world["media"], max_attempts=2, **kw
    )
    return run_job(cid, kind, deps, owner=f"job-{cid[:6]}-{id(gen)}")


def test_no_failure_path_shows_a_user_internal_detail(world: dict[str, Any]) -> None:
    """Shown failing: with the API rendering the stored detail instead of the code's message
    (scratch break in ``api/creation_service.py``), this failed."""
    client, store = world["client"], world["store"]
    failed: dict[str, str] = {}  # creation id -> the path that failed it

    # 1. An unexpected exception in the generator, retried until attempts run out.
    cid = _create(client)
    _run(world, cid, Raising(RuntimeError(SECRET_TEXT)))
    pending = client.get(f"/api/creations/{cid}", headers={"X-Phoenix-User": USER})
    # While it waits for its retry the record shows the error too: also user-facing.
    assert pending.get_json()["status"] == "pending" and pending.get_json()["error"]
    _assert_clean(pending.get_data(as_text=True), "pending retry")
    _run(world, cid, Raising(RuntimeError(SECRET_TEXT)))
    failed[cid] = "internal error, retries exhausted"

    # 2. A permanent provider error quoting the provider's raw text.
    cid = _create(client)
    _run(world, cid, Raising(GenerationError("provider_error", SECRET_TEXT, retryable=False)))
    failed[cid] = "permanent provider error"

    # 3. A retryable provider error until attempts run out.
    cid = _create(client)
    for _ in range(2):
        _run(world, cid, Raising(GenerationError("quota_exhausted", SECRET_TEXT, retryable=True)))
    failed[cid] = "retryable provider error, exhausted"

    # 4. A code nobody catalogued (a new provider failure) with raw text.
    cid = _create(client)
    _run(world, cid, Raising(GenerationError("brand_new_code", SECRET_TEXT, retryable=False)))
    failed[cid] = "uncatalogued code"

    # 5. The media store failing to write (bucket and account in the exception).
    cid = _create(client)
    for _ in range(2):
        _run(world, cid, Once(), media=BrokenMedia(world["media"].root))
    failed[cid] = "media store write"

    # 6. A creation sent to the wrong job.
    cid = _create(client, "video")
    _run(world, cid, Once(), kind=Kind.IMAGE)
    failed[cid] = "wrong job kind"

    # 7. Leases that keep expiring: the next claim gives up (max_attempts_exceeded).
    cid = _create(client)
    t = lc.utcnow()
    for n in range(2):
        at = t + timedelta(minutes=10 * n)
        store.update(
            cid,
            lambda c, at=at: lc.claim(
                c, owner=f"dead{at}", now=at, lease=timedelta(seconds=1), max_attempts=2
            ),
        )
        store.update(
            cid,
            lambda c: lc.report_progress(c, owner=c.lease_owner, now=c.updated_at, progress=1),
        )
    # Record what the dead job last said, as a crashed job's retry record would.
    store.update(
        cid,
        lambda c: lc.release_for_retry(
            c,
            owner=c.lease_owner,
            now=c.updated_at,
            error=lc.CreationError("internal_error", SECRET_TEXT),
            max_attempts=3,
        ),
    )
    store.update(
        cid,
        lambda c: lc.claim(
            c, owner="last", now=t + timedelta(hours=1), lease=timedelta(seconds=1), max_attempts=2
        ),
    )
    failed[cid] = "max attempts exceeded"

    # 8. Dispatch keeps failing: the API answers 503, the sweeper gives up (dispatch_failed).
    world["state"]["down"] = True
    resp = client.post(
        "/api/generate/image", json={"prompt": "x"}, headers={"X-Phoenix-User": USER}
    )
    assert resp.status_code == 503
    _assert_clean(resp.get_data(as_text=True), "503 dispatch outage")
    cid = resp.get_json()["error"]["creation_id"]
    now = lc.utcnow()
    policy = SweepPolicy(max_dispatches=0)
    sweep(store, lambda path: DownDispatcher(), now=now + timedelta(minutes=1), policy=policy)
    failed[cid] = "dispatch failed"
    world["state"]["down"] = False

    # 9. Too old: the sweeper times it out.
    cid = _create(client)
    sweep(store, lambda path: RecordingDispatcher(), now=lc.utcnow() + timedelta(hours=7))
    failed[cid] = "timed out"

    # Every one is failed, with its detail kept for operators and a clean user view.
    for cid, path in failed.items():
        record = store.get(cid)
        assert record is not None and record.status is Status.FAILED, (path, record)
        assert record.error is not None and record.error.code, path
        assert record.error.detail, f"{path}: the internal detail must be kept for operators"
        assert record.error.message in USER_MESSAGES.values() or path == "uncatalogued code"
        _assert_clean(record.error.message, f"{path}: stored user message")
        view = client.get(f"/api/creations/{cid}", headers={"X-Phoenix-User": USER})
        body = view.get_json()
        assert body["error"]["code"] == record.error.code and body["error"]["message"], path
        _assert_clean(view.get_data(as_text=True), path)
    assert any(SECRET_TEXT[:40] in (store.get(c).error.detail or "") for c in failed)

    listing = client.get("/api/creations?limit=100", headers={"X-Phoenix-User": USER})
    assert len(listing.get_json()["creations"]) >= len(failed)
    _assert_clean(listing.get_data(as_text=True), "list")

    # Operators (PHOENIX_ADMINS) see the detail; the user, even asking there, does not.
    ops = client.get("/api/admin/failures?limit=500", headers={"X-Phoenix-User": ADMIN})
    assert ops.status_code == 200
    rows = {row["id"]: row for row in ops.get_json()["failures"]}
    assert set(failed) <= set(rows)
    assert any(SECRET_TEXT[:40] in (rows[c]["detail"] or "") for c in failed)
    assert all(rows[c]["code"] == store.get(c).error.code for c in failed)
    refused = client.get("/api/admin/failures", headers={"X-Phoenix-User": USER})
    assert refused.status_code == 403
    _assert_clean(refused.get_data(as_text=True), "admin view refused to a user")


def test_the_api_own_failure_answers_are_clean(world: dict[str, Any], tmp_path: Path) -> None:
    class ExplodingStore(SqliteCreationStore):
        def list_for_user(self, user_id: str, limit: int):  # type: ignore[no-untyped-def]
            raise RuntimeError(SECRET_TEXT)

        def ping(self) -> None:
            raise ConnectionError(SECRET_TEXT)

    settings = Settings(data_dir=tmp_path / "x", dispatch="record")
    app = create_app(
        settings,
        store=ExplodingStore(settings.sqlite_path),
        media=LocalMediaStore(settings.media_dir),
        dispatchers=lambda path: RecordingDispatcher(),
    )
    client = app.test_client()
    answers = {
        "500": client.get("/api/creations"),
        "readyz": client.get("/readyz"),
        "bad json": client.post(
            "/api/generate/image", data=b"{" + SECRET_TEXT.encode(), content_type="application/json"
        ),
        "unknown route": client.get("/" + URL),
    }
    assert answers["500"].status_code == 500 and answers["readyz"].status_code == 503
    for name, resp in answers.items():
        assert resp.status_code >= 400, name
        _assert_clean(resp.get_data(as_text=True), name)
