"""Cloud Logging's view of a log event: the keys its agent reads from a JSON line on stdout.

On Cloud Run, stdout lines that are JSON objects become structured log entries. Cloud Logging
reads ``severity``, ``message``, ``time`` and the ``logging.googleapis.com/*`` keys; with the
trace key set from the active OpenTelemetry span, every line of a creation (API request, Cloud
Tasks hop, job execution) is listed under its trace. These processors only reshape an event;
``common.logs`` decides when they run (JSON format only).

Import cost matters (every job imports this at start): nothing from OpenTelemetry is imported
here. The trace processor looks OpenTelemetry up in ``sys.modules``: if ``opentelemetry.trace``
was never imported, no span can be active.
"""

from __future__ import annotations

import sys
from typing import Any

from structlog.typing import EventDict, Processor, WrappedLogger

from common.config import DISPATCHERS

__all__ = ["LABELS_KEY", "SPAN_KEY", "TRACE_KEY", "cloud_logging_shape", "trace_fields"]

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
LABELS_KEY = "logging.googleapis.com/labels"

# Cloud Logging's LogSeverity names, from structlog/stdlib level names.
_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "notice": "NOTICE",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}

# Bound context copied into Cloud Logging labels: labels are indexed, so a log-based metric or a
# dashboard can split by them (e.g. path="celery" vs "cloud-tasks" during the migration). Each
# label keeps a small fixed vocabulary: ``path`` is the dispatch path only, never a URL path
# (a creation id in a label would make one series per creation).
_LABEL_VALUES: dict[str, frozenset[str] | None] = {
    "service": None,
    "kind": None,
    "path": frozenset(DISPATCHERS),
}


def trace_fields(project: str) -> Processor:
    """Adds Cloud Logging's trace/span keys from the active OpenTelemetry span, if any."""

    def processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        otel_trace = sys.modules.get("opentelemetry.trace")
        if otel_trace is None:  # never imported: no span can be active, and we stay cheap
            return event_dict
        ctx = otel_trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return event_dict
        trace_id = format(ctx.trace_id, "032x")
        event_dict[TRACE_KEY] = f"projects/{project}/traces/{trace_id}" if project else trace_id
        event_dict[SPAN_KEY] = format(ctx.span_id, "016x")
        event_dict[SAMPLED_KEY] = bool(ctx.trace_flags.sampled)
        return event_dict

    return processor


def _labels(event_dict: EventDict) -> dict[str, str]:
    labels = {}
    for key, allowed in _LABEL_VALUES.items():
        value = event_dict.get(key)
        if isinstance(value, str) and (allowed is None or value in allowed):
            labels[key] = value
    return labels


def cloud_logging_shape(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Renames structlog's keys to Cloud Logging's and puts them first (readable raw lines)."""
    level = str(event_dict.pop("level", "info")).lower()
    event = event_dict.pop("event", "")
    shaped: dict[str, Any] = {
        "severity": _SEVERITY.get(level, "DEFAULT"),
        "message": event if isinstance(event, str) else str(event),
        "time": event_dict.pop("time", None),
    }
    if "exception" in event_dict:
        # Error Reporting looks for a stack trace in ``stack_trace`` first.
        event_dict["stack_trace"] = event_dict.pop("exception")
    labels = _labels(event_dict)
    if labels:
        event_dict[LABELS_KEY] = {**labels, **(event_dict.get(LABELS_KEY) or {})}
    shaped.update(event_dict)
    return shaped
