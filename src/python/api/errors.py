"""One error shape for every failure the API can produce: ``{"error": {"code", "message"}}``.

Clients (the page, scripts, the OpenAPI document) handle exactly one format, so Flask's and
Werkzeug's own errors (404 for an unknown URL, 405, 413 from ``MAX_CONTENT_LENGTH``, 500) are
rewritten into it too. Domain errors are mapped here, in one place, so routes stay thin and no
route can forget a mapping and leak a 500 for bad input.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import structlog
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from common.domain.errors import NotFound, ValidationError

log = structlog.get_logger(__name__)

# Werkzeug's exception names are prose ("Request Entity Too Large"); clients switch on codes.
_HTTP_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}

# Same words for "missing" and "not yours": a different answer would tell a caller that an id
# they guessed exists.
NOT_FOUND_MESSAGE = "no such creation"


class ApiError(Exception):
    """An HTTP-level failure a route or the identity seam decided on (status + code + message),
    optionally with headers (``Retry-After``) and extra body fields (``creation_id``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **(extra or {})}}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    # Errors are answers about this moment (503, 429): never let a cache replay them.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _http_code(exc: HTTPException) -> str:
    status = exc.code or 500
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def _http_message(exc: HTTPException) -> str:
    if exc.code == 413:
        return "request body is larger than 64 KiB"
    if exc.code == 404:
        return "no such resource"
    if exc.code == 405:
        allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or ()))
        return f"method not allowed (allowed: {allowed})" if allowed else "method not allowed"
    # Werkzeug's descriptions are written for HTML pages but are plain sentences; keep them.
    return (exc.description or exc.name or "error").strip()


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra
        )

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return error_response(400, "invalid_request", f"{exc.field}: {exc.message}")

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Response:
        return error_response(404, "not_found", NOT_FOUND_MESSAGE)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> WerkzeugResponse:
        if exc.code is None or exc.code < 400:  # redirects/304 raised as exceptions: pass through
            return exc.get_response()
        # Keep the protocol headers Werkzeug computed (Allow on 405, Retry-After, ...), drop
        # its HTML Content-Type/Length.
        headers = {
            k: v
            for k, v in exc.get_headers()
            if k.lower() not in ("content-type", "content-length")
        }
        return error_response(exc.code, _http_code(exc), _http_message(exc), headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The traceback goes to the logs; the client gets no internals.
        log.exception("unhandled_exception", error_type=type(exc).__name__)
        return error_response(500, "internal_error", "internal error")
