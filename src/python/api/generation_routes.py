"""``POST /api/generate/<kind>`` for every kind of the registry: thin HTTP over the service.

The route's job is HTTP only: check the content type, decode JSON (bad JSON is the caller's
mistake, a 400, never a 500), hand the body to ``parse_generation_request`` (the single source
of validation rules), call ``CreationService.create`` and answer ``202 Accepted`` with the
creation and its ``Location`` to poll.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from api.creation_service import CreationService, DispatchFailed, RateLimited
from api.errors import ApiError
from api.identity import current_user
from common.domain.creation import Creation
from common.domain.kinds import KindRegistry
from common.domain.requests import parse_generation_request

RETRY_AFTER_SECONDS = 30


def read_json_body() -> Any:
    """The request body as JSON, or ApiError 415/400, or 413 when it is larger than
    ``MAX_CONTENT_LENGTH`` (with or without a Content-Length)."""
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Type must be application/json",
        )
    raw = request.get_data(cache=False)  # 413 here when Content-Length is over the limit
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # A chunked body has no Content-Length: Werkzeug stops reading at the limit and
        # returns the truncated prefix without complaint. One more byte means it was larger.
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
        detail = str(exc) if isinstance(exc, json.JSONDecodeError) else "cannot be decoded"
        raise ApiError(400, "invalid_request", f"body: invalid JSON ({detail})") from None


def accepted(service: CreationService, create: Callable[[], Creation]) -> Response:
    """Run a create (a generate call, or a retry) and answer like a generate call: 202 with the
    creation and its ``Location``, 429 when admission refuses, 503 when the record was saved
    but its dispatch failed."""
    try:
        creation = create()
    except RateLimited as exc:
        raise ApiError(
            429,
            "rate_limited",
            exc.message,
            headers={"Retry-After": str(exc.retry_after_seconds)},
            extra={"reason": exc.reason},
        ) from exc
    except DispatchFailed as exc:
        raise ApiError(
            503,
            "dispatch_unavailable",
            "your request was saved but could not be started yet; it will be retried "
            "automatically",
            headers={
                "Retry-After": str(RETRY_AFTER_SECONDS),
                "Location": f"/api/creations/{exc.creation.id}",
            },
            extra={"creation_id": exc.creation.id},
        ) from exc
    response = jsonify(service.view(creation))
    response.status_code = 202
    response.headers["Location"] = f"/api/creations/{creation.id}"
    response.headers["Cache-Control"] = "no-store"
    return response


def generate_rule(kinds: KindRegistry) -> str:
    """One rule for every kind of the registry: ``/api/generate/<any(video, image):kind>``."""
    return f"/api/generate/<any({', '.join(kinds.names)}):kind>"


def generation_blueprint(service: CreationService) -> Blueprint:
    bp = Blueprint("generation", __name__)

    @bp.post(generate_rule(service.kinds))
    def generate(kind: str) -> Response:
        user = current_user()
        req = parse_generation_request(kind, read_json_body(), service.kinds)
        return accepted(service, lambda: service.create(user, req))

    return bp
