"""Observability, set up in one place: every entrypoint calls ``configure`` once per process.

Entrypoints: the Flask development server, the Cloud Run Jobs (``common.job_main``) and the
sweeper (``api.sweep``) call ``configure``. Pre-forking servers split it: the gunicorn master
(``api.main``, also behind ``api.local``) and the Celery main process call ``configure_logs``,
and each gunicorn worker and Celery task process ``configure_telemetry``. Each process gets the same three signals, all from
``Settings``: structlog logs (``common.logs``), OpenTelemetry traces (``common.tracing``) and
creation metrics (``common.metrics``), exported as ``PHOENIX_TRACE_EXPORTER`` /
``PHOENIX_METRICS_EXPORTER`` say, and flushed by ``shutdown`` (also at interpreter exit).

Instrumentation is maintained OpenTelemetry contrib code, switched on explicitly here (never
through the ``opentelemetry-instrument`` auto-loader, which would import every instrumented
library at start):

* ``api.flask_tracing.instrument_flask``: a SERVER span per API request
  (opentelemetry-instrumentation-flask), continuing the caller's W3C ``traceparent`` or Cloud
  Run's ``X-Cloud-Trace-Context`` (opentelemetry-propagator-gcp). It lives in the API so that
  no job PEX or image, which import this module, carries Flask (dependency inference follows
  every import, typing-only ones included; tests/images check).
* ``instrument_grpc`` / ``instrument_requests``: CLIENT spans for the Google API calls made over
  gRPC (Firestore, Cloud Tasks) and requests (Cloud Storage, token fetches). Called by
  ``common.adapters.clients`` when a process first builds such a client, so a job on the
  embedded defaults imports none of it, and a production job pays for it together with the
  SDK it instruments. Vertex AI calls go through google-genai's own HTTP client (httpx2),
  which no maintained instrumentation covers: ``common.adapters.vertex_generator`` opens a
  CLIENT span around each call instead.
* A job imports nothing extra before its claim: ``common.job_main`` calls
  ``defer_client_instrumentation`` first, so a client asking for instrumentation before the
  claim does not load it (~0.3 s of imports); right after the claim
  ``resume_client_instrumentation`` switches it on, and what the job builds from then on (Cloud
  Storage, token fetches) is instrumented. The jobs' Firestore clients (store and Veo slot guard,
  stdlib REST) need none: they make their own CLIENT spans. A duplicate delivery that backs
  off never loads it at all.

Cost: importing this module imports only our logging/tracing/metrics modules (no SDK).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TextIO

from common import logs, metrics, tracing
from common.config import Settings

__all__ = [
    "configure",
    "configure_logs",
    "configure_telemetry",
    "defer_client_instrumentation",
    "drop_deferred_instrumentation",
    "instrument_grpc",
    "instrument_requests",
    "resume_client_instrumentation",
    "shutdown",
]


def configure(settings: Settings, service: str, *, stream: TextIO | None = None) -> None:
    """Logs, traces and metrics for this process, as ``settings`` say. Idempotent per process
    (each part keeps the first configuration). Raises ``ConfigError`` for a bad log level or
    exporter before the process does any work. ``stream`` is where log lines go (stdout)."""
    logs.configure_logging(
        settings.log_format,
        settings.log_level,
        service=service,
        gcp_project=settings.gcp_project,
        stream=stream,
    )
    configure_telemetry(settings, service)


def configure_logs(settings: Settings, service: str) -> None:
    """Logging only, for a process that serves nothing itself and forks the ones that do (the
    gunicorn master, the Celery main process). Exporter threads do not survive ``fork()``, so
    each child calls ``configure_telemetry``; it inherits this logging configuration."""
    logs.configure_logging(
        settings.log_format, settings.log_level, service=service, gcp_project=settings.gcp_project
    )


def configure_telemetry(settings: Settings, service: str) -> None:
    """Traces and metrics, for a forked child whose logging its parent configured (a gunicorn
    worker, a Celery task process). Reconfiguring logging there would be wrong, not just
    redundant: Celery replaces a task process's ``sys.stdout`` with a logging proxy."""
    tracing.configure_tracing(service, settings.trace_exporter, project=settings.gcp_project)
    metrics.configure_metrics(
        settings.metrics_exporter, service=service, project=settings.gcp_project
    )


def shutdown() -> None:
    """Flushes spans and metrics (safe to call more than once; also registered at exit). A
    process that ends through ``os._exit`` (a Celery prefork child) must call it itself."""
    try:
        tracing.shutdown_tracing()
    finally:
        metrics.shutdown_metrics()


# Instrumentations asked for while deferred, run by resume_client_instrumentation; None when
# not deferred (the default: the API, the sweeper, the legacy worker instrument at once).
_deferred: list[Callable[[], None]] | None = None


def defer_client_instrumentation() -> None:
    """From now until ``resume_client_instrumentation``, ``instrument_grpc`` and
    ``instrument_requests`` only take note (a job, before its claim)."""
    global _deferred
    if _deferred is None:
        _deferred = []


def resume_client_instrumentation() -> None:
    """Run what was asked for while deferred."""
    global _deferred
    pending, _deferred = _deferred or [], None
    for instrument in dict.fromkeys(pending):
        instrument()


def drop_deferred_instrumentation() -> None:
    """Stop deferring without instrumenting (a job that never claimed, at its end)."""
    global _deferred
    _deferred = None


def instrument_grpc() -> None:
    """CLIENT spans for every gRPC channel created from now on (Firestore, Cloud Tasks)."""
    if _deferred is not None:
        _deferred.append(_instrument_grpc)
    else:
        _instrument_grpc()


def instrument_requests() -> None:
    """CLIENT spans for every ``requests`` call (Cloud Storage, OAuth token fetches)."""
    if _deferred is not None:
        _deferred.append(_instrument_requests)
    else:
        _instrument_requests()


@functools.cache
def _instrument_grpc() -> None:
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    # skip_dep_check: the lockfile pins grpcio; the check reads every distribution's metadata.
    GrpcInstrumentorClient().instrument(skip_dep_check=True)


@functools.cache
def _instrument_requests() -> None:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    RequestsInstrumentor().instrument(skip_dep_check=True)


def _reset_for_tests() -> Any:
    """Forgets the configuration of all three signals (tests configure repeatedly)."""
    drop_deferred_instrumentation()
    logs._reset_for_tests()
    tracing._reset_for_tests()
    metrics._reset_for_tests()
