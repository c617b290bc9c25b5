"""The logging pipeline: the JSON lines Cloud Logging parses, stdlib records in the same format,
trace correlation with the active span, redaction, pretty mode, and import cost.

In-process tests write to a buffer (``stream=``) and reset the global configuration after each
test; the tests about real stdout and import cost run a fresh interpreter.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import warnings
from typing import Any, Iterator

import pytest
import structlog

from common import logs
from common.config import ConfigError, Settings
from common.logs import REDACTED
from tests.support.child import run_python

HEX32 = re.compile(r"^[0-9a-f]{32}$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    logs._reset_for_tests()
    yield
    logs._reset_for_tests()
    root.setLevel(level)


def _configure(fmt: str = "json", level: str = "DEBUG", project: str = "P") -> io.StringIO:
    buf = io.StringIO()
    logs.configure_logging(fmt, level, service="phoenix-test", gcp_project=project, stream=buf)
    return buf


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(code, env=env)


# --- JSON shape -------------------------------------------------------------------------------


def test_json_line_has_cloud_logging_fields_and_bound_context() -> None:
    buf = _configure()
    with logs.bind_creation("c-123", kind="video", path="cloud-tasks"):
        logs.get_logger("phoenix.test").info("creation_claimed", attempt=2)
    logs.get_logger("phoenix.test").info("after")

    first, after = _lines(buf)
    assert first["severity"] == "INFO"
    assert first["message"] == "creation_claimed"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", first["time"])
    assert first["service"] == "phoenix-test"
    assert (first["creation_id"], first["kind"], first["path"]) == ("c-123", "video", "cloud-tasks")
    assert first["attempt"] == 2
    assert first["logging.googleapis.com/labels"] == {
        "service": "phoenix-test",
        "kind": "video",
        "path": "cloud-tasks",
    }
    # No span is active: no trace keys (Cloud Logging would otherwise link to a bogus trace).
    assert not any(k.startswith("logging.googleapis.com/trace") for k in first)
    assert "logging.googleapis.com/spanId" not in first
    # The with-block restored the context.
    assert "creation_id" not in after


def test_the_path_label_is_the_dispatch_path_only() -> None:
    """Labels are indexed: a URL path (one per creation id) must never become the ``path``
    label, whichever logger sets a ``path`` field; the access log calls it ``url_path``."""
    from api.main import access_fields

    buf = _configure()
    logs.get_logger("phoenix.test").info("stray", path="/api/creations/4bf92f3577b3")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/creations/4bf92f3577b3"}
    fields = access_fields(environ, None, 0.002, structured=True)
    logs.get_logger("phoenix.access").info("http_request", **fields)
    with logs.bind_creation("c-1", kind="image", path="celery"):
        logs.get_logger("phoenix.test").info("dispatched")

    stray, access, dispatched = _lines(buf)
    assert stray["logging.googleapis.com/labels"] == {"service": "phoenix-test"}
    assert "path" not in access and access["url_path"] == "/api/creations/4bf92f3577b3"
    assert "path" not in access["logging.googleapis.com/labels"]
    assert dispatched["logging.googleapis.com/labels"]["path"] == "celery"


def test_bind_creation_as_a_plain_call_binds_until_cleared() -> None:
    buf = _configure()
    logs.bind_creation("c-9", kind="image")
    logs.get_logger("x").info("one")
    structlog.contextvars.clear_contextvars()
    logs.get_logger("x").info("two")
    one, two = _lines(buf)
    assert (one["creation_id"], one["kind"]) == ("c-9", "image")
    assert "path" not in one
    assert "creation_id" not in two


@pytest.mark.parametrize(
    ("method", "severity"),
    [
        ("debug", "DEBUG"),
        ("info", "INFO"),
        ("warning", "WARNING"),
        ("error", "ERROR"),
        ("critical", "CRITICAL"),
    ],
)
def test_severity_mapping(method: str, severity: str) -> None:
    buf = _configure()
    getattr(logs.get_logger("x"), method)("evt")
    assert _lines(buf)[0]["severity"] == severity


def test_level_filters_both_structlog_and_stdlib() -> None:
    buf = _configure(level="WARNING")
    logs.get_logger("x").info("dropped")
    logging.getLogger("google.auth").info("dropped too")
    logs.get_logger("x").warning("kept")
    assert [line["message"] for line in _lines(buf)] == ["kept"]


def test_trace_fields_come_from_the_active_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    buf = _configure(project="my-proj")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logs.get_logger("x").info("inside")
        logging.getLogger("gunicorn.error").info("foreign inside")
        ctx = span.get_span_context()

    trace_id = format(ctx.trace_id, "032x")
    span_id = format(ctx.span_id, "016x")
    for line in _lines(buf):
        assert line["logging.googleapis.com/trace"] == f"projects/my-proj/traces/{trace_id}"
        assert line["logging.googleapis.com/spanId"] == span_id
        assert line["logging.googleapis.com/trace_sampled"] is True


def test_trace_field_is_the_bare_trace_id_without_a_project() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    buf = _configure(project="")
    with TracerProvider().get_tracer("test").start_as_current_span("s") as span:
        logs.get_logger("x").info("inside")
    (line,) = _lines(buf)
    assert line["logging.googleapis.com/trace"] == format(span.get_span_context().trace_id, "032x")
    assert HEX32.match(line["logging.googleapis.com/trace"])


def test_exception_is_rendered_as_stack_trace() -> None:
    buf = _configure()
    try:
        raise RuntimeError("vertex said no")
    except RuntimeError:
        logs.get_logger("x").exception("generation_failed")
        logging.getLogger("celery.worker").exception("foreign failure")
    ours, foreign = _lines(buf)
    for line in (ours, foreign):
        assert line["severity"] == "ERROR"
        assert line["stack_trace"].startswith("Traceback (most recent call last):")
        assert "RuntimeError: vertex said no" in line["stack_trace"]
    assert ours["message"] == "generation_failed"


# --- stdlib routing ---------------------------------------------------------------------------


def test_stdlib_loggers_come_out_as_the_same_json() -> None:
    buf = _configure()
    with logs.bind_creation("c-1"):
        logging.getLogger("gunicorn.error").warning("Worker %s timed out", 42)
        logging.getLogger("werkzeug").info("served", extra={"status": 200})
    gunicorn, werkzeug = _lines(buf)
    assert gunicorn["severity"] == "WARNING"
    assert gunicorn["message"] == "Worker 42 timed out"
    assert gunicorn["logger"] == "gunicorn.error"
    assert gunicorn["service"] == "phoenix-test"
    assert gunicorn["creation_id"] == "c-1"
    assert werkzeug["status"] == 200


def test_python_warnings_are_routed() -> None:
    buf = _configure()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    (line,) = _lines(buf)
    assert line["severity"] == "WARNING"
    assert line["logger"] == "py.warnings"
    assert "deprecated thing" in line["message"]


def test_reconfiguring_replaces_the_handler_instead_of_adding_one() -> None:
    first = _configure()
    logs.configure_logging("json", "DEBUG", service="phoenix-test", gcp_project="P", stream=first)
    second = io.StringIO()
    logs.configure_logging("json", "DEBUG", service="other", stream=second)
    logging.getLogger("gunicorn.error").warning("once")
    assert first.getvalue() == ""
    (line,) = _lines(second)
    assert line["service"] == "other"
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._PipelineHandler)]
    assert len(ours) == 1


def test_settings_object_is_accepted() -> None:
    buf = io.StringIO()
    settings = Settings(log_format="json", log_level="WARNING", gcp_project="from-settings")
    logs.configure_logging(settings, service="svc", stream=buf)
    logs.get_logger("x").info("dropped")
    logs.get_logger("x").warning("kept")
    assert [line["message"] for line in _lines(buf)] == ["kept"]


def test_bad_format_or_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PHOENIX_LOG_FORMAT"):
        logs.configure_logging("xml", service="svc", stream=io.StringIO())
    with pytest.raises(ConfigError, match="PHOENIX_LOG_LEVEL"):
        logs.configure_logging("json", "LOUD", service="svc", stream=io.StringIO())


# --- redaction --------------------------------------------------------------------------------


def test_secret_keys_are_redacted_at_any_depth_without_mutating_the_caller() -> None:
    """Shown to fail when the log redaction processor is disabled (scratch branch
    scratch/promises-break-redaction, 2026-12-01, on the logs.py of that time): the bearer
    token reached the JSON line."""
    buf = _configure()
    headers = {"Authorization": "Bearer abc.def", "Content-Type": "application/json"}
    request = {
        "headers": headers,
        "body": {"credentials": {"private_key": "-----BEGIN", "client_email": "sa@x"}},
        "items": [{"apiKey": "AIza123"}, {"password": "hunter2"}],
    }
    logs.get_logger("x").info(
        "call",
        request=request,
        id_token="eyJhbGciOi",
        TOKEN="t",
        client_secret="s3",
        Cookie="session=1",
        api_key="k",
        prompt_token_count=17,
        token_missing=None,
    )
    (line,) = _lines(buf)
    out = json.dumps(line)
    for secret in ("abc.def", "-----BEGIN", "AIza123", "hunter2", "eyJhbGciOi", "s3", "session=1"):
        assert secret not in out
    assert line["request"]["headers"] == {
        "Authorization": REDACTED,
        "Content-Type": "application/json",
    }
    assert line["request"]["body"]["credentials"]["private_key"] == REDACTED
    assert line["request"]["body"]["credentials"]["client_email"] == "sa@x"
    assert line["request"]["items"] == [{"apiKey": REDACTED}, {"password": REDACTED}]
    assert line["id_token"] == line["TOKEN"] == line["client_secret"] == REDACTED
    assert line["Cookie"] == line["api_key"] == REDACTED
    # Counters are not secrets; absence is not a secret.
    assert line["prompt_token_count"] == 17
    assert line["token_missing"] is None
    # The caller's objects are untouched.
    assert headers["Authorization"] == "Bearer abc.def"


def test_bearer_and_key_value_secrets_inside_strings_are_redacted() -> None:
    buf = _configure()
    logs.get_logger("x").warning(
        "upstream said: Authorization: Bearer ya29.a0AfB_secret== rejected",
        detail="curl -H 'authorization: bearer ya29.other' https://x",
        url="/v1/run?access_token=tok123&alt=json",
        settings_repr="Settings(vertex_access_token='vat-1', port=8080)",
    )
    logging.getLogger("google.auth").error("refresh failed for Bearer ya29.third")
    ours, foreign = _lines(buf)
    text = json.dumps([ours, foreign])
    for secret in ("ya29.a0AfB_secret", "ya29.other", "tok123", "vat-1", "ya29.third"):
        assert secret not in text
    assert ours["url"] == f"/v1/run?access_token={REDACTED}&alt=json"
    assert "port=8080" in ours["settings_repr"]
    assert "rejected" in ours["message"]
    assert foreign["message"] == f"refresh failed for Bearer {REDACTED}"


def test_secrets_in_exception_text_are_redacted_in_both_modes() -> None:
    for fmt in ("json", "pretty"):
        logs._reset_for_tests()
        buf = _configure(fmt)
        try:
            raise PermissionError("403 with headers {'Authorization': 'Bearer leaked-token'}")
        except PermissionError:
            logs.get_logger("x").exception("failed")
        assert "leaked-token" not in buf.getvalue(), fmt
        assert "PermissionError" in buf.getvalue(), fmt


def test_redaction_helpers() -> None:
    assert logs.is_secret_key("X-Goog-IAM-Authorization-Token")
    assert logs.is_secret_key("refreshToken")
    assert logs.is_secret_key("PRIVATE_KEY_ID")
    assert not logs.is_secret_key("token_count")
    assert not logs.is_secret_key("max_tokens")
    assert not logs.is_secret_key("creation_id")
    assert logs.redact_text("plain text") == "plain text"
    assert logs.redact({"a": ("x", {"secret": 1})}) == {"a": ["x", {"secret": REDACTED}]}


# --- pretty mode ------------------------------------------------------------------------------


def test_pretty_mode_is_human_readable_without_colours_off_a_tty() -> None:
    buf = _configure("pretty")
    with logs.bind_creation("c-7", kind="video"):
        logs.get_logger("x").info("job_started", password="pw")
    text = buf.getvalue()
    assert "job_started" in text
    assert "creation_id=c-7" in text
    assert "pw" not in text.replace("password", "")
    assert not ANSI.search(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


# --- real stdout, fresh interpreter -----------------------------------------------------------


def test_json_goes_to_stdout_with_the_span_of_a_configured_tracer() -> None:
    proc = _run(
        """
        import logging
        from common import logs, tracing
        logs.configure_logging("json", "INFO", service="phoenix-video-job", gcp_project="P")
        tracing.configure_tracing("phoenix-video-job", "none")
        with tracing.tracer("t").start_as_current_span("job.video"):
            print("TRACE", tracing.current_trace_id(), file=__import__("sys").stderr)
            logging.getLogger("gunicorn.error").warning("from gunicorn")
        """
    )
    assert proc.returncode == 0, proc.stderr
    trace_id = re.search(r"TRACE ([0-9a-f]{32})", proc.stderr).group(1)  # type: ignore[union-attr]
    (line,) = [json.loads(s) for s in proc.stdout.splitlines()]
    assert line["severity"] == "WARNING"
    assert line["logging.googleapis.com/trace"] == f"projects/P/traces/{trace_id}"
    assert re.match(r"^[0-9a-f]{16}$", line["logging.googleapis.com/spanId"])


def test_pretty_to_a_pipe_has_no_colour_codes() -> None:
    proc = _run(
        """
        from common import logs
        logs.configure_logging("pretty", "INFO", service="phoenix-api")
        logs.get_logger("x").warning("hello", n=1)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello" in proc.stdout and "n=1" in proc.stdout
    assert not ANSI.search(proc.stdout)


def test_importing_logs_and_tracing_pulls_in_no_sdk_or_exporter() -> None:
    proc = _run(
        """
        import sys
        import common.logs, common.tracing, common.metrics
        heavy = [m for m in sys.modules if m.startswith(("opentelemetry.sdk",
                 "opentelemetry.exporter", "opentelemetry.metrics", "google."))]
        print(heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# Child interpreters started by these tests import all three modules: name them here so the
# test's sandbox (Pants infers dependencies from imports) contains them.
import common.logs  # noqa: F401,E402
import common.metrics  # noqa: F401,E402
import common.tracing  # noqa: F401,E402
