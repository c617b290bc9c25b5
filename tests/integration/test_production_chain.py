"""The whole production chain on stand-ins, through the same ``production_chain()`` a developer
runs with ``python -m tools.emulator_profile``:

    HTTP POST -> API (Firestore store, Cloud Tasks dispatcher, GCS media)
      -> Cloud Tasks emulator -> jobs:run stand-in -> `python -m jobs.<kind>.main` process
      -> fake Vertex (Veo writes into the storage emulator) -> Firestore record completed
    HTTP GET -> signed URL -> bytes from the storage emulator.

Not proven here (stand-in limits): OAuth token minting, Cloud Tasks dedup/retry policy,
Firestore transaction isolation, signed URL verification, real model behaviour.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.support.polling import wait_for_view
from tools.emulator_profile import IMAGE_JOB, PROJECT, VIDEO_JOB, production_chain

TERMINAL = {"completed", "failed"}


@pytest.fixture(scope="module")
def chain():
    with production_chain() as c:
        yield c


def _wait_terminal(api: str, cid: str, timeout: float = 120.0) -> dict:
    fetch = lambda: requests.get(f"{api}/api/creations/{cid}", timeout=10)  # noqa: E731
    return wait_for_view(fetch, TERMINAL, timeout=timeout)


def test_a_video_and_an_image_complete_through_the_production_adapters(chain):
    api = chain.api_url
    t0 = time.monotonic()
    video = requests.post(
        f"{api}/api/generate/video",
        json={
            "prompt": "a drone shot over a glacier",
            "aspect_ratio": "16:9",
            "duration_seconds": 8,
        },
        timeout=15,
    )
    image = requests.post(
        f"{api}/api/generate/image",
        json={"prompt": "a watercolour fox", "count": 2, "aspect_ratio": "1:1"},
        timeout=15,
    )
    accept_s = time.monotonic() - t0
    assert video.status_code == 202, video.text
    assert image.status_code == 202, image.text
    vid, iid = video.json()["id"], image.json()["id"]
    assert video.json()["path"] == "cloud-tasks" and video.json()["status"] == "pending"

    done_video = _wait_terminal(api, vid)
    done_image = _wait_terminal(api, iid)
    total_s = time.monotonic() - t0
    assert done_video["status"] == "completed", done_video
    assert done_image["status"] == "completed", done_image

    # Media: signed URLs into the storage emulator, serving the real bytes.
    (v,) = done_video["media"]
    assert v["mime_type"] == "video/mp4"
    assert v["url"].startswith(chain.gcs.url + f"/{chain.bucket}/creations/{vid}/")
    assert "X-Goog-Signature=" in v["url"]
    assert requests.get(v["url"], timeout=10).content[4:8] == b"ftyp"
    assert len(done_image["media"]) == 2
    for m in done_image["media"]:
        assert m["mime_type"] == "image/png"
        assert requests.get(m["url"], timeout=10).content.startswith(b"\x89PNG")

    # ... and the objects are in the bucket under creations/<id>/ (read with the GCS client).
    client = storage.Client(
        project=PROJECT,
        client_options={"api_endpoint": chain.gcs.url},
        credentials=AnonymousCredentials(),
    )
    names = {b.name for b in client.list_blobs(chain.bucket, prefix="creations/")}
    # Imagen wrote them under the start's marker (storageUri); names end in sample_<n>.png.
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith(f"creations/{iid}/")} >= {
        "sample_0.png",
        "sample_1.png",
    }
    assert any(n.startswith(f"creations/{vid}/") and n.endswith(".mp4") for n in names)

    # The jobs:run stand-in received exactly the documented RunJobRequest, once per creation.
    runs = [c for c in chain.run_api.calls() if c["path"].endswith(":run")]
    by_id = {}
    for call in runs:
        assert call["method"] == "POST" and call["status"] == 200
        body = call["body"]
        assert set(body) == {"overrides"}
        assert set(body["overrides"]) == {"containerOverrides", "taskCount"}
        assert body["overrides"]["taskCount"] == 1
        (override,) = body["overrides"]["containerOverrides"]
        assert set(override) == {"env"}
        env = override["env"]
        assert env[0]["name"] == "CREATION_ID"
        for extra in env[1:]:
            assert extra["name"] == "TRACEPARENT"
            assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", extra["value"])
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert headers["content-type"] == "application/json"
        assert headers["x-cloudtasks-queuename"] == chain.queue
        by_id[env[0]["value"]] = call["path"]
    assert len(runs) == 2
    prefix = f"/v2/projects/{PROJECT}/locations/us-central1/jobs/"
    assert by_id == {vid: f"{prefix}{VIDEO_JOB}:run", iid: f"{prefix}{IMAGE_JOB}:run"}

    # Each execution succeeded on its first attempt; Veo was called once, polled to the end.
    executions = chain.run_api.wait_for_executions(2, timeout=30)
    assert sorted(e["status"] for e in executions) == ["succeeded", "succeeded"]
    assert all(len(e["tasks"][0]["attempts"]) == 1 for e in executions)
    assert len(chain.vertex.calls("predictLongRunning")) == 1
    assert len(chain.vertex.calls("predict")) == 1
    print(
        f"chain up in {chain.startup_seconds:.2f}s {chain.timings}; "
        f"2 POSTs accepted in {accept_s:.3f}s; both completed after {total_s:.2f}s"
    )


def test_a_permanent_provider_error_fails_the_creation_without_retrying_the_job(chain):
    resp = requests.post(
        f"{chain.api_url}/api/generate/image", json={"prompt": "[invalid] nothing"}, timeout=15
    )
    assert resp.status_code == 202, resp.text
    cid = resp.json()["id"]
    done = _wait_terminal(chain.api_url, cid)
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_argument"
    # Exit 0 for a permanent failure: Cloud Run's maxRetries must not re-run the job.
    chain.run_api.wait_for_executions(timeout=30)
    (execution,) = [
        e for e in chain.run_api.executions() if e["env_overrides"].get("CREATION_ID") == cid
    ]
    assert execution["status"] == "succeeded"
    assert [a["exit_code"] for a in execution["tasks"][0]["attempts"]] == [0]
