"""The deploy descriptors (Cloud Run service/jobs YAML, the Cloud Tasks queue) and Dockerfiles
agree with the code they deploy.

These files are applied verbatim by .github/workflows/deploy.yml, so a typo in an env name, a
job name the API does not dispatch to, or a timeout shorter than the code's own worst case
would only show in production. Each invariant below names the code constant it is tied to, so
changing that constant without revisiting the descriptor fails here.
"""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_SERVICE = ROOT / "src/python/api/deploy/service.yaml"
VIDEO_JOB = ROOT / "src/python/jobs/video/deploy/job.yaml"
IMAGE_JOB = ROOT / "src/python/jobs/image/deploy/job.yaml"
QUEUE = ROOT / "src/python/api/deploy/cloud-tasks-queue.yaml"
SWEEPER_JOB = ROOT / "src/python/api/deploy/sweeper-job.yaml"
SWEEPER_SCHEDULE = ROOT / "src/python/api/deploy/sweeper-schedule.yaml"

# The only placeholders deploy.yml substitutes (envsubst with an explicit list).
PLACEHOLDERS = {
    "IMAGE": "us-central1-docker.pkg.dev/proj/phoenix/x:abc123",
    "PROJECT_ID": "proj",
    "REGION": "us-central1",
    "MEDIA_BUCKET": "proj-phoenix-media",
}

# Time an attempt needs besides waiting for Veo: start-up, claim, the Veo start call, result
# bookkeeping and Firestore writes. Generous on purpose: it is the safety margin.
JOB_OVERHEAD_S = 300
# The fastest Veo run we plan for (platform notes: 60-120 s).
VEO_FASTEST_S = 60


def _file(path: Path) -> str:
    if not path.is_file():
        pytest.fail(
            f"{path.relative_to(ROOT)} is missing (under Pants the test needs a dependency on "
            "the files() target that owns it)"
        )
    return path.read_text()


def load(path: Path, render: bool = True) -> Any:
    try:
        import yaml
    except ImportError:  # fail, not skip: a skipped check is a descriptor nobody verifies
        pytest.fail("PyYAML is missing: add PyYAML to 3rdparty/python/test-requirements.txt")
    text = _file(path)
    if render:
        for name, value in PLACEHOLDERS.items():
            text = text.replace("${" + name + "}", value)
    return yaml.safe_load(text)


def env_of(container: dict) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        assert set(item) == {"name", "value"}, f"only literal values, no secrets refs: {item}"
        assert isinstance(item["value"], str), f"{item['name']}: quote non-string values"
        assert item["name"] not in env, f"{item['name']} set twice"
        env[item["name"]] = item["value"]
    return env


def job_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["template"]["spec"]


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity)
    assert match, f"memory {quantity!r}: use Mi or Gi"
    return float(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert match, f"duration {duration!r}: use seconds like '300s'"
    return float(match.group(1))


# --- Placeholders and env names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [API_SERVICE, VIDEO_JOB, IMAGE_JOB, QUEUE, SWEEPER_JOB, SWEEPER_SCHEDULE],
    ids=lambda p: p.name,
)
def test_only_known_placeholders(path):
    code = "\n".join(line.split("#", 1)[0] for line in _file(path).splitlines())
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code))
    assert used <= set(PLACEHOLDERS), f"unknown placeholders {used - set(PLACEHOLDERS)}"
    assert "$(" not in code


def _all_envs() -> dict[str, dict[str, str]]:
    return {
        "api": env_of(load(API_SERVICE)["spec"]["template"]["spec"]["containers"][0]),
        "video-job": env_of(job_spec(load(VIDEO_JOB))["containers"][0]),
        "image-job": env_of(job_spec(load(IMAGE_JOB))["containers"][0]),
        "sweeper": env_of(job_spec(load(SWEEPER_JOB))["containers"][0]),
    }


def test_every_env_name_is_read_by_the_code():
    import api.main
    import common.config
    from common.domain.kinds import KINDS

    readers = inspect.getsource(common.config) + inspect.getsource(api.main)
    for service, env in _all_envs().items():
        for name in env:
            per_kind = [m for p in common.config.PER_KIND_VARIABLES if (m := p.fullmatch(name))]
            if per_kind:  # PHOENIX_<KIND>_JOB and the like: the kind must be registered
                assert per_kind[0].group(1).lower() in KINDS, f"{service}: {name}: no such kind"
                continue
            assert f'"{name}"' in readers, f"{service}: nothing reads {name} (typo?)"
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in env, "no key files: use the runtime SA"


def test_settings_accept_every_descriptor_env():
    from common.config import Settings

    for service, env in _all_envs().items():
        settings = Settings.from_env(env)  # raises ConfigError on an invalid choice or number
        assert settings.store == "firestore", service
        assert settings.media == "gcs", service
        assert settings.log_format == "json", service
        assert settings.gcp_project == PLACEHOLDERS["PROJECT_ID"], service
        # As deployed (Cloud Run sets K_SERVICE / CLOUD_RUN_JOB), nothing trusts a header.
        runtime = "K_SERVICE" if service == "api" else "CLOUD_RUN_JOB"
        deployed = Settings.from_env({**env, runtime: service})
        assert deployed.auth == "firebase", service
        assert deployed.firebase_project == PLACEHOLDERS["PROJECT_ID"], service


# --- The API service --------------------------------------------------------------------------


def test_api_service():
    from common.adapters.cloud_tasks_dispatch import QUEUE_RE
    from common.config import Settings

    doc = load(API_SERVICE)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.knative.dev/v1", "Service")
    template = doc["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "0", "scale to zero: no idle cost"
    spec = template["spec"]
    assert spec["serviceAccountName"].startswith("phoenix-api@")
    container = spec["containers"][0]
    assert container["image"] == PLACEHOLDERS["IMAGE"]
    env = env_of(container)
    settings = Settings.from_env(env)
    assert settings.dispatch == "cloud-tasks" and settings.auth == "firebase"
    for name in (
        "PHOENIX_TASKS_QUEUE",
        "PHOENIX_TASKS_SERVICE_ACCOUNT",
        "PHOENIX_VIDEO_JOB",
        "PHOENIX_IMAGE_JOB",
        "PHOENIX_MEDIA_BUCKET",
    ):
        assert env.get(name), f"{name} must be set"
    # The API dispatches to the jobs by these names and into this queue.
    assert env["PHOENIX_VIDEO_JOB"] == load(VIDEO_JOB)["metadata"]["name"]
    assert env["PHOENIX_IMAGE_JOB"] == load(IMAGE_JOB)["metadata"]["name"]
    match = QUEUE_RE.match(env["PHOENIX_TASKS_QUEUE"])
    assert match, env["PHOENIX_TASKS_QUEUE"]
    assert match.group(3) == load(QUEUE)["name"]
    assert match.group(2) == PLACEHOLDERS["REGION"], "queue and jobs must share the region"
    # One gunicorn worker x threads = the requests one instance can serve at once.
    threads = int(env["GUNICORN_THREADS"]) * int(env["WEB_CONCURRENCY"])
    assert spec["containerConcurrency"] == threads
    assert mebibytes(container["resources"]["limits"]["memory"]) >= 256
    probes = {
        container["startupProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
    }
    assert probes == {"/readyz", "/healthz"}


# --- The jobs ---------------------------------------------------------------------------------


def _job(path: Path) -> tuple[dict, dict, dict[str, str]]:
    doc = load(path)
    assert (doc["apiVersion"], doc["kind"]) == ("run.googleapis.com/v1", "Job")
    outer = doc["spec"]["template"]["spec"]
    assert outer["taskCount"] == 1, "one creation per execution"
    spec = job_spec(doc)
    assert 0 <= spec["maxRetries"] <= 10, "Cloud Run accepts 0-10"
    assert spec["serviceAccountName"].startswith("phoenix-jobs@")
    container = spec["containers"][0]
    assert container["image"] == PLACEHOLDERS["IMAGE"]
    assert container["resources"]["limits"]["cpu"] == "1"
    return doc, spec, env_of(container)


def _retries_cover_attempts(spec: dict, env: dict[str, str]) -> None:
    from common.config import Settings

    attempts = Settings.from_env(env).max_attempts
    # Every attempt the record allows can run inside one execution, without waiting for a
    # sweeper re-dispatch.
    assert spec["maxRetries"] >= attempts - 1


def test_video_job_outlasts_its_worst_case_attempt():
    from common.adapters.vertex_generator import EXPECTED_VIDEO_SECONDS, Polling
    from common.config import Settings

    doc, spec, env = _job(VIDEO_JOB)
    assert doc["metadata"]["name"] == "phoenix-video-job"
    assert spec["maxRetries"] == 3
    settings = Settings.from_env(env)
    assert settings.generator == "vertex"
    polling = Polling()
    worst = settings.veo_slot_wait_seconds + polling.timeout + JOB_OVERHEAD_S
    # The process must hand the creation back before Cloud Run kills the task; a killed task
    # leaves the record leased and the retry exits as a duplicate.
    assert int(spec["timeoutSeconds"]) >= worst, (spec["timeoutSeconds"], worst)
    assert polling.timeout > 4 * EXPECTED_VIDEO_SECONDS, "a normal Veo run must not time out"
    # The lease is renewed at every poll (at most polling.maximum apart): survive a few misses.
    assert settings.lease_seconds >= 4 * polling.maximum
    assert settings.veo_max_concurrent >= 1
    assert mebibytes(spec["containers"][0]["resources"]["limits"]["memory"]) == 1024
    _retries_cover_attempts(spec, env)


def test_image_job_outlasts_one_imagen_call():
    from common.adapters.vertex_generator import REQUEST_TIMEOUT_MS
    from common.config import Settings

    doc, spec, env = _job(IMAGE_JOB)
    assert doc["metadata"]["name"] == "phoenix-image-job"
    assert spec["maxRetries"] == 2
    settings = Settings.from_env(env)
    imagen_s = REQUEST_TIMEOUT_MS / 1000
    timeout = int(spec["timeoutSeconds"])
    assert timeout >= imagen_s + 120
    # Nothing renews the lease during the Imagen call; it must outlive the call, and expire
    # before the timeout so a killed task's retry can claim at once.
    assert imagen_s < settings.lease_seconds < timeout
    assert mebibytes(spec["containers"][0]["resources"]["limits"]["memory"]) == 512
    _retries_cover_attempts(spec, env)


# --- The queue --------------------------------------------------------------------------------


def retry_intervals(retry: dict) -> list[float]:
    """Cloud Tasks' backoff between attempts: doubling from minBackoff maxDoublings times, then
    growing linearly by the last doubled step, capped at maxBackoff (queue.proto)."""
    lo, hi = seconds(retry["minBackoff"]), seconds(retry["maxBackoff"])
    doublings = retry["maxDoublings"]
    intervals: list[float] = []
    current = lo
    for i in range(retry["maxAttempts"] - 1):
        intervals.append(min(current, hi))
        current = current * 2 if i < doublings else current + lo * 2**doublings
    return intervals


def test_retry_interval_model_matches_the_documented_example():
    example = {"minBackoff": "10s", "maxBackoff": "300s", "maxDoublings": 3, "maxAttempts": 9}
    assert retry_intervals(example) == [10, 20, 40, 80, 160, 240, 300, 300]


def test_queue_protects_veo_and_the_admin_api():
    from common.adapters.cloud_tasks_dispatch import DISPATCH_DEADLINE_S
    from common.config import Settings

    queue = load(QUEUE)
    rate = queue["rateLimits"]["maxDispatchesPerSecond"]
    assert 0 < rate <= 500, "Cloud Tasks' maximum is 500/s"
    assert 1 <= queue["rateLimits"]["maxConcurrentDispatches"] <= 5000
    # jobs:run returns once the execution exists, so the launch rate is what reaches Veo: it
    # must not exceed what the Veo slots can absorb at the fastest Veo runs.
    _, _, video_env = _job(VIDEO_JOB)
    slots = Settings.from_env(video_env).veo_max_concurrent
    assert rate * 60 <= slots * 60 / VEO_FASTEST_S

    retry = queue["retryConfig"]
    assert retry["maxAttempts"] == -1 or 1 <= retry["maxAttempts"] <= 100
    assert seconds(retry["minBackoff"]) <= seconds(retry["maxBackoff"])
    assert 0 <= retry["maxDoublings"] <= 16
    # maxAttempts decides (both limits must be used up before a task is dropped).
    assert sum(retry_intervals(retry)) <= seconds(retry["maxRetryDuration"])
    # Long enough to ride out an Admin API blip, bounded for a permanent misconfiguration.
    assert (
        timedelta(minutes=10)
        <= timedelta(seconds=sum(retry_intervals(retry)))
        <= timedelta(hours=2)
    )
    # Cloud Tasks accepts dispatch deadlines of 15 s - 30 min for HTTP tasks.
    assert 15 <= DISPATCH_DEADLINE_S <= 1800
    assert 0 <= queue["stackdriverLoggingConfig"]["samplingRatio"] <= 1


# --- Dockerfiles and the deploy matrix --------------------------------------------------------

# (directory, pex_binary name) of each deployable image. The deploy workflow finds them from
# the BUILD files (docker_image tagged cloud-run: tests/integration/test_affected_services.py);
# this list only names the Dockerfiles checked below.
DEPLOYABLE = [
    ("src/python/api", "api"),
    ("src/python/jobs/video", "video-job"),
    ("src/python/jobs/image", "image-job"),
]


def _final_stage(dockerfile: str) -> list[str]:
    lines: list[str] = []
    for raw in dockerfile.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            lines = []
        lines.append(line)
    return lines


@pytest.mark.parametrize("directory, pex", DEPLOYABLE, ids=lambda s: s)
def test_dockerfile(directory: str, pex: str):
    # Every service's Dockerfile is the one shared src/python/Dockerfile (a symlink); which PEX
    # it installs is the PEX build argument of the service's docker_image, and what the built
    # images hold is checked in tests/images/test_image_contents.py.
    text = _file(ROOT / directory / "Dockerfile")
    assert text == _file(ROOT / "src/python/Dockerfile")
    # The base is a build argument whose default stays the official image (GitHub's runners);
    # ./pants passes a local equivalent where no registry is reachable.
    default_base = re.findall(r"^ARG\s+BASE_IMAGE=(\S+)", text, flags=re.M)
    assert default_base == ["python:3.11-slim-bookworm"], default_base
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    copies = re.findall(r"^COPY\s+(?!--from)(\S+)\s+(\S+)", text, flags=re.M)
    assert copies == [("${PEX}", "/app/app.pex")], copies
    assert "venv --compile" in text.replace("\\\n", " ")
    final = _final_stage(text)
    assert "USER 10001" in final, "run as non-root"
    assert 'ENTRYPOINT ["/app/venv/pex"]' in final
    assert "LABEL org.opencontainers.image.revision=$GIT_SHA" in final
    env_lines = " ".join(line for line in final if line.startswith("ENV "))
    assert "PYTHONUNBUFFERED=1" in env_lines and "PHOENIX_LOG_FORMAT=json" in env_lines


# --- The sweeper: a scheduled Cloud Run Job on the API's image ----------------------------------


def test_sweeper_job_runs_the_sweep_module_with_the_apis_settings():
    doc = load(SWEEPER_JOB)
    assert (doc["apiVersion"], doc["kind"]) == ("run.googleapis.com/v1", "Job")
    assert doc["spec"]["template"]["spec"]["taskCount"] == 1
    spec = job_spec(doc)
    assert spec["serviceAccountName"].startswith("phoenix-sweeper@"), "its own account"
    assert spec["maxRetries"] == 0, "the next scheduled pass is the retry"
    assert seconds(spec["timeoutSeconds"]) < 60, "a pass ends before the next one starts"
    container = spec["containers"][0]
    assert container["image"] == PLACEHOLDERS["IMAGE"]
    # `python -m api.sweep` from the image's venv (the API Dockerfile's ENTRYPOINT is its
    # pex in that venv; src/python/api:api depends on api/sweep.py so the module is there).
    assert container["command"] == ["/app/venv/bin/python"]
    assert container["args"] == ["-m", "api.sweep"]
    assert 'ENTRYPOINT ["/app/venv/pex"]' in _file(ROOT / "src/python/api/Dockerfile")
    # Same Settings as the API (store, dispatch, queue, jobs, bucket), minus the web server's.
    api_env = env_of(load(API_SERVICE)["spec"]["template"]["spec"]["containers"][0])
    web_only = {"WEB_CONCURRENCY", "GUNICORN_THREADS"}
    assert env_of(container) == {k: v for k, v in api_env.items() if k not in web_only}


def test_sweeper_schedule_starts_the_sweeper_job_every_minute():
    doc = load(SWEEPER_SCHEDULE)
    assert doc["kind"] == "SchedulerJob"
    assert doc["schedule"] == "* * * * *"
    project, region = PLACEHOLDERS["PROJECT_ID"], PLACEHOLDERS["REGION"]
    job = load(SWEEPER_JOB)["metadata"]["name"]
    assert (
        doc["uri"]
        == f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{job}:run"
    )
    assert doc["httpMethod"] == "POST"
    assert doc["oauthServiceAccount"] == f"phoenix-scheduler@{project}.iam.gserviceaccount.com"
    assert doc["maxRetryAttempts"] == 0
