"""One Dispatcher contract for the local process pool and Cloud Tasks (emulator -> the Cloud Run
``jobs:run`` stand-in -> a job process): the payload reaches the job with ``CREATION_ID`` (and
``TRACEPARENT``) in its environment, a repeated dispatch is not an error, and an unreachable
queue fails fast with DispatchError.

Emulator limits (docs/notes/emulators.md): the Cloud Tasks emulator does not dedup task names
and sends no OAuth token. So "a duplicate dispatch is absorbed as ALREADY_EXISTS" is proven with a
fake client raising the error real Cloud Tasks returns, and the OAuth token is checked in the
task we build, not at the receiving end.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc

from common.adapters.cloud_tasks_dispatch import CloudTasksDispatcher, task_id_for
from common.adapters.local_dispatch import LocalProcessDispatcher, RecordingDispatcher
from common.config import ConfigError, Settings
from common.domain import creation as lc
from common.domain.creation import Kind
from common.domain.errors import DispatchError
from common.domain.payload import TaskPayload
from tools.servers import free_port, tasks_emulator
from tools.standins.run_api import RunApiStandin

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
QUEUE = "projects/phoenix-test/locations/us-central1/queues/contract"
JOBS = {Kind.VIDEO: "phoenix-video-job", Kind.IMAGE: "phoenix-image-job"}

# A stand-in job: records what a job execution would see, then exits 0.
JOB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, uuid
    hold = os.path.join(os.environ["CONTRACT_GATE_DIR"], os.environ["CREATION_ID"] + ".hold")
    deadline = time.monotonic() + 30
    while os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.01)  # the test holds this creation's job until it removes the file
    out = os.environ["CONTRACT_OUT_DIR"]
    seen = {k: os.environ.get(k) for k in (
        "CREATION_ID", "TRACEPARENT", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_ATTEMPT")}
    seen["argv"] = sys.argv[1:]
    name = f"{seen['CREATION_ID']}.{uuid.uuid4().hex}.json"
    with open(os.path.join(out, name + ".tmp"), "w") as fh:
        json.dump(seen, fh)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    """
)


def _deliveries(out_dir: Path, creation_id: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{creation_id}.*.json"))]


def _wait_for(out_dir: Path, creation_id: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _deliveries(out_dir, creation_id)
        if len(seen) >= count:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{creation_id} reached the job {len(_deliveries(out_dir, creation_id))}x")


@pytest.fixture(scope="module")
def tasks():
    with tasks_emulator(max_retries=5) as emulator:
        yield emulator


@pytest.fixture
def job_command(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    out = tmp_path / "deliveries"
    out.mkdir()
    return [sys.executable, str(script)], out


@pytest.fixture(params=["local", "cloud-tasks"])
def target(request, tmp_path, job_command, monkeypatch):
    """(dispatcher, out_dir, backend) — each backend ends in the same stand-in job command."""
    command, out = job_command
    if request.param == "local":
        dispatcher = LocalProcessDispatcher(
            max_parallel=2,
            command_for={"video": command, "image": command},
            extra_env={"CONTRACT_OUT_DIR": str(out), "CONTRACT_GATE_DIR": str(tmp_path)},
        )
        yield dispatcher, out, request.param
        dispatcher.wait_idle(20)
        dispatcher.close()
        return
    emulator = request.getfixturevalue("tasks")
    from common.adapters.cloud_tasks_dispatch import tasks_client

    queue = f"{QUEUE}-{uuid.uuid4().hex[:8]}"  # one queue per test: no cross-test deliveries
    tasks_client(emulator.url).create_queue(
        parent=queue.rsplit("/queues/", 1)[0], queue={"name": queue}
    )
    with RunApiStandin(
        {JOBS[Kind.VIDEO]: command, JOBS[Kind.IMAGE]: command},
        env={"CONTRACT_OUT_DIR": str(out), "CONTRACT_GATE_DIR": str(tmp_path)},
        max_retries=0,
    ) as run_api:
        settings = Settings(
            tasks_queue=queue,
            cloud_tasks_endpoint=emulator.url,
            run_api_url=run_api.url,
            tasks_service_account="phoenix-tasks@phoenix-test.iam.gserviceaccount.com",
            jobs=tuple((k.value, job) for k, job in JOBS.items()),
        )
        dispatcher = CloudTasksDispatcher.from_settings(settings)
        dispatcher.run_api = run_api  # type: ignore[attr-defined]  # for assertions below
        yield dispatcher, out, request.param


@pytest.mark.parametrize("kind", [Kind.VIDEO, Kind.IMAGE])
def test_a_dispatched_payload_reaches_the_job_with_its_creation_id(target, kind):
    dispatcher, out, backend = target
    cid = uuid.uuid4().hex
    started = time.monotonic()
    dispatcher.dispatch(TaskPayload(creation_id=cid, kind=kind, traceparent=TRACEPARENT))
    (seen,) = _wait_for(out, cid)
    latency = time.monotonic() - started
    assert seen["CREATION_ID"] == cid
    assert seen["TRACEPARENT"] == TRACEPARENT
    assert seen["CLOUD_RUN_EXECUTION"] and seen["CLOUD_RUN_TASK_ATTEMPT"] == "0"
    assert latency < 15
    if backend == "cloud-tasks":
        (call,) = [c for c in dispatcher.run_api.calls() if c["path"].endswith(":run")]
        assert call["status"] == 200
        assert call["path"] == (
            f"/v2/projects/phoenix-test/locations/us-central1/jobs/{JOBS[kind]}:run"
        )
        assert call["body"] == {
            "overrides": {
                "containerOverrides": [
                    {
                        "env": [
                            {"name": "CREATION_ID", "value": cid},
                            {"name": "TRACEPARENT", "value": TRACEPARENT},
                        ]
                    }
                ],
                "taskCount": 1,
            }
        }
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert headers["content-type"] == "application/json"
        assert headers["x-cloudtasks-taskname"] == task_id_for(cid)


def test_without_a_traceparent_only_the_creation_id_is_sent(target):
    dispatcher, out, _ = target
    cid = uuid.uuid4().hex
    dispatcher.dispatch(TaskPayload(creation_id=cid, kind=Kind.IMAGE))
    (seen,) = _wait_for(out, cid)
    assert seen["CREATION_ID"] == cid and seen["TRACEPARENT"] is None


def test_dispatching_the_same_creation_twice_is_not_an_error(target):
    """At-least-once: a repeat is accepted and neither backend swallows or multiplies it. The
    local pool and the emulator both start one job execution per dispatch, so exactly two
    executions arrive, each its own ``CLOUD_RUN_EXECUTION``. (Real Cloud Tasks absorbs a repeat
    of the same task name as ALREADY_EXISTS, tested with a fake client below; the job's claim
    makes a second execution harmless, tests/integration/test_duplicate_delivery.py.)"""
    dispatcher, out, _ = target
    cid = uuid.uuid4().hex
    payload = TaskPayload(creation_id=cid, kind=Kind.VIDEO)
    dispatcher.dispatch(payload)
    dispatcher.dispatch(payload)
    seen = _wait_for(out, cid, 2)
    time.sleep(1.0)  # a third (spurious) delivery would land well within this
    seen = _deliveries(out, cid)
    assert len(seen) == 2, seen
    assert all(s["CREATION_ID"] == cid for s in seen)
    assert len({s["CLOUD_RUN_EXECUTION"] for s in seen}) == 2, seen


@contextlib.contextmanager
def _held(dispatcher, backend, request, hold: Path):
    """Keep a dispatched task from reaching its job until the block ends. Local: the pool's job
    waits at a gate (a local task exists while queued or running). Cloud Tasks: the queue is
    paused, so the task stays in it (a Cloud Tasks task is gone once ``:run`` answered)."""
    hold.touch()
    if backend == "cloud-tasks":
        from common.adapters.cloud_tasks_dispatch import tasks_client

        client = tasks_client(request.getfixturevalue("tasks").url)
        client.pause_queue(name=dispatcher.queue)
        try:
            yield
        finally:
            client.resume_queue(name=dispatcher.queue)
            hold.unlink()
    else:
        try:
            yield
        finally:
            hold.unlink()


def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_task_exists_while_the_task_waits_and_not_once_the_job_has_it(target, request, tmp_path):
    """The sweeper's question (issue 12): is this dispatch of this creation still waiting?
    True while queued, False once the job got it, False for a dispatch never made."""
    dispatcher, out, backend = target
    cid = uuid.uuid4().hex
    payload = TaskPayload(creation_id=cid, kind=Kind.IMAGE)
    with _held(dispatcher, backend, request, tmp_path / f"{cid}.hold"):
        dispatcher.dispatch(payload)
        assert dispatcher.task_exists(payload) is True
        assert (
            dispatcher.task_exists(TaskPayload(creation_id=cid, kind=Kind.IMAGE, dispatch=1))
            is False
        )
        assert (
            dispatcher.task_exists(TaskPayload(creation_id=uuid.uuid4().hex, kind=Kind.IMAGE))
            is False
        )
    _wait_for(out, cid)
    assert _until(lambda: dispatcher.task_exists(payload) is False)


def test_a_redispatch_is_its_own_task(target, request, tmp_path):
    """A sweeper re-dispatch (dispatch number n) is asked about separately from the first."""
    dispatcher, out, backend = target
    cid = uuid.uuid4().hex
    again = TaskPayload(creation_id=cid, kind=Kind.VIDEO, dispatch=3)
    with _held(dispatcher, backend, request, tmp_path / f"{cid}.hold"):
        dispatcher.dispatch(again)
        assert dispatcher.task_exists(again) is True
        assert dispatcher.task_exists(TaskPayload(creation_id=cid, kind=Kind.VIDEO)) is False
    _wait_for(out, cid)


def _cancelled(cid: str | None = None, **fields) -> lc.Creation:
    import dataclasses

    c = lc.new(
        user_id="u",
        kind=Kind.VIDEO,
        prompt="p",
        params={},
        path="x",
        now=lc.utcnow(),
        creation_id=cid,
    )
    return dataclasses.replace(lc.cancel(c, now=lc.utcnow()), **fields)


def test_cancel_of_a_creation_the_path_holds_nothing_for_is_not_an_error(target):
    dispatcher, out, _ = target
    assert dispatcher.cancel(_cancelled()) == []


def test_stop_execution_stops_a_running_execution(target):
    """Local: a running job process is left to stop at its own next renewal (nothing to stop
    by force); Cloud Tasks: the execution recorded at claim is cancelled through the Admin API
    (here the jobs:run stand-in), which SIGTERMs it and starts no retry."""
    dispatcher, out, backend = target
    if backend == "local":
        assert dispatcher.stop_execution(_cancelled(execution="local-video-1234")) is False
        return
    job = JOBS[Kind.VIDEO]
    blocker = RunApiStandin({job: [sys.executable, "-c", "import time; time.sleep(60)"]})
    with blocker:
        op = requests.post(blocker.run_url(job, "phoenix-test"), json={}, timeout=10).json()
        name = op["metadata"]["name"]  # projects/P/locations/L/jobs/J/executions/E
        cancelling = CloudTasksDispatcher(
            FakeTasksClient(),
            queue=QUEUE,
            run_api_url=blocker.url,
            jobs=JOBS,
        )
        execution = name.split("/", 4)[4]
        assert execution.startswith(f"jobs/{job}/executions/")
        assert cancelling.stop_execution(_cancelled(execution=execution)) is True
        (finished,) = blocker.wait_for_executions(1, timeout=20)
    assert finished["status"] == "cancelled"
    assert len(finished["tasks"][0]["attempts"]) == 1


def test_local_cancel_drops_a_queued_payload_before_its_process_starts(tmp_path):
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "gated.py"
    script.write_text(
        "import os, pathlib, sys, time\n"
        "while not os.path.exists(os.environ['GATE']): time.sleep(0.02)\n"
        "pathlib.Path(os.environ['OUT'], os.environ['CREATION_ID']).touch()\n"
    )
    command = [sys.executable, str(script)]
    dispatcher = LocalProcessDispatcher(
        max_parallel=1,
        command_for={"video": command, "image": command},
        extra_env={"GATE": str(gate), "OUT": str(out)},
    )
    try:
        first, queued = uuid.uuid4().hex, uuid.uuid4().hex
        dispatcher.dispatch(TaskPayload(creation_id=first, kind=Kind.VIDEO))
        dispatcher.dispatch(TaskPayload(creation_id=queued, kind=Kind.VIDEO))
        time.sleep(0.3)  # the one worker is busy with `first`; `queued` waits in memory
        assert dispatcher.cancel(_cancelled(queued)) == ["1 queued local job(s)"]
        gate.touch()
        assert dispatcher.wait_idle(20)
    finally:
        dispatcher.close()
    assert sorted(p.name for p in out.iterdir()) == [first]  # the cancelled one never ran


def test_recording_dispatcher_accepts_and_remembers():
    d = RecordingDispatcher()
    p = TaskPayload(creation_id="abc", kind=Kind.IMAGE)
    d.dispatch(p)
    d.dispatch(p)
    assert d.dispatched == [p, p] and d.name == "record"
    assert d.task_exists(p) is None  # it runs nothing, so it cannot say: time-based sweeping


# --- Cloud Tasks specifics ------------------------------------------------------------------


def test_unreachable_cloud_tasks_fails_fast_with_dispatch_error():
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    dispatcher = CloudTasksDispatcher.from_settings(
        Settings(tasks_queue=QUEUE, cloud_tasks_endpoint=endpoint, run_api_url="http://127.0.0.1:9")
    )
    started = time.monotonic()
    with pytest.raises(DispatchError, match="unavailable"):
        dispatcher.dispatch(TaskPayload(creation_id="abc", kind=Kind.VIDEO))
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "queue", ["", "my-queue", "projects/p/queues/q", "projects/p/locations/l/queues/bad name"]
)
def test_a_malformed_queue_is_a_config_error(queue):
    with pytest.raises(ConfigError, match="PHOENIX_TASKS_QUEUE"):
        CloudTasksDispatcher.from_settings(Settings(tasks_queue=queue))


def test_a_google_run_api_without_a_service_account_is_a_config_error():
    with pytest.raises(ConfigError, match="PHOENIX_TASKS_SERVICE_ACCOUNT"):
        CloudTasksDispatcher(
            object(), queue=QUEUE, run_api_url="https://run.googleapis.com", jobs=JOBS
        )


class FakeTasksClient:
    """Plays back one outcome per create_task call and records the requests."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.requests: list[dict] = []
        self.kwargs: list[dict] = []
        self.deleted: list[str] = []

    def delete_task(self, name, **kwargs):
        self.deleted.append(name)
        if name.endswith("-d1"):
            raise gexc.NotFound("already delivered")

    def create_task(self, request, **kwargs):
        self.requests.append(request)
        self.kwargs.append(kwargs)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _dispatcher(client) -> CloudTasksDispatcher:
    return CloudTasksDispatcher(
        client,
        queue=QUEUE,
        run_api_url="https://run.googleapis.com",
        jobs=JOBS,
        service_account="phoenix-tasks@phoenix-test.iam.gserviceaccount.com",
    )


def test_the_task_is_a_named_oauth_authenticated_post_to_jobs_run():
    client = FakeTasksClient()
    _dispatcher(client).dispatch(TaskPayload("c1", Kind.VIDEO, traceparent=TRACEPARENT))
    (request,) = client.requests
    task = request["task"]
    assert request["parent"] == QUEUE
    assert task["name"] == f"{QUEUE}/tasks/{task_id_for('c1')}"
    http = task["http_request"]
    assert http["url"] == (
        "https://run.googleapis.com/v2/projects/phoenix-test/locations/us-central1/"
        "jobs/phoenix-video-job:run"
    )
    assert http["oauth_token"] == {
        "service_account_email": "phoenix-tasks@phoenix-test.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
    }
    assert "oidc_token" not in http
    assert json.loads(http["body"])["overrides"]["containerOverrides"][0]["env"][0] == {
        "name": "CREATION_ID",
        "value": "c1",
    }
    assert 15 <= task["dispatch_deadline"].seconds <= 1800  # Cloud Tasks' allowed range
    assert client.kwargs[0]["timeout"] <= 10 and client.kwargs[0]["retry"] is None


def test_task_ids_are_deterministic_hash_prefixed_and_valid():
    a, b = task_id_for("abc"), task_id_for("abd")
    assert a == task_id_for("abc") and a.endswith("-abc")
    assert a[:8] != b[:8]  # the prefix spreads similar ids apart
    assert all(ch.isalnum() or ch in "-_" for ch in a) and len(a) <= 500


def test_already_exists_means_already_dispatched():
    client = FakeTasksClient(gexc.AlreadyExists("Requested entity already exists"))
    _dispatcher(client).dispatch(TaskPayload("c1", Kind.IMAGE))  # no exception
    assert len(client.requests) == 1


def test_one_transient_unavailable_is_retried_once():
    client = FakeTasksClient(gexc.ServiceUnavailable("reset"), None)
    _dispatcher(client).dispatch(TaskPayload("c1", Kind.IMAGE))
    assert len(client.requests) == 2
    assert client.requests[0]["task"]["name"] == client.requests[1]["task"]["name"]


@pytest.mark.parametrize(
    "errors, calls",
    [
        ([gexc.ServiceUnavailable("down"), gexc.ServiceUnavailable("down")], 2),
        ([gexc.DeadlineExceeded("slow")], 1),
        ([gexc.PermissionDenied("no actAs")], 1),
        ([gexc.NotFound("queue not found")], 1),
        ([gexc.InvalidArgument("bad task")], 1),
    ],
)
def test_other_failures_raise_dispatch_error(errors, calls):
    client = FakeTasksClient(*errors)
    with pytest.raises(DispatchError):
        _dispatcher(client).dispatch(TaskPayload("c1", Kind.VIDEO))
    assert len(client.requests) == calls


def test_a_sweeper_redispatch_gets_a_new_task_name():
    """Cloud Tasks keeps a task name reserved for about an hour after it ran, so a deliberate
    re-dispatch must not reuse it (it would be swallowed as ALREADY_EXISTS)."""
    first, again = task_id_for("abc"), task_id_for("abc", 1)
    assert first != again and again == task_id_for("abc", 1)


# --- task_exists: Cloud Tasks at the client boundary, Celery on a real Redis ---------------------


class FakeGetTaskClient(FakeTasksClient):
    def get_task(self, request, **kwargs):
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_task_exists_asks_get_task_for_the_deterministic_name():
    """Real Cloud Tasks answers GetTask (the emulator does not, see the contract above): the
    name asked for is the one ``dispatch`` created for that dispatch number."""
    client = FakeGetTaskClient(object(), gexc.NotFound("gone"))
    d = _dispatcher(client)
    assert d.task_exists(TaskPayload("c1", Kind.VIDEO, dispatch=2)) is True
    assert d.task_exists(TaskPayload("c1", Kind.VIDEO, dispatch=2)) is False
    assert [r["name"] for r in client.requests] == [f"{QUEUE}/tasks/{task_id_for('c1', 2)}"] * 2


@pytest.mark.parametrize(
    "error", [gexc.ServiceUnavailable("down"), gexc.PermissionDenied("no get"), OSError("reset")]
)
def test_task_exists_raises_dispatch_error_when_the_queue_cannot_be_asked(error):
    """ "Could not ask" must never read as "gone": the sweeper would re-send a waiting task."""
    with pytest.raises(DispatchError):
        _dispatcher(FakeGetTaskClient(error)).task_exists(TaskPayload("c1", Kind.IMAGE))


@pytest.fixture(scope="module")
def redis_url():
    from tools.servers import redis_server

    with redis_server() as server:
        yield server.url


def test_celery_task_exists_while_the_message_waits_in_redis(redis_url):
    """The legacy path answers from Redis: the queue list (and kombu's unacked hash, i.e. a
    worker holds it). Here no worker runs; taking the message off the list stands for one."""
    import redis

    from common.adapters import celery_dispatch
    from common.adapters.celery_dispatch import CeleryDispatcher, sender_app

    url = redis_url
    d = CeleryDispatcher(sender_app(url))
    cid = uuid.uuid4().hex
    first, again = TaskPayload(cid, Kind.VIDEO), TaskPayload(cid, Kind.VIDEO, dispatch=1)
    d.dispatch(first)
    assert d.task_exists(first) is True
    celery_dispatch.SNAPSHOT_TTL_S, ttl = 0.0, celery_dispatch.SNAPSHOT_TTL_S
    try:
        assert d.task_exists(again) is False
        r = redis.Redis.from_url(url)
        raw = r.lpop(celery_dispatch.LEGACY_QUEUE)
        assert raw is not None and d.task_exists(first) is False
        r.hset(celery_dispatch.UNACKED_KEY, "tag", json.dumps([json.loads(raw), "", "celery"]))
        assert d.task_exists(first) is True  # delivered, not acknowledged: it will still run
        r.delete(celery_dispatch.UNACKED_KEY)
    finally:
        celery_dispatch.SNAPSHOT_TTL_S = ttl


def test_celery_task_exists_raises_when_redis_is_down():
    from common.adapters.celery_dispatch import CeleryDispatcher, sender_app

    d = CeleryDispatcher(sender_app(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(DispatchError):
        d.task_exists(TaskPayload("c1", Kind.IMAGE))


def test_cloud_tasks_cancel_deletes_every_dispatch_and_stop_execution_cancels_the_execution(
    monkeypatch,
):
    client = FakeTasksClient()
    dispatcher = _dispatcher(client)
    posted: list[str] = []
    monkeypatch.setattr(dispatcher, "_post", lambda url: posted.append(url) or 200)
    execution = "jobs/phoenix-video-job/executions/phoenix-video-job-ab1cd"
    creation = _cancelled("c1", dispatches=2, execution=execution)
    done = dispatcher.cancel(creation)
    assert client.deleted == [f"{QUEUE}/tasks/{task_id_for('c1', n)}" for n in range(3)]
    assert done == [
        f"deleted task {QUEUE}/tasks/{task_id_for('c1', 0)}",
        f"deleted task {QUEUE}/tasks/{task_id_for('c1', 2)}",
    ]
    assert posted == []  # withdrawing queued tasks never touches a running execution
    assert dispatcher.stop_execution(creation) is True
    assert posted == [
        "https://run.googleapis.com/v2/projects/phoenix-test/locations/us-central1/"
        f"{execution}:cancel"
    ]
    # A recorded id that is not a Cloud Run execution (local, Celery) is never sent anywhere.
    posted.clear()
    assert dispatcher.stop_execution(_cancelled("c2", execution="celery/abc")) is False
    assert posted == []
