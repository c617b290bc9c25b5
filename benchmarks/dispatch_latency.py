"""End-to-end dispatch latency on one machine: creation recorded (``created_at``, API clock) ->
claimed by a job (``claimed_at``, job clock; same machine).

Run (repo root):  benchmarks/run dispatch_latency [--n 30] [--no-build]

Paths (each: fresh SQLite data dir, ``--n`` image creations POSTed one at a time; the next is
posted only after the previous one completed, plus a 0.2 s gap; warm-up creations first):
* local:      ``python -m api.local`` (gunicorn + LocalProcessDispatcher): each creation starts a
              job process ``python -m jobs.image.main`` from the source tree (its default).
* local-pex:  the same, with PHOENIX_LOCAL_JOB_CMD_IMAGE = ``python3.11 image-job-local.pex`` (the
              repo's job artefact, the local generator included; its venv installed by the warm-up).
* celery:     hot legacy path: redis-server (tools.servers) + ``python -m jobs.legacy.worker``
              (prefork, concurrency 2) already running and warmed up, API ``python -m api.main``
              with PHOENIX_DISPATCH=celery.
* cloud-tasks: the production path on its stand-ins (``tools.emulator_profile.production_chain``,
              what ``./pants run tools:emulator-profile`` starts): API with the Firestore store
              and the Cloud Tasks dispatcher -> Cloud Tasks emulator delivers the HTTP task ->
              the ``jobs:run`` stand-in starts ``python -m jobs.image.main`` with the overrides'
              env -> the job claims in Firestore (emulator), generates through the fake Vertex
              server and stores in the storage emulator. Stand-in costs differ from production:
              the emulator delivers in tens of ms where Cloud Tasks adds its own queueing, and
              Cloud Run starts a container (image pull, sandbox) where the stand-in starts a
              process, so this is a lower bound of production's figure.
Figures: median / p95 / max of claimed_at - created_at (and of dispatched_at - created_at, the
API's own share), read from the store records.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

BODY = {"prompt": "dispatch latency benchmark"}
USER_HEADERS = {"X-Phoenix-User": "latency-bench"}


def _one(base: str, store: Any, timeout: float = 60.0) -> Any:
    code, body, _ = c.http_json("POST", f"{base}/api/generate/image", BODY, USER_HEADERS)
    if code != 202:
        raise RuntimeError(f"POST answered {code}: {body}")
    cid = body["id"]
    deadline = time.monotonic() + timeout
    while True:
        rec = store.get(cid)
        if rec is not None and rec.status.terminal:
            if rec.status.value != "completed":
                raise RuntimeError(f"creation {cid} ended {rec.status.value}: {rec.error}")
            return rec
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"creation {cid} not finished after {timeout}s (status {rec and rec.status})"
            )
        time.sleep(0.01)


def _series(base: str, data_dir: Path, n: int, warmup: int, store: Any = None) -> dict[str, Any]:
    from common.adapters.sqlite_store import SqliteCreationStore

    own = store is None
    if store is None:
        store = SqliteCreationStore(data_dir / "creations.sqlite3")
    try:
        for _ in range(warmup):
            _one(base, store)
            time.sleep(0.2)
        claim, disp, done = [], [], []
        for _ in range(n):
            rec = _one(base, store)
            claim.append((rec.claimed_at - rec.created_at).total_seconds() * 1000)
            disp.append((rec.dispatched_at - rec.created_at).total_seconds() * 1000)
            done.append((rec.finished_at - rec.created_at).total_seconds() * 1000)
            time.sleep(0.2)
    finally:
        if own:
            store.close()
    return {
        "n": n,
        "claim_p50_ms": c.r1(c.percentile(claim, 50)),
        "claim_p95_ms": c.r1(c.percentile(claim, 95)),
        "claim_max_ms": c.r1(max(claim)),
        "dispatched_p50_ms": c.r1(c.percentile(disp, 50)),
        "completed_p50_ms": c.r1(c.percentile(done, 50)),
    }


def cloud_tasks(n: int) -> dict[str, Any]:
    import os

    from common import bootstrap
    from common.config import Settings
    from tools.emulator_profile import production_chain

    with c.temp_dir("phoenix-bench-lat-chain-") as d, production_chain(work_dir=d) as chain:
        os.environ["FIRESTORE_EMULATOR_HOST"] = chain.env["FIRESTORE_EMULATOR_HOST"]
        os.environ["PHOENIX_FIRESTORE_REST_URL"] = chain.env["PHOENIX_FIRESTORE_REST_URL"]
        store = bootstrap.build_store(Settings.from_env(chain.env))
        try:
            return _series(chain.api_url, d, n, warmup=2, store=store)
        finally:
            store.close()


def local(n: int, job_cmd: str | None) -> dict[str, Any]:
    env = {"PHOENIX_DISPATCH": "local", "PHOENIX_GENERATOR": "local"}
    if job_cmd:
        env["PHOENIX_LOCAL_JOB_CMD_IMAGE"] = job_cmd
    with c.temp_dir("phoenix-bench-lat-local-") as d:
        # PEX_ROOT inside the temp dir: the pex variant's warm-up installs its venv there.
        env["PEX_ROOT"] = str(d / "pex_root")
        with c.api_server(
            env, module="api.local", data_dir=d / "data", log_path=d / "server.log"
        ) as base:
            return _series(base, d / "data", n, warmup=2)


def celery(n: int) -> dict[str, Any]:
    from tools.servers import redis_server

    with redis_server() as redis, c.temp_dir("phoenix-bench-lat-celery-") as d:
        data = d / "data"
        worker_env = c.clean_env(
            {
                "PHOENIX_DATA_DIR": str(data),
                "PHOENIX_STORE": "sqlite",
                "PHOENIX_MEDIA": "local",
                "PHOENIX_GENERATOR": "local",
                "PHOENIX_CELERY_BROKER_URL": redis.url,
            },
            pythonpath=c.src_pythonpath(),
        )
        log = open(d / "worker.log", "wb")
        worker = subprocess.Popen(
            [
                str(c.PYTHON),
                "-m",
                "jobs.legacy.worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
            ],
            cwd=c.REPO,
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            api_env = {"PHOENIX_DISPATCH": "celery", "PHOENIX_CELERY_BROKER_URL": redis.url}
            with c.api_server(api_env, data_dir=data, log_path=d / "server.log") as base:
                # Warm-up: enough creations that both prefork children have built their state.
                return _series(base, data, n, warmup=4)
        finally:
            c.stop(worker)
            log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args(argv)
    c.ensure_pexes(["image-job-local"], build=not args.no_build)
    pex_cmd = f"{c.plain_python311()} {c.pex_path('image-job-local')}"

    results: dict[str, Any] = {}
    print(f"[local] {args.n} creations via python -m api.local ...", flush=True)
    results["local"] = local(args.n, None)
    print(f"[local-pex] {args.n} creations, job = {pex_cmd} ...", flush=True)
    results["local-pex"] = local(args.n, pex_cmd)
    print(f"[celery] {args.n} creations via a hot Celery worker ...", flush=True)
    results["celery"] = celery(args.n)
    print(
        f"[cloud-tasks] {args.n} creations through the Cloud Tasks emulator -> jobs:run stand-in "
        "-> job (Firestore, fake Vertex, storage emulators) ...",
        flush=True,
    )
    results["cloud-tasks"] = cloud_tasks(args.n)

    c.table(
        f"Dispatch latency created_at -> claimed_at ({args.n} sequential creations per path)",
        [
            "path",
            "median ms",
            "p95 ms",
            "max ms",
            "API dispatched median ms",
            "completed median ms",
        ],
        [
            [
                k,
                v["claim_p50_ms"],
                v["claim_p95_ms"],
                v["claim_max_ms"],
                v["dispatched_p50_ms"],
                v["completed_p50_ms"],
            ]
            for k, v in results.items()
        ],
    )
    c.emit_json("dispatch_latency", {**c.machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
