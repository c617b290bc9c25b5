"""The HTTP API over in-memory fakes: status codes, the error shape, the view, ownership,
ETags, dispatch failure and readiness. No sockets, no processes."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from api.app import create_app, services_of
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, MediaRef, Status
from common.domain.errors import DispatchError

VIEW_KEYS = [
    "id",
    "kind",
    "status",
    "progress",
    "prompt",
    "params",
    "media",
    "error",
    "created_at",
    "updated_at",
    "path",
    "cancel_requested_at",
    "cancelled_at",
    "provider_started",
]
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")


class DownDispatcher(RecordingDispatcher):
    def dispatch(self, payload):
        raise DispatchError("queue is down")


class PingFailsStore(InMemoryCreationStore):
    def ping(self):
        raise ConnectionError("store unreachable")


def _app(tmp_path, store, dispatcher):
    """An app over ``store`` whose every dispatch path is ``dispatcher``."""
    return create_app(
        Settings(data_dir=tmp_path),
        store=store,
        media=LocalMediaStore(tmp_path),
        dispatchers=lambda path: dispatcher,
    )


@pytest.fixture
def env(tmp_path):
    """A fresh app with its fakes: (client, store, dispatcher, media)."""
    store = InMemoryCreationStore()
    rec = RecordingDispatcher()
    media = LocalMediaStore(tmp_path / "media")
    paths: list[str] = []

    def dispatchers(path):
        paths.append(path)
        return rec

    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record"),
        store=store,
        media=media,
        dispatchers=dispatchers,
    )
    app.testing = True
    client = app.test_client()
    client.paths = paths
    return client, store, rec, media


def post(client, kind, body, user=None, headers=None):
    headers = dict(headers or {})
    if user:
        headers["X-Phoenix-User"] = user
    return client.post(f"/api/generate/{kind}", json=body, headers=headers)


def assert_error(resp, status, code, *fragments):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    for fragment in fragments:
        assert fragment in body["error"]["message"]
    return body


# --- create -----------------------------------------------------------------------------------


def test_generate_video_is_accepted_with_location_and_view(env):
    client, store, rec, _ = env
    resp = post(client, "video", {"prompt": "a fox", "aspect_ratio": "9:16", "duration_seconds": 4})
    assert resp.status_code == 202
    view = resp.get_json()
    assert list(view) == VIEW_KEYS  # field order is part of the contract (sort_keys=False)
    assert resp.headers["Location"] == f"/api/creations/{view['id']}"
    assert view["kind"] == "video" and view["status"] == "pending" and view["progress"] == 0
    assert view["prompt"] == "a fox"
    assert view["params"] == {"aspect_ratio": "9:16", "duration_seconds": 4}
    assert view["media"] == [] and view["error"] is None and view["path"] == "record"
    assert ISO_UTC.match(view["created_at"]) and ISO_UTC.match(view["updated_at"])

    # The record is stored, owned by the default local user, marked dispatched; the payload
    # names it.
    stored = store.get(view["id"])
    assert stored.user_id == "local" and stored.path == "record"
    assert stored.dispatched_at is not None and stored.dispatches == 1
    assert [p.creation_id for p in rec.dispatched] == [view["id"]]
    assert rec.dispatched[0].kind is Kind.VIDEO
    assert rec.dispatched[0].traceparent == stored.traceparent
    assert client.paths == ["record"]


def test_generate_image_applies_defaults(env):
    client, *_ = env
    resp = post(client, "image", {"prompt": "  a   red\tcube  "})
    assert resp.status_code == 202
    view = resp.get_json()
    assert view["prompt"] == "a red cube"  # normalised by the domain
    assert view["params"] == {"aspect_ratio": "1:1", "count": 1}


def test_route_seam_decides_and_records_the_path(tmp_path):
    rec = RecordingDispatcher()
    asked: list[tuple[Kind, str]] = []
    built: list[str] = []

    def route(kind, user):
        asked.append((kind, user))
        return "celery" if user == "bob" else "cloud-tasks"

    def dispatchers(path):
        built.append(path)
        return rec

    store = InMemoryCreationStore()
    app = create_app(
        Settings(data_dir=tmp_path),
        store=store,
        media=LocalMediaStore(tmp_path),
        dispatchers=dispatchers,
        route=route,
    )
    client = app.test_client()
    a = post(client, "image", {"prompt": "x"}, user="bob").get_json()
    b = post(client, "video", {"prompt": "y"}, user="amy").get_json()
    assert (a["path"], b["path"]) == ("celery", "cloud-tasks")
    assert store.get(a["id"]).path == "celery"
    assert asked == [(Kind.IMAGE, "bob"), (Kind.VIDEO, "amy")]
    assert built == ["celery", "cloud-tasks"]


# --- validation: always 400 naming the field, never 500 -----------------------------------------


@pytest.mark.parametrize(
    "kind, body, field",
    [
        ("video", {"prompt": "x", "colour": "red"}, "colour"),
        ("image", {"prompt": "x", "duration_seconds": 4}, "duration_seconds"),
        ("video", {}, "prompt"),
        ("video", {"prompt": None}, "prompt"),
        ("video", {"prompt": 42}, "prompt"),
        ("video", {"prompt": ""}, "prompt"),
        ("image", {"prompt": "   \n\t "}, "prompt"),
        ("image", {"prompt": "\u200b\u200d"}, "prompt"),  # only invisible characters
        ("video", {"prompt": "x" * 2001}, "prompt"),
        ("video", {"prompt": "x", "aspect_ratio": "1:1"}, "aspect_ratio"),
        ("image", {"prompt": "x", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ("video", {"prompt": "x", "aspect_ratio": 16}, "aspect_ratio"),
        ("video", {"prompt": "x", "duration_seconds": 5}, "duration_seconds"),
        ("video", {"prompt": "x", "duration_seconds": "8"}, "duration_seconds"),
        ("video", {"prompt": "x", "duration_seconds": 8.0}, "duration_seconds"),
        ("image", {"prompt": "x", "count": 0}, "count"),
        ("image", {"prompt": "x", "count": 5}, "count"),
        ("image", {"prompt": "x", "count": True}, "count"),
        ("image", {"prompt": "x", "count": "2"}, "count"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(env, kind, body, field):
    """Shown to fail when the upper bound on ``count`` is dropped (scratch branch
    scratch/promises-break-bad-data, 2026-12-01): count 5 was accepted."""
    client, store, rec, _ = env
    resp = post(client, kind, body)
    err = assert_error(resp, 400, "invalid_request")
    assert err["error"]["message"].startswith(f"{field}: "), err
    assert rec.dispatched == [] and store.scan() == []  # nothing recorded for bad input


def test_prompt_of_exactly_2000_characters_is_accepted(env):
    client, *_ = env
    assert post(client, "video", {"prompt": "x" * 2000}).status_code == 202


def test_empty_prompt_message(env):
    client, *_ = env
    assert_error(
        post(client, "video", {"prompt": ""}), 400, "invalid_request", "prompt: must not be empty"
    )


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "body: invalid JSON"),
        (b"", "body: invalid JSON"),
        (b'{"prompt": "x",}', "body: invalid JSON"),
        (b"\xff\xfe\x00garbage", "body: invalid JSON"),
        (b"[" * 30000 + b"]" * 30000, "body: "),  # absurd nesting: RecursionError, still a 400
        (b'["a", "list"]', "body: must be a JSON object"),
        (b'"just a string"', "body: must be a JSON object"),
        (b"null", "body: must be a JSON object"),
        (b"42", "body: must be a JSON object"),
    ],
)
def test_bad_json_and_non_object_bodies_are_400(env, raw, fragment):
    client, *_ = env
    resp = client.post("/api/generate/image", data=raw, content_type="application/json")
    assert_error(resp, 400, "invalid_request", fragment)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_content_type_is_415(env, content_type):
    client, *_ = env
    kwargs = {"data": json.dumps({"prompt": "x"})}
    if content_type:
        kwargs["content_type"] = content_type
    assert_error(client.post("/api/generate/video", **kwargs), 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(env):
    client, *_ = env
    resp = client.post(
        "/api/generate/video",
        data=json.dumps({"prompt": "x"}),
        content_type="application/json; charset=utf-8",
    )
    assert resp.status_code == 202


def test_body_over_64_kib_is_413(env):
    client, store, *_ = env
    body = json.dumps({"prompt": "x", "pad": "y" * (65 * 1024)})
    resp = client.post("/api/generate/video", data=body, content_type="application/json")
    assert_error(resp, 413, "payload_too_large", "64 KiB")
    assert store.scan() == []


def test_chunked_body_over_64_kib_is_413_not_500(env):
    """No Content-Length (chunked upload, as gunicorn presents it with wsgi.input_terminated):
    the limit is enforced while reading the stream."""
    client, store, *_ = env
    body = json.dumps({"prompt": "y" * (70 * 1024)}).encode()
    resp = client.post(
        "/api/generate/video",
        data=body,
        content_type="application/json",
        environ_overrides={
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input_terminated": True,
        },
    )
    assert_error(resp, 413, "payload_too_large")
    assert store.scan() == []


def test_small_chunked_body_is_accepted(env):
    client, *_ = env
    resp = client.post(
        "/api/generate/video",
        data=json.dumps({"prompt": "chunked"}).encode(),
        content_type="application/json",
        environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True},
    )
    assert resp.status_code == 202


# --- HTTP-level errors in the JSON shape -------------------------------------------------------


def test_wrong_method_is_405_json_with_allow(env):
    client, *_ = env
    resp = client.get("/api/generate/video")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_error(client.put("/api/creations/abc"), 405, "method_not_allowed")
    assert_error(client.post("/api/creations"), 405, "method_not_allowed")


def test_unknown_route_and_kind_are_404_json(env):
    client, *_ = env
    assert_error(client.get("/api/nothing-here"), 404, "not_found")
    assert_error(post(client, "audio", {"prompt": "x"}), 404, "not_found")


def test_unexpected_exception_is_500_json_without_internals(tmp_path):
    class BrokenStore(InMemoryCreationStore):
        def get(self, creation_id):
            raise RuntimeError("secret internals")

    app = _app(tmp_path, BrokenStore(), RecordingDispatcher())
    resp = app.test_client().get("/api/creations/abc")
    body = assert_error(resp, 500, "internal_error")
    assert "secret" not in json.dumps(body)


# --- read, list, ownership ------------------------------------------------------------------------


def test_get_returns_the_view_and_unknown_is_404(env):
    client, *_ = env
    created = post(client, "image", {"prompt": "x", "count": 2}).get_json()
    resp = client.get(f"/api/creations/{created['id']}")
    assert resp.status_code == 200
    assert resp.get_json() == created
    missing = assert_error(client.get("/api/creations/" + "0" * 32), 404, "not_found")
    assert missing["error"]["message"] == "no such creation"


def test_other_users_cannot_read_or_list_a_creation(env):
    """Shown to fail when the service stops checking the owner (scratch branch
    scratch/promises-break-ownership, 2026-12-01)."""
    client, *_ = env
    mine = post(client, "image", {"prompt": "alice's"}, user="alice").get_json()
    foreign = client.get(f"/api/creations/{mine['id']}", headers={"X-Phoenix-User": "mallory"})
    unknown = client.get("/api/creations/" + "f" * 32, headers={"X-Phoenix-User": "mallory"})
    # Identical answers: a guessed id reveals nothing about whether it exists.
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.get_json() == unknown.get_json()
    listed = client.get("/api/creations", headers={"X-Phoenix-User": "mallory"}).get_json()
    assert listed == {"creations": []}
    # The default user ("local") is a different user too.
    assert client.get(f"/api/creations/{mine['id']}").status_code == 404
    own = client.get(f"/api/creations/{mine['id']}", headers={"X-Phoenix-User": "alice"})
    assert own.status_code == 200


def test_list_is_newest_first_limited_and_only_mine(tmp_path):
    store = InMemoryCreationStore()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(5):
        store.add(
            lc.new(
                user_id="me",
                kind=Kind.IMAGE,
                prompt=f"p{i}",
                params={},
                path="local",
                now=t0 + timedelta(minutes=i),
                creation_id=f"c{i}",
            )
        )
    store.add(
        lc.new(
            user_id="other",
            kind=Kind.IMAGE,
            prompt="theirs",
            params={},
            path="local",
            now=t0 + timedelta(hours=1),
            creation_id="o1",
        )
    )
    app = _app(tmp_path, store, RecordingDispatcher())
    client = app.test_client()
    me = {"X-Phoenix-User": "me"}
    body = client.get("/api/creations", headers=me).get_json()
    assert [c["id"] for c in body["creations"]] == ["c4", "c3", "c2", "c1", "c0"]
    assert all(list(c) == VIEW_KEYS for c in body["creations"])
    limited = client.get("/api/creations?limit=2", headers=me).get_json()
    assert [c["id"] for c in limited["creations"]] == ["c4", "c3"]
    assert len(client.get("/api/creations?limit=100", headers=me).get_json()["creations"]) == 5


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "", "1.5", "٣"])
def test_bad_list_limit_is_400(env, limit):
    client, *_ = env
    assert_error(client.get(f"/api/creations?limit={limit}"), 400, "invalid_request", "limit: ")


def test_completed_view_has_media_urls_and_failed_view_has_error(env):
    client, store, _, media = env
    cid = post(client, "image", {"prompt": "x", "count": 2}).get_json()["id"]
    now = lc.utcnow()
    store.update(
        cid, lambda c: lc.claim(c, owner="o", now=now, lease=timedelta(minutes=1), max_attempts=3)
    )
    refs = (
        media.put(f"{cid}/0.png", b"png0", "image/png"),
        media.put(f"{cid}/1.png", b"png1", "image/png"),
    )
    store.update(cid, lambda c: lc.complete(c, owner="o", now=now, media=refs))
    view = client.get(f"/api/creations/{cid}").get_json()
    assert view["status"] == "completed" and view["progress"] == 100
    assert view["media"] == [
        {"url": f"/media/{cid}/0.png", "mime_type": "image/png"},
        {"url": f"/media/{cid}/1.png", "mime_type": "image/png"},
    ]
    # The local media route serves the bytes, with range support for video players.
    got = client.get(view["media"][1]["url"])
    assert got.status_code == 200 and got.data == b"png1" and got.mimetype == "image/png"
    ranged = client.get(view["media"][0]["url"], headers={"Range": "bytes=1-2"})
    assert ranged.status_code == 206 and ranged.data == b"ng"
    assert_error(client.get(f"/media/{cid}/9.png"), 404, "not_found")
    assert_error(client.get("/media/../../etc/passwd"), 404, "not_found")

    fid = post(client, "video", {"prompt": "y"}).get_json()["id"]
    store.update(
        fid,
        lambda c: lc.fail(
            c, owner=None, now=now, error=lc.CreationError("content_filtered", "blocked")
        ),
    )
    failed = client.get(f"/api/creations/{fid}").get_json()
    assert failed["status"] == "failed"
    # The user gets the message written for the code; the internal text stays in the record.
    assert failed["error"] == {
        "code": "content_filtered",
        "message": "The request was blocked by the content safety filters. Try rephrasing the prompt.",
    }
    assert store.get(fid).error.detail == "blocked"


# --- ETag / 304 -----------------------------------------------------------------------------------


def test_etag_and_if_none_match(env):
    client, store, *_ = env
    cid = post(client, "video", {"prompt": "x"}).get_json()["id"]
    first = client.get(f"/api/creations/{cid}")
    etag = first.headers["ETag"]
    assert etag
    assert "no-cache" in first.headers["Cache-Control"]

    again = client.get(f"/api/creations/{cid}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    # Weak comparison: the strong form of the same tag and '*' also match; others don't.
    strong = etag.removeprefix("W/")
    assert client.get(f"/api/creations/{cid}", headers={"If-None-Match": strong}).status_code == 304
    assert client.get(f"/api/creations/{cid}", headers={"If-None-Match": "*"}).status_code == 304
    assert (
        client.get(f"/api/creations/{cid}", headers={"If-None-Match": '"other", W/"x"'}).status_code
        == 200
    )

    # Progress changes the tag.
    now = lc.utcnow()
    store.update(
        cid, lambda c: lc.claim(c, owner="o", now=now, lease=timedelta(minutes=1), max_attempts=3)
    )
    store.update(cid, lambda c: lc.report_progress(c, owner="o", now=now, progress=40))
    changed = client.get(f"/api/creations/{cid}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.get_json()["progress"] == 40 and changed.headers["ETag"] != etag


def test_304_does_not_build_the_view(env, monkeypatch):
    client, *_ = env
    service = services_of(client.application).creations
    cid = post(client, "video", {"prompt": "x"}).get_json()["id"]
    etag = client.get(f"/api/creations/{cid}").headers["ETag"]

    def boom(c):
        raise AssertionError("view built for a 304")

    monkeypatch.setattr(service, "view", boom)
    assert client.get(f"/api/creations/{cid}", headers={"If-None-Match": etag}).status_code == 304


def test_etag_does_not_reveal_foreign_creations(env):
    client, *_ = env
    cid = post(client, "video", {"prompt": "x"}, user="alice").get_json()["id"]
    resp = client.get(
        f"/api/creations/{cid}", headers={"X-Phoenix-User": "eve", "If-None-Match": "*"}
    )
    assert resp.status_code == 404 and "ETag" not in resp.headers


# --- dispatch failure ---------------------------------------------------------------------------


def test_dispatch_failure_is_503_and_the_record_stays_pending_for_the_sweeper(tmp_path):
    store = InMemoryCreationStore()
    app = _app(tmp_path, store, DownDispatcher())
    client = app.test_client()
    resp = post(client, "video", {"prompt": "x"})
    body = assert_error(resp, 503, "dispatch_unavailable")
    assert resp.headers["Retry-After"] == "30"
    cid = body["error"]["creation_id"]
    assert resp.headers["Location"] == f"/api/creations/{cid}"
    stored = store.get(cid)
    assert stored.status is Status.PENDING
    assert "queue is down" in stored.dispatch_error
    assert stored.dispatched_at is None and stored.dispatches == 0
    # The caller can still follow it.
    assert client.get(f"/api/creations/{cid}").get_json()["status"] == "pending"


def test_a_dispatcher_that_cannot_be_built_is_also_503(tmp_path):
    store = InMemoryCreationStore()

    def dispatchers(path):
        raise RuntimeError("no credentials for cloud tasks")

    app = create_app(
        Settings(data_dir=tmp_path),
        store=store,
        media=LocalMediaStore(tmp_path),
        dispatchers=dispatchers,
    )
    body = assert_error(
        post(app.test_client(), "image", {"prompt": "x"}), 503, "dispatch_unavailable"
    )
    assert store.get(body["error"]["creation_id"]).dispatch_error


# --- identity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["", "has space", "a" * 129, "semi;colon", "ünïcode", "a/b"])
def test_bad_user_header_is_400(env, user):
    client, store, *_ = env
    resp = client.post(
        "/api/generate/image", json={"prompt": "x"}, headers={"X-Phoenix-User": user}
    )
    assert_error(resp, 400, "invalid_request", "X-Phoenix-User")
    assert store.scan() == []
    assert_error(
        client.get("/api/creations", headers={"X-Phoenix-User": user}), 400, "invalid_request"
    )


@pytest.mark.parametrize("user", ["a", "alice@example.com", "u-1_2.3", "x" * 128])
def test_good_user_headers_are_accepted(env, user):
    client, store, *_ = env
    cid = post(client, "image", {"prompt": "x"}, user=user).get_json()["id"]
    assert store.get(cid).user_id == user


def test_production_auth_ignores_the_local_header_and_requires_a_token(tmp_path):
    from common.auth import FirebaseTokenVerifier
    from tests.support.tokens import firebase_claims, make_key

    key = make_key()
    verifier = FirebaseTokenVerifier("proj", fetch_certs=lambda: ({key.kid: key.cert_pem}, 3600.0))
    app = create_app(
        Settings(data_dir=tmp_path, auth="firebase", firebase_project="proj"),
        store=InMemoryCreationStore(),
        media=LocalMediaStore(tmp_path),
        dispatchers=lambda p: RecordingDispatcher(),
        token_verifier=verifier,
    )
    client = app.test_client()
    assert_error(post(client, "image", {"prompt": "x"}, user="alice"), 401, "unauthenticated")
    assert_error(client.get("/api/creations"), 401, "unauthenticated")
    token = key.sign(firebase_claims("proj", "alice"))
    ok = client.post(
        "/api/generate/image",
        json={"prompt": "x"},
        headers={"Authorization": f"Bearer {token}", "X-Phoenix-User": "mallory"},
    )
    assert ok.status_code == 202
    listed = client.get("/api/creations", headers={"Authorization": f"Bearer {token}"})
    assert [c["id"] for c in listed.get_json()["creations"]] == [ok.get_json()["id"]]


def test_firebase_mode_without_a_project_refuses_to_start(tmp_path):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="PHOENIX_FIREBASE_PROJECT"):
        create_app(
            Settings(data_dir=tmp_path, auth="firebase"),
            store=InMemoryCreationStore(),
            media=LocalMediaStore(tmp_path),
        )


# --- health, readiness, page -------------------------------------------------------------------


def test_healthz_and_readyz(env, tmp_path):
    client, *_ = env
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200

    app = _app(tmp_path, PingFailsStore(), RecordingDispatcher())
    down = app.test_client()
    assert_error(down.get("/readyz"), 503, "not_ready")
    assert down.get("/healthz").status_code == 200  # liveness does no I/O


def test_page_and_static_assets_are_served(env):
    client, *_ = env
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for marker in (
        'id="prompt"',
        'id="kinds"',  # app.js fills it from the OpenAPI document (tests/browser)
        'id="kind-options"',
        'id="submit"',
        'id="error"',
        "/static/app.js",
        "/static/style.css",
    ):
        assert marker in html
    assert "Content-Security-Policy" in page.headers
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").mimetype == "text/css"
    assert_error(client.get("/static/nope.js"), 404, "not_found")


def test_openapi_documents_the_contract_routes(env):
    client, *_ = env
    doc = client.get("/api/openapi.json").get_json()
    for path in (
        "/api/generate/video",
        "/api/generate/image",
        "/api/creations",
        "/api/creations/{creation_id}",
        "/healthz",
        "/readyz",
    ):
        assert path in doc["paths"]


def test_media_route_absent_when_media_store_is_not_local(tmp_path):
    class RemoteMedia(LocalMediaStore):
        file_path = None  # type: ignore[assignment]

        def url_for(self, ref: MediaRef) -> str:
            return f"https://storage.example/{ref.key}?sig=1"

    app = create_app(
        Settings(data_dir=tmp_path),
        store=InMemoryCreationStore(),
        media=RemoteMedia(tmp_path),
        dispatchers=lambda p: RecordingDispatcher(),
    )
    assert_error(app.test_client().get("/media/x/0.png"), 404, "not_found")


# --- tracing ------------------------------------------------------------------------------------


def test_incoming_trace_continues_into_the_record_and_the_task_payload(env):
    client, store, rec, _ = env
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = post(
        client,
        "image",
        {"prompt": "x"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    stored = store.get(resp.get_json()["id"])
    assert stored.traceparent is not None and stored.traceparent.split("-")[1] == trace_id
    assert rec.dispatched[0].traceparent == stored.traceparent


# --- local runtime ------------------------------------------------------------------------------


def test_local_runtime_sweeps_stuck_creations_in_the_background(tmp_path):
    from api.local import start_background_tasks, stop_background_tasks

    store = InMemoryCreationStore()
    rec = RecordingDispatcher()
    long_ago = lc.utcnow() - timedelta(minutes=2)
    stuck = lc.new(user_id="u", kind=Kind.IMAGE, prompt="p", params={}, path="local", now=long_ago)
    store.add(stuck)
    store.update(stuck.id, lambda c: lc.mark_dispatch_failed(c, now=long_ago, reason="down"))
    app = create_app(
        Settings(data_dir=tmp_path, sweep_interval_seconds=3600),
        store=store,
        media=LocalMediaStore(tmp_path),
        dispatchers=lambda path: rec,
    )
    start_background_tasks(app)  # sweeps once at start, then every interval
    try:
        deadline = time.monotonic() + 10
        while not rec.dispatched and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop_background_tasks(app)
    assert [p.creation_id for p in rec.dispatched] == [stuck.id]
    swept = store.get(stuck.id)
    assert swept.dispatch_error is None and swept.dispatches == 1
