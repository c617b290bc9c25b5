"""The job's service layer: claim -> generate -> store -> complete (or fail), for every path.

The Cloud Run Jobs, the local processes and the legacy Celery worker all call ``run_job``, so
the three paths differ only in how the creation id arrives. Exit codes follow Cloud Run's retry
contract: 0 when there is nothing left to do (done, failed for good, or a duplicate delivery),
1 only when a retry could succeed (the record was handed back as ``pending`` first).

(Longer than our ~350-line norm: the claim, the heartbeat thread, the unknown-outcome markers,
storing media and the hand-back all act on one lease; they are one protocol, read together.)
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

import structlog

from common import metrics
from common.domain import creation as lifecycle
from common.domain.creation import Creation, CreationError, Kind, MediaRef, Status
from common.domain.errors import (
    AlreadyClaimed,
    AlreadyFinished,
    CancelRequested,
    DomainError,
    GenerationError,
    InvalidTransition,
    LeaseLost,
    NotFound,
    StopWork,
)
from common.domain.kinds import KINDS
from common.ports import CreationStore, GeneratedMedia, Generator, MediaStore
from common.tracing import tracer

log = structlog.get_logger(__name__)

EXIT_DONE = 0
EXIT_RETRY = 1
# 128 + SIGTERM: the process was told to stop. Cloud Run counts a stopped task as failed (and
# retries it within maxRetries) whatever the code; a shell or the stand-in sees why it ended.
EXIT_TERMINATED = 143


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
    # Seconds between the heartbeat thread's lease renewals (default: a quarter of the lease).
    heartbeat_every: float | None = None


@dataclass
class JobOutcome:
    exit_code: int
    status: str  # completed | failed | retry | duplicate | finished | missing | lost | cancelled
    creation: Creation | None = None


class _Heartbeat:
    """Renews the lease on its own thread, every quarter lease, whatever the job is doing.

    A provider call can block for minutes (one Veo or Imagen HTTP call may take 120 s, as long
    as the default lease), so renewing only between calls would let the lease lapse under a
    live job and invite a second execution to generate again. This thread keeps renewing while
    the main thread is blocked.

    It is also the one place a running job learns it must stop: a renewal is an ordinary
    lifecycle change (``lifecycle.renew``), and when that change raises ``StopWork``
    (``LeaseLost``: someone else holds the lease; ``CancelRequested``: the owner cancelled) or
    finds the record finished, the reason is kept and every later context call raises it, so the job
    stops at its next step instead of finishing work nobody will keep. Store outages are not
    a reason to stop: nobody else can take the lease over while the store is down either.
    """

    def __init__(self, deps: JobDeps, creation_id: str, owner: str) -> None:
        self._deps = deps
        self._creation_id = creation_id
        self._owner = owner
        self._every = deps.heartbeat_every or max(0.05, deps.lease.total_seconds() / 4)
        self._done = threading.Event()
        self.stop_reason: DomainError | None = None
        self.renewals = 0
        self._thread = threading.Thread(
            target=self._run, name=f"lease-heartbeat-{creation_id[:8]}", daemon=True
        )

    def start(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self._every):
            self.beat()

    def beat(self) -> None:
        now = self._deps.clock()
        try:
            self._deps.store.update(
                self._creation_id,
                lambda c: lifecycle.renew(c, owner=self._owner, now=now, lease=self._deps.lease),
            )
            self.renewals += 1
        except (StopWork, AlreadyFinished) as exc:
            self.stop_reason = exc
            self._done.set()
            log.warning(
                "job_lease_renewal_says_stop",
                creation_id=self._creation_id,
                reason=getattr(exc, "reason", "finished"),
            )
        except Exception as exc:  # store outage: keep the job going, try again next beat
            log.warning(
                "job_lease_renewal_failed", creation_id=self._creation_id, error=repr(exc)[:300]
            )

    def check(self) -> None:
        """Raise the reason to stop, if a renewal reported one."""
        if self.stop_reason is not None:
            raise self.stop_reason


class _Context:
    """What the generator sees. The lease is kept alive by the heartbeat thread; every call
    here also checks whether a renewal said to stop, and raises that reason if so."""

    def __init__(self, deps: JobDeps, creation: Creation, owner: str, beat: _Heartbeat) -> None:
        self._deps = deps
        self._owner = owner
        self._beat = beat
        self.lease_owner = owner
        self.creation_id = creation.id
        self.existing_operation = creation.operation
        self.start_marker = creation.start_marker
        self._start_marker_at = creation.start_marker_at
        self.output_prefix = deps.media.output_prefix(creation.id)
        self._last_percent = creation.progress
        self._unrecorded_operation: str | None = None

    def _update(self, change: Callable[[Creation], Creation]) -> Creation:
        self._beat.check()
        return self._deps.store.update(self.creation_id, change)

    def report_progress(self, percent: int) -> None:
        self._beat.check()
        if self._unrecorded_operation is not None:
            self._try_record(self._unrecorded_operation)
        if percent <= self._last_percent:
            return  # nothing new to show; the heartbeat thread keeps the lease
        self._last_percent = percent
        now = self._deps.clock()
        self._update(
            lambda c: lifecycle.report_progress(
                c, owner=self._owner, now=now, progress=percent, lease=self._deps.lease
            )
        )

    def record_operation(self, operation: str) -> None:
        """Store the operation name. A store blip must not throw away a generation that is
        already paid for: the name stays in memory, polling goes on, and the write is retried
        at every progress report (the start marker, written before the call, covers a crash
        in between: the retry finds the output instead of starting again)."""
        self.existing_operation = operation
        if not self._try_record(operation):
            self._unrecorded_operation = operation

    def _try_record(self, operation: str) -> bool:
        now = self._deps.clock()
        try:
            self._update(
                lambda c: lifecycle.record_operation(
                    c, owner=self._owner, now=now, operation=operation
                )
            )
        except (StopWork, AlreadyFinished):
            raise
        except Exception as exc:
            log.warning(
                "job_record_operation_failed", creation_id=self.creation_id, error=repr(exc)[:300]
            )
            return False
        self._unrecorded_operation = None
        if operation:
            self.start_marker = None
        return True

    def mark_start(self) -> str:
        """Record "a billed start call is about to be made" (needs the lease: a job that lost
        it fails here and never calls the provider). Returns the marker, unique per call."""
        marker = uuid.uuid4().hex[:16]
        now = self._deps.clock()
        self._update(lambda c: lifecycle.mark_start(c, owner=self._owner, now=now, marker=marker))
        self.start_marker, self._start_marker_at = marker, now
        return marker

    def clear_start(self) -> None:
        now = self._deps.clock()
        self._update(lambda c: lifecycle.clear_start(c, owner=self._owner, now=now))
        self.start_marker, self._start_marker_at = None, None

    def start_marker_age(self) -> float:
        if self._start_marker_at is None:
            return 0.0
        return max(0.0, (self._deps.clock() - self._start_marker_at).total_seconds())

    def output_prefix_for(self, marker: str) -> str | None:
        """Where the start call carrying ``marker`` writes its output (None: nowhere we can
        look, e.g. local media: the output comes back only in the response)."""
        return f"{self.output_prefix}{marker}/" if self.output_prefix else None

    def find_outputs(self, marker: str) -> list[str]:
        prefix = self.output_prefix_for(marker)
        return self._deps.media.find_outputs(prefix) if prefix else []

    def heartbeat(self) -> None:
        self._beat.check()


def new_owner_id(execution: str | None = None) -> str:
    """A lease owner unique to this execution attempt (two retries never share a lease)."""
    return f"{execution or 'job'}/{uuid.uuid4().hex[:12]}"


def run_job(
    creation_id: str,
    kind: Kind,
    deps: JobDeps,
    *,
    owner: str,
    execution: str | None = None,
    attempt: int | None = None,
) -> JobOutcome:
    """``execution`` is recorded at claim so the API can cancel it (Cloud Run's
    ``jobs/JOB/executions/EXECUTION``); with ``attempt`` (CLOUD_RUN_TASK_ATTEMPT) it lets a retry
    of a crashed attempt take its lease over at once (see ``lifecycle.claim``)."""
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
                    attempt=attempt,
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
    bound.info("job_claimed", resumed_operation=claimed.operation, claims=claimed.claims)
    deps.on_phase("claimed", claimed)
    beat = _Heartbeat(deps, creation_id, owner).start()
    generated = False
    try:
        ctx = _Context(deps, claimed, owner, beat)
        with spans.start_as_current_span("job.generate"):
            produced = deps.generator.generate(kind, claimed.prompt, dict(claimed.params), ctx)
        generated = True
        deps.on_phase("generated", claimed)
        beat.check()  # lost the lease (or a cancel arrived) while the provider worked
        # A cancel requested since the last beat: store nothing. A read suffices: a cancel
        # landing after it makes ``complete`` refuse, and the media are removed then.
        current = deps.store.get(creation_id)
        if current is not None:
            lifecycle.ensure_active(current, owner=owner, now=deps.clock())
        with spans.start_as_current_span("job.store_media"):
            refs = _store_media(deps, claimed, owner, produced)
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
        if beat.stop_reason is not None:
            return _stop(deps, claimed, owner, generated, bound, beat.stop_reason)
        error = CreationError(exc.code, exc.message)
        if exc.retryable:
            return _release(deps, claimed, owner, error, generated)
        return _fail(deps, claimed, owner, error, generated)
    except (StopWork, AlreadyFinished) as exc:  # CancelRequested included
        return _stop(deps, claimed, owner, generated, bound, exc)
    except Exception as exc:  # unknown faults are treated as transient: retry, bounded
        if beat.stop_reason is not None:
            return _stop(deps, claimed, owner, generated, bound, beat.stop_reason)
        bound.exception("job_internal_error")
        return _release(
            deps, claimed, owner, CreationError("internal_error", _describe(exc)), generated
        )
    finally:
        beat.close()


def _stop(
    deps: JobDeps, claimed: Creation, owner: str, generated: bool, bound: Any, reason: Exception
) -> JobOutcome:
    """A renewal or a lease-checked write said stop. A cancel request (seen as
    ``CancelRequested`` or, by a heartbeat elsewhere, as a plain lost lease: the record decides)
    ends the record ``cancelled``; otherwise someone else holds the lease and we just exit."""
    cancelled = _cancel_if_requested(deps, claimed, owner, generated)
    if cancelled is not None:
        return cancelled
    bound.warning("job_stopped", reason=getattr(reason, "reason", "finished"))
    return JobOutcome(EXIT_DONE, "lost")


def _durations(c: Creation) -> tuple[float, float]:
    """(queue wait, run time) in seconds: created -> first claim, first claim -> finished."""
    claimed = c.claimed_at or c.created_at
    finished = c.finished_at or c.updated_at
    return (claimed - c.created_at).total_seconds(), (finished - claimed).total_seconds()


def _record_failure(c: Creation) -> None:
    metrics.record_failed(c.kind.value, c.path, c.error.code if c.error else "unknown")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def media_token(claims: int, owner: str) -> str:
    """A path segment unique to one claim of a creation: media keys carry it, so two executions
    that both got as far as storing (one of them after losing its lease) never write the same
    object, and the loser can never overwrite what the winner's completed record points to."""
    return f"{claims}-{hashlib.sha256(owner.encode()).hexdigest()[:8]}"


def _store_media(
    deps: JobDeps, creation: Creation, owner: str, produced: list[GeneratedMedia]
) -> tuple[MediaRef, ...]:
    if not produced:
        raise GenerationError("no_output", "the generator returned no media", retryable=False)
    token = media_token(creation.claims, owner)
    refs = []
    for index, item in enumerate(produced):
        if item.data is not None:
            ext = KINDS.extension(item.mime_type)
            refs.append(
                deps.media.put(f"{creation.id}/{token}/{index}.{ext}", item.data, item.mime_type)
            )
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
    except (StopWork, AlreadyFinished):
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
    except (StopWork, AlreadyFinished):
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
