"""Crash recovery: SIGKILL video jobs at every dangerous point, then let the sweeper recover.

    benchmarks/run crash_recovery [--creations 42] [--seed 1]

What it proves, on real processes and a real SQLite store, with Veo played by the fake Vertex
server (``tools.standins.fake_vertex``, reached through the real google-genai client):

* every creation ends ``completed`` or ``failed`` with a reason; none is left pending/processing;
* Veo is never asked twice for one creation: ``predictLongRunning`` calls per creation <= 1, and
  == 1 for every completed one, because a retried job resumes the operation recorded on the
  creation instead of starting a new (billed) one.

Kill points (the first delivery of each creation dies at one of them, round robin):

``before_claim``        the process dies after start-up, before it claims the lease
``after_provider_call`` Veo accepted the operation and its name was recorded; die at once
``while_polling``       die on the first progress report while Veo runs
``during_store``        die in the middle of writing the video (a partial temp file is left)
``after_store``         the video is stored, the completion is not recorded
``random_time``         SIGKILL from outside after a random delay (0..4 s), wherever it lands

The self-inflicted kills are real ``SIGKILL``s of the job process, placed by wrapping the job
entrypoint (``common.job_main.main``) in this module's ``--child`` mode: the product code runs
unmodified; only the crash is injected (through ``JobDeps.on_phase`` and thin wrappers).

Recovery is the product's own: ``common.sweeper.sweep`` with a short policy re-dispatches
creations whose lease expired (``PHOENIX_LEASE_SECONDS=2``) or whose delivery never claimed
them; each re-dispatch runs a new job process. With ``--recrash P`` re-deliveries die again at
a random point with probability P, so some creations use up their attempts and must end
``failed`` with ``max_attempts_exceeded`` rather than loop or hang.

Known window, reported not hidden: between Veo accepting ``predictLongRunning`` and the job
recording the operation name (a few milliseconds), a kill cannot be recovered without a second
call: Veo has no idempotency key. Only ``random_time`` kills can land there; the run prints how
many creations were generated twice, and the fixed kill points never are.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common  # noqa: E402,F401  (puts src/python on sys.path)
from common.ports import Dispatcher  # noqa: E402

KILL_POINTS = (
    "before_claim",
    "after_provider_call",
    "while_polling",
    "during_store",
    "after_store",
    "random_time",
)
SELF_KILL_POINTS = KILL_POINTS[:-1]
CRASH_ENV = "CRASH_AT"  # kill point, "none", or "random:<p>" for re-deliveries
VERTEX_TOKEN = "crash-benchmark-token"
PROJECT = "phoenix-crash"
RANDOM_KILL_MAX_S = 4.0


# --- the child: the real job entrypoint with one crash injected -------------------------------


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash(point: str) -> None:
    """Arrange for this process to SIGKILL itself at ``point``. Imports are the product's."""
    from common import job_runner
    from common.adapters import local_media

    if point == "before_claim":
        real_run_job = job_runner.run_job

        def run_job_then_die(*args: Any, **kwargs: Any) -> Any:
            _die()
            return real_run_job(*args, **kwargs)  # pragma: no cover - never reached

        job_runner.run_job = run_job_then_die
    elif point == "after_provider_call":
        real_record = job_runner._Context.record_operation

        def record_then_die(self: Any, operation: str) -> None:
            real_record(self, operation)
            if operation:
                _die()

        job_runner._Context.record_operation = record_then_die  # type: ignore[method-assign]
    elif point == "while_polling":
        real_progress = job_runner._Context.report_progress

        def progress_then_die(self: Any, percent: int) -> None:
            real_progress(self, percent)
            if self.existing_operation:
                _die()

        job_runner._Context.report_progress = progress_then_die  # type: ignore[method-assign]
    elif point == "during_store":

        def half_written_put(self: Any, key: str, data: bytes, mime_type: str) -> Any:
            # What a kill in the middle of LocalMediaStore.put leaves: half the bytes in its
            # temp file, nothing under the final name.
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, _tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            os.write(fd, data[: len(data) // 2])
            _die()

        local_media.LocalMediaStore.put = half_written_put  # type: ignore[method-assign]
    elif point == "after_store":
        real_run_job = job_runner.run_job

        def run_job_dying_after_store(creation_id: str, kind: Any, deps: Any, **kw: Any) -> Any:
            def on_phase(phase: str, creation: Any) -> None:
                if phase == "stored":
                    _die()

            deps.on_phase = on_phase
            return real_run_job(creation_id, kind, deps, **kw)

        job_runner.run_job = run_job_dying_after_store
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crash-child")
    parser.add_argument("--kind", default="video")
    parser.add_argument("--creation-id", required=True)
    args = parser.parse_args(argv)
    point = os.environ.get(CRASH_ENV, "none")
    if point.startswith("random:"):
        # "random:<p>[:<seed>]": the parent derives the seed from --seed, the creation's index
        # and the delivery number, so a run's kill choices are reproducible.
        _, p_text, *seed = point.split(":", 2)
        rng = random.Random(seed[0] if seed else None)
        point = rng.choice(SELF_KILL_POINTS) if rng.random() < float(p_text) else "none"
    print(json.dumps({"message": "crash_child", "kill_point": point}), flush=True)
    install_crash(point)

    from common.domain.creation import Kind
    from common.job_main import main

    return main(Kind(args.kind), ["--creation-id", args.creation_id])


# --- the parent --------------------------------------------------------------------------------


def child_command(kind: str = "video") -> list[str]:
    return [sys.executable, "-m", "benchmarks.crash_recovery", "--child", "--kind", kind]


def child_env(data_dir: Path, vertex_url: str, crash: str, lease_s: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in sys.path if p)),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            CRASH_ENV: crash,
            "PHOENIX_DATA_DIR": str(data_dir),
            "PHOENIX_LOG_FORMAT": "json",
            "PHOENIX_GENERATOR": "vertex",
            "PHOENIX_GCP_PROJECT": PROJECT,
            "PHOENIX_GCP_LOCATION": "us-central1",
            "PHOENIX_VERTEX_BASE_URL": vertex_url,
            "PHOENIX_VERTEX_ACCESS_TOKEN": VERTEX_TOKEN,
            "PHOENIX_VEO_POLL_INITIAL_SECONDS": "0.2",
            "PHOENIX_VEO_POLL_MAX_SECONDS": "0.5",
            "PHOENIX_LEASE_SECONDS": str(lease_s),
            "PHOENIX_MAX_ATTEMPTS": "3",
            # The Veo slot cap is not what is measured here (its own tests cover it).
            "PHOENIX_VEO_MAX_CONCURRENT": "1000",
        }
    )
    return env


class ProcessDispatcher(Dispatcher):
    """The sweeper's dispatcher here: each dispatch runs one job process (no automatic retry,
    so every recovery in this run is the sweeper's doing), logs to a file, bounded pool."""

    name = "crash-bench"

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        max_parallel: int,
        seed_of: Callable[[str], str] | None = None,
    ) -> None:
        self._env = env
        self._seed_of = seed_of
        self._logs = logs
        self._pool = ThreadPoolExecutor(max_workers=max_parallel)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.executions = 0
        self.exit_codes: Counter[int] = Counter()
        self._live: Counter[tuple[str, int]] = Counter()

    def dispatch(self, payload: Any) -> None:
        with self._lock:
            self.in_flight += 1
            self.executions += 1
            n = self.executions
            self._live[(payload.creation_id, payload.dispatch)] += 1
        self._pool.submit(self._run, payload.creation_id, payload.kind.value, n, payload.dispatch)

    def task_exists(self, payload: Any) -> bool:
        """Queued in the pool or running: the sweeper leaves such a creation alone."""
        with self._lock:
            return self._live[(payload.creation_id, payload.dispatch)] > 0

    def _run(self, creation_id: str, kind: str, n: int, dispatch: int = 0) -> None:
        try:
            log = self._logs / f"{creation_id}.redelivery-{n}.log"
            with open(log, "wb") as out:
                env = dict(self._env)
                if self._seed_of and env.get(CRASH_ENV, "").startswith("random:"):
                    env[CRASH_ENV] += f":{self._seed_of(creation_id)}"
                proc = subprocess.Popen(
                    child_command(kind) + ["--creation-id", creation_id],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            with self._lock:
                self.exit_codes[code] += 1
        finally:
            with self._lock:
                self.in_flight -= 1
                self._live[(creation_id, dispatch)] -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class CrashReport:
    creations: int
    kill_points: Counter[str] = field(default_factory=Counter)
    # Where the random external kills landed, judged from the record right after the kill.
    random_landed: Counter[str] = field(default_factory=Counter)
    initial_exit_codes: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    failure_codes: Counter[str] = field(default_factory=Counter)
    attempts: Counter[int] = field(default_factory=Counter)
    veo_starts_per_creation: dict[str, int] = field(default_factory=dict)
    veo_polls: int = 0
    redeliveries: int = 0
    redelivery_exit_codes: Counter[int] = field(default_factory=Counter)
    # What each re-delivery did, from its log: claimed, backed off as a duplicate, or was
    # killed again (the injected kill point).
    redelivery_outcomes: Counter[str] = field(default_factory=Counter)
    sweeps: int = 0
    settle_seconds: float = 0.0
    total_seconds: float = 0.0
    leftover_temp_files: int = 0
    completed_without_media: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    @property
    def redundant_redeliveries(self) -> int:
        return sum(n for k, n in self.redelivery_outcomes.items() if k.startswith("duplicate"))

    @property
    def generated_twice(self) -> list[str]:
        return [cid for cid, n in self.veo_starts_per_creation.items() if n > 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "creations": self.creations,
            "kill_points": dict(sorted(self.kill_points.items())),
            "random_kills_landed": dict(sorted(self.random_landed.items())),
            "first_delivery_exit_codes": {str(k): v for k, v in self.initial_exit_codes.items()},
            "sweeps": self.sweeps,
            "redeliveries": self.redeliveries,
            "redelivery_exit_codes": {str(k): v for k, v in self.redelivery_exit_codes.items()},
            "redelivery_outcomes": dict(sorted(self.redelivery_outcomes.items())),
            "statuses": dict(self.statuses),
            "failure_codes": dict(self.failure_codes),
            "attempts": {str(k): v for k, v in sorted(self.attempts.items())},
            "stuck": len(self.stuck),
            "veo_predict_long_running_calls": sum(self.veo_starts_per_creation.values()),
            "generated_twice": len(self.generated_twice),
            "veo_polls": self.veo_polls,
            "completed_without_media": len(self.completed_without_media),
            "leftover_temp_files": self.leftover_temp_files,
            "settle_seconds": round(self.settle_seconds, 1),
            "total_seconds": round(self.total_seconds, 1),
        }

    def lines(self) -> list[str]:
        starts = sum(self.veo_starts_per_creation.values())
        return [
            f"creations: {self.creations}",
            f"first-delivery kill points: {dict(sorted(self.kill_points.items()))}",
            f"random kills landed: {dict(sorted(self.random_landed.items()))}",
            f"first-delivery exit codes: {dict(self.initial_exit_codes)}",
            f"sweeps: {self.sweeps}, re-deliveries: {self.redeliveries}, "
            f"their exit codes: {dict(self.redelivery_exit_codes)}; "
            f"outcomes: {dict(sorted(self.redelivery_outcomes.items()))}",
            f"re-deliveries that found nothing to do (duplicates): {self.redundant_redeliveries}",
            f"final statuses: {dict(self.statuses)}; failure codes: {dict(self.failure_codes)}",
            f"attempts per creation: {dict(sorted(self.attempts.items()))}",
            f"stuck (pending/processing): {len(self.stuck)}",
            f"Veo predictLongRunning calls: {starts} for {self.creations} creations; "
            f"creations generated twice: {len(self.generated_twice)}; "
            f"fetchPredictOperation polls: {self.veo_polls}",
            f"completed without media: {len(self.completed_without_media)}; "
            f"leftover partial temp files: {self.leftover_temp_files}",
            f"settled {self.settle_seconds:.1f}s after the last first delivery; "
            f"total {self.total_seconds:.1f}s",
        ]


_OUTCOME_EVENTS = {
    "job_claimed": "claimed",
    "job_duplicate_delivery_lease_live": "duplicate (lease live)",
    "job_duplicate_delivery_after_finish": "duplicate (already finished)",
    "job_out_of_attempts": "out of attempts",
}


def redelivery_outcomes(logs: Path) -> Counter[str]:
    """Reads each re-delivery's JSON log: what it did, and whether it was killed again."""
    outcomes: Counter[str] = Counter()
    for path in logs.glob("*.redelivery-*.log"):
        kill, did = "none", "no claim logged"
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("message") == "crash_child":
                kill = record.get("kill_point", "none")
            elif record.get("message") in _OUTCOME_EVENTS:
                did = _OUTCOME_EVENTS[record["message"]]
        outcomes[did if kill == "none" else f"{did}, killed at {kill}"] += 1
    return outcomes


def _classify(record: Any, media_dir: Path) -> str:
    """Where a random kill landed, from the state it left behind."""
    if record.status.value == "completed":
        return "after_completion"
    if record.status.value == "pending" and record.attempts == 0:
        return "before_claim"
    if record.operation:
        stored = any((media_dir / record.id).rglob("0.mp4"))
        return "after_store" if stored else "while_veo_runs"
    return "after_claim_before_operation_recorded"


def run(
    *,
    creations: int = 42,
    work: Path,
    recrash: float = 0.0,
    lease_s: int = 2,
    polls_before_done: int = 6,
    parallel: int = 4,
    settle_timeout: float = 300.0,
    sweep_every: float = 2.0,
    kill_points: tuple[str, ...] = KILL_POINTS,
    seed: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> CrashReport:
    from common.adapters.sqlite_store import SqliteCreationStore
    from common.config import Settings
    from common.domain import creation as lc
    from common.domain.creation import Kind
    from common.sweeper import SweepPolicy, sweep
    from tools.standins.fake_vertex import FakeVertexServer

    rng = random.Random(seed)
    started = time.monotonic()
    settings = Settings(data_dir=work)
    store = SqliteCreationStore(settings.sqlite_path)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = CrashReport(creations=creations)

    with FakeVertexServer(polls_before_done=polls_before_done) as fake:
        # The first call renders the fake's MP4 with ffmpeg; do it now, not inside a job's poll.
        fake.video_provider()
        ids: list[str] = []
        prompts: dict[str, str] = {}
        plan: dict[str, str] = {}
        kill_delay: dict[str, float] = {}
        for n in range(creations):
            prompt = f"crash recovery clip #{n}"
            c = lc.new(
                user_id=f"user-{n % 3}",
                kind=Kind.VIDEO,
                prompt=prompt,
                params={"aspect_ratio": "16:9", "duration_seconds": 4},
                path="local",
                now=lc.utcnow(),
            )
            # Dispatched, as the API would have recorded it before the job ran.
            store.add(lc.mark_dispatched(c, now=lc.utcnow()))
            ids.append(c.id)
            prompts[c.id] = prompt
            plan[c.id] = kill_points[n % len(kill_points)]
            # Drawn here, in creation order, so the same seed gives the same delay per creation
            # whatever order the pool's threads run in.
            kill_delay[c.id] = rng.uniform(0.0, RANDOM_KILL_MAX_S)
        report.kill_points.update(plan.values())

        lock = threading.Lock()

        def first_delivery(cid: str) -> None:
            point = plan[cid]
            env = child_env(work, fake.url, "none" if point == "random_time" else point, lease_s)
            with open(logs / f"{cid}.first.log", "wb") as out:
                proc = subprocess.Popen(
                    child_command() + ["--creation-id", cid],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                if point == "random_time":
                    try:
                        proc.wait(timeout=kill_delay[cid])
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            landed = None
            if point == "random_time":
                record = store.get(cid)
                landed = _classify(record, settings.media_dir)
            with lock:
                report.initial_exit_codes[code] += 1
                if landed:
                    report.random_landed[landed] += 1

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(first_delivery, ids))
        log(f"first deliveries done in {time.monotonic() - started:.1f}s")

        index = {cid: n for n, cid in enumerate(ids)}
        deliveries: Counter[str] = Counter()

        def seed_of(cid: str) -> str:
            # Same --seed, same creation index, same re-delivery number: same kill choice.
            with lock:
                deliveries[cid] += 1
                return f"{seed}-{index[cid]}-{deliveries[cid]}"

        dispatcher = ProcessDispatcher(
            child_env(work, fake.url, f"random:{recrash}", lease_s),
            logs,
            parallel,
            seed_of=None if seed is None else seed_of,
        )
        policy = SweepPolicy(
            dispatch_grace=timedelta(seconds=1),
            # Dispatched but never claimed (the job died before claiming): wait a little longer
            # than a job needs to start, so a slow start is not double-delivered needlessly.
            pending_timeout=timedelta(seconds=lease_s + 2),
            max_dispatches=8,
            max_age=timedelta(hours=1),
        )
        settle_start = time.monotonic()
        deadline = settle_start + settle_timeout
        try:
            while time.monotonic() < deadline:
                sweep(store, lambda path: dispatcher, now=lc.utcnow(), policy=policy)
                report.sweeps += 1
                open_ = [
                    c
                    for c in store.scan(statuses=[lc.Status.PENDING, lc.Status.PROCESSING])
                    if c.id in plan
                ]
                if not open_ and dispatcher.in_flight == 0:
                    break
                time.sleep(sweep_every)
        finally:
            dispatcher.close()
        report.settle_seconds = time.monotonic() - settle_start
        report.redeliveries = dispatcher.executions
        report.redelivery_exit_codes = dispatcher.exit_codes
        report.redelivery_outcomes = redelivery_outcomes(logs)

        for cid in ids:
            record = store.get(cid)
            assert record is not None
            report.statuses[record.status.value] += 1
            report.attempts[record.attempts] += 1
            if record.status.value == "failed" and record.error:
                report.failure_codes[record.error.code] += 1
            if not record.status.terminal:
                report.stuck.append(cid)
            if record.status.value == "completed":
                keys = [m.key for m in record.media]
                files_ok = keys and all(
                    (settings.media_dir / k).read_bytes()[4:8] == b"ftyp" for k in keys
                )
                if not files_ok:
                    report.completed_without_media.append(cid)
        by_prompt = Counter(c["prompt"] for c in fake.calls("predictLongRunning"))
        report.veo_starts_per_creation = {cid: by_prompt.get(prompts[cid], 0) for cid in ids}
        report.veo_polls = len(fake.calls("fetchPredictOperation"))
    report.leftover_temp_files = sum(1 for _ in settings.media_dir.rglob(".tmp-*"))
    store.close()
    report.total_seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creations", type=int, default=42)
    parser.add_argument(
        "--recrash",
        type=float,
        default=0.3,
        help="probability that a re-delivery dies again (default 0.3)",
    )
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="fixes every random choice: external kill delays and re-delivery kill points "
        "(default 1). Where a timed kill lands still depends on the machine's timing.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    from common import logs as phoenix_logs

    # The sweeper's own info lines would drown the figures; warnings still show.
    phoenix_logs.configure_logging("pretty", "WARNING", service="crash-benchmark")
    work = Path(tempfile.mkdtemp(prefix="phoenix-crash-"))
    print(
        f"crash recovery: {args.creations} video creations, re-delivery crash probability "
        f"{args.recrash}, lease 2 s, seed {args.seed}, work dir {work}",
        flush=True,
    )
    report = run(
        creations=args.creations,
        work=work,
        recrash=args.recrash,
        parallel=args.parallel,
        seed=args.seed,
        log=lambda s: print(s, flush=True),
    )
    for line in report.lines():
        print(line)
    ok = not report.stuck and not report.completed_without_media and not report.generated_twice
    _common.emit_json(
        "crash_recovery",
        {
            **_common.machine(),
            "seed": args.seed,
            "recrash": args.recrash,
            "parallel": args.parallel,
            "lease_s": 2,
            "report": report.as_dict(),
            "ok": ok,
        },
    )
    print(
        f"RESULT: {'OK' if ok else 'FAILED'} (never stuck: {not report.stuck}; "
        f"generated twice: {len(report.generated_twice)})"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
