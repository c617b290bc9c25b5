"""A SERVER span per API request, from the maintained Flask instrumentation.

Kept out of ``common.observability`` (which the jobs import): Pants' dependency inference
follows every import, so Flask and its instrumentation would otherwise ride along in every job
PEX and image (tests/images check that none does).
"""

from __future__ import annotations

import threading

from flask import Flask

from common import tracing

# Probes hit every few seconds; a span per probe would drown the traces that matter.
_UNTRACED_URLS = "/healthz,/readyz"
_lock = threading.Lock()


def instrument_flask(app: Flask) -> None:
    """A SERVER span per request on ``app`` (route as the span name), parented by the caller's
    trace. Before ``common.observability.configure`` the global tracer provider is a no-op
    proxy, so unit tests that build apps pay next to nothing."""
    from opentelemetry import propagate
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    with _lock:
        propagate.set_global_textmap(tracing.incoming_propagator())
        FlaskInstrumentor().instrument_app(app, excluded_urls=_UNTRACED_URLS)
