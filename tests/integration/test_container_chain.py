"""The production chain with CONTAINERS, the way Cloud Run runs the product (the emulator
profile's ``--containers`` mode, through the same ``production_chain()``):

    HTTP POST -> API container (Firestore store, Cloud Tasks dispatcher, GCS media)
      -> Cloud Tasks emulator -> jobs:run stand-in -> `docker run --network host` of the job
         image, with the job descriptor's env, timeout and maxRetries
      -> fake Vertex (Veo writes into the storage emulator) -> Firestore record completed

The images are the ones Pants built for this test (``runtime_package_dependencies``). Beyond
the process-mode chain test this proves the images themselves: that they start, carry what
production needs, receive the environment Cloud Run would give them, and that a task killed
at its timeout (SIGTERM) hands its creation back and the retry resumes it to completion.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.support.polling import wait_for_view
from tools.emulator_profile import IMAGE_JOB, VIDEO_JOB, production_chain

TERMINAL = {"completed", "failed"}
# Long enough for a container to start and finish on a loaded 2-core machine (measured up to
# ~20 s there), short enough for a test.
TASK_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def chain():
    with production_chain(containers=True) as c:
        yield c


def _wait_terminal(api: str, cid: str, timeout: float = 180.0) -> dict:
    fetch = lambda: requests.get(f"{api}/api/creations/{cid}", timeout=10)  # noqa: E731
    return wait_for_view(fetch, TERMINAL, timeout=timeout, interval=0.25)


def _execution_for(chain, cid: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            e
            for e in chain.run_api.executions()
            if e["env_overrides"].get("CREATION_ID") == cid and e["status"] != "running"
        ]
        if found:
            (execution,) = found
            return execution
        time.sleep(0.2)
    raise AssertionError(f"no finished execution for {cid}: {chain.run_api.executions()}")


def _events(attempt: dict, name: str) -> list[dict]:
    """The attempt's JSON log lines (Cloud Logging shape: the event is ``message``) named so."""
    events = []
    for line in Path(attempt["log"]).read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("message") == name:
            events.append(event)
    return events


def test_a_video_and_an_image_complete_through_the_api_and_job_containers(chain):
    api = chain.api_url
    video = requests.post(
        f"{api}/api/generate/video",
        json={"prompt": "a drone shot over a glacier", "duration_seconds": 4},
        timeout=15,
    )
    image = requests.post(
        f"{api}/api/generate/image",
        json={"prompt": "a watercolour fox", "count": 2, "aspect_ratio": "1:1"},
        timeout=15,
    )
    assert video.status_code == 202, video.text
    assert image.status_code == 202, image.text
    vid, iid = video.json()["id"], image.json()["id"]

    done_video = _wait_terminal(api, vid)
    done_image = _wait_terminal(api, iid)
    assert done_video["status"] == "completed", done_video
    assert done_image["status"] == "completed", done_image
    (v,) = done_video["media"]
    assert v["url"].startswith(chain.gcs.url + f"/{chain.bucket}/creations/{vid}/")
    assert requests.get(v["url"], timeout=10).content[4:8] == b"ftyp"
    assert len(done_image["media"]) == 2
    for m in done_image["media"]:
        assert requests.get(m["url"], timeout=10).content.startswith(b"\x89PNG")

    # Each creation ran as ONE container of its job's image, first attempt, and the engine gave
    # that container exactly what Cloud Run would: the descriptor's env, the override, the
    # CLOUD_RUN_* variables, plus the local endpoints - and nothing of the host's environment.
    for cid, job, role in ((vid, VIDEO_JOB, "video-job"), (iid, IMAGE_JOB, "image-job")):
        execution = _execution_for(chain, cid)
        assert execution["status"] == "succeeded"
        assert execution["image"] == chain.image_refs[role]
        (attempt,) = execution["tasks"][0]["attempts"]
        assert attempt["exit_code"] == 0 and attempt["network_mode"] == "host"
        env = attempt["container_env"]
        assert env["CREATION_ID"] == cid
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", env["TRACEPARENT"])
        assert env["CLOUD_RUN_JOB"] == job
        assert env["CLOUD_RUN_EXECUTION"] == execution["execution"]
        assert (env["CLOUD_RUN_TASK_INDEX"], env["CLOUD_RUN_TASK_COUNT"]) == ("0", "1")
        assert env["CLOUD_RUN_TASK_ATTEMPT"] == "0"
        # from deploy/job.yaml
        assert env["PHOENIX_STORE"] == "firestore"
        assert env["PHOENIX_GENERATOR"] == "vertex"
        assert env["PHOENIX_MEDIA"] == "gcs"
        assert env["PHOENIX_MEDIA_BUCKET"] == chain.bucket
        assert env["PHOENIX_MAX_ATTEMPTS"] == "3"
        # the local stand-ins
        assert env["FIRESTORE_EMULATOR_HOST"] == chain.firestore.url
        assert env["PHOENIX_FIRESTORE_REST_URL"] == chain.firestore.rest_url
        assert env["PHOENIX_VERTEX_BASE_URL"] == chain.vertex.url
        assert "PYTHONPATH" not in env and "PHOENIX_REPO_ROOT" not in env
        assert "PHOENIX_DISPATCH" not in env  # the API's setting, not the job's
        # ... and the job inside saw them: its own log line names the execution and attempt.
        started = _events(attempt, "job_started")
        assert started and started[0]["execution"] == execution["execution"]
        assert str(started[0]["attempt"]) == "0"

    api_env = chain.api_container_env()
    assert api_env["PHOENIX_DISPATCH"] == "cloud-tasks"
    assert api_env["PHOENIX_CLOUD_TASKS_ENDPOINT"] == chain.tasks.url
    assert api_env["PHOENIX_STORE"] == "firestore"
    assert "PYTHONPATH" not in api_env


def test_a_task_killed_at_its_timeout_hands_back_and_the_retry_resumes_veo(chain):
    spec = chain.run_api.jobs[VIDEO_JOB]
    chain.run_api.jobs[VIDEO_JOB] = dataclasses.replace(spec, task_timeout=TASK_TIMEOUT_S)
    try:
        # A Veo operation that does not finish by itself: the first attempt polls it until the
        # task timeout stops it. Only then is the operation let finish, so the resumed attempt
        # completes it - whatever the machine's load does to container start-up times.
        prompt = "a slow pan across a canyon [polls:1000000]"
        resp = requests.post(
            f"{chain.api_url}/api/generate/video",
            json={"prompt": prompt, "duration_seconds": 4},
            timeout=15,
        )
        assert resp.status_code == 202, resp.text
        cid = resp.json()["id"]
        first = _wait_first_attempt_ended(chain, cid, timeout=TASK_TIMEOUT_S + 60)
        # Checked before letting Veo finish: a job that did not hand back would leave the
        # creation leased, and the retry would only find it claimed.
        assert first["timed_out"] is True, first
        assert first["exit_code"] == 143, (first, Path(first["log"]).read_text()[-3000:])
        assert chain.vertex.finish_operations(prompt) == 1
        done = _wait_terminal(chain.api_url, cid, timeout=120)
    finally:
        chain.run_api.jobs[VIDEO_JOB] = spec

    assert done["status"] == "completed", done
    execution = _execution_for(chain, cid)
    assert execution["status"] == "succeeded"
    attempts = execution["tasks"][0]["attempts"]
    summary = [
        {k: a.get(k) for k in ("attempt", "exit_code", "timed_out", "killed", "terminated_after_s")}
        for a in attempts
    ]
    assert len(attempts) == 2, summary
    first, second = attempts
    # Attempt 0: stopped at the timeout by SIGTERM, and the job exited by itself (143) within
    # the grace period, after handing its lease back - it was not SIGKILLed.
    assert first["timed_out"] is True, summary
    assert not first.get("killed"), summary
    assert first["exit_code"] == 143, summary
    handed = _events(first, "job_terminated_handed_back")
    assert handed and handed[0]["status"] == "pending" and handed[0]["operation"]
    # Attempt 1: next attempt number, claimed at once, resumed the same Veo operation.
    assert second["exit_code"] == 0 and second["timed_out"] is False, summary
    assert second["container_env"]["CLOUD_RUN_TASK_ATTEMPT"] == "1"
    assert second["container_env"]["CLOUD_RUN_EXECUTION"] == execution["execution"]
    claimed = _events(second, "job_claimed")
    assert claimed and claimed[0]["resumed_operation"] == handed[0]["operation"]
    starts = [c for c in chain.vertex.calls("predictLongRunning") if c.get("prompt") == prompt]
    assert len(starts) == 1, "the retry started a second Veo operation instead of resuming"


def _wait_first_attempt_ended(chain, cid: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in chain.run_api.executions():
            if e["env_overrides"].get("CREATION_ID") != cid:
                continue
            attempts = e["tasks"][0]["attempts"]
            if attempts and attempts[0].get("exit_code") is not None:
                return attempts[0]
        time.sleep(0.2)
    raise AssertionError(f"the first attempt for {cid} did not end in {timeout}s")
