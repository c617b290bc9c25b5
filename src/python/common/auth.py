"""Verifying Firebase / Identity Platform ID tokens, the production identity.

A Firebase ID token is an RS256 JWT signed by Google's securetoken service account. It is
trusted only if: the signature matches one of the published X.509 certs (fetched once and
cached for as long as their Cache-Control allows), ``aud`` is our project, ``iss`` is
``https://securetoken.google.com/<project>``, it is not expired or issued in the future, and
``sub`` (the user id) is a non-empty string. google-auth does the crypto; this module pins the
rules and keeps the certificate cache, and is independent of Flask so jobs or tools can reuse it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FIREBASE_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)
_MAX_AGE_RE = re.compile(r"max-age=(\d+)")


class AuthError(Exception):
    """The caller is not authenticated; the message is safe to return (it never echoes the token)."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str | None = None


CertFetcher = Callable[[], tuple[Mapping[str, str], float]]


def http_cert_fetcher(url: str = FIREBASE_CERTS_URL, timeout: float = 5.0) -> CertFetcher:
    """Fetches {kid: PEM cert} and how long it may be cached (from Cache-Control max-age)."""

    def fetch() -> tuple[Mapping[str, str], float]:
        import requests

        resp = requests.get(url, timeout=timeout)
        resp.raise_for_status()
        match = _MAX_AGE_RE.search(resp.headers.get("Cache-Control", ""))
        return resp.json(), float(match.group(1)) if match else 3600.0

    return fetch


class FirebaseTokenVerifier:
    def __init__(
        self,
        project_id: str,
        *,
        fetch_certs: CertFetcher | None = None,
        clock: Callable[[], float] = time.time,
        clock_skew_seconds: int = 30,
    ) -> None:
        if not project_id:
            from common.config import ConfigError

            raise ConfigError("PHOENIX_FIREBASE_PROJECT must be set when PHOENIX_AUTH=firebase")
        self.project_id = project_id
        self._fetch = fetch_certs or http_cert_fetcher()
        self._clock = clock
        self._skew = clock_skew_seconds
        self._certs: Mapping[str, str] = {}
        self._expires = 0.0
        self._lock = threading.Lock()

    def _certificates(self, kid: str | None) -> Mapping[str, str]:
        with self._lock:
            # Refetch when stale, or when a token names a key we have not seen (key rotation).
            if self._clock() >= self._expires or (kid and kid not in self._certs):
                try:
                    certs, max_age = self._fetch()
                except Exception as exc:
                    if self._certs and kid in self._certs:
                        return self._certs  # serve stale rather than lock everyone out
                    raise AuthError(
                        f"cannot fetch signing certificates: {type(exc).__name__}"
                    ) from None
                self._certs, self._expires = dict(certs), self._clock() + max_age
            return self._certs

    def verify(self, token: str) -> Principal:
        from google.auth import exceptions as gexc
        from google.auth import jwt

        if not token or token.count(".") != 2:
            raise AuthError("malformed token")
        try:
            header = jwt.decode_header(token)
        except Exception:
            raise AuthError("malformed token") from None
        if header.get("alg") != "RS256":
            raise AuthError("unexpected signing algorithm")
        certs = self._certificates(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                certs=certs,
                audience=self.project_id,
                clock_skew_in_seconds=self._skew,
            )
        except (ValueError, gexc.GoogleAuthError) as exc:
            raise AuthError(_reason(str(exc))) from None
        if claims.get("iss") != f"https://securetoken.google.com/{self.project_id}":
            raise AuthError("wrong issuer")
        now = self._clock()
        if float(claims.get("exp", 0)) + self._skew < now:
            raise AuthError("token expired")
        if float(claims.get("iat", now + 3600)) - self._skew > now:
            raise AuthError("token issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("token has no subject")
        return Principal(user_id=sub, email=claims.get("email"))


def _reason(message: str) -> str:
    lowered = message.lower()
    if "expired" in lowered:
        return "token expired"
    if "audience" in lowered:
        return "wrong audience"
    if "signature" in lowered or "certificate" in lowered:
        return "bad signature"
    if "too early" in lowered or "future" in lowered:
        return "token issued in the future"
    return "invalid token"


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <ID token>'")
    return token.strip()
