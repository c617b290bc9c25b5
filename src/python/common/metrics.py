"""Creation metrics (OpenTelemetry): how many creations are created, completed and failed, how
long they wait in the queue and how long they run, split by ``kind`` (video/image) and ``path``
(the dispatch path, e.g. celery vs cloud-tasks during the migration).

Why functions and not instruments at call sites: callers (API, job runner) record a business
event in one line and never touch OpenTelemetry; the attribute set stays fixed and small
(metric backends bill and slow down per distinct label combination).

Exporters (``PHOENIX_METRICS_EXPORTER`` or the ``exporter`` argument):
``none`` (default: the OpenTelemetry API's no-op meter, no SDK import at all), ``console``
(stderr, one JSON line per metric per export), ``file:PATH`` (same lines appended to PATH, for
tests), ``otlp`` and ``gcp`` (optional packages, imported only when selected). All but ``none``
use a PeriodicExportingMetricReader (interval from ``OTEL_METRIC_EXPORT_INTERVAL``, default
60 s); ``shutdown_metrics`` (also at exit) collects and exports a final time, which is what a
short-lived job relies on.

Every entrypoint (API worker, jobs, legacy worker, sweeper) configures this through
``common.observability.configure``; exporter plumbing shared with tracing is in
``common.otel_export``. Nothing from OpenTelemetry is imported with this module.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from common import otel_export
from common.config import telemetry_from_env

if TYPE_CHECKING:  # pragma: no cover - typing only
    from opentelemetry.metrics import Counter, Histogram, Meter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = [
    "EXPORTER_ENV",
    "configure_metrics",
    "record_completed",
    "record_created",
    "record_failed",
    "shutdown_metrics",
]

EXPORTER_ENV = "PHOENIX_METRICS_EXPORTER"
METER_NAME = "phoenix"

CREATED = "phoenix.creations.created"
COMPLETED = "phoenix.creations.completed"
FAILED = "phoenix.creations.failed"
QUEUE_WAIT = "phoenix.creation.queue_wait"
RUN_TIME = "phoenix.creation.run_time"

# Seconds. Images take seconds, videos minutes; a queue wait can reach the pending timeout.
_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1800, 3600)


@dataclass(frozen=True)
class _Instruments:
    created: Counter
    completed: Counter
    failed: Counter
    queue_wait: Histogram
    run_time: Histogram


_lock = threading.Lock()
_configured = False
_shut_down = False
_provider: MeterProvider | None = None
_instruments: _Instruments | None = None
_atexit_registered = False


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------


def _metric_lines(metrics_data: Any) -> list[dict[str, Any]]:
    """One flat record per metric: name, unit, resource and its data points (plain JSON)."""
    lines: list[dict[str, Any]] = []
    for rm in metrics_data.resource_metrics:
        resource = dict(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                lines.append(
                    {
                        "name": metric.name,
                        "unit": metric.unit,
                        "scope": sm.scope.name,
                        "resource": resource,
                        "points": [
                            json.loads(p.to_json(indent=None)) for p in metric.data.data_points
                        ],
                    }
                )
    return lines


def _json_lines(metrics_data: Any) -> str:
    return "".join(
        json.dumps(line, default=str, separators=(",", ":")) + "\n"
        for line in _metric_lines(metrics_data)
    )


def _file_metric_exporter(path: str) -> Any:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class JsonLinesMetricExporter(MetricExporter):  # type: ignore[misc]
        """Appends one JSON line per metric (``otel_export.append_json_lines``)."""

        def __init__(self, target: str) -> None:
            super().__init__()
            self.path = otel_export.json_lines_path(target)

        def export(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            ok = otel_export.append_json_lines(self.path, _metric_lines(metrics_data))
            return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    return JsonLinesMetricExporter(path)


def _exporter(spec: str, project: str) -> Any:
    if spec == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        # stderr: stdout carries the JSON logs Cloud Logging parses.
        return ConsoleMetricExporter(out=sys.stderr, formatter=_json_lines)
    if spec.startswith("file:"):
        return _file_metric_exporter(otel_export.file_path(EXPORTER_ENV, spec))
    if spec == "otlp":
        return otel_export.otlp_exporter("metrics", EXPORTER_ENV)
    if spec == "gcp":
        try:
            from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter
        except ImportError as exc:
            raise otel_export.missing_exporter(
                EXPORTER_ENV, "gcp", "opentelemetry-exporter-gcp-monitoring", exc
            ) from exc
        return (
            CloudMonitoringMetricsExporter(project_id=project)
            if project
            else CloudMonitoringMetricsExporter()
        )
    raise otel_export.unknown_exporter(EXPORTER_ENV, spec)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def configure_metrics(
    exporter: str | None = None, *, service: str | None = None, project: str = ""
) -> None:
    """Chooses where creation metrics go, once per process (later calls do nothing).
    ``exporter`` defaults to ``PHOENIX_METRICS_EXPORTER`` (``config.telemetry_from_env``).
    ``service`` becomes the resource's ``service.name`` (default ``OTEL_SERVICE_NAME`` or
    ``phoenix``); the Cloud Run execution is added like in tracing, so each short-lived job
    writes its own series."""
    global _configured, _provider, _instruments, _atexit_registered
    with _lock:
        if _configured:
            return
        if exporter is None:
            _, exporter, env_project = telemetry_from_env(os.environ)
            project = project or env_project
        spec = exporter.strip() or "none"
        if spec == "none":
            _configured = True
            _instruments = None
            return
        metric_exporter = _exporter(spec, project)

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        name = service or os.environ.get("OTEL_SERVICE_NAME") or "phoenix"
        reader: MetricReader = PeriodicExportingMetricReader(metric_exporter)
        _provider = MeterProvider(
            metric_readers=[reader],
            resource=otel_export.resource(name, spec),
            shutdown_on_exit=False,
        )
        _instruments = None
        _configured = True
        if not _atexit_registered:
            atexit.register(shutdown_metrics)
            _atexit_registered = True


def shutdown_metrics(timeout_millis: float = 5000) -> None:
    """Collects and exports one last time, then stops the reader (safe to call twice)."""
    global _shut_down
    with _lock:
        provider = _provider
        if provider is None or _shut_down:
            return
        _shut_down = True
    provider.shutdown(timeout_millis=timeout_millis)


def _reset_for_tests() -> None:
    global _configured, _provider, _instruments, _shut_down
    with _lock:
        if _provider is not None and not _shut_down:
            _provider.shutdown()
        _configured = False
        _provider = None
        _instruments = None
        _shut_down = False


def _meter() -> Meter:
    if _provider is not None:
        return _provider.get_meter(METER_NAME)
    from opentelemetry.metrics import NoOpMeter

    return NoOpMeter(METER_NAME)


def _get() -> _Instruments:
    global _instruments
    inst = _instruments
    if inst is not None:
        return inst
    with _lock:
        if _instruments is None:
            meter = _meter()
            _instruments = _Instruments(
                created=meter.create_counter(
                    CREATED, unit="{creation}", description="Creations accepted by the API"
                ),
                completed=meter.create_counter(
                    COMPLETED, unit="{creation}", description="Creations that produced media"
                ),
                failed=meter.create_counter(
                    FAILED, unit="{creation}", description="Creations that ended failed, by code"
                ),
                queue_wait=meter.create_histogram(
                    QUEUE_WAIT,
                    unit="s",
                    description="Time from creation (pending) to claim by a job",
                    explicit_bucket_boundaries_advisory=_BUCKETS,
                ),
                run_time=meter.create_histogram(
                    RUN_TIME,
                    unit="s",
                    description="Time from claim by a job to the terminal state",
                    explicit_bucket_boundaries_advisory=_BUCKETS,
                ),
            )
        return _instruments


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def _label(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _seconds(value: float) -> float:
    # Timestamps come from different hosts (API vs job); clock skew must not make a negative
    # duration, which a histogram would reject.
    return max(0.0, float(value))


def record_created(kind: Any, path: str) -> None:
    """A creation was accepted and dispatched (API)."""
    _get().created.add(1, {"kind": _label(kind), "path": _label(path)})


def record_completed(kind: Any, path: str, queue_wait_s: float, run_time_s: float) -> None:
    """A job completed a creation: count it and record created→claimed and claimed→done
    (histogram attributes also carry ``outcome="completed"``)."""
    attrs = {"kind": _label(kind), "path": _label(path)}
    inst = _get()
    inst.completed.add(1, attrs)
    durations = {**attrs, "outcome": "completed"}
    inst.queue_wait.record(_seconds(queue_wait_s), durations)
    inst.run_time.record(_seconds(run_time_s), durations)


def record_failed(
    kind: Any,
    path: str,
    code: str,
    *,
    queue_wait_s: float | None = None,
    run_time_s: float | None = None,
) -> None:
    """A creation ended failed with error ``code`` (a small fixed vocabulary, never a message).
    Durations are optional (a creation failed by the sweeper was never claimed); they go to the
    same histograms as completed ones with ``outcome="failed"``, so latency SLOs can exclude
    them."""
    attrs = {"kind": _label(kind), "path": _label(path)}
    inst = _get()
    inst.failed.add(1, {**attrs, "code": _label(code)})
    durations = {**attrs, "outcome": "failed"}
    if queue_wait_s is not None:
        inst.queue_wait.record(_seconds(queue_wait_s), durations)
    if run_time_s is not None:
        inst.run_time.record(_seconds(run_time_s), durations)
