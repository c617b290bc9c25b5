"""Firebase ID token verification against locally generated keys (no network)."""

from __future__ import annotations

import time

import pytest

from common.auth import AuthError, FirebaseTokenVerifier, bearer_token
from tests.support.tokens import firebase_claims, make_key

PROJECT = "phoenix-test"


@pytest.fixture(scope="module")
def key():
    return make_key("k1")


@pytest.fixture
def verifier(key):
    fetches = []

    def fetch():
        fetches.append(1)
        return {key.kid: key.cert_pem}, 3600.0

    v = FirebaseTokenVerifier(PROJECT, fetch_certs=fetch)
    v.fetches = fetches  # type: ignore[attr-defined]
    return v


def test_valid_token_yields_the_user(verifier, key):
    token = key.sign(firebase_claims(PROJECT, "alice", email="a@example.com"))
    principal = verifier.verify(token)
    assert principal.user_id == "alice" and principal.email == "a@example.com"
    verifier.verify(token)
    assert len(verifier.fetches) == 1  # certificates are cached


@pytest.mark.parametrize(
    "claims, reason",
    [
        (firebase_claims(PROJECT, "a", ttl=-600), "expired"),
        (firebase_claims("other-project", "a"), "audience"),
        (firebase_claims(PROJECT, "a", iss="https://evil.example"), "issuer"),
        (firebase_claims(PROJECT, "a", iat=int(time.time()) + 3600), "future"),
        (firebase_claims(PROJECT, ""), "subject"),
    ],
)
def test_bad_claims_are_rejected(verifier, key, claims, reason):
    """Shown to fail when the issuer check is removed (scratch branch
    scratch/promises-break-issuer, 2026-12-01)."""
    with pytest.raises(AuthError, match=reason):
        verifier.verify(key.sign(claims))


def test_forged_signature_is_rejected(verifier):
    forger = make_key("k1")  # same kid, different key
    with pytest.raises(AuthError, match="signature"):
        verifier.verify(forger.sign(firebase_claims(PROJECT, "mallory")))


def test_unknown_key_id_triggers_one_refetch_then_fails(key):
    """A warm cache meets a kid it does not hold: exactly one refetch (the cache is not empty, so
    this is not the first fetch), then a 401 reason; the same kid again costs no fetch."""
    clock = FakeClock()
    v, fetches = _counting_verifier(key, clock=clock, min_fetch_interval=30)
    v.verify(key.sign(firebase_claims(PROJECT, "a")))
    assert len(fetches) == 1
    clock.t += 31  # past the minimum interval between fetches
    with pytest.raises(AuthError, match="unknown signing key"):
        v.verify(key.sign(firebase_claims(PROJECT, "a"), kid="rotated"))
    assert len(fetches) == 2
    with pytest.raises(AuthError):
        v.verify(key.sign(firebase_claims(PROJECT, "a"), kid="rotated"))
    assert len(fetches) == 2


def test_certificate_rotation_with_a_warm_cache_costs_exactly_one_refetch(key):
    """Google rotates the securetoken keys: tokens signed with a new ``kid`` start arriving while
    our cache (valid for hours) still holds only the old certificates. The first such token must
    trigger exactly one refetch and verify; later tokens of either key use the new cache. (Google
    publishes a key well before signing with it, so the refetch is past the verifier's minimum
    interval between fetches, which bounds what forged kids can cost.)"""
    new_key = make_key("k2")
    published = [{key.kid: key.cert_pem}]
    fetches: list[int] = []

    def fetch():
        fetches.append(1)
        return dict(published[-1]), 3600.0

    clock = FakeClock()
    verifier = FirebaseTokenVerifier(PROJECT, fetch_certs=fetch, clock=clock, min_fetch_interval=30)
    assert verifier.verify(key.sign(firebase_claims(PROJECT, "old"))).user_id == "old"
    clock.t += 600
    assert verifier.verify(key.sign(firebase_claims(PROJECT, "old"))).user_id == "old"
    assert len(fetches) == 1  # warm, long-lived cache

    published.append({key.kid: key.cert_pem, new_key.kid: new_key.cert_pem})  # rotation
    clock.t += 600
    assert verifier.verify(new_key.sign(firebase_claims(PROJECT, "new"))).user_id == "new"
    assert len(fetches) == 2  # exactly one refetch for the new kid
    for _ in range(3):
        assert verifier.verify(new_key.sign(firebase_claims(PROJECT, "new"))).user_id == "new"
        assert verifier.verify(key.sign(firebase_claims(PROJECT, "old"))).user_id == "old"
    assert len(fetches) == 2  # both keys now served from the refreshed cache


@pytest.mark.parametrize("token", ["abc", "a.b.c", "x.y", "eyJzZWNyZXQiOiJzIn0.cGF5bG9hZA.c2ln"])
def test_garbage_is_rejected_without_echoing_it(verifier, token):
    with pytest.raises(AuthError) as err:
        verifier.verify(token)
    assert token not in str(err.value)
    assert str(err.value) in ("malformed token", "unexpected signing algorithm")
    assert not verifier.fetches  # rejected before any certificate fetch


def test_an_empty_token_is_rejected_as_malformed(verifier):
    with pytest.raises(AuthError, match="^malformed token$"):
        verifier.verify("")
    assert not verifier.fetches


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    for bad in (None, "", "Basic xyz", "Bearer  "):
        with pytest.raises(AuthError):
            bearer_token(bad)


# --- what the maintained verifier lacks: certificate cache, fetch discipline, no 500s ------------

import base64  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402

from common.auth import cache_seconds  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _counting_verifier(key, *, max_age=3600.0, clock=None, fetch_gate=None, **kw):
    calls = []

    def fetch():
        calls.append(threading.current_thread().name)
        if fetch_gate is not None:
            fetch_gate.wait(10)
        return {key.kid: key.cert_pem}, max_age

    v = FirebaseTokenVerifier(PROJECT, fetch_certs=fetch, clock=clock or FakeClock(), **kw)
    return v, calls


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("kid", [7, 1.5, ["k1"], {"k": "v"}, None, True, "", "x" * 500, "k1\n"])
def test_any_kid_that_is_not_a_short_string_is_a_401_not_a_crash(verifier, key, kid):
    verifier.verify(key.sign(firebase_claims(PROJECT, "warm")))  # certificates cached, as in
    # a running server: the state in which an unhashable kid used to raise TypeError (500)
    token = f"{_b64({'alg': 'RS256', 'kid': kid})}.{_b64(firebase_claims(PROJECT, 'a'))}.c2ln"
    with pytest.raises(AuthError):
        verifier.verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        f"{_b64([1, 2])}.{_b64({})}.x",
        f"{_b64('str')}.e30.x",
        "e30.e30.e30",
        "%%%.%%%.%%%",
        "é.é.é",
        f"{_b64({'alg': 'RS256', 'kid': 'k1'})}.bm90IGpzb24.!!!",
        f"{_b64({'alg': 'RS256', 'kid': 'k1'})}.{_b64([1])}.c2ln",
        "." * 2 + "x" * 20000,
        b"bytes.are.not",
        None,
        12,
    ],
)
def test_malformed_tokens_are_auth_errors(verifier, token):
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_the_maintained_google_auth_verifier_does_the_checks(verifier, key, monkeypatch):
    from google.oauth2 import id_token

    real = id_token.verify_firebase_token
    seen = []

    def spy(token, request, audience=None, clock_skew_in_seconds=0):
        seen.append(audience)
        return real(token, request, audience=audience, clock_skew_in_seconds=clock_skew_in_seconds)

    monkeypatch.setattr(id_token, "verify_firebase_token", spy)
    assert verifier.verify(key.sign(firebase_claims(PROJECT, "alice"))).user_id == "alice"
    assert seen == [PROJECT]


def test_cache_control_max_age_minus_age_is_honoured():
    assert cache_seconds({"Cache-Control": "public, max-age=19845, must-revalidate"}) == 19845
    assert cache_seconds({"Cache-Control": "public, max-age=600", "Age": "100"}) == 500
    assert cache_seconds({"Cache-Control": "max-age=60", "Age": "999"}) == 0
    assert cache_seconds({"Cache-Control": "no-cache"}) == 0
    assert cache_seconds({"Cache-Control": "private, no-store"}) == 0
    assert cache_seconds({}) > 0


def test_certificates_are_kept_exactly_as_long_as_allowed(key):
    clock = FakeClock()
    v, fetches = _counting_verifier(key, max_age=100.0, clock=clock, min_fetch_interval=5)
    token = key.sign(firebase_claims(PROJECT, "alice"))
    v.verify(token)
    clock.t += 99
    v.verify(token)
    assert len(fetches) == 1
    clock.t += 2  # past max-age: refreshed once (in the background), stale ones served meanwhile
    v.verify(token)
    for _ in range(500):
        if len(fetches) == 2 and not v.certificates._fetch_lock.locked():
            break
        threading.Event().wait(0.01)
    v.verify(token)
    v.verify(token)
    assert len(fetches) == 2


def test_random_kids_cost_at_most_one_fetch_per_minimum_interval(key):
    """Shown failing: with the negative cache removed (an unknown kid not remembered, scratch
    break in ``common/auth.py``), the repeated forged kid fetched again and this failed."""
    clock = FakeClock()
    v, fetches = _counting_verifier(key, clock=clock, min_fetch_interval=30)
    v.verify(key.sign(firebase_claims(PROJECT, "alice")))  # warm: 1 fetch
    claims = firebase_claims(PROJECT, "mallory")
    body = _b64(claims)
    for _i in range(300):
        # Shaped like a real token; the signature is never checked (the kid is unknown).
        forged = f"{_b64({'alg': 'RS256', 'kid': uuid.uuid4().hex})}.{body}.c2lnbmF0dXJl"
        with pytest.raises(AuthError, match="unknown signing key"):
            v.verify(forged)
        clock.t += 0.1  # 300 tokens over 30 s
    assert len(fetches) <= 2, len(fetches)  # the warm-up + at most 30 s / 30 s
    # The same unknown kid again, after the interval: refused from the negative cache.
    repeated = key.sign(claims, kid="forged-kid")
    with pytest.raises(AuthError):
        v.verify(repeated)
    before = len(fetches)
    clock.t += 31
    with pytest.raises(AuthError):
        v.verify(repeated)
    assert len(fetches) == before


def test_a_rotated_key_is_picked_up_after_the_minimum_interval():
    old, new = make_key("old"), make_key("new")
    published = {old.kid: old.cert_pem}
    clock = FakeClock()
    v = FirebaseTokenVerifier(
        PROJECT,
        fetch_certs=lambda: (dict(published), 3600.0),
        clock=clock,
        min_fetch_interval=30,
    )
    v.verify(old.sign(firebase_claims(PROJECT, "a")))
    published[new.kid] = new.cert_pem
    clock.t += 31
    assert v.verify(new.sign(firebase_claims(PROJECT, "b"))).user_id == "b"


def test_a_valid_user_never_waits_for_a_certificate_fetch(key):
    """A refresh in progress (slow certificate endpoint) blocks neither the request that found
    the certificates expired, nor other valid users, nor garbage with an unknown key: all are
    answered at once while one background thread fetches.

    Shown failing: with an unknown kid's fetch made in the caller's thread (scratch break in
    ``common/auth.py``), this failed."""
    clock = FakeClock()
    gate = threading.Event()
    v, fetches = _counting_verifier(key, max_age=60.0, clock=clock, fetch_gate=gate)
    gate.set()
    valid = key.sign(firebase_claims(PROJECT, "alice"))
    v.verify(valid)  # warm
    gate.clear()
    clock.t += 61  # expired: the next request triggers a refresh, and that fetch hangs

    results: dict[str, object] = {}

    def noticer() -> None:
        results["noticer"] = v.verify(valid).user_id

    def valid_user() -> None:
        results["valid"] = v.verify(valid).user_id

    def garbage() -> None:
        try:
            v.verify(key.sign(firebase_claims(PROJECT, "m"), kid="never-seen"))
        except AuthError as exc:
            results["garbage"] = str(exc)

    first = threading.Thread(target=noticer, daemon=True)
    first.start()
    first.join(2)
    assert results == {"noticer": "alice"}
    for _ in range(200):  # the background refresh has started and is stuck in the fetch
        if len(fetches) == 2:
            break
        threading.Event().wait(0.01)
    assert len(fetches) == 2 and fetches[1] == "firebase-certs"
    others = [threading.Thread(target=f, daemon=True) for f in (valid_user, garbage)]
    for t in others:
        t.start()
    for t in others:
        t.join(2)
    assert results == {"noticer": "alice", "valid": "alice", "garbage": "unknown signing key"}
    gate.set()
    for _ in range(200):
        if not v.certificates._fetch_lock.locked():
            break
        threading.Event().wait(0.01)
    v.verify(valid)
    assert len(fetches) == 2  # refreshed once, fresh again
