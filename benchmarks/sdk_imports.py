"""SDK import cost: google-genai (what the jobs use) vs google-cloud-aiplatform (what the design
card named), and the other cloud SDKs a job or the API may import.

Run (repo root):  benchmarks/run sdk_imports [--runs 7]

Why: a Cloud Run Job pays its imports on every cold execution, and the choice of Vertex SDK was
made partly on import time. The project's SDKs (google-genai, Firestore, Cloud Storage, Cloud
Tasks) are measured in the locked resolve benchmarks/run runs this with (what the images ship).
google-cloud-aiplatform is not in the lockfile (nothing ships it, and its pins conflict with
the locked google-genai), so it gets its own throw-away venv from the same CPython,
``$PHOENIX_TOOLS_DIR/bench-sdk-imports`` (``.tools/``, git-ignored), pip-installed and pinned
(google-cloud-aiplatform==AIPLATFORM_VERSION). Created on first use (wheels from PyPI, about
90 s at load 13; bounded by ``--install-timeout``), reused afterwards; the JSON records every
measured package's version.

What is measured: for each module, ``--runs`` fresh interpreters (``python -c "import time;
t=...; import M; print(...)"``), median and min ms of the import alone (interpreter start-up
excluded), after one warm-up import that writes the bytecode caches (``.pyc``), i.e. what a
container image with compiled bytecode pays. ``--no-pyc`` also measures with
``PYTHONDONTWRITEBYTECODE=1`` and ``-B`` on a venv without caches (much slower; optional).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

AIPLATFORM_VERSION = "2.7.0"
LOCKED = ("google-genai", "google-cloud-firestore", "google-cloud-storage", "google-cloud-tasks")
# module -> which environment: the project's locked resolve, or the aiplatform venv.
MODULES = {
    "google.genai": "locked",
    "google.cloud.aiplatform": "aiplatform",
    "vertexai": "aiplatform",
    "google.cloud.firestore": "locked",
    "google.cloud.storage": "locked",
    "google.cloud.tasks_v2": "locked",
}
_TIMED = (
    "import sys, time\n"
    "t = time.perf_counter()\n"
    "__import__(sys.argv[1])\n"
    "print((time.perf_counter() - t) * 1000)\n"
)


def ensure_venv(install_timeout: float = 1200.0) -> Path:
    from tools.servers import tools_dir

    venv = tools_dir() / "bench-sdk-imports"
    want = f"google-cloud-aiplatform=={AIPLATFORM_VERSION}"
    marker = venv / ".complete"
    if marker.exists() and marker.read_text() == want:
        return venv
    print(
        f"[setup] creating {venv} with {want} (pip, PyPI; ~45 wheels, 90 s at load 13)", flush=True
    )
    subprocess.run([c.plain_python311(), "-m", "venv", "--clear", str(venv)], check=True)
    env = dict(os.environ, PIP_CONFIG_FILE="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # Wheels only (no sdist builds on a busy machine); pip's own lines show progress, so a
    # slow install is visibly downloading rather than silently hung.
    argv = [str(venv / "bin" / "pip"), "install", "--progress-bar", "off", "--only-binary=:all:"]
    try:
        subprocess.run([*argv, want], check=True, env=env, timeout=install_timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"installing {want} took over {install_timeout:.0f} s (--install-timeout); "
            f"nothing was measured. Run again: pip reuses what it downloaded."
        ) from None
    marker.write_text(want)
    return venv


def time_import(python: Path, module: str, runs: int, *, pyc: bool) -> dict[str, float]:
    env = c.clean_env()
    argv = [str(python)]
    if not pyc:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        argv.append("-B")
    else:
        subprocess.run([*argv, "-c", _TIMED, module], env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [*argv, "-c", _TIMED, module], env=env, check=True, capture_output=True, text=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return {"median_ms": c.r1(c.percentile(times, 50)), "min_ms": c.r1(min(times))}


def _versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    import json

    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-pyc", action="store_true", help="also measure without bytecode caches")
    ap.add_argument(
        "--install-timeout",
        type=float,
        default=1200.0,
        help="seconds allowed for the one-time aiplatform venv install (default 1200)",
    )
    args = ap.parse_args(argv)
    venv = ensure_venv(args.install_timeout)
    pythons = {"locked": Path(sys.executable), "aiplatform": venv / "bin" / "python"}
    results: dict[str, Any] = {}
    for module, where in MODULES.items():
        python = pythons[where]
        print(f"[import] {module} ({where}) ...", flush=True)
        entry = {"with_pyc": time_import(python, module, args.runs, pyc=True)}
        if args.no_pyc:
            entry["without_pyc"] = time_import(python, module, max(3, args.runs // 2), pyc=False)
        results[module] = entry
    genai = results["google.genai"]["with_pyc"]["median_ms"]
    aip = results["google.cloud.aiplatform"]["with_pyc"]["median_ms"]
    c.table(
        f"Import time in a fresh interpreter ({args.runs} runs, .pyc present; ms)",
        ["module", "median", "min"] + (["median without .pyc"] if args.no_pyc else []),
        [
            [m, r["with_pyc"]["median_ms"], r["with_pyc"]["min_ms"]]
            + ([r["without_pyc"]["median_ms"]] if args.no_pyc else [])
            for m, r in results.items()
        ],
    )
    print(f"google-cloud-aiplatform / google-genai: {aip / genai:.1f} x")
    c.emit_json(
        "sdk_imports",
        {
            **c.machine(),
            "runs": args.runs,
            "versions": {
                "locked": _versions(pythons["locked"], LOCKED),
                "aiplatform": _versions(pythons["aiplatform"], ("google-cloud-aiplatform",)),
            },
            "results": results,
            "aiplatform_over_genai": round(aip / genai, 2),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
