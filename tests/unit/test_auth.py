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
    with pytest.raises(AuthError, match=reason):
        verifier.verify(key.sign(claims))


def test_forged_signature_is_rejected(verifier):
    forger = make_key("k1")  # same kid, different key
    with pytest.raises(AuthError, match="signature"):
        verifier.verify(forger.sign(firebase_claims(PROJECT, "mallory")))


def test_unknown_key_id_triggers_one_refetch_then_fails(verifier, key):
    with pytest.raises(AuthError):
        verifier.verify(key.sign(firebase_claims(PROJECT, "a"), kid="rotated"))
    assert len(verifier.fetches) == 1


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x.y"])
def test_garbage_is_rejected_without_echoing_it(verifier, token):
    with pytest.raises(AuthError) as err:
        verifier.verify(token)
    assert token not in str(err.value) or not token


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    for bad in (None, "", "Basic xyz", "Bearer  "):
        with pytest.raises(AuthError):
            bearer_token(bad)
