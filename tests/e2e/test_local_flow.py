"""The whole local product, black-box: the real server process (``python -m api.local``:
gunicorn, SQLite, the local dispatcher starting real job processes, the local generator
writing real PNG/MP4 files), driven over HTTP like the browser does.

One server serves the module; the last test stops it with SIGTERM and checks it exits
cleanly and takes its running job processes with it.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

# Imported for Pants' dependency inference, which ships only imported code into the test
# sandbox: the server (api.local) and the two jobs its dispatcher starts as processes.
import api.local  # noqa: F401
import jobs.image.main  # noqa: F401
import jobs.video.main  # noqa: F401
from tests.support.local_server import LocalServer, start_local_server, stop_server
from tests.support.media_probe import probe_mp4, probe_png
from tests.support.procs import pids_whose

COMPLETION_TIMEOUT_S = 120.0


# --- the server process ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    srv = start_local_server(tmp_path_factory.mktemp("phoenix-e2e"))
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


# --- HTTP helpers ------------------------------------------------------------------------------


def create(server: LocalServer, kind: str, body: dict[str, Any], user: str) -> dict[str, Any]:
    resp = requests.post(
        server.url(f"/api/generate/{kind}"),
        json=body,
        headers={"X-Phoenix-User": user},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    view = resp.json()
    assert resp.headers["Location"] == f"/api/creations/{view['id']}"
    return view


def wait_finished(server: LocalServer, cid: str, user: str) -> dict[str, Any]:
    """Poll like the page does (If-None-Match) until the creation is terminal."""
    deadline = time.monotonic() + COMPLETION_TIMEOUT_S
    etag, view = None, None
    session = requests.Session()
    while time.monotonic() < deadline:
        headers = {"X-Phoenix-User": user}
        if etag:
            headers["If-None-Match"] = etag
        resp = session.get(server.url(f"/api/creations/{cid}"), headers=headers, timeout=10)
        if resp.status_code == 200:
            view, etag = resp.json(), resp.headers.get("ETag")
            if view["status"] in ("completed", "failed"):
                return view
        else:
            assert resp.status_code == 304, resp.text
        time.sleep(0.25)
    raise AssertionError(
        f"creation {cid} not finished after {COMPLETION_TIMEOUT_S} s: {view}\n{server.log_tail()}"
    )


def status_of(server: LocalServer, cid: str, user: str) -> str:
    resp = requests.get(
        server.url(f"/api/creations/{cid}"), headers={"X-Phoenix-User": user}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["status"])


def download(server: LocalServer, url: str, user: str) -> bytes:
    """Media is served only to its owner: the request names the user like the page's cookie."""
    resp = requests.get(
        server.url(url) if url.startswith("/") else url,
        headers={"X-Phoenix-User": user},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.content


def job_processes_for(creation_id: str) -> list[int]:
    """PIDs whose command line names this creation (the local job processes)."""
    return pids_whose("cmdline", creation_id.encode())


# --- the flows ---------------------------------------------------------------------------------


def test_video_and_image_are_generated_stored_and_served(server: LocalServer) -> None:
    user = "e2e-media"
    video = create(
        server,
        "video",
        {"prompt": "a paper boat on a rainy street", "aspect_ratio": "9:16", "duration_seconds": 4},
        user,
    )
    image = create(
        server,
        "image",
        {"prompt": "a lighthouse at dawn", "aspect_ratio": "16:9", "count": 2},
        user,
    )
    assert video["status"] == image["status"] == "pending"

    done_video = wait_finished(server, video["id"], user)
    done_image = wait_finished(server, image["id"], user)
    assert done_video["status"] == "completed", done_video
    assert done_image["status"] == "completed", done_image
    assert done_video["progress"] == done_image["progress"] == 100
    assert done_video["path"] == "local"

    assert len(done_image["media"]) == 2
    for item in done_image["media"]:
        assert item["mime_type"] == "image/png"
        info = probe_png(download(server, item["url"], user))
        assert info["width"] > info["height"] > 0
        assert abs(info["width"] / info["height"] - 16 / 9) < 0.02, info

    assert len(done_video["media"]) == 1
    item = done_video["media"][0]
    assert item["mime_type"] == "video/mp4"
    info = probe_mp4(download(server, item["url"], user))
    assert info["codec"] == "h264", info
    assert (info["width"], info["height"]) == (360, 640), info
    assert abs(info["duration_seconds"] - 4.0) < 0.25, info

    # The player seeks with byte ranges: the media route honours them.
    ranged = requests.get(
        server.url(item["url"]),
        headers={"Range": "bytes=0-99", "X-Phoenix-User": user},
        timeout=10,
    )
    assert ranged.status_code == 206 and len(ranged.content) == 100
    # ... and only to its owner, with the 404 of a foreign creation.
    foreign = requests.get(
        server.url(item["url"]), headers={"X-Phoenix-User": "someone"}, timeout=10
    )
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"

    # Both are listed for their owner, newest first, and invisible to anyone else.
    listed = requests.get(
        server.url("/api/creations"), headers={"X-Phoenix-User": user}, timeout=10
    ).json()["creations"]
    assert [c["id"] for c in listed] == [image["id"], video["id"]]
    other = requests.get(
        server.url(f"/api/creations/{video['id']}"),
        headers={"X-Phoenix-User": "someone"},
        timeout=10,
    )
    assert other.status_code == 404


def test_a_filtered_prompt_ends_failed_with_its_code(server: LocalServer) -> None:
    user = "e2e-fail"
    view = create(server, "image", {"prompt": "something [fail:content_filtered]"}, user)
    done = wait_finished(server, view["id"], user)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_filtered"
    assert done["error"]["message"]
    assert done["media"] == []


def test_twenty_concurrent_image_requests_all_complete(server: LocalServer) -> None:
    """20 requests at once from 4 users (5 each: under the default per-user cap of 10
    unfinished creations, which has its own test below)."""
    users = [f"e2e-burst-{n}" for n in range(4)]

    def one(i: int) -> tuple[str, dict[str, Any]]:
        user = users[i % len(users)]
        return user, create(server, "image", {"prompt": f"burst image number {i}"}, user)

    with ThreadPoolExecutor(max_workers=20) as pool:
        created = list(pool.map(one, range(20)))
    owner = {view["id"]: user for user, view in created}
    assert len(owner) == 20

    with ThreadPoolExecutor(max_workers=20) as pool:
        finished = list(pool.map(lambda cid: wait_finished(server, cid, owner[cid]), sorted(owner)))
    statuses = {f["id"]: f["status"] for f in finished}
    assert all(s == "completed" for s in statuses.values()), statuses
    for f in finished:
        assert len(f["media"]) == 1
        assert probe_png(download(server, f["media"][0]["url"], owner[f["id"]]))["width"] > 0

    for user in users:
        listed = requests.get(
            server.url("/api/creations?limit=100"), headers={"X-Phoenix-User": user}, timeout=10
        ).json()["creations"]
        assert {c["id"] for c in listed} == {cid for cid, u in owner.items() if u == user}


def test_a_user_over_the_unfinished_cap_gets_429_with_retry_after(server: LocalServer) -> None:
    """Shown to fail when the unfinished-creation cap is removed (scratch branch
    scratch/promises-break-quota-cap, 2026-12-01)."""
    user = "e2e-greedy"
    codes = []
    for i in range(12):
        resp = requests.post(
            server.url("/api/generate/video"),
            json={"prompt": f"[slow:3] slow video {i}", "duration_seconds": 4},
            headers={"X-Phoenix-User": user},
            timeout=30,
        )
        codes.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) > 0
            assert resp.json()["error"]["code"] == "rate_limited"
    assert codes[:10] == [202] * 10 and 429 in codes[10:]


def _stop_mid_job_and_check(server: LocalServer, *, ctrl_c: bool) -> None:
    """A job is mid-generation when the server is told to stop: the server exits 0 promptly,
    the job process goes with it (no orphan, no retry spawned during shutdown), no tracebacks."""
    user = "e2e-stop"
    view = create(server, "video", {"prompt": "a long one [slow:60]", "duration_seconds": 4}, user)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        job_processes_for(view["id"]) and status_of(server, view["id"], user) == "processing"
    ):
        time.sleep(0.1)
    assert job_processes_for(view["id"]), "the job process never started"
    assert status_of(server, view["id"], user) == "processing"

    started = time.monotonic()
    code = stop_server(server, timeout=30, ctrl_c=ctrl_c)
    elapsed = time.monotonic() - started
    assert code == 0, server.log_tail()
    assert elapsed < 20, f"shutdown took {elapsed:.1f} s"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and job_processes_for(view["id"]):
        time.sleep(0.1)
    assert job_processes_for(view["id"]) == [], "a job process outlived the server"
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    starts = [line for line in log.splitlines() if "job_started" in line and view["id"] in line]
    assert len(starts) == 1, f"a job process was (re)started during shutdown: {starts}"


def test_ctrl_c_stops_a_server_and_its_jobs_cleanly(tmp_path: Path) -> None:
    srv = start_local_server(tmp_path)
    try:
        _stop_mid_job_and_check(srv, ctrl_c=True)
    finally:
        if srv.proc.poll() is None:
            os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()


def test_sigterm_stops_the_server_and_its_jobs_cleanly(server: LocalServer) -> None:
    """Runs last: stops the module's server."""
    _stop_mid_job_and_check(server, ctrl_c=False)
