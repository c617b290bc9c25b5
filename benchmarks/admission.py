"""Admission across API processes: does one user get exactly the limit, however many instances?

Run (repo root):  benchmarks/run admission [--requests 500] [--processes 4] [--threads 8]
                  [--src OTHER_CHECKOUT]   (the same load against another checkout's API)

The API as in production (``python -m api.main``: gunicorn, ``WEB_CONCURRENCY`` processes x
``GUNICORN_THREADS`` threads), every process its own app over ONE store (the SQLite file: a
stand-in for Cloud Run instances sharing Firestore). ``--requests`` client threads, each with
its own connection, wait on a barrier and then POST ``/api/generate/image`` for the same user
at once. Dispatch is ``record`` (nothing is generated), so no creation finishes during the
burst. Two runs:

1. the unfinished-creations cap (``PHOENIX_MAX_ACTIVE_PER_USER``, per-minute limit off):
   exactly the cap must be accepted, every other answer 429 with Retry-After, 0 5xx;
2. the per-minute limit (``PHOENIX_RATE_LIMIT_PER_MINUTE``, cap off): accepted within one
   request of the limit (the old per-process token bucket gave up to processes x limit).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

USER = "flooder"


def burst(url: str, n: int) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split(":")
    body = json.dumps({"prompt": "one of many"}).encode()
    headers = {"Content-Type": "application/json", "X-Phoenix-User": USER}
    barrier = threading.Barrier(n + 1)
    results: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()

    def one() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", "/api/generate/image", body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            reason = None
            if resp.status == 429:
                reason = json.loads(raw)["error"].get("reason")
            item = (resp.status, resp.getheader("Retry-After"), reason)
        except Exception as exc:  # a dropped connection counts as a failure, not a crash
            item = (0, None, type(exc).__name__)
        finally:
            conn.close()
        with lock:
            results.append(item)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(180)
    elapsed = time.perf_counter() - t0
    statuses = Counter(status for status, _, _ in results)
    refused = [(ra, reason) for status, ra, reason in results if status == 429]
    return {
        "requests": n,
        "answered": len(results),
        "accepted": statuses.get(202, 0),
        "refused_429": statuses.get(429, 0),
        "refused_with_retry_after": sum(1 for ra, _ in refused if ra and int(ra) > 0),
        "refusal_reasons": dict(Counter(reason for _, reason in refused)),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "other": {str(k): v for k, v in statuses.items() if k not in (202, 429) and k < 500},
        "seconds": c.r1(elapsed),
    }


def run(limits: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with c.temp_dir("phoenix-admission-") as tmp:
        env = {"PHOENIX_DISPATCH": "record", "PHOENIX_LOG_LEVEL": "WARNING", **limits}
        if args.src:  # another checkout's code (e.g. before this change), same benchmark
            env["PYTHONPATH"] = str(Path(args.src).resolve() / "src" / "python")
        with c.api_server(env, data_dir=tmp, workers=args.processes, threads=args.threads) as url:
            # One request per process first, so every worker has built its app and connections
            # (otherwise the burst also measures gunicorn's lazy app loading).
            for _ in range(args.processes * 2):
                c.http_json("GET", url + "/api/creations", headers={"X-Phoenix-User": "warm"})
            return burst(url, args.requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--cap", type=int, default=10)
    parser.add_argument("--per-minute", type=int, default=30)
    parser.add_argument(
        "--src", default="", help="run the API from another checkout (baseline comparisons)"
    )
    args = parser.parse_args()

    cap = run(
        {"PHOENIX_MAX_ACTIVE_PER_USER": str(args.cap), "PHOENIX_RATE_LIMIT_PER_MINUTE": "0"}, args
    )
    rate = run(
        {"PHOENIX_MAX_ACTIVE_PER_USER": "0", "PHOENIX_RATE_LIMIT_PER_MINUTE": str(args.per_minute)},
        args,
    )
    title = (
        f"{args.requests} simultaneous POST /api/generate/image from one user, "
        f"{args.processes} API processes x {args.threads} threads, one SQLite store"
    )
    c.table(
        title,
        ["limit", "accepted", "429", "429 with Retry-After", "5xx", "other", "seconds"],
        [
            [
                f"cap {args.cap} unfinished",
                cap["accepted"],
                cap["refused_429"],
                cap["refused_with_retry_after"],
                cap["server_errors_5xx"],
                cap["other"] or "-",
                cap["seconds"],
            ],
            [
                f"{args.per_minute} per minute",
                rate["accepted"],
                rate["refused_429"],
                rate["refused_with_retry_after"],
                rate["server_errors_5xx"],
                rate["other"] or "-",
                rate["seconds"],
            ],
        ],
    )
    ok = (
        cap["accepted"] == args.cap
        and cap["refused_429"] == cap["refused_with_retry_after"] == args.requests - args.cap
        and rate["server_errors_5xx"] == cap["server_errors_5xx"] == 0
        and abs(rate["accepted"] - args.per_minute) <= 1
        and rate["refused_429"] == rate["refused_with_retry_after"]
    )
    print(f"verdict: {'OK' if ok else 'FAILED'} (cap exact, per-minute within one, 0 5xx)")
    c.emit_json(
        "admission",
        {
            "processes": args.processes,
            "threads": args.threads,
            "cap": {"limit": args.cap, **cap},
            "per_minute": {"limit": args.per_minute, **rate},
            "ok": ok,
            **c.machine(),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
