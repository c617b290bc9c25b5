"""Redaction: secrets never reach a log line, whoever logged them.

Applied by ``common.logs`` as the last processor before rendering, to our events, to foreign
stdlib records and to rendered tracebacks. Kept apart from the logging configuration because it
is a self-contained rule set with its own tests (``tests/unit/test_logs.py``,
``tests/integration/test_security.py``), and nothing here knows about structlog's pipeline
beyond the processor signature.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any, Mapping
from uuid import UUID

from structlog.typing import EventDict, WrappedLogger

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_processor", "redact_text"]

REDACTED = "[redacted]"

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
