"""Polling a creation over HTTP until it reaches a status: what the e2e and chain tests wait on."""

from __future__ import annotations

import time
from typing import Any, Callable, Collection


def wait_for_view(
    fetch: Callable[[], Any],
    wanted: Collection[str],
    *,
    timeout: float,
    interval: float = 0.2,
    describe: Callable[[], str] = lambda: "",
) -> dict:
    """Calls ``fetch`` (one ``GET /api/creations/<id>``, a requests response) until the view's
    status is one of ``wanted``; returns that view. Fails with the last view seen (and
    ``describe()``, e.g. the server's log) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        resp = fetch()
        assert resp.status_code == 200, resp.text
        view = resp.json()
        if view["status"] in wanted:
            return view
        time.sleep(interval)
    raise AssertionError(f"not {sorted(wanted)} after {timeout}s: {view}\n{describe()}")
