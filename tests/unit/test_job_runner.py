"""The job's service layer over in-memory fakes: outcomes, exit codes and what gets stored."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import GenerationError
from common.job_runner import EXIT_DONE, EXIT_RETRY, JobDeps, media_token, run_job
from common.ports import GeneratedMedia, Generator

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class ScriptedGenerator(Generator):
    """Plays back a list of results/exceptions, one per call, and counts calls."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = 0
        self.seen_operations: list[str | None] = []

    def generate(self, kind, prompt, params, ctx):
        self.calls += 1
        self.seen_operations.append(ctx.existing_operation)
        ctx.report_progress(50)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if step == "record-op-then-crash":
            ctx.record_operation("operations/42")
            raise RuntimeError("killed after the provider call")
        return step


@pytest.fixture
def store():
    return InMemoryCreationStore()


def deps_for(store, gen, tmp_path, **kw):
    return JobDeps(
        store=store, generator=gen, media=LocalMediaStore(tmp_path), clock=lambda: T0, **kw
    )


def add(store, kind=Kind.IMAGE):
    c = lc.new(user_id="u", kind=kind, prompt="p", params={}, path="local", now=T0)
    store.add(c)
    return c.id


PNG = [GeneratedMedia(mime_type="image/png", data=b"\x89PNG fake")]


def test_success_stores_media_and_completes(store, tmp_path):
    cid = add(store)
    out = run_job(cid, Kind.IMAGE, deps_for(store, ScriptedGenerator(PNG), tmp_path), owner="a")
    assert out.exit_code == EXIT_DONE and out.status == "completed"
    c = store.get(cid)
    assert c.status is Status.COMPLETED and c.progress == 100
    token = media_token(c.claims, "a")
    assert [m.key for m in c.media] == [f"{cid}/{token}/0.png"]
    assert (tmp_path / cid / token / "0.png").read_bytes() == b"\x89PNG fake"


def test_permanent_failure_is_recorded_and_not_retried(store, tmp_path):
    cid = add(store)
    gen = ScriptedGenerator(GenerationError("content_filtered", "blocked", retryable=False))
    out = run_job(cid, Kind.IMAGE, deps_for(store, gen, tmp_path), owner="a")
    assert out.exit_code == EXIT_DONE
    c = store.get(cid)
    assert c.status is Status.FAILED and c.error.code == "content_filtered"


def test_retryable_failure_exits_nonzero_then_fails_after_max_attempts(store, tmp_path):
    """Shown to fail when every generation error is treated as permanent (scratch branch
    scratch/promises-break-retryable, 2026-12-01)."""
    cid = add(store)
    quota = GenerationError("quota_exhausted", "429", retryable=True)
    gen = ScriptedGenerator(quota, quota)
    deps = deps_for(store, gen, tmp_path, max_attempts=2)
    assert run_job(cid, Kind.IMAGE, deps, owner="a").exit_code == EXIT_RETRY
    assert store.get(cid).status is Status.PENDING
    out = run_job(cid, Kind.IMAGE, deps, owner="b")
    assert out.exit_code == EXIT_DONE and out.status == "failed"
    assert store.get(cid).error.code == "quota_exhausted"
    assert gen.calls == 2


def test_unknown_exception_is_retryable_and_the_operation_is_resumed(store, tmp_path):
    cid = add(store, Kind.VIDEO)
    mp4 = [GeneratedMedia(mime_type="video/mp4", data=b"mp4")]
    gen = ScriptedGenerator("record-op-then-crash", mp4)
    deps = deps_for(store, gen, tmp_path)
    assert run_job(cid, Kind.VIDEO, deps, owner="a").exit_code == EXIT_RETRY
    assert store.get(cid).error.code == "internal_error"
    assert run_job(cid, Kind.VIDEO, deps, owner="b").status == "completed"
    assert gen.seen_operations == [None, "operations/42"]


def test_duplicate_deliveries_are_noops(store, tmp_path):
    cid = add(store)
    gen = ScriptedGenerator(PNG)
    deps = deps_for(store, gen, tmp_path)
    store.update(
        cid,
        lambda c: lc.claim(c, owner="other", now=T0, lease=timedelta(minutes=2), max_attempts=3),
    )
    assert run_job(cid, Kind.IMAGE, deps, owner="a").status == "duplicate"
    assert gen.calls == 0


def test_delivery_after_completion_and_unknown_ids_exit_zero(store, tmp_path):
    cid = add(store)
    gen = ScriptedGenerator(PNG)
    deps = deps_for(store, gen, tmp_path)
    run_job(cid, Kind.IMAGE, deps, owner="a")
    assert run_job(cid, Kind.IMAGE, deps, owner="b").status == "finished"
    assert run_job("nope", Kind.IMAGE, deps, owner="b").status == "missing"
    assert gen.calls == 1


def test_wrong_kind_fails_permanently(store, tmp_path):
    cid = add(store, Kind.IMAGE)
    out = run_job(cid, Kind.VIDEO, deps_for(store, ScriptedGenerator(PNG), tmp_path), owner="a")
    assert out.exit_code == EXIT_DONE and store.get(cid).error.code == "wrong_job_kind"


class CountingStore(InMemoryCreationStore):
    def __init__(self):
        super().__init__()
        self.updates = 0

    def update(self, creation_id, change):
        self.updates += 1
        return super().update(creation_id, change)


class ChattyGenerator(Generator):
    """Reports the same progress many times, as a generator polling a slow provider does."""

    def generate(self, kind, prompt, params, ctx):
        for _ in range(50):
            ctx.report_progress(10)
        ctx.report_progress(60)
        return PNG


def test_repeated_progress_does_not_write_to_the_store_each_time(tmp_path):
    store = CountingStore()
    cid = add(store)
    out = run_job(cid, Kind.IMAGE, deps_for(store, ChattyGenerator(), tmp_path), owner="a")
    assert out.status == "completed"
    # claim + progress 10 + progress 60 + complete; the 49 repeats only heartbeat (throttled).
    assert store.updates == 4
