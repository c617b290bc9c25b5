"""``GET /api/creations/<id>`` (polled about once a second per open page),
``GET /api/creations`` (the caller's list, newest first), and the owner's controls:
``POST /api/creations/<id>/cancel``, ``DELETE /api/creations/<id>``,
``POST /api/creations/<id>/retry``.

Polling is the hot path, so the single-creation route answers ``If-None-Match`` with a 304
computed from the record alone (``etag_for``) before any view is built or JSON encoded.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from api.creation_service import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    Conflict,
    CreationService,
    DeletePending,
    etag_for,
)
from api.errors import ApiError
from api.generation_routes import accepted
from api.identity import current_user
from common.domain.creation import Status

# Responses are per user and change constantly: caches may store them but must revalidate.
_CACHE_CONTROL = "private, no-cache"
_DIGITS = re.compile(r"[0-9]{1,4}")


def _limit_arg() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return LIST_LIMIT_DEFAULT
    # ASCII digits only: str.isdigit() also accepts e.g. Arabic-Indic digits.
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise ApiError(
            400, "invalid_request", f"limit: must be an integer from 1 to {LIST_LIMIT_MAX}"
        )
    return int(raw)


def creation_blueprint(service: CreationService) -> Blueprint:
    bp = Blueprint("creations", __name__)

    @bp.get("/api/creations/<creation_id>")
    def get_creation(creation_id: str) -> Response:
        creation = service.get(current_user(), creation_id)
        etag = etag_for(creation)
        if request.if_none_match.contains_weak(etag):
            response = Response(status=304)
        else:
            response = jsonify(service.view(creation))
        response.set_etag(etag, weak=True)
        response.headers["Cache-Control"] = _CACHE_CONTROL
        return response

    @bp.get("/api/creations")
    def list_creations() -> Response:
        user = current_user()
        limit = _limit_arg()
        creations = service.list(user, limit)
        response = jsonify({"creations": [service.view(c) for c in creations]})
        response.headers["Cache-Control"] = _CACHE_CONTROL
        return response

    @bp.post("/api/creations/<creation_id>/cancel")
    def cancel_creation(creation_id: str) -> Response:
        user = current_user()
        try:
            creation = service.cancel(user, creation_id)
        except Conflict as exc:
            raise ApiError(409, exc.code, exc.message) from None
        response = jsonify(service.view(creation))
        # 200: it is cancelled; 202: its job was asked to stop and will at its next heartbeat.
        response.status_code = 200 if creation.status is Status.CANCELLED else 202
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.delete("/api/creations/<creation_id>")
    def delete_creation(creation_id: str) -> Response:
        user = current_user()
        try:
            service.delete(user, creation_id)
        except Conflict as exc:
            raise ApiError(409, exc.code, exc.message) from None
        except DeletePending:
            response = jsonify(
                {
                    "id": creation_id,
                    "status": "deleting",
                    "message": "deleted; its media "
                    "could not all be removed yet and will be shortly",
                }
            )
            response.status_code = 202
            response.headers["Cache-Control"] = "no-store"
            return response
        return Response(status=204)

    @bp.post("/api/creations/<creation_id>/retry")
    def retry_creation(creation_id: str) -> Response:
        user = current_user()

        def create():  # type: ignore[no-untyped-def]
            try:
                return service.retry(user, creation_id)
            except Conflict as exc:
                raise ApiError(409, exc.code, exc.message) from None

        return accepted(service, create)

    return bp
