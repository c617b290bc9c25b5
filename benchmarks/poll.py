"""Polling: ``GET /api/creations/<id>`` with and without ``If-None-Match``.

Run (repo root):  benchmarks/run poll [--duration 10]

The polled record is a COMPLETED image creation with one media item (the largest view a poll
returns), in an embedded SQLite store.

Part A, counting (in-process): ``create_app(store=CountingStore(SqliteCreationStore(...)))`` served
by werkzeug's threaded WSGI server in this process, driven by wrk (2 threads x 8 connections).
Counts per request: store calls by method, calls of the view builder (``CreationService.view``,
wrapped on the app's service instance) and response statuses (an ``after_request`` hook). So
"reads per poll" and "a 304 builds no view" are measured, not assumed.
Part B, throughput under the production server: the same two loads against ``python -m api.main``
(gunicorn, 1 worker x 8 threads, JSON logs at INFO to /dev/null): requests/s and p50/p99.
Part C, server CPU per poll: the WSGI app called directly (no network, no server, one thread),
best of 3 x 3000 calls: the least noisy comparison of a 200 and a 304 on a shared machine.

Parts B and C run twice: with local media (URLs under ``/media/``) and with the production media
adapter, Cloud Storage (the storage emulator), which mints a V4 signed URL on every 200. Here a
local service-account key signs (RSA in-process); on Cloud Run there is no key, so production
signs through the IAM signBlob API, one HTTPS round trip per URL that this benchmark cannot
reproduce and does not include.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402
from common.ports import CreationStore, ScanQuery  # noqa: E402

USER = "poller"
GCS_BUCKET = "phoenix-bench-media"


class CountingStore(CreationStore):
    """Delegates to ``inner`` and counts every call by method name."""

    def __init__(self, inner: CreationStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def add(self, creation: Any) -> None:
        self._count("add")
        self.inner.add(creation)

    def get(self, creation_id: str) -> Any:
        self._count("get")
        return self.inner.get(creation_id)

    def update(self, creation_id: str, change: Callable[[Any], Any]) -> Any:
        self._count("update")
        return self.inner.update(creation_id, change)

    def list_for_user(self, user_id: str, limit: int) -> list[Any]:
        self._count("list_for_user")
        return self.inner.list_for_user(user_id, limit)

    def _scan(self, query: ScanQuery) -> list[Any]:
        self._count("scan")
        return self.inner.scan(**query._asdict())

    def ping(self) -> None:
        self._count("ping")
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)


def make_completed(store: CreationStore) -> str:
    from datetime import timedelta

    from common.domain import creation as lc
    from common.domain.creation import Kind, MediaRef
    from common.domain.requests import parse_generation_request

    req = parse_generation_request(Kind.IMAGE, {"prompt": "a polled lighthouse, benchmark"})
    now = lc.utcnow()
    cr = lc.new(
        user_id=USER, kind=Kind.IMAGE, prompt=req.prompt, params=req.params, path="local", now=now
    )
    store.add(cr)
    store.update(
        cr.id,
        lambda x: lc.claim(x, owner="bench", now=now, lease=timedelta(minutes=2), max_attempts=3),
    )
    store.update(
        cr.id,
        lambda x: lc.complete(
            x, owner="bench", now=lc.utcnow(), media=(MediaRef(f"{cr.id}/0.png", "image/png"),)
        ),
    )
    return str(cr.id)


def _loads(url: str, etag: str, duration: int, connections: int) -> dict[str, dict[str, Any]]:
    out = {}
    for label, headers in (
        ("200", {"X-Phoenix-User": USER}),
        ("304", {"X-Phoenix-User": USER, "If-None-Match": etag}),
    ):
        c.run_wrk(url, duration_s=2, connections=connections, headers=headers)  # warm-up
        out[label] = {
            "headers": headers,
            "wrk": c.run_wrk(url, duration_s=duration, connections=connections, headers=headers),
        }
    return out


def part_a(duration: int) -> dict[str, Any]:
    from werkzeug.serving import make_server

    from api.app import create_app, services_of
    from common.adapters.sqlite_store import SqliteCreationStore
    from common.config import Settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results: dict[str, Any] = {}
    with c.temp_dir("phoenix-bench-poll-") as d:
        settings = Settings.from_env(
            {
                "PHOENIX_DATA_DIR": str(d),
                "PHOENIX_DISPATCH": "record",
                "PHOENIX_LOG_LEVEL": "WARNING",
            }
        )
        store = CountingStore(SqliteCreationStore(settings.sqlite_path))
        cid = make_completed(store)
        app = create_app(settings, store=store)
        service = services_of(app).creations
        views = Counter[str]()
        views_lock = threading.Lock()
        original_view = service.view

        def counting_view(creation: Any) -> dict[str, Any]:
            with views_lock:
                views["view"] += 1
            return original_view(creation)

        service.view = counting_view  # type: ignore[method-assign,assignment]  # the route calls service.view
        statuses = Counter[int]()

        @app.after_request
        def _count_status(response: Any) -> Any:
            with views_lock:
                statuses[response.status_code] += 1
            return response

        port = c.free_port()
        server = make_server(c.LOOPBACK, port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://{c.LOOPBACK}:{port}/api/creations/{cid}"
            code, body, headers = c.http_json("GET", url, headers={"X-Phoenix-User": USER})
            assert code == 200 and body["status"] == "completed", (code, body)
            etag = headers["ETag"]
            for label, hdrs in (
                ("200", {"X-Phoenix-User": USER}),
                ("304", {"X-Phoenix-User": USER, "If-None-Match": etag}),
            ):
                c.run_wrk(url, duration_s=2, connections=8, headers=hdrs)  # warm-up
                time.sleep(0.5)  # let requests still in flight when wrk stopped finish
                before_calls, before_views, before_status = (
                    store.snapshot(),
                    Counter(views),
                    Counter(statuses),
                )
                w = c.run_wrk(url, duration_s=duration, connections=8, headers=hdrs)
                time.sleep(0.5)
                calls = store.snapshot() - before_calls
                served = Counter(statuses) - before_status
                n = sum(served.values())
                results[label] = {
                    "rps": w["rps"],
                    "p50_ms": w["p50_ms"],
                    "p99_ms": w["p99_ms"],
                    "served": n,
                    "statuses": {str(k): v for k, v in served.items()},
                    "store_calls_per_poll": {k: round(v / n, 3) for k, v in sorted(calls.items())},
                    "view_builds_per_poll": round((Counter(views) - before_views)["view"] / n, 3),
                }
        finally:
            server.shutdown()
            thread.join(timeout=10)
            store.close()
    return results


def _media_env(media: str, data_dir: Path, gcs_url: str | None) -> dict[str, str]:
    """Settings for the media adapter under test: local, or GCS on the emulator with a local
    signing key (what the emulator profile uses)."""
    if media == "local":
        return {}
    from tools.emulator_profile import write_signing_key

    assert gcs_url
    return {
        "PHOENIX_MEDIA": "gcs",
        "PHOENIX_MEDIA_BUCKET": GCS_BUCKET,
        "PHOENIX_GCP_PROJECT": "phoenix-bench",
        "STORAGE_EMULATOR_HOST": gcs_url,
        "PHOENIX_MEDIA_SIGNING_KEY_FILE": write_signing_key(data_dir / "signing-key.json"),
    }


def part_b(duration: int, media: str = "local", gcs_url: str | None = None) -> dict[str, Any]:
    from common.adapters.sqlite_store import SqliteCreationStore

    with c.temp_dir("phoenix-bench-poll-gunicorn-") as d:
        store = SqliteCreationStore(Path(d) / "creations.sqlite3")
        cid = make_completed(store)
        store.close()
        env = {"PHOENIX_DISPATCH": "record", **_media_env(media, Path(d), gcs_url)}
        with c.api_server(env, data_dir=Path(d)) as base:
            url = f"{base}/api/creations/{cid}"
            code, body, headers = c.http_json("GET", url, headers={"X-Phoenix-User": USER})
            assert code == 200, code
            _check_media_url(media, body)
            loads = _loads(url, headers["ETag"], duration, 16)
    return {
        k: {kk: v["wrk"][kk] for kk in ("rps", "p50_ms", "p99_ms", "statuses")}
        for k, v in loads.items()
    }


def _check_media_url(media: str, view: Any) -> None:
    url = view["media"][0]["url"]
    if media == "gcs":
        assert "X-Goog-Signature=" in url, url  # really the signed-URL path
    else:
        assert url.startswith("/media/"), url


def part_c(n: int = 3000, media: str = "local", gcs_url: str | None = None) -> dict[str, Any]:
    """Server CPU per poll without network or server: the WSGI app called directly with a
    minimal environ, one thread, ``n`` requests per answer, best of 3 rounds (us per request).
    Includes everything the app does (routing, tracing span, store read, view/JSON or 304)."""
    import io

    from api.app import create_app
    from common.adapters.sqlite_store import SqliteCreationStore
    from common.config import Settings

    out: dict[str, Any] = {}
    with c.temp_dir("phoenix-bench-poll-cpu-") as d:
        env = {
            "PHOENIX_DATA_DIR": str(d),
            "PHOENIX_DISPATCH": "record",
            **_media_env(media, Path(d), gcs_url),
        }
        if gcs_url:
            os.environ["STORAGE_EMULATOR_HOST"] = gcs_url  # read by the storage client
        settings = Settings.from_env(env)
        store = SqliteCreationStore(settings.sqlite_path)
        cid = make_completed(store)
        app = create_app(settings, store=store)
        _check_media_url(
            media,
            app.test_client().get(f"/api/creations/{cid}", headers={"X-Phoenix-User": USER}).json,
        )
        base = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/api/creations/{cid}",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "HTTP_X_PHOENIX_USER": USER,
        }

        def call(extra: dict[str, str]) -> tuple[str, bytes]:
            environ: dict[str, Any] = {**base, **extra}
            environ["wsgi.input"] = io.BytesIO()
            environ["wsgi.errors"] = io.StringIO()
            seen: list[str] = []

            def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                seen.append(status)
                return lambda data: None

            body = b"".join(app(environ, start_response))
            return seen[0], body

        status, _ = call({})
        assert status.startswith("200"), status
        etag = None
        for header, value in (
            app.test_client().get(base["PATH_INFO"], headers={"X-Phoenix-User": USER}).headers
        ):
            if header == "ETag":
                etag = value
        assert etag, "no ETag"
        for label, extra, want in (
            ("200", {}, "200"),
            ("304", {"HTTP_IF_NONE_MATCH": etag}, "304"),
        ):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(n):
                    status, body = call(extra)
                best = min(best, (time.perf_counter() - t) / n * 1e6)
                assert status.startswith(want), status
            out[label] = {"us_per_request": round(best, 1), "bytes": len(body)}
        store.close()
    return out


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--cpu-calls", type=int, default=3000, help="part C calls per round")
    args = ap.parse_args(list(argv) if argv is not None else None)
    c.ensure_apt("wrk")
    print(
        f"[A] in-process werkzeug threaded server with counting store, {args.duration} s per load",
        flush=True,
    )
    a = part_a(args.duration)
    from tools.servers import gcs_emulator

    b: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    with gcs_emulator(default_bucket=GCS_BUCKET) as gcs:
        for media in ("local", "gcs"):
            print(
                f"[B] gunicorn (python -m api.main, 1 x 8 threads), media {media}, "
                f"{args.duration} s per load",
                flush=True,
            )
            b[media] = part_b(args.duration, media, gcs.url)
            print(f"[C] CPU per poll, WSGI app called directly, media {media}", flush=True)
            cpu[media] = part_c(args.cpu_calls, media=media, gcs_url=gcs.url)

    c.table(
        "Poll GET /api/creations/<id>: counted in-process (werkzeug threaded server, 8 connections)",
        [
            "answer",
            "req/s",
            "p50 ms",
            "p99 ms",
            "statuses",
            "store calls / poll",
            "views built / poll",
        ],
        [
            [
                k,
                v["rps"],
                v["p50_ms"],
                v["p99_ms"],
                v["statuses"],
                v["store_calls_per_poll"],
                v["view_builds_per_poll"],
            ]
            for k, v in a.items()
        ],
    )
    c.table(
        "Poll under gunicorn (1 worker x 8 threads, 16 connections)",
        ["media", "answer", "req/s", "p50 ms", "p99 ms", "statuses"],
        [
            [m, k, v["rps"], v["p50_ms"], v["p99_ms"], v["statuses"]]
            for m, loads in b.items()
            for k, v in loads.items()
        ],
    )
    c.table(
        f"Server CPU per poll (WSGI app called directly, 1 thread, best of 3 x {args.cpu_calls})",
        ["media", "answer", "us / request", "body bytes"],
        [
            [m, k, v["us_per_request"], v["bytes"]]
            for m, answers in cpu.items()
            for k, v in answers.items()
        ],
    )
    ok_304 = a["304"]["view_builds_per_poll"] == 0 and set(a["304"]["statuses"]) == {"304"}
    ok_reads = all(
        set(v["store_calls_per_poll"]) == {"get"}
        and abs(v["store_calls_per_poll"]["get"] - 1) < 0.005
        for v in a.values()
    )
    print(
        f"304 builds no view: {ok_304}; exactly one store read (get) per poll, no writes: {ok_reads}"
    )
    c.emit_json(
        "poll",
        {
            **c.machine(),
            "duration_s": args.duration,
            "in_process_werkzeug": a,
            "gunicorn_1x8": b,
            "cpu_per_poll_us": cpu,
            "checks": {"304_builds_no_view": ok_304, "one_read_per_poll": ok_reads},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
