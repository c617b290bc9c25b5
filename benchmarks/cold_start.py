"""Job cold start: wall time from exec of the job to the creation being CLAIMED in the store.

Run (repo root):  benchmarks/run cold_start [--runs 20] [--no-build]

What is measured. The parent writes a ``pending`` image creation into the store, takes
``time.time()`` and immediately execs the job; the job's claim writes ``claimed_at`` with its
own clock (same machine, same CLOCK_REALTIME), so ``claimed_at - t0`` is exec -> interpreter
start -> imports -> config/logging/tracing set-up -> store client -> claim transaction. Median
and p90 over ``--runs`` runs per variant, variants interleaved run by run so machine noise hits
all of them alike. Every run must end ``completed``.

Two configurations, the production one first:
* ``production``: what a Cloud Run execution runs, on the stand-ins: store Firestore (the
  Firestore emulator), generator Vertex (google-genai against tools.standins.fake_vertex), media
  Cloud Storage (the storage emulator). Before the claim only the jobs' Firestore REST store
  (standard library) is imported; google-genai and google-cloud-storage load after it. ``venv``
  mode only (what the image runs).
* ``embedded``: the repo's defaults (SQLite store, local generator and media), in both modes,
  run by ``jobs/image:image-job-local`` (the production PEX has no local generator; the two
  differ only in which generators they can select, used after the claim).

Modes:
* ``pex``: ``python3.11 <job>.pex`` with a plain CPython 3.11. The warm-up run installs the
  PEX's venv into a private PEX_ROOT; later runs pay only the PEX bootstrap (hash check +
  re-exec into that venv).
* ``venv``: exactly what the production image runs. The job Dockerfile pre-installs the venv AT
  IMAGE BUILD TIME (``PEX_TOOLS=1 python app.pex venv --compile --non-hermetic-scripts
  --bin-path prepend /app/venv``, ENTRYPOINT ``/app/venv/pex``, with
  PYTHONDONTWRITEBYTECODE=1), so a Cloud Run execution never installs or compiles anything.
  Here the same command builds the venv in a temp dir and ``<venv>/pex`` is exec'd directly.

``eager`` = benchmarks/eager_job.py (benchmarks:eager-image-job): the same
``common.job_main.main`` after importing google-genai, google.cloud.firestore and
google.cloud.storage (the job's own production SDKs) at module top.

Containers (benchmarks/container_cold_start.py, when a Docker engine answers): ``docker run``
of the production job image -> claimed, with the production adapters on the emulators, against
the same eager job built into an image by the same recipe; plus image pull sizes.

Target: real <= 0.35 x eager and real < 400 ms (median; production first, embedded pex mode as
before). Also prints the real job's import-time breakdown (``python -X importtime`` on the
production venv, top 10 top-level imports by cumulative time).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

TARGET_RATIO = 0.35
TARGET_MS = 400.0
PROD_PROJECT = "phoenix-bench"
PROD_BUCKET = "phoenix-bench-media"


def _store(data_dir: Path) -> Any:
    from common.adapters.sqlite_store import SqliteCreationStore

    return SqliteCreationStore(data_dir / "creations.sqlite3")


def _new_pending(store: Any) -> str:
    return c.new_pending_image(store, "cold start benchmark")


def _job_env(data_dir: Path, pex_root: Path) -> dict[str, str]:
    return c.clean_env(
        {
            "PHOENIX_DATA_DIR": str(data_dir),
            "PHOENIX_STORE": "sqlite",
            "PHOENIX_GENERATOR": "local",
            "PHOENIX_MEDIA": "local",
            "PHOENIX_LOG_FORMAT": "json",  # production rendering
            "PEX_ROOT": str(pex_root),
            # What the job image sets (its venv has precompiled bytecode).
            "PYTHONUNBUFFERED": "1",
        }
    )


def _production_env(
    base: dict[str, str], firestore: Mapping[str, str], gcs: str, vertex: str, key_file: str
) -> dict[str, str]:
    """The job's production adapters, each pointed at its local stand-in (``firestore``: the
    emulator handle's env, gRPC host and REST stand-in URL)."""
    return {
        **base,
        "PHOENIX_STORE": "firestore",
        "PHOENIX_GCP_PROJECT": PROD_PROJECT,
        "PHOENIX_GCP_LOCATION": "us-central1",
        "FIRESTORE_EMULATOR_HOST": firestore["FIRESTORE_EMULATOR_HOST"],
        "PHOENIX_FIRESTORE_REST_URL": firestore["PHOENIX_FIRESTORE_REST_URL"],
        "PHOENIX_GENERATOR": "vertex",
        "PHOENIX_VERTEX_BASE_URL": vertex,
        "PHOENIX_VERTEX_ACCESS_TOKEN": "bench-token",
        "PHOENIX_MEDIA": "gcs",
        "PHOENIX_MEDIA_BUCKET": PROD_BUCKET,
        "STORAGE_EMULATOR_HOST": gcs,
        "PHOENIX_MEDIA_SIGNING_KEY_FILE": key_file,
        # A local stand-in of production: the production-safety check would refuse header
        # identity on a Firestore store otherwise (the job never reads identity).
        "PHOENIX_ALLOW_HEADER_IDENTITY": "yes",
    }


def _production_store(env: dict[str, str]) -> Any:
    """The parent's own Firestore store on the same emulator (writes the pending record, reads
    ``claimed_at``)."""
    from common import bootstrap
    from common.config import Settings

    os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
    return bootstrap.build_store(Settings.from_env(env))


def _run_once(argv: list[str], env: dict[str, str], store: Any, cwd: Path) -> tuple[float, float]:
    """Returns (ms to claimed_at, ms to process exit)."""
    cid = _new_pending(store)
    return c.time_to_claim(
        store,
        cid,
        argv[0],
        lambda: subprocess.run(
            [*argv, "--creation-id", cid],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,  # generous: a busy shared machine can take minutes for a first run
        ),
    )


def _build_venv(py: str, pex: Path, dest: Path, pex_root: Path) -> float:
    """The job Dockerfile's build step; returns its duration in seconds."""
    t = time.monotonic()
    subprocess.run(
        [
            py,
            str(pex),
            "venv",
            "--compile",
            "--non-hermetic-scripts",
            "--bin-path",
            "prepend",
            str(dest),
        ],
        env=c.clean_env({"PEX_TOOLS": "1", "PEX_ROOT": str(pex_root)}),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - t


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_breakdown(
    venv: Path, env: dict[str, str], store: Any, cwd: Path, top: int = 10
) -> dict[str, Any]:
    """``-X importtime`` of a venv's entrypoint run to completion with ``env``: top-level
    imports (indent 0, i.e. what the job itself imported, at module top or lazily inside main)
    by cumulative us."""
    cid = _new_pending(store)
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-X", "importtime", str(venv / "pex"), "--creation-id", cid],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=True,
    )
    entries: list[tuple[str, int, int]] = []
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and m.group(3) == " ":  # one space after the bar = top level
            entries.append((m.group(4), int(m.group(1)), int(m.group(2))))
    total_us = sum(e[2] for e in entries)
    entries.sort(key=lambda e: -e[2])
    return {
        "total_ms": total_us / 1000,
        "top": [
            {"module": n, "cumulative_ms": cum / 1000, "self_ms": s / 1000}
            for n, s, cum in entries[:top]
        ],
    }


_PROD_ADAPTERS = {
    # What job_main builds BEFORE the claim with the production config (store=firestore):
    # the jobs' REST store (standard library). For comparison, what the claim would import
    # through the API's gRPC store, and with the generator and media adapters too (each
    # adapter module imports its SDK at module top).
    "store firestore, REST (the job's claim)": ["common.adapters.firestore_rest_store"],
    "store firestore, gRPC (google-cloud-firestore)": ["common.adapters.firestore_store"],
    "store+generator+media (firestore gRPC, vertex, gcs)": [
        "common.adapters.firestore_store",
        "common.adapters.vertex_generator",
        "common.adapters.gcs_media",
    ],
}
_TIMED_IMPORT = (
    "import sys, time\n"
    "import common.logs, common.tracing, opentelemetry.sdk.trace, common.job_runner\n"
    "t = time.perf_counter()\n"
    "for m in sys.argv[1:]:\n"
    "    __import__(m)\n"
    "print((time.perf_counter() - t) * 1000)\n"
)


def prod_adapter_imports(venv: Path, env: dict[str, str], runs: int = 7) -> dict[str, float]:
    """Median ms (fresh process each) to import the production adapters in the production venv,
    on top of what the job imports anyway (logs, tracing, runner)."""
    out = {}
    for label, modules in _PROD_ADAPTERS.items():
        times = []
        for _ in range(runs):
            proc = subprocess.run(
                [str(venv / "bin" / "python"), "-c", _TIMED_IMPORT, *modules],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            times.append(float(proc.stdout.strip()))
        out[label] = c.r1(c.percentile(times, 50))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument(
        "--no-build", action="store_true", help="use the PEXes and images already built"
    )
    ap.add_argument(
        "--container-runs", type=int, default=10, help="docker runs per image (default 10)"
    )
    ap.add_argument("--no-containers", action="store_true", help="skip the container figure")
    ap.add_argument("--containers-only", action="store_true", help="only the container figure")
    args = ap.parse_args(argv)
    if args.containers_only:
        container = _containers(args)
        c.emit_json("cold_start", {**c.machine(), "container": container})
        return 0

    c.ensure_pexes(["image-job", "image-job-local", "eager-image-job"], build=not args.no_build)
    py = c.plain_python311()
    print(
        f"[setup] interpreter {py}; {args.runs} runs per variant; {os.cpu_count()} CPUs", flush=True
    )

    import contextlib

    from tools.emulator_profile import write_signing_key
    from tools.servers import firestore_emulator, gcs_emulator
    from tools.standins.fake_vertex import FakeVertexServer

    with c.temp_dir("phoenix-bench-cold-") as tmp, contextlib.ExitStack() as stack:
        data_dir = tmp / "data"
        pex_root = tmp / "pex_root"
        store = _store(data_dir)
        env = _job_env(data_dir, pex_root)
        venv_env = dict(env, PYTHONDONTWRITEBYTECODE="1")
        firestore = stack.enter_context(firestore_emulator())
        gcs = stack.enter_context(gcs_emulator(default_bucket=PROD_BUCKET))
        vertex = stack.enter_context(FakeVertexServer(gcs_endpoint=gcs.url))
        prod_env = _production_env(
            venv_env, firestore.env, gcs.url, vertex.url, write_signing_key(tmp / "key.json")
        )
        prod_store = _production_store(prod_env)
        # key -> (argv, env, store); the production configuration first.
        variants: dict[str, tuple[list[str], dict[str, str], Any]] = {}
        setup: dict[str, float] = {}
        venvs: dict[str, Path] = {}
        # The production image job holds the Vertex generator only; the embedded runs use the
        # repo's job target (jobs/image:image-job-local), the same code up to the claim.
        venv_pex = {
            "real": "image-job",
            "real-local": "image-job-local",
            "eager": "eager-image-job",
        }
        for label, name in venv_pex.items():
            venv = tmp / f"venv-{label}"
            setup[f"{label}_venv_build_s"] = round(
                _build_venv(py, c.pex_path(name), venv, pex_root), 2
            )
            venvs[label] = venv
            print(f"[setup] {label} venv built in {setup[f'{label}_venv_build_s']} s", flush=True)
        for label in ("real", "eager"):
            variants[f"production {label}/venv"] = (
                [str(venvs[label] / "pex")],
                prod_env,
                prod_store,
            )
        for label, venv_label in (("real", "real-local"), ("eager", "eager")):
            pex = c.pex_path(venv_pex[venv_label])
            variants[f"embedded {label}/pex"] = ([py, str(pex)], env, store)
            variants[f"embedded {label}/venv"] = ([str(venvs[venv_label] / "pex")], venv_env, store)

        # Warm-up: one run each (pex mode: installs the runtime venv in PEX_ROOT).
        for key, (cmd, e, st) in variants.items():
            t = time.monotonic()
            _run_once(cmd, e, st, tmp)
            setup[f"{key.replace('/', '_').replace(' ', '_')}_first_run_s"] = round(
                time.monotonic() - t, 2
            )
            print(f"[warm-up] {key}: {time.monotonic() - t:.1f} s", flush=True)

        claim: dict[str, list[float]] = {k: [] for k in variants}
        total: dict[str, list[float]] = {k: [] for k in variants}
        for n in range(args.runs):
            print(f"[run] {n + 1}/{args.runs}", flush=True)
            for key, (cmd, e, st) in variants.items():
                cl, tot = _run_once(cmd, e, st, tmp)
                claim[key].append(cl)
                total[key].append(tot)

        # The production configuration (the production venv holds the Vertex generator only).
        breakdown = import_breakdown(tmp / "venv-real", prod_env, prod_store, tmp)
        eager_breakdown = import_breakdown(tmp / "venv-eager", prod_env, prod_store, tmp, top=5)
        prod_imports = prod_adapter_imports(tmp / "venv-real", venv_env)
        store.close()
        prod_store.close()

    stats = c.claim_stats(claim, total)
    c.table(
        f"Job cold start: exec -> claimed_at ({args.runs} runs each, after 1 warm-up)",
        ["variant", "median ms", "p90 ms", "min ms", "exit median ms"],
        [
            [k, s["claim_p50_ms"], s["claim_p90_ms"], s["claim_min_ms"], s["exit_p50_ms"]]
            for k, s in stats.items()
        ],
    )
    ratios = {
        "production/venv": stats["production real/venv"]["claim_p50_ms"]
        / stats["production eager/venv"]["claim_p50_ms"],
        **{
            f"embedded/{mode}": stats[f"embedded real/{mode}"]["claim_p50_ms"]
            / stats[f"embedded eager/{mode}"]["claim_p50_ms"]
            for mode in ("pex", "venv")
        },
    }
    real_prod = stats["production real/venv"]["claim_p50_ms"]
    real_pex = stats["embedded real/pex"]["claim_p50_ms"]
    met_ratio = ratios["production/venv"] <= TARGET_RATIO
    met_abs = real_prod < TARGET_MS
    c.table(
        "Targets (median; production configuration first)",
        ["target", "measured", "met"],
        [
            [
                f"production: real <= {TARGET_RATIO} x eager",
                f"{ratios['production/venv']:.3f} x",
                met_ratio,
            ],
            [f"production: real < {TARGET_MS:.0f} ms", f"{real_prod:.1f} ms", met_abs],
            [
                f"embedded: real <= {TARGET_RATIO} x eager",
                f"{ratios['embedded/pex']:.3f} x pex (venv mode {ratios['embedded/venv']:.3f} x)",
                ratios["embedded/pex"] <= TARGET_RATIO,
            ],
            [
                f"embedded: real < {TARGET_MS:.0f} ms",
                f"{real_pex:.1f} ms pex (venv mode "
                f"{stats['embedded real/venv']['claim_p50_ms']:.1f} ms)",
                real_pex < TARGET_MS,
            ],
        ],
    )
    c.table(
        "One-off set-up costs (not in the figures above)",
        ["step", "seconds"],
        sorted(setup.items()),
    )
    c.table(
        f"Real job imports (-X importtime, production venv and configuration): top 10 of "
        f"{breakdown['total_ms']:.1f} ms",
        ["module", "cumulative ms", "self ms"],
        [[t["module"], t["cumulative_ms"], t["self_ms"]] for t in breakdown["top"]],
    )
    c.table(
        f"Eager job imports (production configuration): top 5 of "
        f"{eager_breakdown['total_ms']:.1f} ms",
        ["module", "cumulative ms", "self ms"],
        [[t["module"], t["cumulative_ms"], t["self_ms"]] for t in eager_breakdown["top"]],
    )
    c.table(
        "Production config: store/adapter imports (real venv, median of 7 processes)",
        ["adapters", "import ms"],
        list(prod_imports.items()),
    )
    container = None if args.no_containers else _containers(args)
    c.emit_json(
        "cold_start",
        {
            "container": container,
            "runs": args.runs,
            **c.machine(),
            "variants": stats,
            "ratio_real_over_eager": {k: round(v, 3) for k, v in ratios.items()},
            "targets_met": {
                "production_ratio_le_0.35": met_ratio,
                "production_real_lt_400ms": met_abs,
                "embedded_ratio_le_0.35": ratios["embedded/pex"] <= TARGET_RATIO,
                "embedded_real_lt_400ms": real_pex < TARGET_MS,
            },
            "setup_s": setup,
            "import_total_ms": {
                "real": c.r1(breakdown["total_ms"]),
                "eager": c.r1(eager_breakdown["total_ms"]),
            },
            "prod_adapter_imports_ms": prod_imports,
            "import_top10_real_ms": {
                t["module"]: c.r1(t["cumulative_ms"]) for t in breakdown["top"]
            },
        },
    )
    return 0


def _containers(args: argparse.Namespace) -> dict[str, Any] | None:
    from tools import images

    if not images.engine_available():
        print(
            "\n[container figure not measured: no Docker engine answers; tools/provision starts one]",
            flush=True,
        )
        return None
    from benchmarks import container_cold_start

    return container_cold_start.measure(args.container_runs, build=not args.no_build)


if __name__ == "__main__":
    sys.exit(main())
