"""The per-user request rate limit (``PHOENIX_RATE_LIMIT_PER_MINUTE``) over real HTTP, on the
real server process: the allowance is accepted, the next request is ``429`` with
``Retry-After`` and the JSON error, nothing is stored for it, another user is unaffected, and
after waiting the advertised ``Retry-After`` the same user is accepted again.

How the limit is kept (a token bucket in the API process, a sliding window in the store) is
the implementation's business; this test only speaks HTTP, so it holds for either. The unfinished-creation cap is switched off
here so that every 429 is the bucket's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.local_server import LocalServer, start_local_server, stop_server

PER_MINUTE = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    srv = start_local_server(
        tmp_path,
        {
            "PHOENIX_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE),
            "PHOENIX_MAX_ACTIVE_PER_USER": "0",
            # Nothing runs behind the API: the test is about admission only.
            "PHOENIX_DISPATCH": "record",
            "PHOENIX_SWEEP_INTERVAL_SECONDS": "0",
        },
    )
    try:
        yield srv
    finally:
        stop_server(srv)


def _post(server: LocalServer, user: str, n: int) -> requests.Response:
    return requests.post(
        server.url("/api/generate/image"),
        json={"prompt": f"bucket test {n}"},
        headers={"X-Phoenix-User": user},
        timeout=30,
    )


def _listed(server: LocalServer, user: str) -> int:
    resp = requests.get(
        server.url("/api/creations?limit=100"), headers={"X-Phoenix-User": user}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    return len(resp.json()["creations"])


def test_the_rate_limit_answers_429_over_http_then_admits_again(server: LocalServer) -> None:
    """Shown to fail when the per-minute check is removed (scratch branch
    scratch/promises-break-quota-rate, 2026-12-01): the 7th request got 202."""
    burst = [_post(server, "bucket-a", n).status_code for n in range(PER_MINUTE)]
    assert burst == [202] * PER_MINUTE

    refused = _post(server, "bucket-a", PER_MINUTE)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Content-Type"].startswith("application/json")
    body = refused.json()
    assert body["error"]["code"] == "rate_limited" and body["error"]["message"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60, retry_after
    assert _listed(server, "bucket-a") == PER_MINUTE  # the refused request stored nothing

    # Buckets are per user.
    assert _post(server, "bucket-b", 0).status_code == 202

    # The advertised wait is enough: by then the user may send again.
    time.sleep(retry_after + 0.2)
    again = _post(server, "bucket-a", PER_MINUTE + 1)
    assert again.status_code == 202, again.text
    assert _listed(server, "bucket-a") == PER_MINUTE + 1
