"""Local dispatcher: runs each creation's job as its own OS process, like a Cloud Run Job.

The child gets the creation the way a Cloud Run Job execution does (``CREATION_ID`` and
``TRACEPARENT`` in its environment, plus ``--creation-id``) and runs the very entrypoint the
container runs. Like Cloud Run's ``maxRetries`` it re-runs a job that exits non-zero (the job
exits non-zero only for retryable failures). A bounded pool keeps a laptop responsive; work
queued in memory is lost if the API process dies, which the sweeper covers by re-dispatching
creations left ``pending``.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import threading
import uuid
from collections import OrderedDict
from typing import Mapping, Sequence

import structlog

from common.config import Settings
from common.domain.creation import Creation
from common.domain.payload import TaskPayload
from common.ports import Dispatcher

log = structlog.get_logger(__name__)


def default_job_command(kind: str) -> list[str]:
    """This interpreter running the job module from the same sources/venv the API runs from
    (``PHOENIX_LOCAL_JOB_CMD_<KIND>`` replaces it, e.g. with a built PEX)."""
    return [sys.executable, "-m", f"jobs.{kind}.main"]


def job_commands(settings: Settings) -> dict[str, list[str]]:
    """The configured job commands (``PHOENIX_LOCAL_JOB_CMD_<KIND>``, e.g. ``..._VIDEO``)."""
    return {kind: shlex.split(cmd) for kind, cmd in settings.local_job_cmds}


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Under `pants run` or a PEX the parent's import path is assembled at start-up, not from
    # PYTHONPATH; hand it to the child so `python -m jobs.video.main` resolves the same code.
    # Absolute: the child may run in another working directory.
    paths = [os.path.abspath(p) for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


_MAX_REMEMBERED_CANCELS = 10_000


class LocalProcessDispatcher(Dispatcher):
    name = "local"

    def __init__(
        self,
        *,
        max_parallel: int = 4,
        max_retries: int = 3,
        command_for: Mapping[str, Sequence[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._queue: queue.Queue[TaskPayload | None] = queue.Queue()
        self._max_retries = max_retries
        self._command_for = dict(command_for or {})
        self._extra_env = dict(extra_env or {})
        self._threads = [
            threading.Thread(target=self._work, name=f"local-dispatch-{i}", daemon=True)
            for i in range(max_parallel)
        ]
        self._running: set[subprocess.Popen[bytes]] = set()
        # (creation id, dispatch number) -> payloads queued or whose job (or a retry of it)
        # is still running: what ``task_exists`` answers from.
        self._live: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        # Set by close(): no new job process may start (not even a retry of one close() just
        # terminated), or it would outlive the server as an orphan.
        self._closed = False
        # Creations cancelled while their payload waited here: no process is started for them
        # (and no retry of one that exited). Bounded: only recent cancels matter.
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._waiting: dict[str, int] = {}
        for t in self._threads:
            t.start()

    def dispatch(self, payload: TaskPayload) -> None:
        with self._lock:
            self._in_flight += 1
            key = (payload.creation_id, payload.dispatch)
            self._live[key] = self._live.get(key, 0) + 1
            self._waiting[payload.creation_id] = self._waiting.get(payload.creation_id, 0) + 1
            self._cancelled.pop(payload.creation_id, None)  # a new dispatch is wanted again
        self._queue.put(payload)

    def task_exists(self, payload: TaskPayload) -> bool | None:
        """Queued here or its job process still running: this process's pool is the queue, so
        it knows exactly (a pool of another process, e.g. a restarted server, knows nothing of
        it and answers False: the sweeper then re-sends, which the claim makes harmless)."""
        with self._lock:
            return self._live.get((payload.creation_id, payload.dispatch), 0) > 0

    def cancel(self, creation: Creation) -> list[str]:
        """Drop queued payloads of the creation; a running job process is left to stop itself
        at its next lease renewal (killing it could interrupt a media write or the final
        record update)."""
        with self._lock:
            self._cancelled[creation.id] = None
            while len(self._cancelled) > _MAX_REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
            waiting = self._waiting.get(creation.id, 0)
        return [f"{waiting} queued local job(s)"] if waiting else []

    def _command(self, kind: str) -> list[str]:
        return list(self._command_for.get(kind) or default_job_command(kind))

    def _work(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            with self._lock:
                left = self._waiting.get(payload.creation_id, 1) - 1
                if left > 0:
                    self._waiting[payload.creation_id] = left
                else:
                    self._waiting.pop(payload.creation_id, None)
            try:
                self._run(payload)
            except Exception:  # a broken command must not kill the worker thread
                log.exception("local_job_failed_to_start", creation_id=payload.creation_id)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    key = (payload.creation_id, payload.dispatch)
                    left = self._live.get(key, 0) - 1
                    if left > 0:
                        self._live[key] = left
                    else:
                        self._live.pop(key, None)
                    self._idle.notify_all()

    def _run(self, payload: TaskPayload) -> None:
        execution = f"local-{payload.kind.value}-{uuid.uuid4().hex[:8]}"
        for attempt in range(self._max_retries + 1):
            env = child_environment(
                {
                    **self._extra_env,
                    **payload.to_env(),
                    "CLOUD_RUN_EXECUTION": execution,
                    "CLOUD_RUN_TASK_INDEX": "0",
                    "CLOUD_RUN_TASK_COUNT": "1",
                    "CLOUD_RUN_TASK_ATTEMPT": str(attempt),
                }
            )
            cmd = self._command(payload.kind.value) + ["--creation-id", payload.creation_id]
            with self._lock:
                if self._closed:
                    return
                if payload.creation_id in self._cancelled:
                    log.info("local_job_skipped_cancelled", creation_id=payload.creation_id)
                    return
                # Own session: Ctrl+C in the server's terminal must not reach the jobs (they
                # would die mid-write and be "retried" during shutdown); close() stops them.
                proc = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True
                )
                self._running.add(proc)
            try:
                code = proc.wait()
            finally:
                with self._lock:
                    self._running.discard(proc)
            log.info(
                "local_job_exited",
                creation_id=payload.creation_id,
                execution=execution,
                attempt=attempt,
                exit_code=code,
            )
            if code == 0:
                return

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every dispatched job has finished (tests, graceful shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            proc.terminate()


class RecordingDispatcher(Dispatcher):
    """Accepts and remembers payloads without running anything: benchmarks of the API's enqueue
    path use it so jobs don't compete for CPU, and the sweeper can dispatch later."""

    name = "record"

    def __init__(self) -> None:
        self.dispatched: list[TaskPayload] = []
        self._lock = threading.Lock()

    def dispatch(self, payload: TaskPayload) -> None:
        with self._lock:
            self.dispatched.append(payload)

    def task_exists(self, payload: TaskPayload) -> bool | None:
        """Nothing ever runs what it records, so whether the work is still pending is not its
        to say: None keeps the sweeper's time-based rules."""
        return None
