"""One trace per creation across processes, on a real local run: the API's request span, the
dispatch, and the job process's spans share a trace id, and the job's JSON log lines carry it
in Cloud Logging's trace field."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

import api.local  # noqa: F401  (the server process runs it)
import jobs.image.main  # noqa: F401  (its job processes run it)
from tests.support.local_server import start_local_server, stop_server


def _wait_completed(url: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = requests.get(url, timeout=10).json()
        if view["status"] in ("completed", "failed"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"not finished in {timeout} s: {view}")


def test_api_and_job_spans_and_logs_share_one_trace(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    server = start_local_server(
        tmp_path,
        {
            "PHOENIX_TRACE_EXPORTER": f"file:{spans_file}",
            "PHOENIX_LOG_FORMAT": "json",
            "PHOENIX_GCP_PROJECT": "phoenix-test",
        },
    )
    try:
        resp = requests.post(
            server.url("/api/generate/image"), json={"prompt": "a traced lighthouse"}, timeout=30
        )
        assert resp.status_code == 202, resp.text
        cid = resp.json()["id"]
        assert _wait_completed(server.url(f"/api/creations/{cid}"))["status"] == "completed"
    finally:
        assert stop_server(server) == 0

    spans = [json.loads(line) for line in spans_file.read_text().splitlines() if line.strip()]
    request = [s for s in spans if s["name"] == "POST /api/generate/<any(video, image):kind>"]
    assert len(request) == 1, [s["name"] for s in spans]
    trace_id = request[0]["trace_id"]
    api_pid = request[0]["pid"]

    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    # Handing the creation to its queue is a span of its own under the request's.
    (dispatch,) = [s for s in in_trace if s["name"] == "dispatch local"]
    assert dispatch["parent_span_id"] == request[0]["span_id"]
    job_spans = {s["name"]: s for s in in_trace if s["pid"] != api_pid}
    assert {"job.image", "job.claim", "job.generate", "job.store_media", "job.complete"} <= set(
        job_spans
    )
    # The job's root span continues the API's trace from the TRACEPARENT override.
    assert job_spans["job.image"]["remote_parent"] is True
    assert job_spans["job.image"]["attributes"]["phoenix.creation_id"] == cid

    job_logs = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("creation_id") == cid and record.get("service") == "phoenix-image-job":
            job_logs.append(record)
    assert job_logs, "the job wrote no JSON log lines for the creation"
    claimed = [r for r in job_logs if r.get("message") == "job_claimed"]
    assert claimed and all(
        r["logging.googleapis.com/trace"] == f"projects/phoenix-test/traces/{trace_id}"
        for r in claimed
    )
    assert all(r["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR"} for r in job_logs)
