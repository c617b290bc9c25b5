"""Shared helpers for the benchmark scripts (not a benchmark itself).

Every benchmark is run from the repo root as ``benchmarks/run NAME [args]``, which picks the
interpreter with the repo's locked dependencies (a developer's ``.venv`` if there is one, else
the resolve ``./pants export`` writes into ``dist/export``) and runs ``python -m
benchmarks.NAME``. Child processes (API servers, jobs) use that same interpreter
(``sys.executable``), so a fresh clone needs nothing made by hand. Importing this module also
makes the scripts self-locating (it puts ``src/python`` and the repo root on ``sys.path``).

Output convention: a small human table, then ONE line ``BENCH_JSON {...}`` per benchmark, also
written to ``dist/benchmarks/NAME.json`` (``PHOENIX_BENCH_JSON_OUT=FILE`` to write elsewhere,
e.g. for a second run with other arguments) with the command line, commit and time of the run;
the README's figures name the file they were taken from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "python"
for _p in (str(SRC), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# The interpreter benchmarks/run chose (it has the locked dependencies): children use it too.
PYTHON = Path(sys.executable)
RESULTS_DIR = REPO / "dist" / "benchmarks"
LOOPBACK = "127.0.0.1"


def _output(address: str, suffix: str = ".pex") -> tuple[str, Path]:
    """A target and what ``./pants package`` writes for it: dist/<its dir, dotted>/<name><suffix>."""
    spec, _, name = address.partition(":")
    return address, REPO / "dist" / spec.replace("/", ".") / f"{name}{suffix}"


PEX = {
    "api": _output("src/python/api:api"),
    "image-job": _output("src/python/jobs/image:image-job"),
    "video-job": _output("src/python/jobs/video:video-job"),
    # The repo's job targets (every generator, the local one included): what benchmarks that
    # generate on the embedded defaults run. The production PEXes above hold Vertex only.
    "image-job-local": _output("src/python/jobs/image:image-job-local"),
    "video-job-local": _output("src/python/jobs/video:video-job-local"),
    "eager-image-job": _output("benchmarks:eager-image-job"),
}


# The docker_image targets and the docker-info.json Pants writes for each (image id, tags).
IMAGES = {
    name: _output(f"{spec}:docker", ".docker-info.json")
    for name, spec in (
        ("api", "src/python/api"),
        ("video-job", "src/python/jobs/video"),
        ("image-job", "src/python/jobs/image"),
    )
}


def time_to_claim(
    store: Any, cid: str, label: str, run: Callable[[], subprocess.CompletedProcess[bytes]]
) -> tuple[float, float]:
    """Runs ``run`` (a job process for creation ``cid``, from exec) and returns (ms to the
    record's ``claimed_at``, ms to the process's exit); the job must have completed."""
    t0 = time.time()
    proc = run()
    t_exit = time.time()
    rec = store.get(cid)
    if proc.returncode != 0 or rec is None or rec.claimed_at is None:
        output = (proc.stdout or b"") + (proc.stderr or b"")
        raise RuntimeError(
            f"{label} exited {proc.returncode}, record={rec and rec.status}: "
            f"{output.decode(errors='replace')[-3000:]}"
        )
    if rec.status.value != "completed":
        raise RuntimeError(f"job did not complete: {rec.status} {rec.error}")
    return (rec.claimed_at.timestamp() - t0) * 1000, (t_exit - t0) * 1000


def claim_stats(
    claim: Mapping[str, Sequence[float]], total: Mapping[str, Sequence[float]]
) -> dict[str, dict[str, float]]:
    """Per variant: median, p90 and min ms to the claim, median ms to the process's exit."""
    return {
        k: {
            "claim_p50_ms": r1(percentile(v, 50)),
            "claim_p90_ms": r1(percentile(v, 90)),
            "claim_min_ms": r1(min(v)),
            "exit_p50_ms": r1(percentile(total[k], 50)),
        }
        for k, v in claim.items()
    }


def new_pending_image(store: Any, prompt: str, path: str = "local") -> str:
    """A pending image creation in ``store`` (what a job benchmark then claims); its id."""
    from common.domain import creation as lifecycle
    from common.domain.creation import Kind
    from common.domain.requests import parse_generation_request

    req = parse_generation_request(Kind.IMAGE, {"prompt": prompt})
    creation = lifecycle.new(
        user_id="bench",
        kind=Kind.IMAGE,
        prompt=req.prompt,
        params=req.params,
        path=path,
        now=lifecycle.utcnow(),
    )
    store.add(creation)
    return str(creation.id)


# --- statistics and output ----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    print(f"\n## {title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def emit_json(benchmark: str, data: Mapping[str, Any]) -> Path:
    """Prints the BENCH_JSON line and writes the same object, plus how and when it was made, to
    ``dist/benchmarks/<benchmark>.json`` (or ``$PHOENIX_BENCH_JSON_OUT``). Returns the path."""
    record = {"benchmark": benchmark, **data}
    print("BENCH_JSON " + json.dumps(record, sort_keys=False), flush=True)
    out = Path(os.environ.get("PHOENIX_BENCH_JSON_OUT") or RESULTS_DIR / f"{benchmark}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "command": " ".join(["benchmarks/run", benchmark, *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({**record, "run": run}, indent=2) + "\n")
    tmp.replace(out)
    print(f"[result] {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", flush=True)
    return out


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def _git_commit() -> str:
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{'+dirty' if dirty else ''}" if head else "unknown"


def r1(x: float) -> float:
    return round(float(x), 1)


_LOAD_AT_START = os.getloadavg()[0]


def machine() -> dict[str, Any]:
    """Context for the JSON line. ``loadavg_1m_at_start`` well above ~0.5 means something else
    was using the (2-core) machine when the benchmark started: figures are then pessimistic."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_1m_at_start": round(_LOAD_AT_START, 2),
    }


# --- environment --------------------------------------------------------------------------------


def clean_env(
    extra: Mapping[str, str] | None = None, *, pythonpath: str | None = None
) -> dict[str, str]:
    """Our environment minus anything that would leak the dev venv or PEX settings into a child;
    ``pythonpath`` sets PYTHONPATH (for children running from the source tree)."""
    env = {
        k: v
        for k, v in os.environ.items()
        # PYTHONDONTWRITEBYTECODE: this machine's login env sets it; children decide for
        # themselves (the job image sets it explicitly, see cold_start.py).
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "VIRTUAL_ENV",
            "PYTHONDONTWRITEBYTECODE",
        )
        and not k.startswith(("PEX_", "PHOENIX_", "OTEL_", "CLOUD_RUN_"))
    }
    env.setdefault("PHOENIX_LOG_FORMAT", "json")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update(extra or {})
    return env


def src_pythonpath() -> str:
    return os.pathsep.join([str(SRC), str(REPO)])


def plain_python311() -> str:
    """A plain CPython 3.11 (not the dev venv, not a pyenv shim: shims are shell scripts that
    add tens of ms per exec), i.e. what a container's ``python3.11`` is."""
    base = Path(sys.base_prefix) / "bin" / "python3.11"
    if base.exists() and sys.version_info[:2] == (3, 11):
        return str(base)
    found = shutil.which("python3.11")
    if not found:
        raise SystemExit("python3.11 not found")
    out = subprocess.run(
        [found, "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return str(Path(out) / "bin" / "python3.11")


def ensure_apt(binary: str, package: str | None = None) -> str:
    """The path of ``binary``, installing Debian ``package`` (default: same name) if missing."""
    found = shutil.which(binary)
    if found:
        return found
    package = package or binary
    print(f"[setup] installing Debian package {package} (apt-get)", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    found = shutil.which(binary)
    if not found:
        raise SystemExit(f"{binary} still missing after installing {package}")
    return found


# --- pants --------------------------------------------------------------------------------------


def pants_package(names: Sequence[str], *, attempts: int = 20, images: bool = False) -> None:
    """``./pants package`` the given names (keys of PEX; of IMAGES with ``images``). The
    checkout's Pants is shared with other engineers: when another invocation holds it, wait and
    retry."""
    targets = [IMAGES[n][0] if images else PEX[n][0] for n in names]
    print(f"[setup] ./pants package {' '.join(targets)}", flush=True)
    env = dict(os.environ, NO_SCIE_WARNING="1", PANTS_DYNAMIC_UI="false", PANTS_COLORS="false")
    for attempt in range(attempts):
        proc = subprocess.run(
            ["./pants", "package", *targets], cwd=REPO, env=env, capture_output=True, text=True
        )
        if proc.returncode == 0:
            return
        out = proc.stdout + proc.stderr
        busy = any(
            s in out.lower()
            # Pants' own messages when another client holds pantsd (not e.g. "lockfile").
            for s in ("another pants invocation", "already running", "pantsd is already")
        )
        if not busy:
            sys.stderr.write(out[-6000:])
            raise SystemExit(f"./pants package failed (exit {proc.returncode})")
        print(f"[setup] pants busy (attempt {attempt + 1}); retrying in 15 s", flush=True)
        time.sleep(15)
    raise SystemExit("./pants package: gave up waiting for the other pants process")


def pex_path(name: str) -> Path:
    return PEX[name][1]


def ensure_pexes(names: Sequence[str], build: bool) -> None:
    missing = [n for n in names if not pex_path(n).exists()]
    if build or missing:
        pants_package(list(names))
    for n in names:
        if not pex_path(n).exists():
            raise SystemExit(f"{pex_path(n)} missing after ./pants package")


def ensure_images(names: Sequence[str], build: bool) -> dict[str, str]:
    """Builds the images (needs the engine benchmarks/run brought up) and returns name -> image
    id as Pants recorded it."""
    missing = [n for n in names if not IMAGES[n][1].exists()]
    if build or missing:
        pants_package(list(names), images=True)
    return {n: json.loads(IMAGES[n][1].read_text())["image_id"] for n in names}


# --- processes and servers ----------------------------------------------------------------------


# The repo's one implementation of these lives in tools.servers (used by the tests too).
from tools.servers import free_port  # noqa: E402
from tools.servers import stop_process_group as stop  # noqa: E402
from tools.servers import wait_for_http as wait_http  # noqa: E402


@contextlib.contextmanager
def api_server(
    env_extra: Mapping[str, str],
    *,
    module: str = "api.main",
    data_dir: Path,
    workers: int = 1,
    threads: int = 8,
    log_path: Path | None = None,
) -> Iterator[str]:
    """``python -m api.main`` (gunicorn) from the source tree with this interpreter (the one
    benchmarks/run chose); yields its base URL. Logs go to ``log_path`` (default: discarded)."""
    port = free_port()
    env = clean_env(
        {
            "PORT": str(port),
            "PHOENIX_DATA_DIR": str(data_dir),
            "PHOENIX_STORE": "sqlite",
            "PHOENIX_MEDIA": "local",
            "PHOENIX_AUTH": "local",
            "PHOENIX_SWEEP_INTERVAL_SECONDS": "0",
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            **env_extra,
        },
        pythonpath=src_pythonpath(),
    )
    argv = [str(PYTHON), "-m", module]
    if module == "api.main":
        argv += ["--host", LOOPBACK]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_http(url + "/healthz", proc=proc)
        yield url
    finally:
        stop(proc)
        if log_path:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def http_json(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with opener.open(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw else None), dict(exc.headers)


# --- wrk ----------------------------------------------------------------------------------------

WRK_LUA = REPO / "benchmarks" / "wrk_request.lua"


def run_wrk(
    url: str,
    *,
    duration_s: int,
    connections: int,
    threads: int = 2,
    method: str = "GET",
    body: str = "",
    headers: Mapping[str, str] | None = None,
    users: int = 0,
    timeout_s: int = 10,
) -> dict[str, Any]:
    """Runs wrk with benchmarks/wrk_request.lua and returns its JSON summary: requests, duration,
    rps, latency percentiles (ms) and a count per HTTP status."""
    wrk = ensure_apt("wrk")
    env = dict(
        os.environ,
        WRK_METHOD=method,
        WRK_BODY=body,
        WRK_HEADERS="\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
        WRK_USERS=str(users),
    )
    proc = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s}s",
            f"--timeout={timeout_s}s",
            "-s",
            str(WRK_LUA),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(line[len("WRK_JSON ") :])
