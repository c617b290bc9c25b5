"""The job's service layer: claim -> generate -> store -> complete (or fail), for every path.

The Cloud Run Jobs, the local processes and the legacy Celery worker all call ``run_job``, so
the three paths differ only in how the creation id arrives. Exit codes follow Cloud Run's retry
contract: 0 when there is nothing left to do (done, failed for good, or a duplicate delivery),
1 only when a retry could succeed (the record was handed back as ``pending`` first).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import structlog

from common import metrics
from common.domain import creation as lifecycle
from common.domain.creation import Creation, CreationError, Kind, MediaRef, Status
from common.domain.errors import (
    AlreadyClaimed,
    AlreadyFinished,
    CancelRequested,
    GenerationError,
    InvalidTransition,
    LeaseLost,
    NotFound,
)
from common.ports import CreationStore, GeneratedMedia, Generator, MediaStore
from common.tracing import tracer

log = structlog.get_logger(__name__)

EXIT_DONE = 0
EXIT_RETRY = 1
# 128 + SIGTERM: the process was told to stop. Cloud Run counts a stopped task as failed (and
# retries it within maxRetries) whatever the code; a shell or the stand-in sees why it ended.
EXIT_TERMINATED = 143

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "video/mp4": "mp4"}


@dataclass
class JobDeps:
    store: CreationStore
    generator: Generator
    media: MediaStore
    lease: timedelta = timedelta(seconds=120)
    max_attempts: int = 3
    clock: Callable[[], datetime] = lifecycle.utcnow
    # Called at phase boundaries: lets tests (crash injection) and tracing observe the run.
    on_phase: Callable[[str, Creation], None] = field(default=lambda phase, c: None)


@dataclass
class JobOutcome:
    exit_code: int
    status: str  # completed | failed | retry | duplicate | finished | missing | lost | cancelled
    creation: Creation | None = None


class _Context:
    """What the generator sees. Every call also renews the lease, so a job waiting minutes on
    Veo keeps its claim; heartbeats are throttled to a fraction of the lease."""

    def __init__(self, deps: JobDeps, creation: Creation, owner: str) -> None:
        self._deps = deps
        self._owner = owner
        self.creation_id = creation.id
        self.existing_operation = creation.operation
        self.output_prefix = deps.media.output_prefix(creation.id)
        self._last_beat = time.monotonic()
        self._beat_every = max(1.0, deps.lease.total_seconds() / 4)
        self._last_percent = creation.progress

    def report_progress(self, percent: int) -> None:
        if percent <= self._last_percent:
            # Nothing new to show: only keep the lease alive (throttled), no store write.
            self.heartbeat()
            return
        self._last_percent = percent
        now = self._deps.clock()
        self._deps.store.update(
            self.creation_id,
            lambda c: lifecycle.report_progress(
                c, owner=self._owner, now=now, progress=percent, lease=self._deps.lease
            ),
        )
        self._last_beat = time.monotonic()

    def record_operation(self, operation: str) -> None:
        now = self._deps.clock()
        self._deps.store.update(
            self.creation_id,
            lambda c: lifecycle.record_operation(
                c, owner=self._owner, now=now, operation=operation
            ),
        )
        self.existing_operation = operation

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat < self._beat_every:
            return
        now = self._deps.clock()
        self._deps.store.update(
            self.creation_id,
            lambda c: lifecycle.renew(c, owner=self._owner, now=now, lease=self._deps.lease),
        )
        self._last_beat = time.monotonic()


def new_owner_id(execution: str | None = None) -> str:
    """A lease owner unique to this execution attempt (two retries never share a lease)."""
    return f"{execution or 'job'}/{uuid.uuid4().hex[:12]}"


def run_job(
    creation_id: str, kind: Kind, deps: JobDeps, *, owner: str, execution: str | None = None
) -> JobOutcome:
    """``execution`` is recorded at claim so the API can cancel it (Cloud Run's
    ``jobs/JOB/executions/EXECUTION``)."""
    bound = log.bind(creation_id=creation_id, kind=kind.value, owner=owner)
    now = deps.clock()
    spans = tracer("phoenix.job")
    try:
        with spans.start_as_current_span(
            "job.claim", attributes={"phoenix.creation_id": creation_id}
        ):
            claimed = deps.store.update(
                creation_id,
                lambda c: lifecycle.claim(
                    c,
                    owner=owner,
                    now=now,
                    lease=deps.lease,
                    max_attempts=deps.max_attempts,
                    execution=execution,
                ),
            )
    except NotFound:
        bound.error("job_creation_missing")
        return JobOutcome(EXIT_DONE, "missing")
    except AlreadyFinished:
        bound.info("job_duplicate_delivery_after_finish")
        return JobOutcome(EXIT_DONE, "finished")
    except AlreadyClaimed:
        bound.info("job_duplicate_delivery_lease_live")
        return JobOutcome(EXIT_DONE, "duplicate")

    if claimed.status is Status.CANCELLED:  # its job died after a cancel request: ended here
        bound.info("job_cancelled_at_claim")
        return JobOutcome(EXIT_DONE, "cancelled", claimed)
    if claimed.status is Status.FAILED:  # out of attempts: claim turned it into a failure
        bound.warning("job_out_of_attempts", error=claimed.error and claimed.error.code)
        _record_failure(claimed)
        return JobOutcome(EXIT_DONE, "failed", claimed)
    if claimed.kind is not kind:
        return _fail(
            deps,
            claimed,
            owner,
            CreationError(
                "wrong_job_kind",
                f"a {claimed.kind.value} creation was sent to the {kind.value} job",
            ),
        )

    bound = bound.bind(attempt=claimed.attempts, path=claimed.path)
    bound.info("job_claimed", resumed_operation=claimed.operation)
    deps.on_phase("claimed", claimed)
    generated = False
    try:
        ctx = _Context(deps, claimed, owner)
        with spans.start_as_current_span("job.generate"):
            produced = deps.generator.generate(kind, claimed.prompt, dict(claimed.params), ctx)
        generated = True
        deps.on_phase("generated", claimed)
        # A cancel requested while the provider worked: store nothing. A read suffices: a
        # cancel landing after it makes ``complete`` refuse, and the media are removed then.
        current = deps.store.get(creation_id)
        if current is not None:
            lifecycle.ensure_active(current, owner=owner, now=deps.clock())
        with spans.start_as_current_span("job.store_media"):
            refs = _store_media(deps, claimed, produced)
        deps.on_phase("stored", claimed)
        done_at = deps.clock()
        with spans.start_as_current_span("job.complete"):
            completed = deps.store.update(
                creation_id, lambda c: lifecycle.complete(c, owner=owner, now=done_at, media=refs)
            )
        bound.info("job_completed", media=len(refs))
        metrics.record_completed(completed.kind.value, completed.path, *_durations(completed))
        return JobOutcome(EXIT_DONE, "completed", completed)
    except GenerationError as exc:
        error = CreationError(exc.code, exc.message)
        if exc.retryable:
            return _release(deps, claimed, owner, error, generated)
        return _fail(deps, claimed, owner, error, generated)
    except CancelRequested:
        return _cancel(deps, claimed, owner, generated)
    except (LeaseLost, AlreadyFinished):
        # A heartbeat elsewhere may report a cancel as a plain lost lease: check the record.
        cancelled = _cancel_if_requested(deps, claimed, owner, generated)
        if cancelled is not None:
            return cancelled
        bound.warning("job_lease_lost")
        return JobOutcome(EXIT_DONE, "lost")
    except Exception as exc:  # unknown faults are treated as transient: retry, bounded
        bound.exception("job_internal_error")
        return _release(
            deps, claimed, owner, CreationError("internal_error", _describe(exc)), generated
        )


def _durations(c: Creation) -> tuple[float, float]:
    """(queue wait, run time) in seconds: created -> first claim, first claim -> finished."""
    claimed = c.claimed_at or c.created_at
    finished = c.finished_at or c.updated_at
    return (claimed - c.created_at).total_seconds(), (finished - claimed).total_seconds()


def _record_failure(c: Creation) -> None:
    metrics.record_failed(c.kind.value, c.path, c.error.code if c.error else "unknown")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _store_media(
    deps: JobDeps, creation: Creation, produced: list[GeneratedMedia]
) -> tuple[MediaRef, ...]:
    if not produced:
        raise GenerationError("no_output", "the generator returned no media", retryable=False)
    refs = []
    for index, item in enumerate(produced):
        if item.data is not None:
            ext = _EXTENSIONS.get(item.mime_type, "bin")
            refs.append(deps.media.put(f"{creation.id}/{index}.{ext}", item.data, item.mime_type))
        elif item.uri is not None:
            refs.append(deps.media.ref_from_uri(item.uri, item.mime_type))
        else:
            raise GenerationError(
                "no_output", "a media item had neither data nor uri", retryable=False
            )
    return tuple(refs)


def _cancel(deps: JobDeps, creation: Creation, owner: str, generated: bool) -> JobOutcome:
    return _cancel_if_requested(deps, creation, owner, generated) or JobOutcome(EXIT_DONE, "lost")


def _cancel_if_requested(
    deps: JobDeps, creation: Creation, owner: str, generated: bool
) -> JobOutcome | None:
    """Stop for a cancel: remove whatever this creation may have written (our files, or a
    provider's output in our bucket), then end the record ``cancelled`` (the Veo slot was
    already released by the generator's own clean-up). None if no cancel was requested or the
    lease is no longer ours."""
    current = deps.store.get(creation.id)
    if current is None or current.cancel_requested_at is None or current.lease_owner != owner:
        return None
    log.info("job_cancel_seen", creation_id=creation.id)  # generation has stopped here
    try:
        removed = deps.media.delete_for(creation.id)
    except Exception as exc:  # the record then still names no media; the objects are orphans
        log.warning(
            "job_cancel_media_cleanup_failed", creation_id=creation.id, error=_describe(exc)
        )
        removed = 0
    now = deps.clock()
    try:
        cancelled = deps.store.update(
            creation.id,
            lambda c: lifecycle.finish_cancel(
                c, owner=owner, now=now, provider_started=True if generated else None
            ),
        )
    except (LeaseLost, AlreadyFinished, InvalidTransition):
        return None
    log.info(
        "job_cancelled",
        creation_id=creation.id,
        provider_started=cancelled.provider_started,
        media_removed=removed,
    )
    return JobOutcome(EXIT_DONE, "cancelled", cancelled)


def _fail(
    deps: JobDeps, creation: Creation, owner: str, error: CreationError, generated: bool = False
) -> JobOutcome:
    now = deps.clock()
    try:
        failed = deps.store.update(
            creation.id, lambda c: lifecycle.fail(c, owner=owner, now=now, error=error)
        )
    except CancelRequested:
        return _cancel(deps, creation, owner, generated)
    except (LeaseLost, AlreadyFinished):
        return JobOutcome(EXIT_DONE, "lost")
    log.warning("job_failed", creation_id=creation.id, code=error.code, message=error.message)
    _record_failure(failed)
    return JobOutcome(EXIT_DONE, "failed", failed)


def _release(
    deps: JobDeps, creation: Creation, owner: str, error: CreationError, generated: bool = False
) -> JobOutcome:
    now = deps.clock()
    try:
        released = deps.store.update(
            creation.id,
            lambda c: lifecycle.release_for_retry(
                c, owner=owner, now=now, error=error, max_attempts=deps.max_attempts
            ),
        )
    except CancelRequested:
        return _cancel(deps, creation, owner, generated)
    except (LeaseLost, AlreadyFinished):
        return JobOutcome(EXIT_DONE, "lost")
    if released.status is Status.FAILED:
        log.warning("job_failed_after_retries", creation_id=creation.id, code=error.code)
        _record_failure(released)
        return JobOutcome(EXIT_DONE, "failed", released)
    log.warning("job_retryable_failure", creation_id=creation.id, code=error.code)
    return JobOutcome(EXIT_RETRY, "retry", released)


class Terminated(BaseException):
    """The platform told the job to stop: Cloud Run sends SIGTERM at the task timeout (or on
    cancellation) and SIGKILL after a short grace period. ``job_main`` raises it from its
    SIGTERM handler so the job stops at once, wherever it is waiting; a BaseException, so no
    ``except Exception`` in the job or in a client library swallows it."""


def hand_back(creation_id: str, deps: JobDeps, *, owner: str) -> JobOutcome:
    """After :class:`Terminated`: give the lease back at once so the next attempt claims the
    creation straight away instead of waiting for the lease to expire. The record keeps its
    Veo operation, so that attempt resumes it rather than paying for a new one.

    Safe wherever the stop landed: ``release_for_retry`` checks the lease inside the store's
    transaction, so a job stopped before (or during) its claim, or after it finished, changes
    nothing. On the last attempt the release fails the creation for good, like any other
    retryable failure.
    """
    error = CreationError(
        "terminated",
        "the job was stopped (task timeout or cancellation); the next attempt resumes it",
    )
    now = deps.clock()
    try:
        released = deps.store.update(
            creation_id,
            lambda c: lifecycle.release_for_retry(
                c, owner=owner, now=now, error=error, max_attempts=deps.max_attempts
            ),
        )
    except CancelRequested:
        # Stopped because the owner cancelled (the API's backstop cancels the execution):
        # nothing to hand back, the creation ends cancelled here.
        current = deps.store.get(creation_id)
        cancelled = current and _cancel_if_requested(deps, current, owner, generated=False)
        return cancelled or JobOutcome(EXIT_TERMINATED, "terminated")
    except (LeaseLost, AlreadyFinished, NotFound):
        log.info("job_terminated_nothing_held", creation_id=creation_id, owner=owner)
        return JobOutcome(EXIT_TERMINATED, "terminated")
    except Exception:  # the store is unreachable: the lease expires and a takeover follows
        log.exception("job_terminated_hand_back_failed", creation_id=creation_id, owner=owner)
        return JobOutcome(EXIT_TERMINATED, "terminated")
    if released.status is Status.FAILED:
        _record_failure(released)
    log.warning(
        "job_terminated_handed_back",
        creation_id=creation_id,
        owner=owner,
        status=released.status.value,
        operation=released.operation,
    )
    return JobOutcome(EXIT_TERMINATED, "terminated", released)
