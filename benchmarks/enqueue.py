"""API enqueue path: ``POST /api/generate/image`` under gunicorn, new path vs legacy Celery.

Run (repo root):  PYTHONPATH=src/python:. .venv/bin/python -m benchmarks.enqueue [--duration 30] [--rate 200]

Server: ``python -m api.main`` (gunicorn, gthread; WEB_CONCURRENCY/GUNICORN_THREADS default to
the production defaults 1 x 8, override with --workers/--threads), SQLite store in a fresh temp
PHOENIX_DATA_DIR per measurement, JSON logs at INFO (production) to /dev/null, rate limits off
(PHOENIX_RATE_LIMIT_PER_MINUTE=0, PHOENIX_MAX_ACTIVE_PER_USER=0), sweeper off.
* new path:  PHOENIX_DISPATCH=record (the record + dispatch bookkeeping of the real path; the
  recording dispatcher runs no job, so no job competes for the 2 CPUs).
* legacy:    PHOENIX_DISPATCH=celery to a throw-away local redis-server (tools.servers); no worker:
  tasks just queue (the Redis list length is checked against the 202 count).

Two measurements per path, each after a warm-up, each on a fresh server:
(i)  max throughput: wrk (Debian; installed if missing), 2 threads x 16 connections, --duration s,
     requests spread over 1000 users (X-Phoenix-User); requests/s, p50/p99.
(ii) paced: an open-loop generator (wrk2 is not in Debian) at --rate requests/s for --duration s:
     request i is due at start + i/rate and its latency is measured FROM THAT DUE TIME, so a
     stalled server is charged for the queueing it causes (no coordinated omission).
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
    import redis  # the dev venv has redis-py (celery[redis])

    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


def _flush(broker_url: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.flushdb()
    finally:
        client.close()


def measure_path(
    name: str, env: dict[str, str], args: argparse.Namespace, broker: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # (i) max throughput
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
        if broker:
            _flush(broker)
        print(f"[{name}] wrk max throughput, {args.duration} s ...", flush=True)
        r = _wrk(url, args.duration)
        if broker:
            r["queued_in_redis"] = _redis_len(broker)
        result["max"] = r
    # (ii) paced
    with c.temp_dir(f"phoenix-bench-enq-{name}-") as d, c.api_server(
        env, data_dir=d, workers=args.workers, threads=args.threads
    ) as url:
        paced(url, args.rate, 2.0)  # warm-up (imports, connections, dispatcher build)
        if broker:
            _flush(broker)
        print(f"[{name}] paced {args.rate:.0f} req/s, {args.duration} s ...", flush=True)
        r = paced(url, args.rate, args.duration)
        if broker:
            r["queued_in_redis"] = _redis_len(broker)
        result["paced"] = r
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
    ap.add_argument("--workers", type=int, default=1, help="WEB_CONCURRENCY (production default 1)")
    ap.add_argument(
        "--threads", type=int, default=8, help="GUNICORN_THREADS (production default 8)"
    )
    args = ap.parse_args(argv)
    c.ensure_apt("wrk")
    from tools.servers import redis_server

    pre = preflight_limits()
    print(f"[preflight] limits: {pre}", flush=True)
    results: dict[str, Any] = {}
    results["new"] = measure_path("new", {"PHOENIX_DISPATCH": "record", **UNLIMITED}, args, None)
    with redis_server() as redis:
        env = {"PHOENIX_DISPATCH": "celery", "PHOENIX_CELERY_BROKER_URL": redis.url, **UNLIMITED}
        results["celery"] = measure_path("celery", env, args, redis.url)

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
                p["achieved_rps"],
                p["p50_ms"],
                p["p99_ms"],
                json.dumps(p["statuses"]),
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
            "paced req/s",
            "p50 ms",
            "p99 ms",
            "statuses",
        ],
        rows,
    )
    ratio = results["new"]["max"]["rps"] / results["celery"]["max"]["rps"]
    p99 = results["new"]["paced"]["p99_ms"]
    met_ratio, met_p99 = ratio >= TARGET_RATIO, p99 <= TARGET_P99_MS
    c.table(
        "Targets",
        ["target", "measured", "met"],
        [
            ["new >= 1.0 x Celery throughput", f"{ratio:.2f} x", met_ratio],
            [
                f"new p99 <= 25 ms at {args.rate:.0f} req/s",
                f"{p99:.1f} ms (Celery {results['celery']['paced']['p99_ms']:.1f} ms)",
                met_p99,
            ],
        ],
    )
    queued = [results["celery"][k].get("queued_in_redis") for k in ("max", "paced")]
    print(
        f"Celery messages in Redis after each run: {queued} (>= its 202 count: wrk does not count requests still in flight when it stops)"
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
            "ratio_new_over_celery_rps": round(ratio, 3),
            "targets_met": {"throughput_ge_celery": met_ratio, "p99_le_25ms_at_200rps": met_p99},
            "limits_preflight": pre,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
