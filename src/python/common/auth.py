"""Verifying Firebase / Identity Platform ID tokens, the production identity.

The cryptography and the Firebase claim rules (RS256 signature against Google's published
certificates, ``aud`` = our project, ``iss`` = ``https://securetoken.google.com/<project>``,
``exp``/``iat`` with clock skew, a non-empty ``sub``) are google-auth's maintained verifier,
``google.oauth2.id_token.verify_firebase_token``. What it lacks, and this module adds:

* **A certificate cache shared by every thread**, kept for as long as Google's Cache-Control
  allows. google-auth fetches the certificates on every call unless its transport caches; here
  the verifier's transport answers from this cache and never touches the network.
* **No request waits on a fetch it does not need.** A token whose key is cached is verified
  with no lock at all; expired certificates are refreshed by one background thread while every
  request keeps using the cached (stale) ones.
* **Unknown key ids cannot trigger fetches.** Unsigned or garbage tokens name random ``kid``s;
  each one used to cost a download under a global lock, stalling everyone. Now an unknown
  ``kid`` may trigger at most one fetch per ``min_fetch_interval`` (across all kids), a ``kid``
  that was looked up and not found is remembered (negative cache) and refused at once, and no
  request ever queues behind someone else's fetch for an unknown key.
* **401, never 500.** Every malformed header (non-string ``kid``, bad base64, non-object JSON,
  absurd sizes) ends as AuthError, whose message is fixed text that never echoes the token.

Independent of Flask, so jobs or tools can reuse it. (At about our ~350-line norm on purpose:
the certificate cache, the fetch discipline and the header parsing are one defence against
token floods, reviewed together.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

FIREBASE_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)
_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE_RE = re.compile(r"(?:^|[,\s])(no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)
# Firebase ID tokens are about 1 KB; anything far larger is not one.
MAX_TOKEN_LENGTH = 8192
_KID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Used when the certificate response carries no max-age (Google's always does).
DEFAULT_MAX_AGE_SECONDS = 300.0


class AuthError(Exception):
    """The caller is not authenticated; the message is safe to return (it never echoes the token)."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str | None = None


# Returns ({kid: PEM certificate}, seconds the answer may be cached).
CertFetcher = Callable[[], tuple[Mapping[str, str], float]]


def cache_seconds(headers: Mapping[str, str]) -> float:
    """How long a response may be cached: Cache-Control max-age minus Age; 0 for no-cache /
    no-store; ``DEFAULT_MAX_AGE_SECONDS`` when the server says nothing."""
    control = headers.get("Cache-Control", "") or ""
    if _NO_CACHE_RE.search(control):
        return 0.0
    match = _MAX_AGE_RE.search(control)
    if not match:
        return DEFAULT_MAX_AGE_SECONDS
    try:
        age = float(headers.get("Age", "0") or 0)
    except ValueError:
        age = 0.0
    return max(0.0, float(match.group(1)) - max(0.0, age))


def http_cert_fetcher(url: str = FIREBASE_CERTS_URL, timeout: float = 5.0) -> CertFetcher:
    """Fetches {kid: PEM cert} and how long it may be cached (Cache-Control, Age)."""

    def fetch() -> tuple[Mapping[str, str], float]:
        import requests

        resp = requests.get(url, timeout=timeout)
        resp.raise_for_status()
        certs = resp.json()
        if not isinstance(certs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in certs.items()
        ):
            raise ValueError("certificate endpoint did not return {kid: PEM}")
        return certs, cache_seconds(resp.headers)

    return fetch


class CertificateCache:
    """Google's signing certificates, shared by every thread of the process.

    Readers take no lock: the current ``(certs, encoded, expires)`` is one tuple swapped
    atomically. Fetches are serialised by ``_fetch_lock``, which only a refreshing thread (or,
    before the first fetch ever, every thread: there is nothing to verify with yet) waits on.
    """

    def __init__(
        self,
        fetch: CertFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_fetch_interval: float = 30.0,
        negative_ttl: float = 300.0,
        max_negative: int = 10_000,
        first_fetch_timeout: float = 10.0,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.min_fetch_interval = min_fetch_interval
        self._negative_ttl = negative_ttl
        self._max_negative = max_negative
        self._first_fetch_timeout = first_fetch_timeout
        self._state: tuple[dict[str, str], bytes, float] = ({}, b"{}", float("-inf"))
        self._fetch_lock = threading.Lock()
        self._last_attempt = float("-inf")
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._negative_lock = threading.Lock()
        self.fetches = 0  # attempts, for tests and benchmarks

    # --- reads --------------------------------------------------------------------------

    def current(self) -> tuple[dict[str, str], bytes]:
        certs, encoded, _ = self._state
        return certs, encoded

    def lookup(self, kid: str) -> bool:
        """Whether ``kid`` names a current certificate, fetching only when allowed to."""
        certs, _, expires = self._state
        now = self._clock()
        if kid in certs:
            if now >= expires:
                self._refresh_in_background()  # stale is still usable meanwhile
            return True
        if not certs:
            # Nothing cached yet (first request of the process, or every fetch failed so far).
            self._refresh(blocking=True)
            return kid in self._state[0]
        if self._negatively_cached(kid, now):
            return False
        # An unknown kid: a key rotation we have not seen, or (far more often) a forged token.
        # At most one fetch per min_fetch_interval, and nobody waits for someone else's.
        self._refresh(blocking=False)
        if kid in self._state[0]:
            return True
        self._remember_unknown(kid, now)
        return False

    # --- fetching -----------------------------------------------------------------------

    def _refresh_in_background(self) -> None:
        """Refresh expired certificates without making the request that noticed wait for
        Google: at most one refresher thread at a time."""
        if self._fetch_lock.locked():
            return
        threading.Thread(
            target=self._refresh, kwargs={"blocking": False}, name="firebase-certs", daemon=True
        ).start()

    def _refresh(self, *, blocking: bool) -> None:
        acquired = (
            self._fetch_lock.acquire(timeout=self._first_fetch_timeout)
            if blocking
            else self._fetch_lock.acquire(blocking=False)
        )
        if not acquired:
            return  # someone else is fetching; use what we have
        try:
            now = self._clock()
            if now - self._last_attempt < self.min_fetch_interval:
                # Fetched (or tried to) a moment ago, maybe by the thread we waited for: the
                # interval bounds fetches whatever the tokens say, even if that attempt failed.
                return
            self._last_attempt = now
            self.fetches += 1
            try:
                fetched, max_age = self._fetch()
            except Exception as exc:
                # Keep serving what we have; the error is logged, never shown to the caller.
                log.warning("firebase_certs_fetch_failed", error=type(exc).__name__)
                return
            fresh = {str(k): str(v) for k, v in fetched.items()}
            self._state = (
                fresh,
                json.dumps(fresh).encode(),
                self._clock() + max(0.0, float(max_age)),
            )
            with self._negative_lock:
                for kid in fresh:
                    self._negative.pop(kid, None)
        finally:
            self._fetch_lock.release()

    # --- the negative cache ---------------------------------------------------------------

    def _negatively_cached(self, kid: str, now: float) -> bool:
        with self._negative_lock:
            until = self._negative.get(kid)
            if until is None:
                return False
            if now >= until:
                del self._negative[kid]
                return False
            return True

    def _remember_unknown(self, kid: str, now: float) -> None:
        with self._negative_lock:
            self._negative[kid] = now + self._negative_ttl
            self._negative.move_to_end(kid)
            while len(self._negative) > self._max_negative:
                self._negative.popitem(last=False)


class _CachedResponse:
    status = 200
    headers: Mapping[str, str] = {}

    def __init__(self, data: bytes) -> None:
        self.data = data


class _CachedCertsTransport:
    """A ``google.auth.transport.Request`` that answers the verifier's certificate download
    from our cache: the maintained verifier does the checks, we decide when to fetch."""

    def __init__(self, encoded_certs: bytes) -> None:
        self._data = encoded_certs

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> _CachedResponse:
        return _CachedResponse(self._data)


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _header(token: str) -> Mapping[str, Any]:
    """The JOSE header, or AuthError: the only part of the token read before verification."""
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2 or not token.isascii():
        raise AuthError("malformed token")
    try:
        header = _b64_json(token.split(".", 1)[0])
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


class FirebaseTokenVerifier:
    def __init__(
        self,
        project_id: str,
        *,
        fetch_certs: CertFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        clock_skew_seconds: int = 30,
        min_fetch_interval: float = 30.0,
        negative_ttl: float = 300.0,
    ) -> None:
        if not project_id:
            from common.config import ConfigError

            raise ConfigError("PHOENIX_FIREBASE_PROJECT must be set when PHOENIX_AUTH=firebase")
        self.project_id = project_id
        self._skew = clock_skew_seconds
        self.certificates = CertificateCache(
            fetch_certs or http_cert_fetcher(),
            clock=clock,
            min_fetch_interval=min_fetch_interval,
            negative_ttl=negative_ttl,
        )

    def verify(self, token: Any) -> Principal:
        """The token's user, or AuthError. Nothing else escapes: a 500 for a header the
        client controls would be a bug an attacker can trigger at will."""
        try:
            return self._verify(token)
        except AuthError:
            raise
        except Exception as exc:  # a verifier bug must not become a 500 or leak detail
            log.warning("auth_unexpected_error", error=type(exc).__name__)
            raise AuthError("invalid token") from None

    def _verify(self, token: Any) -> Principal:
        if not isinstance(token, str):
            raise AuthError("malformed token")
        header = _header(token)
        if header.get("alg") != "RS256":
            raise AuthError("unexpected signing algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise AuthError("malformed token")
        if not self.certificates.lookup(kid):
            raise AuthError("unknown signing key")
        _, encoded = self.certificates.current()

        from google.auth import exceptions as gexc
        from google.oauth2 import id_token

        try:
            claims = id_token.verify_firebase_token(
                token,
                _CachedCertsTransport(encoded),  # type: ignore[arg-type]
                audience=self.project_id,
                clock_skew_in_seconds=self._skew,
            )
        except (ValueError, gexc.GoogleAuthError) as exc:
            raise AuthError(_reason(str(exc))) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("token has no subject")
        email = claims.get("email")
        return Principal(user_id=sub, email=email if isinstance(email, str) else None)


def _reason(message: str) -> str:
    """A fixed phrase for google-auth's message (which may quote the token)."""
    lowered = message.lower()
    if "expired" in lowered:
        return "token expired"
    if "audience" in lowered:
        return "wrong audience"
    if "issuer" in lowered:
        return "wrong issuer"
    if "signature" in lowered or "certificate" in lowered:
        return "bad signature"
    if "too early" in lowered or "future" in lowered or "early" in lowered:
        return "token issued in the future"
    if "sub" in lowered:
        return "token has no subject"
    return "invalid token"


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <ID token>'")
    return token.strip()
