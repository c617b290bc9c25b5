"""Imagen and Veo on Vertex AI through google-genai (the job processes' production generator).

Images are one synchronous ``:predict`` call. Videos are a long-running operation: we start it
with ``storageUri`` = our bucket (so the video never travels through this process), record the
operation name on the creation *immediately*, then poll. A job that crashes after the Veo call
is re-run by Cloud Run and resumes polling the recorded operation: it never pays for a second
generation.

Veo has a per-project concurrency/RPM quota that Cloud Tasks cannot enforce (``jobs:run`` returns
at once), so each video job takes a slot from a ConcurrencyGuard before calling Veo and holds it
while the operation runs (also when resuming: the operation still occupies Veo capacity).

Provider errors become GenerationError with a stable code; ``retryable`` tells the job runner
whether to hand the creation back for another attempt (quota, outages) or fail it for good
(filtered content, invalid arguments, permissions).

Longer than our ~350-line norm on purpose: the start / record / poll / resume / slot sequence
and the error classification are one protocol with Veo, and splitting them would scatter the
"never pay twice" reasoning across modules.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import structlog
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from opentelemetry.trace import SpanKind

from common.adapters.process_wide import process_wide
from common.config import Settings
from common.domain.errors import GenerationError
from common.ports import ConcurrencyGuard, GeneratedMedia, GenerationContext, Generator
from common.tracing import tracer

T = TypeVar("T")
log = structlog.get_logger(__name__)

REQUEST_TIMEOUT_MS = 120_000  # one HTTP call (Imagen can take tens of seconds)
EXPECTED_VIDEO_SECONDS = 90.0  # typical Veo run: drives the progress estimate only
MAX_POLL_ERRORS = 5
_MIME_BY_EXT = {
    "mp4": "video/mp4",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
}  # consecutive transient poll failures tolerated before giving the job back


@process_wide
def genai_client(project: str, location: str, base_url: str = "", token: str = "") -> genai.Client:
    """One client per process (``process_wide``): it holds the HTTP session and refreshes ADC
    tokens.

    ``base_url`` points at a local Vertex stand-in; ``token`` is a static bearer token for it
    (AnonymousCredentials are refused by the library). Production sets neither: ADC (the Cloud
    Run Job's service account) authenticates against {location}-aiplatform.googleapis.com.
    """
    kwargs: dict[str, Any] = {"vertexai": True, "location": location}
    if project:
        kwargs["project"] = project
    if token:
        from google.oauth2.credentials import Credentials

        kwargs["credentials"] = Credentials(token=token)
    options: dict[str, Any] = {"timeout": REQUEST_TIMEOUT_MS}
    if base_url:
        options.update(base_url=base_url.rstrip("/") + "/", api_version="v1")
    kwargs["http_options"] = types.HttpOptions(**options)
    return genai.Client(**kwargs)


def build_guard(settings: Settings) -> ConcurrencyGuard:
    """The guard shares the creation store's backend, so every job of one deployment counts
    against the same cap (SQLite file locally, Firestore in production)."""
    if settings.store == "firestore":
        from common.adapters.firestore_guard import FirestoreConcurrencyGuard

        return FirestoreConcurrencyGuard.from_settings(settings)
    from common.adapters.concurrency_guard import SqliteConcurrencyGuard

    return SqliteConcurrencyGuard(settings.sqlite_path)


@dataclass(frozen=True)
class Polling:
    """Backoff knobs (seconds). Production: poll 2 s -> x1.5 -> 15 s; tests shrink them."""

    initial: float = 2.0
    maximum: float = 15.0
    factor: float = 1.5
    timeout: float = 20 * 60  # give the job back (it will resume) if Veo runs this long
    slot_initial: float = 1.0
    slot_maximum: float = 10.0
    slot_wait: float = 30 * 60
    # How long after an unknown-outcome start its output may still appear: Veo's longest run,
    # and for Imagen (synchronous) the longest a call can still be running at the provider.
    unknown_window: float = 15 * 60
    image_unknown_window: float = REQUEST_TIMEOUT_MS / 1000 + 30


class VertexGenerator(Generator):
    def __init__(
        self,
        client_factory: Callable[[], genai.Client],
        *,
        imagen_model: str,
        veo_model: str,
        guard: ConcurrencyGuard,
        veo_limit: int,
        veo_resource: str | None = None,
        polling: Polling = Polling(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_factory = client_factory
        self._client: genai.Client | None = None
        self._imagen_model = imagen_model
        self._veo_model = veo_model
        self._guard = guard
        self._veo_limit = veo_limit
        self._veo_resource = veo_resource or f"veo/{veo_model}"
        self._polling = polling
        # A slot outlives a few missed renewals (one per poll), but frees soon after a crash.
        self._slot_ttl = timedelta(seconds=max(60.0, 4 * polling.maximum))
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> "VertexGenerator":
        def factory() -> genai.Client:
            return genai_client(
                settings.gcp_project,
                settings.gcp_location,
                settings.vertex_base_url,
                settings.vertex_access_token,
            )

        return cls(
            factory,
            imagen_model=settings.imagen_model,
            veo_model=settings.veo_model,
            guard=build_guard(settings),
            veo_limit=settings.veo_max_concurrent,
            # Veo quota is per base model *and region*.
            veo_resource=f"veo/{settings.gcp_location}/{settings.veo_model}",
            polling=Polling(
                initial=settings.veo_poll_initial_seconds,
                maximum=settings.veo_poll_max_seconds,
                slot_wait=float(settings.veo_slot_wait_seconds),
                unknown_window=float(settings.veo_unknown_window_seconds),
                image_unknown_window=float(settings.imagen_unknown_window_seconds),
            ),
        )

    @property
    def client(self) -> genai.Client:
        # Built on first use, not at construction: a job that fails its claim never pays for it.
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    @property
    def veo_resource(self) -> str:
        return self._veo_resource

    # One method per kind (the registry's ``generator`` entry); ``Generator.generate`` picks
    # it and refuses a kind this class has no method for.

    # --- Imagen ----------------------------------------------------------------------------

    def generate_image(
        self, prompt: str, params: dict, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        # Imagen bills per call and has no operation to resume, so the same marker rule as
        # Veo's start applies: written before the call; with our bucket as ``storageUri`` the
        # images land under the marker's prefix, so a retry after a lost answer (or a crash
        # before completion) adopts them instead of paying again.
        found = self._recover_unknown_start(ctx, window=self._polling.image_unknown_window)
        if found:
            return found
        marker = ctx.mark_start()
        count = int(params.get("count") or 1)
        config = types.GenerateImagesConfig(
            number_of_images=count,
            aspect_ratio=params.get("aspect_ratio") or "1:1",
            include_rai_reason=True,
            output_mime_type="image/png",
            output_gcs_uri=ctx.output_prefix_for(marker),
        )
        response = self._start(
            "vertex.generate_images",
            lambda: self.client.models.generate_images(
                model=self._imagen_model, prompt=prompt, config=config
            ),
            ctx,
        )
        generated = response.generated_images or []
        out = [
            GeneratedMedia(
                mime_type=g.image.mime_type or "image/png",
                data=None if g.image.gcs_uri else g.image.image_bytes,
                uri=g.image.gcs_uri or None,
            )
            for g in generated
            if g.image is not None and (g.image.image_bytes or g.image.gcs_uri)
        ]
        if out:
            return out  # fewer than requested means some were filtered: keep the rest
        reasons = sorted({g.rai_filtered_reason for g in generated if g.rai_filtered_reason})
        raise GenerationError(
            "content_filtered",
            "; ".join(reasons) or "every image was removed by the safety filters",
            retryable=False,
        )

    # --- Veo -------------------------------------------------------------------------------

    def generate_video(
        self, prompt: str, params: dict, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        # The slot belongs to this execution attempt (the lease owner), not to the creation:
        # when two executions of one creation overlap, neither can free or renew the other's.
        holder = ctx.lease_owner
        held = False
        try:
            resumed = bool(ctx.existing_operation)
            if resumed:
                # Resume: never start a second (billed) generation, and never wait for a slot to
                # look at work already running (and paid for). Count it if a slot is free.
                held = self._try_slot(holder)
                operation = types.GenerateVideosOperation(  # type: ignore[call-arg]
                    name=ctx.existing_operation  # ``name`` comes from the Operation mixin
                )
            else:
                found = self._recover_unknown_start(ctx)
                if found:
                    return found
                self._wait_for_slot(holder, ctx)
                held = True
                operation = self._start_video(prompt, params, ctx)
            operation = self._poll(operation, ctx, holder, resumed=resumed, held=held)
            return self._video_result(operation, ctx)
        finally:
            if held:
                try:
                    self._guard.release(self._veo_resource, holder)
                except Exception:  # the slot expires by itself; never mask the real outcome
                    pass

    def _try_slot(self, holder: str) -> bool:
        try:
            return self._guard.acquire(
                self._veo_resource, holder, limit=self._veo_limit, ttl=self._slot_ttl
            )
        except Exception as exc:  # counting is best effort; the operation runs regardless
            log.warning("veo_slot_acquire_failed", holder=holder, error=repr(exc)[:300])
            return False

    def _recover_unknown_start(
        self, ctx: GenerationContext, *, window: float | None = None
    ) -> list[GeneratedMedia] | None:
        """A previous attempt made a start call and never learnt its outcome (killed, timed
        out, connection lost after sending). Veo gives no idempotency key and no way to list
        operations, but each start writes its output under a prefix carrying its marker: look
        there until the start could no longer be running (``unknown_window``). If nothing came,
        the creation is handed back (retryable) and the next attempt starts anew: an attempt
        never both waits out the window and runs a generation, so the job's timeout budget
        (slot wait + polling) is unchanged. Without such a prefix (inline output) the first
        result is unrecoverable: start anew at once."""
        marker = ctx.start_marker
        if not marker:
            return None
        if ctx.output_prefix_for(marker) is None:
            log.warning("unknown_start_unrecoverable", creation_id=ctx.creation_id)
            ctx.clear_start()
            return None
        p = self._polling
        window = p.unknown_window if window is None else window
        while True:
            found = [
                GeneratedMedia(mime_type=_MIME_BY_EXT[ext], uri=u)
                for u in ctx.find_outputs(marker)
                if (ext := u.rsplit(".", 1)[-1].lower()) in _MIME_BY_EXT
            ]
            if found:
                log.info(
                    "unknown_start_found",
                    creation_id=ctx.creation_id,
                    outputs=len(found),
                    marker_age_s=round(ctx.start_marker_age(), 3),
                )
                return found
            if ctx.start_marker_age() >= window:
                log.warning("unknown_start_not_found", creation_id=ctx.creation_id, window_s=window)
                ctx.clear_start()
                raise GenerationError(
                    "start_outcome_unknown",
                    f"the earlier start left no output within {window:.0f}s: starting again",
                    retryable=True,
                )
            ctx.heartbeat()
            self._sleep(min(p.maximum, max(0.05, window - ctx.start_marker_age())))

    def _wait_for_slot(self, holder: str, ctx: GenerationContext) -> None:
        p = self._polling
        deadline = self._clock() + p.slot_wait
        delay = p.slot_initial
        while not self._guard.acquire(
            self._veo_resource, holder, limit=self._veo_limit, ttl=self._slot_ttl
        ):
            if self._clock() >= deadline:
                raise GenerationError(
                    "provider_busy",
                    f"no free Veo slot within {p.slot_wait:.0f}s (limit {self._veo_limit})",
                    retryable=True,
                )
            ctx.heartbeat()  # keep our claim on the creation while we queue
            self._sleep(delay * random.uniform(0.8, 1.2))  # jitter: waiters don't stampede
            delay = min(delay * p.factor, p.slot_maximum)

    def _start_video(
        self, prompt: str, params: dict, ctx: GenerationContext
    ) -> types.GenerateVideosOperation:
        # Written before the call and needing the lease: a job that lost its lease cannot start
        # a second generation, and a crash or timeout from here on leaves a trace the retry
        # follows (``_recover_unknown_start``) instead of paying again.
        marker = ctx.mark_start()
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=params.get("duration_seconds"),
            aspect_ratio=params.get("aspect_ratio"),
            output_gcs_uri=ctx.output_prefix_for(marker),
        )
        operation = self._start(
            "vertex.generate_videos",
            lambda: self.client.models.generate_videos(
                model=self._veo_model,
                source=types.GenerateVideosSource(prompt=prompt),
                config=config,
            ),
            ctx,
        )
        if not operation.name:
            raise GenerationError(
                "provider_error", "Veo returned an operation without a name", retryable=True
            )
        ctx.record_operation(operation.name)  # before anything else can fail
        return operation

    @staticmethod
    def _start(span: str, call: Callable[[], T], ctx: GenerationContext) -> T:
        """One billed start call after ``mark_start``: a definite refusal clears the marker
        (nothing was started); an unknown outcome keeps it for the retry to follow."""
        try:
            return _call(span, call)
        except GenerationError as exc:
            if exc.outcome_unknown:
                raise GenerationError(
                    "start_outcome_unknown",
                    f"{span}: the provider may have accepted the request: {exc.message}",
                    retryable=True,
                    outcome_unknown=True,
                ) from exc
            ctx.clear_start()
            raise

    def _poll(
        self,
        operation: types.GenerateVideosOperation,
        ctx: GenerationContext,
        holder: str,
        *,
        resumed: bool,
        held: bool = True,
    ) -> types.GenerateVideosOperation:
        p = self._polling
        started = self._clock()
        delay = p.initial
        errors = 0
        # A resumed operation is polled at once: it may have finished while nobody watched.
        sleep_first = not resumed
        while not operation.done:
            if self._clock() - started > p.timeout:
                raise GenerationError(
                    "provider_timeout",
                    f"Veo operation still running after {p.timeout:.0f}s",
                    retryable=True,  # the next attempt resumes the same operation
                )
            if sleep_first:
                self._sleep(delay)
                delay = min(delay * p.factor, p.maximum)
            sleep_first = True
            try:
                operation = _call(
                    "vertex.operations.get",
                    functools.partial(self.client.operations.get, operation),
                )
                errors = 0
            except GenerationError as exc:
                # One failed poll costs nothing (the operation keeps running); give the job
                # back only when the provider stays unreachable.
                errors += 1
                if not exc.retryable or errors >= MAX_POLL_ERRORS:
                    raise
            if held:
                try:
                    # A lapsed slot is re-taken only below the cap (never past it); if the cap
                    # is full the operation goes on uncounted and the slot is not ours to free.
                    self._guard.renew(
                        self._veo_resource, holder, ttl=self._slot_ttl, limit=self._veo_limit
                    )
                except Exception as exc:  # best effort: a missed renewal only risks the TTL
                    log.warning("veo_slot_renew_failed", holder=holder, error=repr(exc)[:300])
            elapsed = self._clock() - started
            ctx.report_progress(min(95, 5 + int(90 * elapsed / EXPECTED_VIDEO_SECONDS)))
            ctx.heartbeat()
        return operation

    def _video_result(
        self, operation: types.GenerateVideosOperation, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        if operation.error:
            exc = _operation_error(operation.error)
            if exc.retryable:
                # A failed operation stays failed: forget it so the retry starts a new one
                # instead of re-reading this error until the attempts run out.
                ctx.record_operation("")
            raise exc
        response = operation.response or operation.result
        videos = (response.generated_videos if response else None) or []
        out: list[GeneratedMedia] = []
        for item in videos:
            video = item.video
            if video is None:
                continue
            mime = video.mime_type or "video/mp4"
            if video.uri:
                out.append(GeneratedMedia(mime_type=mime, uri=video.uri))
            elif video.video_bytes:
                out.append(GeneratedMedia(mime_type=mime, data=video.video_bytes))
        if out:
            return out
        if response is not None and response.rai_media_filtered_count:
            reasons = "; ".join(response.rai_media_filtered_reasons or [])
            raise GenerationError(
                "content_filtered",
                reasons or "the video was removed by the safety filters",
                retryable=False,
            )
        raise GenerationError("no_output", "Veo finished without a video", retryable=False)


# --- Error mapping -----------------------------------------------------------------------------

_RETRYABLE_STATUSES = {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"}
# google.rpc.Code numbers, as found in a failed operation's ``error.code``.
_RPC_CODES = {
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}


def classify(code: int | None, status: str | None, message: str) -> GenerationError:
    """HTTP status and/or canonical status name -> our error code and retry decision."""
    status = (status or "").upper()
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return GenerationError("quota_exhausted", message, retryable=True)
    if code == 400 or status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        return GenerationError("invalid_argument", message, retryable=False)
    if code in (401, 403) or status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return GenerationError("permission_denied", message, retryable=False)
    if code == 404 or status == "NOT_FOUND":
        return GenerationError("not_found", message, retryable=False)
    if code in (408, 409) or (code is not None and code >= 500) or status in _RETRYABLE_STATUSES:
        return GenerationError("provider_unavailable", message, retryable=True)
    return GenerationError("provider_error", message, retryable=False)


def _operation_error(error: dict[str, Any]) -> GenerationError:
    code = error.get("code")
    status = error.get("status") or (_RPC_CODES.get(code) if isinstance(code, int) else None)
    message = str(error.get("message") or error)[:500]
    # An rpc code (e.g. 8) is not an HTTP code: classify by its name only.
    return classify(None, status, message)


def _call(span: str, fn: Callable[[], T]) -> T:
    """Run one provider call in a CLIENT span named ``span`` (google-genai speaks httpx2, which
    no maintained OpenTelemetry instrumentation covers), translating every failure into a
    classified GenerationError."""
    with tracer("phoenix.vertex").start_as_current_span(span, kind=SpanKind.CLIENT):
        return _translated(fn)


def _translated(fn: Callable[[], T]) -> T:
    """``outcome_unknown`` marks failures after which the request may have been accepted: a
    timeout or a connection lost after sending, or a gateway timeout (504). An HTTP error the
    service itself answered (429, 400, 503...) means it did not start anything."""
    try:
        return fn()
    except genai_errors.APIError as exc:
        message = str(exc.message or exc)[:500]
        err = classify(exc.code, exc.status, message)
        err.outcome_unknown = exc.code == 504
        raise err from exc
    except GenerationError:
        raise
    except Exception as exc:
        if _is_transport_error(exc):
            raise GenerationError(
                "provider_unavailable",
                f"{type(exc).__name__}: {exc}"[:500],
                retryable=True,
                outcome_unknown=not _is_connect_error(exc),
            ) from exc
        raise


def _is_connect_error(exc: Exception) -> bool:
    """The connection was never established, so the request was never sent."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    for cls in type(exc).__mro__:
        if cls.__name__ in ("ConnectError", "ConnectTimeout", "NewConnectionError"):
            return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_connect_error(cause)  # type: ignore[arg-type]


def _is_transport_error(exc: Exception) -> bool:
    """Connection failures and timeouts from whichever HTTP stack google-genai picked."""
    import requests
    from google.auth import exceptions as auth_exceptions

    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            auth_exceptions.TransportError,
            TimeoutError,
            ConnectionError,
        ),
    ):
        return True
    # google-genai 3.x vendors httpx as "httpx2"/"httpcore2"; match the family, not a name.
    # Only their transport classes (connect/read/timeouts), not e.g. an invalid-URL error.
    for cls in type(exc).__mro__:
        root = cls.__module__.split(".")[0]
        if root.startswith(("httpx", "httpcore", "aiohttp")) and cls.__name__ in (
            "TransportError",
            "TimeoutException",
            "NetworkError",
            "ConnectError",
            "ReadError",
            "WriteError",
            "RemoteProtocolError",
            "ClientConnectionError",
            "ServerTimeoutError",
        ):
            return True
    return False
