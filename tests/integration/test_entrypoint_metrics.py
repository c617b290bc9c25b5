"""Every entrypoint exports the creation metrics: the API (gunicorn, ``api.main``), a Cloud Run
Job (``jobs.image.main``), the legacy Celery worker and the sweeper (``api.sweep``), each a real
process configured only through its environment (``PHOENIX_METRICS_EXPORTER=file:PATH``), each
recording the event only it can see, flushed when the process ends.

Before ``common.observability`` only the jobs configured metrics: the API's ``created`` and the
worker's ``completed`` went to a no-op meter. These tests fail if an entrypoint stops calling
``observability.configure``/``shutdown``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests

# Imported for Pants' dependency inference: these run as child processes by module name.
import api.main  # noqa: F401
import api.sweep  # noqa: F401
import jobs.image.main  # noqa: F401
import jobs.legacy.worker  # noqa: F401
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
    wait_terminal,
)


def _env(data_dir: Path, metrics_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PHOENIX_DATA_DIR=str(data_dir),
        PHOENIX_METRICS_EXPORTER=f"file:{metrics_file}",
        PHOENIX_LOG_FORMAT="json",
        **extra,
    )
    return env


def _points(metrics_file: Path, name: str, service: str) -> list[dict[str, Any]]:
    """The data points of metric ``name`` exported by processes of ``service``."""
    assert metrics_file.exists(), f"{metrics_file} was never written"
    points = []
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record["name"] == name and record["resource"].get("service.name") == service:
            points.extend(record["points"])
    return points


def _total(points: list[dict[str, Any]], **attrs: str) -> float:
    return sum(
        p.get("value", p.get("count", 0))
        for p in points
        if all(p["attributes"].get(k) == v for k, v in attrs.items())
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_api_exports_created(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    port = _free_port()
    env = _env(tmp_path / "data", metrics_file, PORT=str(port), PHOENIX_DISPATCH="record")
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.main", "--host", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()[-3000:]
            time.sleep(0.2)
        for _ in range(2):
            resp = requests.post(
                f"{base}/api/generate/image",
                json={"prompt": "a lighthouse at dusk"},
                headers={"X-Phoenix-User": "metrics-test"},
                timeout=10,
            )
            assert resp.status_code == 202, resp.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # graceful: gunicorn's worker_exit flushes
        proc.wait(30)
        log.close()
    points = _points(metrics_file, "phoenix.creations.created", "phoenix-api")
    assert _total(points, kind="image", path="record") == 2, (tmp_path / "api.log").read_text()


def test_job_exports_completed(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    env = _env(tmp_path / "data", metrics_file)
    store = SqliteCreationStore(Settings.from_env(env).sqlite_path)
    c = add_creation(store, Kind.IMAGE, "a red fox", path="cloud-tasks")
    done = subprocess.run(
        [sys.executable, "-m", "jobs.image.main"],
        env={**env, "CREATION_ID": c.id},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    finished = store.get(c.id)
    store.close()
    assert finished is not None and finished.status is Status.COMPLETED
    points = _points(metrics_file, "phoenix.creations.completed", "phoenix-image-job")
    assert _total(points, kind="image", path="cloud-tasks") == 1
    waits = _points(metrics_file, "phoenix.creation.queue_wait", "phoenix-image-job")
    assert _total(waits, outcome="completed") == 1  # one histogram observation


def test_legacy_worker_exports_completed(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    with redis_url() as url:
        env = phoenix_env(tmp_path / "data", url)
        env.pop("PHOENIX_METRICS_EXPORTER", None)
        env["PHOENIX_METRICS_EXPORTER"] = f"file:{metrics_file}"
        settings = Settings.from_env(env)
        store = SqliteCreationStore(settings.sqlite_path)
        # prefork: the task runs in a forked child that ends with os._exit (no atexit).
        with legacy_worker(env, tmp_path / "worker.log", concurrency=1, pool="prefork"):
            c = add_creation(store, Kind.IMAGE, "a lighthouse at dusk")
            CeleryDispatcher.from_settings(settings).dispatch(
                TaskPayload(creation_id=c.id, kind=c.kind)
            )
            final = wait_terminal(store, [c.id])[c.id]
        store.close()
    assert final.status is Status.COMPLETED
    points = _points(metrics_file, "phoenix.creations.completed", "phoenix-legacy-worker")
    assert _total(points, kind="image", path="celery") == 1, (tmp_path / "worker.log").read_text(
        errors="replace"
    )[-3000:]


def test_sweeper_exports_failed(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    env = _env(tmp_path / "data", metrics_file, PHOENIX_DISPATCH="record")
    store = SqliteCreationStore(Settings.from_env(env).sqlite_path)
    old = lc.utcnow() - timedelta(days=2)  # past the sweeper's max age: failed as timed_out
    c = lc.new(user_id="u1", kind=Kind.VIDEO, prompt="p", params={}, path="record", now=old)
    store.add(c)
    done = subprocess.run(
        [sys.executable, "-m", "api.sweep"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    final = store.get(c.id)
    store.close()
    assert final is not None and final.status is Status.FAILED
    assert final.error is not None and final.error.code == "timed_out"
    points = _points(metrics_file, "phoenix.creations.failed", "phoenix-sweeper")
    assert _total(points, kind="video", path="record", code="timed_out") == 1
