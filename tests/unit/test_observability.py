"""``common.observability``: one configuration for logs, traces and metrics, and the maintained
instrumentation it switches on explicitly: Flask SERVER spans that continue Cloud Run's
``X-Cloud-Trace-Context`` (Google's propagator), the API's ``dispatch`` span, gRPC CLIENT spans,
the GCP resource detector only for ``gcp`` export, and nothing of it imported by a job on the
embedded defaults before its claim (job cold start is a product metric)."""

from __future__ import annotations

import json
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import pytest

import common.local_generators  # noqa: F401  (the embedded-defaults child selects from it)
from api.app import create_app, services_of
from common import (  # noqa: F401 (job_main: for the child)
    job_main,
    observability,
    otel_export,
    tracing,
)
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from tests.support.child import run_python

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    observability._reset_for_tests()
    yield
    observability._reset_for_tests()


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_flask_spans_continue_cloud_trace_context_and_wrap_the_dispatch(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    observability.configure(
        Settings(trace_exporter=f"file:{out}", data_dir=tmp_path), "phoenix-api"
    )
    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record"),
        store=InMemoryCreationStore(),
        media=LocalMediaStore(tmp_path / "media"),
        dispatchers=lambda path: RecordingDispatcher(),
    )
    client = app.test_client()
    assert client.get("/healthz").status_code == 200  # probes are not traced
    resp = client.post(
        "/api/generate/image",
        json={"prompt": "a traced lighthouse"},
        headers={"X-Phoenix-User": "u1", "X-Cloud-Trace-Context": f"{TRACE_ID}/12345;o=1"},
    )
    assert resp.status_code == 202, resp.get_json()

    spans = {s["name"]: s for s in _spans(out)}
    request = spans["POST /api/generate/<any(video, image):kind>"]
    assert request["kind"] == "SERVER" and request["trace_id"] == TRACE_ID
    assert request["parent_span_id"] == format(12345, "016x") and request["remote_parent"]
    assert request["attributes"]["http.route"] == "/api/generate/<any(video, image):kind>"
    dispatch = spans["dispatch record"]
    assert dispatch["parent_span_id"] == request["span_id"] and dispatch["kind"] == "PRODUCER"
    assert dispatch["attributes"]["phoenix.creation_id"] == resp.get_json()["id"]
    assert not [s for s in spans if "healthz" in s]
    # The creation carries the request span's traceparent to its job.
    stored = services_of(app).store.get(resp.get_json()["id"])
    assert stored is not None and stored.traceparent == f"00-{TRACE_ID}-{request['span_id']}-01"


def test_traceparent_wins_over_cloud_trace_context() -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    ctx = tracing.context_from_headers(
        {
            "traceparent": f"00-{other}-b7ad6b7169203331-01",
            "X-Cloud-Trace-Context": f"{TRACE_ID}/12345;o=1",
        }
    )
    from opentelemetry import trace

    assert format(trace.get_current_span(ctx).get_span_context().trace_id, "032x") == other


def test_grpc_client_calls_become_client_spans(tmp_path: Path) -> None:
    """A real gRPC round trip on 127.0.0.1 through a channel created after instrument_grpc
    (what Firestore and Cloud Tasks clients do)."""
    import grpc

    out = tmp_path / "spans.jsonl"
    observability.configure(Settings(trace_exporter=f"file:{out}"), "svc")
    observability.instrument_grpc()

    handler = grpc.method_handlers_generic_handler(
        "phoenix.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/phoenix.Echo/Say")
            with tracing.tracer("t").start_as_current_span("caller"):
                assert say(b"hi", timeout=5) == b"hi"
    finally:
        server.stop(None)
    spans = {s["name"]: s for s in _spans(out)}
    call = spans["/phoenix.Echo/Say"]
    assert call["kind"] == "CLIENT" and call["attributes"]["rpc.system"] == "grpc"
    assert call["parent_span_id"] == spans["caller"]["span_id"]


def test_only_gcp_export_asks_the_gcp_detector_and_our_attributes_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.resources import Resource

    asked: list[bool] = []

    def detected() -> Resource:
        asked.append(True)
        return Resource({"cloud.region": "us-central1", "service.name": "detected"})

    monkeypatch.setattr(otel_export, "_gcp_detected", detected)
    env = {"CLOUD_RUN_JOB": "phoenix-image-job"}
    local = otel_export.resource("phoenix-image-job", "file:/tmp/x", env).attributes
    assert asked == [] and "cloud.region" not in local
    gcp = otel_export.resource("phoenix-image-job", "gcp", env).attributes
    assert asked == [True]
    assert gcp["cloud.region"] == "us-central1"
    assert gcp["service.name"] == "phoenix-image-job"
    assert gcp["gcp.cloud_run.job.name"] == "phoenix-image-job"


def test_a_job_on_embedded_defaults_imports_no_instrumentation_before_its_claim() -> None:
    """What a job process has imported once observability is configured and its store built
    (the claim's prerequisites): no instrumentation, propagator, detector, gRPC or requests,
    and no pydantic (only the API imports the request models)."""
    result = run_python(
        """
        import os, sys, tempfile
        os.environ["PHOENIX_DATA_DIR"] = tempfile.mkdtemp()
        from common.config import Settings
        from common import job_main, observability
        from common.local_generators import ALL
        settings = Settings.from_env()
        observability.configure(settings, "phoenix-image-job")
        job_main.build_job_deps(settings, ALL).store.close()
        heavy = ("grpc", "requests", "flask", "opentelemetry.instrumentation",
                 "opentelemetry.propagators.cloud_trace_propagator",
                 "opentelemetry.resourcedetector", "google", "pydantic")
        print(sorted(m for m in sys.modules if m.startswith(heavy)))
        """,
        drop=("PHOENIX_TRACE_EXPORTER", "PHOENIX_METRICS_EXPORTER", "PHOENIX_STORE"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
