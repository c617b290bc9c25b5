"""SIGTERM, the way Cloud Run stops a task (task timeout or cancellation; SIGKILL follows after a
grace period): the real job process stops at once, hands its lease back and exits, so the next
attempt claims the creation immediately and resumes it instead of starting over.

Shown failing: with ``hand_back`` returning before its store update (scratch break), both tests
failed. A SIGTERM whose exception a library or finalizer swallows is re-delivered
(test_job_sigterm_reassert.py; that test failed with the re-delivery disabled).

Processes here run the job entrypoint from source; the same behaviour in a real container,
stopped by the ``jobs:run`` stand-in at a short task timeout, is in test_container_runtime.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jobs.image.main  # noqa: F401
import jobs.video.main  # noqa: F401  (Pants: the children run the job entrypoints)
from common.adapters.sqlite_store import SqliteCreationStore
from common.domain import creation as lifecycle
from common.domain.creation import Creation, Kind, Status
from common.domain.requests import parse_generation_request
from common.job_runner import EXIT_TERMINATED
from tools.standins.fake_vertex import FakeVertexServer

# How long the process may take to exit after SIGTERM here. Cloud Run SIGKILLs after 10 s,
# which is harmless once the lease is handed back (only telemetry still being flushed is lost);
# on this shared 2-core machine the telemetry shutdown alone has taken over 10 s.
GRACE_S = 30.0
HAND_BACK_S = 3.0  # "at once": SIGTERM -> lease handed back, even on a loaded machine


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "CLOUD_RUN_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PYTHONUNBUFFERED="1",
        PHOENIX_DATA_DIR=str(data_dir),
        PHOENIX_LOG_FORMAT="json",
        PHOENIX_LEASE_SECONDS="300",  # an expiry could not explain a fast second claim
        PHOENIX_MAX_ATTEMPTS="3",
        CLOUD_RUN_EXECUTION="phoenix-job-sigterm",
        **extra,
    )
    return env


def _pending(store: SqliteCreationStore, kind: Kind, body: dict[str, Any]) -> str:
    req = parse_generation_request(kind, body)
    c = lifecycle.new(
        user_id="u",
        kind=kind,
        prompt=req.prompt,
        params=req.params,
        path="local",
        now=lifecycle.utcnow(),
    )
    store.add(c)
    return c.id


def _start(kind: Kind, cid: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"jobs.{kind.value}.main", "--creation-id", cid],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(
    store: SqliteCreationStore, cid: str, cond: Callable[[Creation], bool], timeout: float = 60
) -> Creation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = store.get(cid)
        if c is not None and cond(c):
            return c
        time.sleep(0.05)
    raise AssertionError(f"{cid}: condition not met in {timeout}s: {store.get(cid)}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _handed_back(
    store: SqliteCreationStore, cid: str, code: int, took: float, log: Path
) -> Creation:
    """The record after the SIGTERM: the job exited 143 in time, the creation is pending again
    with no lease owner."""
    assert code == EXIT_TERMINATED, log.read_text()[-3000:]
    assert took < HAND_BACK_S, f"handing back took {took:.2f}s"
    handed = store.get(cid)
    assert handed is not None and handed.status is Status.PENDING
    assert handed.lease_owner is None
    return handed


def _terminate(
    proc: subprocess.Popen[bytes], store: SqliteCreationStore, cid: str, log: Path
) -> tuple[int, float]:
    """SIGTERM; returns (exit code, seconds until the record was handed back as pending)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    handed_after = None
    while time.monotonic() - t0 < GRACE_S:
        c = store.get(cid)
        if handed_after is None and c is not None and c.status is Status.PENDING:
            handed_after = time.monotonic() - t0
        if proc.poll() is not None and (handed_after is not None or c is None):
            break
        time.sleep(0.02)
    try:
        code = proc.wait(timeout=max(0.0, GRACE_S - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(
            f"the job did not exit within {GRACE_S}s of SIGTERM:\n{log.read_text()[-3000:]}"
        ) from None
    assert handed_after is not None, f"not handed back:\n{log.read_text()[-3000:]}"
    return code, handed_after


def test_a_terminated_job_hands_its_lease_back_and_the_next_attempt_finishes(
    tmp_path: Path,
) -> None:
    store = SqliteCreationStore(tmp_path / "data" / "creations.sqlite3")
    # The local generator sleeps for [slow:N] (renewing its lease): a job to stop midway.
    cid = _pending(store, Kind.IMAGE, {"prompt": "a lighthouse [slow:5]"})
    env = _env(tmp_path / "data", PHOENIX_GENERATOR="local", PHOENIX_STORE="sqlite")
    log = tmp_path / "job.log"
    proc = _start(Kind.IMAGE, cid, env, log)
    try:
        _wait_for(store, cid, lambda c: c.status is Status.PROCESSING)
        code, took = _terminate(proc, store, cid, log)
    finally:
        _kill(proc)

    handed = _handed_back(store, cid, code, took, log)
    assert handed.lease_expires_at is None
    assert handed.error is not None and handed.error.code == "terminated"
    assert handed.attempts == 1
    assert '"job_terminated_handed_back"' in log.read_text()

    # The next attempt claims at once: the lease is 300 s, so only the hand-back lets it in.
    second = subprocess.run(
        [sys.executable, "-m", "jobs.image.main", "--creation-id", cid],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr.decode(errors="replace")[-3000:]
    done = store.get(cid)
    assert done is not None and done.status is Status.COMPLETED, done
    assert done.attempts == 2
    store.close()


def test_a_terminated_video_job_keeps_its_veo_operation_and_the_retry_resumes_it(
    tmp_path: Path,
) -> None:
    store = SqliteCreationStore(tmp_path / "data" / "creations.sqlite3")
    with FakeVertexServer(polls_before_done=1) as vertex:
        cid = _pending(
            store,
            Kind.VIDEO,
            # Not done for 40 polls (>= 20 s at the poll settings below): stopped mid-wait.
            {"prompt": "a glacier [polls:40]", "duration_seconds": 4},
        )
        env = _env(
            tmp_path / "data",
            PHOENIX_STORE="sqlite",
            PHOENIX_MEDIA="local",
            PHOENIX_GENERATOR="vertex",
            PHOENIX_GCP_PROJECT="phoenix-local",
            PHOENIX_GCP_LOCATION="us-central1",
            PHOENIX_VERTEX_BASE_URL=vertex.url,
            PHOENIX_VERTEX_ACCESS_TOKEN="local-token",
            PHOENIX_VEO_POLL_INITIAL_SECONDS="0.5",
            PHOENIX_VEO_POLL_MAX_SECONDS="0.5",
            PHOENIX_VEO_MAX_CONCURRENT="100",
        )
        log = tmp_path / "job.log"
        proc = _start(Kind.VIDEO, cid, env, log)
        try:
            recorded = _wait_for(store, cid, lambda c: bool(c.operation))
            # Let it poll a little, so it is stopped while waiting on Veo.
            deadline = time.monotonic() + 30
            while len(vertex.calls("fetchPredictOperation")) < 2:
                assert time.monotonic() < deadline, "the job never polled Veo"
                time.sleep(0.05)
            code, took = _terminate(proc, store, cid, log)
        finally:
            _kill(proc)

        handed = _handed_back(store, cid, code, took, log)
        assert handed.operation == recorded.operation  # kept for the retry
        polls_before = len(vertex.calls("fetchPredictOperation"))
        assert polls_before < 40

        second = _start(Kind.VIDEO, cid, env, tmp_path / "job2.log")
        try:
            assert second.wait(timeout=120) == 0, (tmp_path / "job2.log").read_text()[-3000:]
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
                second.wait()
        done = store.get(cid)
        assert done is not None and done.status is Status.COMPLETED, done
        # Resuming the recorded operation used no attempt (issue 12): still the first one.
        assert (done.attempts, done.resumes) == (1, 1)
        # One Veo operation for the creation: the retry resumed it rather than starting over.
        assert len(vertex.calls("predictLongRunning")) == 1
        assert len(vertex.calls("fetchPredictOperation")) > polls_before
    store.close()
