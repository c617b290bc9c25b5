"""Tracing and metrics: W3C traceparent round trips, the env carrier a Cloud Run Job execution
receives, one trace across two processes (through the ``file:`` exporter), exporter selection,
and the creation metrics.

The providers are process-global; in-process tests reset them around each test, and the
cross-process and exporter-output tests run a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry import baggage, trace

from common import metrics, tracing
from common.config import ConfigError
from tests.support.child import run_python

HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@pytest.fixture(autouse=True)
def _clean_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        tracing.EXPORTER_ENV,
        metrics.EXPORTER_ENV,
        "CLOUD_RUN_EXECUTION",
        "CLOUD_RUN_TASK_ATTEMPT",
        "CLOUD_RUN_JOB",
        "K_SERVICE",
    ):
        monkeypatch.delenv(name, raising=False)
    tracing._reset_for_tests()
    metrics._reset_for_tests()
    yield
    tracing._reset_for_tests()
    metrics._reset_for_tests()


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(code, drop=(tracing.EXPORTER_ENV, metrics.EXPORTER_ENV), env=env)


# --- context helpers --------------------------------------------------------------------------


def test_no_active_span_means_no_traceparent_and_no_trace_id() -> None:
    tracing.configure_tracing("svc", "none")
    assert tracing.current_traceparent() is None
    assert tracing.current_trace_id() is None


def test_none_exporter_still_creates_real_trace_ids(tmp_path: Path) -> None:
    tracing.configure_tracing("svc", "none")
    with tracing.tracer("t").start_as_current_span("request"):
        trace_id = tracing.current_trace_id()
        traceparent = tracing.current_traceparent()
    assert trace_id and HEX32.match(trace_id)
    assert traceparent and TRACEPARENT.match(traceparent)
    assert traceparent.split("-")[1] == trace_id


def test_traceparent_round_trip_joins_the_same_trace(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    tracing.configure_tracing("phoenix-api", f"file:{out}")
    with tracing.tracer("api").start_as_current_span("POST /api/creations") as api_span:
        traceparent = tracing.current_traceparent()
    assert traceparent is not None

    # Elsewhere (no span active): the job starts its span under the extracted context.
    with tracing.tracer("job").start_as_current_span(
        "job.video", context=tracing.context_from_traceparent(traceparent)
    ):
        job_trace_id = tracing.current_trace_id()

    api_ctx = api_span.get_span_context()
    assert job_trace_id == format(api_ctx.trace_id, "032x")
    api, job = _spans(out)
    assert (api["name"], job["name"]) == ("POST /api/creations", "job.video")
    assert job["trace_id"] == api["trace_id"] == job_trace_id
    assert job["parent_span_id"] == api["span_id"] == format(api_ctx.span_id, "016x")
    assert job["remote_parent"] is True
    assert api["parent_span_id"] is None
    assert api["resource"]["service.name"] == "phoenix-api"


def test_context_from_env_reads_the_env_carrier() -> None:
    tracing.configure_tracing("svc", "none")
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    ctx = tracing.context_from_env(
        {
            "TRACEPARENT": f"00-{tid}-{sid}-01",
            "TRACESTATE": "vendor=value",
            "BAGGAGE": "pipeline=cloudtasks",
            "PATH": "/usr/bin",
        }
    )
    parent = trace.get_current_span(ctx).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == (tid, sid)
    assert parent.is_remote and parent.trace_flags.sampled
    assert parent.trace_state.get("vendor") == "value"
    assert baggage.get_baggage("pipeline", ctx) == "cloudtasks"
    with tracing.tracer("job").start_as_current_span("job", context=ctx):
        assert tracing.current_trace_id() == tid


@pytest.mark.parametrize(
    "carrier", [None, "", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"]
)
def test_missing_or_invalid_traceparent_starts_a_new_root_trace(carrier: str | None) -> None:
    tracing.configure_tracing("svc", "none")
    with tracing.tracer("t").start_as_current_span("unrelated"):
        unrelated = tracing.current_trace_id()
        with tracing.tracer("t").start_as_current_span(
            "job", context=tracing.context_from_traceparent(carrier)
        ) as span:
            assert getattr(span, "parent", None) is None
            assert tracing.current_trace_id() != unrelated
    assert trace.get_current_span(tracing.context_from_env({})).get_span_context().is_valid is False


def test_context_from_headers_prefers_traceparent_then_cloud_trace_context() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    w3c = tracing.context_from_headers({"Traceparent": f"00-{tid}-00f067aa0ba902b7-00"})
    ctx = trace.get_current_span(w3c).get_span_context()
    assert format(ctx.trace_id, "032x") == tid and not ctx.trace_flags.sampled

    xctc = tracing.context_from_headers({"X-Cloud-Trace-Context": f"{tid}/12345;o=1"})
    ctx = trace.get_current_span(xctc).get_span_context()
    assert (format(ctx.trace_id, "032x"), ctx.span_id) == (tid, 12345)
    assert ctx.trace_flags.sampled and ctx.is_remote

    for bad in ({}, {"X-Cloud-Trace-Context": "garbage"}, {"traceparent": "nope"}):
        assert (
            not trace.get_current_span(tracing.context_from_headers(bad))
            .get_span_context()
            .is_valid
        )


# --- configuration ----------------------------------------------------------------------------


def test_configure_is_idempotent_first_call_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    tracing.configure_tracing("svc", f"file:{first}")
    tracing.configure_tracing("svc", f"file:{second}")
    with tracing.tracer("t").start_as_current_span("s"):
        pass
    assert len(_spans(first)) == 1
    assert not second.exists()


def test_exporter_from_env_and_cloud_run_resource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nested" / "spans.jsonl"
    monkeypatch.setenv(tracing.EXPORTER_ENV, f"file:{out}")
    monkeypatch.setenv("CLOUD_RUN_JOB", "phoenix-video-job")
    monkeypatch.setenv("CLOUD_RUN_EXECUTION", "phoenix-video-job-abc12")
    monkeypatch.setenv("CLOUD_RUN_TASK_ATTEMPT", "2")
    tracing.configure_tracing("phoenix-video-job")
    with tracing.tracer("t").start_as_current_span("s"):
        pass
    (span,) = _spans(out)
    assert span["resource"]["service.name"] == "phoenix-video-job"
    assert span["resource"]["gcp.cloud_run.job.execution"] == "phoenix-video-job-abc12"
    assert span["resource"]["gcp.cloud_run.job.task_attempt"] == 2
    assert span["resource"]["cloud.platform"] == "gcp_cloud_run"


def test_unknown_exporter_is_a_config_error_and_installs_nothing() -> None:
    with pytest.raises(ConfigError, match="PHOENIX_TRACE_EXPORTER='jaeger'"):
        tracing.configure_tracing("svc", "jaeger")
    with pytest.raises(ConfigError, match="needs a path"):
        tracing.configure_tracing("svc", "file:")
    assert tracing._provider is None


@pytest.mark.parametrize(
    ("exporter", "module", "package"),
    [
        ("gcp", "opentelemetry.exporter.cloud_trace", "opentelemetry-exporter-gcp-trace"),
        (
            "otlp",
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "opentelemetry-exporter-otlp-proto-http",
        ),
    ],
)
def test_missing_optional_exporter_names_the_package(
    exporter: str, module: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployable built without the exporter's package fails at start-up, naming it. The
    packages are in our lockfile, so their absence is simulated (None in sys.modules makes
    the import raise ImportError)."""
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=re.escape(package)):
        tracing.configure_tracing("svc", exporter)
    assert tracing._provider is None


def test_otlp_over_grpc_is_not_bundled_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        tracing.configure_tracing("svc", "otlp")


def test_bundled_otlp_http_exporter_configures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracing.configure_tracing("svc", "otlp")
    assert tracing._provider is not None


def test_shutdown_is_safe_twice_and_spans_after_it_do_not_fail(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    tracing.configure_tracing("svc", f"file:{out}")
    with tracing.tracer("t").start_as_current_span("before"):
        pass
    tracing.shutdown_tracing()
    tracing.shutdown_tracing()
    with tracing.tracer("t").start_as_current_span("after"):
        pass
    assert [s["name"] for s in _spans(out)] == ["before"]


# --- across processes -------------------------------------------------------------------------


def test_one_trace_across_api_and_job_processes(tmp_path: Path) -> None:
    """The production path in miniature: the API's span → TRACEPARENT env override → a separate
    job process whose span and JSON log lines carry the same trace id."""
    out = tmp_path / "spans.jsonl"
    tracing.configure_tracing("phoenix-api", f"file:{out}")
    with tracing.tracer("api").start_as_current_span("POST /api/creations"):
        traceparent = tracing.current_traceparent()
        api_trace_id = tracing.current_trace_id()
    assert traceparent

    job = _run(
        """
        import os
        from common import logs, tracing
        logs.configure_logging("json", "INFO", service="phoenix-video-job", gcp_project="proj")
        tracing.configure_tracing("phoenix-video-job")
        logs.bind_creation("c-42", kind="video")
        with tracing.tracer("phoenix.job").start_as_current_span(
            "job.video", context=tracing.context_from_env(os.environ)
        ):
            logs.get_logger("job").info("job_started")
        """,
        TRACEPARENT=traceparent,
        PHOENIX_TRACE_EXPORTER=f"file:{out}",
        CLOUD_RUN_EXECUTION="phoenix-video-job-x1",
        CLOUD_RUN_TASK_ATTEMPT="0",
    )
    assert job.returncode == 0, job.stderr

    api, job_span = _spans(out)
    assert api["pid"] == os.getpid() and job_span["pid"] != os.getpid()
    assert job_span["trace_id"] == api["trace_id"] == api_trace_id
    assert job_span["parent_span_id"] == api["span_id"]
    assert job_span["resource"]["gcp.cloud_run.job.execution"] == "phoenix-video-job-x1"
    assert job_span["resource"]["gcp.cloud_run.job.task_attempt"] == 0
    (log_line,) = [json.loads(s) for s in job.stdout.splitlines()]
    assert log_line["logging.googleapis.com/trace"] == f"projects/proj/traces/{api_trace_id}"
    assert log_line["logging.googleapis.com/spanId"] == job_span["span_id"]
    assert log_line["creation_id"] == "c-42"


def test_console_exporter_writes_json_spans_to_stderr_not_stdout() -> None:
    proc = _run(
        """
        from common import tracing
        tracing.configure_tracing("svc")
        with tracing.tracer("t").start_as_current_span("work"):
            print(tracing.current_trace_id())
        """,
        PHOENIX_TRACE_EXPORTER="console",
    )
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stdout.strip()
    (span,) = [json.loads(s) for s in proc.stderr.splitlines() if s.startswith("{")]
    assert span["name"] == "work" and span["trace_id"] == trace_id


def test_file_spans_survive_an_exit_without_explicit_shutdown(tmp_path: Path) -> None:
    """console/file export synchronously: a job that exits without shutdown_tracing (and with
    the atexit hook running at interpreter exit) loses no span and does not fail at exit."""
    out = tmp_path / "exit.jsonl"
    proc = _run(
        """
        from common import tracing
        tracing.configure_tracing("svc")
        with tracing.tracer("t").start_as_current_span("last words"):
            pass
        """,
        PHOENIX_TRACE_EXPORTER=f"file:{out}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [s["name"] for s in _spans(out)] == ["last words"]


# --- metrics ----------------------------------------------------------------------------------


def _points(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_name.setdefault(record["name"], []).extend(record["points"])
    return by_name


def test_metrics_file_exporter_records_creation_lifecycle(tmp_path: Path) -> None:
    out = tmp_path / "metrics.jsonl"
    metrics.configure_metrics(f"file:{out}", service="phoenix-video-job")
    metrics.record_created("video", "cloudtasks")
    metrics.record_created("video", "cloudtasks")
    metrics.record_completed("video", "cloudtasks", queue_wait_s=1.5, run_time_s=42.0)
    metrics.record_failed("image", "celery", "rai_filtered", run_time_s=3.0)
    metrics.record_completed("image", "celery", queue_wait_s=-0.2, run_time_s=1.0)  # clock skew
    metrics.shutdown_metrics()

    points = _points(out)
    (created,) = points[metrics.CREATED]
    assert created["attributes"] == {"kind": "video", "path": "cloudtasks"}
    assert created["value"] == 2
    (failed,) = points[metrics.FAILED]
    assert failed["attributes"] == {"kind": "image", "path": "celery", "code": "rai_filtered"}
    assert failed["value"] == 1
    assert {p["attributes"]["kind"] for p in points[metrics.COMPLETED]} == {"video", "image"}

    waits = {p["attributes"]["kind"]: p for p in points[metrics.QUEUE_WAIT]}
    assert waits["video"]["sum"] == 1.5 and waits["video"]["count"] == 1
    assert waits["image"]["min"] == 0.0  # negative durations are clamped
    runs = {
        (p["attributes"]["kind"], p["attributes"]["outcome"]): p for p in points[metrics.RUN_TIME]
    }
    assert runs[("video", "completed")]["sum"] == 42.0
    assert runs[("image", "failed")]["sum"] == 3.0
    assert 30 in runs[("video", "completed")]["explicit_bounds"]  # seconds-scale buckets


def test_metrics_none_is_a_no_op_without_the_sdk() -> None:
    proc = _run(
        """
        import sys
        from common import metrics
        metrics.configure_metrics()
        metrics.record_created("video", "cloudtasks")
        metrics.record_completed("video", "cloudtasks", 1.0, 2.0)
        metrics.record_failed("video", "cloudtasks", "internal")
        metrics.shutdown_metrics()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_metrics_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PHOENIX_METRICS_EXPORTER"):
        metrics.configure_metrics("statsd")


# Child interpreters started by these tests import all three modules: name them here so the
# test's sandbox (Pants infers dependencies from imports) contains them.
import common.logs  # noqa: F401,E402
import common.metrics  # noqa: F401,E402
import common.tracing  # noqa: F401,E402
