"""One logging pipeline for the API and every job: structlog in front, the stdlib root logger
behind, so our events and those of gunicorn, werkzeug, celery and the Google libraries come out
in one format.

This module is the pipeline's configuration and the API callers use (``get_logger``,
``bind_creation``). What an event looks like to Cloud Logging lives in ``common.cloud_logging``
(JSON format, production); what is never logged lives in ``common.redaction`` (the last
processor before rendering, for our events, foreign stdlib records and rendered tracebacks).
Locally the same events are rendered for humans (structlog's ConsoleRenderer).
``common.observability.configure`` calls ``configure_logging`` once per process.

Import cost matters (every job imports this at start): nothing from OpenTelemetry is imported
here.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from io import StringIO
from types import TracebackType
from typing import Any, Callable, Mapping, TextIO

import structlog
from structlog.typing import Processor

from common.cloud_logging import cloud_logging_shape, trace_fields
from common.config import ConfigError, Settings
from common.redaction import REDACTED, is_secret_key, redact, redact_processor, redact_text

__all__ = [
    "REDACTED",
    "CreationBinding",
    "bind_creation",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact",
    "redact_text",
]

_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------


def _static_fields(service: str) -> Processor:
    def processor(_: Any, __: str, event_dict: Any) -> Any:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


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
        shared.append(trace_fields(gcp_project))

    renderer: Processor
    final: list[Processor]
    if fmt == "json":
        final = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            cloud_logging_shape,
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
