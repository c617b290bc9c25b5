"""How the stores keep a point in time: an ISO 8601 string in UTC.

One rule for creations and quota records alike, so both read back what either wrote. A value
that arrives as a ``datetime`` (Firestore hands timestamps back as such) is accepted too; a
naive one is taken as UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def to_iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def from_iso(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value))
