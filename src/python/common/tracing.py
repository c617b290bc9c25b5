"""OpenTelemetry tracing shared by the API and the jobs: one trace per creation, across processes.

The API's SERVER span per request comes from the maintained Flask instrumentation (installed by
``api.flask_tracing.instrument_flask``, continuing the caller's ``traceparent`` or
``X-Cloud-Trace-Context``); the API puts the W3C ``traceparent`` of the active span into the task
payload, the dispatcher turns it into the job execution's ``TRACEPARENT`` env override (Cloud
Tasks headers never reach a Cloud Run Job container), and the job starts its span under
``context_from_env(os.environ)`` (OTel's "environment variables as context carriers").
``common.logs`` stamps each JSON line with the active span, so the creation's log lines and
spans line up in Cloud Logging / Cloud Trace.

Exporters (``PHOENIX_TRACE_EXPORTER`` or the ``exporter`` argument):

* ``none`` (default): spans are still created and sampled, so trace ids exist for logs and
  propagation; nothing is sent anywhere.
* ``console``: one JSON span per line on stderr (stdout belongs to the logs).
* ``file:PATH``: one JSON object per finished span per line, appended to PATH. Several processes
  may share a file (the API and its local job subprocesses), which is how tests assert that one
  trace spans processes.
* ``otlp``: OTLP (``opentelemetry-exporter-otlp-proto-http``, or ``-grpc`` when
  ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=grpc``); endpoint etc. from the standard OTEL_* env.
* ``gcp``: Cloud Trace (``opentelemetry-exporter-gcp-trace``).

otlp and gcp are optional dependencies, imported only when selected. console/file use a
synchronous processor: a job is short-lived and must not lose spans at exit; network exporters
batch, and ``shutdown_tracing`` (also registered with atexit) flushes them.

Cost: only the OpenTelemetry API is imported with this module; the SDK is imported by
``configure_tracing``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.config import telemetry_from_env
from common.otel_export import (
    append_json_lines,
    file_path,
    json_lines_path,
    missing_exporter,
    otlp_exporter,
    resource,
    unknown_exporter,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

__all__ = [
    "EXPORTER_ENV",
    "configure_tracing",
    "context_from_env",
    "context_from_headers",
    "context_from_traceparent",
    "current_trace_id",
    "current_traceparent",
    "shutdown_tracing",
    "tracer",
]

EXPORTER_ENV = "PHOENIX_TRACE_EXPORTER"

_W3C = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_shut_down = False
_atexit_registered = False


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------


def _span_record(span: ReadableSpan) -> dict[str, Any]:
    """The file exporter's line: ids as plain lowercase hex, as they appear in logs and
    ``traceparent`` (the SDK's own ``to_json`` prefixes them with ``0x``)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "remote_parent": bool(parent.is_remote) if parent else False,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "resource": dict(span.resource.attributes) if span.resource else {},
        "pid": os.getpid(),
    }


def _file_span_exporter(path: str) -> Any:
    """Builds the ``file:PATH`` exporter (the SDK base class is imported here, not at import)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):  # type: ignore[misc]
        """Appends one JSON object per span per line (``otel_export.append_json_lines``)."""

        def __init__(self, target: str) -> None:
            self.path = json_lines_path(target)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            ok = append_json_lines(self.path, [_span_record(s) for s in spans])
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return JsonLinesSpanExporter(path)


def _gcp_exporter(project: str) -> Any:
    try:
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter
    except ImportError as exc:
        raise missing_exporter(
            EXPORTER_ENV, "gcp", "opentelemetry-exporter-gcp-trace", exc
        ) from exc
    # Without a project the exporter asks google.auth (metadata server on Cloud Run).
    return CloudTraceSpanExporter(project_id=project) if project else CloudTraceSpanExporter()


def _span_processor(spec: str, project: str) -> SpanProcessor | None:
    """The processor for an exporter spec; raises ConfigError for unknown or unavailable ones."""
    if spec == "none":
        return None
    if spec == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        return SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=sys.stderr,
                formatter=lambda span: json.dumps(_span_record(span), default=str) + "\n",
            )
        )
    if spec.startswith("file:"):
        path = file_path(EXPORTER_ENV, spec)
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return SimpleSpanProcessor(_file_span_exporter(path))
    if spec in ("otlp", "gcp"):
        exporter = (
            otlp_exporter("traces", EXPORTER_ENV) if spec == "otlp" else _gcp_exporter(project)
        )
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return BatchSpanProcessor(exporter)
    raise unknown_exporter(EXPORTER_ENV, spec)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def configure_tracing(service: str, exporter: str | None = None, *, project: str = "") -> None:
    """Installs this process's TracerProvider (and makes it the global one, so instrumentation
    libraries use it too). Entrypoints call it through ``common.observability.configure``.
    ``exporter`` defaults to ``PHOENIX_TRACE_EXPORTER`` (``config.telemetry_from_env``).
    Idempotent: the first call wins; later calls do nothing (also after ``shutdown_tracing``:
    a process traces one life). Raises ``ConfigError`` for an unknown exporter or a selected
    optional exporter that is missing, before anything is installed."""
    global _provider, _atexit_registered
    with _lock:
        if _provider is not None:
            return
        if exporter is None:
            exporter, _, env_project = telemetry_from_env(os.environ)
            project = project or env_project
        spec = exporter.strip() or "none"
        processor = _span_processor(spec, project)

        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(
            resource=resource(service, spec),
            # One exit path (ours) flushes; the SDK's own atexit would shut down twice.
            shutdown_on_exit=False,
        )
        if processor is not None:
            provider.add_span_processor(processor)
        # The global can be set once per process; if someone else set it, ours still serves
        # ``tracer()`` and the context (hence logs and propagation) is shared anyway.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        _provider = provider
        if not _atexit_registered:
            atexit.register(shutdown_tracing)
            _atexit_registered = True


def shutdown_tracing(timeout_millis: int = 5000) -> None:
    """Flushes and stops exporting (safe to call more than once). Called at job end, at gunicorn
    worker exit and at interpreter exit; a Cloud Run task that exits without it loses the
    batched spans."""
    global _shut_down
    with _lock:
        provider = _provider
        if provider is None or _shut_down:
            return
        _shut_down = True
    try:
        provider.force_flush(timeout_millis)
    finally:
        provider.shutdown()


def _reset_for_tests() -> None:
    """Forgets the provider (and the OTel global, through its private set-once guard), so a
    test can configure another exporter in the same process."""
    global _provider, _shut_down
    with _lock:
        if _provider is not None and not _shut_down:
            _provider.shutdown()
        _provider = None
        _shut_down = False
        if hasattr(trace, "_TRACER_PROVIDER_SET_ONCE"):
            from opentelemetry.util._once import Once

            trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
            trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Spans and context
# --------------------------------------------------------------------------------------------


def tracer(name: str) -> trace.Tracer:
    """A tracer from our provider (a no-op one before ``configure_tracing``)."""
    provider = _provider
    if provider is not None:
        return provider.get_tracer(name)
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, or None when there is none (the API puts it
    in the task payload; the job receives it as ``TRACEPARENT``)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The active span's trace id as 32 lowercase hex digits, or None."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def context_from_traceparent(traceparent: str | None, tracestate: str | None = None) -> Context:
    """A Context whose parent is the remote span named by ``traceparent``. Without a (valid)
    traceparent it is an empty Context: spans started under it are new root spans, never
    children of whatever happens to be active."""
    carrier: dict[str, str] = {}
    if traceparent:
        carrier["traceparent"] = traceparent.strip()
        if tracestate:
            carrier["tracestate"] = tracestate
    return _W3C.extract(carrier, context=Context())


def context_from_env(env: Mapping[str, str]) -> Context:
    """The parent context carried by environment variables (OTel env-carrier spec: upper-case
    ``TRACEPARENT``, ``TRACESTATE``, ``BAGGAGE``): what a Cloud Run Job execution receives
    through its per-execution env overrides."""
    ctx = context_from_traceparent(env.get("TRACEPARENT"), env.get("TRACESTATE"))
    baggage = env.get("BAGGAGE")
    if baggage:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        ctx = W3CBaggagePropagator().extract({"baggage": baggage}, context=ctx)
    return ctx


def incoming_propagator() -> TextMapPropagator:
    """How a request's parent span is read: W3C ``traceparent`` when present, else Google's
    ``X-Cloud-Trace-Context`` (which the Cloud Run front end sets), through Google's maintained
    propagator; W3C baggage too. The API installs it as the global propagator
    (``api.flask_tracing.instrument_flask``), so the Flask instrumentation extracts with it
    and the gRPC/requests instrumentation inject both headers into outgoing Google API calls.
    Imported on first use: jobs never need it."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
    from opentelemetry.propagators.composite import CompositePropagator

    # Later propagators win: a valid traceparent overrides X-Cloud-Trace-Context.
    return CompositePropagator([CloudTraceFormatPropagator(), _W3C, W3CBaggagePropagator()])


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The parent context of an incoming HTTP request (``incoming_propagator``; header names
    are case-insensitive). Without a valid parent it is an empty Context."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return incoming_propagator().extract(lowered, context=Context())
