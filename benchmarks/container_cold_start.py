"""The container half of benchmarks/cold_start.py: what a Cloud Run Job execution pays.

    benchmarks/run cold_start            (this section runs when a Docker engine answers)

What is measured. The production image job (``tools/images.py`` role ``image-job``) with the
PRODUCTION adapters against local stand-ins on loopback: store Firestore (the Firestore
emulator), generator Vertex (the fake Vertex server), media Cloud Storage (the storage
emulator). The parent writes a ``pending`` creation into the emulator, takes ``time.time()``
and runs ``docker run --rm --network host IMAGE --creation-id ID``; the job's claim writes
``claimed_at`` with the container's clock (the host kernel's), so ``claimed_at - t0`` is
container creation and start -> interpreter -> imports -> config/logging/tracing -> Firestore
client -> claim transaction. Side by side, run by run interleaved, the same measurement of an
image built by the same recipe from benchmarks/eager_job.py, which imports the SDKs the job
uses (google-genai, Firestore, Cloud Storage) at module top. Each run also completes the
creation (Imagen through the fake, PNGs into the storage emulator); "exit" is the time to the
container's exit.

Pull size: what a registry would serve for the image - every layer gzip-compressed at the
default level, as ``docker push`` does - total and for the image's own layers above the base
(a node that already holds the base pulls only those).

Not included: the registry pull itself and Cloud Run's scheduling (no registry or Cloud Run
here); the emulators answer faster than Firestore does from a Cloud Run region.

Where the time goes (the "why" of the ratio): ``docker run`` of the real image's interpreter
importing, in steps, what a job imports before its claim (``--network none``, median of
``BREAKDOWN_RUNS``): nothing; the job's own code (entrypoint, runner, wiring); plus the jobs'
Firestore REST store (standard library: what the real job imports before the claim); plus
google-cloud-firestore, google-genai and google-cloud-storage (what the eager job adds). Each row
gives the ``docker run`` wall time and the import time measured inside the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import _common as c

ROLES = {"real": "image-job", "eager": "eager-image-job"}
BREAKDOWN_RUNS = 5
# (label, modules imported in that step and all before it)
_JOB_CODE = ["jobs.image.production", "common.job_main", "common.bootstrap"]
_REST_STORE = ["common.adapters.firestore_rest_store"]
_EAGER = ["google.cloud.firestore", "google.genai", "google.cloud.storage"]
BREAKDOWN = [
    ("interpreter only", []),
    ("+ the job's code before the claim (no cloud SDK)", _JOB_CODE),
    ("+ the Firestore REST store (the real job's claim)", _JOB_CODE + _REST_STORE),
    (
        "+ google-cloud-firestore, google-genai, google-cloud-storage (the eager job)",
        _JOB_CODE + _REST_STORE + _EAGER,
    ),
]
_TIMED_IMPORTS = (
    "import sys, time\n"
    "t = time.perf_counter()\n"
    "for m in sys.argv[1:]:\n"
    "    __import__(m)\n"
    "print((time.perf_counter() - t) * 1000)\n"
)
PROJECT, LOCATION, BUCKET = "phoenix-local", "us-central1", "phoenix-media"
# Directory globs, not target names: whatever the docker_image targets there are called.
BUILD_TARGETS = ["src/python/jobs/image::", "benchmarks::"]


def build_images() -> None:
    print(f"[setup] ./pants package (docker_image) {' '.join(BUILD_TARGETS)}", flush=True)
    env = dict(os.environ, PANTS_DYNAMIC_UI="false", PANTS_COLORS="false")
    proc = subprocess.run(
        ["./pants", "package", "--filter-target-type=docker_image", *BUILD_TARGETS],
        cwd=c.REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"building the images failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def _gzip_size(fileobj: Any) -> int:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing, docker push's default level
    size = 0
    while chunk := fileobj.read(1 << 20):
        size += len(comp.compress(chunk))
    return size + len(comp.flush())


def _diff_ids(docker: str, ref: str) -> list[str]:
    out = subprocess.run(
        [docker, "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


def pull_size(docker: str, ref: str, base: str) -> dict[str, float]:
    """MB a registry would serve: all layers gzip-compressed, and those above ``base``."""
    layers_all = _diff_ids(docker, ref)
    base_layers = _diff_ids(docker, base)
    shared = 0
    while (
        shared < min(len(layers_all), len(base_layers))
        and layers_all[shared] == base_layers[shared]
    ):
        shared += 1
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-save-") as tmp:
        archive = Path(tmp) / "image.tar"
        subprocess.run([docker, "save", "-o", str(archive), ref], check=True)
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            layer_files = manifest[0]["Layers"]
            sizes = []
            for name in layer_files:
                member = tar.getmember(name)
                sizes.append((member.size, _gzip_size(tar.extractfile(member))))
    mb = 1024 * 1024
    own = sizes[shared:]
    return {
        "layers": len(sizes),
        "base_layers": shared,
        "pull_total_mb": c.r1(sum(z for _, z in sizes) / mb),
        "pull_own_mb": c.r1(sum(z for _, z in own) / mb),
        "uncompressed_total_mb": c.r1(sum(u for u, _ in sizes) / mb),
        "uncompressed_own_mb": c.r1(sum(u for u, _ in own) / mb),
    }


def _run_once(docker: str, ref: str, env: dict[str, str], store: Any) -> tuple[float, float]:
    cid = c.new_pending_image(store, "container cold start benchmark", "cloud-tasks")
    argv = [docker, "run", "--rm", "--network", "host"]
    argv += [f"--env={k}={v}" for k, v in env.items()]
    argv += [ref, "--creation-id", cid]
    return c.time_to_claim(
        store, cid, ref, lambda: subprocess.run(argv, capture_output=True, timeout=180)
    )


def import_breakdown(docker: str, ref: str, runs: int = BREAKDOWN_RUNS) -> list[dict[str, Any]]:
    """``docker run`` wall and in-interpreter import ms per BREAKDOWN step (medians)."""
    out = []
    for label, modules in BREAKDOWN:
        walls, imports = [], []
        for _ in range(runs):
            argv = [docker, "run", "--rm", "--network", "none"]
            argv += ["--entrypoint", "/app/venv/bin/python", ref, "-c", _TIMED_IMPORTS, *modules]
            t = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
            walls.append((time.monotonic() - t) * 1000)
            if proc.returncode != 0:
                raise RuntimeError(f"import breakdown {modules}: {proc.stderr[-2000:]}")
            imports.append(float(proc.stdout.strip().splitlines()[-1]))
        out.append(
            {
                "step": label,
                "modules": modules,
                "docker_run_p50_ms": c.r1(c.percentile(walls, 50)),
                "imports_p50_ms": c.r1(c.percentile(imports, 50)),
            }
        )
    return out


def measure(runs: int, build: bool) -> dict[str, Any]:
    """Runs the section, prints its tables, returns its part of the JSON line."""
    from tools import images
    from tools.servers import firestore_emulator, gcs_emulator
    from tools.standins.fake_vertex import FakeVertexServer
    from tools.standins.run_api import JobSpec

    docker = images.require_engine()
    if build:
        build_images()
    refs = {label: images.find_image(role) for label, role in ROLES.items()}
    for label, img in refs.items():
        print(f"[setup] {label}: {img.repository} {img.ref} ({img.source})", flush=True)

    with ExitStack() as stack:
        firestore = stack.enter_context(firestore_emulator())
        gcs = stack.enter_context(gcs_emulator(default_bucket=BUCKET))
        vertex = stack.enter_context(FakeVertexServer(gcs_endpoint=gcs.url))
        os.environ["FIRESTORE_EMULATOR_HOST"] = firestore.url
        from common.adapters.firestore_store import FirestoreCreationStore, firestore_client

        store = FirestoreCreationStore(firestore_client(PROJECT, "(default)"))
        # The job's production env, read from its Cloud Run descriptor like the container
        # chain does, plus where the stand-ins are.
        env = dict(
            JobSpec.from_descriptor(
                c.REPO / "src/python/jobs/image/deploy/job.yaml",
                substitutions={
                    "PROJECT_ID": PROJECT,
                    "REGION": LOCATION,
                    "MEDIA_BUCKET": BUCKET,
                    "IMAGE": refs["real"].ref,
                },
            ).env
        )
        env.update(
            {
                "FIRESTORE_EMULATOR_HOST": firestore.url,
                "PHOENIX_FIRESTORE_REST_URL": firestore.env["PHOENIX_FIRESTORE_REST_URL"],
                "STORAGE_EMULATOR_HOST": gcs.url,
                "PHOENIX_VERTEX_BASE_URL": vertex.url,
                "PHOENIX_VERTEX_ACCESS_TOKEN": "bench-token",
            }
        )
        setup: dict[str, float] = {}
        for label, img in refs.items():  # warm-up: page cache, first container of the image
            t = time.monotonic()
            _run_once(docker, img.ref, env, store)
            setup[f"container_{label}_first_run_s"] = round(time.monotonic() - t, 2)
        claim: dict[str, list[float]] = {k: [] for k in refs}
        total: dict[str, list[float]] = {k: [] for k in refs}
        for _ in range(runs):
            for label, img in refs.items():
                cl, tot = _run_once(docker, img.ref, env, store)
                claim[label].append(cl)
                total[label].append(tot)
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)

    stats = c.claim_stats(claim, total)
    ratio = stats["real"]["claim_p50_ms"] / stats["eager"]["claim_p50_ms"]
    print("[setup] import breakdown inside the real image", flush=True)
    breakdown = import_breakdown(docker, refs["real"].ref)
    # The same ratio from the import steps alone (docker run walls, exit included).
    floor = breakdown[2]["docker_run_p50_ms"] / breakdown[3]["docker_run_p50_ms"]
    print("[setup] measuring pull sizes (docker save + gzip of every layer)", flush=True)
    sizes = {label: pull_size(docker, img.ref, images.BASE_IMAGE) for label, img in refs.items()}
    c.table(
        f"Container cold start: docker run -> claimed_at, production adapters on the emulators "
        f"({runs} runs each, after 1 warm-up)",
        ["image", "median ms", "p90 ms", "min ms", "exit median ms"],
        [
            [
                f"{k} ({refs[k].repository})",
                s["claim_p50_ms"],
                s["claim_p90_ms"],
                s["claim_min_ms"],
                s["exit_p50_ms"],
            ]
            for k, s in stats.items()
        ],
    )
    c.table(
        "Container target (median)",
        ["target", "measured", "met"],
        [["real <= 0.35 x eager", f"{ratio:.3f} x", ratio <= 0.35]],
    )
    c.table(
        f"Where the time goes: docker run of the real image importing, step by step, what a job "
        f"imports before its claim (median of {BREAKDOWN_RUNS})",
        ["step", "docker run ms", "imports ms (inside)"],
        [[b["step"], b["docker_run_p50_ms"], b["imports_p50_ms"]] for b in breakdown],
    )
    print(
        f"imports alone (docker run of row 3 / row 4, container exit included): {floor:.2f} x; "
        f"the claim-time ratio above also counts the store calls and the claim transaction"
    )
    c.table(
        f"Image pull size (gzip level 6 per layer, as docker push; base = {images.BASE_IMAGE})",
        [
            "image",
            "pull MB",
            "own layers pull MB",
            "uncompressed MB",
            "own uncompressed MB",
            "layers (base)",
        ],
        [
            [
                k,
                s["pull_total_mb"],
                s["pull_own_mb"],
                s["uncompressed_total_mb"],
                s["uncompressed_own_mb"],
                f"{s['layers']} ({s['base_layers']})",
            ]
            for k, s in sizes.items()
        ],
    )
    return {
        "runs": runs,
        "images": {k: {"repository": v.repository, "ref": v.ref} for k, v in refs.items()},
        "variants": stats,
        "ratio_real_over_eager": round(ratio, 3),
        "target_met_ratio_le_0.35": ratio <= 0.35,
        "pull_size": sizes,
        "import_breakdown": breakdown,
        "ratio_docker_run_imports_real_over_eager": round(floor, 3),
        "setup_s": setup,
    }
