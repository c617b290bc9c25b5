"""``tools/provision`` wall time: warm (everything present) and, with ``--cold``, from nothing.

Run (repo root):  benchmarks/run provision [--runs 5] [--cold]

Warm: ``tools/provision`` against the checkout's own tools directory (benchmarks/run has just
provisioned it), ``--runs`` times; median and max wall time. This is what every ``./pants
test`` pays before the suite.

Cold (``--cold``): one run with ``PHOENIX_TOOLS_DIR`` pointing at a new empty temp directory,
so every emulator install is done from scratch (pip into fresh venvs, npm install: downloads
from PyPI and npm), then the directory is deleted. Debian packages are machine-wide: on a
machine that already has them (this one) the cold figure does NOT include their apt install,
and the JSON says which components reported ``installed``. Bounded by ``--timeout``.

The tests check only that a second run changes nothing
(tests/integration/test_standins.py); timings live here, not in a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

SCRIPT = c.REPO / "tools" / "provision"


def _run(env: dict[str, str], timeout: float) -> tuple[float, list[str]]:
    t = time.perf_counter()
    proc = subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout, cwd=c.REPO
    )
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tools/provision exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also time a run into an empty dir")
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)

    env = dict(os.environ)
    warm = []
    lines: list[str] = []
    for _ in range(args.runs):
        elapsed, lines = _run(env, 120)
        warm.append(elapsed)
    not_ok = [ln for ln in lines if not ln.startswith("ok ")]
    result: dict[str, Any] = {
        "warm": {
            "runs": args.runs,
            "median_s": round(c.percentile(warm, 50), 3),
            "max_s": round(max(warm), 3),
            "components": lines,
            "not_ok": not_ok,
        }
    }
    rows = [["warm", f"{result['warm']['median_s']:.3f}", f"{result['warm']['max_s']:.3f}", ""]]
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="phoenix-provision-cold-") as d:
            cold_env = dict(env, PHOENIX_TOOLS_DIR=str(Path(d) / "tools"))
            print(f"[cold] tools/provision into empty {d} ...", flush=True)
            elapsed, cold_lines = _run(cold_env, args.timeout)
        installed = [ln for ln in cold_lines if not ln.startswith("ok ")]
        result["cold"] = {
            "seconds": round(elapsed, 1),
            "components": cold_lines,
            "installed": installed,
            "note": "Debian packages already present machine-wide are not reinstalled",
        }
        rows.append(["cold", f"{elapsed:.1f}", "", "; ".join(installed)])
    c.table(
        "tools/provision wall time (s)",
        ["run", "median / once", "max", "installed from scratch"],
        rows,
    )
    c.emit_json("provision", {**c.machine(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
