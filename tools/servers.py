"""Start real local stand-ins for the services Phoenix talks to, as managed child processes.

Why: the integration tests and the local "emulator profile" need the *real* Redis, Cloud Tasks,
Firestore and Cloud Storage emulator processes (installed by ``tools/provision`` under
``.tools/``), each on its own free loopback port so parallel test processes never collide, and
each reliably stopped afterwards — including every grandchild — even when a test fails.

Every helper here is a context manager that:

* starts the process in its own session (``start_new_session=True``) so the whole process
  group can be signalled on exit;
* captures its output to a temporary log file whose tail is put into the error when start-up
  fails (and which the handle exposes as ``log_path`` / ``log_tail()`` while it runs);
* waits until the service really answers before yielding a :class:`ServerHandle` with
  ``host``/``port``/``url`` and the ``env`` a client needs (e.g. ``FIRESTORE_EMULATOR_HOST``,
  and ``PHOENIX_FIRESTORE_REST_URL`` for the Firestore REST stand-in started with it).

A missing binary raises :class:`ToolMissingError` naming ``tools/provision``: tests must fail
loudly rather than skip when the machine is not provisioned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT = 30.0  # generous: CI has 2 cores and runs several test processes at once
STOP_GRACE_SECONDS = 5.0
# Where the production jobs' Firestore REST client is pointed locally (the REST stand-in).
FIRESTORE_REST_URL_ENV = "PHOENIX_FIRESTORE_REST_URL"


class ToolMissingError(RuntimeError):
    """A binary the tests need is not installed; the fix is always ``tools/provision``."""


class StartupError(RuntimeError):
    """A managed process did not become ready; the message carries its log tail."""


def repo_root() -> Path:
    """Repository root: env PHOENIX_REPO_ROOT; else two levels up from this file when that is a
    checkout; else the working directory (``./pants run`` runs a PEX, whose files live in a
    cache, from the build root)."""
    env = os.environ.get("PHOENIX_REPO_ROOT")
    if env:
        return Path(env).resolve()
    beside = Path(__file__).resolve().parents[1]
    if (beside / "pants.toml").is_file():
        return beside
    return Path.cwd().resolve()


def tools_dir() -> Path:
    """Where ``tools/provision`` installed the emulators (env PHOENIX_TOOLS_DIR overrides)."""
    env = os.environ.get("PHOENIX_TOOLS_DIR")
    return Path(env).resolve() if env else repo_root() / ".tools"


def _missing(what: str) -> ToolMissingError:
    return ToolMissingError(
        f"{what} is not installed (looked in {tools_dir()}); run `tools/provision` "
        "(set PHOENIX_TOOLS_DIR if the tools live elsewhere)"
    )


# --- ports and readiness ------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """Return a currently free TCP port on ``host``.

    The OS picks it (bind to port 0), so concurrent callers get different ports; a tiny race
    remains between closing this socket and the child binding it, which the start-up wait
    surfaces as a clear error rather than a hang.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_alive(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is not None:
        raise StartupError(f"process exited early with code {proc.returncode}")


def wait_for_port(
    host: str,
    port: int,
    timeout: float = DEFAULT_START_TIMEOUT,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until a TCP connect to host:port succeeds; fail fast if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{host}:{port} not accepting connections after {timeout:.1f}s: {exc}"
                ) from None
        time.sleep(0.02)


def wait_for_http(
    url: str,
    timeout: float = DEFAULT_START_TIMEOUT,
    proc: subprocess.Popen[bytes] | None = None,
) -> int:
    """Block until ``url`` answers any HTTP response (a 404 still proves the server is up).

    Returns the status code. Proxies are bypassed: the target is always loopback.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc)
        try:
            with opener.open(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{url} did not answer after {timeout:.1f}s: {exc}") from None
        time.sleep(0.02)


# --- process management -------------------------------------------------------------------------


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the child's whole process group, SIGKILL after ``grace`` seconds, then reap.

    Only signals the group while the leader is un-reaped (``returncode is None``): a reaped
    pid could have been reused by an unrelated process group.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Grandchildren that ignored SIGTERM may survive their leader: clear the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-max_chars:].decode("utf-8", "replace")


@dataclass
class ServerHandle:
    """A running stand-in: where to reach it and how to point a client at it.

    ``url`` is what a client is given: ``http://host:port`` for HTTP services,
    ``redis://host:port/0`` for Redis, and the ``host:port`` gRPC target for the gRPC
    emulators (Cloud Tasks, Firestore). ``env`` holds the conventional environment variables.
    """

    name: str
    host: str
    port: int
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    startup_seconds: float = 0.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def rest_url(self) -> str | None:
        """The Firestore emulator's REST stand-in (``PHOENIX_FIRESTORE_REST_URL``), if any."""
        return self.env.get(FIRESTORE_REST_URL_ENV)

    def log_tail(self, max_chars: int = 4000) -> str:
        return _tail(self.log_path, max_chars)


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Child environment: ours minus Python path settings that belong to the project venv.

    The emulator venvs must not see the project's PYTHONPATH (e.g. ``src/python``), or a
    different protobuf could shadow theirs.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def managed_process(
    name: str,
    argv: Sequence[str],
    ready: Callable[[subprocess.Popen[bytes]], object],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], Path, float]]:
    """Run ``argv`` in its own session with output to a temp log; ``ready(proc)`` must return
    once the service answers (or raise). Yields (process, log path, start-up seconds).

    The log is removed on exit unless PHOENIX_KEEP_SERVER_LOGS=1.
    """
    fd, log_name = tempfile.mkstemp(prefix=f"phoenix-{name}-", suffix=".log")
    log_path = Path(log_name)
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as log_file:
            proc = subprocess.Popen(  # noqa: S603 - argv is built by this module
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        try:
            try:
                ready(proc)
            except Exception as exc:
                stop_process_group(proc)
                raise StartupError(
                    f"{name} failed to start ({' '.join(map(str, argv))}): {exc}\n"
                    f"--- last lines of {log_path} ---\n{_tail(log_path)}"
                ) from exc
            yield proc, log_path, time.monotonic() - started
        finally:
            stop_process_group(proc)
    finally:
        if os.environ.get("PHOENIX_KEEP_SERVER_LOGS") != "1":
            with contextlib.suppress(OSError):
                log_path.unlink()


# --- Redis --------------------------------------------------------------------------------------


def _redis_ping(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Readiness = a real PING/PONG (the port opens slightly before Redis serves commands)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        _check_alive(proc)
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"redis on {host}:{port} did not answer PING after {timeout:.1f}s: {last}")


def redis_argv(binary: str, port: int, data_dir: str) -> list[str]:
    """A throw-away Redis in the foreground: loopback only, no persistence, files in
    ``data_dir``."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data_dir,
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]


@contextlib.contextmanager
def redis_server(timeout: float = DEFAULT_START_TIMEOUT) -> Iterator[ServerHandle]:
    """A throw-away Redis (no persistence, loopback only) on a free port."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise ToolMissingError("redis-server is not installed; run `tools/provision`")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="phoenix-redis-") as data_dir:
        argv = redis_argv(binary, port, data_dir)
        with managed_process(
            "redis", argv, lambda p: _redis_ping(LOOPBACK, port, timeout, p), env=_clean_env()
        ) as (proc, log, secs):
            url = f"redis://{LOOPBACK}:{port}/0"
            yield ServerHandle("redis", LOOPBACK, port, url, proc, log, {"REDIS_URL": url}, secs)


# --- Cloud Tasks emulator -----------------------------------------------------------------------


@contextlib.contextmanager
def tasks_emulator(
    max_retries: int | None = None, timeout: float = DEFAULT_START_TIMEOUT
) -> Iterator[ServerHandle]:
    """gcloud-tasks-emulator (gRPC) from its own venv (it pins protobuf<5).

    ``max_retries=None`` keeps the emulator default: retry a failing task every ~0.1 s forever.
    Connect with ``CloudTasksGrpcTransport(channel=grpc.insecure_channel(handle.url))``.
    The emulator listens on all interfaces (it hard-codes ``[::]``); always connect via
    127.0.0.1.
    """
    python = tools_dir() / "tasks-emulator" / "bin" / "python"
    if not (tools_dir() / "tasks-emulator" / ".complete").exists() or not python.exists():
        raise _missing("gcloud-tasks-emulator")
    port = free_port()
    argv = [
        str(python),
        "-W",
        "ignore::FutureWarning",
        "-m",
        "gcloud_tasks_emulator",
        "start",
        f"--port={port}",
    ]
    if max_retries is not None:
        argv.append(f"--max-retries={max_retries}")
    with managed_process(
        "tasks-emulator",
        argv,
        lambda p: wait_for_port(LOOPBACK, port, timeout, p),
        env=_clean_env(),
    ) as (proc, log, secs):
        target = f"{LOOPBACK}:{port}"
        yield ServerHandle(
            "tasks-emulator",
            LOOPBACK,
            port,
            target,
            proc,
            log,
            {"CLOUD_TASKS_EMULATOR_HOST": target},
            secs,
        )


# --- Firestore emulator -------------------------------------------------------------------------


@contextlib.contextmanager
def firestore_emulator(
    timeout: float = DEFAULT_START_TIMEOUT, *, rest: bool = True
) -> Iterator[ServerHandle]:
    """@firestore-emulator/server (Node gRPC) bound to 127.0.0.1 via the provisioned start.js.

    Point google-cloud-firestore at it with ``FIRESTORE_EMULATOR_HOST=handle.url``. The shared
    notes (emulators.md) list what it gets wrong (no transaction isolation, …).

    With ``rest=True`` (the default) it also serves the Firestore REST API v1 for that emulator
    (``tools.standins.firestore_rest``, in this process, stopped on exit): the production jobs'
    stdlib REST client is pointed at ``handle.rest_url``, also in ``handle.env`` as
    ``PHOENIX_FIRESTORE_REST_URL`` next to ``FIRESTORE_EMULATOR_HOST``.
    """
    base = tools_dir() / "firestore-emulator"
    script = base / "start.js"
    if not (base / ".complete").exists() or not script.exists():
        raise _missing("@firestore-emulator/server")
    node = shutil.which("node")
    if node is None:
        raise ToolMissingError(
            "node is not installed (the Firestore emulator needs Node 20); run `tools/provision`"
        )
    port = free_port()
    argv = [node, str(script), str(port), LOOPBACK]
    with managed_process(
        "firestore-emulator",
        argv,
        lambda p: wait_for_port(LOOPBACK, port, timeout, p),
        env=_clean_env(),
        cwd=base,
    ) as (proc, log, secs), contextlib.ExitStack() as stack:
        target = f"{LOOPBACK}:{port}"
        env = {"FIRESTORE_EMULATOR_HOST": target}
        if rest:
            # Local import: it loads the Firestore SDK, which only this stand-in needs here.
            from tools.standins.firestore_rest import FirestoreRestStandIn

            env[FIRESTORE_REST_URL_ENV] = stack.enter_context(FirestoreRestStandIn(target)).url
        yield ServerHandle("firestore-emulator", LOOPBACK, port, target, proc, log, env, secs)


# --- Cloud Storage emulator ---------------------------------------------------------------------


@contextlib.contextmanager
def gcs_emulator(
    default_bucket: str | None = "phoenix-test", timeout: float = DEFAULT_START_TIMEOUT
) -> Iterator[ServerHandle]:
    """gcp-storage-emulator (in-memory) on 127.0.0.1, creating ``default_bucket`` if given.

    Clients: ``STORAGE_EMULATOR_HOST=handle.url`` then ``storage.Client(project=...)``.
    """
    python = tools_dir() / "gcs-emulator" / "bin" / "python"
    if not (tools_dir() / "gcs-emulator" / ".complete").exists() or not python.exists():
        raise _missing("gcp-storage-emulator")
    port = free_port()
    argv = [
        str(python),
        "-m",
        "gcp_storage_emulator",
        "start",
        f"--host={LOOPBACK}",
        f"--port={port}",
        "--in-memory",
    ]
    if default_bucket:
        argv.append(f"--default-bucket={default_bucket}")
    url = f"http://{LOOPBACK}:{port}"
    with managed_process(
        "gcs-emulator",
        argv,
        lambda p: wait_for_http(f"{url}/storage/v1/b", timeout, p),
        env=_clean_env(),
    ) as (proc, log, secs):
        yield ServerHandle(
            "gcs-emulator", LOOPBACK, port, url, proc, log, {"STORAGE_EMULATOR_HOST": url}, secs
        )


class BackgroundHttpServer:
    """A ThreadingHTTPServer served from a daemon thread: the serving loop the in-process
    stand-ins (fake Vertex, the jobs:run stand-in) share. Port 0 picks a free port."""

    def __init__(self, host: str, port: int, handler: type, name: str) -> None:
        from http.server import ThreadingHTTPServer

        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=name,
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
