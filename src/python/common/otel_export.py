"""Where telemetry goes: the exporter choices shared by traces and metrics, and the resource
that names the process sending them.

``common.tracing`` and ``common.metrics`` each build their own provider, but they take the same
exporter specs (``PHOENIX_TRACE_EXPORTER`` / ``PHOENIX_METRICS_EXPORTER``), write the same JSON
lines for ``file:PATH``, report a missing optional package the same way and describe the process
with the same resource. That shared part lives here so neither module reaches into the other.

Cost: nothing from OpenTelemetry is imported with this module; the GCP resource detector and
the network exporters are imported only when a process selects ``gcp`` / ``otlp``.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from common.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from opentelemetry.sdk.resources import Resource

__all__ = [
    "EXPORTERS",
    "append_json_lines",
    "file_path",
    "json_lines_path",
    "missing_exporter",
    "otlp_exporter",
    "resource",
]

EXPORTERS = ("none", "console", "file:PATH", "otlp", "gcp")


def file_path(env_name: str, spec: str) -> str:
    """The PATH of a ``file:PATH`` spec; ConfigError when it is empty."""
    path = spec[len("file:") :].strip()
    if not path:
        raise ConfigError(f"{env_name}={spec!r}: file: needs a path (file:/tmp/out.jsonl)")
    return path


def unknown_exporter(env_name: str, spec: str) -> ConfigError:
    return ConfigError(f"{env_name}={spec!r} is not one of {', '.join(EXPORTERS)}")


def json_lines_path(target: str) -> str:
    """The absolute path a ``file:PATH`` exporter appends to (its directory created)."""
    path = os.path.abspath(target)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return path


def append_json_lines(path: str, records: Sequence[Any]) -> bool:
    """Appends one JSON object per line in a single ``write`` on an O_APPEND descriptor, so
    the processes sharing a file (API and jobs) never interleave inside a line. Shared by the
    span and metric file exporters; False when the write failed."""
    if not records:
        return True
    data = "".join(
        json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records
    ).encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def missing_exporter(env_name: str, exporter: str, package: str, exc: ImportError) -> ConfigError:
    """The start-up error for an exporter whose optional package this deployable lacks."""
    return ConfigError(
        f"{env_name}={exporter!r} needs the optional package {package!r}, which is not "
        f"installed ({exc}). Add it to the deployable's requirements or choose another exporter "
        f"({', '.join(EXPORTERS)})."
    )


def otlp_exporter(signal: str, env_name: str) -> Any:
    """An OTLP exporter for ``signal`` ("traces" or "metrics") over the protocol the standard
    OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL variables choose. We bundle the HTTP transport (see
    common/BUILD); gRPC works only in a deployable that adds its package. Looked up by name so
    each signal's module is imported only when configured."""
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    transport = "grpc" if protocol == "grpc" else "http"
    module_name, class_name = {
        "traces": ("trace_exporter", "OTLPSpanExporter"),
        "metrics": ("metric_exporter", "OTLPMetricExporter"),
    }[signal]
    try:
        module = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{transport}.{module_name}"
        )
    except ImportError as exc:
        raise missing_exporter(
            env_name, "otlp", f"opentelemetry-exporter-otlp-proto-{transport}", exc
        ) from exc
    return getattr(module, class_name)()


def _env_attributes(service: str, env: Mapping[str, str]) -> dict[str, Any]:
    """service.name, plus the Cloud Run identity from the variables Cloud Run sets: each job
    execution (and each retry of its task) is then distinguishable in the backend. Read from
    the environment only, so it costs nothing before a job's claim."""
    attrs: dict[str, Any] = {"service.name": service}
    if env.get("CLOUD_RUN_JOB"):
        attrs["cloud.provider"] = "gcp"
        attrs["cloud.platform"] = "gcp_cloud_run"
        attrs["gcp.cloud_run.job.name"] = env["CLOUD_RUN_JOB"]
    elif env.get("K_SERVICE"):
        attrs["cloud.provider"] = "gcp"
        attrs["cloud.platform"] = "gcp_cloud_run"
        attrs["faas.name"] = env["K_SERVICE"]
        if env.get("K_REVISION"):
            attrs["faas.version"] = env["K_REVISION"]
    if env.get("CLOUD_RUN_EXECUTION"):
        attrs["gcp.cloud_run.job.execution"] = env["CLOUD_RUN_EXECUTION"]
    if env.get("CLOUD_RUN_TASK_ATTEMPT"):
        attrs["gcp.cloud_run.job.task_attempt"] = _int_or_str(env["CLOUD_RUN_TASK_ATTEMPT"])
    if env.get("CLOUD_RUN_TASK_INDEX"):
        attrs["gcp.cloud_run.job.task_index"] = _int_or_str(env["CLOUD_RUN_TASK_INDEX"])
    return attrs


def _int_or_str(raw: str) -> int | str:
    try:
        return int(raw)
    except ValueError:
        return raw


def _gcp_detected() -> Resource:
    """What Google's resource detector finds (project, region, Cloud Run revision / job
    instance from the metadata server). Cloud Monitoring maps a series to a monitored resource
    from these attributes, so ``gcp`` export needs them; other exporters skip the metadata
    round trip."""
    from opentelemetry.resourcedetector.gcp_resource_detector import GoogleCloudResourceDetector

    return GoogleCloudResourceDetector(raise_on_error=False).detect()


def resource(service: str, spec: str, env: Mapping[str, str] | None = None) -> Resource:
    """The resource of a provider exporting to ``spec``: our env-derived attributes, merged
    over the GCP detector's when exporting to Google Cloud."""
    from opentelemetry.sdk.resources import Resource

    ours = Resource.create(_env_attributes(service, os.environ if env is None else env))
    if spec != "gcp":
        return ours
    return _gcp_detected().merge(ours)
