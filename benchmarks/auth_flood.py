"""A flood of bad ID tokens against the production identity: no 5xx, bounded certificate
fetches, and a signed-in user who does not notice.

Run (repo root):  benchmarks/run auth_flood [--tokens 10000] [--rate 400] [--fetch-delay 0.3]

The API as in production (``python -m api.main``, gunicorn 1 process x 8 threads,
``PHOENIX_AUTH=firebase``) fetches Firebase's signing certificates from a stand-in on loopback
(``PHOENIX_FIREBASE_CERTS_URL``) that answers like Google's endpoint (``Cache-Control:
max-age=3600``) after ``--fetch-delay`` seconds (a slow certificate endpoint is where a fetch
under a request-wide lock hurts) and counts its fetches.

1. Baseline: one valid user polls ``GET /api/creations`` every 50 ms for ``--seconds``;
   latency p50/p99.
2. Flood: ``--tokens`` bad tokens at ``--rate`` per second from 8 connections of a separate
   client process (garbage, unsigned ``alg: none``, RS256-shaped with a random ``kid``,
   non-string ``kid``s), while the same valid user polls exactly as in 1.

The flood competes with the valid user for the server's CPU as any traffic would; pick a rate
the machine sustains (the table prints the rate achieved), or the comparison measures an
overloaded server rather than authentication.

Figures: 5xx answers (must be 0; every bad token must get 401), certificate fetches against
what ``PHOENIX_FIREBASE_CERTS_MIN_INTERVAL_SECONDS`` allows (1 + flood seconds / interval),
and the valid user's p99 during the flood against its baseline (target <= 2x).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

PROJECT = "phoenix-bench"


def _b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def bad_tokens(n: int, seed: int = 13) -> list[str]:
    rng = random.Random(seed)
    now = int(time.time())
    claims = _b64(
        {
            "iss": f"https://securetoken.google.com/{PROJECT}",
            "aud": PROJECT,
            "sub": "mallory",
            "iat": now,
            "exp": now + 3600,
        }
    )
    sig = _b64(bytes(rng.getrandbits(8) for _ in range(256)))
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # garbage
            out.append(
                "".join(rng.choice("abcdefghijklmnop.-_=+/") for _ in range(rng.randint(1, 300)))
            )
        elif kind == 1:  # unsigned
            out.append(f"{_b64({'alg': 'none', 'kid': f'{rng.getrandbits(64):x}'})}.{claims}.")
        elif kind == 2:  # RS256-shaped, random kid: the one that used to trigger a fetch
            out.append(
                f"{_b64({'alg': 'RS256', 'kid': f'{rng.getrandbits(160):040x}'})}.{claims}.{sig}"
            )
        else:  # kid of the wrong type
            kid = rng.choice([7, ["a"], {"k": 1}, None, 1.5, True])
            out.append(f"{_b64({'alg': 'RS256', 'kid': kid})}.{claims}.{sig}")
    return out


class CertServer:
    def __init__(self, certs: dict[str, str], delay: float) -> None:
        from tools.servers import BackgroundHttpServer

        self.fetches: list[float] = []
        body = json.dumps(certs).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.fetches.append(time.monotonic())
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600, must-revalidate")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = BackgroundHttpServer(c.LOOPBACK, 0, Handler, "cert-standin")
        self.url = f"http://{c.LOOPBACK}:{self._server.port}/certs"

    def stop(self) -> None:
        self._server.stop()


def poll_valid(
    base: str, token: str, seconds: float, stop: threading.Event | None = None
) -> list[float]:
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds and not (stop and stop.is_set()):
        due = start + n * 0.05
        n += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        conn.request("GET", "/api/creations?limit=5", headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"valid user got {resp.status}")
    conn.close()
    return latencies


def _flood_process(base: str, n: int, rate: float, control: bool, out: Any) -> None:
    if control:
        statuses, seconds = flood(base, [""] * n, rate, path="/healthz")
    else:
        statuses, seconds = flood(base, bad_tokens(n), rate)
    out.put((dict(statuses), seconds))


def flood_elsewhere(
    base: str, n: int, rate: float, *, control: bool = False
) -> tuple[Counter, float]:
    """The flood from its own process: its threads must not share a GIL with the valid user's
    poller, or the poller would measure our client's thread switching, not the server."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_flood_process, args=(base, n, rate, control, out), daemon=True)
    proc.start()
    statuses, seconds = out.get(timeout=3600)
    proc.join(30)
    return Counter({int(k): v for k, v in statuses.items()}), seconds


def flood(
    base: str, tokens: list[str], rate: float, connections: int = 8, path: str = "/api/creations"
) -> tuple[Counter, float]:
    host, port = base.split("//", 1)[1].split(":")
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        local: Counter[int] = Counter()
        for i in range(k, len(tokens), connections):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                headers = {"Authorization": f"Bearer {tokens[i]}"} if tokens[i] else {}
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                local[resp.status] += 1
            except (http.client.HTTPException, OSError):
                local[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.close()
        with lock:
            statuses.update(local)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=400.0, help="bad tokens per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="baseline duration")
    parser.add_argument("--fetch-delay", type=float, default=0.3)
    parser.add_argument("--min-interval", type=float, default=10.0)
    args = parser.parse_args()

    from tests.support.tokens import firebase_claims, make_key

    key = make_key("bench-key")
    certs = CertServer({key.kid: key.cert_pem}, args.fetch_delay)
    valid = key.sign(firebase_claims(PROJECT, "alice", ttl=3600))
    try:
        with c.temp_dir("phoenix-authflood-") as tmp:
            env = {
                "PHOENIX_AUTH": "firebase",
                "PHOENIX_FIREBASE_PROJECT": PROJECT,
                "PHOENIX_FIREBASE_CERTS_URL": certs.url,
                "PHOENIX_FIREBASE_CERTS_MIN_INTERVAL_SECONDS": str(args.min_interval),
                "PHOENIX_DISPATCH": "record",
                "PHOENIX_LOG_LEVEL": "WARNING",
            }
            with c.api_server(env, data_dir=tmp, workers=1, threads=8) as url:
                poll_valid(url, valid, 1.0)  # warm: first fetch, app loaded
                baseline = poll_valid(url, valid, args.seconds)
                fetches_before = len(certs.fetches)
                during: list[float] = []
                stop = threading.Event()

                def valid_during() -> None:
                    during.extend(poll_valid(url, valid, 3600, stop))

                poller = threading.Thread(target=valid_during, daemon=True)
                poller.start()
                statuses, flood_seconds = flood_elsewhere(url, args.tokens, args.rate)
                stop.set()
                poller.join(30)
                fetches_flood = len(certs.fetches) - fetches_before
                # Control: the same number of requests at the same rate that need no
                # authentication at all (GET /healthz): what any traffic costs this machine.
                control: list[float] = []
                stop_control = threading.Event()

                def valid_control() -> None:
                    control.extend(poll_valid(url, valid, 3600, stop_control))

                poller = threading.Thread(target=valid_control, daemon=True)
                poller.start()
                control_statuses, control_seconds = flood_elsewhere(
                    url, args.tokens, args.rate, control=True
                )
                stop_control.set()
                poller.join(30)
    finally:
        certs.stop()

    allowed = 1 + math.floor(flood_seconds / args.min_interval)
    p99_base, p99_flood = c.percentile(baseline, 99), c.percentile(during, 99)
    fivexx = sum(v for k, v in statuses.items() if k >= 500)
    c.table(
        f"{args.tokens} bad tokens at {args.rate:.0f}/s ({flood_seconds:.1f} s) against gunicorn "
        f"1 x 8 threads; certificate endpoint answers in {args.fetch_delay} s; "
        f"min interval {args.min_interval} s",
        [
            "phase",
            "valid requests",
            "valid p50 ms",
            "valid p99 ms",
            "bad-token answers",
            "cert fetches",
        ],
        [
            ["baseline", len(baseline), c.percentile(baseline, 50), p99_base, "-", "-"],
            [
                "control: same rate of /healthz",
                len(control),
                c.percentile(control, 50),
                c.percentile(control, 99),
                "-",
                f"- (healthz: {dict(sorted(control_statuses.items()))} in {control_seconds:.1f} s)",
            ],
            [
                "flood",
                len(during),
                c.percentile(during, 50),
                p99_flood,
                dict(sorted(statuses.items())),
                f"{fetches_flood} (allowed <= {allowed})",
            ],
        ],
    )
    ratio = p99_flood / p99_base if p99_base else math.inf
    ok = (
        fivexx == 0
        and statuses.get(401, 0) == args.tokens
        and fetches_flood <= allowed
        and ratio <= 2.0
    )
    p99_control = c.percentile(control, 99)
    print(
        f"valid p99 during / before: {ratio:.2f}x; during the control load of the same rate: "
        f"{p99_control / p99_base if p99_base else math.inf:.2f}x; load average now "
        f"{os.getloadavg()[0]:.1f}; verdict: {'OK' if ok else 'FAILED'}"
    )
    c.emit_json(
        "auth_flood",
        {
            "tokens": args.tokens,
            "rate_per_s": args.rate,
            "flood_seconds": c.r1(flood_seconds),
            "answers": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors_5xx": fivexx,
            "cert_fetches_during_flood": fetches_flood,
            "cert_fetches_allowed": allowed,
            "valid_p50_ms": {
                "baseline": c.r1(c.percentile(baseline, 50)),
                "flood": c.r1(c.percentile(during, 50)),
            },
            "valid_p99_ms": {"baseline": c.r1(p99_base), "flood": c.r1(p99_flood)},
            "p99_ratio": round(ratio, 2),
            "valid_p99_ms_control_same_rate_healthz": c.r1(p99_control),
            "ok": ok,
            **c.machine(),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
