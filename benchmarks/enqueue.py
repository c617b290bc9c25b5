"""API enqueue path: ``POST /api/generate/image`` under gunicorn, Cloud Tasks vs legacy Celery.

Run (repo root):  benchmarks/run enqueue [--duration 30] [--rate 200] [--sequential 300]

Like with like: each path runs its real dispatcher against a real local queue, with nothing
consuming it, and the queue is checked to hold one message per 202 afterwards.
* new path:  PHOENIX_DISPATCH=cloud-tasks: the real ``google-cloud-tasks`` client creating an
  HTTP task (the ``jobs:run`` call) per request on the Cloud Tasks emulator (gRPC, loopback),
  in a queue that is PAUSED, so no task is delivered and no job competes for the 2 CPUs.
* legacy:    PHOENIX_DISPATCH=celery: ``send_task`` to a throw-away local redis-server
  (tools.servers); no worker, tasks just queue (the Redis list length is checked).
The emulator is a Python gRPC server on the same 2 cores; real Cloud Tasks is a network call
(tens of ms) that costs the API no CPU, so the emulator's figures are not production latency.

Server: ``python -m api.main`` (gunicorn, gthread; WEB_CONCURRENCY/GUNICORN_THREADS default to
the production defaults 1 x 8, override with --workers/--threads), SQLite store in a fresh temp
PHOENIX_DATA_DIR per measurement, JSON logs at INFO (production) to /dev/null, rate limits off
(PHOENIX_RATE_LIMIT_PER_MINUTE=0, PHOENIX_MAX_ACTIVE_PER_USER=0), sweeper off.

Per path, each on a fresh server after a warm-up:
(i)   max throughput: wrk (Debian; installed if missing), 2 threads x 16 connections,
      --duration s, requests spread over 1000 users (X-Phoenix-User); requests/s, p50/p99.
(ii)  paced: an open-loop generator (wrk2 is not in Debian) at --rate requests/s for --duration
      s: request i is due at start + i/rate and its latency is measured FROM THAT DUE TIME, so
      a stalled server is charged for the queueing it causes (no coordinated omission).
(iii) the API's own overhead: --sequential requests one at a time over one keep-alive
      connection (median round trip), minus the median of the same store writes the service
      makes per request (``add`` + ``update`` to ``dispatched``, SQLite, in this process) and
      the median of the same dispatch call (the path's real adapter, in this process): what is
      left is HTTP, gunicorn, Flask, validation, JSON, logging and metrics.
Targets: new >= 1.0 x Celery throughput; new p99 <= 25 ms at 200 req/s.
A preflight also checks whether the API enforces the rate limits at their defaults at all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

PATH = "/api/generate/image"
BODY = json.dumps({"prompt": "a lighthouse at dusk, benchmark"})
UNLIMITED = {"PHOENIX_RATE_LIMIT_PER_MINUTE": "0", "PHOENIX_MAX_ACTIVE_PER_USER": "0"}
TASKS_PARENT = "projects/phoenix-bench/locations/us-central1"
TARGET_RATIO = 1.0
TARGET_P99_MS = 25.0


# --- open-loop paced generator ------------------------------------------------------------------


def paced(
    base_url: str, rate: float, duration_s: float, *, senders: int = 32, users: int = 1000
) -> dict[str, Any]:
    """Sends ``rate * duration_s`` POSTs, request i due at start + i/rate, over ``senders``
    keep-alive connections. Latency = completion - due time (includes any client-side wait for
    a free connection, i.e. the server's backlog)."""
    parts = urlsplit(base_url)
    host = parts.hostname or c.LOOPBACK
    n = int(rate * duration_s)
    due: queue.Queue[tuple[int, float] | None] = queue.Queue()
    lat: list[float] = [0.0] * n
    service: list[float] = [0.0] * n
    status: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def sender() -> None:
        conn = http.client.HTTPConnection(host, parts.port, timeout=30)
        while True:
            item = due.get()
            if item is None:
                conn.close()
                return
            i, t_due = item
            headers = {"Content-Type": "application/json", "X-Phoenix-User": f"paced-{i % users}"}
            code = -1
            t_send = time.perf_counter()
            for attempt in range(2):  # one reconnect: gunicorn closes idle keep-alive after 5 s
                try:
                    conn.request("POST", PATH, body=BODY, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    code = resp.status
                    break
                except (http.client.HTTPException, OSError) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(host, parts.port, timeout=30)
                    if attempt == 1:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
            t_done = time.perf_counter()
            lat[i] = (t_done - t_due) * 1000
            service[i] = (t_done - t_send) * 1000
            with lock:
                status[code] = status.get(code, 0) + 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    start = time.perf_counter() + 0.05
    for i in range(n):
        t_due = start + i / rate
        delay = t_due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        due.put((i, t_due))
    for _ in threads:
        due.put(None)
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - start
    return {
        "requests": n,
        "target_rps": rate,
        "achieved_rps": round(n / elapsed, 1),
        "p50_ms": round(c.percentile(lat, 50), 2),
        "p90_ms": round(c.percentile(lat, 90), 2),
        "p99_ms": round(c.percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2),
        "service_p99_ms": round(c.percentile(service, 99), 2),
        "statuses": {str(k): v for k, v in sorted(status.items())},
        "errors": errors[:5],
    }


# --- one path -----------------------------------------------------------------------------------


def _wrk(url: str, duration: int) -> dict[str, Any]:
    return c.run_wrk(
        url + PATH,
        duration_s=duration,
        connections=16,
        threads=2,
        method="POST",
        body=BODY,
        users=1000,
    )


def _redis_len(broker_url: str) -> int:
    import redis  # in the lockfile (celery[redis])

    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


class Queue:
    """Where a path's messages land, and how many are there: a paused Cloud Tasks queue (a new
    one per server) or the Redis list (flushed per server)."""

    def __init__(self, path: str, endpoint: str) -> None:
        self.path = path
        self.endpoint = endpoint
        self.name = ""
        self._n = 0

    def fresh(self) -> dict[str, str]:
        """A new empty queue; returns the API environment that sends to it."""
        if self.path == "celery":
            import redis

            broker = redis.Redis.from_url(self.endpoint)
            try:
                broker.flushdb()
            finally:
                broker.close()
            return {"PHOENIX_DISPATCH": "celery", "PHOENIX_CELERY_BROKER_URL": self.endpoint}
        from common.adapters.cloud_tasks_dispatch import tasks_client

        self._n += 1
        self.name = f"{TASKS_PARENT}/queues/enqueue-{self._n}-{time.monotonic_ns() % 10**6}"
        client = tasks_client(self.endpoint)
        from google.cloud import tasks_v2

        client.create_queue(parent=TASKS_PARENT, queue=tasks_v2.Queue(name=self.name))
        client.pause_queue(name=self.name)  # tasks accumulate; nothing is delivered
        return {
            "PHOENIX_DISPATCH": "cloud-tasks",
            "PHOENIX_TASKS_QUEUE": self.name,
            "PHOENIX_CLOUD_TASKS_ENDPOINT": self.endpoint,
            # Never called (paused queue); a closed port if the pause were ever ignored.
            "PHOENIX_RUN_API_URL": f"http://{c.LOOPBACK}:9",
            "PHOENIX_TASKS_SERVICE_ACCOUNT": "phoenix-tasks@phoenix-bench.iam.gserviceaccount.com",
        }

    def count(self) -> int:
        if self.path == "celery":
            return _redis_len(self.endpoint)
        from common.adapters.cloud_tasks_dispatch import tasks_client

        return len(list(tasks_client(self.endpoint).list_tasks(parent=self.name)))

    def dispatcher(self, env: dict[str, str]) -> Any:
        """The path's real adapter, built from the same settings the API gets."""
        from common.config import Settings
        from common.dispatchers import build_dispatcher

        settings = Settings.from_env({**env, "PHOENIX_DATA_DIR": "/nonexistent"})
        return build_dispatcher(settings, self.path)


class Components:
    """What the service does per request besides being an API, done here in this process: the
    store writes (``add`` of the pending record, ``update`` to dispatched; SQLite in a temp
    dir, as the server) and the dispatch call (the path's real adapter, to the same queue)."""

    def __init__(self, queue: Queue, env: dict[str, str], store_dir: Path) -> None:
        from common.adapters.sqlite_store import SqliteCreationStore

        self.queue = queue
        self.dispatcher = queue.dispatcher(env)
        self.store = SqliteCreationStore(store_dir / "phoenix.sqlite3")
        self.store_ms: list[float] = []
        self.dispatch_ms: list[float] = []
        self._i = 0

    def step(self, record: bool = True) -> None:
        from common.domain import creation as lc
        from common.domain.creation import Kind
        from common.domain.payload import TaskPayload

        self._i += 1
        creation = lc.new(
            user_id=f"seq-{self._i % 50}",
            kind=Kind.IMAGE,
            prompt="a lighthouse at dusk, benchmark",
            params={"aspect_ratio": "1:1", "count": 1},
            path=self.queue.path,
            now=lc.utcnow(),
        )
        t0 = time.perf_counter()
        self.store.add(creation)
        t1 = time.perf_counter()
        self.dispatcher.dispatch(TaskPayload(creation_id=creation.id, kind=Kind.IMAGE))
        t2 = time.perf_counter()
        self.store.update(creation.id, lambda cr: lc.mark_dispatched(cr, now=lc.utcnow()))
        t3 = time.perf_counter()
        if record:
            self.store_ms.append((t1 - t0 + t3 - t2) * 1000)
            self.dispatch_ms.append((t2 - t1) * 1000)

    def close(self) -> None:
        self.store.close()


def sequential(base_url: str, n: int, parts: Components, *, record: bool = True) -> list[float]:
    """``n`` POSTs one after another over one keep-alive connection (round trips in ms), each
    followed by one in-process ``parts.step()``: both see the same machine load, which on a
    shared machine moves a lot from one second to the next."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or c.LOOPBACK, url.port, timeout=30)
    out = []
    try:
        for i in range(n):
            headers = {"Content-Type": "application/json", "X-Phoenix-User": f"seq-{i % 50}"}
            t = time.perf_counter()
            conn.request("POST", PATH, body=BODY, headers=headers)
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - t) * 1000)
            if resp.status != 202:
                raise SystemExit(f"sequential POST answered {resp.status}")
            parts.step(record)
    finally:
        conn.close()
    return out


def measure_path(queue: Queue, args: argparse.Namespace) -> dict[str, Any]:
    name = queue.path
    result: dict[str, Any] = {}
    # (i) max throughput
    env = {**queue.fresh(), **UNLIMITED}
    with c.temp_dir(f"phoenix-bench-enq-{name}-") as d, c.api_server(
        env, data_dir=d, workers=args.workers, threads=args.threads
    ) as url:
        c.run_wrk(
            url + PATH,
            duration_s=3,
            connections=16,
            threads=2,
            method="POST",
            body=BODY,
            users=1000,
        )
        print(f"[{name}] wrk max throughput, {args.duration} s ...", flush=True)
        before = queue.count()
        r = _wrk(url, args.duration)
        r["queued"] = queue.count() - before
        result["max"] = r
    # (ii) paced
    env = {**queue.fresh(), **UNLIMITED}
    with c.temp_dir(f"phoenix-bench-enq-{name}-") as d, c.api_server(
        env, data_dir=d, workers=args.workers, threads=args.threads
    ) as url:
        paced(url, args.rate, 2.0)  # warm-up (imports, connections, dispatcher build)
        print(f"[{name}] paced {args.rate:.0f} req/s, {args.duration} s ...", flush=True)
        before = queue.count()
        r = paced(url, args.rate, args.duration)
        r["queued"] = queue.count() - before
        result["paced"] = r
        # (iii) one request at a time on the same warm server, interleaved with the same work
        # done in this process
        print(f"[{name}] {args.sequential} sequential requests ...", flush=True)
        with c.temp_dir(f"phoenix-bench-enq-store-{name}-") as sd:
            parts = Components(queue, env, sd)
            try:
                sequential(url, 30, parts, record=False)  # warm-up
                rtt = sequential(url, args.sequential, parts)
            finally:
                parts.close()
    rtt_p50 = c.percentile(rtt, 50)
    store_p50 = c.percentile(parts.store_ms, 50)
    dispatch_p50 = c.percentile(parts.dispatch_ms, 50)
    result["sequential"] = {
        "requests": len(rtt),
        "round_trip_p50_ms": round(rtt_p50, 3),
        "round_trip_p99_ms": round(c.percentile(rtt, 99), 3),
        "store_writes_p50_ms": round(store_p50, 3),
        "dispatch_call_p50_ms": round(dispatch_p50, 3),
        "dispatch_call_p99_ms": round(c.percentile(parts.dispatch_ms, 99), 3),
        "api_overhead_p50_ms": round(rtt_p50 - store_p50 - dispatch_p50, 3),
    }
    return result


def preflight_limits() -> dict[str, Any]:
    """Does the API enforce the limits at all? 35 POSTs from one user against the DEFAULT limits
    (30/min bucket, 10 active): a wired limiter answers 429 by request 11 or 31."""
    with c.temp_dir("phoenix-bench-enq-pre-") as d, c.api_server(
        {"PHOENIX_DISPATCH": "record"}, data_dir=d
    ) as url:
        codes = [
            c.http_json("POST", url + PATH, json.loads(BODY), {"X-Phoenix-User": "one-user"})[0]
            for _ in range(35)
        ]
    with c.temp_dir("phoenix-bench-enq-pre-") as d, c.api_server(
        {"PHOENIX_DISPATCH": "record", **UNLIMITED}, data_dir=d
    ) as url:
        codes0 = [
            c.http_json("POST", url + PATH, json.loads(BODY), {"X-Phoenix-User": "one-user"})[0]
            for _ in range(35)
        ]
    return {
        "defaults_429s": codes.count(429),
        "defaults_first_429_at": (codes.index(429) + 1) if 429 in codes else None,
        "disabled_429s": codes0.count(429),
        "disabled_non_202": len([x for x in codes0 if x != 202]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--sequential", type=int, default=300, help="one-at-a-time requests (iii)")
    ap.add_argument("--workers", type=int, default=1, help="WEB_CONCURRENCY (production default 1)")
    ap.add_argument(
        "--threads", type=int, default=8, help="GUNICORN_THREADS (production default 8)"
    )
    args = ap.parse_args(argv)
    c.ensure_apt("wrk")
    from tools.servers import redis_server, tasks_emulator

    pre = preflight_limits()
    print(f"[preflight] limits: {pre}", flush=True)
    results: dict[str, Any] = {}
    with tasks_emulator(max_retries=0) as emulator:
        results["cloud-tasks"] = measure_path(Queue("cloud-tasks", emulator.url), args)
    with redis_server() as redis:
        results["celery"] = measure_path(Queue("celery", redis.url), args)

    rows = []
    for path, r in results.items():
        m, p = r["max"], r["paced"]
        rows.append(
            [
                path,
                m["rps"],
                m["p50_ms"],
                m["p99_ms"],
                json.dumps(m["statuses"]),
                m["queued"],
                p["achieved_rps"],
                p["p50_ms"],
                p["p99_ms"],
                json.dumps(p["statuses"]),
                p["queued"],
            ]
        )
    c.table(
        f"Enqueue POST {PATH} (gunicorn {args.workers} worker x {args.threads} threads, {args.duration} s each)",
        [
            "path",
            "max req/s",
            "p50 ms",
            "p99 ms",
            "statuses",
            "queued",
            "paced req/s",
            "p50 ms",
            "p99 ms",
            "statuses",
            "queued",
        ],
        rows,
    )
    c.table(
        f"Per request, one at a time ({args.sequential} requests; medians, ms)",
        ["path", "round trip", "store writes", "dispatch call", "API overhead (rest)"],
        [
            [
                path,
                r["sequential"]["round_trip_p50_ms"],
                r["sequential"]["store_writes_p50_ms"],
                r["sequential"]["dispatch_call_p50_ms"],
                r["sequential"]["api_overhead_p50_ms"],
            ]
            for path, r in results.items()
        ],
    )
    ratio = results["cloud-tasks"]["max"]["rps"] / results["celery"]["max"]["rps"]
    p99 = results["cloud-tasks"]["paced"]["p99_ms"]
    met_ratio, met_p99 = ratio >= TARGET_RATIO, p99 <= TARGET_P99_MS
    c.table(
        "Targets",
        ["target", "measured", "met"],
        [
            ["Cloud Tasks path >= 1.0 x Celery throughput", f"{ratio:.2f} x", met_ratio],
            [
                f"Cloud Tasks path p99 <= 25 ms at {args.rate:.0f} req/s",
                f"{p99:.1f} ms (Celery {results['celery']['paced']['p99_ms']:.1f} ms)",
                met_p99,
            ],
        ],
    )
    print(
        "Messages in each queue after each run (>= its 202 count: wrk does not count requests "
        "still in flight when it stops): "
        + ", ".join(f"{k} {[r['max']['queued'], r['paced']['queued']]}" for k, r in results.items())
    )
    if pre["defaults_429s"] == 0:
        print(
            "NOTE: with the DEFAULT limits (30/min, 10 active) 35 POSTs from one user got no 429: "
            "the API does not enforce PHOENIX_RATE_LIMIT_PER_MINUTE / PHOENIX_MAX_ACTIVE_PER_USER."
        )
    c.emit_json(
        "enqueue",
        {
            **c.machine(),
            "gunicorn": {
                "WEB_CONCURRENCY": args.workers,
                "GUNICORN_THREADS": args.threads,
                "worker_class": "gthread",
            },
            "duration_s": args.duration,
            "wrk": {"threads": 2, "connections": 16, "users": 1000},
            "results": results,
            "ratio_cloud_tasks_over_celery_rps": round(ratio, 3),
            "targets_met": {"throughput_ge_celery": met_ratio, "p99_le_25ms_at_200rps": met_p99},
            "limits_preflight": pre,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
