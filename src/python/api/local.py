"""The whole product on one machine: ``./pants run src/python/api:local`` (or
``python -m api.local``).

The same app as production, under gunicorn with exactly ONE worker: the local dispatcher's job
pool lives in the worker, and two workers would mean two pools (twice the parallel jobs) and two
sweepers. Everything else comes from the embedded defaults (SQLite and media files under
``PHOENIX_DATA_DIR``, default ``./.phoenix``; local job processes; the local generator), so a
fresh checkout runs with no configuration. Listens on 127.0.0.1 only: local mode trusts the
``X-Phoenix-User`` header, which must never be reachable from a network.

SIGINT (Ctrl+C) or SIGTERM stops it cleanly: gunicorn finishes in-flight requests, the sweeper
stops, running job processes are terminated (their creations are picked up again by the
sweeper on the next start, because their leases expire).
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta
from typing import Any, Sequence

import structlog

from api.main import ServeOptions, serve
from common.config import ConfigError, Settings

log = structlog.get_logger(__name__)

LOCAL_SERVICE = "phoenix-local"
_STOP_KEY = "phoenix_local_stop"


def start_background_tasks(app: Any) -> None:
    """Run the sweeper in this process every ``PHOENIX_SWEEP_INTERVAL_SECONDS`` (0 disables):
    creations whose dispatch failed, whose queued job died with a previous run of this server,
    or whose job was killed, are re-dispatched (or failed past the limits). In production the
    sweeper runs as a scheduled command instead. Runs once at start, then every interval."""
    from api.app import services_of
    from common.domain.creation import utcnow
    from common.sweeper import SweepPolicy, sweep

    services = services_of(app)
    interval = services.settings.sweep_interval_seconds
    stop = threading.Event()
    app.extensions[_STOP_KEY] = stop
    if interval <= 0:
        return
    policy = SweepPolicy(
        pending_timeout=timedelta(seconds=services.settings.pending_timeout_seconds)
    )

    def loop() -> None:
        while True:
            try:
                sweep(
                    services.store,
                    services.dispatchers,
                    now=utcnow(),
                    policy=policy,
                    route=services.route,
                    media=services.media,
                )
            except Exception:  # a failed sweep is retried on the next tick
                log.exception("sweep_failed")
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="phoenix-sweeper", daemon=True).start()


def stop_background_tasks(app: Any) -> None:
    stop = app.extensions.get(_STOP_KEY)
    if stop is not None:
        stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    if argv:
        print("usage: python -m api.local  (configure with PORT, PHOENIX_* variables)")
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"phoenix-local: {exc}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{settings.port}/"
    return serve(
        settings,
        ServeOptions(
            host="127.0.0.1",
            port=settings.port,
            workers=1,
            threads=8,
            graceful_timeout=5,
            on_app=start_background_tasks,
            on_worker_exit=stop_background_tasks,
            ready_message=(
                f"\n  Phoenix is running at {url}\n"
                f"  data: {settings.data_dir}  (store={settings.store}, "
                f"dispatch={settings.dispatch}, generator={settings.generator})\n"
                "  Ctrl+C to stop.\n"
            ),
        ),
        service=LOCAL_SERVICE,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
