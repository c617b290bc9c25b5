"""One client per process and key, for every SDK client the adapters share.

A Google client owns a gRPC channel or an HTTP session plus its credential refresh, a Celery
app owns a broker connection pool: building one per request or per store would pay the set-up
each time and leak connections. ``functools.cache`` alone would not do: two threads missing at
once would both build (and one client would leak); here one lock makes the first build the
only one.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class ProcessWide(Generic[T]):
    """``build(...)`` called at most once per distinct arguments in this process (however they
    are spelled: positional, keyword or defaulted); ``clear`` for tests."""

    def __init__(self, build: Callable[..., T]) -> None:
        self._build = build
        self._signature = inspect.signature(build)
        self._built: dict[tuple[Any, ...], T] = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, build)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple(bound.arguments.values())
        with self._lock:
            if key not in self._built:
                self._built[key] = self._build(*key)
            return self._built[key]

    def clear(self) -> None:
        with self._lock:
            self._built.clear()


def process_wide(build: Callable[..., T]) -> ProcessWide[T]:
    return ProcessWide(build)
