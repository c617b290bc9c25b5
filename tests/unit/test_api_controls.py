"""Cancel, delete and retry over HTTP (Flask test client, in-memory fakes): status codes, the one
error shape, ownership, idempotence, media removal and the sweeper finishing a failed delete."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.app import create_app
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Status
from common.sweeper import sweep


class SpyDispatcher(RecordingDispatcher):
    def __init__(self):
        super().__init__()
        self.cancels: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    def cancel(self, creation):
        self.cancels.append((creation.id, creation.status.value))
        return ["withdrawn"]

    def stop_execution(self, creation):
        self.stopped.append(creation.id)
        return True


class FlakyMedia(LocalMediaStore):
    """Deletion fails until ``healthy`` (a storage outage during a delete)."""

    healthy = True

    def delete_for(self, creation_id):
        if not self.healthy:
            raise OSError("storage unavailable")
        return super().delete_for(creation_id)


@pytest.fixture
def env(tmp_path):
    store = InMemoryCreationStore()
    spy = SpyDispatcher()
    media = FlakyMedia(tmp_path / "media")
    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record", max_active_per_user=3),
        store=store,
        media=media,
        dispatchers=lambda path: spy,
    )
    app.testing = True
    return app.test_client(), store, spy, media


def create(client, kind="image", body=None, user="alice"):
    body = body or {"prompt": "a red kite", "count": 2, "aspect_ratio": "4:3"}
    resp = client.post(f"/api/generate/{kind}", json=body, headers={"X-Phoenix-User": user})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()["id"]


def call(client, method, path, user="alice"):
    return client.open(path, method=method, headers={"X-Phoenix-User": user})


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def run_to(store, cid, status, media_dir=None):
    """Drive a creation like a job would: claim, then complete/fail (writing media)."""
    now = lc.utcnow()
    store.update(
        cid, lambda c: lc.claim(c, owner="job", now=now, lease=timedelta(minutes=2), max_attempts=3)
    )
    if status == "completed":
        refs = []
        for i in range(2):
            path = media_dir / cid / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG")
            refs.append(lc.MediaRef(f"{cid}/{i}.png", "image/png"))
        store.update(cid, lambda c: lc.complete(c, owner="job", now=now, media=tuple(refs)))
    elif status == "failed":
        store.update(
            cid,
            lambda c: lc.fail(c, owner="job", now=now, error=lc.CreationError("x", "broken")),
        )


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_queued_creation_is_immediate_and_withdraws_its_task(env):
    client, store, spy, _ = env
    cid = create(client)
    resp = call(client, "POST", f"/api/creations/{cid}/cancel")
    assert resp.status_code == 200
    view = resp.get_json()
    assert view["status"] == "cancelled" and view["cancelled_at"] and view["cancel_requested_at"]
    assert view["provider_started"] is False
    assert spy.cancels == [(cid, "cancelled")]
    # Idempotent: the same answer again, and nothing withdrawn twice.
    again = call(client, "POST", f"/api/creations/{cid}/cancel")
    assert again.status_code == 200 and again.get_json()["status"] == "cancelled"
    assert len(spy.cancels) == 1
    assert call(client, "GET", f"/api/creations/{cid}").get_json()["status"] == "cancelled"


def test_cancel_of_a_generating_creation_is_a_request_answered_202(env):
    client, store, spy, _ = env
    cid = create(client, "video", {"prompt": "a comet", "duration_seconds": 4})
    run_to(store, cid, "processing")
    resp = call(client, "POST", f"/api/creations/{cid}/cancel")
    assert resp.status_code == 202
    view = resp.get_json()
    assert view["status"] == "processing" and view["cancel_requested_at"]
    assert view["cancelled_at"] is None
    assert store.get(cid).cancel_requested_at is not None
    assert spy.cancels == [(cid, "processing")]  # queued deliveries are withdrawn at once
    assert call(client, "POST", f"/api/creations/{cid}/cancel").status_code == 202


def test_a_job_that_does_not_stop_within_the_grace_has_its_execution_stopped(tmp_path):
    """The backstop: nothing renews this lease (a stuck job), so after the grace the API
    stops the execution; a job that ended the cancel itself is left alone."""
    import time

    store, spy = InMemoryCreationStore(), SpyDispatcher()
    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record"),
        store=store,
        media=LocalMediaStore(tmp_path / "media"),
        dispatchers=lambda path: spy,
    )
    app.extensions["phoenix"].creations.cancel_backstop_seconds = 0.3
    client = app.test_client()
    stuck, polite = create(client), create(client)
    for cid in (stuck, polite):
        run_to(store, cid, "processing")
        assert call(client, "POST", f"/api/creations/{cid}/cancel").status_code == 202
    store.update(polite, lambda c: lc.finish_cancel(c, owner="job", now=lc.utcnow()))
    assert spy.stopped == []  # not before the grace
    time.sleep(1.0)
    assert spy.stopped == [stuck]


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_cancel_of_a_finished_creation_is_409(env, final):
    client, store, spy, media = env
    cid = create(client)
    run_to(store, cid, final, media.root)
    message = assert_error(
        call(client, "POST", f"/api/creations/{cid}/cancel"), 409, "already_finished"
    )
    assert final in message
    assert store.get(cid).status.value == final and spy.cancels == []


def test_controls_on_someone_elses_creation_are_404_like_a_missing_one(env):
    client, store, spy, _ = env
    cid = create(client, user="alice")
    for method, path in [
        ("POST", f"/api/creations/{cid}/cancel"),
        ("DELETE", f"/api/creations/{cid}"),
        ("POST", f"/api/creations/{cid}/retry"),
    ]:
        assert_error(call(client, method, path, user="mallory"), 404, "not_found")
        assert_error(call(client, method, path.replace(cid, "f" * 32)), 404, "not_found")
    assert store.get(cid).status is Status.PENDING and spy.cancels == []


# --- delete ------------------------------------------------------------------------------------


def test_delete_removes_the_record_and_its_media(env):
    client, store, spy, media = env
    cid = create(client)
    run_to(store, cid, "completed", media.root)
    view = call(client, "GET", f"/api/creations/{cid}").get_json()
    url = view["media"][0]["url"]
    assert call(client, "GET", url).status_code == 200
    resp = call(client, "DELETE", f"/api/creations/{cid}")
    assert resp.status_code == 204 and resp.data == b""
    assert store.get(cid) is None
    assert not (media.root / cid).exists()
    assert_error(call(client, "GET", f"/api/creations/{cid}"), 404, "not_found")
    assert call(client, "GET", url).status_code == 404  # the media URL stopped working
    listed = call(client, "GET", "/api/creations").get_json()["creations"]
    assert cid not in [c["id"] for c in listed]
    assert_error(call(client, "DELETE", f"/api/creations/{cid}"), 404, "not_found")


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_failed_and_cancelled_creations_can_be_deleted(env, final):
    client, store, _, _ = env
    cid = create(client)
    if final == "cancelled":
        call(client, "POST", f"/api/creations/{cid}/cancel")
    else:
        run_to(store, cid, "failed")
    assert call(client, "DELETE", f"/api/creations/{cid}").status_code == 204
    assert store.get(cid) is None


def test_delete_of_a_queued_creation_cancels_then_deletes(env):
    client, store, spy, _ = env
    cid = create(client)
    assert call(client, "DELETE", f"/api/creations/{cid}").status_code == 204
    assert store.get(cid) is None and spy.cancels == [(cid, "cancelled")]


def test_delete_of_a_generating_creation_is_409_and_requests_the_cancel(env):
    client, store, spy, _ = env
    cid = create(client)
    run_to(store, cid, "processing")
    assert_error(call(client, "DELETE", f"/api/creations/{cid}"), 409, "still_running")
    c = store.get(cid)
    assert c.status is Status.PROCESSING and c.cancel_requested_at is not None


def test_a_failed_media_deletion_keeps_a_tombstone_that_the_sweeper_finishes(env):
    """Shown failing: with ``finish_delete`` removing the record before the media (scratch
    break), the failed media deletion left no tombstone and this failed."""
    client, store, spy, media = env
    cid = create(client)
    run_to(store, cid, "completed", media.root)
    media.healthy = False
    resp = call(client, "DELETE", f"/api/creations/{cid}")
    assert resp.status_code == 202 and resp.get_json()["status"] == "deleting"
    assert store.get(cid).status is Status.DELETING  # the record stays, marked
    assert (media.root / cid / "0.png").exists()  # nothing orphaned: the record names them
    assert_error(call(client, "GET", f"/api/creations/{cid}"), 404, "not_found")
    assert cid not in [
        c["id"] for c in call(client, "GET", "/api/creations").get_json()["creations"]
    ]
    # A sweep during the outage keeps it; the next one after it finishes the delete.
    report = sweep(store, lambda p: spy, now=lc.utcnow(), media=media)
    assert report.errors == [cid] and store.get(cid) is not None
    media.healthy = True
    report = sweep(store, lambda p: spy, now=lc.utcnow(), media=media)
    assert report.deleted == [cid]
    assert store.get(cid) is None and not (media.root / cid).exists()


# --- retry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_retry_makes_a_new_creation_with_the_same_request(env, final):
    client, store, spy, _ = env
    body = {"prompt": "a comet over snow", "duration_seconds": 6, "aspect_ratio": "9:16"}
    cid = create(client, "video", body)
    if final == "cancelled":
        call(client, "POST", f"/api/creations/{cid}/cancel")
    else:
        run_to(store, cid, "failed")
    resp = call(client, "POST", f"/api/creations/{cid}/retry")
    assert resp.status_code == 202, resp.get_data(as_text=True)
    new = resp.get_json()
    assert new["id"] != cid and resp.headers["Location"] == f"/api/creations/{new['id']}"
    assert new["status"] == "pending" and new["kind"] == "video"
    assert new["prompt"] == body["prompt"]
    assert new["params"] == {"duration_seconds": 6, "aspect_ratio": "9:16"}
    assert [p.creation_id for p in spy.dispatched][-1] == new["id"]  # dispatched like a generate
    assert store.get(cid).status.value == final  # the old one is left as it was


@pytest.mark.parametrize("state", ["pending", "processing", "completed"])
def test_retry_of_anything_but_failed_or_cancelled_is_409(env, state):
    client, store, _, media = env
    cid = create(client)
    if state != "pending":
        run_to(store, cid, state, media.root)
    assert_error(call(client, "POST", f"/api/creations/{cid}/retry"), 409, "not_retryable")


def test_retry_goes_through_admission(env):
    """Three unfinished creations is the cap in this fixture: a retry is refused like a new
    request would be."""
    client, store, _, _ = env
    failed = create(client)
    run_to(store, failed, "failed")
    for _ in range(3):
        create(client)
    resp = call(client, "POST", f"/api/creations/{failed}/retry")
    assert_error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"]
