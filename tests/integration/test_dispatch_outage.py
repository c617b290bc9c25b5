"""A queue outage loses nothing: the record is written before the dispatch, a refused dispatch
answers 503 + Retry-After with the creation kept ``pending``, and once the queue is back the
sweeper dispatches every one of them, each exactly once, and each is generated exactly once.

Two versions:

* ``test_outage_..._complete_exactly_once``: the real app over a real SQLite store; the queue
  is a switchable dispatcher in front of in-process job workers running the product's
  ``run_job`` with the local generator (wrapped only to count invocations). 100 submissions
  during the outage, then ONE ``common.sweeper.sweep`` pass re-dispatches all 100 and all 100
  complete, each generated once.
* ``test_real_celery_broker_outage_...``: the real ``CeleryDispatcher`` against a real
  ``redis-server`` that is stopped during the submissions and restarted on the same port;
  one sweep later the broker's queue holds exactly one message per creation, and every refusal
  came back in under a second (no connect timeout waited out). (Running the legacy worker over
  them is covered by test_legacy_celery.py.)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from api.app import create_app
from common.adapters.local_generator import LocalGenerator
from common.adapters.local_media import LocalMediaStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import DispatchError
from common.domain.payload import TaskPayload
from common.job_runner import JobDeps, new_owner_id, run_job
from common.ports import Dispatcher, GenerationContext, Generator
from common.sweeper import SweepPolicy, sweep
from tests.support.sweep_counts import sweep_counts
from tools.servers import free_port, redis_argv, stop_process_group, wait_for_port

SUBMISSIONS = 100
USERS = 10
# The sweeper's policy for this test: re-dispatch a refused creation 0.2 s after the refusal
# (production: 10 s), and never re-send one that was dispatched (pending_timeout) within it.
POLICY = SweepPolicy(
    dispatch_grace=timedelta(seconds=0.2),  # pending_timeout: the default, 5 min
    max_dispatches=5,
    max_age=timedelta(hours=1),
)


class CountingGenerator(Generator):
    """The local generator, counting invocations per creation (test instrumentation only)."""

    def __init__(self) -> None:
        self.inner = LocalGenerator()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def generate(self, kind: Kind, prompt: str, params: dict, ctx: GenerationContext) -> list:
        with self._lock:
            self.calls[ctx.creation_id] += 1
        return self.inner.generate(kind, prompt, params, ctx)


class InProcessJobs(Dispatcher):
    """A queue whose consumer runs the product's job runner in worker threads."""

    name = "in-process"

    def __init__(self, deps: JobDeps, workers: int = 4) -> None:
        self._deps = deps
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._futures: list[Any] = []

    def dispatch(self, payload: TaskPayload) -> None:
        self._futures.append(self._pool.submit(self._run, payload))

    def _run(self, payload: TaskPayload) -> None:
        outcome = run_job(payload.creation_id, payload.kind, self._deps, owner=new_owner_id())
        with self._lock:
            self.outcomes[outcome.status] += 1

    def drain(self, timeout: float) -> None:
        for f in list(self._futures):
            f.result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class SwitchableQueue(Dispatcher):
    """Cloud Tasks / Redis stand-in that can be taken down: while down it refuses every
    dispatch with DispatchError, exactly what the real adapters raise."""

    name = "switchable"

    def __init__(self, consumer: Dispatcher) -> None:
        self.consumer = consumer
        self.up = True
        self.refused = 0
        self.accepted: Counter[str] = Counter()

    def dispatch(self, payload: TaskPayload) -> None:
        if not self.up:
            self.refused += 1
            raise DispatchError("queue unreachable: connection refused (simulated outage)")
        self.accepted[payload.creation_id] += 1
        self.consumer.dispatch(payload)


def _submit_all(client: Any) -> list[Any]:
    return [
        client.post(
            "/api/generate/image",
            json={"prompt": f"outage {i}", "count": 1, "aspect_ratio": "1:1"},
            headers={"X-Phoenix-User": f"user-{i % USERS}"},
        )
        for i in range(SUBMISSIONS)
    ]


def _assert_refused_and_kept(
    responses: list[Any], store: SqliteCreationStore, client: Any
) -> list[str]:
    ids = []
    for i, resp in enumerate(responses):
        assert resp.status_code == 503, resp.get_data(as_text=True)
        assert resp.headers["Retry-After"].isdigit() and int(resp.headers["Retry-After"]) > 0
        assert resp.headers["Cache-Control"] == "no-store"
        body = resp.get_json()
        assert body["error"]["code"] == "dispatch_unavailable"
        cid = body["error"]["creation_id"]
        assert resp.headers["Location"] == f"/api/creations/{cid}"
        ids.append(cid)
        record = store.get(cid)
        assert record is not None, "the record must exist although the dispatch failed"
        assert record.status is Status.PENDING and record.dispatches == 0
        assert record.dispatched_at is None and record.dispatch_error
        # The user can poll it: it is theirs and pending.
        poll = client.get(f"/api/creations/{cid}", headers={"X-Phoenix-User": f"user-{i % USERS}"})
        assert poll.status_code == 200 and poll.get_json()["status"] == "pending"
    assert len(set(ids)) == SUBMISSIONS
    return ids


def test_outage_submissions_get_503_then_all_complete_exactly_once(tmp_path: Path) -> None:
    """Shown to fail when the sweeper skips refused dispatches (scratch branch
    scratch/promises-break-sweep-refused, 2026-12-01): the one sweep re-dispatched 0 of 100."""
    settings = Settings(
        data_dir=tmp_path, dispatch="local", rate_limit_per_minute=0, max_active_per_user=0
    )
    store = SqliteCreationStore(settings.sqlite_path)
    media = LocalMediaStore(settings.media_dir)
    generator = CountingGenerator()
    jobs = InProcessJobs(JobDeps(store=store, generator=generator, media=media))
    queue = SwitchableQueue(jobs)
    app = create_app(settings, store=store, media=media, dispatchers=lambda path: queue)
    client = app.test_client()

    # --- the outage ---------------------------------------------------------------------
    queue.up = False
    t0 = time.monotonic()
    responses = _submit_all(client)
    outage_s = time.monotonic() - t0
    ids = _assert_refused_and_kept(responses, store, client)
    assert queue.refused == SUBMISSIONS

    # A sweep during the outage keeps them pending (and records why), loses nothing.
    time.sleep(POLICY.dispatch_grace.total_seconds() + 0.05)
    during = sweep(store, lambda path: queue, now=lc.utcnow(), policy=POLICY)
    assert len(during.errors) == SUBMISSIONS and not during.redispatched and not during.failed
    assert all(store.get(cid).status is Status.PENDING for cid in ids)  # type: ignore[union-attr]

    # --- recovery -------------------------------------------------------------------------
    queue.up = True
    t1 = time.monotonic()
    # ONE sweep re-dispatches all of them (what the README promises): no second chance.
    time.sleep(POLICY.dispatch_grace.total_seconds() + 0.05)
    report = sweep(store, lambda path: queue, now=lc.utcnow(), policy=POLICY)
    assert not report.failed and not report.errors, report
    redispatched = len(report.redispatched)
    rounds = 1
    assert redispatched == SUBMISSIONS, report
    jobs.drain(timeout=120)
    recovery_s = time.monotonic() - t1
    # Later sweeps find nothing to do: no creation is dispatched twice.
    for _ in range(2):
        again = sweep(store, lambda path: queue, now=lc.utcnow(), policy=POLICY)
        assert again.as_dict() == sweep_counts()
    jobs.drain(timeout=60)
    jobs.close()

    records = [store.get(cid) for cid in ids]
    statuses = Counter(r.status.value for r in records if r)
    print(
        f"\ndispatch outage: {SUBMISSIONS} submissions refused in {outage_s:.2f}s "
        f"(all 503 + Retry-After, all kept pending); recovery: {rounds} sweep round(s), "
        f"{redispatched} re-dispatched, statuses {dict(statuses)}, "
        f"generator calls {sum(generator.calls.values())}, job outcomes {dict(jobs.outcomes)}, "
        f"{recovery_s:.2f}s"
    )
    assert redispatched == SUBMISSIONS
    assert statuses == {"completed": SUBMISSIONS}
    for r in records:
        assert r is not None
        assert r.attempts == 1 and r.dispatches == 1 and r.dispatch_error is None, r
    assert queue.accepted == {cid: 1 for cid in ids}
    assert generator.calls == {cid: 1 for cid in ids}
    assert jobs.outcomes == {"completed": SUBMISSIONS}
    # And the API shows them completed to their owners.
    for i, cid in enumerate(ids):
        view = client.get(
            f"/api/creations/{cid}", headers={"X-Phoenix-User": f"user-{i % USERS}"}
        ).get_json()
        assert view["status"] == "completed" and len(view["media"]) == 1
    store.close()


# --- the real Celery adapter against a real Redis that goes away ---------------------------------


def _start_redis(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        redis_argv(binary, port, data_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def test_real_celery_broker_outage_then_sweeper_enqueues_each_creation_once(
    tmp_path: Path,
) -> None:
    from common.adapters.celery_dispatch import (
        CONNECT_TIMEOUT_S,
        LEGACY_QUEUE,
        CeleryDispatcher,
        sender_app,
    )

    # A refusal must not wait out even one connect timeout.
    FAIL_FAST_S = min(1.0, CONNECT_TIMEOUT_S)  # noqa: N806
    count = 20  # each refused publish costs a (bounded) connect attempt; 20 keeps this quick
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data_dir = tempfile.mkdtemp(prefix="phoenix-outage-redis-", dir=tmp_path)
    settings = Settings(
        data_dir=tmp_path,
        dispatch="celery",
        celery_broker_url=url,
        rate_limit_per_minute=0,
        max_active_per_user=0,
    )
    store = SqliteCreationStore(settings.sqlite_path)
    dispatcher = CeleryDispatcher(sender_app(url))
    app = create_app(
        settings,
        store=store,
        media=LocalMediaStore(settings.media_dir),
        dispatchers=lambda path: dispatcher,
    )
    client = app.test_client()
    proc = _start_redis(port, data_dir)
    try:
        # Warm the sender's connection pool while Redis is up, then take Redis away: the
        # pooled connection dies too, as in a real failover.
        ok = client.post("/api/generate/image", json={"prompt": "before the outage"})
        assert ok.status_code == 202, ok.get_data(as_text=True)
        stop_process_group(proc)

        slowest = 0.0
        ids = []
        for i in range(count):
            t = time.monotonic()
            resp = client.post("/api/generate/image", json={"prompt": f"redis down {i}"})
            slowest = max(slowest, time.monotonic() - t)
            assert resp.status_code == 503, resp.get_data(as_text=True)
            assert int(resp.headers["Retry-After"]) > 0
            ids.append(resp.get_json()["error"]["creation_id"])
        assert all(store.get(c).status is Status.PENDING for c in ids)  # type: ignore[union-attr]

        proc = _start_redis(port, data_dir)  # back, empty (no persistence), same address
        # One sweep after the broker is back re-sends every refused creation.
        time.sleep(POLICY.dispatch_grace.total_seconds() + 0.05)
        report = sweep(store, lambda path: dispatcher, now=lc.utcnow(), policy=POLICY)
        rounds = 1
        redispatched = len(report.redispatched)
        assert not report.errors, report
        queued = redis.Redis.from_url(url).llen(LEGACY_QUEUE)
        print(
            f"\ncelery outage: {count} submissions refused with 503 while redis was down "
            f"(slowest refusal {slowest * 1000:.0f} ms); after restart {rounds} sweep round(s) "
            f"re-dispatched {redispatched}; broker queue length {queued}"
        )
        assert redispatched == count
        assert queued == count  # exactly one message per refused creation
        for cid in ids:
            record = store.get(cid)
            assert record is not None and record.dispatches == 1 and record.dispatch_error is None
        # Fail fast: a refused connection waits for no timeout; the bound allows the one quick
        # publish retry (PUBLISH_RETRY_POLICY) and scheduling noise, far below one connect
        # timeout per attempt, let alone the request deadline.
        assert slowest < FAIL_FAST_S, f"slowest refusal took {slowest:.2f}s"
    finally:
        stop_process_group(proc)
        store.close()
