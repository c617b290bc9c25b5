"""The ``jobs:run`` stand-in in container mode, with the real job image built by Pants (this
test's ``runtime_package_dependencies``) in the local Docker engine: each ``:run`` starts the
image with ``--network host``, exactly the job's env + overrides + what Cloud Run sets, retries
a non-zero exit with the next attempt number up to maxRetries, and enforces the task timeout
(SIGTERM, SIGKILL after the grace period). The job's own SIGTERM handling in a container is
shown end to end in test_container_chain.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from tools import images
from tools.standins.run_api import CONTAINER_LABEL, JobSpec, RunApiStandin

JOB = "phoenix-image-job"


@pytest.fixture(scope="module")
def image() -> str:
    images.require_engine()
    return images.find_image("image-job").ref


def _run(standin: RunApiStandin, body: dict) -> dict:
    resp = requests.post(standin.run_url(JOB), json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _containers(label: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={CONTAINER_LABEL}={label}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.split()


def test_each_run_starts_the_image_with_the_cloud_run_env_and_retries_a_failing_task(
    image: str,
) -> None:
    # An unknown store makes the job exit 2 at once (misconfiguration): a failing task.
    spec = JobSpec(image=image, env={"PHOENIX_STORE": "no-such-store", "PHOENIX_LOG_LEVEL": "INFO"})
    with RunApiStandin({JOB: spec}, max_retries=2, inherit_env=True) as standin:
        op = _run(
            standin,
            {
                "overrides": {
                    "containerOverrides": [{"env": [{"name": "CREATION_ID", "value": "c-123"}]}],
                    "taskCount": 1,
                }
            },
        )
        (execution,) = standin.wait_for_executions(1, timeout=120)
        label = standin.instance
        leftovers = _containers(label)

    assert execution["name"] == op["metadata"]["name"]
    assert execution["status"] == "failed"
    attempts = execution["tasks"][0]["attempts"]
    assert [a["attempt"] for a in attempts] == [0, 1, 2]  # maxRetries = 2
    assert [a["exit_code"] for a in attempts] == [2, 2, 2]
    for a in attempts:
        env = a["container_env"]  # what the engine really gave the container
        assert env["CLOUD_RUN_JOB"] == JOB
        assert env["CLOUD_RUN_EXECUTION"] == execution["execution"]
        assert env["CLOUD_RUN_TASK_INDEX"] == "0"
        assert env["CLOUD_RUN_TASK_COUNT"] == "1"
        assert env["CLOUD_RUN_TASK_ATTEMPT"] == str(a["attempt"])
        assert env["CREATION_ID"] == "c-123"
        assert env["PHOENIX_STORE"] == "no-such-store"
        # Nothing of the host's environment leaks in, even with inherit_env: the image's own
        # PATH and HOME are what the job sees.
        assert env["HOME"] == "/home/phoenix"
        assert "PHOENIX_REPO_ROOT" not in env and "PYTEST_CURRENT_TEST" not in env
        assert a["network_mode"] == "host"
        assert a["container_user"] not in ("", "0", "root")
        assert a["timed_out"] is False
        assert "PHOENIX_STORE" in a["log_tail"]  # the job's own message, from the container
    assert leftovers == []  # every attempt's container was removed


def test_the_task_timeout_sends_sigterm_then_sigkill_after_the_grace_period(image: str) -> None:
    # `sleep` as the container's PID 1 ignores SIGTERM: only the SIGKILL can end it.
    spec = JobSpec(
        image=image,
        args=["30"],
        docker_args=["--entrypoint", "sleep"],
        task_timeout=2.0,
        max_retries=0,
    )
    t0 = time.monotonic()
    with RunApiStandin({JOB: spec}, stop_grace=1.0) as standin:
        _run(standin, {})
        (execution,) = standin.wait_for_executions(1, timeout=60)
    took = time.monotonic() - t0

    (attempt,) = execution["tasks"][0]["attempts"]
    assert execution["status"] == "failed"
    assert attempt["timed_out"] is True and attempt["killed"] is True
    assert attempt["exit_code"] == 137  # 128 + SIGKILL, as the engine reports it
    assert 2.0 <= attempt["terminated_after_s"] < 10
    assert took < 25, f"{took:.1f}s: the timeout was not enforced"
