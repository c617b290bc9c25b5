"""At-least-once delivery at scale: 50 creations, each delivered 10 times at the same moment to
real job processes (the job entrypoint ``common.job_main.main``) sharing one SQLite store.

Cloud Tasks, Celery and the sweeper may all deliver a creation more than once, and every Veo call
is billed, so the product's promise is "generated once". The lease claim is what keeps it: of
the 10 processes started together for one creation exactly one may claim and generate; the other
nine must back off with exit code 0 (a non-zero exit would make Cloud Run retry a duplicate).

Overlap is made certain, not hoped for: the jobs run through ``tests.support.gated_job``, which
holds the winner between its claim and its generation until the test opens a gate, and the test
opens it only once the nine other deliveries have exited. So all 450 duplicates must have met a
LIVE lease (``job_duplicate_delivery_lease_live``), none a finished record; the assertion says
exactly that.

How we count, without touching product code: every generator invocation is preceded by exactly
one ``job_claimed`` log event (``run_job`` logs it right before calling the generator), so the
JSON log lines of all 500 processes give the number of generations; the records must show
``attempts == 1``; and the media directory must hold exactly one PNG per creation.

Shown to fail when the mechanism breaks (scratch branch scratch/promises-break-claim,
2026-12-01, run with CREATIONS = 3 to fit a busy shared machine): with ``lifecycle.claim``
letting a second owner past a live lease, the first creation was claimed 3 times and the test
failed on ``counts["job_claimed"] == 1``.

Scheduling: 500 interpreters at once would thrash a 2-core machine, so launches go through a
pool of at most ``MAX_PROCESSES`` concurrent processes, but the 10 deliveries of one creation are
always launched together (one group takes 10 slots at once) so they really overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jobs.image.main  # noqa: F401  (Pants: ship the job module into the test sandbox)
import tests.support.gated_job  # noqa: F401  (the entrypoint the deliveries run)
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status

CREATIONS = 50
DELIVERIES = 10
MAX_PROCESSES = 16
PROMPT = "duplicate delivery #{n}"
# How long a group may take to show that its 9 duplicates backed off while the winner waits.
GATE_OPEN_AFTER_S = 120.0
PROCESS_TIMEOUT_S = 120.0
TOTAL_BUDGET_S = 600.0

EVENTS = (
    "job_claimed",
    "job_completed",
    "job_duplicate_delivery_lease_live",
    "job_duplicate_delivery_after_finish",
)


class GroupSlots:
    """A counting semaphore whose ``acquire(n)`` takes n slots atomically: a group of 10
    deliveries starts only when all 10 can start together, and the total stays bounded."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._free >= n)
            self._free -= n

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._free += n
            self._cond.notify_all()


@dataclass
class Delivery:
    creation_id: str
    exit_code: int | None = None
    events: list[str] = field(default_factory=list)
    output: str = ""


def _job_env(data_dir: Path, gate_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(
        PHOENIX_DATA_DIR=str(data_dir),
        PHOENIX_LOG_FORMAT="json",
        PHOENIX_TEST_GATE_DIR=str(gate_dir),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PYTHONUNBUFFERED="1",
    )
    return env


def _events(output: str) -> list[str]:
    found = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") in EVENTS:
            found.append(record["message"])
    return found


def _deliver_group(
    creation_id: str, env: dict[str, str], logs: Path, gate_dir: Path, slots: GroupSlots
) -> list[Delivery]:
    cmd = [sys.executable, "-m", "tests.support.gated_job", "image", "--creation-id", creation_id]
    slots.acquire(DELIVERIES)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    released = 0
    try:
        # Back to back: the 10 interpreters start within a few milliseconds of each other.
        for i in range(DELIVERIES):
            log_path = logs / f"{creation_id}.{i}.log"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=logs,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append((proc, log_path))
        # The winner waits at the gate holding its lease; open it once the other nine are gone
        # (or, if the claim is broken and several wait there, once a second claim shows up).
        deadline = time.monotonic() + GATE_OPEN_AFTER_S
        while time.monotonic() < deadline:
            exited = sum(1 for proc, _ in procs if proc.poll() is not None)
            if exited >= DELIVERIES - 1:
                break
            claims = sum(
                _events(p.read_text(errors="replace")).count("job_claimed") for _, p in procs
            )
            if claims > 1:
                break
            time.sleep(0.05)
        (gate_dir / creation_id).touch()
        deliveries = []
        for proc, log_path in procs:
            try:
                proc.wait(timeout=PROCESS_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                slots.release()
                released += 1
            output = log_path.read_text(errors="replace")
            deliveries.append(Delivery(creation_id, proc.returncode, _events(output), output))
        return deliveries
    except BaseException:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        slots.release(DELIVERIES - released)
        raise


def test_fifty_creations_delivered_ten_times_each_are_generated_exactly_once(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    store = SqliteCreationStore(settings.sqlite_path)
    ids = []
    for n in range(CREATIONS):
        c = lc.new(
            user_id=f"user-{n % 5}",
            kind=Kind.IMAGE,
            prompt=PROMPT.format(n=n),
            params={"aspect_ratio": "1:1", "count": 1},
            path="local",
            now=lc.utcnow(),
        )
        store.add(c)
        ids.append(c.id)

    logs = tmp_path / "logs"
    logs.mkdir()
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    env = _job_env(tmp_path, gate_dir)
    slots = GroupSlots(MAX_PROCESSES)
    started = time.monotonic()
    # Enough group threads that a new group is always waiting for slots; the slots (not the
    # threads) bound the number of live processes.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_deliver_group, cid, env, logs, gate_dir, slots) for cid in ids]
        results = [d for f in futures for d in f.result(timeout=TOTAL_BUDGET_S)]
    elapsed = time.monotonic() - started

    per_creation: dict[str, Counter[str]] = {cid: Counter() for cid in ids}
    for d in results:
        per_creation[d.creation_id].update(d.events)
    totals: Counter[str] = Counter()
    for counts in per_creation.values():
        totals.update(counts)
    exit_codes = Counter(d.exit_code for d in results)
    print(
        f"\nduplicate delivery: {len(results)} job processes for {CREATIONS} creations "
        f"(x{DELIVERIES}, <= {MAX_PROCESSES} at once) in {elapsed:.1f}s; "
        f"exit codes {dict(exit_codes)}; claims={totals['job_claimed']} "
        f"completed={totals['job_completed']} "
        f"backed off on a live lease={totals['job_duplicate_delivery_lease_live']} "
        f"backed off after finish={totals['job_duplicate_delivery_after_finish']}"
    )

    assert len(results) == CREATIONS * DELIVERIES
    bad = [d for d in results if d.exit_code != 0]
    assert not bad, "\n---\n".join(d.output for d in bad[:3])
    # Exactly one generation per creation: one claim (and one completion) in 10 deliveries,
    # the 9 others backed off as duplicates.
    for cid, counts in per_creation.items():
        assert counts["job_claimed"] == 1, (cid, counts)
        assert counts["job_completed"] == 1, (cid, counts)
        backed_off = (
            counts["job_duplicate_delivery_lease_live"]
            + counts["job_duplicate_delivery_after_finish"]
        )
        assert backed_off == DELIVERIES - 1, (cid, counts)
    assert totals["job_claimed"] == CREATIONS
    assert totals["job_completed"] == CREATIONS
    # The race was real and certain (the gate): every duplicate met the winner's live lease.
    assert totals["job_duplicate_delivery_lease_live"] == CREATIONS * (DELIVERIES - 1), totals
    assert totals["job_duplicate_delivery_after_finish"] == 0, totals

    records = [store.get(cid) for cid in ids]
    assert all(r is not None for r in records)
    assert sorted(r.status.value for r in records if r) == ["completed"] * CREATIONS
    for r in records:
        assert r is not None
        assert r.status is Status.COMPLETED and r.attempts == 1 and r.error is None, r
        (ref,) = r.media  # keyed per claim: <id>/<claim token>/0.png
        assert ref.key.startswith(f"{r.id}/1-") and ref.key.endswith("/0.png")
    # One artefact per creation on disk and no half-written temp files.
    files = sorted(
        p.relative_to(settings.media_dir).as_posix()
        for p in settings.media_dir.rglob("*")
        if p.is_file()
    )
    assert files == sorted(r.media[0].key for r in records if r)
    store.close()
