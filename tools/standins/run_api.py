"""A local stand-in for the Cloud Run Admin API v2 ``jobs:run`` method.

Why: in production Cloud Tasks POSTs to
``https://run.googleapis.com/v2/projects/P/locations/L/jobs/JOB:run`` with
``{"overrides": {"containerOverrides": [{"env": [...]}], "taskCount": 1}}``, and Cloud Run
starts a job execution. Locally the Cloud Tasks emulator delivers that very request here, and
this server does what Cloud Run would:

* validates the RunJobRequest body strictly (unknown keys, wrong types, reserved env names →
  400 ``INVALID_ARGUMENT`` google-style JSON), so a malformed dispatcher body fails locally
  exactly where it would fail in production;
* answers at once with a long-running Operation naming the new Execution (it does not wait for
  the job: a 2xx means "execution created", never "job succeeded");
* runs each task with the job's base environment MERGED with the override env, plus
  ``CLOUD_RUN_JOB``, ``CLOUD_RUN_EXECUTION``, ``CLOUD_RUN_TASK_INDEX``, ``CLOUD_RUN_TASK_COUNT``
  and ``CLOUD_RUN_TASK_ATTEMPT``, either
  - as a child process of the job's command (process mode, for machines without a container
    engine), or
  - as a container of the job's IMAGE (container mode, ``JobSpec(image=...)``):
    ``docker run --network host`` (all traffic stays on loopback), with exactly that
    environment and nothing of the host's; the attempt records the env Docker really gave
    the container (``docker inspect``), and the container is removed afterwards;
* enforces the task timeout like Cloud Run: SIGTERM, then SIGKILL after the grace period
  (``stop_grace``; Cloud Run's is 10 s), and ``maxRetries``: a non-zero exit or a timeout
  re-runs the task with the next attempt number, up to ``max_retries`` extra attempts. Both
  can come from the job's descriptor (``JobSpec.from_descriptor`` reads ``deploy/job.yaml``);
* ``POST /v2/projects/P/locations/L/jobs/JOB/executions/EXECUTION:cancel`` cancels a running
  execution like Cloud Run: its task gets SIGTERM (SIGKILL after ``stop_grace``), no further
  attempt is started, and the execution ends ``cancelled``; 404 for an unknown execution, 400
  FAILED_PRECONDITION for one that already finished;
* with ``require_auth=True`` rejects requests without ``Authorization: Bearer …`` with 401
  (the real API needs an OAuth token; the Cloud Tasks emulator sends none, so the local chain
  runs with ``require_auth=False``).

Inspection: ``GET /_standin/calls`` (every request: method, path, headers with the
Authorization value redacted, body, status), ``GET /_standin/executions`` (attempts and exit
codes), ``POST /_standin/reset``; in-process ``calls()``, ``executions()``,
``wait_for_executions()``.

CLI: ``python -m tools.standins.run_api --port N --job phoenix-video-job="python -m jobs.video.main"``
(process mode) or ``--image-job phoenix-video-job=IMAGE`` (container mode).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import secrets
import shlex
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from tools.servers import BackgroundHttpServer

RUN_PATH = re.compile(
    r"^/v2/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/jobs/(?P<job>[^/:]+):run$"
)
CANCEL_PATH = re.compile(
    r"^/v2/(?P<name>projects/[^/]+/locations/[^/]+/jobs/[^/:]+/executions/[^/:]+):cancel$"
)
DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names Cloud Run sets itself; a request may not override them.
RESERVED_ENV = {
    "PORT",
    "K_SERVICE",
    "K_REVISION",
    "K_CONFIGURATION",
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "CLOUD_RUN_TASK_INDEX",
    "CLOUD_RUN_TASK_COUNT",
    "CLOUD_RUN_TASK_ATTEMPT",
}
REQUEST_KEYS = {"validateOnly", "etag", "overrides"}
OVERRIDES_KEYS = {"containerOverrides", "taskCount", "timeout"}
CONTAINER_OVERRIDE_KEYS = {"name", "args", "env", "clearArgs"}
ENV_VAR_KEYS = {"name", "value"}
MAX_TASK_COUNT = 10  # a local machine has 2 cores; the real quota is 10,000


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class JobSpec:
    """A job's container: ``command`` + default ``args`` (overridable per run), base env, cwd.

    With ``image`` the task runs as a container of that image (``command`` is then ignored:
    the image's entrypoint runs, with ``args``); ``docker_args`` are extra ``docker run``
    flags (mounts). ``task_timeout`` / ``max_retries`` override the stand-in's defaults, as a
    job descriptor's ``timeoutSeconds`` / ``maxRetries`` do.
    """

    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    image: str | None = None
    docker_args: Sequence[str] = ()
    task_timeout: float | None = None
    max_retries: int | None = None

    @classmethod
    def from_descriptor(
        cls,
        path: str | os.PathLike[str],
        *,
        substitutions: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "JobSpec":
        """The job as its Cloud Run descriptor (``deploy/job.yaml``) defines it: task timeout,
        maxRetries and the container's env (``${VAR}`` replaced from ``substitutions``; a
        variable left unreplaced is an error, not a silent literal). ``overrides`` set any
        other field (``image=...``, ``env=`` merged over the descriptor's)."""
        text = Path(path).read_text()
        for name, value in (substitutions or {}).items():
            text = text.replace("${" + name + "}", value)
        timeout, retries, env = read_job_descriptor(text)
        left = sorted(k for k, v in env.items() if "${" in v)
        if left:
            raise ValueError(f"{path}: no substitution for the env of {left}")
        env.update(overrides.pop("env", {}))
        return cls(env=env, task_timeout=timeout, max_retries=retries, **overrides)


_DESCRIPTOR_INT = r"^\s+{key}:\s*\"?(\d+)\"?\s*$"
_DESCRIPTOR_ENV = re.compile(
    r"^\s*-\s+name:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\n\s+value:\s*(?P<value>.*?)\s*$",
    re.MULTILINE,
)


def read_job_descriptor(text: str) -> tuple[float, int, dict[str, str]]:
    """(timeoutSeconds, maxRetries, container env) of a Cloud Run Job descriptor.

    Why not a YAML library: the stand-in runs inside the emulator profile's PEX, whose resolve
    holds only what the product imports. Our descriptors keep to one shape (one container,
    ``- name:`` directly followed by ``value:``); tests/unit/test_job_descriptor_reader.py
    checks this reader against a real YAML parse of every job descriptor.
    """

    def number(key: str, default: int) -> int:
        found = re.findall(_DESCRIPTOR_INT.format(key=key), text, re.MULTILINE)
        if len(found) > 1:
            raise ValueError(f"{key} appears {len(found)} times")
        return int(found[0]) if found else default

    env = {}
    for m in _DESCRIPTOR_ENV.finditer(text):
        value = m.group("value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[m.group("name")] = value
    return float(number("timeoutSeconds", 600)), number("maxRetries", 3), env


@dataclass(frozen=True)
class RunRequest:
    """The validated parts of a RunJobRequest body that change what is run."""

    env: dict[str, str]
    args: list[str] | None  # None = keep the job's args
    clear_args: bool
    task_count: int | None
    timeout_seconds: float | None
    validate_only: bool


def _parse_int(value: Any, what: str) -> int:
    # proto3 JSON accepts int32 as a number or a decimal string
    if isinstance(value, bool):
        raise _invalid(f"Invalid value at '{what}' (TYPE_INT32), {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    raise _invalid(f"Invalid value at '{what}' (TYPE_INT32), {json.dumps(value)}")


def validate_run_body(body: Any) -> RunRequest:
    """Validate a RunJobRequest JSON body the way the Admin API does (strict proto3 JSON)."""
    if body is None or body == {}:
        return RunRequest({}, None, False, None, None, False)
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    unknown = set(body) - REQUEST_KEYS
    if unknown:
        raise _invalid(
            f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.'
        )
    validate_only = body.get("validateOnly", False)
    if not isinstance(validate_only, bool):
        raise _invalid("Invalid value at 'validate_only' (TYPE_BOOL)")
    if "etag" in body and not isinstance(body["etag"], str):
        raise _invalid("Invalid value at 'etag' (TYPE_STRING)")
    overrides = body.get("overrides", {})
    if not isinstance(overrides, dict):
        raise _invalid("Invalid value at 'overrides': expected an object.")
    unknown = set(overrides) - OVERRIDES_KEYS
    if unknown:
        raise _invalid(
            f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'overrides': Cannot find field."
        )
    task_count = None
    if "taskCount" in overrides:
        task_count = _parse_int(overrides["taskCount"], "overrides.task_count")
        if not 1 <= task_count <= MAX_TASK_COUNT:
            raise _invalid(
                f"overrides.task_count must be between 1 and {MAX_TASK_COUNT} here, got {task_count}."
            )
    timeout_seconds = None
    if "timeout" in overrides:
        t = overrides["timeout"]
        if not isinstance(t, str) or not DURATION.match(t):
            raise _invalid(
                f"Invalid value at 'overrides.timeout' (type.googleapis.com/google.protobuf.Duration), {json.dumps(t)}"
            )
        timeout_seconds = float(t[:-1])
        if timeout_seconds <= 0:
            raise _invalid("overrides.timeout must be positive.")
    containers = overrides.get("containerOverrides", [])
    if not isinstance(containers, list):
        raise _invalid("Invalid value at 'overrides.container_overrides': expected a list.")
    if len(containers) > 1:
        raise _invalid(
            "overrides.container_overrides: this job has a single container; give at most one override."
        )
    env: dict[str, str] = {}
    args: list[str] | None = None
    clear_args = False
    for ci, co in enumerate(containers):
        where = f"overrides.container_overrides[{ci}]"
        if not isinstance(co, dict):
            raise _invalid(f"Invalid value at '{where}': expected an object.")
        unknown = set(co) - CONTAINER_OVERRIDE_KEYS
        if unknown:
            raise _invalid(
                f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{where}': Cannot find field."
            )
        if "name" in co and not isinstance(co["name"], str):
            raise _invalid(f"Invalid value at '{where}.name' (TYPE_STRING)")
        if "clearArgs" in co:
            if not isinstance(co["clearArgs"], bool):
                raise _invalid(f"Invalid value at '{where}.clear_args' (TYPE_BOOL)")
            clear_args = co["clearArgs"]
        if "args" in co:
            if not isinstance(co["args"], list) or not all(isinstance(a, str) for a in co["args"]):
                raise _invalid(f"Invalid value at '{where}.args': expected a list of strings.")
            args = list(co["args"])
        if clear_args and args:
            raise _invalid(f"{where}: clear_args and args are mutually exclusive.")
        env_list = co.get("env", [])
        if not isinstance(env_list, list):
            raise _invalid(f"Invalid value at '{where}.env': expected a list.")
        for ei, item in enumerate(env_list):
            ew = f"{where}.env[{ei}]"
            if not isinstance(item, dict):
                raise _invalid(f"Invalid value at '{ew}': expected an object.")
            unknown = set(item) - ENV_VAR_KEYS
            if unknown:
                raise _invalid(
                    f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{ew}': Cannot find field."
                )
            name, value = item.get("name"), item.get("value", "")
            if not isinstance(name, str) or not ENV_NAME.match(name):
                raise _invalid(
                    f"{ew}.name must be a valid environment variable name, got {json.dumps(name)}."
                )
            if name in RESERVED_ENV:
                raise _invalid(f"{ew}.name: {name} is a reserved environment variable.")
            if not isinstance(value, str):
                raise _invalid(f"Invalid value at '{ew}.value' (TYPE_STRING), {json.dumps(value)}")
            if name in env:
                raise _invalid(f"{ew}.name: duplicate environment variable {name}.")
            env[name] = value
    return RunRequest(env, args, clear_args, task_count, timeout_seconds, validate_only)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _execution_id(job: str) -> str:
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{job}-{suffix}"


class RunApiStandin:
    """The stand-in server (background thread) plus the supervisor of the job processes.

    Args:
        jobs: job name → argv list (command and default args) or :class:`JobSpec`.
        env: base environment for every job (merged over ``os.environ`` when ``inherit_env``).
        max_retries: the job's ``maxRetries`` (Cloud Run default 3).
        task_timeout: the job's per-task timeout in seconds (Cloud Run default 600).
        require_auth: 401 for requests without ``Authorization: Bearer <token>``.
        log_dir: where each attempt's stdout/stderr goes (default: a temp dir kept until stop).
    """

    def __init__(
        self,
        jobs: Mapping[str, Sequence[str] | JobSpec],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        max_retries: int = 3,
        task_timeout: float = 600.0,
        require_auth: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        stop_grace: float = 5.0,
    ) -> None:
        self.jobs: dict[str, JobSpec] = {
            name: spec if isinstance(spec, JobSpec) else JobSpec(command=list(spec))
            for name, spec in jobs.items()
        }
        self.host, self._requested_port = host, port
        self.base_env = dict(env or {})
        self.inherit_env = inherit_env
        self.max_retries = max_retries
        self.task_timeout = task_timeout
        self.require_auth = require_auth
        self.stop_grace = stop_grace
        self._own_log_dir = log_dir is None
        self._log_dir_arg = log_dir
        self.log_dir: Path | None = None
        self._lock = threading.Condition()
        self._calls: list[dict[str, Any]] = []
        self._executions: dict[str, dict[str, Any]] = {}
        self._running: dict[int, _Attempt] = {}
        self.instance = uuid.uuid4().hex[:12]  # labels this stand-in's containers
        self._cancelled: set[str] = set()  # execution names cancelled through the API
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._httpd: BackgroundHttpServer | None = None

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> "RunApiStandin":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        if self._own_log_dir:
            self.log_dir = Path(tempfile.mkdtemp(prefix="phoenix-run-api-"))
        else:
            self.log_dir = Path(self._log_dir_arg)  # type: ignore[arg-type]
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._httpd = BackgroundHttpServer(
            self.host, self._requested_port, _make_handler(self), "run-api-standin"
        )
        return self

    def stop(self) -> None:
        """Stop serving, terminate running job processes (whole groups) and reap them."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.stop()
        with self._lock:
            running = list(self._running.values())
        for attempt in running:
            attempt.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for attempt in running:
            try:
                attempt.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                attempt.signal(signal.SIGKILL)
        for t in list(self._threads):
            t.join(timeout=self.stop_grace + 10)
        if any(spec.image for spec in self.jobs.values()):
            _remove_labelled_containers(self.instance)
        self._httpd = None
        if (
            self._own_log_dir
            and self.log_dir is not None
            and os.environ.get("PHOENIX_KEEP_SERVER_LOGS") != "1"
        ):
            import shutil

            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "RunApiStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("RunApiStandin is not started")
        return self._httpd.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def run_url(
        self, job: str, project: str = "local-project", location: str = "us-central1"
    ) -> str:
        """The full ``jobs:run`` URL a dispatcher should POST to."""
        return f"{self.url}/v2/projects/{project}/locations/{location}/jobs/{job}:run"

    # inspection -----------------------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def executions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(e) for e in self._executions.values()]

    def reset(self) -> None:
        """Forget recorded calls and finished executions (running ones keep running)."""
        with self._lock:
            self._calls.clear()
            for name in [n for n, e in self._executions.items() if e["status"] != "running"]:
                del self._executions[name]

    def wait_for_executions(self, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` executions exist and none is still running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                done = [e for e in self._executions.values() if e["status"] != "running"]
                if len(self._executions) >= count and len(done) == len(self._executions):
                    return [copy.deepcopy(e) for e in self._executions.values()]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"wanted {count} finished executions within {timeout}s, have: "
                        + json.dumps(
                            [
                                {k: e[k] for k in ("execution", "status")}
                                for e in self._executions.values()
                            ]
                        )
                    )
                self._lock.wait(min(remaining, 0.2))

    # request handling -----------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], raw_body: bytes
    ) -> tuple[int, Any]:
        path = urlsplit(raw_path).path
        if path.startswith("/_standin/"):
            return self._admin(method, path)
        body: Any
        try:
            body = json.loads(raw_body) if raw_body.strip() else {}
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        record = {
            "method": method,
            "path": raw_path,
            "body": body,
            "time": time.time(),
            "headers": {
                k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in headers.items()
            },
        }
        try:
            status, payload = 200, self._run(method, path, headers, body)
        except ApiError as err:
            status, payload = err.code, err.body()
        record["status"] = status
        with self._lock:
            self._calls.append(record)
        return status, payload

    def _admin(self, method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path == "/_standin/calls":
            return 200, self.calls()
        if method == "GET" and path == "/_standin/executions":
            return 200, self.executions()
        if method == "POST" and path == "/_standin/reset":
            self.reset()
            return 200, {"ok": True}
        if method == "GET" and path == "/_standin/health":
            return 200, {"ok": True}
        return 404, ApiError(404, "NOT_FOUND", f"No route for {method} {path}").body()

    def _run(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        cancel = CANCEL_PATH.match(path)
        if cancel and method == "POST":
            self._check_auth(headers)
            return self._cancel_execution(cancel.group("name"))
        m = RUN_PATH.match(path)
        if not m:
            raise ApiError(
                404, "NOT_FOUND", f"The requested URL {path} was not found on this server."
            )
        if method != "POST":
            raise ApiError(
                405, "METHOD_NOT_ALLOWED", f"Method {method} not allowed for {path}; use POST."
            )
        self._check_auth(headers)
        project, location, job = m.group("project"), m.group("location"), m.group("job")
        spec = self.jobs.get(job)
        if spec is None:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Resource 'projects/{project}/locations/{location}/jobs/{job}' was not found",
            )
        req = validate_run_body(body)
        exec_id = _execution_id(job)
        exec_name = f"projects/{project}/locations/{location}/jobs/{job}/executions/{exec_id}"
        task_count = req.task_count or 1
        metadata = {
            "@type": "type.googleapis.com/google.cloud.run.v2.Execution",
            "name": exec_name,
            "uid": str(uuid.uuid4()),
            "job": job,
            "createTime": _now(),
            "taskCount": task_count,
            "parallelism": task_count,
        }
        operation: dict[str, Any] = {
            "name": f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}",
            "metadata": metadata,
        }
        if req.validate_only:
            operation["done"] = True
            return operation
        if self._stopping.is_set():
            raise ApiError(503, "UNAVAILABLE", "The service is shutting down.")
        if req.clear_args:
            args: list[str] = []
        elif req.args is not None:
            args = req.args
        else:
            args = list(spec.args)
        argv = [*spec.command, *args] if spec.image is None else args
        execution = {
            "name": exec_name,
            "execution": exec_id,
            "job": job,
            "argv": argv,
            "image": spec.image,
            "env_overrides": req.env,
            "task_count": task_count,
            "status": "running",
            "created": time.time(),
            "tasks": [{"index": i, "status": "running", "attempts": []} for i in range(task_count)],
        }
        with self._lock:
            self._executions[exec_name] = execution
        timeout = req.timeout_seconds or spec.task_timeout or self.task_timeout
        for i in range(task_count):
            t = threading.Thread(
                target=self._run_task,
                args=(spec, exec_name, exec_id, job, i, task_count, argv, req.env, timeout),
                name=f"{exec_id}-task{i}",
                daemon=True,
            )
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()
        return operation

    def _check_auth(self, headers: Mapping[str, str]) -> None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if self.require_auth and not re.fullmatch(r"Bearer \S+", auth):
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )

    def _cancel_execution(self, name: str) -> dict[str, Any]:
        """executions.cancel: SIGTERM the execution's running task processes, start no more
        attempts; answers a long-running Operation naming the execution, like the Admin API."""
        with self._lock:
            execution = self._executions.get(name)
            if execution is None:
                raise ApiError(404, "NOT_FOUND", f"Resource '{name}' was not found")
            if execution["status"] != "running":
                raise ApiError(
                    400,
                    "FAILED_PRECONDITION",
                    f"Execution {name} has already finished ({execution['status']}).",
                )
            self._cancelled.add(name)
            execution["cancel_requested"] = time.time()
            pids = [
                a["pid"]
                for t in execution["tasks"]
                for a in t["attempts"]
                if a.get("pid") and a.get("exit_code") is None
            ]
            attempts = [self._running[p] for p in pids if p in self._running]
        for attempt in attempts:
            attempt.signal(signal.SIGTERM)
        if attempts:
            threading.Thread(
                target=self._kill_after_grace, args=(attempts,), name="cancel-grace", daemon=True
            ).start()
        project_loc = name.split("/jobs/")[0]
        return {
            "name": f"{project_loc}/operations/{uuid.uuid4()}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.run.v2.Execution",
                "name": name,
            },
        }

    def _kill_after_grace(self, attempts: list[_Attempt]) -> None:
        deadline = time.monotonic() + self.stop_grace
        for attempt in attempts:
            while attempt.pid in self._running and time.monotonic() < deadline:
                time.sleep(0.05)
            if attempt.pid in self._running:
                attempt.signal(signal.SIGKILL)

    # job supervision ------------------------------------------------------------------------

    def _task_env(
        self,
        spec: JobSpec,
        job: str,
        exec_id: str,
        index: int,
        count: int,
        attempt: int,
        overrides: Mapping[str, str],
    ) -> dict[str, str]:
        # A container gets only what the job defines (its image supplies PATH and the rest).
        env = dict(os.environ) if self.inherit_env and spec.image is None else {}
        env.update(self.base_env)
        env.update(spec.env)
        env.update(overrides)  # "Will be merged with existing env"
        env.update(
            {
                "CLOUD_RUN_JOB": job,
                "CLOUD_RUN_EXECUTION": exec_id,
                "CLOUD_RUN_TASK_INDEX": str(index),
                "CLOUD_RUN_TASK_COUNT": str(count),
                "CLOUD_RUN_TASK_ATTEMPT": str(attempt),
            }
        )
        return env

    def _run_task(
        self,
        spec: JobSpec,
        exec_name: str,
        exec_id: str,
        job: str,
        index: int,
        count: int,
        argv: list[str],
        overrides: Mapping[str, str],
        timeout: float,
    ) -> None:
        status = "failed"
        retries = self.max_retries if spec.max_retries is None else spec.max_retries
        for attempt in range(retries + 1):
            if self._stopping.is_set() or exec_name in self._cancelled:
                status = "cancelled"
                break
            assert self.log_dir is not None
            log_path = self.log_dir / f"{exec_id}-task{index}-attempt{attempt}.log"
            record: dict[str, Any] = {
                "attempt": attempt,
                "started": time.time(),
                "exit_code": None,
                "timed_out": False,
                "log": str(log_path),
            }
            env = self._task_env(spec, job, exec_id, index, count, attempt, overrides)
            try:
                with open(log_path, "wb") as log:
                    if spec.image is None:
                        running: _Attempt = _ProcessAttempt.start(argv, env, spec.cwd, log)
                    else:
                        running = _ContainerAttempt.start(
                            spec.image,
                            argv,
                            env,
                            log,
                            name=f"{exec_id}-task{index}-attempt{attempt}",
                            label=self.instance,
                            docker_args=spec.docker_args,
                        )
                        record["container"] = running.name
            except OSError as exc:
                record.update(exit_code=127, ended=time.time(), error=str(exc))
                self._record_attempt(exec_name, index, record)
                continue
            record["pid"] = running.pid
            self._record_attempt(exec_name, index, record, running)
            if self._stopping.is_set() or exec_name in self._cancelled:
                # stop() or a cancel may have snapshotted attempts just before us
                running.signal(signal.SIGTERM)
            try:
                code = running.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Cloud Run at the task timeout: SIGTERM, SIGKILL after the grace period.
                record["timed_out"] = True
                record["terminated_after_s"] = round(time.time() - record["started"], 3)
                running.signal(signal.SIGTERM)
                try:
                    code = running.wait(timeout=self.stop_grace)
                except subprocess.TimeoutExpired:
                    record["killed"] = True
                    running.signal(signal.SIGKILL)
                    code = running.wait(timeout=self.stop_grace + 30)
            record.update(running.finish(code))
            record.update(ended=time.time(), log_tail=_tail(log_path))
            self._record_attempt(exec_name, index, record, None, running.pid)
            if exec_name in self._cancelled:
                status = "cancelled"  # however the process ended: Cloud Run reports cancelled
                break
            if record["exit_code"] == 0 and not record["timed_out"]:
                status = "succeeded"
                break
            if self._stopping.is_set():
                status = "cancelled"
                break
        with self._lock:
            execution = self._executions.get(exec_name)
            if execution is not None:
                execution["tasks"][index]["status"] = status
                states = {t["status"] for t in execution["tasks"]}
                if "running" not in states:
                    execution["status"] = (
                        "succeeded"
                        if states == {"succeeded"}
                        else "cancelled"
                        if "cancelled" in states
                        else "failed"
                    )
                    execution["completed"] = time.time()
            self._lock.notify_all()

    def _record_attempt(
        self,
        exec_name: str,
        index: int,
        record: dict[str, Any],
        running: "_Attempt | None" = None,
        finished_pid: int | None = None,
    ) -> None:
        with self._lock:
            if running is not None:
                self._running[running.pid] = running
            if finished_pid is not None:
                self._running.pop(finished_pid, None)
            execution = self._executions.get(exec_name)
            if execution is not None:
                attempts = execution["tasks"][index]["attempts"]
                snapshot = dict(record)
                if attempts and attempts[-1]["attempt"] == record["attempt"]:
                    attempts[-1] = snapshot
                else:
                    attempts.append(snapshot)
            self._lock.notify_all()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's whole process group (it was started in its own session).

    Linux does not hand out a pid that is still in use as a process-group id, so the group
    cannot belong to anyone else while any of its members lives; once it is empty the call
    fails with ProcessLookupError, which is ignored.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _Attempt:
    """One running task attempt, process or container: what the supervisor needs of it."""

    pid: int

    def wait(self, timeout: float | None = None) -> int:
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def finish(self, code: int) -> dict[str, Any]:
        """After exit: clean up; the attempt record's final fields (``exit_code`` at least)."""
        raise NotImplementedError


class _ProcessAttempt(_Attempt):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.pid = proc, proc.pid

    @classmethod
    def start(
        cls, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, log: Any
    ) -> "_ProcessAttempt":
        return cls(
            subprocess.Popen(  # noqa: S603 - argv comes from the stand-in's configuration
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        )

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        _signal_group(self.proc, sig)

    def finish(self, code: int) -> dict[str, Any]:
        _signal_group(self.proc, signal.SIGKILL)  # leftovers of the attempt's process group
        return {"exit_code": code}


_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGTERM: "TERM",
    signal.SIGKILL: "KILL",
    signal.SIGINT: "INT",
}


class _ContainerAttempt(_Attempt):
    """``docker run`` of the job's image. Signals go to the container through the engine
    (``docker kill --signal``), i.e. to its PID 1, as Cloud Run delivers them; the ``docker run``
    client only streams the logs and returns the container's exit code."""

    def __init__(self, proc: subprocess.Popen[bytes], docker: str, name: str) -> None:
        self.proc, self.pid, self.docker, self.name = proc, proc.pid, docker, name

    @classmethod
    def start(
        cls,
        image: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Any,
        *,
        name: str,
        label: str,
        docker_args: Sequence[str] = (),
    ) -> "_ContainerAttempt":
        from tools.images import docker_cli

        docker = docker_cli()
        argv = [
            docker,
            "run",
            "--name",
            name,
            "--network",
            "host",
            "--label",
            f"{CONTAINER_LABEL}={label}",
            *(f"--env={k}={v}" for k, v in env.items()),
            *docker_args,
            image,
            *args,
        ]
        proc = subprocess.Popen(  # noqa: S603 - argv is built here
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(proc, docker, name)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        subprocess.run(
            [self.docker, "kill", "--signal", _SIGNAL_NAMES.get(sig, str(int(sig))), self.name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if sig == signal.SIGKILL:
            _signal_group(self.proc, signal.SIGKILL)  # a stuck client, too

    def finish(self, code: int) -> dict[str, Any]:
        out: dict[str, Any] = {"exit_code": code}
        proc = subprocess.run(
            [self.docker, "inspect", "--format", "{{json .}}", self.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode == 0:
            info = json.loads(proc.stdout)
            state = info.get("State", {})
            # The engine's word over the client's: the container's own exit code.
            out["exit_code"] = int(state.get("ExitCode", code))
            out["oom_killed"] = bool(state.get("OOMKilled"))
            out["container_env"] = dict(
                item.split("=", 1) for item in info.get("Config", {}).get("Env") or []
            )
            out["container_user"] = info.get("Config", {}).get("User", "")
            out["network_mode"] = info.get("HostConfig", {}).get("NetworkMode", "")
        else:
            out["inspect_error"] = proc.stderr.strip()[-500:]
        subprocess.run(
            [self.docker, "rm", "--force", self.name],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return out


CONTAINER_LABEL = "phoenix.run-api-standin"


def _remove_labelled_containers(instance: str) -> None:
    """Remove any container this stand-in instance started that is still there (an attempt
    whose client died before the engine created it); never anyone else's."""
    from tools.images import docker_cli

    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        docker = docker_cli()
        ids = subprocess.run(
            [docker, "ps", "--all", "--quiet", "--filter", f"label={CONTAINER_LABEL}={instance}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if ids:
            subprocess.run(
                [docker, "rm", "--force", *ids], capture_output=True, timeout=60, check=False
            )


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        return path.read_bytes()[-max_chars:].decode("utf-8", "replace")
    except OSError:
        return ""


def _make_handler(standin: RunApiStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30
        server_version = "RunApiStandin/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            if os.environ.get("RUN_API_STANDIN_VERBOSE"):
                super().log_message(format, *args)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                status, payload = standin.handle(
                    self.command, self.path, dict(self.headers.items()), raw
                )
            except (
                Exception
            ) as exc:  # a stand-in bug must be a visible 500, not a dropped connection
                status, payload = (
                    500,
                    ApiError(500, "INTERNAL", f"run_api stand-in crashed: {exc!r}").body(),
                )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    return Handler


def _parse_job(text: str) -> tuple[str, list[str]]:
    name, sep, cmd = text.partition("=")
    if not sep or not name or not cmd.strip():
        raise argparse.ArgumentTypeError(f"--job expects NAME=COMMAND, got {text!r}")
    return name, shlex.split(cmd)


def _parse_image_job(text: str) -> tuple[str, str]:
    name, sep, image = text.partition("=")
    if not sep or not name or not image.strip():
        raise argparse.ArgumentTypeError(f"--image-job expects NAME=IMAGE, got {text!r}")
    return name, image.strip()


def _parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not ENV_NAME.match(name):
        raise argparse.ArgumentTypeError(f"--env expects NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Local stand-in for the Cloud Run Admin API v2 jobs:run."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed on stdout)")
    parser.add_argument(
        "--job", type=_parse_job, action="append", default=[], metavar="NAME=COMMAND"
    )
    parser.add_argument(
        "--image-job",
        type=_parse_image_job,
        action="append",
        default=[],
        metavar="NAME=IMAGE",
        help="container mode: each run of NAME starts `docker run --network host IMAGE`",
    )
    parser.add_argument(
        "--env",
        type=_parse_env,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="base environment for every job",
    )
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--task-timeout", type=float, default=600.0)
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    if not args.job and not args.image_job:
        parser.error("give at least one --job or --image-job")
    jobs: dict[str, Sequence[str] | JobSpec] = dict(args.job)
    jobs.update({name: JobSpec(image=image) for name, image in args.image_job})
    standin = RunApiStandin(
        jobs,
        host=args.host,
        port=args.port,
        env=dict(args.env),
        max_retries=args.max_retries,
        task_timeout=args.task_timeout,
        require_auth=args.require_auth,
        log_dir=args.log_dir,
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY {standin.url}", flush=True)
    try:
        stop.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
