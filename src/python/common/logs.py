"""One logging pipeline for the API and every job: structlog in front, the stdlib root logger
behind, so our events and those of gunicorn, werkzeug, celery and the Google libraries come out
in one format.

Why this shape:

* On Cloud Run, stdout lines that are JSON objects become structured log entries. Cloud Logging
  reads ``severity``, ``message``, ``time`` and the ``logging.googleapis.com/*`` keys; with the
  trace key set from the active OpenTelemetry span, every line of a creation (API request, Cloud
  Tasks hop, job execution) is listed under its trace.
* Locally the same events are rendered for humans (structlog's ConsoleRenderer).
* Secrets must never reach a log line, whoever logged them: redaction is the last processor
  before rendering, for our events, for foreign stdlib records and for rendered tracebacks.

Import cost matters (every job imports this at start): nothing from OpenTelemetry is imported
here. The trace processor looks OpenTelemetry up in ``sys.modules``: if ``opentelemetry.trace``
was never imported, no span can be active.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import date, datetime
from enum import Enum
from io import StringIO
from pathlib import PurePath
from types import TracebackType
from typing import Any, Callable, Mapping, TextIO
from uuid import UUID

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from common.config import ConfigError, Settings

__all__ = [
    "REDACTED",
    "CreationBinding",
    "bind_creation",
    "configure_logging",
    "get_logger",
    "redact",
    "redact_text",
]

REDACTED = "[redacted]"

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

_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

# Bound context copied into Cloud Logging labels: labels are indexed, so a log-based metric or a
# dashboard can split by them (e.g. path="celery" vs "cloudtasks" during the migration).
_LABEL_FIELDS = ("service", "kind", "path")


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------

# A key is secret if one of its words is one of these...
_SECRET_WORDS = frozenset({"authorization", "password", "passwd", "secret", "cookie", "cookies"})
# ...or it contains one of these word sequences...
_SECRET_PHRASES = ("api_key", "apikey", "private_key")
# ...or its last word is "token" (token, id_token, access_token, refresh_token, x_..._token) but
# not "token_count"/"max_tokens": model usage counters are not secrets and are worth logging.
_TOKEN_WORD = "token"

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")

# "Bearer <token>" anywhere in a string (headers pasted into messages, exception texts).
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9\-._~+/]+=*")
# key=value / key: value / 'key': 'value' / ?key=value for secret-looking keys, inside free text
# and reprs (a dataclass repr, a URL query string, a dict printed in an exception message).
_SECRET_KEY_RE = (
    r"[A-Za-z0-9_\-]*(?:authorization|password|passwd|secret|cookie|api[_\-]?key|private[_\-]?key)"
    r"[A-Za-z0-9_\-]*"
    r"|[A-Za-z0-9_\-]*token"
)
_KEY_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9_\-])(" + _SECRET_KEY_RE + r")"
    r"""(["']?\s*[:=]\s*)"""
    r"""('[^']*'|"[^"]*"|(?:bearer|basic)\s+(?:\[redacted\]|[^\s,;&'"}\])]+)|(?!\[redacted\])[^\s,;&'"}\])]+)"""
)

_MAX_DEPTH = 12


def _normalize_key(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL.sub("_", key).lower()).strip("_")


def is_secret_key(key: object) -> bool:
    """True if a mapping key names a credential (case-, camelCase- and separator-insensitive)."""
    if not isinstance(key, str):
        return False
    norm = _normalize_key(key)
    words = norm.split("_")
    if _SECRET_WORDS.intersection(words):
        return True
    if words[-1] == _TOKEN_WORD:
        return True
    padded = f"_{norm}_"
    return any(f"_{phrase}_" in padded for phrase in _SECRET_PHRASES)


def _redact_value_match(match: re.Match[str]) -> str:
    value = match.group(3)
    if value and value[0] in "'\"":
        return f"{match.group(1)}{match.group(2)}{value[0]}{REDACTED}{value[0]}"
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def redact_text(text: str) -> str:
    """Redacts bearer tokens and ``secret_key=value`` pairs inside free text."""
    if not text:
        return text
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _KEY_VALUE.sub(_redact_value_match, text)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secrets replaced: values under secret-looking keys (at any depth
    of dicts, lists and tuples) and secret substrings of strings. Never mutates the caller's
    objects (a logged headers dict is still used after the log call). Other objects are rendered
    with ``repr`` by the JSON renderer, so they are turned into redacted text here."""
    if _depth > _MAX_DEPTH:
        return REDACTED
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (_secret_placeholder(v) if is_secret_key(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, Enum):
        return (
            value.value if isinstance(value.value, (str, int, float)) else redact_text(str(value))
        )
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (PurePath, UUID)):
        return redact_text(str(value))
    return redact_text(repr(value))


def _secret_placeholder(value: Any) -> Any:
    # Absence is not a secret (token=None says "no token"); booleans cannot hold one.
    if value is None or value == "" or isinstance(value, bool):
        return value
    return REDACTED


_PASSTHROUGH = frozenset({"exc_info", "stack_info", "_record", "_from_structlog"})


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last one before rendering (after tracebacks became text)."""
    for key in list(event_dict):
        if key in _PASSTHROUGH:
            continue
        value = event_dict[key]
        event_dict[key] = _secret_placeholder(value) if is_secret_key(key) else redact(value)
    return event_dict


# --------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------


def _trace_fields(project: str) -> Processor:
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


def _static_fields(service: str) -> Processor:
    def processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def _cloud_logging_shape(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
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
    labels = {k: event_dict[k] for k in _LABEL_FIELDS if isinstance(event_dict.get(k), str)}
    if labels:
        event_dict[LABELS_KEY] = {**labels, **(event_dict.get(LABELS_KEY) or {})}
    shaped.update(event_dict)
    return shaped


def _redacting_exception_formatter(
    inner: Callable[[TextIO, Any], None],
) -> Callable[[TextIO, Any], None]:
    """ConsoleRenderer formats exc_info itself (after our processors ran): redact its text."""

    def formatter(sio: TextIO, exc_info: Any) -> None:
        buffer = StringIO()
        inner(buffer, exc_info)
        sio.write(redact_text(buffer.getvalue()))

    return formatter


def _stdout_is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class _PipelineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we own, so reconfiguring replaces it and leaves others alone
    (e.g. pytest's capture handlers)."""


_configured: tuple[Any, ...] | None = None


def _level_number(level: str) -> int:
    name = _LEVEL_ALIASES.get(level.strip().upper(), level.strip().upper())
    number = logging.getLevelName(name)
    if not isinstance(number, int):
        raise ConfigError(
            f"PHOENIX_LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return number


def configure_logging(
    settings_or_format: str | Settings = "pretty",
    level: str | None = None,
    *,
    service: str,
    gcp_project: str = "",
    stream: TextIO | None = None,
) -> None:
    """Configures structlog and the stdlib root logger for this process. Idempotent: calling it
    again with the same arguments does nothing; with other arguments it replaces our handler.

    ``settings_or_format`` is ``"pretty"`` or ``"json"``, or a ``Settings`` (its ``log_format``,
    ``log_level`` and ``gcp_project`` are used unless ``level``/``gcp_project`` are given).
    ``stream`` defaults to ``sys.stdout`` (Cloud Run collects stdout); tests pass a buffer.
    """
    global _configured
    if isinstance(settings_or_format, str):
        fmt = settings_or_format
    else:
        fmt = settings_or_format.log_format
        level = level or settings_or_format.log_level
        gcp_project = gcp_project or settings_or_format.gcp_project
    level = level or "INFO"
    if fmt not in ("pretty", "json"):
        raise ConfigError(f"PHOENIX_LOG_FORMAT={fmt!r} is not one of pretty, json")
    level_no = _level_number(level)
    out = stream if stream is not None else sys.stdout

    key = (fmt, level_no, service, gcp_project, id(out))
    if _configured == key:
        return

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
        _static_fields(service),
    ]
    if fmt == "json":
        shared.append(_trace_fields(gcp_project))

    renderer: Processor
    final: list[Processor]
    if fmt == "json":
        final = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            _cloud_logging_shape,
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        final = [structlog.processors.StackInfoRenderer(), redact_processor]
        colors = _stdout_is_tty(out)
        # Plain tracebacks, never rich's: rich prints local variables (secrets) and wraps lines
        # in boxes, which would split a secret across lines past the redactor.
        console = structlog.dev.ConsoleRenderer(
            colors=colors,
            timestamp_key="time",
            exception_formatter=_redacting_exception_formatter(structlog.dev.plain_traceback),
        )
        renderer = console

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Module-level loggers are created at import, possibly before this runs: no caching, so
        # they always follow the current configuration.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        # Records from plain stdlib loggers (gunicorn, google.*, celery, werkzeug) get the same
        # fields as ours; ``extra={...}`` keys become fields.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = _PipelineHandler(out)
    handler.setFormatter(formatter)
    handler.setLevel(level_no)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PipelineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    # warnings.warn(...) becomes a WARNING record through the same pipeline.
    logging.captureWarnings(True)
    _configured = key


def _reset_for_tests() -> None:
    """Removes our handler and structlog configuration (tests configure repeatedly)."""
    global _configured
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PipelineHandler)]:
        root.removeHandler(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _configured = None


def get_logger(name: str | None = None) -> Any:
    """A structlog logger over the stdlib logger ``name`` (so its level applies)."""
    return structlog.stdlib.get_logger(name)


# --------------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------------


class CreationBinding:
    """Returned by ``bind_creation``: the binding is already active; using it as a context
    manager restores the previous values on exit (for a thread serving many creations)."""

    def __init__(self, tokens: Mapping[str, Any]) -> None:
        self._tokens = tokens

    def __enter__(self) -> "CreationBinding":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()

    def reset(self) -> None:
        if self._tokens:
            structlog.contextvars.reset_contextvars(**self._tokens)
            self._tokens = {}


def bind_creation(creation_id: str, kind: Any = None, path: str | None = None) -> CreationBinding:
    """Binds ``creation_id`` (and ``kind``, ``path`` when given) to every log line of this
    context: a job's lines, or an API request's, all carry the creation they are about.
    Works as a plain call (a job binds once for its whole life) or as ``with bind_creation(...)``.
    """
    fields: dict[str, Any] = {"creation_id": creation_id}
    if kind is not None:
        fields["kind"] = kind.value if isinstance(kind, Enum) else kind
    if path is not None:
        fields["path"] = path
    return CreationBinding(structlog.contextvars.bind_contextvars(**fields))
