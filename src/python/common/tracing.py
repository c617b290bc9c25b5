"""OpenTelemetry tracing shared by the API and the jobs: one trace per creation, across processes.

The API starts a span per request, puts the W3C ``traceparent`` of that span into the task
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
import importlib
import json
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.config import ConfigError

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
EXPORTERS = ("none", "console", "file:PATH", "otlp", "gcp")

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


def json_lines_path(target: str) -> str:
    """The absolute path a ``file:PATH`` exporter appends to (its directory created)."""
    path = os.path.abspath(target)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return path


def append_json_lines(path: str, records: Sequence[Any]) -> bool:
    """Appends one JSON object per line in a single ``write`` on an O_APPEND descriptor, so
    the processes sharing a file (API and jobs) never interleave inside a line. Shared by the
    span and metric file exporters; False when the write failed."""
    if not records:
        return True
    data = "".join(
        json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records
    ).encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _file_span_exporter(path: str) -> Any:
    """Builds the ``file:PATH`` exporter (the SDK base class is imported here, not at import)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):  # type: ignore[misc]
        """Appends one JSON object per span per line. Each export is a single ``write`` on an
        O_APPEND descriptor, so concurrent processes do not interleave inside a line."""

        def __init__(self, target: str) -> None:
            self.path = json_lines_path(target)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            ok = append_json_lines(self.path, [_span_record(s) for s in spans])
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return JsonLinesSpanExporter(path)


def missing_exporter(env_name: str, exporter: str, package: str, exc: ImportError) -> ConfigError:
    """The start-up error for an exporter whose optional package this deployable lacks (shared
    with ``common.metrics``)."""
    return ConfigError(
        f"{env_name}={exporter!r} needs the optional package {package!r}, which is not "
        f"installed ({exc}). Add it to the deployable's requirements or choose another exporter "
        f"({', '.join(EXPORTERS)})."
    )


def _missing(exporter: str, package: str, exc: ImportError) -> ConfigError:
    return missing_exporter(EXPORTER_ENV, exporter, package, exc)


def otlp_exporter(signal: str, env_name: str) -> Any:
    """An OTLP exporter for ``signal`` ("traces" or "metrics") over the protocol the standard
    OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL variables choose. We bundle the HTTP transport (see
    common/BUILD); gRPC works only in a deployable that adds its package. Looked up by name so
    each signal's module is imported only when configured."""
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    transport = "grpc" if protocol == "grpc" else "http"
    module_name, class_name = {
        "traces": ("trace_exporter", "OTLPSpanExporter"),
        "metrics": ("metric_exporter", "OTLPMetricExporter"),
    }[signal]
    try:
        module = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{transport}.{module_name}"
        )
    except ImportError as exc:
        raise missing_exporter(
            env_name, "otlp", f"opentelemetry-exporter-otlp-proto-{transport}", exc
        ) from exc
    return getattr(module, class_name)()


def _gcp_exporter() -> Any:
    try:
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter
    except ImportError as exc:
        raise _missing("gcp", "opentelemetry-exporter-gcp-trace", exc) from exc
    project = os.environ.get("PHOENIX_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    # Without a project the exporter asks google.auth (metadata server on Cloud Run).
    return CloudTraceSpanExporter(project_id=project) if project else CloudTraceSpanExporter()


def _span_processor(spec: str) -> SpanProcessor | None:
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
        path = spec[len("file:") :].strip()
        if not path:
            raise ConfigError(
                f"{EXPORTER_ENV}={spec!r}: file: needs a path (file:/tmp/spans.jsonl)"
            )
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return SimpleSpanProcessor(_file_span_exporter(path))
    if spec in ("otlp", "gcp"):
        exporter = otlp_exporter("traces", EXPORTER_ENV) if spec == "otlp" else _gcp_exporter()
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return BatchSpanProcessor(exporter)
    raise ConfigError(f"{EXPORTER_ENV}={spec!r} is not one of {', '.join(EXPORTERS)}")


def _resource_attributes(service: str, env: Mapping[str, str]) -> dict[str, Any]:
    """service.name, plus the Cloud Run identity when present: each job execution (and each
    retry of its task) is then distinguishable in the trace backend."""
    attrs: dict[str, Any] = {"service.name": service}
    if env.get("CLOUD_RUN_JOB"):
        attrs["cloud.provider"] = "gcp"
        attrs["cloud.platform"] = "gcp_cloud_run"
        attrs["gcp.cloud_run.job.name"] = env["CLOUD_RUN_JOB"]
    elif env.get("K_SERVICE"):
        attrs["cloud.provider"] = "gcp"
        attrs["cloud.platform"] = "gcp_cloud_run"
        attrs["faas.name"] = env["K_SERVICE"]
        if env.get("K_REVISION"):
            attrs["faas.version"] = env["K_REVISION"]
    if env.get("CLOUD_RUN_EXECUTION"):
        attrs["gcp.cloud_run.job.execution"] = env["CLOUD_RUN_EXECUTION"]
    if env.get("CLOUD_RUN_TASK_ATTEMPT"):
        attrs["gcp.cloud_run.job.task_attempt"] = _int_or_str(env["CLOUD_RUN_TASK_ATTEMPT"])
    if env.get("CLOUD_RUN_TASK_INDEX"):
        attrs["gcp.cloud_run.job.task_index"] = _int_or_str(env["CLOUD_RUN_TASK_INDEX"])
    return attrs


def _int_or_str(raw: str) -> int | str:
    try:
        return int(raw)
    except ValueError:
        return raw


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def configure_tracing(service: str, exporter: str | None = None) -> None:
    """Installs this process's TracerProvider (and makes it the global one, so instrumentation
    libraries use it too). Idempotent: the first call wins; later calls do nothing (also after
    ``shutdown_tracing``: a process traces one life). Raises
    ``ConfigError`` for an unknown exporter or a selected optional exporter that is missing,
    before anything is installed."""
    global _provider, _atexit_registered
    with _lock:
        if _provider is not None:
            return
        spec = (exporter if exporter is not None else os.environ.get(EXPORTER_ENV, "")).strip()
        processor = _span_processor(spec or "none")

        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(
            resource=Resource.create(_resource_attributes(service, os.environ)),
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


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The parent context of an incoming HTTP request: W3C ``traceparent`` (case-insensitive
    header lookup), else Google's ``X-Cloud-Trace-Context: TRACE/SPAN;o=1`` (span id decimal),
    which the Cloud Run front end sets. Only the ids are taken from X-Cloud-Trace-Context; the
    force-trace bit becomes the ordinary sampled flag."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get("traceparent"):
        ctx = context_from_traceparent(lowered["traceparent"], lowered.get("tracestate"))
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
    xctc = lowered.get("x-cloud-trace-context", "")
    trace_part, _, rest = xctc.partition("/")
    span_part, _, options = rest.partition(";")
    try:
        trace_id = int(trace_part, 16)
        span_id = int(span_part)
    except ValueError:
        return Context()
    if not (0 < trace_id < 2**128 and 0 < span_id < 2**64) or len(trace_part) != 32:
        return Context()
    sampled = options.strip() == "o=1"
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())
