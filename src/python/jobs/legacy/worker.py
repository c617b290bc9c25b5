"""The legacy Celery worker (``phoenix-video-worker`` in the seed), rebuilt on the shared job runner.

The two tasks keep the seed's names (the API sends by name), but their body is the very same
``run_job`` the Cloud Run Jobs run, wired the same way as ``common.job_main``. So during the
side-by-side phase the two paths differ only in transport, and the dashboard compares transports,
not two implementations of generation.

Retry contract: ``run_job`` returns exit code 1 only after handing the record back as
``pending`` (a retryable failure). Here that becomes ``self.retry(countdown=backoff)``: Celery
re-sends the message, the next delivery claims the record again, and ``run_job`` itself fails the
creation for good once ``max_attempts`` is used up, so Celery's ``max_retries`` is only a backstop.

Run: ``python -m jobs.legacy.worker [--pool prefork|threads|solo] [--concurrency N] [-Q celery]``.
All ``PHOENIX_*`` settings apply (store, generator, media, broker URL, lease, max attempts).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import structlog
from celery.exceptions import MaxRetriesExceededError
from celery.signals import worker_process_shutdown

from common import logs, observability, tracing
from common.adapters.celery_dispatch import LEGACY_QUEUE, TASK_NAMES
from common.config import Settings
from common.domain.creation import Kind
from common.domain.errors import ValidationError
from common.domain.payload import TaskPayload
from common.job_main import build_job_deps
from common.job_runner import EXIT_RETRY, new_owner_id, run_job
from common.local_generators import ALL as ALL_GENERATORS
from jobs.legacy.celery_app import celery_app

log = structlog.get_logger(__name__)

SERVICE = "phoenix-legacy-worker"
MAX_BACKOFF_S = 300  # far below the 2 h visibility timeout: a countdown task sits unacked meanwhile


class _ProcessState:
    """Per-OS-process resources. Built lazily on first task, keyed by pid, because prefork
    children are forked from the parent: SQLite connections and OpenTelemetry's exporter
    threads must not be shared across a fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.settings = Settings.from_env()
        observability.configure_telemetry(self.settings, SERVICE)  # logging: the parent's
        # The legacy VM ran every generator (local in tests and demos, Vertex in production).
        self.deps = build_job_deps(self.settings, ALL_GENERATORS)


@worker_process_shutdown.connect
def _flush_telemetry(**_: Any) -> None:
    # A prefork child ends with os._exit, which skips atexit: flush its spans and metrics here.
    observability.shutdown()


_state: _ProcessState | None = None


def _process_state() -> _ProcessState:
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _ProcessState()
    return _state


def retry_backoff_seconds(retries: int, base: float) -> int:
    """Exponential backoff from ``base`` (``PHOENIX_LEGACY_RETRY_BACKOFF_SECONDS``), capped."""
    return int(min(MAX_BACKOFF_S, base * (2**retries)))


def _run(task: Any, raw_payload: Any, kind: Kind) -> str:
    try:
        payload = TaskPayload.from_dict(raw_payload)
    except ValidationError as exc:
        # A malformed message can never succeed: acknowledge it (no retry) and say why.
        log.error("legacy_task_bad_payload", error=str(exc), task_id=task.request.id)
        return "rejected"
    state = _process_state()
    carrier = {"TRACEPARENT": payload.traceparent} if payload.traceparent else {}
    # A worker process serves many creations: the binding is scoped to this task (``with``).
    with logs.bind_creation(payload.creation_id, kind=kind, path="celery"), tracing.tracer(
        "phoenix.job"
    ).start_as_current_span(
        f"job.{kind.value}",
        context=tracing.context_from_env(carrier),
        attributes={
            "phoenix.creation_id": payload.creation_id,
            "phoenix.kind": kind.value,
            "phoenix.path": "celery",
            "celery.task_id": task.request.id or "",
            "celery.retries": task.request.retries,
        },
    ):
        log.info("job_started", task_id=task.request.id, retries=task.request.retries)
        outcome = run_job(
            payload.creation_id,
            kind,
            state.deps,
            owner=new_owner_id(f"celery-{task.request.id}"),
            execution=f"celery/{task.request.id}",
        )
    if outcome.exit_code == EXIT_RETRY:
        countdown = retry_backoff_seconds(
            task.request.retries, state.settings.legacy_retry_backoff_seconds
        )
        try:
            raise task.retry(countdown=countdown, max_retries=state.settings.max_attempts)
        except MaxRetriesExceededError:
            # Backstop only (run_job fails the record at max_attempts first). The record is
            # pending; the sweeper re-dispatches or fails it, so acknowledging here is safe.
            log.error("legacy_task_max_retries", creation_id=payload.creation_id)
            return "max_retries"
    return outcome.status


@celery_app.task(name=TASK_NAMES[Kind.VIDEO], bind=True)
def generate_video_task(self: Any, payload: dict) -> str:
    return _run(self, payload, Kind.VIDEO)


@celery_app.task(name=TASK_NAMES[Kind.IMAGE], bind=True)
def generate_image_task(self: Any, payload: dict) -> str:
    return _run(self, payload, Kind.IMAGE)


def main(argv: Sequence[str] | None = None) -> int:
    from common.config import LEGACY_POOLS, ConfigError

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{SERVICE}: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m jobs.legacy.worker")
    parser.add_argument(
        "--pool",
        default=settings.legacy_pool,
        choices=LEGACY_POOLS,
        help="prefork isolates crashes (and makes task_reject_on_worker_lost apply); threads "
        "suits I/O-bound Veo polling with less memory",
    )
    parser.add_argument("--concurrency", type=int, default=settings.legacy_concurrency)
    parser.add_argument("-Q", "--queues", default=LEGACY_QUEUE)
    parser.add_argument("--loglevel", default=None)
    args = parser.parse_args(argv)
    # Task processes configure traces and metrics themselves (_ProcessState).
    observability.configure_logs(settings, SERVICE)
    log.info(
        "legacy_worker_starting",
        pool=args.pool,
        concurrency=args.concurrency,
        queues=args.queues,
        store=settings.store,
        generator=settings.generator,
    )
    celery_app.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            f"--concurrency={args.concurrency}",
            "-Q",
            args.queues,
            # Unique node name: several workers per host (tests, scaling) must not collide in
            # `celery inspect` replies, which the drain tool relies on.
            "-n",
            f"phoenix-legacy-{os.getpid()}@%h",
            # Gossip/mingle only slow start-up; the control channel (inspect) still works.
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={args.loglevel or settings.log_level}",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
