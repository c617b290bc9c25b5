"""The production entrypoint: ``python -m api.main`` (the API PEX / container command).

Gunicorn is started programmatically (a ``BaseApplication``), so the container needs no
gunicorn config file and the same process configures logging once, before any worker exists.
Defaults follow Cloud Run: ONE worker per instance (Cloud Run scales instances, and one
process per instance keeps memory and the per-instance rate limit predictable), 8 threads
(``gthread``: requests mostly wait on Firestore/Cloud Tasks), no worker timeout (Cloud Run
enforces the request timeout), and a graceful timeout shorter than the 10 s Cloud Run waits
between SIGTERM and SIGKILL. ``--dev`` runs Flask's development server instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from common.config import ConfigError, Settings

API_SERVICE = "phoenix-api"
ACCESS_LOGGER = "phoenix.access"


@dataclass
class ServeOptions:
    host: str
    port: int
    workers: int = 1
    threads: int = 8
    graceful_timeout: int = 8
    # Called in each worker with the freshly built app (the local runtime starts its sweeper).
    on_app: Callable[[Any], None] | None = None
    # Called in each worker when it exits, before the app's services are closed.
    on_worker_exit: Callable[[Any], None] | None = None
    ready_message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def access_fields(environ: dict, resp: Any, latency_s: float, *, structured: bool) -> dict:
    """One access-log event's fields; with ``structured`` (JSON logs on Cloud Run) also the
    ``httpRequest`` object Cloud Logging shows as the entry's request line."""
    path = environ.get("PATH_INFO", "")
    status = getattr(resp, "status_code", None) or 0
    sent = getattr(resp, "sent", None)
    fields: dict[str, Any] = {
        "method": environ.get("REQUEST_METHOD"),
        # Not "path": that field (and its Cloud Logging label) is the dispatch path.
        "url_path": path,
        "status": status,
        "duration_ms": round(latency_s * 1000, 1),
        "bytes": sent,
    }
    if structured:
        query = environ.get("QUERY_STRING")
        fields["httpRequest"] = {
            "requestMethod": environ.get("REQUEST_METHOD"),
            "requestUrl": path + (f"?{query}" if query else ""),
            "status": status,
            "responseSize": str(sent or 0),
            "userAgent": environ.get("HTTP_USER_AGENT", ""),
            "remoteIp": environ.get("REMOTE_ADDR", ""),
            "latency": f"{latency_s:.6f}s",
            "protocol": environ.get("SERVER_PROTOCOL", ""),
        }
    return fields


def _gunicorn_application(settings: Settings, options: ServeOptions, service: str) -> Any:
    """Builds the gunicorn application. gunicorn is imported here, not at module import: its
    config module parses ``WEB_CONCURRENCY`` at import time and would crash with a traceback
    before ``main`` could report a bad value, and ``--dev`` does not need it at all."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger as GunicornLogger

    structured = settings.log_format == "json"

    class PipelineLogger(GunicornLogger):  # type: ignore[misc]  # gunicorn is untyped
        """Gunicorn's logs through our pipeline (``common.logs``): its error log propagates to
        the root logger, and each access line is one structured ``http_request`` event."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                logger.handlers.clear()
                logger.propagate = True

        def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
            from common import logs

            path = environ.get("PATH_INFO", "")
            logs.get_logger(ACCESS_LOGGER).log(
                # Probes hit every few seconds; keep them out of the default log level.
                logging.DEBUG if path in ("/healthz", "/readyz") else logging.INFO,
                "http_request",
                **access_fields(environ, resp, request_time.total_seconds(), structured=structured),
            )

    class PhoenixGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            o = options

            def post_fork(server: Any, worker: Any) -> None:
                # Exporter threads do not survive fork(): each worker sets up its own.
                from common import observability

                observability.configure_telemetry(settings, service)

            def when_ready(server: Any) -> None:
                if o.ready_message:
                    print(o.ready_message, flush=True)

            def release(worker: Any) -> None:
                from api.app import services_of

                app = getattr(worker, "wsgi", None)
                if app is not None:
                    if o.on_worker_exit is not None:
                        o.on_worker_exit(app)
                    # Stops local job processes, closes queue clients and store connections.
                    services_of(app).close()

            def worker_int(worker: Any) -> None:
                # Ctrl+C / SIGQUIT: gunicorn's quick exit may be cut short by the master's
                # SIGKILL after graceful_timeout, before worker_exit runs; release the job
                # processes first so none outlives the server. (Closing twice is harmless.)
                release(worker)

            def worker_exit(server: Any, worker: Any) -> None:
                from common import observability

                try:
                    release(worker)
                finally:
                    observability.shutdown()

            config: dict[str, Any] = {
                "bind": [f"{o.host}:{o.port}"],
                "workers": o.workers,
                "threads": o.threads,
                "worker_class": "gthread",
                "timeout": 0,
                "graceful_timeout": o.graceful_timeout,
                "keepalive": 5,
                "accesslog": "-",
                "errorlog": "-",
                "loglevel": settings.log_level.lower(),
                "logger_class": PipelineLogger,
                "proc_name": service,
                # The app (and any dispatcher threads/processes) is built in each worker.
                "preload_app": False,
                "post_fork": post_fork,
                "when_ready": when_ready,
                "worker_int": worker_int,
                "worker_exit": worker_exit,
                **o.extra,
            }
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from api.app import create_app

            app = create_app(settings)
            if options.on_app is not None:
                options.on_app(app)
            return app

    return PhoenixGunicorn()


def serve(settings: Settings, options: ServeOptions, service: str = API_SERVICE) -> int:
    from common import observability

    # The master only logs; each worker adds traces and metrics in post_fork.
    observability.configure_logs(settings, service)
    # Gunicorn parses sys.argv in BaseApplication; our flags are not its flags.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        _gunicorn_application(settings, options, service).run()
    finally:
        sys.argv = argv
    return 0


def serve_dev(settings: Settings, host: str, port: int, service: str = API_SERVICE) -> int:
    """Flask's development server: one process, threads, no gunicorn (debugging)."""
    from api.app import create_app, services_of
    from common import observability

    observability.configure(settings, service)
    app = create_app(settings)
    # SIGTERM unwinds like Ctrl+C, so local job processes are stopped in ``finally``.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        services_of(app).close()
        observability.shutdown()
    return 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"{name}={value} must be >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phoenix-api", description=__doc__.split("\n")[0])
    parser.add_argument("--dev", action="store_true", help="use Flask's development server")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        workers = _env_int("WEB_CONCURRENCY", 1)
        threads = _env_int("GUNICORN_THREADS", 8)
    except ConfigError as exc:
        print(f"phoenix-api: {exc}", file=sys.stderr)
        return 2
    if args.dev:
        return serve_dev(settings, args.host, settings.port)
    return serve(
        settings,
        ServeOptions(
            host=args.host,
            port=settings.port,
            workers=workers,
            threads=threads,
            # Cloud Run's front end is the only client; trust its X-Forwarded-* headers.
            extra={"forwarded_allow_ips": "*"},
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
