"""Security properties of the API, checked from the outside:

* a user can never read or list another user's creation (404, same answer as a missing id, so
  ids cannot be probed; no 304 leak through ``If-None-Match``);
* in production auth mode (``PHOENIX_AUTH=firebase``) every token that is forged, expired, for
  another project, from another issuer, unsigned, HMAC-signed with the public cert, or
  malformed gets 401 with the API's JSON error and ``WWW-Authenticate: Bearer``; the error never
  echoes the token;
* ``X-Phoenix-User`` (local mode's identity header) means nothing in production mode: alone it
  is 401, next to a valid token it is ignored;
* the admin dashboard (HTML and JSON) is 403 for signed-in non-admins, 401 when signed out;
* local media cannot be used to read files outside the media directory;
* bearer tokens never reach the logs: the real server (``python -m api.main`` under gunicorn,
  DEBUG level, JSON logs, access log on) and the in-process pipeline are both captured while
  requests carry tokens in ``Authorization``, cookies, query strings and bodies.

Firebase certificates are injected through ``create_app(..., token_verifier=
FirebaseTokenVerifier(project, fetch_certs=...))`` with keys made by ``tests.support.tokens``:
nothing here talks to Google.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from common import logs
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.auth import FirebaseTokenVerifier
from common.config import Settings
from tests.support.tokens import SigningKey, firebase_claims, make_key
from tools.servers import free_port, stop_process_group, wait_for_http

PROJECT = "phoenix-sec-test"
ADMIN = "admin-uid"
LEASE = timedelta(seconds=60)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return make_key("key-1")


@pytest.fixture(scope="module")
def attacker_key() -> SigningKey:
    # Same key id as the real one, different private key: a forged signature.
    return make_key("key-1")


def _app(tmp_path: Path, *, auth: str, key: SigningKey | None = None) -> Any:
    settings = Settings(
        data_dir=tmp_path,
        dispatch="record",
        auth=auth,
        firebase_project=PROJECT if auth == "firebase" else "",
        admins=(ADMIN,),
        rate_limit_per_minute=0,
        max_active_per_user=0,
    )
    recorder = RecordingDispatcher()
    verifier = None
    if auth == "firebase":
        assert key is not None
        verifier = FirebaseTokenVerifier(
            PROJECT, fetch_certs=lambda: ({key.kid: key.cert_pem}, 3600.0)
        )
    app = create_app(
        settings,
        store=SqliteCreationStore(settings.sqlite_path),
        media=LocalMediaStore(settings.media_dir),
        dispatchers=lambda path: recorder,
        token_verifier=verifier,
    )
    app.testing = True
    return app


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_token(claims: dict) -> str:
    header = _b64(json.dumps({"alg": "none", "kid": "key-1", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _hs256_with_public_cert(claims: dict, cert_pem: str) -> str:
    """The classic algorithm-confusion forgery: HMAC-sign with the *public* certificate."""
    header = _b64(json.dumps({"alg": "HS256", "kid": "key-1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(cert_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def _assert_401(resp: Any, secret: str | None = None) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["error"]["code"] == "unauthenticated", body
    assert body["error"]["message"]
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert resp.headers.get("Cache-Control") == "no-store"
    if secret:
        assert secret not in resp.get_data(as_text=True)


def _create(client: Any, headers: dict[str, str], prompt: str = "mine") -> str:
    resp = client.post("/api/generate/image", json={"prompt": prompt}, headers=headers)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return str(resp.get_json()["id"])


# --- ownership ---------------------------------------------------------------------------------


def _assert_isolated(client: Any, alice: dict[str, str], bob: dict[str, str]) -> None:
    alice_id = _create(client, alice, "alice's secret prompt")
    bob_id = _create(client, bob, "bob's prompt")

    own = client.get(f"/api/creations/{alice_id}", headers=alice)
    assert own.status_code == 200
    etag = own.headers["ETag"]

    missing = client.get("/api/creations/0123456789abcdef0123456789abcdef", headers=bob)
    foreign = client.get(f"/api/creations/{alice_id}", headers=bob)
    assert foreign.status_code == 404
    # Indistinguishable from a missing id: same status, same body.
    assert foreign.get_json() == missing.get_json()
    assert "alice" not in foreign.get_data(as_text=True)
    # Conditional requests do not leak existence either (no 304 for someone else's record).
    for inm in (etag, "*"):
        cond = client.get(f"/api/creations/{alice_id}", headers={**bob, "If-None-Match": inm})
        assert cond.status_code == 404, inm

    listing = client.get("/api/creations?limit=100", headers=bob).get_json()["creations"]
    assert [c["id"] for c in listing] == [bob_id]
    listing = client.get("/api/creations?limit=100", headers=alice).get_json()["creations"]
    assert [c["id"] for c in listing] == [alice_id]


def test_local_mode_users_cannot_see_each_others_creations(tmp_path: Path) -> None:
    """Shown to fail when the service stops checking the owner (scratch branch
    scratch/promises-break-ownership, 2026-12-01)."""
    client = _app(tmp_path, auth="local").test_client()
    _assert_isolated(client, {"X-Phoenix-User": "alice"}, {"X-Phoenix-User": "bob"})


def test_firebase_mode_users_cannot_see_each_others_creations(
    tmp_path: Path, key: SigningKey
) -> None:
    client = _app(tmp_path, auth="firebase", key=key).test_client()
    alice = _bearer(key.sign(firebase_claims(PROJECT, "alice")))
    bob = _bearer(key.sign(firebase_claims(PROJECT, "bob")))
    _assert_isolated(client, alice, bob)


# --- firebase tokens ---------------------------------------------------------------------------


def test_firebase_mode_rejects_every_bad_token_with_401_json(
    tmp_path: Path, key: SigningKey, attacker_key: SigningKey
) -> None:
    client = _app(tmp_path, auth="firebase", key=key).test_client()
    now = int(time.time())
    bad_tokens = {
        "forged signature": attacker_key.sign(firebase_claims(PROJECT, "alice")),
        "expired": key.sign(firebase_claims(PROJECT, "alice", iat=now - 7200, exp=now - 3600)),
        "wrong audience": key.sign(firebase_claims(PROJECT, "alice", aud="someone-else")),
        "wrong issuer": key.sign(
            firebase_claims(PROJECT, "alice", iss="https://securetoken.google.com/someone-else")
        ),
        "issued in the future": key.sign(
            firebase_claims(PROJECT, "alice", iat=now + 3600, exp=now + 7200)
        ),
        "empty subject": key.sign(firebase_claims(PROJECT, "", user_id="")),
        "unknown key id": key.sign(firebase_claims(PROJECT, "alice"), kid="rotated-away"),
        "alg none": _unsigned_token(firebase_claims(PROJECT, "alice")),
        "HS256 with the public cert": _hs256_with_public_cert(
            firebase_claims(PROJECT, "alice"), key.cert_pem
        ),
        "garbage": "not.a.jwt",
        "truncated": key.sign(firebase_claims(PROJECT, "alice"))[:-20],
    }
    for name, token in bad_tokens.items():
        for method, path, body in (
            ("post", "/api/generate/image", {"prompt": "x"}),
            ("get", "/api/creations", None),
            ("get", "/api/creations/0123456789abcdef0123456789abcdef", None),
        ):
            resp = getattr(client, method)(path, json=body, headers=_bearer(token))
            try:
                _assert_401(resp, secret=token)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {method.upper()} {path}: {exc}") from None

    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
        {"Authorization": key.sign(firebase_claims(PROJECT, "alice"))},  # no scheme
    ):
        _assert_401(client.get("/api/creations", headers=headers))

    # Nothing was created by any of the refused requests.
    store = client.application.extensions["phoenix"].store
    assert store.scan(limit=10) == []

    good = key.sign(firebase_claims(PROJECT, "alice"))
    ok = client.post("/api/generate/image", json={"prompt": "x"}, headers=_bearer(good))
    assert ok.status_code == 202, ok.get_data(as_text=True)


def test_the_local_identity_header_means_nothing_in_firebase_mode(
    tmp_path: Path, key: SigningKey
) -> None:
    client = _app(tmp_path, auth="firebase", key=key).test_client()
    bob = _bearer(key.sign(firebase_claims(PROJECT, "bob")))
    bob_id = _create(client, bob, "bob's")

    # Alone: refused, whatever it claims.
    for user in ("bob", "local", ADMIN):
        _assert_401(client.get("/api/creations", headers={"X-Phoenix-User": user}))
        _assert_401(
            client.post(
                "/api/generate/image", json={"prompt": "x"}, headers={"X-Phoenix-User": user}
            )
        )
        _assert_401(client.get("/admin/migration", headers={"X-Phoenix-User": user}))

    # Next to alice's valid token: ignored, alice stays alice.
    alice = {**_bearer(key.sign(firebase_claims(PROJECT, "alice"))), "X-Phoenix-User": "bob"}
    assert client.get(f"/api/creations/{bob_id}", headers=alice).status_code == 404
    assert client.get("/api/creations", headers=alice).get_json()["creations"] == []
    alice_id = _create(client, alice, "alice's")
    record = client.application.extensions["phoenix"].store.get(alice_id)
    assert record.user_id == "alice"
    admin_try = {**alice, "X-Phoenix-User": ADMIN}
    assert client.get("/api/admin/migration", headers=admin_try).status_code == 403


# Header values an HTTP client can send: no CR/LF/NUL (Werkzeug's test client refuses those).
_HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0xFF, blacklist_characters="\r\n"),
    max_size=300,
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _jwt_shaped(draw: Any) -> str:
    """Three base64url segments whose header is any JSON (random kid types, algs, shapes)."""
    header = draw(
        st.one_of(
            st.fixed_dictionaries(
                {"alg": st.sampled_from(["RS256", "none", "HS256", "ES256", ""]) | _JSON_VALUES},
                optional={"kid": _JSON_VALUES | st.uuids().map(str), "typ": _JSON_VALUES},
            ),
            _JSON_VALUES,
        )
    )
    payload = draw(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5))
    seg = lambda obj: _b64(json.dumps(obj).encode())  # noqa: E731
    signature = draw(st.binary(max_size=64)) if draw(st.booleans()) else b""
    return f"{seg(header)}.{seg(payload)}.{_b64(signature)}"


@st.composite
def _rs256_odd_kid(draw: Any) -> str:
    """What a forger sends most: RS256 with a kid of any JSON type (unhashable ones included)."""
    kid = draw(_JSON_VALUES | st.uuids().map(str))
    seg = lambda obj: _b64(json.dumps(obj).encode())  # noqa: E731
    return f"{seg({'alg': 'RS256', 'kid': kid})}.{seg({'sub': 'mallory'})}.{_b64(draw(st.binary(max_size=64)))}"


_AUTHORIZATION = st.one_of(
    _rs256_odd_kid().map(lambda t: "Bearer " + t),
    _HEADER_TEXT,
    _HEADER_TEXT.map(lambda t: "Bearer " + t),
    _jwt_shaped().map(lambda t: "Bearer " + t),
    st.tuples(
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer  "]), _jwt_shaped()
    ).map(" ".join),
)


def test_fuzzed_authorization_headers_get_nothing_but_401(tmp_path: Path, key: SigningKey) -> None:
    """Property: whatever the Authorization header holds, the answer is a JSON 401 (never a 500,
    never a 2xx) and never echoes the header."""
    client = _app(tmp_path, auth="firebase", key=key).test_client()
    # A running server has its certificates cached: warm the cache as a signed-in user would.
    warm = _bearer(key.sign(firebase_claims(PROJECT, "alice")))
    assert client.get("/api/creations", headers=warm).status_code == 200
    seen: list[int] = []

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(header=_AUTHORIZATION, route=st.sampled_from(["list", "get", "post"]))
    def check(header: str, route: str) -> None:
        headers = {"Authorization": header}
        if route == "list":
            resp = client.get("/api/creations", headers=headers)
        elif route == "get":
            resp = client.get("/api/creations/0123456789abcdef0123456789abcdef", headers=headers)
        else:
            resp = client.post("/api/generate/image", json={"prompt": "x"}, headers=headers)
        seen.append(resp.status_code)
        _assert_401(resp, secret=header if len(header) > 12 else None)

    check()
    assert len(seen) >= 400 and set(seen) == {401}


# --- admin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/migration", "/api/admin/migration", "/api/admin/failures"]
)
def test_admin_dashboard_is_forbidden_to_non_admins(
    tmp_path: Path, key: SigningKey, path: str
) -> None:
    local = _app(tmp_path / "local", auth="local").test_client()
    resp = local.get(path, headers={"X-Phoenix-User": "mallory"})
    assert resp.status_code == 403 and resp.mimetype == "application/json"
    assert resp.get_json()["error"]["code"] == "forbidden"
    assert local.get(path, headers={"X-Phoenix-User": ADMIN}).status_code == 200

    fb = _app(tmp_path / "fb", auth="firebase", key=key).test_client()
    _assert_401(fb.get(path))
    mallory = fb.get(path, headers=_bearer(key.sign(firebase_claims(PROJECT, "mallory"))))
    assert mallory.status_code == 403 and mallory.get_json()["error"]["code"] == "forbidden"
    admin = fb.get(path, headers=_bearer(key.sign(firebase_claims(PROJECT, ADMIN))))
    assert admin.status_code == 200


# --- local media ------------------------------------------------------------------------------


def test_media_route_cannot_escape_the_media_directory(tmp_path: Path) -> None:
    app = _app(tmp_path, auth="local")
    (tmp_path / "secret.txt").write_text("top secret")
    (tmp_path / "media").mkdir(exist_ok=True)
    client = app.test_client()
    for path in (
        "/media/../secret.txt",
        "/media/%2e%2e/secret.txt",
        "/media/..%2fsecret.txt",
        "/media/%2e%2e%2fcreations.sqlite3",
        "/media//etc/passwd",
        "/media/....//secret.txt",
    ):
        # Werkzeug may first redirect "//" to "/" (still under /media/): follow it.
        resp = client.get(path, follow_redirects=True)
        assert resp.status_code in (404, 400), (path, resp.status_code)
        assert b"top secret" not in resp.data and b"SQLite" not in resp.data, path


def _complete_with_media(app: Any, creation_id: str) -> str:
    """Finish a creation the way a job does: media file written, record completed."""
    from common.domain import creation as lc
    from common.domain.creation import MediaRef

    services = app.extensions["phoenix"]
    key = f"{creation_id}/0.png"
    services.media.put(key, b"\x89PNG alice's picture", "image/png")
    now = lc.utcnow()
    services.store.update(
        creation_id, lambda c: lc.claim(c, owner="job", now=now, lease=LEASE, max_attempts=3)
    )
    services.store.update(
        creation_id,
        lambda c: lc.complete(c, owner="job", now=now, media=(MediaRef(key, "image/png"),)),
    )
    return key


def test_local_media_is_served_only_to_its_owner_with_the_foreign_creation_404(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, auth="local")
    client = app.test_client()
    alice = {"X-Phoenix-User": "alice"}
    alice_id = _create(client, alice, "alice's picture")
    key = _complete_with_media(app, alice_id)
    url = client.get(f"/api/creations/{alice_id}", headers=alice).get_json()["media"][0]["url"]
    assert url == f"/media/{key}"

    own = client.get(url, headers=alice)
    assert own.status_code == 200 and own.data.startswith(b"\x89PNG")
    # The page's <img> requests carry the cookie instead of the header.
    client.set_cookie("phoenix_user", "alice")
    assert client.get(url).status_code == 200
    client.delete_cookie("phoenix_user")

    foreign_creation = client.get(f"/api/creations/{alice_id}", headers={"X-Phoenix-User": "bob"})
    assert foreign_creation.status_code == 404
    # Another user, the default local user, a cookie for another user, a key that is not one of
    # the creation's media, a file that exists on disk under a made-up id: one answer.
    (tmp_path / "media" / "0123456789abcdef0123456789abcdef").mkdir(parents=True)
    (tmp_path / "media" / "0123456789abcdef0123456789abcdef" / "0.png").write_bytes(b"x")
    attempts = [
        client.get(url, headers={"X-Phoenix-User": "bob"}),
        client.get(url),
        client.get(f"/media/{alice_id}/1.png", headers=alice),
        client.get("/media/0123456789abcdef0123456789abcdef/0.png", headers=alice),
    ]
    client.set_cookie("phoenix_user", "bob")
    attempts.append(client.get(url))
    for resp in attempts:
        assert resp.status_code == 404
        assert resp.get_json() == foreign_creation.get_json()
        assert b"PNG" not in resp.data


def test_local_media_needs_a_signed_in_owner_in_firebase_mode(
    tmp_path: Path, key: SigningKey
) -> None:
    app = _app(tmp_path, auth="firebase", key=key)
    client = app.test_client()
    alice = _bearer(key.sign(firebase_claims(PROJECT, "alice")))
    media_key = _complete_with_media(app, _create(client, alice))
    assert client.get(f"/media/{media_key}", headers=alice).status_code == 200
    _assert_401(client.get(f"/media/{media_key}"))
    bob = _bearer(key.sign(firebase_claims(PROJECT, "bob")))
    assert client.get(f"/media/{media_key}", headers=bob).status_code == 404


# --- secrets in logs ---------------------------------------------------------------------------


def _token_carrying_requests(token: str) -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, headers, json body) that put the token where careless code logs it."""
    auth = _bearer(token)
    return [
        ("GET", "/api/creations", auth, None),
        ("POST", "/api/generate/image", auth, {"prompt": "a fox"}),
        ("POST", "/api/generate/image", auth, {"prompt": "x", "unknown": token}),
        ("GET", "/api/creations/0123456789abcdef0123456789abcdef", auth, None),
        ("GET", f"/api/creations?limit=5&access_token={token}", auth, None),
        ("GET", "/no/such/route", {**auth, "Cookie": f"session={token}"}, None),
        ("GET", "/admin/migration", auth, None),
        ("GET", "/api/creations", {"Authorization": f"Bearer {token}x"}, None),  # bad token
    ]


def test_in_process_logs_never_contain_the_token(tmp_path: Path, key: SigningKey) -> None:
    token = key.sign(firebase_claims(PROJECT, "alice"))
    buffer = io.StringIO()
    for fmt in ("json", "pretty"):
        logs.configure_logging(fmt, "DEBUG", service="security-test", stream=buffer)
        try:
            client = _app(tmp_path / fmt, auth="firebase", key=key).test_client()
            for method, path, headers, body in _token_carrying_requests(token):
                client.open(path, method=method, headers=headers, json=body)
        finally:
            logs._reset_for_tests()
    output = buffer.getvalue()
    assert "creation_dispatched" in output  # we captured the real pipeline
    assert token not in output
    # Not even a recognisable fragment (the signature part is the secret-bearing piece).
    assert token.split(".")[2][:16] not in output


def _serve(tmp_path: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(
        PORT=str(port),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PYTHONUNBUFFERED="1",
        PHOENIX_DATA_DIR=str(tmp_path / f"data-{port}"),
        PHOENIX_DISPATCH="record",
        PHOENIX_LOG_FORMAT="json",
        PHOENIX_LOG_LEVEL="DEBUG",
        PHOENIX_RATE_LIMIT_PER_MINUTE="0",
        **env_extra,
    )
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.main", "--host", "127.0.0.1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
    except BaseException:
        stop_process_group(proc)
        raise
    return proc, f"http://127.0.0.1:{port}", log_path


def test_real_server_logs_never_contain_the_token(tmp_path: Path, key: SigningKey) -> None:
    token = key.sign(firebase_claims(PROJECT, "alice"))
    closed = free_port()  # nothing listens here
    modes = {
        "local": {"PHOENIX_AUTH": "local"},
        # Firebase mode in a separate process cannot be handed certificates, so its fetch must
        # fail: pointing the proxy at a closed loopback port keeps it on this machine. Every
        # token is then refused, which is the path most likely to log what it refused.
        "firebase": {
            "PHOENIX_AUTH": "firebase",
            "PHOENIX_FIREBASE_PROJECT": PROJECT,
            "HTTPS_PROXY": f"http://127.0.0.1:{closed}",
            "HTTP_PROXY": f"http://127.0.0.1:{closed}",
            "NO_PROXY": "",
        },
    }
    session = requests.Session()
    session.trust_env = False  # our own requests go straight to loopback
    for mode, extra in modes.items():
        proc, base, log_path = _serve(tmp_path, extra)
        try:
            statuses = []
            for method, path, headers, body in _token_carrying_requests(token):
                resp = session.request(method, base + path, headers=headers, json=body, timeout=15)
                statuses.append(resp.status_code)
                assert resp.status_code < 500, (mode, path, resp.text)
                assert token not in resp.text
            if mode == "firebase":
                assert set(statuses) <= {401, 404}, statuses
        finally:
            stop_process_group(proc)
        output = log_path.read_text(errors="replace")
        assert output.count("http_request") >= len(statuses), (mode, output[-2000:])
        assert token not in output, mode
        assert token.split(".")[2][:16] not in output, mode
