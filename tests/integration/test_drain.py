"""``python -m jobs.legacy.drain`` against a real redis-server and a real Celery worker process."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from common.adapters.celery_dispatch import CeleryDispatcher
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.payload import TaskPayload
from tests.support.legacy_worker import (
    add_creation,
    legacy_worker,
    phoenix_env,
    redis_url,
    stop_process_group,
    wait_terminal,
)

POLL = re.compile(
    r"queued=(\d+) unacked=(\d+) active=(\d+) reserved=(\d+) scheduled=(\d+) workers=(\d+) "
    r"open_legacy_creations=(\d+)"
)


@pytest.fixture
def legacy(tmp_path):
    with redis_url() as url:
        env = phoenix_env(tmp_path / "data", url, PHOENIX_ROLLOUT="video=cloud-tasks:50,celery:50")
        settings = Settings.from_env(env)
        store = SqliteCreationStore(settings.sqlite_path)
        yield env, settings, store
        store.close()


def start_drain(env, *args):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.legacy.drain",
            "--poll-interval",
            "0.3",
            "--inspect-timeout",
            "0.5",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_drain(env, *args) -> tuple[int, str]:
    """The drain command to its end: (exit code, output)."""
    drain = start_drain(env, *args)
    try:
        out, _ = drain.communicate(timeout=60)
    finally:
        stop_process_group(drain)
    return drain.returncode, out


def read_until(proc, predicate, timeout: float) -> list[str]:
    """Lines read so far, stopping at the first line satisfying ``predicate``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if predicate(line):
            return lines
    raise AssertionError("expected output not seen:\n" + "\n".join(lines))


def polls(lines):
    return [tuple(map(int, m.groups())) for line in lines if (m := POLL.search(line))]


def test_drain_waits_for_queued_and_in_flight_work_then_succeeds(legacy, tmp_path):
    env, settings, store = legacy
    dispatcher = CeleryDispatcher.from_settings(settings)
    slow = add_creation(store, Kind.VIDEO, "[slow:3] a long one")
    quick = [add_creation(store, Kind.IMAGE, f"picture {i}") for i in range(2)]
    for c in [slow, *quick]:  # queued with no worker running yet
        dispatcher.dispatch(TaskPayload(creation_id=c.id, kind=c.kind))

    rollout_file = tmp_path / "rollout.flag"
    drain = start_drain(env, "--rollout-file", str(rollout_file), "--timeout", "90")
    try:
        head = read_until(drain, lambda line: "queued=3" in line, timeout=30)
        # (a) the flag: celery's share moved to cloud-tasks, every kind explicit.
        assert "PHOENIX_ROLLOUT=video=cloud-tasks:100;image=cloud-tasks:100" in head
        assert rollout_file.read_text().strip() == "video=cloud-tasks:100;image=cloud-tasks:100"
        assert "video 50%" in "\n".join(head) and "image 100%" in "\n".join(head)
        assert drain.poll() is None  # still waiting: 3 queued, no worker

        with legacy_worker(env, tmp_path / "worker.log", concurrency=1):
            rest, _ = drain.communicate(timeout=90)
            wait_terminal(store, [slow.id, *(c.id for c in quick)], timeout=10)
    finally:
        stop_process_group(drain)
    lines = head + rest.splitlines()
    assert drain.returncode == 0, "\n".join(lines)
    seen = polls(lines)
    assert seen[0][0] == 3 and seen[0][5] == 0  # queued, no workers
    # At some poll the slow creation was in flight on the worker while others still waited.
    assert any((active or unacked) and queued for queued, unacked, active, *_ in seen), seen
    assert seen[-1] == (0, 0, 0, 0, 0, 1, 0)
    assert "safe to delete" in lines[-1]
    assert all(store.get(c.id).status is Status.COMPLETED for c in [slow, *quick])


def test_drain_reports_a_stuck_legacy_creation_and_exits_non_zero(legacy, tmp_path):
    env, settings, store = legacy
    # A legacy creation claimed by a worker that died: processing, lease live, no message left.
    stuck = add_creation(store, Kind.VIDEO, "orphaned")
    store.update(
        stuck.id,
        lambda c: lc.claim(
            c, owner="celery-dead/1", now=lc.utcnow(), lease=timedelta(hours=1), max_attempts=3
        ),
    )
    # A creation on the new path is none of the drain's business.
    add_creation(store, Kind.VIDEO, "new path", path="cloud-tasks")

    returncode, out = run_drain(env, "--timeout", "2")
    assert returncode == 1, out
    assert "NOT drained after 2s" in out
    assert f"creation {stuck.id} (video) is processing on path celery" in out
    assert "Do not delete" in out
    assert "safe to delete" not in out
    assert polls(out.splitlines())[-1][:6] == (0, 0, 0, 0, 0, 0)


def test_drain_with_nothing_left_succeeds_at_once_and_prints_the_flag(legacy):
    env, _, _ = legacy
    returncode, out = run_drain(env, "--timeout", "30")
    assert returncode == 0, out
    assert "PHOENIX_ROLLOUT=video=cloud-tasks:100;image=cloud-tasks:100" in out
    assert "(or pass --rollout-file)" in out
    assert len(polls(out.splitlines())) == 1
