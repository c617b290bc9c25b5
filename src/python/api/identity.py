"""The identity seam: who is calling. Every route asks ``current_user()`` and nothing else.

Local mode (``PHOENIX_AUTH=local``, the embedded default) trusts the ``X-Phoenix-User`` header
(default ``local``): it lets a developer, the e2e tests and the browser page act as several
users against one local server without any sign-in. It must never be enabled in production,
which is why it is a mode and not a fallback. Other modes (Firebase ID tokens, see
``common.auth``) plug in behind this same function: a request without a valid credential
is refused with 401, never silently treated as a local user.
"""

from __future__ import annotations

import re
from typing import Callable

import structlog
from flask import current_app, g, request

from api.errors import ApiError

log = structlog.get_logger(__name__)

USER_HEADER = "X-Phoenix-User"
# Local mode only: the page sets this for ?user=NAME, because the browser's own media requests
# (<img src>, <video src>) cannot carry a header and media is served only to its owner.
USER_COOKIE = "phoenix_user"
DEFAULT_LOCAL_USER = "local"
# Ids end up in store keys, logs and metrics labels: a small safe alphabet, bounded length.
_USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


def _local_user() -> str:
    raw = request.headers.get(USER_HEADER)
    if raw is None:
        raw = request.cookies.get(USER_COOKIE)
    if raw is None:
        return DEFAULT_LOCAL_USER
    if not _USER_RE.fullmatch(raw):
        raise ApiError(
            400,
            "invalid_request",
            f"{USER_HEADER}: must be 1-128 characters of A-Z a-z 0-9 _ . @ -",
        )
    return raw


def _firebase_user() -> str:
    """Production: a Firebase / Identity Platform ID token in ``Authorization: Bearer``. The
    ``X-Phoenix-User`` header means nothing here: it is never consulted."""
    from common.auth import AuthError, bearer_token

    verifier = current_app.extensions["phoenix"].token_verifier
    try:
        return str(verifier.verify(bearer_token(request.headers.get("Authorization"))).user_id)
    except AuthError as exc:
        message = str(exc)
    except Exception as exc:  # whatever a client-controlled header provokes is a 401, never a 500
        log.warning("authentication_error", error=type(exc).__name__)
        message = "invalid token"
    raise ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


# auth mode -> how to find the user for the current request. Adding a mode = adding an entry.
_AUTHENTICATORS: dict[str, Callable[[], str]] = {"local": _local_user, "firebase": _firebase_user}


def current_user() -> str:
    """The caller's user id for this request (computed once per request, cached on ``g``)."""
    cached = g.get("phoenix_user")
    if cached is not None:
        return str(cached)
    mode = current_app.extensions["phoenix"].settings.auth
    authenticate = _AUTHENTICATORS.get(mode)
    if authenticate is None:
        raise ApiError(
            401,
            "unauthenticated",
            f"authentication mode {mode!r} is not available in this build of the API",
        )
    user = authenticate()
    g.phoenix_user = user
    return user
