"""The legacy path end to end: CeleryDispatcher -> real redis-server -> real Celery worker process
running the shared ``run_job`` -> SQLite store, exactly as the side-by-side phase runs it."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest

from common.adapters.celery_dispatch import TASK_NAMES, CeleryDispatcher, sender_app
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import DispatchError
from common.domain.payload import TaskPayload
from tests.support.legacy_worker import (
    add_creation,
    legacy_worker,
    phoenix_env,
    redis_url,
    wait_terminal,
)


@pytest.fixture
def legacy(tmp_path):
    with redis_url() as url:
        env = phoenix_env(tmp_path / "data", url)
        settings = Settings.from_env(env)
        store = SqliteCreationStore(settings.sqlite_path)
        yield env, settings, store
        store.close()


def test_video_and_image_complete_through_celery(legacy, tmp_path):
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    with legacy_worker(env, tmp_path / "worker.log", concurrency=2):
        video = add_creation(store, Kind.VIDEO, "a red fox running in snow")
        image = add_creation(store, Kind.IMAGE, "a lighthouse at dusk")
        for c in (video, image):
            dispatcher.dispatch(TaskPayload(creation_id=c.id, kind=c.kind))
        done = wait_terminal(store, [video.id, image.id])
    for c in done.values():
        assert c.status is Status.COMPLETED, (c.status, c.error)
        assert c.path == "celery"
        assert c.attempts == 1
        assert c.claimed_at is not None and c.finished_at is not None
        assert c.media and (settings.media_dir / c.media[0].key).is_file()
    assert done[video.id].media[0].mime_type.startswith("video/")
    assert done[image.id].media[0].mime_type.startswith("image/")
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert TASK_NAMES[Kind.VIDEO] in log and TASK_NAMES[Kind.IMAGE] in log  # registered by name


def test_retryable_failure_is_retried_by_celery_then_fails_with_the_reason(legacy, tmp_path):
    """Shown to fail when every generation error is treated as permanent (scratch branch
    scratch/promises-break-retryable, 2026-12-01)."""
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    with legacy_worker(env, tmp_path / "worker.log", concurrency=1):
        c = add_creation(store, Kind.IMAGE, "[retry-fail:provider_unavailable] a cat")
        dispatcher.dispatch(TaskPayload(creation_id=c.id, kind=c.kind))
        final = wait_terminal(store, [c.id])[c.id]
    assert final.status is Status.FAILED
    assert final.error is not None and final.error.code == "provider_unavailable"
    assert "after 3 attempts" in (final.error.detail or "")
    assert final.attempts == settings.max_attempts == 3  # one Celery delivery per attempt
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert log.count("retry: Retry in") == 2, log[-3000:]  # Celery itself scheduled 2 retries


def test_permanent_failure_is_not_retried(legacy, tmp_path):
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    with legacy_worker(env, tmp_path / "worker.log", concurrency=1):
        c = add_creation(store, Kind.VIDEO, "[fail:safety_filtered] something")
        dispatcher.dispatch(TaskPayload(creation_id=c.id, kind=c.kind))
        final = wait_terminal(store, [c.id])[c.id]
    assert final.status is Status.FAILED and final.error.code == "safety_filtered"
    assert final.attempts == 1


def _job_events(log_text: str, creation_id: str) -> Counter[str]:
    """The job runner's JSON log events for one creation, from the worker's log."""
    events: Counter[str] = Counter()
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("creation_id") == creation_id:
            events[str(record.get("message"))] += 1
    return events


def test_a_duplicate_delivery_runs_and_is_a_no_op(legacy, tmp_path):
    """Both deliveries reach the worker and run the job; the second one meets the first one's
    live lease (``[slow:2]``, two worker processes) and backs off without generating."""
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    log_path = tmp_path / "worker.log"
    with legacy_worker(env, log_path, concurrency=2):
        c = add_creation(store, Kind.IMAGE, "[slow:2] twice delivered")
        payload = TaskPayload(creation_id=c.id, kind=c.kind)
        dispatcher.dispatch(payload)
        dispatcher.dispatch(payload)  # e.g. the sweeper re-sent it
        final = wait_terminal(store, [c.id])[c.id]
        # Wait (bounded) until the log shows what became of BOTH deliveries.
        deadline = time.monotonic() + 30
        while True:
            events = _job_events(log_path.read_text(errors="replace"), c.id)
            backed_off = (
                events["job_duplicate_delivery_lease_live"]
                + events["job_duplicate_delivery_after_finish"]
            )
            if (events["job_completed"] and backed_off) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        final = store.get(c.id)
    log = log_path.read_text(errors="replace")
    assert events["job_started"] == 2, (events, log[-3000:])  # the second delivery ran...
    assert events["job_claimed"] == 1 and events["job_completed"] == 1, events
    # ...and was a no-op: it met the live lease of the first (both were in flight together).
    assert events["job_duplicate_delivery_lease_live"] == 1, events
    assert events["job_duplicate_delivery_after_finish"] == 0, events
    assert final.status is Status.COMPLETED and final.attempts == 1
    (ref,) = final.media  # keyed per claim: <id>/<claim token>/0.png
    assert ref.key.startswith(f"{c.id}/") and ref.key.endswith("/0.png")
    files = [p for p in (settings.media_dir / c.id).rglob("*") if p.is_file()]
    assert [p.relative_to(settings.media_dir).as_posix() for p in files] == [ref.key]


def test_dispatch_fails_fast_when_redis_is_down():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    dispatcher = CeleryDispatcher(sender_app(f"redis://127.0.0.1:{port}/0"))
    started = time.monotonic()
    with pytest.raises(DispatchError, match="celery broker unavailable"):
        dispatcher.dispatch(TaskPayload(creation_id="abc123", kind=Kind.VIDEO))
    assert time.monotonic() - started < 5.0


def test_dispatch_fails_fast_when_redis_accepts_but_never_answers():
    # A half-open broker (failover, dead NAT entry): the bounded socket timeout must still
    # return control to the request thread in seconds.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        dispatcher = CeleryDispatcher(sender_app(f"redis://127.0.0.1:{hung.getsockname()[1]}/0"))
        started = time.monotonic()
        with pytest.raises(DispatchError):
            dispatcher.dispatch(TaskPayload(creation_id="abc123", kind=Kind.IMAGE))
        assert time.monotonic() - started < 10.0


def test_one_sender_app_per_broker_url():
    assert sender_app("redis://127.0.0.1:1/0") is sender_app("redis://127.0.0.1:1/0")
    assert sender_app("redis://127.0.0.1:1/0") is not sender_app("redis://127.0.0.1:1/1")


def test_legacy_celery_config_fixes_the_known_pitfalls():
    from jobs.legacy.celery_app import create_celery_app

    conf = create_celery_app(Settings()).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 2 * 3600
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"


def test_a_cancelled_creation_queued_behind_a_busy_worker_is_revoked_and_never_runs(
    legacy, tmp_path
):
    """One worker slot, busy with a slow creation; a second waits in Redis. Cancelling it
    revokes its Celery task: the worker discards the message without running the task body
    (no job, no claim, no provider call)."""
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    log_path = tmp_path / "worker.log"
    with legacy_worker(env, log_path, concurrency=1):
        busy = add_creation(store, Kind.IMAGE, "[slow:4] a long exposure of a harbour")
        dispatcher.dispatch(TaskPayload(creation_id=busy.id, kind=busy.kind))
        deadline = time.monotonic() + 60
        while store.get(busy.id).status is not Status.PROCESSING:
            assert time.monotonic() < deadline, "the busy creation was never claimed"
            time.sleep(0.05)
        queued = add_creation(store, Kind.IMAGE, "a lighthouse in fog")
        dispatcher.dispatch(TaskPayload(creation_id=queued.id, kind=queued.kind))
        cancelled = store.update(queued.id, lambda c: lc.cancel(c, now=lc.utcnow()))
        assert cancelled.status is Status.CANCELLED
        assert dispatcher.cancel(cancelled) == [f"revoked celery task(s) {queued.id}-d0"]
        assert store.get(busy.id).status is Status.PROCESSING  # the revoke came while queued
        done = wait_terminal(store, [busy.id])[busy.id]
        assert done.status is Status.COMPLETED
        deadline = time.monotonic() + 30
        while f"{queued.id}-d0" not in _revoked_lines(log_path):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
    final = store.get(queued.id)
    assert final.status is Status.CANCELLED and final.attempts == 0 and final.claimed_at is None
    log = log_path.read_text(errors="replace")
    started = [ln for ln in log.splitlines() if "job_started" in ln and queued.id in ln]
    assert started == []  # the task body never ran


def _revoked_lines(log_path) -> str:
    text = log_path.read_text(errors="replace")
    return "\n".join(ln for ln in text.splitlines() if "revoked" in ln.lower())
