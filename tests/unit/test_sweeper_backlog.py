"""The sweeper asks the queue before it re-sends (issue 12, case 1).

A creation waiting in a long queue is not lost: re-sending it only adds executions, and failing
it after a few re-sends fails work that was merely waiting. ``Dispatcher.task_exists`` answers
"is this creation's last task still queued?"; the sweeper leaves such creations alone however
long the backlog, re-sends only when the task is known gone (or the lease expired), and fails
only for a real reason (``max_age``, attempts).

Tests whose docstring starts with "Before:" failed against the previous sweeper as described.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from common.adapters.memory_store import InMemoryCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, MediaRef, Status
from common.domain.errors import DispatchError
from common.ports import Dispatcher
from common.sweeper import SweepPolicy, sweep

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The production policy's numbers (PHOENIX_PENDING_TIMEOUT_SECONDS=300, 5 dispatches, 6 h).
POLICY = SweepPolicy()


class BacklogQueue(Dispatcher):
    """A FIFO queue of named tasks that launches ``rate`` jobs per minute, like Cloud Tasks in
    front of Cloud Run Jobs (cloud-tasks-queue.yaml: about 9 launches a minute)."""

    name = "backlog"

    def __init__(self, store, rate_per_minute: int = 9) -> None:
        self.store = store
        self.rate = rate_per_minute
        self.tasks: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.created = 0
        self.asked: list[tuple[str, int]] = []

    def dispatch(self, payload) -> None:
        self.created += 1
        self.tasks.setdefault((payload.creation_id, payload.dispatch), payload)

    def task_exists(self, payload) -> bool:
        self.asked.append((payload.creation_id, payload.dispatch))
        return (payload.creation_id, payload.dispatch) in self.tasks

    def launch_minute(self, now: datetime) -> None:
        """This minute's launches: each job claims and completes its creation at once."""
        for _ in range(min(self.rate, len(self.tasks))):
            (cid, _), _payload = self.tasks.popitem(last=False)
            self._run_job(cid, now)

    def _run_job(self, cid: str, now: datetime) -> None:
        owner, media = f"job-{cid}", (MediaRef(f"{cid}/x", "image/png"),)
        try:
            self.store.update(
                cid,
                lambda c: lc.claim(
                    c, owner=owner, now=now, lease=timedelta(minutes=2), max_attempts=3
                ),
            )
            self.store.update(cid, lambda c: lc.complete(c, owner=owner, now=now, media=media))
        except Exception:
            pass  # a duplicate delivery of a finished creation: nothing to do


def _accepted(store, queue, n: int, now: datetime) -> list[str]:
    """n creations accepted by the API: recorded, then dispatched (task 0)."""
    from common.domain.payload import TaskPayload

    ids = []
    for i in range(n):
        c = lc.new(user_id=f"u{i % 50}", kind=Kind.IMAGE, prompt="p", params={}, path="q", now=now)
        store.add(c)
        queue.dispatch(TaskPayload(creation_id=c.id, kind=c.kind, dispatch=0))
        store.update(c.id, lambda cur: lc.mark_dispatched(cur, now=now))
        ids.append(c.id)
    return ids


def test_a_backlog_far_beyond_the_queue_rate_is_neither_resent_nor_failed():
    """Before: with 1000 creations queued at 9 launches a minute, every creation waiting longer
    than the 5-minute pending timeout was re-sent (each later starting an execution) and after
    5 dispatches failed with ``dispatch_failed`` although it was only waiting.

    Shown to fail on 2026-12-01 with the sweeper not asking the queue (``exists = None``)
    (``scratch/reliability-break-sweeper-ignores-queue``).
    """
    store = InMemoryCreationStore()
    queue = BacklogQueue(store)
    ids = _accepted(store, queue, 1000, T0)
    now = T0
    for _ in range(200):  # 1000 / 9 per minute = 112 minutes to drain
        now += timedelta(minutes=1)
        queue.launch_minute(now)
        sweep(store, lambda path: queue, now=now, policy=POLICY, limit=2000)
        if not queue.tasks:
            break
    statuses = {store.get(cid).status for cid in ids}
    assert statuses == {Status.COMPLETED}
    assert queue.created == 1000  # not one re-send
    assert max(store.get(cid).dispatches for cid in ids) == 1


def test_a_task_known_gone_is_resent_and_not_failed_for_its_dispatch_count():
    """Before: after ``max_dispatches`` re-sends of a creation whose tasks vanished without a
    claim, the sweeper failed it with ``dispatch_failed``; now only max_age ends it.

    Shown to fail on 2026-12-01 with the sweeper not asking the queue (``exists = None``)
    (``scratch/reliability-break-sweeper-ignores-queue``).
    """
    store = InMemoryCreationStore()
    queue = BacklogQueue(store, rate_per_minute=0)
    (cid,) = _accepted(store, queue, 1, T0)
    now = T0
    for _ in range(8):
        queue.tasks.clear()  # the queue lost it (or launched an execution that never claimed)
        now += POLICY.pending_timeout + timedelta(seconds=1)
        report = sweep(store, lambda path: queue, now=now, policy=POLICY)
        assert report.redispatched == [cid] and report.failed == []
    assert store.get(cid).status is Status.PENDING and store.get(cid).dispatches == 9
    # It asked about the creation's LAST task each time (dispatch number = dispatches - 1).
    assert queue.asked == [(cid, n) for n in range(8)]
    late = T0 + POLICY.max_age + timedelta(seconds=1)
    assert sweep(store, lambda path: queue, now=late, policy=POLICY).failed == [cid]
    assert store.get(cid).error.code == "timed_out"


def test_an_expired_lease_is_resent_but_not_again_while_that_task_waits():
    """Before: a creation re-sent after its lease expired was re-sent again every pending
    timeout while its task still waited in the queue.

    Shown to fail on 2026-12-01 with the sweeper not asking the queue (``exists = None``)
    (``scratch/reliability-break-sweeper-ignores-queue``).
    """
    store = InMemoryCreationStore()
    queue = BacklogQueue(store, rate_per_minute=0)
    (cid,) = _accepted(store, queue, 1, T0)
    queue.tasks.clear()  # launched
    store.update(
        cid,
        lambda c: lc.claim(c, owner="dead", now=T0, lease=timedelta(minutes=2), max_attempts=3),
    )
    now = T0 + timedelta(minutes=3)
    assert sweep(store, lambda path: queue, now=now, policy=POLICY).redispatched == [cid]
    for minutes in range(10, 120, 10):  # the re-sent task waits in the backlog for 2 hours
        later = now + timedelta(minutes=minutes)
        assert sweep(store, lambda path: queue, now=later, policy=POLICY).redispatched == []
    assert queue.created == 2 and list(queue.tasks) == [(cid, 1)]


def test_a_queue_that_cannot_answer_leaves_the_record_alone_and_reports_it():
    """Guard: an outage of the queue's read API is not "the task is gone".

    Shown to fail on 2026-12-01 with the sweeper not asking the queue (``exists = None``)
    (``scratch/reliability-break-sweeper-ignores-queue``).
    """

    class Down(BacklogQueue):
        def task_exists(self, payload):
            raise DispatchError("cloud tasks unavailable")

    store = InMemoryCreationStore()
    queue = Down(store)
    (cid,) = _accepted(store, queue, 1, T0)
    report = sweep(store, lambda path: queue, now=T0 + timedelta(minutes=30), policy=POLICY)
    assert report.errors == [cid] and report.redispatched == [] and queue.created == 1
    assert store.get(cid).status is Status.PENDING


def test_a_dispatcher_that_cannot_tell_keeps_the_time_based_rules():
    """Guard: ``task_exists`` returning None (e.g. a recording dispatcher) falls back to the
    pending timeout and the dispatch limit, as before."""

    class Unknown(BacklogQueue):
        def task_exists(self, payload):
            return None

    store = InMemoryCreationStore()
    queue = Unknown(store, rate_per_minute=0)
    (cid,) = _accepted(store, queue, 1, T0)
    now = T0
    results = []
    for _ in range(6):
        now += POLICY.pending_timeout + timedelta(seconds=1)
        report = sweep(store, lambda path: queue, now=now, policy=POLICY)
        results.append((len(report.redispatched), len(report.failed)))
    assert results[:4] == [(1, 0)] * 4 and (0, 1) in results
    assert store.get(cid).error.code == "dispatch_failed"
