"""Mixed load on the real server: paced open-loop submits + polls, then every accepted creation
must complete.

Run (repo root):
    benchmarks/run load_mixed \
        [--rate 200] [--duration 60] [--submit-share 0.02] [--users 50] [--seed 1]

What runs: ``python -m api.main`` (gunicorn, 1 worker x 8 threads) on the embedded defaults
(SQLite store, local media, the local process dispatcher running ``python -m jobs.image.main``
per creation, at most ``PHOENIX_LOCAL_MAX_JOBS`` = 4 at once, local generator), JSON logs at
INFO (access log on) to a file. Rate limits are raised so the load is not refused (429s are
still counted apart, and expected to be 0).

The load generator is open loop: request i is due at ``t0 + i / rate`` whatever happened to the
previous ones (a closed loop would slow down with the server and hide queueing). Worker threads
(each with its own keep-alive ``http.client`` connection) take the next due request; latency
is reported two ways: *scheduled* (due time -> response, which includes any time the request
waited because the generator or server fell behind: the number a user would see, and the
headline) and *service* (send -> response). Bounded: exactly ``rate * duration`` requests, and a hard stop at
``duration + 30`` s.

The mix, like the page: a share of requests submit an image (``POST /api/generate/image``); the
rest poll a creation the same user submitted (``GET /api/creations/<id>`` with the last ETag in
``If-None-Match``, so an unchanged record answers 304), or the user's list before they have one.

Why the default submit share is 2 % and not 10 %: each image job is a new Python process
(~0.2 CPU-s) and this machine has 2 cores shared with the server and the load generator.
10 % of 200 req/s = 20 jobs/s = ~4 CPU-s of work per second, which 2 cores cannot do; the
backlog then grows without bound. ``--submit-share 0.1`` measures exactly that; the default
runs at a rate the machine can keep up with. Both print the measured job completion rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

TERMINAL = {"completed", "failed"}


@dataclass
class Sample:
    kind: str  # submit | poll | list
    status: int  # HTTP status, or 0 for a transport error
    due: float
    start: float
    end: float


@dataclass
class Known:
    """What the load generator remembers about accepted creations (like open browser tabs)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_user: dict[str, list[str]] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)  # id -> user

    def add(self, user: str, cid: str) -> None:
        with self.lock:
            self.by_user.setdefault(user, []).append(cid)
            self.accepted[cid] = user

    def pick(self, user: str, rng: random.Random) -> str | None:
        with self.lock:
            ids = self.by_user.get(user)
            # Recent creations are the ones being watched: favour the newest few.
            return rng.choice(ids[-5:]) if ids else None


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class LoadGenerator:
    def __init__(
        self,
        base_url: str,
        *,
        rate: float,
        duration: float,
        submit_share: float,
        users: int,
        workers: int,
        seed: int,
    ) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.rate = rate
        self.total = int(rate * duration)
        self.duration = duration
        self.submit_every = max(1, round(1 / submit_share)) if submit_share > 0 else 0
        self.users = users
        self.workers = workers
        self.seed = seed
        self.known = Known()
        self.samples: list[Sample] = []
        self.unexpected: Counter[str] = Counter()
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            i = self._next
            self._next += 1
            return i

    def run(self) -> float:
        t0 = time.monotonic() + 0.2
        hard_stop = t0 + self.duration + 30.0
        threads = [
            threading.Thread(target=self._worker, args=(w, t0, hard_stop), daemon=True)
            for w in range(self.workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, hard_stop - time.monotonic()) + 5)
        return t0

    def _worker(self, w: int, t0: float, hard_stop: float) -> None:
        rng = random.Random(self.seed * 1000 + w)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        local: list[Sample] = []
        while True:
            i = self._take()
            if i is None:
                break
            due = t0 + i / self.rate
            now = time.monotonic()
            if now > hard_stop:
                break
            if due > now:
                time.sleep(due - now)
            user = f"user-{rng.randrange(self.users)}"
            if self.submit_every and i % self.submit_every == 0:
                kind, method, path = "submit", "POST", "/api/generate/image"
                body: bytes | None = json.dumps(
                    {"prompt": f"load test {i}", "count": 1, "aspect_ratio": "1:1"}
                ).encode()
                headers = {"Content-Type": "application/json"}
                cid = None
            else:
                cid = self.known.pick(user, rng)
                body = None
                headers = {}
                if cid is None:
                    kind, method, path = "list", "GET", "/api/creations?limit=10"
                else:
                    kind, method, path = "poll", "GET", f"/api/creations/{cid}"
                    etag = self.known.etags.get(cid)
                    if etag:
                        headers["If-None-Match"] = etag
            headers["X-Phoenix-User"] = user
            start = time.monotonic()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                status, raw = 0, b""
                self.unexpected[f"{kind}: {type(exc).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                resp = None
            end = time.monotonic()
            local.append(Sample(kind, status, due, start, end))
            if resp is not None:
                if kind == "submit" and status == 202:
                    self.known.add(user, json.loads(raw)["id"])
                elif kind == "poll" and status == 200 and cid:
                    etag = resp.getheader("ETag")
                    if etag:
                        self.known.etags[cid] = etag
        conn.close()
        with self._lock:
            self.samples.extend(local)


def wait_for_completion(
    base_url: str, accepted: dict[str, str], timeout: float
) -> tuple[Counter[str], float]:
    """Poll every accepted creation until terminal; returns final statuses and the time taken."""
    started = time.monotonic()
    pending = dict(accepted)
    final: Counter[str] = Counter()
    while pending:
        for cid, user in list(pending.items()):
            status, body, _ = c.http_json(
                "GET", f"{base_url}/api/creations/{cid}", headers={"X-Phoenix-User": user}
            )
            if status == 200 and body["status"] in TERMINAL:
                final[body["status"]] += 1
                del pending[cid]
        if not pending or time.monotonic() - started >= timeout:
            break
        time.sleep(1.0)
    final["not finished"] = len(pending)
    return final, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--submit-share", type=float, default=0.02)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--workers", type=int, default=32, help="load generator threads")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 1000 and 0 < args.duration <= 600 and 0 <= args.submit_share <= 1):
        parser.error("keep --rate in (0, 1000], --duration in (0, 600], --submit-share in [0, 1]")

    load1 = os.getloadavg()[0]
    with c.temp_dir("phoenix-load-") as work:
        log_path = work / "server.log"
        env = {
            "PHOENIX_DISPATCH": "local",
            "PHOENIX_GENERATOR": "local",
            "PHOENIX_RATE_LIMIT_PER_MINUTE": "1000000",
            "PHOENIX_MAX_ACTIVE_PER_USER": "0",
            "PHOENIX_LOG_FORMAT": "json",
            "PHOENIX_LOG_LEVEL": "INFO",
        }
        with c.api_server(env, data_dir=work / "data", log_path=log_path) as base:
            gen = LoadGenerator(
                base,
                rate=args.rate,
                duration=args.duration,
                submit_share=args.submit_share,
                users=args.users,
                workers=args.workers,
                seed=args.seed,
            )
            busy0, total0 = _cpu_times()
            t0 = gen.run()
            busy1, total1 = _cpu_times()
            load_s = max(s.end for s in gen.samples) - t0 if gen.samples else 0.0
            accepted = dict(gen.known.accepted)
            done_during_load, _ = wait_for_completion(base, accepted, timeout=0.0)
            final, drain_s = wait_for_completion(base, accepted, timeout=args.drain_timeout)
        server_log = log_path.read_text(errors="replace")

    samples = gen.samples
    by_kind = Counter(s.kind for s in samples)
    statuses = Counter(s.status for s in samples)
    rate_limited = statuses.get(429, 0)
    errors = [s for s in samples if not (200 <= s.status < 300 or s.status in (304, 429))]
    service = [(s.end - s.start) * 1000 for s in samples]
    scheduled = [(s.end - s.due) * 1000 for s in samples]
    lag = [(s.start - s.due) * 1000 for s in samples]
    cpu_pct = 100.0 * (busy1 - busy0) / max(1.0, total1 - total0)
    completed = final.get("completed", 0)
    job_rate = completed / (load_s + drain_s) if load_s + drain_s else 0.0
    server_errors = sum(1 for line in server_log.splitlines() if '"severity": "ERROR"' in line)

    print(
        f"load_mixed: open loop {args.rate:.0f} req/s for {args.duration:.0f} s, submit share "
        f"{args.submit_share:.1%} ({args.rate * args.submit_share:.1f} image jobs/s), "
        f"{args.users} users, {args.workers} generator threads; 2-core machine, "
        f"load average at start {load1:.2f}"
    )
    c.table(
        "Requests",
        [
            "kind",
            "sent",
            "p50 ms (scheduled)",
            "p99 ms (scheduled)",
            "p50 ms (service)",
            "p99 ms (service)",
        ],
        [
            [
                k,
                by_kind[k],
                c.percentile([(s.end - s.due) * 1000 for s in samples if s.kind == k], 50),
                c.percentile([(s.end - s.due) * 1000 for s in samples if s.kind == k], 99),
                c.percentile([(s.end - s.start) * 1000 for s in samples if s.kind == k], 50),
                c.percentile([(s.end - s.start) * 1000 for s in samples if s.kind == k], 99),
            ]
            for k in ("submit", "poll", "list")
            if by_kind[k]
        ]
        + [
            [
                "all",
                len(samples),
                c.percentile(scheduled, 50),
                c.percentile(scheduled, 99),
                c.percentile(service, 50),
                c.percentile(service, 99),
            ]
        ],
    )
    print(
        f"\nrequests sent: {len(samples)} of {gen.total} planned in {load_s:.1f} s "
        f"(achieved {len(samples) / load_s if load_s else 0:.1f} req/s)"
    )
    print(f"statuses: {dict(sorted(statuses.items()))}")
    print(
        f"errors (not 2xx/304, 429 excluded): {len(errors)}; 429s: {rate_limited}; "
        f"transport errors: {dict(gen.unexpected)}; ERROR lines in server log: {server_errors}"
    )
    print(
        f"latency all requests (what a user sees, from the scheduled time): "
        f"p50 {c.percentile(scheduled, 50):.1f} ms, p99 {c.percentile(scheduled, 99):.1f} ms; "
        f"service (send -> response) p50 {c.percentile(service, 50):.1f} ms, "
        f"p99 {c.percentile(service, 99):.1f} ms; generator lag p99 {c.percentile(lag, 99):.1f} ms, "
        f"max {max(lag) if lag else 0:.1f} ms"
    )
    print(f"machine CPU busy during load: {cpu_pct:.0f} %")
    print(
        f"accepted creations: {len(accepted)}; completed by end of load: "
        f"{done_during_load.get('completed', 0)}; after drain: completed {completed}, "
        f"failed {final.get('failed', 0)}, not finished {final.get('not finished', 0)} "
        f"(drain {drain_s:.1f} s); completed/accepted = {completed}/{len(accepted)}; "
        f"job throughput {job_rate:.2f}/s"
    )
    c.emit_json(
        "load_mixed",
        {
            "rate": args.rate,
            "duration_s": args.duration,
            "submit_share": args.submit_share,
            "requests": len(samples),
            "achieved_rps": c.r1(len(samples) / load_s) if load_s else 0,
            "errors": len(errors),
            "rate_limited": rate_limited,
            # Headline: scheduled latency (due time -> response), what a user sees.
            "scheduled_p50_ms": c.r1(c.percentile(scheduled, 50)),
            "scheduled_p99_ms": c.r1(c.percentile(scheduled, 99)),
            "service_p50_ms": c.r1(c.percentile(service, 50)),
            "service_p99_ms": c.r1(c.percentile(service, 99)),
            "seed": args.seed,
            "cpu_busy_pct": c.r1(cpu_pct),
            "accepted": len(accepted),
            "completed": completed,
            "failed": final.get("failed", 0),
            "not_finished": final.get("not finished", 0),
            "drain_s": c.r1(drain_s),
            "job_throughput_per_s": round(job_rate, 2),
            **c.machine(),
        },
    )
    ok = not errors and completed == len(accepted)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
