"""The creation lifecycle: a record a user asked for, and the only ways it may change.

Every state change is a pure function ``Creation -> Creation`` that either returns the new
record or raises a domain error. Stores apply these functions inside one transaction
(``CreationStore.update``), so SQLite, Firestore or any later backend enforce exactly the same
rules and none of them re-implements the lifecycle.

Delivery is at least once on every path (Cloud Tasks, Celery, the local dispatcher and the
sweeper can all deliver a creation twice), so the claim is a lease: a second delivery while the
lease is live backs off, and an execution that died is taken over once its lease expires.

A user can cancel. A ``pending`` creation is cancelled at once (no job holds it, so nothing has
been spent yet). A ``processing`` one only records the request: the running job is the one that
can stop its provider calls, and it learns of the request at its next lease renewal, because
every lease-bearing change (``renew``, ``report_progress``, ``record_operation``, ``complete``,
``fail``, ``release_for_retry``) refuses with ``CancelRequested`` once it is set. The job then
ends the record ``cancelled`` itself (``finish_cancel``). Cancel and completion serialise in the
store's transaction, so exactly one wins: completion first means cancel is refused
(``AlreadyFinished``); the cancel request first means completion is refused.

Deleting is two steps so media can never be orphaned: the record becomes a ``deleting``
tombstone (invisible to its owner), the media are removed, then the record. If the media removal
fails the tombstone stays for the sweeper to finish.

(Longer than our ~350-line norm on purpose: every lifecycle transition lives here, the one
place the rules are; stores only apply them.)
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from common.domain.errors import (
    AlreadyClaimed,
    AlreadyFinished,
    CancelRequested,
    InvalidTransition,
    LeaseLost,
)
from common.domain.kinds import Kind as Kind  # defined with the kind registry; re-exported
from common.domain.timestamps import from_iso, to_iso


class Status(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Internal tombstone: the owner asked to delete it and its media are being removed. Never
    # shown (the API answers 404 for it); the sweeper finishes what a failed delete left.
    DELETING = "deleting"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def public(self) -> bool:
        """Statuses a client can see (the OpenAPI enum); ``deleting`` is not one of them."""
        return self is not Status.DELETING


_TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.DELETING})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_creation_id() -> str:
    # 128 random bits, hex: unguessable (ids appear in URLs) and safe as a Cloud Tasks task name.
    return uuid.uuid4().hex


@dataclass(frozen=True)
class MediaRef:
    """Where a finished artefact lives. ``key`` is the media store's key, not a URL: URLs are
    minted per request (signed URLs expire)."""

    key: str
    mime_type: str


@dataclass(frozen=True)
class CreationError:
    """``code`` is stable and ``message`` is for the user (``common.domain.failures``);
    ``detail`` is what went wrong internally (exception text, provider error), for operators."""

    code: str
    message: str
    detail: str | None = None


def user_safe(error: CreationError) -> CreationError:
    """The error as stored on a failure: the user message for its code, the rest as detail."""
    from common.domain import failures

    message, detail = failures.split(error.code, error.message, error.detail)
    return CreationError(error.code, message, detail[:2000] if detail else None)


@dataclass(frozen=True)
class Creation:
    id: str
    user_id: str
    kind: Kind
    prompt: str
    params: Mapping[str, Any]
    status: Status
    created_at: datetime
    updated_at: datetime
    # Which dispatch path carried it ("local", "cloud-tasks", "celery"): the migration dashboard
    # compares paths from this field.
    path: str = "local"
    progress: int = 0
    media: tuple[MediaRef, ...] = ()
    error: CreationError | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    # The provider's long-running operation (e.g. Veo's operation name), stored as soon as it
    # exists so a retried execution resumes polling instead of paying for a second generation.
    operation: str | None = None
    # Dispatch bookkeeping for the sweeper: when the queue last accepted it, and why it did not.
    dispatched_at: datetime | None = None
    dispatch_error: str | None = None
    # How many times a dispatcher accepted it: >1 means the sweeper re-dispatched it.
    dispatches: int = 0
    traceparent: str | None = None
    # The execution that claimed it (a Cloud Run execution's relative name
    # ``jobs/JOB/executions/EXECUTION``, a local or Celery id): the API cancels it as a backstop.
    execution: str | None = None
    # Which task attempt of ``execution`` holds the lease. Attempts of one execution run one
    # after another, so a later attempt of the SAME execution knows the holder is dead and takes
    # over at once; any other execution still waits for the lease to expire.
    lease_attempt: int | None = None
    # Every claim (first, takeover, resume) increments this: a fencing number for the holder.
    claims: int = 0
    # Claims that only resumed a recorded provider operation (they use no attempt).
    resumes: int = 0
    # "A provider start call may have been accepted": written BEFORE the call, cleared when its
    # outcome is known (operation recorded, or a definite refusal). A retry that finds it looks
    # for that call's output instead of paying for a second generation.
    start_marker: str | None = None
    start_marker_at: datetime | None = None
    # Cancel: when the owner asked (a running job stops at its next lease renewal), when it ended
    # ``cancelled``, and whether a provider operation had been started by then (its charge,
    # e.g. a Veo generation, is probably spent: see README "Cancel: what it saves").
    cancel_requested_at: datetime | None = None
    cancelled_at: datetime | None = None
    provider_started: bool | None = None

    def lease_live(self, now: datetime) -> bool:
        return (
            self.status is Status.PROCESSING
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


def new(
    *,
    user_id: str,
    kind: Kind,
    prompt: str,
    params: Mapping[str, Any],
    path: str,
    now: datetime,
    creation_id: str | None = None,
    traceparent: str | None = None,
) -> Creation:
    return Creation(
        id=creation_id or new_creation_id(),
        user_id=user_id,
        kind=kind,
        prompt=prompt,
        params=dict(params),
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        path=path,
        traceparent=traceparent,
    )


# A creation whose job keeps dying while only polling its recorded operation (which uses no
# attempt) still ends: after this many resumes it fails like one out of attempts.
MAX_RESUMES = 10


def claim(
    c: Creation,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    max_attempts: int,
    execution: str | None = None,
    attempt: int | None = None,
) -> Creation:
    """Take the lease: ``pending`` or an expired ``processing`` lease -> ``processing``.

    Raises AlreadyFinished for terminal records (a delivery after a cancel exits here, before
    any provider call) and AlreadyClaimed while another lease is live, except for a later
    attempt of the execution holding it: Cloud Run runs an execution's attempts one after
    another, so the earlier one is dead and waiting for its lease would only waste the retry.
    A takeover of a record whose cancel was requested (its job died before it saw the request)
    finishes the cancel instead. A claim that finds a recorded provider operation (or a start of
    unknown outcome, whose output may exist) resumes it without using an attempt (the work is
    paid for; looking at it is free), even at the attempt limit. A takeover past
    ``max_attempts`` fails the creation instead, so a crash loop cannot run forever.
    """
    if c.status.terminal:
        raise AlreadyFinished(c.id)
    if c.lease_live(now):
        if c.lease_owner == owner:
            return c  # the same execution asking again (e.g. a retried store call)
        if not _later_attempt_of_holder(c, execution, attempt):
            raise AlreadyClaimed(c.id)
    if c.cancel_requested_at is not None:
        return _cancelled(c, now=now)
    # A recorded operation, or a start of unknown outcome (its output may exist): the claim
    # resumes paid-for work instead of starting a new attempt.
    resuming = bool(c.operation) or bool(c.start_marker)
    if resuming and c.resumes >= MAX_RESUMES:
        return _finish(
            c,
            now=now,
            status=Status.FAILED,
            error=CreationError(
                "max_attempts_exceeded",
                f"gave up after resuming {c.operation or 'an unknown-outcome start'} "
                f"{c.resumes} times",
            ),
        )
    if not resuming and c.attempts >= max_attempts:
        last = (c.error.detail or c.error.message) if c.error else "the job did not finish"
        return _finish(
            c,
            now=now,
            status=Status.FAILED,
            error=CreationError(
                "max_attempts_exceeded", f"gave up after {c.attempts} attempts: {last}"
            ),
        )
    return dataclasses.replace(
        c,
        status=Status.PROCESSING,
        attempts=c.attempts if resuming else c.attempts + 1,
        resumes=c.resumes + 1 if resuming else c.resumes,
        claims=c.claims + 1,
        lease_owner=owner,
        # Without an execution an attempt number identifies nothing: never a takeover key.
        lease_attempt=attempt if execution is not None else None,
        lease_expires_at=now + lease,
        claimed_at=c.claimed_at or now,
        execution=execution or c.execution,
        updated_at=now,
    )


def _later_attempt_of_holder(c: Creation, execution: str | None, attempt: int | None) -> bool:
    return (
        execution is not None
        and attempt is not None
        and c.execution == execution
        and c.lease_attempt is not None
        and attempt > c.lease_attempt
    )


def _require_lease(c: Creation, owner: str, now: datetime) -> None:
    _require_owner(c, owner)
    if c.cancel_requested_at is not None:
        # The owner asked to stop: every lease-bearing change (the heartbeat included) says so,
        # whichever of them the job happens to make next.
        raise CancelRequested(c.id)


def _require_owner(c: Creation, owner: str) -> None:
    if c.status.terminal:
        raise AlreadyFinished(c.id)
    if c.status is not Status.PROCESSING or c.lease_owner != owner:
        raise LeaseLost(c.id)
    # An expired lease that nobody took over yet is still ours: renewing it is safe because a
    # takeover would have changed lease_owner inside the same transaction.


def ensure_active(c: Creation, *, owner: str, now: datetime) -> Creation:
    """No change; raises CancelRequested/LeaseLost/AlreadyFinished like a renewal would. The job
    asks this before writing media, so a cancelled creation stores nothing."""
    _require_lease(c, owner, now)
    return c


def renew(c: Creation, *, owner: str, now: datetime, lease: timedelta) -> Creation:
    _require_lease(c, owner, now)
    return dataclasses.replace(c, lease_expires_at=now + lease, updated_at=now)


def report_progress(
    c: Creation, *, owner: str, now: datetime, progress: int, lease: timedelta | None = None
) -> Creation:
    _require_lease(c, owner, now)
    progress = max(c.progress, min(99, max(0, int(progress))))  # 100 only on completion
    changes: dict[str, Any] = {"progress": progress, "updated_at": now}
    if lease is not None:
        changes["lease_expires_at"] = now + lease
    return dataclasses.replace(c, **changes)


def record_operation(c: Creation, *, owner: str, now: datetime, operation: str) -> Creation:
    """Store the provider's operation; its start is no longer of unknown outcome."""
    _require_lease(c, owner, now)
    return dataclasses.replace(
        c, operation=operation, start_marker=None, start_marker_at=None, updated_at=now
    )


def mark_start(c: Creation, *, owner: str, now: datetime, marker: str) -> Creation:
    """Written before a billed provider start call. Needs the lease, so a job that lost it can
    never start a second generation: the write fails first."""
    _require_lease(c, owner, now)
    return dataclasses.replace(c, start_marker=marker, start_marker_at=now, updated_at=now)


def clear_start(c: Creation, *, owner: str, now: datetime) -> Creation:
    """The start call's outcome is known (the provider refused it, or its output was found)."""
    _require_lease(c, owner, now)
    return dataclasses.replace(c, start_marker=None, start_marker_at=None, updated_at=now)


def complete(c: Creation, *, owner: str, now: datetime, media: tuple[MediaRef, ...]) -> Creation:
    _require_lease(c, owner, now)
    if not media:
        raise InvalidTransition("a completed creation needs at least one media item")
    done = _finish(c, now=now, status=Status.COMPLETED, media=media, error=None, progress=100)
    return dataclasses.replace(done, start_marker=None, start_marker_at=None)


def fail(c: Creation, *, owner: str | None, now: datetime, error: CreationError) -> Creation:
    """Permanent failure. ``owner=None`` is the sweeper/API failing a record nobody holds."""
    if c.status.terminal:
        raise AlreadyFinished(c.id)
    if owner is not None:
        _require_lease(c, owner, now)
    elif c.lease_live(now):
        raise AlreadyClaimed(c.id)
    elif c.cancel_requested_at is not None:
        return _cancelled(c, now=now)  # the owner stopped wanting it: that is the outcome
    return _finish(c, now=now, status=Status.FAILED, error=error)


def release_for_retry(
    c: Creation, *, owner: str, now: datetime, error: CreationError, max_attempts: int
) -> Creation:
    """A retryable failure: give the lease back so the next delivery can claim at once.

    Out of attempts, it fails for good with the last reason instead.
    """
    _require_lease(c, owner, now)
    if c.attempts >= max_attempts and not c.operation:
        # With a recorded operation the generation is paid for: hand it back to be resumed
        # (bounded by MAX_RESUMES in ``claim``) instead of throwing it away.
        return _finish(
            c,
            now=now,
            status=Status.FAILED,
            error=CreationError(
                error.code,
                error.message,
                f"{error.detail or error.message} (after {c.attempts} attempts)",
            ),
        )
    return dataclasses.replace(
        c,
        status=Status.PENDING,
        lease_owner=None,
        lease_attempt=None,
        lease_expires_at=None,
        error=user_safe(error),
        updated_at=now,
    )


def cancel(c: Creation, *, now: datetime) -> Creation:
    """The owner's cancel. ``pending`` (or ``processing`` whose job died: its lease ran out) ->
    ``cancelled`` at once; ``processing`` with a live lease -> cancel requested (the job stops at
    its next renewal). Idempotent: cancelling a cancelled or already-requested creation returns
    it unchanged. Raises AlreadyFinished for completed/failed (and deleting) creations."""
    if c.status is Status.CANCELLED:
        return c
    if c.status.terminal:
        raise AlreadyFinished(c.id)
    if c.status is Status.PROCESSING and c.lease_live(now):
        if c.cancel_requested_at is not None:
            return c
        return dataclasses.replace(c, cancel_requested_at=now, updated_at=now)
    return _cancelled(c, now=now)


def finish_cancel(
    c: Creation, *, owner: str, now: datetime, provider_started: bool | None = None
) -> Creation:
    """The job that held the lease stopped because its cancel was requested: ``cancelled``.

    ``provider_started``: the job knows whether it had already called the provider (an image's
    synchronous call that returned); left None, a recorded operation (Veo) decides."""
    _require_owner(c, owner)
    if c.cancel_requested_at is None:
        raise InvalidTransition("finish_cancel needs a cancel request")
    return _cancelled(c, now=now, provider_started=provider_started)


def _cancelled(c: Creation, *, now: datetime, provider_started: bool | None = None) -> Creation:
    # A start of unknown outcome (``start_marker``) may have been accepted and billed.
    recorded = bool(c.operation) or bool(c.start_marker)
    started = recorded if provider_started is None else provider_started
    return dataclasses.replace(
        _finish(c, now=now, status=Status.CANCELLED, error=None),
        cancel_requested_at=c.cancel_requested_at or now,
        cancelled_at=now,
        provider_started=started or recorded,
    )


def mark_deleting(c: Creation, *, now: datetime) -> Creation:
    """The owner's delete, step one: a finished creation becomes a tombstone (idempotent).
    Unfinished ones must be cancelled first (InvalidTransition): a running job could still
    write media after we removed them."""
    if c.status is Status.DELETING:
        return c
    if not c.status.terminal:
        raise InvalidTransition(f"creation {c.id} is {c.status.value}: cancel it first")
    return dataclasses.replace(c, status=Status.DELETING, updated_at=now)


def mark_dispatched(c: Creation, *, now: datetime) -> Creation:
    return dataclasses.replace(
        c, dispatched_at=now, dispatch_error=None, dispatches=c.dispatches + 1, updated_at=now
    )


def reroute(c: Creation, *, now: datetime, path: str) -> Creation:
    """Move an unfinished creation to another dispatch path (the sweeper does this when the
    rollout no longer sends its user to the path it was first given, e.g. during a drain)."""
    if c.status.terminal:
        raise AlreadyFinished(c.id)
    return dataclasses.replace(c, path=path, updated_at=now)


def mark_dispatch_failed(c: Creation, *, now: datetime, reason: str) -> Creation:
    return dataclasses.replace(c, dispatch_error=reason[:500], updated_at=now)


def _finish(
    c: Creation,
    *,
    now: datetime,
    status: Status,
    error: CreationError | None,
    media: tuple[MediaRef, ...] = (),
    progress: int | None = None,
) -> Creation:
    return dataclasses.replace(
        c,
        status=status,
        error=user_safe(error) if error is not None else None,
        media=media or c.media,
        progress=c.progress if progress is None else progress,
        lease_owner=None,
        lease_attempt=None,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )


# --- Serialisation shared by every store adapter (one schema, one place) -----------------------


def _ts(value: datetime | None) -> str | None:
    return to_iso(value) if value else None


def _parse_ts(value: Any) -> datetime | None:
    return None if value is None else from_iso(value)


def to_dict(c: Creation) -> dict[str, Any]:
    """A JSON-safe dict of every field; stores persist it, ``from_dict`` reads it back."""
    return {
        "id": c.id,
        "user_id": c.user_id,
        "kind": c.kind.value,
        "prompt": c.prompt,
        "params": dict(c.params),
        "status": c.status.value,
        "created_at": _ts(c.created_at),
        "updated_at": _ts(c.updated_at),
        "path": c.path,
        "progress": c.progress,
        "media": [{"key": m.key, "mime_type": m.mime_type} for m in c.media],
        "error": (
            {"code": c.error.code, "message": c.error.message, "detail": c.error.detail}
            if c.error
            else None
        ),
        "attempts": c.attempts,
        "lease_owner": c.lease_owner,
        "lease_expires_at": _ts(c.lease_expires_at),
        "claimed_at": _ts(c.claimed_at),
        "finished_at": _ts(c.finished_at),
        "operation": c.operation,
        "dispatched_at": _ts(c.dispatched_at),
        "dispatch_error": c.dispatch_error,
        "dispatches": c.dispatches,
        "traceparent": c.traceparent,
        "lease_attempt": c.lease_attempt,
        "claims": c.claims,
        "resumes": c.resumes,
        "start_marker": c.start_marker,
        "start_marker_at": _ts(c.start_marker_at),
        "execution": c.execution,
        "cancel_requested_at": _ts(c.cancel_requested_at),
        "cancelled_at": _ts(c.cancelled_at),
        "provider_started": c.provider_started,
    }


def from_dict(d: Mapping[str, Any]) -> Creation:
    err = d.get("error")
    created_at = _parse_ts(d["created_at"])
    updated_at = _parse_ts(d["updated_at"])
    assert created_at is not None and updated_at is not None
    return Creation(
        id=d["id"],
        user_id=d["user_id"],
        kind=Kind(d["kind"]),
        prompt=d["prompt"],
        params=dict(d.get("params") or {}),
        status=Status(d["status"]),
        created_at=created_at,
        updated_at=updated_at,
        path=d.get("path") or "local",
        progress=int(d.get("progress") or 0),
        media=tuple(MediaRef(m["key"], m["mime_type"]) for m in d.get("media") or ()),
        error=CreationError(err["code"], err["message"], err.get("detail")) if err else None,
        attempts=int(d.get("attempts") or 0),
        lease_owner=d.get("lease_owner"),
        lease_expires_at=_parse_ts(d.get("lease_expires_at")),
        claimed_at=_parse_ts(d.get("claimed_at")),
        finished_at=_parse_ts(d.get("finished_at")),
        operation=d.get("operation"),
        dispatched_at=_parse_ts(d.get("dispatched_at")),
        dispatch_error=d.get("dispatch_error"),
        dispatches=int(d.get("dispatches") or 0),
        traceparent=d.get("traceparent"),
        lease_attempt=None if d.get("lease_attempt") is None else int(d["lease_attempt"]),
        claims=int(d.get("claims") or 0),
        resumes=int(d.get("resumes") or 0),
        start_marker=d.get("start_marker"),
        start_marker_at=_parse_ts(d.get("start_marker_at")),
        execution=d.get("execution"),
        cancel_requested_at=_parse_ts(d.get("cancel_requested_at")),
        cancelled_at=_parse_ts(d.get("cancelled_at")),
        provider_started=d.get("provider_started"),
    )
