"""The task payload: the one message every dispatch path carries from the API to a job.

Versioned JSON so old and new API/job builds can coexist during a rollout. The same payload is
rendered three ways: a JSON body (Celery, tests), environment variables (a Cloud Run Job
execution's ``containerOverrides.env``; the local dispatcher mimics it) and CLI args.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from common.domain.creation import Kind
from common.domain.errors import ValidationError
from common.domain.kinds import KINDS, UnknownKind

PAYLOAD_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# W3C trace-context: version-traceid-parentid-flags
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class TaskPayload:
    creation_id: str
    kind: Kind
    traceparent: str | None = None
    # 0 for the API's dispatch, n for the sweeper's n-th re-dispatch: queues that dedup by name
    # (Cloud Tasks) need a new name for a deliberate re-dispatch.
    dispatch: int = 0
    version: int = PAYLOAD_VERSION

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.creation_id):
            raise ValidationError("creation_id", "must be 1-100 characters of [A-Za-z0-9_-]")
        if self.traceparent is not None and not _TRACEPARENT_RE.match(self.traceparent):
            raise ValidationError("traceparent", "is not a W3C traceparent")
        if (
            not isinstance(self.dispatch, int)
            or isinstance(self.dispatch, bool)
            or self.dispatch < 0
        ):
            raise ValidationError("dispatch", "must be a non-negative integer")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": self.version,
            "creation_id": self.creation_id,
            "kind": self.kind.value,
        }
        if self.traceparent:
            d["traceparent"] = self.traceparent
        if self.dispatch:
            d["dispatch"] = self.dispatch
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def to_env(self) -> dict[str, str]:
        env = {"CREATION_ID": self.creation_id}
        if self.traceparent:
            env["TRACEPARENT"] = self.traceparent
        return env

    @classmethod
    def from_dict(cls, d: Any) -> "TaskPayload":
        if not isinstance(d, Mapping):
            raise ValidationError("payload", "must be an object")
        version = d.get("version")
        if version != PAYLOAD_VERSION:
            raise ValidationError("version", f"unsupported payload version {version!r}")
        unknown = set(d) - {"version", "creation_id", "kind", "traceparent", "dispatch"}
        if unknown:
            raise ValidationError(sorted(unknown)[0], "unknown field")
        try:
            kind = KINDS.kind(d.get("kind"))
        except UnknownKind:
            raise ValidationError("kind", f"must be one of {', '.join(KINDS.names)}") from None
        creation_id = d.get("creation_id")
        if not isinstance(creation_id, str):
            raise ValidationError("creation_id", "is required")
        return cls(
            creation_id=creation_id,
            kind=kind,
            traceparent=d.get("traceparent") or None,
            dispatch=d.get("dispatch", 0),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> "TaskPayload":
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError("payload", f"is not JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], kind: Kind, creation_id: str | None = None
    ) -> "TaskPayload":
        """Build from a job execution's environment; an explicit ``--creation-id`` wins."""
        cid = creation_id or env.get("CREATION_ID")
        if not cid:
            raise ValidationError("CREATION_ID", "is not set (and no --creation-id given)")
        return cls(creation_id=cid, kind=kind, traceparent=env.get("TRACEPARENT") or None)
