"""Cancel, delete and retry over HTTP against the real local server (``python -m api.local``:
gunicorn, SQLite, real job processes, real media files), as a client script would use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

# Imported for Pants' dependency inference: the server and the jobs it starts as processes.
import api.local  # noqa: F401
import jobs.image.main  # noqa: F401
import jobs.video.main  # noqa: F401
from tests.support.local_server import LocalServer, start_local_server, stop_server
from tests.support.polling import wait_for_view

USER = "e2e-controls"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    srv = start_local_server(
        tmp_path_factory.mktemp("phoenix-controls"), {"PHOENIX_LEASE_SECONDS": "8"}
    )
    try:
        yield srv
    finally:
        stop_server(srv)


def call(server: LocalServer, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(
        method, server.url(path), headers={"X-Phoenix-User": USER}, timeout=30, **kw
    )


def create(server: LocalServer, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = call(server, "POST", f"/api/generate/{kind}", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_status(server: LocalServer, cid: str, wanted: set[str], timeout: float = 90) -> dict:
    fetch = lambda: call(server, "GET", f"/api/creations/{cid}")  # noqa: E731
    return wait_for_view(fetch, wanted, timeout=timeout, describe=server.log_tail)


def error_code(resp: requests.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return str(resp.json()["error"]["code"])


def test_cancel_a_generating_video_then_retry_it_as_a_new_creation(server: LocalServer) -> None:
    video = create(server, "video", {"prompt": "a slow comet [slow:4]", "duration_seconds": 4})
    wait_status(server, video["id"], {"processing"})
    resp = call(server, "POST", f"/api/creations/{video['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["cancel_requested_at"]
    # Cancel is idempotent while the job winds down, and after.
    assert call(server, "POST", f"/api/creations/{video['id']}/cancel").status_code in (200, 202)
    done = wait_status(server, video["id"], {"cancelled", "completed", "failed"}, timeout=30)
    assert done["status"] == "cancelled", done
    assert done["media"] == [] and done["provider_started"] is False
    assert call(server, "POST", f"/api/creations/{video['id']}/cancel").status_code == 200

    retry = call(server, "POST", f"/api/creations/{video['id']}/retry")
    assert retry.status_code == 202, retry.text
    again = retry.json()
    assert again["id"] != video["id"]
    assert retry.headers["Location"] == f"/api/creations/{again['id']}"
    assert (again["kind"], again["prompt"], again["params"]) == (
        "video",
        video["prompt"],
        video["params"],
    )
    finished = wait_status(server, again["id"], {"completed", "failed", "cancelled"})
    assert finished["status"] == "completed" and len(finished["media"]) == 1
    # The cancelled original is still there, unchanged.
    assert call(server, "GET", f"/api/creations/{video['id']}").json()["status"] == "cancelled"


def test_delete_a_finished_image_removes_record_and_files(server: LocalServer) -> None:
    image = create(server, "image", {"prompt": "a glass of water", "count": 2})
    done = wait_status(server, image["id"], {"completed", "failed"})
    assert done["status"] == "completed"
    urls = [m["url"] for m in done["media"]]
    assert all(call(server, "GET", u).status_code == 200 for u in urls)
    media_dir = Path(server.log_path).parent / "media" / image["id"]
    # Keyed per claim: media/<id>/<claim token>/<n>.png
    assert sorted(p.name for p in media_dir.rglob("*") if p.is_file()) == ["0.png", "1.png"]

    resp = call(server, "DELETE", f"/api/creations/{image['id']}")
    assert resp.status_code == 204 and resp.content == b""
    assert error_code(call(server, "GET", f"/api/creations/{image['id']}"), 404) == "not_found"
    assert all(call(server, "GET", u).status_code == 404 for u in urls)
    assert not media_dir.exists()
    listed = call(server, "GET", "/api/creations").json()["creations"]
    assert image["id"] not in {c["id"] for c in listed}
    assert error_code(call(server, "DELETE", f"/api/creations/{image['id']}"), 404) == "not_found"


def test_the_controls_refuse_what_the_state_does_not_allow(server: LocalServer) -> None:
    done = create(server, "image", {"prompt": "a red chair"})
    wait_status(server, done["id"], {"completed"})
    assert error_code(call(server, "POST", f"/api/creations/{done['id']}/cancel"), 409) == (
        "already_finished"
    )
    assert error_code(call(server, "POST", f"/api/creations/{done['id']}/retry"), 409) == (
        "not_retryable"
    )
    running = create(server, "video", {"prompt": "a long take [slow:20]", "duration_seconds": 4})
    wait_status(server, running["id"], {"processing"})
    assert error_code(call(server, "DELETE", f"/api/creations/{running['id']}"), 409) == (
        "still_running"
    )
    # That 409 also asked the job to stop: it ends cancelled, then it can be deleted.
    wait_status(server, running["id"], {"cancelled"}, timeout=30)
    assert call(server, "DELETE", f"/api/creations/{running['id']}").status_code == 204
    # Someone else's creation: the same 404 as a missing one, for every control.
    for method, path in [
        ("POST", f"/api/creations/{done['id']}/cancel"),
        ("POST", f"/api/creations/{done['id']}/retry"),
        ("DELETE", f"/api/creations/{done['id']}"),
    ]:
        other = requests.request(
            method, server.url(path), headers={"X-Phoenix-User": "intruder"}, timeout=10
        )
        assert error_code(other, 404) == "not_found"
    assert call(server, "GET", f"/api/creations/{done['id']}").status_code == 200
