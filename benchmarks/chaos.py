"""Chaos: many creations through the production chain under a seeded fault schedule.

    benchmarks/run chaos [--creations 1000] [--seed 12] [--max-running 6]

The chain is the production one, on local stand-ins: ``CreationService`` (the API's service
layer: record, then dispatch) -> ``CloudTasksDispatcher`` -> the Cloud Tasks emulator -> the
Cloud Run ``jobs:run`` stand-in (task timeout with SIGTERM, ``maxRetries`` attempts of one
execution) -> job processes running the real job entrypoint (``common.job_main``) with the
real Vertex generator (google-genai) against a fake Vertex server that counts every billed
call per creation, and Cloud Storage (emulator) for media. The sweeper (``common.sweeper``)
runs every couple of seconds against the same dispatcher.

Faults, all drawn from one seeded RNG (the schedule is reproducible; process timing is not):

* duplicate deliveries: the first dispatch of a creation is created 1-10 times under the
  same task name (the emulator does not dedup names, so each is a delivery);
* SIGKILL of a job at a random phase (after the claim, after the start marker, after the
  provider accepted but before the operation name is stored, while polling, after
  generating, after storing) and SIGKILL from outside at random times;
* task-timeout SIGTERM: some provider calls are slower than the stand-in's task timeout;
* store outage windows (every store call of every process raises) and dispatch outage
  windows (create/ask the queue raises);
* provider 429 / 503, slow calls (longer than the lease), and unknown outcomes (the
  provider does the work and the connection drops before the answer);
* a backlog far beyond the queue's rate: every creation is submitted at once while the
  stand-in runs at most ``--max-running`` executions (a ``:run`` call waits for room, as a
  queue at its dispatch rate would hold the task).

It prints its figures and exits non-zero unless: accepted = completed + failed with a reason;
0 lost; 0 stuck after the drain; 0 creations generated twice (billed start calls per creation
<= 1) among creations without an unknown-outcome fault (those are counted separately); 0
media objects overwritten.

What it does NOT use, and why: the Firestore emulator. It has no transaction isolation, so
two processes claiming one creation could both win there although production Firestore
serialises them; counting its lost updates as "double generations" would measure the
emulator. The creation store and the Veo slot guard are one SQLite file shared by every
process (real cross-process transactions). Job processes are forked from a pre-imported
"zygote" process so that a thousand of them fit on two shared cores; each is still its own
process in its own process group, killed with real signals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import socket
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common  # noqa: E402,F401  (puts src/python on sys.path)

PROJECT = "phoenix-chaos"
LOCATION = "us-central1"
BUCKET = "phoenix-chaos-media"
QUEUE = f"projects/{PROJECT}/locations/{LOCATION}/queues/chaos"
VIDEO_JOB, IMAGE_JOB = "phoenix-video-job", "phoenix-image-job"
TOKEN = "chaos-token"
PROMPT_RE = re.compile(r"chaos #(\d+)\b")
KILL_PHASES = (
    "claimed",  # holds the lease, nothing else yet
    "start_marked",  # the unknown-outcome marker is written, the provider not yet called
    "started",  # Veo accepted the operation; its name is not stored yet
    "polling",  # the operation is recorded; killed while polling
    "generated",  # the provider's output is in hand; nothing stored
    "stored",  # media stored; the completion not recorded
)


# --- the fault plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything random about one run, drawn up front from the seed."""

    seed: int
    creations: list[dict[str, Any]]
    store_outages: list[tuple[float, float]]  # (start, duration) seconds after the first submit
    dispatch_outages: list[tuple[float, float]]
    external_kill_every: tuple[float, float]

    @classmethod
    def draw(cls, seed: int, n: int, *, video_share: float, lease: float, task_timeout: float):
        rng = random.Random(seed)
        creations = []
        for i in range(n):
            kind = "video" if rng.random() < video_share else "image"
            filtered = rng.random() < 0.02
            dup = 1
            r = rng.random()
            if r > 0.7:
                dup = rng.randint(2, 3)
            if r > 0.9:
                dup = rng.randint(4, 10)
            kill = rng.choice(KILL_PHASES) if rng.random() < 0.25 else None
            faults: list[str | None] = []
            for _ in range(2):  # the first two billed start calls of the creation
                f = rng.random()
                if f < 0.07:
                    faults.append("429")
                elif f < 0.12:
                    faults.append("503")
                elif f < 0.16:
                    faults.append("drop")  # unknown outcome
                elif f < 0.19:
                    faults.append(f"slow:{lease * 1.6:.1f}")  # outlives the lease
                elif f < 0.205:
                    faults.append(f"slow:{task_timeout + 4:.1f}")  # task-timeout SIGTERM
                else:
                    faults.append(None)
            creations.append(
                {
                    "index": i,
                    "kind": kind,
                    "user": f"user-{rng.randrange(40)}",
                    "prompt": f"chaos #{i} {'a slow pan' if kind == 'video' else 'a fox'}"
                    + (" [filtered]" if filtered else ""),
                    "duplicates": dup,
                    "kill": kill,
                    "faults": faults,
                }
            )

        def windows(count: int, span: float, lo: float, hi: float) -> list[tuple[float, float]]:
            return sorted((rng.uniform(0, span), rng.uniform(lo, hi)) for _ in range(count))

        span = max(30.0, n * 0.15)
        return cls(
            seed=seed,
            creations=creations,
            store_outages=windows(3, span, 1.5, 4.0),
            dispatch_outages=windows(3, span, 2.0, 6.0),
            external_kill_every=(4.0, 10.0),
        )

    def unknown_outcome(self, i: int) -> bool:
        """Did the plan inject a fault after which a start call's outcome is unknown?"""
        c = self.creations[i]
        return (
            "drop" in c["faults"]
            or c["kill"] in ("start_marked", "started")
            or any(f and f.startswith("slow:") for f in c["faults"])
        )


# --- the job child (runs inside a process forked from the zygote) ----------------------------


class _Flag:
    """An outage switched on and off by the parent through a file (every process sees it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on(self) -> bool:
        return self.path.exists()


class OutageStore:
    """Wraps a CreationStore: every call fails while the store-outage flag is up."""

    def __init__(self, inner: Any, flag: _Flag) -> None:
        self._inner, self._flag = inner, flag

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "close" or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._flag.on():
                raise ConnectionError("chaos: store outage")
            return attr(*args, **kwargs)

        return call


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def child_main(work: Path, kind_name: str, creation_id: str) -> int:
    """The real job entrypoint with this creation's planned kill and the outage wrapper."""
    from common import job_main, job_runner
    from common.adapters import gcs_media
    from common.domain.creation import Kind

    plan = json.loads((work / "plan" / f"{creation_id}.json").read_text())
    kill = plan.get("kill")
    flag = _Flag(work / "outage-store")

    def once(phase: str) -> bool:
        """The planned kill happens once per creation (the first process to get there)."""
        if kill != phase:
            return False
        try:
            fd = os.open(work / "kills" / f"{creation_id}.{phase}", os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    real_build = job_main.build_job_deps

    def build(settings: Any, generators: Any = None) -> Any:
        deps = real_build(settings, generators)
        wrapped: Any = OutageStore(deps.store, flag)  # duck-typed: every store method
        deps.store = wrapped

        def on_phase(phase: str, creation: Any) -> None:
            if once(phase):
                _die()

        deps.on_phase = on_phase
        return deps

    job_main.build_job_deps = build  # type: ignore[assignment]

    ctx_cls = job_runner._Context
    real_mark, real_record = ctx_cls.mark_start, ctx_cls.record_operation
    real_progress = ctx_cls.report_progress

    def mark_start(self: Any) -> str:
        marker = real_mark(self)
        if once("start_marked"):
            _die()
        return marker

    def record_operation(self: Any, operation: str) -> None:
        if operation and once("started"):
            _die()  # Veo accepted; the name is not stored
        real_record(self, operation)

    def report_progress(self: Any, percent: int) -> None:
        real_progress(self, percent)
        if self.existing_operation and once("polling"):
            _die()

    ctx_cls.mark_start = mark_start  # type: ignore[method-assign]
    ctx_cls.record_operation = record_operation  # type: ignore[method-assign]
    ctx_cls.report_progress = report_progress  # type: ignore[method-assign]

    writes = work / "media-writes.log"
    real_put = gcs_media.GcsMediaStore.put

    def put(self: Any, key: str, data: bytes, mime_type: str) -> Any:
        with open(writes, "a") as fh:  # one short line per write: O_APPEND keeps them whole
            fh.write(f"{key}\n")
        return real_put(self, key, data, mime_type)

    gcs_media.GcsMediaStore.put = put  # type: ignore[method-assign]
    return job_main.main(Kind(kind_name), ["--creation-id", creation_id])


# --- the zygote: forks job processes from an interpreter that already imported everything ---


def zygote_main(sock_path: str, status_dir: str) -> int:
    """Serve fork requests on a unix socket; write each child's exit status to a file.

    Single-threaded on purpose (fork from a threaded process can copy held locks). Nothing
    that opens connections (store, clients) is created here; only modules are imported."""
    import common.adapters.concurrency_guard  # noqa: F401
    import common.adapters.gcs_media  # noqa: F401
    import common.adapters.sqlite_store  # noqa: F401
    import common.adapters.vertex_generator  # noqa: F401
    import common.job_main  # noqa: F401
    import common.job_runner  # noqa: F401
    import common.logs  # noqa: F401
    import common.metrics  # noqa: F401
    import common.tracing  # noqa: F401

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(64)
    print("READY", flush=True)
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([server], [], [], 0.02)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            tmp = os.path.join(status_dir, f".{pid}")
            with open(tmp, "w") as fh:
                fh.write(str(code))
            os.replace(tmp, os.path.join(status_dir, str(pid)))
        if not ready:
            continue
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data:
                continue
            request = json.loads(data)
            if request.get("stop"):
                return 0
            pid = os.fork()
            if pid == 0:  # the child: become the job process
                code = 1
                try:
                    os.setsid()
                    server.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.environ.clear()
                    os.environ.update(request["env"])
                    argv = request["argv"]
                    code = child_main(Path(argv[0]), argv[1], os.environ["CREATION_ID"])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.add(pid)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


class ZygoteProcess:
    """What the stand-in needs of ``subprocess.Popen`` for a zygote child."""

    def __init__(self, pid: int, args: list[str], status_dir: Path) -> None:
        self.pid, self.args = pid, args
        self.returncode: int | None = None
        self._status = status_dir / str(pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


class Zygote:
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.sock = str(work / "zygote.sock")
        self.status = work / "exit-status"
        self.status.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.chaos", "--zygote", self.sock, str(self.status)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(work / "zygote.log", "wb"),  # noqa: SIM115 - lives as long as the zygote
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"READY" not in line:
            raise RuntimeError(f"zygote did not start: {(work / 'zygote.log').read_text()[-2000:]}")
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], env: dict[str, str], log: str) -> ZygoteProcess:
        with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.sock)
            s.sendall(json.dumps({"argv": argv, "env": env, "log": log}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("zygote closed the connection")
                reply += chunk
        return ZygoteProcess(json.loads(reply)["pid"], argv, self.status)

    def stop(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.sock)
                s.sendall(b'{"stop": true}\n')
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _ZygoteSubprocess:
    """Stands in for the ``subprocess`` module inside the ``jobs:run`` stand-in only: its
    ``Popen`` forks the job from the zygote; everything else is the real module."""

    def __init__(self, zygote: Zygote) -> None:
        self._zygote = zygote

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, argv, *, stdout=None, env=None, **_: Any) -> ZygoteProcess:  # noqa: N802
        return self._zygote.spawn(list(argv), dict(env or {}), stdout.name)


# --- the parent ---------------------------------------------------------------------------------


@dataclass
class Report:
    creations: int
    seed: int
    accepted: int = 0
    submit_refusals: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    failure_codes: Counter[str] = field(default_factory=Counter)
    failed_without_reason: int = 0
    lost: int = 0
    stuck: list[str] = field(default_factory=list)
    starts_per_creation: dict[int, int] = field(default_factory=dict)
    doubles_plain: list[int] = field(default_factory=list)
    doubles_unknown: list[int] = field(default_factory=list)
    unknown_faulted: int = 0
    media_overwritten: int = 0
    media_missing: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    attempts: int = 0
    exit_codes: Counter[int] = field(default_factory=Counter)
    timed_out_attempts: int = 0
    sweeps: int = 0
    sweeper: Counter[str] = field(default_factory=Counter)
    unknown_found_ages: list[float] = field(default_factory=list)
    unknown_not_found: int = 0
    veo_max_in_flight: int = 0
    setup_seconds: float = 0.0
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        completed = self.statuses.get("completed", 0)
        failed = self.statuses.get("failed", 0)
        return (
            self.accepted == self.creations
            and self.accepted == completed + failed
            and self.failed_without_reason == 0
            and self.lost == 0
            and not self.stuck
            and not self.doubles_plain
            and self.media_overwritten == 0
            and self.media_missing == 0
        )

    def lines(self) -> list[str]:
        ages = sorted(self.unknown_found_ages)
        billed = sum(self.starts_per_creation.values())
        return [
            f"seed {self.seed}: {self.creations} creations submitted at once; "
            f"accepted {self.accepted} (submit refusals retried: {dict(self.submit_refusals)})",
            f"final: {dict(self.statuses)}; failure codes: {dict(self.failure_codes)}; "
            f"failed without a reason: {self.failed_without_reason}",
            f"lost: {self.lost}; stuck after drain: {len(self.stuck)}",
            f"billed provider start calls: {billed} for {self.creations} creations; "
            f"creations generated twice: {len(self.doubles_plain)} without an unknown-outcome "
            f"fault, {len(self.doubles_unknown)} among the {self.unknown_faulted} with one",
            f"media objects overwritten: {self.media_overwritten}; completed creations with "
            f"missing media: {self.media_missing}",
            f"faults injected: {dict(sorted(self.injected.items()))}",
            f"executions: {self.executions}, attempts: {self.attempts}, "
            f"attempt exit codes: {dict(sorted(self.exit_codes.items()))}, "
            f"task-timeout SIGTERMs: {self.timed_out_attempts}",
            f"sweeper: {self.sweeps} passes, {dict(self.sweeper)}",
            f"unknown-outcome starts resolved by finding their output: {len(ages)} "
            f"(marker age when found: max {ages[-1] if ages else 0:.1f}s), "
            f"not found within the window (started again): {self.unknown_not_found}",
            f"Veo operations in flight at the fake, max: {self.veo_max_in_flight}",
            f"set-up {self.setup_seconds:.1f}s (emulators, zygote), submit "
            f"{self.submit_seconds:.1f}s, drain {self.drain_seconds:.1f}s, "
            f"total {self.total_seconds:.1f}s",
        ]


def _make_fake(plan: Plan, gcs_url: str, op_seconds: float, report: Report):
    from tools.standins.fake_vertex import ApiError, FakeVertexServer

    class ChaosVertex(FakeVertexServer):
        """The fake with the plan's provider faults, operations that finish by themselves
        after ``op_seconds`` (polled or not, like Veo), and a count of billed start calls."""

        def __init__(self) -> None:
            super().__init__(gcs_endpoint=gcs_url, polls_before_done=1_000_000)
            self._chaos_lock = threading.Lock()
            self._starts: Counter[int] = Counter()
            self.billed: Counter[int] = Counter()
            self._op_started: dict[str, float] = {}
            self._local = threading.local()
            self.in_flight: set[str] = set()
            self.max_in_flight = 0
            self._stop = threading.Event()
            threading.Thread(target=self._finisher, daemon=True).start()

        def _fault(self, prompt: str | None) -> int | None:
            m = PROMPT_RE.search(prompt or "")
            if not m:
                return None
            i = int(m.group(1))
            with self._chaos_lock:
                n = self._starts[i]
                self._starts[i] += 1
            faults = plan.creations[i]["faults"]
            fault = faults[n] if n < len(faults) else None
            if fault == "429":
                report.injected["provider 429"] += 1
                raise ApiError(429, "RESOURCE_EXHAUSTED", "chaos: quota")
            if fault == "503":
                report.injected["provider 503"] += 1
                raise ApiError(503, "UNAVAILABLE", "chaos: unavailable")
            if fault and fault.startswith("slow:"):
                report.injected["provider slow call"] += 1
                time.sleep(float(fault.split(":", 1)[1]))
            self._local.drop = fault == "drop"
            if fault == "drop":
                report.injected["provider unknown outcome (answer dropped)"] += 1
            return i

        def _should_drop(self, prompt: str | None) -> bool:
            drop = getattr(self._local, "drop", False)
            self._local.drop = False
            return drop

        def _predict(self, m, body, prompt):
            i = self._fault(prompt)
            result = super()._predict(m, body, prompt)
            if i is not None:
                with self._chaos_lock:
                    self.billed[i] += 1
            return result

        def _predict_long_running(self, m, body, prompt):
            i = self._fault(prompt)
            result = super()._predict_long_running(m, body, prompt)
            with self._chaos_lock:
                if i is not None:
                    self.billed[i] += 1
                self._op_started[result["name"]] = time.monotonic()
                self.in_flight.add(result["name"])
                self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
                self._operations[result["name"]]["match"] = m
            return result

        def _fetch_operation(self, m, body):
            name = body.get("operationName")
            with self._chaos_lock:
                started = self._op_started.get(name)
            if started is not None and time.monotonic() - started < op_seconds:
                return {"name": name}
            return self._finished(m, name)

        def _finished(self, m, name):
            with self._lock:
                self._operations[name]["polls_left"] = 0
            result = FakeVertexServer._fetch_operation(self, m, {"operationName": name})
            with self._chaos_lock:
                self.in_flight.discard(name)
            return result

        def _fetch_until_done(self, m, name):
            pass  # a dropped start's operation finishes on the clock, like the others

        def _finisher(self) -> None:
            while not self._stop.wait(0.2):
                now = time.monotonic()
                with self._chaos_lock:
                    due = [n for n, t in self._op_started.items() if now - t >= op_seconds]
                    for n in due:
                        del self._op_started[n]
                for name in due:
                    with self._lock:
                        op = self._operations.get(name)
                    if op is not None and op.get("result") is None:
                        try:
                            self._finished(op["match"], name)
                        except Exception:
                            pass

        def stop(self) -> None:
            self._stop.set()
            super().stop()

    return ChaosVertex()


def run(
    *,
    creations: int = 1000,
    seed: int = 12,
    work: Path,
    video_share: float = 0.35,
    lease_s: int = 4,
    task_timeout: float = 20.0,
    max_running: int = 6,
    op_seconds: float = 2.0,
    drain_timeout: float = 1800.0,
    log: Any = print,
) -> Report:
    from api.creation_service import CreationService, DispatchFailed
    from common.adapters.cloud_tasks_dispatch import CloudTasksDispatcher, tasks_client
    from common.adapters.sqlite_store import SqliteCreationStore
    from common.config import Settings
    from common.domain.creation import Kind, Status
    from common.domain.errors import DispatchError
    from common.domain.requests import parse_generation_request
    from common.sweeper import SweepPolicy, sweep
    from tools import servers
    from tools.emulator_profile import write_signing_key
    from tools.standins import run_api

    started = time.monotonic()
    plan = Plan.draw(
        seed, creations, video_share=video_share, lease=lease_s, task_timeout=task_timeout
    )
    report = Report(creations=creations, seed=seed)
    for d in ("plan", "kills", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    store_flag, dispatch_flag = work / "outage-store", work / "outage-dispatch"
    key_file = write_signing_key(work / "sa.json")

    with servers.tasks_emulator() as tasks, servers.gcs_emulator(default_bucket=BUCKET) as gcs:
        fake = _make_fake(plan, gcs.url, op_seconds, report).start()
        fake.video_provider()  # render the fake's MP4 once, before any job polls
        job_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "CLOUD_RUN"))
        }
        job_env.update(
            {
                "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in sys.path if p)),
                "NO_PROXY": "127.0.0.1,localhost",
                "PHOENIX_DATA_DIR": str(work),
                "PHOENIX_STORE": "sqlite",
                "PHOENIX_GENERATOR": "vertex",
                "PHOENIX_MEDIA": "gcs",
                "PHOENIX_MEDIA_BUCKET": BUCKET,
                "PHOENIX_MEDIA_SIGNING_KEY_FILE": key_file,
                "STORAGE_EMULATOR_HOST": gcs.url,
                "PHOENIX_GCP_PROJECT": PROJECT,
                "PHOENIX_GCP_LOCATION": LOCATION,
                "PHOENIX_VERTEX_BASE_URL": fake.url,
                "PHOENIX_VERTEX_ACCESS_TOKEN": TOKEN,
                "PHOENIX_LOG_FORMAT": "json",
                # The jobs run under CLOUD_RUN_JOB (the stand-in sets it) on a local stand-in of
                # production: say so, or the production-safety check refuses to start them.
                "PHOENIX_ALLOW_HEADER_IDENTITY": "yes",
                "PHOENIX_LEASE_SECONDS": str(lease_s),
                "PHOENIX_MAX_ATTEMPTS": "3",
                "PHOENIX_VEO_MAX_CONCURRENT": "4",
                "PHOENIX_VEO_POLL_INITIAL_SECONDS": "0.3",
                "PHOENIX_VEO_POLL_MAX_SECONDS": "1",
                "PHOENIX_VEO_SLOT_WAIT_SECONDS": "120",
                # Longer than any output of the run takes to appear (slowest: a start slower
                # than the task timeout, then the operation): see the report's marker ages.
                "PHOENIX_VEO_UNKNOWN_WINDOW_SECONDS": str(int(task_timeout + op_seconds + 14)),
                "PHOENIX_IMAGEN_UNKNOWN_WINDOW_SECONDS": str(int(task_timeout + 14)),
            }
        )
        zygote = Zygote(work, job_env)
        run_api.subprocess = _ZygoteSubprocess(zygote)  # type: ignore[assignment]
        stop = threading.Event()

        class GatedRunApi(run_api.RunApiStandin):
            """At most ``max_running`` executions: a ``:run`` waits for room, so the queue
            holds the backlog (the emulator sends one request at a time per queue)."""

            def handle(self, method, raw_path, headers, raw_body):
                if method == "POST" and raw_path.endswith(":run"):
                    with self._lock:
                        while not stop.is_set() and (
                            sum(e["status"] == "running" for e in self._executions.values())
                            >= max_running
                        ):
                            self._lock.wait(0.2)
                return super().handle(method, raw_path, headers, raw_body)

        child = [str(work)]
        standin = GatedRunApi(
            {
                VIDEO_JOB: run_api.JobSpec(command=child + ["video"]),
                IMAGE_JOB: run_api.JobSpec(command=child + ["image"]),
            },
            inherit_env=False,
            env=job_env,
            max_retries=3,
            task_timeout=task_timeout,
            log_dir=work / "logs",
        ).start()
        try:
            settings = Settings(tasks_queue=QUEUE, cloud_tasks_endpoint=tasks.url)
            from google.cloud import tasks_v2

            tasks_client(tasks.url).create_queue(
                parent=QUEUE.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=QUEUE)
            )
            dup_of: dict[str, int] = {}

            class ChaosDispatcher(CloudTasksDispatcher):
                """The API's and the sweeper's queue, with outages and duplicate deliveries."""

                def dispatch(self, payload):
                    if dispatch_flag.exists():
                        raise DispatchError("chaos: dispatch outage")
                    copies = dup_of.get(payload.creation_id, 1) if payload.dispatch == 0 else 1
                    for _ in range(copies):
                        super().dispatch(payload)
                    if copies > 1:
                        report.injected["duplicate deliveries"] += copies - 1

                def task_exists(self, payload):
                    if dispatch_flag.exists():
                        raise DispatchError("chaos: dispatch outage")
                    return super().task_exists(payload)

            dispatcher = ChaosDispatcher(
                tasks_client(settings.cloud_tasks_endpoint),
                queue=QUEUE,
                run_api_url=standin.url,
                jobs={Kind.VIDEO: VIDEO_JOB, Kind.IMAGE: IMAGE_JOB},
            )
            store: Any = OutageStore(
                SqliteCreationStore(work / "creations.sqlite3"), _Flag(store_flag)
            )
            service = CreationService(
                store,  # type: ignore[arg-type]
                lambda path: dispatcher,
                lambda kind, user: "cloud-tasks",
                media=None,  # type: ignore[arg-type]  # views are not built here
                traceparent=lambda: None,
            )
            policy = SweepPolicy(
                dispatch_grace=timedelta(seconds=2),
                pending_timeout=timedelta(seconds=4 * lease_s),
                max_dispatches=1000,
                max_age=timedelta(hours=2),
            )

            def sweeper() -> None:
                from common.domain import creation as lc

                while not stop.wait(2.0):
                    try:
                        r = sweep(store, lambda p: dispatcher, now=lc.utcnow(), policy=policy,
                                  limit=5000)  # fmt: skip
                    except Exception:
                        report.sweeper["failed passes"] += 1
                        continue
                    report.sweeps += 1
                    report.sweeper["re-sent"] += len(r.redispatched)
                    report.sweeper["left queued"] += len(r.queued)
                    report.sweeper["failed"] += len(r.failed)
                    report.sweeper["errors"] += len(r.errors)

            t0 = time.monotonic()
            report.setup_seconds = t0 - started

            def outages() -> None:
                events = sorted(
                    [(s, "store", True) for s, _ in plan.store_outages]
                    + [(s + d, "store", False) for s, d in plan.store_outages]
                    + [(s, "dispatch", True) for s, _ in plan.dispatch_outages]
                    + [(s + d, "dispatch", False) for s, d in plan.dispatch_outages]
                )
                for at, what, on in events:
                    if stop.wait(max(0.0, t0 + at - time.monotonic())):
                        break
                    path = store_flag if what == "store" else dispatch_flag
                    if on:
                        path.touch()
                        report.injected[f"{what} outage windows"] += 1
                    else:
                        path.unlink(missing_ok=True)
                store_flag.unlink(missing_ok=True)
                dispatch_flag.unlink(missing_ok=True)

            rng = random.Random(seed + 1)

            def killer() -> None:
                while not stop.wait(rng.uniform(*plan.external_kill_every)):
                    with standin._lock:
                        pids = sorted(standin._running)
                    if pids:
                        pid = rng.choice(pids)
                        try:
                            os.killpg(pid, signal.SIGKILL)
                            report.injected["SIGKILL from outside"] += 1
                        except (ProcessLookupError, PermissionError):
                            pass

            threads = [threading.Thread(target=f, daemon=True) for f in (sweeper, outages, killer)]
            for t in threads:
                t.start()

            ids: dict[int, str] = {}
            lock = threading.Lock()

            def submit(spec: dict[str, Any]) -> None:
                req = parse_generation_request(
                    Kind(spec["kind"]),
                    {"prompt": spec["prompt"], "aspect_ratio": "16:9", "duration_seconds": 4}
                    if spec["kind"] == "video"
                    else {"prompt": spec["prompt"], "aspect_ratio": "1:1", "count": 1},
                )
                while True:  # a client retrying after 503
                    try:
                        service.create(spec["user"], req)
                    except DispatchFailed:
                        pass  # 503, but recorded: the sweeper will dispatch it
                    except ConnectionError:
                        with lock:
                            report.submit_refusals["store down (503)"] += 1
                        time.sleep(0.5)
                        continue
                    except ValueError:
                        pass  # recorded by the try that failed after writing: accepted then
                    break
                with lock:
                    ids[spec["index"]] = pre_ids[spec["index"]]
                    report.accepted += 1

            # The plan each job reads, written before any job can run (creation ids are only
            # known after create: map by index through a pre-assigned id).
            from common.domain import creation as lc

            real_new = lc.new
            pre_ids = {spec["index"]: lc.new_creation_id() for spec in plan.creations}

            def new_with_planned_id(**kw: Any) -> Any:
                m = PROMPT_RE.search(kw["prompt"])
                assert m, kw["prompt"]
                return real_new(**kw, creation_id=pre_ids[int(m.group(1))])

            lc.new = new_with_planned_id  # type: ignore[assignment]
            for spec in plan.creations:
                cid = pre_ids[spec["index"]]
                dup_of[cid] = spec["duplicates"]
                (work / "plan" / f"{cid}.json").write_text(json.dumps(spec))
            try:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(submit, plan.creations))
            finally:
                lc.new = real_new  # type: ignore[assignment]
            report.submit_seconds = time.monotonic() - t0
            log(f"submitted {report.accepted} in {report.submit_seconds:.1f}s; draining")

            drain_start = time.monotonic()
            raw = SqliteCreationStore(work / "creations.sqlite3")
            last_note = 0.0
            while time.monotonic() - drain_start < drain_timeout:
                open_ = raw.scan(statuses=[Status.PENDING, Status.PROCESSING], limit=100_000)
                if not open_ and not store_flag.exists() and time.monotonic() - t0 > 5:
                    break
                if time.monotonic() - last_note > 30:
                    last_note = time.monotonic()
                    log(f"  {len(open_)} open after {time.monotonic() - started:.0f}s")
                time.sleep(1.0)
            report.drain_seconds = time.monotonic() - drain_start
            stop.set()
            for t in threads:
                t.join(timeout=30)
        finally:
            stop.set()
            standin.stop()
            zygote.stop()
            fake.stop()

        _collect(report, plan, raw, ids, fake, standin, gcs, work)
    report.total_seconds = time.monotonic() - started
    return report


def _collect(report, plan, store, ids, fake, standin, gcs, work) -> None:
    from common.domain.creation import Status

    for i in range(len(plan.creations)):
        unknown = plan.unknown_outcome(i)
        report.unknown_faulted += unknown
        billed = fake.billed.get(i, 0)
        report.starts_per_creation[i] = billed
        if billed > 1:
            (report.doubles_unknown if unknown else report.doubles_plain).append(i)
        cid = ids.get(i)
        c = store.get(cid) if cid else None
        if c is None:
            report.lost += 1
            continue
        report.statuses[c.status.value] += 1
        if c.status is Status.FAILED:
            if c.error is None or not c.error.code:
                report.failed_without_reason += 1
            else:
                report.failure_codes[c.error.code] += 1
        elif c.status is not Status.COMPLETED:
            report.stuck.append(c.id)
    for path in (work / "kills").iterdir():
        report.injected[f"SIGKILL at phase {path.suffix[1:]}"] += 1
    report.injected = Counter({k: v for k, v in report.injected.items() if v})
    executions = standin.executions()
    report.executions = len(executions)
    for e in executions:
        for task in e["tasks"]:
            for a in task["attempts"]:
                report.attempts += 1
                report.exit_codes[a.get("exit_code")] += 1
                report.timed_out_attempts += bool(a.get("timed_out"))
    report.veo_max_in_flight = fake.max_in_flight
    writes: Counter[str] = Counter()
    log_file = work / "media-writes.log"
    if log_file.exists():
        writes.update(line for line in log_file.read_text().splitlines() if line)
    report.media_overwritten = sum(1 for n in writes.values() if n > 1)
    from common.adapters.gcs_media import GcsMediaStore, storage_client

    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    media = GcsMediaStore(storage_client(PROJECT), BUCKET)
    for cid in ids.values():
        c = store.get(cid)
        if c is not None and c.status is Status.COMPLETED:
            for m in c.media:
                try:
                    if not media.read(m.key):
                        report.media_missing += 1
                except KeyError:
                    report.media_missing += 1
    for path in (work / "logs").glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "unknown_start" not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "unknown_start_found":
                report.unknown_found_ages.append(float(rec.get("marker_age_s") or 0))
            elif rec.get("message") == "unknown_start_not_found":
                report.unknown_not_found += 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--zygote"]:
        return zygote_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--max-running", type=int, default=6)
    parser.add_argument("--lease", type=int, default=4)
    parser.add_argument("--drain-timeout", type=float, default=1800)
    parser.add_argument("--work", default="", help="keep the run's files here (default: temp)")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores)")
    with tempfile.TemporaryDirectory(prefix="phoenix-chaos-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(
            creations=args.creations,
            seed=args.seed,
            work=work,
            lease_s=args.lease,
            max_running=args.max_running,
            drain_timeout=args.drain_timeout,
        )
    for line in report.lines():
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    _common.emit_json(
        "chaos",
        {
            "seed": report.seed,
            "creations": report.creations,
            "accepted": report.accepted,
            "completed": report.statuses.get("completed", 0),
            "failed": report.statuses.get("failed", 0),
            "failed_without_reason": report.failed_without_reason,
            "lost": report.lost,
            "stuck": len(report.stuck),
            "billed_starts": sum(report.starts_per_creation.values()),
            "doubles_without_unknown_outcome_fault": len(report.doubles_plain),
            "doubles_with_unknown_outcome_fault": len(report.doubles_unknown),
            "media_overwritten": report.media_overwritten,
            "unknown_found": len(report.unknown_found_ages),
            "unknown_found_max_age_s": round(max(report.unknown_found_ages, default=0.0), 1),
            "total_s": round(report.total_seconds, 1),
            "pass": report.ok,
        },
    )
    print("RESULT:", "PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
