"""``GET /api/admin/failures``: the operators' view of recent failures, internal detail included.

Users see a failed creation's stable code and the message written for it
(``common.domain.failures``); what actually went wrong (the exception, the provider's error, the
bucket or account involved) is kept in the record's ``error.detail`` and shown only here, to
``PHOENIX_ADMINS``, and in the logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from flask import Blueprint, Response, jsonify, request

from api.errors import ApiError
from common.config import Settings
from common.domain.creation import Status
from common.ports import CreationStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
WINDOW = timedelta(hours=24)
_DIGITS = re.compile(r"[0-9]{1,3}")


def admin_failures_blueprint(
    *,
    store: CreationStore,
    settings: Settings,
    current_user: Callable[[], str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Blueprint:
    bp = Blueprint("admin_failures", __name__)

    def who() -> str:
        if current_user is not None:
            return current_user()
        from api.identity import current_user as identity

        return identity()

    @bp.get("/api/admin/failures")
    def failures() -> Response:
        if who() not in settings.admins:
            raise ApiError(403, "forbidden", "the failure view is for admins only")
        raw = request.args.get("limit", str(DEFAULT_LIMIT))
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise ApiError(
                400, "invalid_request", f"limit: must be an integer from 1 to {MAX_LIMIT}"
            )
        found = store.scan(statuses=[Status.FAILED], created_after=clock() - WINDOW, limit=10_000)
        found.sort(key=lambda c: c.updated_at, reverse=True)
        response = jsonify(
            {
                "window_hours": WINDOW.total_seconds() / 3600,
                "failures": [
                    {
                        "id": c.id,
                        "user_id": c.user_id,
                        "kind": c.kind.value,
                        "path": c.path,
                        "attempts": c.attempts,
                        "updated_at": c.updated_at.isoformat(),
                        "code": c.error.code if c.error else None,
                        "message": c.error.message if c.error else None,
                        "detail": c.error.detail if c.error else None,
                    }
                    for c in found[: int(raw)]
                ],
            }
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp
