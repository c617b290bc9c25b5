"""SDK import cost: google-genai (what the jobs use) vs google-cloud-aiplatform (what the design
card named), and the other cloud SDKs a job or the API may import.

Run (repo root):  benchmarks/run sdk_imports [--runs 7]

Why: a Cloud Run Job pays its imports on every cold execution, and the choice of Vertex SDK was
made partly on import time. google-cloud-aiplatform is not in the lockfile (nothing ships it),
so this benchmark makes its own throw-away venv, ``$PHOENIX_TOOLS_DIR/bench-sdk-imports``
(``.tools/``, git-ignored), with pip, pinned: google-cloud-aiplatform==AIPLATFORM_VERSION and
the lockfile's own versions of google-genai and the other SDKs, so both Vertex SDKs are
measured side by side in one environment. Created on first use (a few hundred MB of wheels
from PyPI), reused afterwards.

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
# Same as 3rdparty/python/python-default.lock (checked at run time against the project venv).
LOCKED = ("google-genai", "google-cloud-firestore", "google-cloud-storage", "google-cloud-tasks")
MODULES = [
    "google.genai",
    "google.cloud.aiplatform",
    "vertexai",
    "google.cloud.firestore",
    "google.cloud.storage",
    "google.cloud.tasks_v2",
]
_TIMED = (
    "import sys, time\n"
    "t = time.perf_counter()\n"
    "__import__(sys.argv[1])\n"
    "print((time.perf_counter() - t) * 1000)\n"
)


def _locked_versions() -> dict[str, str]:
    """The lockfile's versions, read from the venv benchmarks/run gave us (it is the resolve)."""
    import importlib.metadata as md

    return {name: md.version(name) for name in LOCKED}


def ensure_venv(locked: dict[str, str]) -> Path:
    from tools.servers import tools_dir

    venv = tools_dir() / "bench-sdk-imports"
    want = sorted([f"google-cloud-aiplatform=={AIPLATFORM_VERSION}"] + [
        f"{k}=={v}" for k, v in locked.items()
    ])
    marker = venv / ".complete"
    if marker.exists() and marker.read_text() == "\n".join(want):
        return venv
    print(f"[setup] creating {venv} with {' '.join(want)} (pip, PyPI)", flush=True)
    subprocess.run([c.plain_python311(), "-m", "venv", "--clear", str(venv)], check=True)
    env = dict(os.environ, PIP_CONFIG_FILE="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *want], check=True, env=env
    )
    marker.write_text("\n".join(want))
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


def _versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, "google-cloud-aiplatform", *LOCKED],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-pyc", action="store_true", help="also measure without bytecode caches")
    args = ap.parse_args(argv)
    venv = ensure_venv(_locked_versions())
    python = venv / "bin" / "python"
    results: dict[str, Any] = {}
    for module in MODULES:
        print(f"[import] {module} ...", flush=True)
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
            "versions": _versions(python),
            "results": results,
            "aiplatform_over_genai": round(aip / genai, 2),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
