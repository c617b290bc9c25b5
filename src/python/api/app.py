"""The Flask app factory: wires configuration, adapters and the service layer once, then
registers thin blueprints over them.

Every dependency can be passed in (tests hand in an in-memory store and a recording
dispatcher; the local runtime and production build theirs from ``Settings``). Adapters come
only from ``common.bootstrap`` and ``common.dispatchers``, which import cloud SDKs lazily, so the
API never imports a generator SDK (google-genai, Pillow, imageio) and they stay out of its PEX.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask import Blueprint, Flask, Response, jsonify

from api.admin_failures import admin_failures_blueprint
from api.admin_routes import admin_blueprint
from api.creation_routes import creation_blueprint
from api.creation_service import (
    Admission,
    CreationService,
    DispatcherFor,
    DispatcherPool,
    PhoenixServices,
    Route,
)
from api.errors import error_response, register_error_handlers
from api.flask_tracing import instrument_flask
from api.generation_routes import generation_blueprint
from api.web_routes import web_blueprint
from common import bootstrap
from common.auth import FirebaseTokenVerifier
from common.config import Settings
from common.dispatchers import build_dispatcher
from common.domain.kinds import KINDS, KindRegistry
from common.domain.rollout import make_route
from common.ports import CreationStore, MediaStore

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024


def _ops_blueprint(services: PhoenixServices) -> Blueprint:
    bp = Blueprint("ops", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        # Liveness: the process answers. No I/O, so a slow store never gets instances killed.
        return jsonify({"status": "ok"})

    @bp.get("/readyz")
    def readyz() -> Response:
        try:
            services.store.ping()
        except Exception as exc:
            log.warning("readiness_failed", error=f"{type(exc).__name__}: {exc}")
            return error_response(503, "not_ready", "the creation store is unreachable")
        return jsonify({"status": "ready"})

    @bp.get("/api/openapi.json")
    def openapi() -> Response:
        from api.openapi import build_openapi

        return jsonify(build_openapi(services.creations.kinds))

    return bp


def create_app(
    settings: Settings | None = None,
    *,
    store: CreationStore | None = None,
    media: MediaStore | None = None,
    dispatchers: DispatcherFor | None = None,
    route: Route | None = None,
    token_verifier: FirebaseTokenVerifier | None = None,
    kinds: KindRegistry = KINDS,
) -> Flask:
    """Raises ConfigError (e.g. a bad PHOENIX_ROLLOUT) so the server refuses to start."""
    settings = settings or Settings.from_env()
    store = store if store is not None else bootstrap.build_store(settings)
    media = media if media is not None else bootstrap.build_media(settings)
    if dispatchers is None:
        # Built lazily per path: the local process pool starts only when first used, in the
        # process that serves requests (never in a pre-fork master).
        dispatchers = DispatcherPool(lambda path: build_dispatcher(settings, path))
    route = route or make_route(settings)
    if token_verifier is None and settings.auth == "firebase":
        from common.auth import FIREBASE_CERTS_URL, http_cert_fetcher

        token_verifier = FirebaseTokenVerifier(
            settings.firebase_project,
            fetch_certs=http_cert_fetcher(settings.firebase_certs_url or FIREBASE_CERTS_URL),
            min_fetch_interval=settings.firebase_certs_min_interval_seconds,
        )

    services = PhoenixServices(
        settings=settings,
        store=store,
        media=media,
        dispatchers=dispatchers,
        route=route,
        creations=CreationService(
            store,
            dispatchers,
            route,
            media=media,
            admission=Admission(store, settings.quota_policy),
            # A job renews its lease every lease/4: one full lease without it stopping means
            # it is stuck (e.g. inside a provider call), and only then is it stopped by force.
            cancel_backstop_seconds=float(settings.lease_seconds),
            kinds=kinds,
        ),
        token_verifier=token_verifier,
    )

    app = Flask(__name__, static_folder=None)  # the web blueprint serves /static
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the view's field order
    app.extensions["phoenix"] = services

    register_error_handlers(app)
    app.register_blueprint(_ops_blueprint(services))
    app.register_blueprint(generation_blueprint(services.creations))
    app.register_blueprint(creation_blueprint(services.creations))
    app.register_blueprint(web_blueprint(media, services.creations))
    app.register_blueprint(admin_blueprint(store=store, settings=settings, route=route))
    app.register_blueprint(admin_failures_blueprint(store=store, settings=settings))

    _install_request_context(app)

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return app


def _install_request_context(app: Flask) -> None:
    """A SERVER span per request (``api.flask_tracing.instrument_flask``: the maintained
    Flask instrumentation, continuing the caller's ``traceparent`` or Cloud Run's
    ``X-Cloud-Trace-Context``); a creation made in the request carries that span's traceparent
    to its job, so API and job share one trace. Threads are reused across requests: log fields
    bound by the last one must not leak into the next."""
    instrument_flask(app)

    @app.before_request
    def _fresh_log_context() -> None:
        structlog.contextvars.clear_contextvars()


def services_of(app: Flask) -> PhoenixServices:
    """The wired services of an app made by ``create_app`` (runtimes close them on shutdown)."""
    services: Any = app.extensions["phoenix"]
    return services  # type: ignore[no-any-return]
