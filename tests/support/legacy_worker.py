"""Test helpers for the legacy Celery path: a real redis-server and a real worker process.

Every resource is per test (free port, tmp data dir) so tests run in parallel, and every process
started here is stopped here, by its own process group, never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.adapters.sqlite_store import SqliteCreationStore
from common.domain import creation as lc
from common.domain.creation import Creation, Kind


@contextmanager
def redis_url() -> Iterator[str]:
    """A throwaway redis-server (tools.servers' helper) and its URL."""
    from tools.servers import redis_server

    with redis_server() as server:
        yield server.url


def phoenix_env(data_dir: Path, broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # The child must import the same sources/venv as the test process.
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PHOENIX_DATA_DIR": str(data_dir),
            "PHOENIX_STORE": "sqlite",
            "PHOENIX_GENERATOR": "local",
            "PHOENIX_MEDIA": "local",
            "PHOENIX_DISPATCH": "celery",
            "PHOENIX_CELERY_BROKER_URL": broker_url,
            "PHOENIX_MAX_ATTEMPTS": "3",
            "PHOENIX_LEGACY_RETRY_BACKOFF_SECONDS": "0.5",
            "PHOENIX_LOG_FORMAT": "json",
            "PHOENIX_ROLLOUT": "",
            "PHOENIX_ROLLOUT_FILE": "",
        }
    )
    env.update(extra)
    return env


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the group if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    # Prefork children share the group; make sure none outlives its parent.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def legacy_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    ready_timeout: float = 60.0,
) -> Iterator[subprocess.Popen]:
    """``python -m jobs.legacy.worker`` as a real process, yielded once Celery says it's ready."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.legacy.worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in log_path.read_bytes():
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {proc.returncode}:\n{log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker not ready:\n{log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.1)
        yield proc
    finally:
        stop_process_group(proc)
        log.close()


def add_creation(
    store: SqliteCreationStore, kind: Kind, prompt: str, *, path: str = "celery", user: str = "u1"
) -> Creation:
    c = lc.new(user_id=user, kind=kind, prompt=prompt, params={}, path=path, now=lc.utcnow())
    store.add(c)
    return c


def wait_terminal(
    store: SqliteCreationStore, ids: list[str], timeout: float = 90.0
) -> dict[str, Creation]:
    deadline = time.monotonic() + timeout
    while True:
        found = {i: store.get(i) for i in ids}
        if all(c is not None and c.status.terminal for c in found.values()):
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            states = {i: (c.status.value if c else None) for i, c in found.items()}
            raise AssertionError(f"creations not finished in {timeout}s: {states}")
        time.sleep(0.2)
