"""The production chain on one machine: every Google service replaced by a local stand-in.

    python -m tools.emulator_profile [--port 8080] [--containers]

starts, each on a free loopback port:

* the Cloud Tasks emulator (gRPC) with the queue created,
* the Firestore emulator (gRPC, plus its REST API stand-in for the jobs' REST client), the
  Cloud Storage emulator (with the media bucket),
* the fake Vertex AI server (Imagen/Veo; Veo writes its output into the storage emulator),
* the Cloud Run Admin API ``jobs:run`` stand-in, which starts ``python -m jobs.video.main`` /
  ``jobs.image.main`` with the override env exactly like a Cloud Run Job execution,
* the API (``python -m api.main``) configured with the *production* adapters
  (PHOENIX_STORE=firestore, PHOENIX_DISPATCH=cloud-tasks, PHOENIX_GENERATOR=vertex,
  PHOENIX_MEDIA=gcs),

prints every URL and the environment, and stops everything on Ctrl-C. The integration test
(tests/integration/test_production_chain.py) uses the same ``production_chain()``, so what a
developer runs and what CI checks are one wiring.

``--containers`` (or PHOENIX_PROFILE_CONTAINERS=1) runs the API and the jobs as their
container IMAGES instead, the way Cloud Run runs them: the API image as a container, and the
stand-in starting one job container per ``jobs:run`` (``docker run --network host``: all
traffic stays on loopback) with the job descriptor's env, task timeout and maxRetries
(``deploy/job.yaml``) plus the emulator endpoints. Build the images first
(``tools/images.py`` names them); tests/integration/test_container_chain.py runs this mode.

What it does not reproduce: OAuth tokens (the Tasks emulator sends none; the ``:run`` stand-in
does not require them), Cloud Tasks dedup/retry policy, Firestore transaction isolation, signed
URL verification, and the real models. See docs/notes/emulators.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from tools.servers import (
    ServerHandle,
    firestore_emulator,
    free_port,
    gcs_emulator,
    repo_root,
    stop_process_group,
    tasks_emulator,
    wait_for_http,
)
from tools.standins.fake_vertex import FakeVertexServer
from tools.standins.run_api import CONTAINER_LABEL, JobSpec, RunApiStandin

PROJECT = "phoenix-local"
LOCATION = "us-central1"
QUEUE = "phoenix-jobs"
BUCKET = "phoenix-media"
VIDEO_JOB = "phoenix-video-job"
IMAGE_JOB = "phoenix-image-job"
TASKS_SERVICE_ACCOUNT = f"phoenix-tasks@{PROJECT}.iam.gserviceaccount.com"


def write_signing_key(path: str | os.PathLike[str], email: str | None = None) -> str:
    """A throw-away service-account JSON key (RSA 2048) so the GCS adapter can produce V4 signed
    URLs locally (the storage emulator serves them without checking the signature)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    Path(path).write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": uuid.uuid4().hex,
                "private_key": pem,
                "client_email": email or f"media-signer@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    os.chmod(path, 0o600)
    return str(path)


def python_path() -> str:
    """The import path the API and job processes need: ours, as assembled at start-up (under
    ``pants run`` or a PEX it does not come from PYTHONPATH), plus the source roots."""
    root = repo_root()
    # The interpreter finds its own stdlib/site-packages; listing them would only shadow the
    # children's defaults. Relative entries are made absolute (children may change cwd).
    own = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = []
    for entry in [*sys.path, *extra]:
        if not entry:
            continue
        resolved = str(Path(entry).resolve())
        if not resolved.startswith(own):
            paths.append(resolved)
    # Last, as a fallback only: under `pants test` the sandbox's copies come first.
    paths += [str(root / "src" / "python"), str(root)]
    return os.pathsep.join(dict.fromkeys(paths))


@dataclass
class ProductionChain:
    """Handles on every running piece, and the environment the API and the jobs were given."""

    api_url: str
    api_process: subprocess.Popen[bytes]
    tasks: ServerHandle
    firestore: ServerHandle
    gcs: ServerHandle
    vertex: FakeVertexServer
    run_api: RunApiStandin
    env: dict[str, str]
    queue: str
    bucket: str
    work_dir: Path
    startup_seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    containers: bool = False
    # container mode: the API container's name, and the image ref each role ran
    api_container: str | None = None
    image_refs: dict[str, str] = field(default_factory=dict)

    def urls(self) -> dict[str, str]:
        return {
            "api": self.api_url,
            "cloud-tasks emulator (gRPC)": self.tasks.url,
            "firestore emulator (gRPC)": self.firestore.url,
            "firestore REST stand-in": self.firestore.rest_url or "",
            "storage emulator": self.gcs.url,
            "fake vertex": self.vertex.url,
            "jobs:run stand-in": self.run_api.url,
            "jobs:run calls": f"{self.run_api.url}/_standin/calls",
            "job executions": f"{self.run_api.url}/_standin/executions",
            "vertex calls": f"{self.vertex.url}/_fake/calls",
        }

    def chain_env(self) -> dict[str, str]:
        """Only the variables the chain sets (what to export to run a job by hand)."""
        return {k: v for k, v in self.env.items() if k.startswith(_OWN_PREFIXES)}

    def api_container_env(self) -> dict[str, str]:
        """Container mode: the environment the engine gave the API container."""
        if self.api_container is None:
            raise RuntimeError("the API is not running as a container")
        return _inspect_env(self.api_container)


_OWN_PREFIXES = ("PHOENIX_", "FIRESTORE_", "STORAGE_", "PYTHONPATH", "PORT")


# Container mode -------------------------------------------------------------------------------

# What a job container needs beyond its descriptor's env: where the local stand-ins are.
_JOB_CHAIN_VARS = (
    "FIRESTORE_EMULATOR_HOST",
    "PHOENIX_FIRESTORE_REST_URL",
    "STORAGE_EMULATOR_HOST",
    "PHOENIX_VERTEX_BASE_URL",
    "PHOENIX_VERTEX_ACCESS_TOKEN",
    "PHOENIX_VEO_POLL_INITIAL_SECONDS",
    "PHOENIX_VEO_POLL_MAX_SECONDS",
)
SIGNING_KEY_IN_CONTAINER = "/var/run/phoenix/signing-key.json"


def containers_requested() -> bool:
    return os.environ.get("PHOENIX_PROFILE_CONTAINERS", "").lower() in ("1", "true", "yes")


def job_descriptor(kind: str) -> Path:
    return repo_root() / "src" / "python" / "jobs" / kind / "deploy" / "job.yaml"


def container_job_specs(env: Mapping[str, str], extra_env: Mapping[str, str]) -> dict[str, JobSpec]:
    """Each job as Cloud Run runs it: its image, its descriptor's env, timeout and maxRetries
    (placeholders filled with the local project), plus the emulator endpoints."""
    from tools.images import find_image

    chain_vars = {k: env[k] for k in _JOB_CHAIN_VARS if k in env}
    chain_vars.update(extra_env)
    specs = {}
    for job, kind in ((VIDEO_JOB, "video"), (IMAGE_JOB, "image")):
        image = find_image(f"{kind}-job").ref
        specs[job] = JobSpec.from_descriptor(
            job_descriptor(kind),
            substitutions={
                "PROJECT_ID": PROJECT,
                "REGION": LOCATION,
                "MEDIA_BUCKET": BUCKET,
                "IMAGE": image,
            },
            image=image,
            env=chain_vars,
        )
    return specs


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    from tools.images import docker_cli

    return subprocess.run(
        [docker_cli(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _inspect_env(container: str) -> dict[str, str]:
    proc = _docker("inspect", "--format", "{{json .Config.Env}}", container)
    if proc.returncode != 0:
        raise RuntimeError(f"docker inspect {container}: {proc.stderr.strip()}")
    return dict(item.split("=", 1) for item in json.loads(proc.stdout) or [])


def _stop_container(name: str, proc: subprocess.Popen[bytes], grace: int = 10) -> None:
    """``docker stop`` (SIGTERM, SIGKILL after ``grace``, like Cloud Run), then remove it."""
    _docker("stop", "--time", str(grace), name, timeout=grace + 30)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
    _docker("rm", "--force", name)


def _start_api_container(
    stack: contextlib.ExitStack,
    image: str,
    env: Mapping[str, str],
    key_file: Path,
    out: Any,
    label: str,
) -> tuple[subprocess.Popen[bytes], str]:
    """The API image as Cloud Run runs it (its own entrypoint), on the host network, bound to
    loopback; only the chain's variables, the signing key mounted read-only."""
    from tools.images import docker_cli

    name = f"phoenix-chain-api-{label}"
    # The throw-away key must be readable by the image's non-root user through the mount.
    os.chmod(key_file, 0o644)
    container_env = {
        k: v for k, v in env.items() if k.startswith(_OWN_PREFIXES) and k != "PYTHONPATH"
    }
    container_env["PHOENIX_DATA_DIR"] = "/tmp/phoenix-data"
    container_env["PHOENIX_MEDIA_SIGNING_KEY_FILE"] = SIGNING_KEY_IN_CONTAINER
    argv = [
        docker_cli(),
        "run",
        "--name",
        name,
        "--network",
        "host",
        "--label",
        f"{CONTAINER_LABEL}={label}",
        "--volume",
        f"{key_file}:{SIGNING_KEY_IN_CONTAINER}:ro",
        *(f"--env={k}={v}" for k, v in sorted(container_env.items())),
        image,
        "--host",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(  # noqa: S603 - argv is built here
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
        start_new_session=True,
    )
    stack.callback(_stop_container, name, proc)
    return proc, name


def _create_queue(endpoint: str, queue: str) -> None:
    from google.cloud import tasks_v2

    from common.adapters.cloud_tasks_dispatch import tasks_client

    parent = queue.rsplit("/queues/", 1)[0]
    tasks_client(endpoint).create_queue(parent=parent, queue=tasks_v2.Queue(name=queue), timeout=10)


@contextlib.contextmanager
def production_chain(
    *,
    api_port: int = 0,
    api_output: IO[bytes] | int | None = subprocess.DEVNULL,
    work_dir: str | os.PathLike[str] | None = None,
    veo_polls: int = 2,
    extra_env: Mapping[str, str] | None = None,
    start_timeout: float = 60.0,
    containers: bool | None = None,
) -> Iterator[ProductionChain]:
    """Start the whole chain; everything is stopped (process groups included) on exit.

    ``containers``: run the API and the jobs as their images (default: PHOENIX_PROFILE_CONTAINERS).

    ``api_output``: where the API's stdout/stderr go (None = inherit the terminal; default:
    a log file ``api.log`` in ``work_dir``). Job attempt logs go to ``work_dir/jobs/``.
    ``veo_polls``: how many polls a fake Veo operation stays "running".
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    if containers is None:
        containers = containers_requested()
    image_refs: dict[str, str] = {}
    if containers:
        from tools.images import find_image, require_engine

        require_engine()
        # Fail before starting anything when an image is missing (the message says how to build).
        image_refs = {role: find_image(role).ref for role in ("api", "video-job", "image-job")}
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phoenix-chain-")))
        else:
            work = Path(work_dir)
            work.mkdir(parents=True, exist_ok=True)

        # The three emulators start in parallel (each takes ~1 s, mostly interpreter start-up).
        # ExitStack is not thread-safe: the context managers are entered in threads and
        # registered on the stack from this thread, so a failure still stops the others.
        managers: dict[str, Any] = {
            "tasks": tasks_emulator(max_retries=20),
            "firestore": firestore_emulator(),
            "gcs": gcs_emulator(default_bucket=BUCKET),
        }
        handles: dict[str, ServerHandle] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def enter(name: str) -> None:
            t0 = time.monotonic()
            try:
                value = managers[name].__enter__()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                handles[name] = value
                timings[f"{name}_start_s"] = round(time.monotonic() - t0, 3)

        threads = [threading.Thread(target=enter, args=(n,)) for n in managers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in managers:
            if name in handles:
                stack.push(managers[name].__exit__)
        if errors:
            raise errors[0]

        tasks, firestore, gcs = handles["tasks"], handles["firestore"], handles["gcs"]
        vertex = stack.enter_context(
            FakeVertexServer(gcs_endpoint=gcs.url, polls_before_done=veo_polls)
        )
        queue = f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"
        port = api_port or free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PHOENIX_", "FIRESTORE_EMULATOR", "STORAGE_EMULATOR"))
        }
        env.update(
            {
                "PYTHONPATH": python_path(),
                "PYTHONUNBUFFERED": "1",
                "PORT": str(port),
                "PHOENIX_DATA_DIR": str(work / "data"),
                "PHOENIX_GCP_PROJECT": PROJECT,
                "PHOENIX_GCP_LOCATION": LOCATION,
                # Store: Firestore emulator
                "PHOENIX_STORE": "firestore",
                # The page acts as local users (X-Phoenix-User): allowed here by name, since
                # the Firestore store alone makes the API and jobs refuse header identity.
                "PHOENIX_ALLOW_HEADER_IDENTITY": "yes",
                "FIRESTORE_EMULATOR_HOST": firestore.url,
                # The same emulator through the Firestore REST API (the jobs' REST client)
                "PHOENIX_FIRESTORE_REST_URL": firestore.env["PHOENIX_FIRESTORE_REST_URL"],
                # Media: Cloud Storage emulator, URLs signed with a throw-away key
                "PHOENIX_MEDIA": "gcs",
                "PHOENIX_MEDIA_BUCKET": BUCKET,
                "STORAGE_EMULATOR_HOST": gcs.url,
                "PHOENIX_MEDIA_SIGNING_KEY_FILE": write_signing_key(work / "signing-key.json"),
                # Generator: fake Vertex (jobs only)
                "PHOENIX_GENERATOR": "vertex",
                "PHOENIX_VERTEX_BASE_URL": vertex.url,
                "PHOENIX_VERTEX_ACCESS_TOKEN": "local-emulator-token",
                "PHOENIX_VEO_POLL_INITIAL_SECONDS": "0.5",
                "PHOENIX_VEO_POLL_MAX_SECONDS": "2",
                # Dispatch: Cloud Tasks emulator -> jobs:run stand-in
                "PHOENIX_DISPATCH": "cloud-tasks",
                "PHOENIX_TASKS_QUEUE": queue,
                "PHOENIX_CLOUD_TASKS_ENDPOINT": tasks.url,
                "PHOENIX_TASKS_SERVICE_ACCOUNT": TASKS_SERVICE_ACCOUNT,
                "PHOENIX_VIDEO_JOB": VIDEO_JOB,
                "PHOENIX_IMAGE_JOB": IMAGE_JOB,
            }
        )
        env.update(extra_env or {})
        if containers:
            # Each job: its descriptor's env (not the API's) + the stand-in endpoints.
            jobs: dict[str, Any] = container_job_specs(env, extra_env or {})
            job_env: dict[str, str] = {}
        else:
            jobs = {
                VIDEO_JOB: [sys.executable, "-m", "jobs.video.main"],
                IMAGE_JOB: [sys.executable, "-m", "jobs.image.main"],
            }
            job_env = {k: v for k, v in env.items() if k != "PORT"}
        run_api = stack.enter_context(
            RunApiStandin(
                jobs,
                env=job_env,
                inherit_env=False,
                max_retries=3,
                task_timeout=600,
                require_auth=False,  # the Cloud Tasks emulator sends no OAuth token
                log_dir=work / "jobs",
                stop_grace=10.0,  # Cloud Run's SIGTERM -> SIGKILL grace period
            )
        )
        env["PHOENIX_RUN_API_URL"] = run_api.url
        if not containers:
            run_api.base_env["PHOENIX_RUN_API_URL"] = run_api.url
        _create_queue(tasks.url, queue)

        t0 = time.monotonic()
        log_file: IO[bytes] | None = None
        if api_output is subprocess.DEVNULL:
            log_file = open(work / "api.log", "wb")  # noqa: SIM115 - closed by the stack
            stack.callback(log_file.close)
            out: Any = log_file
        else:
            out = api_output
        api_container = None
        if containers:
            api, api_container = _start_api_container(
                stack,
                image_refs["api"],
                env,
                Path(env["PHOENIX_MEDIA_SIGNING_KEY_FILE"]),
                out,
                run_api.instance,
            )
        else:
            api = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-m", "api.main", "--host", "127.0.0.1"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                cwd=str(repo_root()),
                start_new_session=True,
            )
            stack.callback(stop_process_group, api)
        api_url = f"http://127.0.0.1:{port}"
        try:
            status = wait_for_http(f"{api_url}/readyz", timeout=start_timeout, proc=api)
            if status != 200:
                raise RuntimeError(f"API /readyz answered {status}")
        except Exception as exc:
            tail = (work / "api.log").read_text(errors="replace")[-3000:] if log_file else ""
            raise RuntimeError(f"the API did not become ready: {exc}\n{tail}") from exc
        timings["api_start_s"] = round(time.monotonic() - t0, 3)
        chain = ProductionChain(
            api_url=api_url,
            api_process=api,
            tasks=tasks,
            firestore=firestore,
            gcs=gcs,
            vertex=vertex,
            run_api=run_api,
            env=env,
            queue=queue,
            bucket=BUCKET,
            work_dir=work,
            startup_seconds=round(time.monotonic() - started, 3),
            timings=timings,
            containers=containers,
            api_container=api_container,
            image_refs=image_refs,
        )
        yield chain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulator_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="API port (0 = any free port)")
    parser.add_argument(
        "--work-dir", default=None, help="keep logs/keys here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--veo-polls", type=int, default=2, help="polls before a fake Veo op is done"
    )
    parser.add_argument(
        "--containers",
        action="store_true",
        default=containers_requested(),
        help="run the API and the jobs as their container images (PHOENIX_PROFILE_CONTAINERS=1)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with production_chain(
        api_port=args.port,
        api_output=None,
        work_dir=args.work_dir,
        veo_polls=args.veo_polls,
        containers=args.containers,
    ) as chain:
        print(f"\nPhoenix production chain is up in {chain.startup_seconds:.1f}s\n", flush=True)
        for name, url in chain.urls().items():
            print(f"  {name:<30} {url}")
        if chain.containers:
            print("\n  containers (docker run --network host):")
            print(f"  {'api container':<30} {chain.api_container}")
            for role, ref in chain.image_refs.items():
                print(f"  {role + ' image':<30} {ref}")
        print(f"\n  job logs                       {chain.work_dir / 'jobs'}")
        print("\nEnvironment given to the API and the jobs:\n")
        for key, value in sorted(chain.chain_env().items()):
            print(f"  export {key}={value}")
        print(
            "\nTry:\n"
            f"  curl -s -XPOST {chain.api_url}/api/generate/image -H 'Content-Type: application/json'"
            ' -d \'{"prompt": "a lighthouse", "count": 2}\'\n'
            f"  open {chain.api_url}/\n\nCtrl-C stops everything.",
            flush=True,
        )
        while not stop.is_set():
            if chain.api_process.poll() is not None:
                print(f"the API exited with code {chain.api_process.returncode}", file=sys.stderr)
                return 1
            stop.wait(0.5)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
