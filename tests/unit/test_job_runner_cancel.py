"""The job and a cancel, over in-memory fakes: a delivery after a cancel never reaches the
generator; a cancel requested mid-generation stops the job at its next lease renewal with
nothing stored; a cancel that lands after the media were written removes them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import GenerationError
from common.job_runner import EXIT_DONE, JobDeps, run_job
from common.ports import GeneratedMedia, Generator

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PNG = [GeneratedMedia(mime_type="image/png", data=b"\x89PNG fake")]


class PollingGenerator(Generator):
    """Like the Veo path: record an operation, then poll, reporting progress each time; a
    callback fires at a chosen poll (the user pressing Cancel)."""

    def __init__(self, *, polls=10, at_poll=None, on_poll=lambda: None, result=PNG, error=None):
        self.polls = polls
        self.at_poll = at_poll
        self.on_poll = on_poll
        self.result = result
        self.error = error
        self.calls = 0
        self.polled = 0
        self.released_slot = False

    def generate(self, kind, prompt, params, ctx):
        self.calls += 1
        try:
            ctx.record_operation("projects/p/operations/veo-1")
            for i in range(self.polls):
                self.polled += 1
                if i == self.at_poll:
                    self.on_poll()
                ctx.report_progress(10 + i)
            if self.error:
                raise self.error
            return self.result
        finally:
            self.released_slot = True  # what the Veo generator's slot release does


@pytest.fixture
def store():
    return InMemoryCreationStore()


def deps_for(store, gen, tmp_path, **kw):
    return JobDeps(
        store=store,
        generator=gen,
        media=LocalMediaStore(tmp_path / "media"),
        clock=lambda: T0,
        lease=timedelta(seconds=60),
        **kw,
    )


def add(store, kind=Kind.VIDEO):
    c = lc.new(user_id="u", kind=kind, prompt="p", params={}, path="local", now=T0)
    store.add(c)
    return c.id


def request_cancel(store, cid):
    return lambda: store.update(cid, lambda c: lc.cancel(c, now=T0))


def test_a_delivery_after_a_cancel_exits_zero_without_calling_the_generator(store, tmp_path):
    cid = add(store)
    store.update(cid, lambda c: lc.cancel(c, now=T0))
    gen = PollingGenerator()
    out = run_job(cid, Kind.VIDEO, deps_for(store, gen, tmp_path), owner="late")
    assert out.exit_code == EXIT_DONE and out.status == "finished"
    assert gen.calls == 0 and store.get(cid).attempts == 0


def test_a_cancel_mid_generation_stops_at_the_next_renewal_and_stores_nothing(store, tmp_path):
    """Shown failing: with the cancel check removed from ``_require_lease`` (scratch break),
    this file failed 5 cases, test_cancel_lifecycle 9 and test_cancel_running both running-job
    cases."""
    cid = add(store)
    gen = PollingGenerator(polls=10, at_poll=3, on_poll=request_cancel(store, cid))
    out = run_job(
        cid, Kind.VIDEO, deps_for(store, gen, tmp_path), owner="a", execution="jobs/j/executions/e"
    )
    assert out.exit_code == EXIT_DONE and out.status == "cancelled"
    assert gen.polled == 4  # the poll during which cancel arrived was the last one
    assert gen.released_slot
    c = store.get(cid)
    assert c.status is Status.CANCELLED and c.media == () and c.progress == 12
    assert c.provider_started is True  # the operation had been recorded
    assert c.execution == "jobs/j/executions/e"
    assert not (tmp_path / "media" / cid).exists()


def test_a_cancel_after_the_provider_returned_stores_nothing(store, tmp_path):
    cid = add(store, Kind.IMAGE)
    gen = PollingGenerator(polls=1)
    deps = deps_for(store, gen, tmp_path)
    deps.on_phase = lambda phase, c: phase == "generated" and request_cancel(store, cid)()
    out = run_job(cid, Kind.IMAGE, deps, owner="a")
    assert out.status == "cancelled"
    c = store.get(cid)
    assert c.status is Status.CANCELLED and c.provider_started is True
    assert not (tmp_path / "media" / cid).exists()


def test_a_cancel_after_the_media_were_written_removes_them(store, tmp_path):
    """Cancel wins over a completion that has not committed yet: the user said they do not want
    it, so the files go too."""
    cid = add(store, Kind.IMAGE)
    gen = PollingGenerator(polls=1)
    deps = deps_for(store, gen, tmp_path)
    seen = []

    def on_phase(phase, c):
        if phase == "stored":
            folder = tmp_path / "media" / cid  # <id>/<claim token>/0.png: keyed per claim
            seen.append(sorted(p.name for p in folder.rglob("*") if p.is_file()))
            request_cancel(store, cid)()

    deps.on_phase = on_phase
    out = run_job(cid, Kind.IMAGE, deps, owner="a")
    assert seen == [["0.png"]]  # the file existed when the cancel landed
    assert out.status == "cancelled"
    assert store.get(cid).status is Status.CANCELLED and store.get(cid).media == ()
    assert not (tmp_path / "media" / cid).exists()


def test_a_retryable_failure_after_a_cancel_request_ends_cancelled_not_pending(store, tmp_path):
    cid = add(store)
    gen = PollingGenerator(
        polls=1,
        error=GenerationError("quota_exhausted", "429", retryable=True),
    )
    deps = deps_for(store, gen, tmp_path)
    # The request lands after the last renewal: only the release tells the job.
    gen.on_poll, gen.at_poll = (lambda: None), None
    orig = gen.generate

    def generate(*a, **kw):
        try:
            return orig(*a, **kw)
        finally:
            request_cancel(store, cid)()

    gen.generate = generate  # type: ignore[method-assign]
    out = run_job(cid, Kind.VIDEO, deps, owner="a")
    assert out.exit_code == EXIT_DONE and out.status == "cancelled"
    assert store.get(cid).status is Status.CANCELLED


def test_a_takeover_of_a_cancel_requested_creation_ends_it_without_generating(store, tmp_path):
    cid = add(store)
    store.update(
        cid,
        lambda c: lc.claim(
            c,
            owner="dead",
            now=T0 - timedelta(minutes=5),
            lease=timedelta(seconds=60),
            max_attempts=3,
        ),
    )
    store.update(cid, lambda c: lc.cancel(c, now=T0 - timedelta(minutes=4, seconds=30)))
    gen = PollingGenerator()
    out = run_job(cid, Kind.VIDEO, deps_for(store, gen, tmp_path), owner="b")
    assert out.status == "cancelled" and gen.calls == 0
    assert store.get(cid).status is Status.CANCELLED


def test_a_job_stopped_by_sigterm_after_a_cancel_ends_it_cancelled_not_handed_back(store, tmp_path):
    """The API's backstop cancels the Cloud Run execution (SIGTERM -> Terminated -> hand_back):
    a cancelled creation is not handed back for another attempt, it ends cancelled."""
    from common.job_runner import hand_back

    cid = add(store)
    store.update(
        cid,
        lambda c: lc.claim(c, owner="a", now=T0, lease=timedelta(seconds=60), max_attempts=3),
    )
    store.update(cid, lambda c: lc.cancel(c, now=T0))
    out = hand_back(cid, deps_for(store, PollingGenerator(), tmp_path), owner="a")
    assert out.status == "cancelled" and out.exit_code == EXIT_DONE
    c = store.get(cid)
    assert c.status is Status.CANCELLED and c.attempts == 1
