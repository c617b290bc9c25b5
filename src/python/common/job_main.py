"""The process entrypoint shared by the video and image jobs (their ``main.py`` are one line).

Reads the creation id the way a Cloud Run Job execution receives it (``CREATION_ID`` env override,
or ``--creation-id``), joins the API's trace through ``TRACEPARENT``, runs the job and exits with
the code Cloud Run's ``maxRetries`` should act on.
"""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Mapping, Sequence

from common.domain.creation import Creation, Kind

if TYPE_CHECKING:
    from common.config import Settings
    from common.generators import GeneratorFactory
    from common.job_runner import JobDeps


def build_job_deps(
    settings: Settings, generators: Mapping[str, GeneratorFactory] | None = None
) -> JobDeps:
    """The job wiring shared by the Cloud Run Jobs and the legacy Celery worker.

    ``generators``: what this build can select (default: production's, Vertex only; the repo's
    entrypoints pass ``common.local_generators.ALL``)."""
    from common import bootstrap
    from common.generators import PRODUCTION, LazyGenerator
    from common.job_runner import JobDeps

    # Only the store is needed to claim; the generator and media SDKs load after the claim.
    return JobDeps(
        store=bootstrap.build_job_store(settings),
        generator=LazyGenerator(settings, PRODUCTION if generators is None else generators),
        media=bootstrap.LazyMediaStore(settings),
        lease=timedelta(seconds=settings.lease_seconds),
        max_attempts=settings.max_attempts,
    )


def instrument_after_claim(deps: JobDeps) -> None:
    """Load the gRPC/requests client instrumentation only once the creation is claimed.

    Before the claim nothing asks for it: the claim's store (Firestore over stdlib REST, or
    SQLite) makes its own CLIENT spans. What is built after the claim (Cloud Storage, token
    fetches) is then instrumented as it is created."""
    from common import observability

    observed = deps.on_phase

    def on_phase(phase: str, creation: Creation) -> None:
        if phase == "claimed":
            observability.resume_client_instrumentation()
        observed(phase, creation)

    deps.on_phase = on_phase


def execution_name(env: Mapping[str, str]) -> str | None:
    """What the claim records as this execution: Cloud Run's relative name
    ``jobs/JOB/executions/EXECUTION`` (the API cancels it with the Admin API), else whatever
    id the launcher gave (the local dispatcher's)."""
    job, execution = env.get("CLOUD_RUN_JOB"), env.get("CLOUD_RUN_EXECUTION")
    if job and execution:
        return f"jobs/{job}/executions/{execution}"
    return execution or None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Before the job can hold a lease there is nothing to hand back: just exit. SystemExit runs
    # atexit hooks, so the spans and metrics recorded so far are flushed.
    sys.exit(128 + signum)


class _StopOnSigterm:
    """The SIGTERM handler while the job may hold a lease.

    Cloud Run sends SIGTERM at the task timeout (or on cancellation), SIGKILL ~10 s later.
    Raising :class:`~common.job_runner.Terminated` stops the job at once, wherever it waits (a
    Veo poll's sleep, an HTTP call); ``main()`` hands the lease back in one place.

    A Python signal handler runs wherever the main thread happens to be, and an exception it
    raises there can be lost: inside a ``__del__`` or a weakref callback the interpreter only
    prints "Exception ignored", and a library's bare ``except:`` swallows it. The job then ran
    to completion past the timeout (seen once in CI under load). So the first SIGTERM also
    starts a thread that re-delivers it to the main thread every ``reassert_s`` until ``main()``
    acknowledges it; once acknowledged, later signals are ignored so that the hand-back is not
    interrupted in turn.
    """

    def __init__(self, reassert_s: float = 1.0) -> None:
        self.reassert_s = reassert_s
        self.requested = threading.Event()
        self.acknowledged = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        from common.job_runner import Terminated  # already imported when this is installed

        if self.acknowledged.is_set():
            return
        if not self.requested.is_set():
            self.requested.set()
            threading.Thread(
                target=self._reassert, args=(signum,), name="sigterm-reassert", daemon=True
            ).start()
        raise Terminated(signum)

    def acknowledge(self) -> None:
        """The main thread has stopped the work (or finished it): no more re-delivery."""
        self.acknowledged.set()

    def _reassert(self, signum: int) -> None:
        while not self.acknowledged.wait(self.reassert_s):
            _thread.interrupt_main(signal.Signals(signum))


def _attempt_from_env() -> int | None:
    raw = os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "")
    return int(raw) if raw.isdigit() else None


def main(
    kind: Kind,
    argv: Sequence[str] | None = None,
    generators: Mapping[str, GeneratorFactory] | None = None,
) -> int:
    """Runs one job execution. ``generators`` is what the entrypoint's build can select
    (default: production's); see ``common.generators``."""
    parser = argparse.ArgumentParser(prog=f"phoenix-{kind.value}-job")
    parser.add_argument("--creation-id", help="overrides the CREATION_ID environment variable")
    args = parser.parse_args(argv)

    from common.config import ConfigError, Settings
    from common.domain.errors import ValidationError
    from common.domain.payload import TaskPayload
    from common.generators import PRODUCTION, factory_for

    if generators is None:
        generators = PRODUCTION
    try:
        settings = Settings.from_env()
        factory_for(settings, generators)  # a generator this build lacks stops it before a claim
        payload = TaskPayload.from_env(os.environ, kind, args.creation_id)
    except (ConfigError, ValidationError) as exc:
        # Misconfiguration is permanent: exit 2 tells an operator, and retrying cannot help.
        print(f"phoenix-{kind.value}-job: {exc}", file=sys.stderr)
        return 2

    from common import logs, observability, tracing

    try:
        observability.configure(settings, f"phoenix-{kind.value}-job")
    except ConfigError as exc:
        print(f"phoenix-{kind.value}-job: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log = logs.get_logger(__name__)
    execution = os.environ.get("CLOUD_RUN_EXECUTION")
    logs.bind_creation(payload.creation_id, kind=kind.value)

    from common.job_runner import (
        EXIT_TERMINATED,
        JobOutcome,
        Terminated,
        hand_back,
        new_owner_id,
        run_job,
    )

    parent = tracing.context_from_env(os.environ)
    owner = new_owner_id(execution)
    with tracing.tracer("phoenix.job").start_as_current_span(
        f"job.{kind.value}",
        context=parent,
        attributes={
            "phoenix.creation_id": payload.creation_id,
            "phoenix.kind": kind.value,
            "gcp.cloud_run.job.execution": execution or "",
            "gcp.cloud_run.job.task_attempt": os.environ.get("CLOUD_RUN_TASK_ATTEMPT", ""),
        },
    ):
        log.info(
            "job_started", execution=execution, attempt=os.environ.get("CLOUD_RUN_TASK_ATTEMPT")
        )
        deps: JobDeps | None = None
        stop = _StopOnSigterm()
        try:
            signal.signal(signal.SIGTERM, stop)
            observability.defer_client_instrumentation()
            deps = build_job_deps(settings, generators)
            instrument_after_claim(deps)
            outcome = run_job(
                payload.creation_id,
                kind,
                deps,
                owner=owner,
                execution=execution_name(os.environ),
                attempt=_attempt_from_env(),
            )
        except Terminated:
            stop.acknowledge()
            log.warning("job_terminated", execution=execution)
            outcome = (
                hand_back(payload.creation_id, deps, owner=owner)
                if deps is not None
                else JobOutcome(EXIT_TERMINATED, "terminated")
            )
        finally:
            stop.acknowledge()
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            observability.drop_deferred_instrumentation()
            if deps is not None:
                deps.store.close()
    observability.shutdown()
    return outcome.exit_code
