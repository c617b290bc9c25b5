"""The API's service layer: create, read, list, cancel, delete and retry creations. No Flask in
here.

Creating is "record, then dispatch": the ``pending`` record is written first so a creation can
never run without a record, and a dispatch that fails afterwards leaves a recoverable record
(``dispatch_error`` set, still ``pending``) that the sweeper re-dispatches. We deliberately have
no outbox table: the creation record already carries everything an outbox row would.

Which dispatch path a creation takes is decided by ``route(kind, user_id)`` (constant
``settings.dispatch`` by default; the percentage rollout plugs in here), and the path is stored
on the record so the sweeper and the migration dashboard know where each creation went.

(Longer than our ~350-line norm: create, cancel, delete and retry share admission, dispatch
and the cancel backstop; one module keeps that one story of a creation's life at the API.)
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import structlog

from common import metrics
from common.auth import FirebaseTokenVerifier
from common.config import Settings
from common.domain import creation as lifecycle
from common.domain import failures
from common.domain.creation import Creation, Kind, Status
from common.domain.errors import AlreadyFinished, InvalidTransition, NotFound
from common.domain.kinds import KINDS, KindRegistry
from common.domain.payload import TaskPayload
from common.domain.quota import QuotaPolicy, Refusal
from common.domain.requests import GenerationRequest, parse_generation_request
from common.ports import CreationStore, Dispatcher, MediaStore

log = structlog.get_logger(__name__)

Route = Callable[[Kind, str], str]
DispatcherFor = Callable[[str], Dispatcher]

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100


class DispatcherPool:
    """Builds each path's dispatcher on first use and keeps it (they hold connections, thread
    pools or child processes): a path that is never routed to never imports its SDK."""

    def __init__(self, build: Callable[[str], Dispatcher]) -> None:
        self._build = build
        self._built: dict[str, Dispatcher] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str) -> Dispatcher:
        dispatcher = self._built.get(path)
        if dispatcher is None:
            with self._lock:
                dispatcher = self._built.get(path)
                if dispatcher is None:
                    dispatcher = self._build(path)
                    self._built[path] = dispatcher
        return dispatcher

    def built(self) -> dict[str, Dispatcher]:
        return dict(self._built)

    def close(self) -> None:
        with self._lock:
            built, self._built = list(self._built.values()), {}
        for dispatcher in built:
            try:
                dispatcher.close()
            except Exception:  # closing one must not stop closing the others
                log.exception("dispatcher_close_failed", dispatcher=dispatcher.name)


def current_traceparent() -> str | None:
    """The one place the API reads the active trace context for a new creation: the job joins
    this trace through the payload (``TRACEPARENT``)."""
    from common import tracing

    return tracing.current_traceparent()


def _dispatch_span(creation_id: str, kind: str, path: str) -> Any:
    """The ``dispatch <path>`` span around handing a creation to its queue (a child of the
    request's span; the Cloud Tasks or Celery client call nests under it). The job joins the
    request's trace, not this span: the dispatch ends long before the job starts."""
    from opentelemetry.trace import SpanKind

    from common import tracing

    return tracing.tracer("phoenix.api").start_as_current_span(
        f"dispatch {path}",
        kind=SpanKind.PRODUCER,
        attributes={"phoenix.creation_id": creation_id, "phoenix.kind": kind, "phoenix.path": path},
    )


class RateLimited(Exception):
    """Admission refused: too many unfinished creations, too many requests this minute, or the
    service-wide ceiling. ``reason`` is the stable refusal code (``common.domain.quota``)."""

    def __init__(
        self, message: str, retry_after_seconds: int, reason: str = "rate_limited"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds
        self.reason = reason


class Admission:
    """The one door into the queue: every new creation, and every retry of an old one, goes
    through ``admit``; everything that ends a creation outside the job runner (cancel, delete)
    calls ``release``. The store applies both to the user's quota record in one transaction
    (``CreationStore.admit``), so the cap and the per-minute rate hold across every instance
    and thread; a creation becoming terminal releases its slot inside the same ``update``, and
    the sweeper recomputes slots that are out of step (``common.sweeper.reconcile_quotas``)."""

    def __init__(
        self,
        store: CreationStore,
        policy: QuotaPolicy,
        clock: Callable[[], datetime] = lifecycle.utcnow,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def admit(self, user_id: str, creation_id: str, *, insert: Creation | None = None) -> None:
        """Take a slot for ``creation_id`` (and store ``insert`` with it, atomically), or raise
        RateLimited with nothing written."""
        if not self.policy.enabled:
            if insert is not None:
                self.store.add(insert)
            return
        refusal = self.store.admit(user_id, creation_id, self.policy, self.clock(), insert=insert)
        if isinstance(refusal, Refusal):
            raise RateLimited(refusal.message, refusal.retry_after_seconds, refusal.code)

    def release(self, user_id: str, creation_id: str) -> None:
        """Give the slot back (idempotent). Creations that finish through ``store.update``
        release themselves; call this when a creation stops being unfinished any other way."""
        if self.policy.max_active > 0:
            self.store.release_quota(user_id, creation_id)


class DispatchFailed(Exception):
    """The record exists but its dispatcher refused it. ``creation`` is the record as stored
    (``pending`` with ``dispatch_error``), so the caller can name it in the 503."""

    def __init__(self, creation: Creation, reason: str) -> None:
        super().__init__(reason)
        self.creation = creation
        self.reason = reason


class Conflict(Exception):
    """The creation's state does not allow the command (cancel a finished one, delete a running
    one, retry a completed one): HTTP 409 with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeletePending(Exception):
    """The record is now a tombstone but its media could not all be removed yet; the sweeper
    finishes (HTTP 202: gone for the user, clean-up still running)."""


# Only these can be retried: a completed one has its media, a running one is still coming.
RETRYABLE = (Status.FAILED, Status.CANCELLED)


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def etag_for(c: Creation) -> str:
    """Changes whenever anything a client shows changes: every lifecycle step moves
    ``updated_at`` and status/progress are what polling is for. Computed from the record alone,
    so a 304 costs a store read and no view building or JSON encoding."""
    raw = f"{c.id}|{c.updated_at.timestamp():.6f}|{c.status.value}|{c.progress}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


class CreationService:
    def __init__(
        self,
        store: CreationStore,
        dispatchers: DispatcherFor,
        route: Route,
        clock: Callable[[], datetime] = lifecycle.utcnow,
        *,
        media: MediaStore,
        traceparent: Callable[[], str | None] = current_traceparent,
        admission: Admission | None = None,
        cancel_backstop_seconds: float | None = None,
        kinds: KindRegistry = KINDS,
    ) -> None:
        self.store = store
        self.kinds = kinds
        self.dispatchers = dispatchers
        self.route = route
        self.clock = clock
        self.media = media
        self._traceparent = traceparent
        self.admission = admission
        # After a cancel request, how long the job gets to stop by itself (its heartbeat)
        # before the API stops its execution (Cloud Run executions:cancel). None: never here
        # (the sweeper still does it once the lease has run out).
        self.cancel_backstop_seconds = cancel_backstop_seconds

    # --- commands -----------------------------------------------------------------------------

    def admit(self, user_id: str, creation_id: str, *, insert: Creation | None = None) -> None:
        """THE admission step for anything that puts a creation (back) in the queue: a new
        creation (``insert`` = its record, stored in the same transaction) or a retry of an
        existing one (``insert=None``; admit before making it pending again, ``release`` if that
        then fails). Raises RateLimited with nothing written."""
        if self.admission is not None:
            self.admission.admit(user_id, creation_id, insert=insert)
        elif insert is not None:
            self.store.add(insert)

    def release(self, user_id: str, creation_id: str) -> None:
        """Give back ``creation_id``'s admission slot (idempotent). Terminal transitions made
        through ``store.update`` release by themselves; cancel/delete paths that remove or end
        a record any other way call this."""
        if self.admission is not None:
            self.admission.release(user_id, creation_id)

    def create(self, user_id: str, req: GenerationRequest) -> Creation:
        """Record a pending creation and dispatch it. Raises DispatchFailed (after recording the
        failure) when the dispatcher refuses; the creation then waits for the sweeper.
        Raises RateLimited, writing nothing, when admission refuses."""
        path = self.route(req.kind, user_id)
        traceparent = self._traceparent()
        creation = lifecycle.new(
            user_id=user_id,
            kind=req.kind,
            prompt=req.prompt,
            params=req.params,
            path=path,
            now=self.clock(),
            traceparent=traceparent,
        )
        self.admit(user_id, creation.id, insert=creation)
        bound = log.bind(creation_id=creation.id, kind=req.kind.value, path=path)
        payload = TaskPayload(creation_id=creation.id, kind=req.kind, traceparent=traceparent)
        try:
            with _dispatch_span(creation.id, req.kind.value, path):
                self.dispatchers(path).dispatch(payload)
        except Exception as exc:  # DispatchError, or a dispatcher that cannot even be built
            reason = f"{type(exc).__name__}: {exc}"
            bound.warning("dispatch_failed", error=reason)
            failed = self.store.update(
                creation.id,
                lambda c: lifecycle.mark_dispatch_failed(c, now=self.clock(), reason=reason),
            )
            raise DispatchFailed(failed, reason) from exc
        dispatched = self.store.update(
            creation.id, lambda c: lifecycle.mark_dispatched(c, now=self.clock())
        )
        bound.info("creation_dispatched")
        metrics.record_created(req.kind.value, path)
        return dispatched

    def cancel(self, user_id: str, creation_id: str) -> Creation:
        """``pending`` -> ``cancelled`` now; ``processing`` -> cancel requested (its job stops at
        its next lease renewal). Idempotent. Raises Conflict for completed/failed creations.
        The creation's path is then asked to withdraw what it still holds (queued task,
        Celery message, Cloud Run execution): best effort, correctness never depends on it."""
        c = self.get(user_id, creation_id)
        if c.status is Status.CANCELLED:
            return c
        try:
            updated = self.store.update(c.id, lambda cur: lifecycle.cancel(cur, now=self.clock()))
        except AlreadyFinished:
            current = self.store.get(c.id) or c
            raise Conflict(
                "already_finished",
                f"this creation is already {current.status.value}; only queued or generating "
                "creations can be cancelled",
            ) from None
        bound = log.bind(creation_id=c.id, kind=c.kind.value, path=c.path)
        try:
            withdrawn = self.dispatchers(updated.path).cancel(updated)
        except Exception as exc:  # the job's own checks still stop it
            withdrawn = []
            bound.warning("cancel_withdraw_failed", error=f"{type(exc).__name__}: {exc}")
        bound.info(
            "creation_cancel",
            status=updated.status.value,
            was=c.status.value,
            withdrawn=withdrawn,
        )
        if updated.status is Status.PROCESSING and self.cancel_backstop_seconds is not None:
            timer = threading.Timer(
                self.cancel_backstop_seconds, self._cancel_backstop, args=(updated.id,)
            )
            timer.daemon = True
            timer.start()
        return updated

    def _cancel_backstop(self, creation_id: str) -> bool:
        """The job had its chance (a lease's worth of heartbeats): if it still has not ended
        the cancel, stop its execution. Best effort: if this process goes away first, the
        sweeper does the same once the lease runs out."""
        current = self.store.get(creation_id)
        if (
            current is None
            or current.status is not Status.PROCESSING
            or current.cancel_requested_at is None
        ):
            return False
        try:
            stopped = self.dispatchers(current.path).stop_execution(current)
        except Exception as exc:
            log.warning("cancel_backstop_failed", creation_id=creation_id, error=repr(exc)[:300])
            return False
        log.warning(
            "cancel_backstop", creation_id=creation_id, execution=current.execution, stopped=stopped
        )
        return stopped

    def delete(self, user_id: str, creation_id: str) -> None:
        """Remove a finished (completed, failed, cancelled) creation and its media. A queued one
        is cancelled first; a generating one gets a cancel request and a Conflict (its job
        could still write media: delete it once it shows ``cancelled``). Raises DeletePending
        when the media removal failed (the sweeper finishes it)."""
        from common.sweeper import finish_delete

        c = self.get(user_id, creation_id)
        if c.status is Status.PENDING:
            c = self.cancel(user_id, creation_id)
        if c.status is Status.PROCESSING:
            self.cancel(user_id, creation_id)
            raise Conflict(
                "still_running",
                "it is still generating: cancellation was requested; delete it once it shows "
                "cancelled",
            )
        try:
            self.store.update(c.id, lambda cur: lifecycle.mark_deleting(cur, now=self.clock()))
        except InvalidTransition as exc:  # it started running between our read and now
            raise Conflict("still_running", str(exc)) from None
        try:
            finish_delete(self.store, self.media, c.id)
        except Exception as exc:
            log.warning(
                "creation_delete_pending", creation_id=c.id, error=f"{type(exc).__name__}: {exc}"
            )
            raise DeletePending(c.id) from exc
        log.info("creation_deleted", creation_id=c.id, kind=c.kind.value, path=c.path)

    def retry(self, user_id: str, creation_id: str) -> Creation:
        """A NEW creation with the failed/cancelled one's kind, prompt and parameters, made by
        ``create`` so admission, rate limits, routing and dispatch apply exactly as for a new
        request. The old one is left as it was (its history stays visible)."""
        c = self.get(user_id, creation_id)
        if c.status not in RETRYABLE:
            raise Conflict(
                "not_retryable",
                f"only failed or cancelled creations can be retried; this one is "
                f"{c.status.value}",
            )
        # Re-validated with today's rules: a stored request from an older build could differ.
        req = parse_generation_request(c.kind, {"prompt": c.prompt, **dict(c.params)}, self.kinds)
        return self.create(user_id, req)

    # --- queries ------------------------------------------------------------------------------

    def get(self, user_id: str, creation_id: str) -> Creation:
        """The creation if it is the caller's; NotFound otherwise (whether missing or foreign,
        so ids cannot be probed, or being deleted)."""
        if not creation_id or len(creation_id) > 200:
            raise NotFound(creation_id)
        c = self.store.get(creation_id)
        if c is None or c.user_id != user_id or not c.status.public:
            raise NotFound(creation_id)
        return c

    def list(self, user_id: str, limit: int = LIST_LIMIT_DEFAULT) -> list[Creation]:
        limit = max(1, min(LIST_LIMIT_MAX, limit))
        return [c for c in self.store.list_for_user(user_id, limit) if c.status.public]

    # --- views --------------------------------------------------------------------------------

    def view(self, c: Creation) -> dict[str, Any]:
        """The public JSON shape: no lease, owner or bookkeeping fields; media as URLs minted
        now (signed URLs expire, so they are never stored)."""
        return {
            "id": c.id,
            "kind": c.kind.value,
            "status": c.status.value,
            "progress": c.progress,
            "prompt": c.prompt,
            "params": dict(c.params),
            "media": [{"url": self.media.url_for(m), "mime_type": m.mime_type} for m in c.media],
            # The message comes from the code, never from the record: internal detail (bucket,
            # account, URL, exception text) stays with operators (common.domain.failures).
            "error": (
                {"code": c.error.code, "message": failures.user_message(c.error.code)}
                if c.error
                else None
            ),
            "created_at": _iso(c.created_at),
            "updated_at": _iso(c.updated_at),
            "path": c.path,
            "cancel_requested_at": _iso(c.cancel_requested_at) if c.cancel_requested_at else None,
            "cancelled_at": _iso(c.cancelled_at) if c.cancelled_at else None,
            "provider_started": c.provider_started,
        }


@dataclass
class PhoenixServices:
    """What the app factory wires once and the request handlers use (``app.extensions``)."""

    settings: Settings
    store: CreationStore
    media: MediaStore
    dispatchers: DispatcherFor
    route: Route
    creations: CreationService
    token_verifier: FirebaseTokenVerifier | None = None

    def close(self) -> None:
        """Release dispatchers (terminating local job processes) and store connections."""
        close = getattr(self.dispatchers, "close", None)
        if callable(close):
            close()
        self.store.close()
