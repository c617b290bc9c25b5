"""The local stand-ins for Google Cloud, proven with the real client libraries.

Why these tests matter: every other integration/e2e test trusts these stand-ins to behave like
the real services on the wire. So the fake Vertex server is driven by the real google-genai
client, the Cloud Run ``jobs:run`` stand-in by raw HTTP in the exact production body shape,
and each emulator process by the very client library production uses. Nothing is skipped: a
missing tool fails with a message that names ``tools/provision``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.procs import alive
from tools import servers
from tools.standins.fake_vertex import FakeVertexServer
from tools.standins.run_api import JobSpec, RunApiStandin

PROJECT, LOCATION = "phoenix-local", "us-central1"
IMAGEN, VEO = "imagen-4.0-generate-001", "veo-3.0-generate-001"
BUCKET = "phoenix-media"
REPO_ROOT = servers.repo_root()


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never route through a proxy from the environment
    return session


def _child_env(**extra: str) -> dict[str, str]:
    """Environment for a Python child that must import this checkout (also under Pants)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


@contextmanager
def _cli(argv: list[str], timeout: float = 20.0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run a stand-in CLI, wait for its ``READY <url>`` line, always stop its process group."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_child_env(),
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not lines or not lines[0].startswith("READY "):
            raise AssertionError(f"{argv} did not print READY within {timeout}s: {lines!r}")
        yield proc, lines[0].split()[1]
    finally:
        servers.stop_process_group(proc)  # type: ignore[arg-type]
        if proc.stdout:
            proc.stdout.close()


# --- fake Vertex AI, driven by google-genai ------------------------------------------------------


@pytest.fixture(scope="module")
def gcs() -> Iterator[servers.ServerHandle]:
    with servers.gcs_emulator(default_bucket=BUCKET) as handle:
        yield handle


@pytest.fixture(scope="module")
def fake_vertex(gcs: servers.ServerHandle) -> Iterator[FakeVertexServer]:
    with FakeVertexServer(polls_before_done=2, gcs_endpoint=gcs.url) as fake:
        yield fake


@pytest.fixture
def vertex(fake_vertex: FakeVertexServer) -> FakeVertexServer:
    fake_vertex.reset()
    return fake_vertex


@pytest.fixture
def genai_client(vertex: FakeVertexServer) -> Any:
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=google.oauth2.credentials.Credentials(token="test-token"),
        http_options=types.HttpOptions(base_url=vertex.url, api_version="v1"),
    )


@pytest.fixture
def storage_client(gcs: servers.ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    return storage.Client(project=PROJECT)


def _wait_video(client: Any, op: Any, max_polls: int = 20) -> tuple[Any, int]:
    polls = 0
    while not op.done:
        assert polls < max_polls, "operation never finished"
        op = client.operations.get(op)
        polls += 1
    return op, polls


def test_imagen_returns_the_requested_number_of_real_pngs(
    genai_client: Any, vertex: FakeVertexServer
) -> None:
    from google.genai import types
    from PIL import Image

    resp = genai_client.models.generate_images(
        model=IMAGEN,
        prompt="a lighthouse at dawn",
        config=types.GenerateImagesConfig(number_of_images=3, aspect_ratio="16:9"),
    )

    images = [g.image for g in resp.generated_images]
    assert len(images) == 3
    assert len({i.image_bytes for i in images}) == 3, "samples should differ"
    for image in images:
        assert image.mime_type == "image/png"
        decoded = Image.open(io.BytesIO(image.image_bytes))
        assert decoded.format == "PNG" and decoded.size[0] > decoded.size[1]  # 16:9
    (call,) = vertex.calls()
    assert call["action"] == "predict" and call["model"] == IMAGEN and call["status"] == 200
    assert (
        call["path"]
        == f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{IMAGEN}:predict"
    )
    assert call["body"]["instances"] == [{"prompt": "a lighthouse at dawn"}]
    assert call["body"]["parameters"]["sampleCount"] == 3


def test_veo_writes_a_real_mp4_to_the_gcs_emulator(
    genai_client: Any, vertex: FakeVertexServer, storage_client: Any
) -> None:
    from google.genai import types

    op = genai_client.models.generate_videos(
        model=VEO,
        source=types.GenerateVideosSource(prompt="a fox in snow"),
        config=types.GenerateVideosConfig(
            output_gcs_uri=f"gs://{BUCKET}/videos/c-1", duration_seconds=4
        ),
    )
    assert op.name.startswith(
        f"projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{VEO}/operations/"
    )
    op, polls = _wait_video(genai_client, op)

    assert polls == 3  # polls_before_done=2 "not done" answers, then done
    assert op.error is None and op.result.rai_media_filtered_count == 0
    (video,) = [g.video for g in op.result.generated_videos]
    assert video.mime_type == "video/mp4"
    assert video.uri.startswith(f"gs://{BUCKET}/videos/c-1/") and video.uri.endswith(
        "/sample_0.mp4"
    )
    blob_name = video.uri.removeprefix(f"gs://{BUCKET}/")
    data = storage_client.bucket(BUCKET).blob(blob_name).download_as_bytes()
    assert data[4:8] == b"ftyp" and b"avc1" in data, "expected an H.264 MP4"
    actions = [c["action"] for c in vertex.calls()]
    assert actions == ["predictLongRunning"] + ["fetchPredictOperation"] * 3
    assert (
        vertex.calls("predictLongRunning")[0]["body"]["parameters"]["storageUri"]
        == f"gs://{BUCKET}/videos/c-1"
    )


def test_veo_without_storage_uri_returns_inline_bytes(genai_client: Any) -> None:
    from google.genai import types

    op = genai_client.models.generate_videos(
        model=VEO, source=types.GenerateVideosSource(prompt="waves [polls:0]")
    )
    op, polls = _wait_video(genai_client, op)
    assert polls == 1
    (generated,) = op.result.generated_videos
    assert generated.video.video_bytes[4:8] == b"ftyp" and generated.video.uri is None


def test_filtered_prompts_return_no_media(genai_client: Any) -> None:
    from google.genai import types

    with_reason = genai_client.models.generate_images(
        model=IMAGEN,
        prompt="something [filtered]",
        config=types.GenerateImagesConfig(number_of_images=2, include_rai_reason=True),
    )
    (entry,) = with_reason.generated_images
    assert entry.rai_filtered_reason and entry.image.image_bytes is None
    silent = genai_client.models.generate_images(model=IMAGEN, prompt="something [filtered]")
    assert not silent.generated_images

    op = genai_client.models.generate_videos(
        model=VEO, source=types.GenerateVideosSource(prompt="x [filtered]")
    )
    op, _ = _wait_video(genai_client, op)
    assert op.result.rai_media_filtered_count == 1
    assert op.result.rai_media_filtered_reasons and not op.result.generated_videos


def test_quota_marker_gives_429_then_success(genai_client: Any, vertex: FakeVertexServer) -> None:
    from google.genai import errors, types

    prompt = "busy hour [quota:2]"
    for _ in range(2):
        with pytest.raises(errors.ClientError) as excinfo:
            genai_client.models.generate_images(
                model=IMAGEN, prompt=prompt, config={"number_of_images": 1}
            )
        assert isinstance(excinfo.value, errors.APIError)
        assert excinfo.value.code == 429 and excinfo.value.status == "RESOURCE_EXHAUSTED"
    ok = genai_client.models.generate_images(
        model=IMAGEN, prompt=prompt, config={"number_of_images": 1}
    )
    assert len(ok.generated_images) == 1
    assert [c["status"] for c in vertex.calls()] == [429, 429, 200]

    with pytest.raises(errors.ClientError) as excinfo:
        genai_client.models.generate_videos(
            model=VEO, source=types.GenerateVideosSource(prompt="v [quota:1]")
        )
    assert excinfo.value.code == 429
    op, _ = _wait_video(
        genai_client,
        genai_client.models.generate_videos(
            model=VEO, source=types.GenerateVideosSource(prompt="v [quota:1]")
        ),
    )
    assert op.result.generated_videos


def test_invalid_marker_gives_400(genai_client: Any) -> None:
    from google.genai import errors, types

    with pytest.raises(errors.ClientError) as excinfo:
        genai_client.models.generate_images(model=IMAGEN, prompt="bad [invalid]")
    assert excinfo.value.code == 400 and excinfo.value.status == "INVALID_ARGUMENT"
    with pytest.raises(errors.ClientError) as excinfo:
        genai_client.models.generate_videos(
            model=VEO, source=types.GenerateVideosSource(prompt="bad [invalid]")
        )
    assert excinfo.value.code == 400


def test_operation_error_marker(genai_client: Any) -> None:
    from google.genai import types

    op = genai_client.models.generate_videos(
        model=VEO, source=types.GenerateVideosSource(prompt="x [operror]")
    )
    op, _ = _wait_video(genai_client, op)
    assert op.error == {"code": 13, "message": "Internal error encountered."}


def test_fake_vertex_admin_endpoints_and_auth(vertex: FakeVertexServer) -> None:
    http = _http()
    url = f"{vertex.url}/v1/projects/p/locations/l/publishers/google/models/{IMAGEN}:predict"
    body: dict[str, Any] = {"instances": [{"prompt": "a"}], "parameters": {"sampleCount": 1}}
    unauth = http.post(url, json=body)
    assert unauth.status_code == 401 and unauth.json()["error"]["status"] == "UNAUTHENTICATED"
    assert http.post(url, json=body, headers={"Authorization": "Bearer t"}).status_code == 200
    calls = http.get(f"{vertex.url}/_fake/calls").json()
    assert [(c["method"], c["action"], c["status"]) for c in calls] == [
        ("POST", "predict", 401),
        ("POST", "predict", 200),
    ]
    assert calls[1]["body"] == body
    assert http.post(f"{vertex.url}/_fake/reset").status_code == 200
    assert http.get(f"{vertex.url}/_fake/calls").json() == []


def test_fake_vertex_cli_starts_and_stops() -> None:
    argv = [sys.executable, "-m", "tools.standins.fake_vertex", "--port", str(servers.free_port())]
    with _cli(argv) as (proc, url):
        assert _http().get(f"{url}/_fake/health").json() == {"ok": True}
    assert proc.returncode is not None


# --- Cloud Run Admin API jobs:run stand-in -------------------------------------------------------

# A job that records what it was started with and fails while attempt < FAIL_UNTIL.
JOB_SCRIPT = r"""
import json, os, sys, time
attempt = int(os.environ["CLOUD_RUN_TASK_ATTEMPT"])
out = os.environ["OUT_DIR"]
with open(os.path.join(out, f"attempt-{attempt}.json"), "w") as fh:
    json.dump({"env": dict(os.environ), "argv": sys.argv[1:]}, fh)
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
time.sleep(float(os.environ.get("SLEEP", "0")))
sys.exit(1 if attempt < int(os.environ.get("FAIL_UNTIL", "0")) else 0)
"""
JOB = "phoenix-video-job"


def _run_body(env: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """The body production's dispatcher sends (see the design card)."""
    return {
        "overrides": {
            "containerOverrides": [{"env": [{"name": k, "value": v} for k, v in env.items()]}],
            "taskCount": 1,
            **overrides,
        }
    }


@pytest.fixture
def run_api(tmp_path: Path) -> Iterator[RunApiStandin]:
    spec = JobSpec(command=[sys.executable, "-c", JOB_SCRIPT], args=["--from-job-config"])
    with RunApiStandin(
        {JOB: spec},
        env={"OUT_DIR": str(tmp_path), "SHARED": "from-job", "BASE_ONLY": "b"},
        max_retries=3,
        log_dir=tmp_path / "logs",
    ) as standin:
        yield standin


def test_run_starts_the_job_with_merged_env_and_returns_at_once(
    run_api: RunApiStandin, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    resp = _http().post(
        run_api.run_url(JOB, PROJECT, LOCATION),
        json=_run_body(
            {
                "CREATION_ID": "c-42",
                "TRACEPARENT": traceparent,
                "SHARED": "from-request",
                "GATE": str(gate),
            }
        ),
        headers={"Authorization": "Bearer tok"},
    )

    assert resp.status_code == 200, resp.text
    op = resp.json()
    assert op["name"].startswith(f"projects/{PROJECT}/locations/{LOCATION}/operations/")
    assert op["metadata"]["@type"] == "type.googleapis.com/google.cloud.run.v2.Execution"
    exec_name = op["metadata"]["name"]
    assert exec_name.startswith(
        f"projects/{PROJECT}/locations/{LOCATION}/jobs/{JOB}/executions/{JOB}-"
    )
    # It answered while the job is still blocked on the gate: like Cloud Run, it does not wait.
    assert [e["status"] for e in run_api.executions()] == ["running"]
    gate.touch()
    (execution,) = run_api.wait_for_executions(1, timeout=30)

    assert execution["status"] == "succeeded"
    record = json.loads((tmp_path / "attempt-0.json").read_text())
    env = record["env"]
    assert env["CREATION_ID"] == "c-42" and env["TRACEPARENT"] == traceparent
    assert env["SHARED"] == "from-request" and env["BASE_ONLY"] == "b"  # merged, request wins
    assert env["CLOUD_RUN_EXECUTION"] == exec_name.rsplit("/", 1)[1]
    assert (
        env["CLOUD_RUN_JOB"],
        env["CLOUD_RUN_TASK_INDEX"],
        env["CLOUD_RUN_TASK_COUNT"],
        env["CLOUD_RUN_TASK_ATTEMPT"],
    ) == (JOB, "0", "1", "0")
    assert record["argv"] == ["--from-job-config"]


def test_nonzero_exit_is_retried_up_to_max_retries(run_api: RunApiStandin, tmp_path: Path) -> None:
    http = _http()
    assert http.post(run_api.run_url(JOB), json=_run_body({"FAIL_UNTIL": "2"})).status_code == 200
    (execution,) = run_api.wait_for_executions(1, timeout=30)
    attempts = execution["tasks"][0]["attempts"]
    assert [a["exit_code"] for a in attempts] == [1, 1, 0] and execution["status"] == "succeeded"
    assert [
        json.loads((tmp_path / f"attempt-{i}.json").read_text())["env"]["CLOUD_RUN_TASK_ATTEMPT"]
        for i in range(3)
    ] == ["0", "1", "2"]

    run_api.reset()
    assert http.post(run_api.run_url(JOB), json=_run_body({"FAIL_UNTIL": "99"})).status_code == 200
    (execution,) = run_api.wait_for_executions(1, timeout=30)
    assert [a["exit_code"] for a in execution["tasks"][0]["attempts"]] == [
        1,
        1,
        1,
        1,
    ]  # 1 + maxRetries 3
    assert execution["status"] == "failed"
    over_http = http.get(f"{run_api.url}/_standin/executions").json()
    assert over_http[0]["tasks"][0]["attempts"][-1]["exit_code"] == 1


def test_args_override_clear_args_and_task_timeout(run_api: RunApiStandin, tmp_path: Path) -> None:
    http = _http()
    body = _run_body({})
    body["overrides"]["containerOverrides"][0]["args"] = ["--creation-id", "c-7"]
    assert http.post(run_api.run_url(JOB), json=body).status_code == 200
    run_api.wait_for_executions(1)
    assert json.loads((tmp_path / "attempt-0.json").read_text())["argv"] == ["--creation-id", "c-7"]

    run_api.reset()
    body = _run_body({"SLEEP": "30"}, timeout="0.5s")
    body["overrides"]["containerOverrides"][0]["clearArgs"] = True
    run_api.max_retries = 0
    started = time.monotonic()
    assert http.post(run_api.run_url(JOB), json=body).status_code == 200
    (execution,) = run_api.wait_for_executions(1, timeout=20)
    assert time.monotonic() - started < 10
    (attempt,) = execution["tasks"][0]["attempts"]
    assert attempt["timed_out"] and execution["status"] == "failed"
    assert json.loads((tmp_path / "attempt-0.json").read_text())["argv"] == []


BAD_BODIES = {
    "unknown top-level key": {"override": {}},
    "env value not a string": {
        "overrides": {"containerOverrides": [{"env": [{"name": "A", "value": 1}]}]}
    },
    "env item unknown key": {
        "overrides": {"containerOverrides": [{"env": [{"name": "A", "val": "x"}]}]}
    },
    "env not a list": {"overrides": {"containerOverrides": [{"env": {"A": "x"}}]}},
    "env name missing": {"overrides": {"containerOverrides": [{"env": [{"value": "x"}]}]}},
    "reserved env name": {
        "overrides": {
            "containerOverrides": [{"env": [{"name": "CLOUD_RUN_TASK_ATTEMPT", "value": "9"}]}]
        }
    },
    "containerOverrides not a list": {"overrides": {"containerOverrides": {"env": []}}},
    "container override unknown key": {"overrides": {"containerOverrides": [{"envs": []}]}},
    "unknown overrides key": {"overrides": {"taskCounts": 1}},
    "taskCount not an int": {"overrides": {"taskCount": "one"}},
    "taskCount zero": {"overrides": {"taskCount": 0}},
    "timeout not a duration": {"overrides": {"timeout": "10m"}},
    "args not strings": {"overrides": {"containerOverrides": [{"args": [1]}]}},
    "body is a list": [],
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_bad_bodies_are_rejected_with_400(run_api: RunApiStandin, body: Any) -> None:
    resp = _http().post(run_api.run_url(JOB), json=body)
    assert resp.status_code == 400, resp.text
    assert (
        resp.json()["error"]["status"] == "INVALID_ARGUMENT" and resp.json()["error"]["code"] == 400
    )
    assert run_api.executions() == []


def test_non_json_body_unknown_job_and_wrong_path(run_api: RunApiStandin) -> None:
    http = _http()
    assert http.post(run_api.run_url(JOB), data=b"not json").status_code == 400
    missing = http.post(run_api.run_url("no-such-job"), json={})
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert http.post(f"{run_api.url}/v1/projects/p/jobs/x:run", json={}).status_code == 404
    # An empty body is a valid RunJobRequest (run with no overrides).
    assert http.post(run_api.run_url(JOB), data=b"").status_code == 200
    run_api.wait_for_executions(1)


def test_require_auth_rejects_missing_token_with_401(tmp_path: Path) -> None:
    with RunApiStandin({JOB: [sys.executable, "-c", "pass"]}, require_auth=True) as standin:
        http = _http()
        resp = http.post(standin.run_url(JOB), json=_run_body({"CREATION_ID": "c"}))
        assert resp.status_code == 401 and resp.json()["error"]["status"] == "UNAUTHENTICATED"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (
            http.post(
                standin.run_url(JOB), json={}, headers={"Authorization": "Basic abc"}
            ).status_code
            == 401
        )
        assert standin.executions() == []
        ok = http.post(
            standin.run_url(JOB),
            json=_run_body({"CREATION_ID": "c"}),
            headers={"Authorization": "Bearer secret-token"},
        )
        assert ok.status_code == 200
        standin.wait_for_executions(1)
        calls = http.get(f"{standin.url}/_standin/calls").json()
        assert [c["status"] for c in calls] == [401, 401, 200]
        assert calls[2]["headers"]["Authorization"] == "<redacted>"
        assert "secret-token" not in json.dumps(calls)
        assert calls[2]["body"]["overrides"]["containerOverrides"][0]["env"] == [
            {"name": "CREATION_ID", "value": "c"}
        ]


def test_stop_terminates_running_jobs_and_their_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(120)\n"
    )
    standin = RunApiStandin({JOB: [sys.executable, "-c", script]}, stop_grace=3).start()
    try:
        assert _http().post(standin.run_url(JOB), json={}).status_code == 200
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and len(pid_file.read_text().split()) == 2):
            assert time.monotonic() < deadline, "job did not start"
            time.sleep(0.05)
    finally:
        standin.stop()
    for pid in map(int, pid_file.read_text().split()):
        assert not alive(pid), f"pid {pid} survived stop()"
    (execution,) = standin.executions()
    assert execution["status"] == "cancelled"


def test_executions_cancel_stops_the_running_task_and_starts_no_retry(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    standin = RunApiStandin({JOB: [sys.executable, "-c", script]}, max_retries=3, stop_grace=3)
    with standin:
        http = _http()
        op = http.post(standin.run_url(JOB, PROJECT, LOCATION), json={}).json()
        name = op["metadata"]["name"]
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "job did not start"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        started = time.monotonic()
        resp = http.post(f"{standin.url}/v2/{name}:cancel", json={})
        assert resp.status_code == 200, resp.text
        assert resp.json()["metadata"]["name"] == name
        (execution,) = standin.wait_for_executions(1, timeout=20)
        assert time.monotonic() - started < 5
        assert execution["status"] == "cancelled"
        assert len(execution["tasks"][0]["attempts"]) == 1  # SIGTERM's exit is not retried
        assert not alive(pid)
        # Cancelling a finished execution, or an unknown one, is refused like the Admin API.
        again = http.post(f"{standin.url}/v2/{name}:cancel", json={})
        assert again.status_code == 400 and again.json()["error"]["status"] == "FAILED_PRECONDITION"
        unknown = http.post(f"{standin.url}/v2/{name}x:cancel", json={})
        assert unknown.status_code == 404


def test_run_api_cli(tmp_path: Path) -> None:
    out = tmp_path / "ran"
    argv = [
        sys.executable,
        "-m",
        "tools.standins.run_api",
        "--port",
        "0",
        "--max-retries",
        "0",
        "--job",
        f"{JOB}={sys.executable} -c \"import os; open({str(out)!r}, 'w').write(os.environ['CREATION_ID'])\"",
    ]
    with _cli(argv) as (_, url):
        http = _http()
        assert (
            http.post(
                f"{url}/v2/projects/p/locations/l/jobs/{JOB}:run",
                json=_run_body({"CREATION_ID": "c-9"}),
            ).status_code
            == 200
        )
        deadline = time.monotonic() + 20
        while (
            not (execs := http.get(f"{url}/_standin/executions").json())
            or execs[0]["status"] == "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert execs[0]["status"] == "succeeded"
    assert out.read_text() == "c-9"


# --- emulator processes ----------------------------------------------------------------------------


def test_redis_server_answers_ping() -> None:
    import redis

    with servers.redis_server() as handle:
        assert handle.url == f"redis://127.0.0.1:{handle.port}/0"
        client = redis.Redis.from_url(handle.url)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
    assert handle.process.returncode is not None


class _Receiver:
    """A local HTTP endpoint recording what the Cloud Tasks emulator delivers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.event = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k.lower(): v for k, v in self.headers.items()
                }  # urllib re-cases header names
                receiver.requests.append({"path": self.path, "headers": headers, "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.event.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextmanager
def _tasks_client(handle: servers.ServerHandle) -> Iterator[Any]:
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(handle.url)
    try:
        yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    finally:
        channel.close()


def test_tasks_emulator_delivers_http_tasks() -> None:
    from google.cloud import tasks_v2

    with servers.tasks_emulator(max_retries=0) as handle, _Receiver() as receiver, _tasks_client(
        handle
    ) as client:
        parent = f"projects/{PROJECT}/locations/{LOCATION}"
        queue = client.create_queue(parent=parent, queue={"name": f"{parent}/queues/video"})
        client.create_task(
            parent=queue.name,
            task={
                "http_request": {
                    "http_method": tasks_v2.HttpMethod.POST,
                    "url": f"{receiver.url}/hook",
                    "headers": {"Content-Type": "application/json", "traceparent": "00-abc-def-01"},
                    "body": b'{"creation_id": "c-1"}',
                }
            },
        )
        assert receiver.event.wait(15), f"task not delivered; emulator log:\n{handle.log_tail()}"
    (req,) = receiver.requests
    assert req["path"] == "/hook" and req["body"] == b'{"creation_id": "c-1"}'
    assert req["headers"]["traceparent"] == "00-abc-def-01"
    assert req["headers"]["x-cloudtasks-queuename"].endswith("/queues/video")


def test_tasks_emulator_to_run_api_standin_chain(tmp_path: Path) -> None:
    """The local production path: Cloud Tasks emulator -> jobs:run stand-in -> job process."""
    from google.cloud import tasks_v2

    spec = JobSpec(command=[sys.executable, "-c", JOB_SCRIPT], env={"OUT_DIR": str(tmp_path)})
    with RunApiStandin({JOB: spec}) as standin, servers.tasks_emulator(
        max_retries=0
    ) as handle, _tasks_client(handle) as client:
        parent = f"projects/{PROJECT}/locations/{LOCATION}"
        queue = client.create_queue(parent=parent, queue={"name": f"{parent}/queues/jobs"})
        client.create_task(
            parent=queue.name,
            task={
                "http_request": {
                    "http_method": tasks_v2.HttpMethod.POST,
                    "url": standin.run_url(JOB, PROJECT, LOCATION),
                    "headers": {"Content-Type": "application/json"},
                    "body": json.dumps(
                        _run_body({"CREATION_ID": "c-chain", "TRACEPARENT": "00-1-2-01"})
                    ).encode(),
                }
            },
        )
        (execution,) = standin.wait_for_executions(1, timeout=30)
    assert execution["status"] == "succeeded"
    env = json.loads((tmp_path / "attempt-0.json").read_text())["env"]
    assert env["CREATION_ID"] == "c-chain" and env["TRACEPARENT"] == "00-1-2-01"


def test_firestore_emulator_set_and_get(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import firestore

    with servers.firestore_emulator() as handle:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", handle.url)
        client = firestore.Client(project="demo-phoenix")
        try:
            ref = client.collection("creations").document("c-1")
            ref.set({"status": "pending", "kind": "video"})
            assert ref.get().to_dict() == {"status": "pending", "kind": "video"}
        finally:
            client.close()


def test_gcs_emulator_upload_and_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import storage  # type: ignore[attr-defined]

    with servers.gcs_emulator(default_bucket="b-test") as handle:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", handle.url)
        client = storage.Client(project=PROJECT)
        blob = client.bucket("b-test").blob("media/c-1.png")
        blob.upload_from_string(b"\x89PNG fake", content_type="image/png")
        assert client.bucket("b-test").blob("media/c-1.png").download_as_bytes() == b"\x89PNG fake"


# --- helper behaviour ------------------------------------------------------------------------------


def test_missing_tools_name_tools_provision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHOENIX_TOOLS_DIR", str(tmp_path / "empty"))
    for factory in (servers.tasks_emulator, servers.firestore_emulator, servers.gcs_emulator):
        with pytest.raises(servers.ToolMissingError, match="tools/provision"):
            with factory():
                pass


def test_startup_failure_reports_the_log_tail() -> None:
    argv = [sys.executable, "-c", "print('boom: port in use', flush=True); raise SystemExit(3)"]
    port = servers.free_port()
    with pytest.raises(servers.StartupError, match="boom: port in use"):
        with servers.managed_process(
            "doomed", argv, lambda p: servers.wait_for_port("127.0.0.1", port, 10, p)
        ):
            pass


def _provision_state(tools: Path) -> dict[str, tuple[int, int]]:
    """What an install writes last (``*/.complete`` markers, the Firestore start script):
    path -> (mtime_ns, size). A run that reinstalled anything rewrites at least one of them."""
    files = [*tools.glob("*/.complete"), *tools.glob("firestore-emulator/start.js")]
    return {str(p.relative_to(tools)): (p.stat().st_mtime_ns, p.stat().st_size) for p in files}


def test_provision_is_idempotent_on_a_provisioned_machine() -> None:
    """``./pants test`` runs ``tools/provision`` before the suite, so here everything is present.
    Running it again must change nothing: exit 0, every component ``ok`` (none ``installed``),
    no install marker rewritten. Nothing is timed here (a shared 2-core machine makes wall-clock
    asserts flaky): ``benchmarks/run provision`` measures warm and cold runs."""
    script = REPO_ROOT / "tools" / "provision"
    tools = servers.tools_dir()
    before = _provision_state(tools)
    assert before, f"nothing provisioned under {tools}: run tools/provision first"
    again = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = again.stdout.splitlines()
    assert lines and all(line.startswith("ok ") for line in lines), lines
    assert _provision_state(tools) == before


def test_context_managers_leave_no_process_behind() -> None:
    handles = []
    with servers.redis_server() as r, servers.gcs_emulator() as g, servers.firestore_emulator() as f, servers.tasks_emulator() as t:
        handles = [r, g, f, t]
        for h in handles:
            servers.wait_for_port(h.host, h.port, 5)
    for h in handles:
        assert h.process.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(h.process.pid, 0)
