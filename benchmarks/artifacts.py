"""Deployable artefacts: builds the three PEXes and the three images and prints what each holds.

Run (repo root):  benchmarks/run artifacts [--no-build] [--no-images]

PEXes: ``./pants package`` of the api and the production job PEXes, then for each: file size,
the top-level requirements and every distribution it carries (``PEX-INFO``).

Images (benchmarks/run brings up a Docker engine and the base image first, and stops an engine
it started): ``./pants package`` of the three docker_image targets, then, read from the engine
with tools/image_layers.py: total size, the size of the image's OWN layers (above the base: what a
deploy pushes and a cold start pulls beyond the shared base), and the 10 largest packages in
those layers.

Budgets (exit 1 if violated): the API PEX/image hold neither google-genai nor Pillow, the job
PEXes/images neither Flask nor gunicorn nor the local generator's Pillow/imageio-ffmpeg; each
production job image's own layers <= 0.4 x the job venv layer before the lean targets
(293.7 MB); the API image's own layers no larger than before (104.4 MB). Both baselines were
measured with this module's image code on main at 8a69a88 (2026-12-01), images built the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

NAMES = ["api", "image-job", "video-job"]
MUST_EXCLUDE = {
    "api": ["google-genai", "pillow"],
    "image-job": ["flask", "gunicorn", "pillow", "imageio-ffmpeg"],
    "video-job": ["flask", "gunicorn", "pillow", "imageio-ffmpeg"],
}
MB = 1e6
# Own layers of the images built from main at 8a69a88 (before the lean job targets), bytes.
BEFORE_OWN_BYTES = {"api": 104_384_874, "video-job": 293_658_457, "image-job": 293_658_457}
JOB_BUDGET_FACTOR = 0.4
BUDGET_BYTES = {
    "api": BEFORE_OWN_BYTES["api"],
    "video-job": JOB_BUDGET_FACTOR * BEFORE_OWN_BYTES["video-job"],
    "image-job": JOB_BUDGET_FACTOR * BEFORE_OWN_BYTES["image-job"],
}
# Not required by the brief, shown for information.
ALSO_EXCLUDED = {
    "api": ["imageio-ffmpeg"],
    "image-job": ["celery", "google-cloud-tasks", "werkzeug"],
    "video-job": ["celery", "google-cloud-tasks", "werkzeug"],
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pex(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        info = json.loads(z.read("PEX-INFO"))
    dists = {}
    for whl in info.get("distributions", {}):
        name, version = whl.split("-")[:2]
        dists[_norm(name)] = version
    return {
        "size_mb": round(path.stat().st_size / 2**20, 1),
        "requirements": sorted(info.get("requirements", [])),
        "distributions": dict(sorted(dists.items())),
        "entry_point": info.get("entry_point"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true", help="inspect what is already in dist/")
    ap.add_argument("--no-images", action="store_true", help="PEXes only (no Docker engine)")
    args = ap.parse_args(argv)
    c.ensure_pexes(NAMES, build=not args.no_build)

    pexes = {n: read_pex(c.pex_path(n)) for n in NAMES}
    checks: list[tuple[str, str, bool]] = []
    for n in NAMES:
        for dist in MUST_EXCLUDE[n]:
            checks.append((n, dist, dist not in pexes[n]["distributions"]))
    info = [(n, d, d not in pexes[n]["distributions"]) for n in NAMES for d in ALSO_EXCLUDED[n]]

    c.table(
        "PEX artefacts",
        ["pex", "size MB", "top-level requirements", "distributions (incl. transitive)"],
        [
            [n, p["size_mb"], len(p["requirements"]), len(p["distributions"])]
            for n, p in pexes.items()
        ],
    )
    for n, p in pexes.items():
        print(f"\n{n} ({c.pex_path(n).relative_to(c.REPO)}, entry {p['entry_point']}):")
        print("  requirements: " + ", ".join(p["requirements"]))
        print("  distributions: " + ", ".join(f"{k}=={v}" for k, v in p["distributions"].items()))
    c.table("Required exclusions", ["pex", "must not contain", "ok"], checks)
    c.table("Other separations (information)", ["pex", "does not contain", "true"], info)
    ok = all(x[2] for x in checks)
    image_report: dict[str, Any] = {}
    if not args.no_images:
        image_ok, image_report = report_images(build=not args.no_build)
        ok = ok and image_ok
    c.emit_json(
        "artifacts",
        {
            "images": image_report,
            "pexes": {
                n: {
                    "size_mb": p["size_mb"],
                    "n_distributions": len(p["distributions"]),
                    "requirements": p["requirements"],
                }
                for n, p in pexes.items()
            },
            "exclusions_ok": ok,
            "exclusions": {f"{n}!{d}": v for n, d, v in checks},
            **c.machine(),
        },
    )
    return 0 if ok else 1


def report_images(build: bool) -> tuple[bool, dict[str, Any]]:
    from tools import image_layers as images

    ids = c.ensure_images(NAMES, build=build)
    base = images.base_image()
    rows, budget_rows, report = [], [], {}
    ok = True
    for n in NAMES:
        own = images.own_files(ids[n], base)
        total = int(images.inspect(ids[n])["Size"])
        dists = own.distributions()
        sizes = own.package_sizes()
        excluded = [d for d in MUST_EXCLUDE[n] if d not in dists]
        local_gen = [p for p in own.site_packages() if "local_generator" in p]
        within = own.own_bytes <= BUDGET_BYTES[n]
        ok = ok and within and len(excluded) == len(MUST_EXCLUDE[n]) and not local_gen
        rows.append([n, ids[n], c.r1(total / MB), c.r1(own.own_bytes / MB), len(dists)])
        budget_rows.append(
            [
                n,
                c.r1(own.own_bytes / MB),
                c.r1(BUDGET_BYTES[n] / MB),
                c.r1(BEFORE_OWN_BYTES[n] / MB),
                round(own.own_bytes / BEFORE_OWN_BYTES[n], 2),
                "yes" if within else "NO",
            ]
        )
        c.table(
            f"{n} image: top 10 packages in its own layers",
            ["package", "MB"],
            [[k, round(v / MB, 2)] for k, v in list(sizes.items())[:10]],
        )
        report[n] = {
            "image_id": ids[n],
            "total_mb": c.r1(total / MB),
            "own_layers_mb": round(own.own_bytes / MB, 2),
            "budget_mb": round(BUDGET_BYTES[n] / MB, 2),
            "before_mb": round(BEFORE_OWN_BYTES[n] / MB, 2),
            "within_budget": within,
            "n_distributions": len(dists),
            "top10_mb": {k: round(v / MB, 2) for k, v in list(sizes.items())[:10]},
            "local_generator_files": local_gen,
        }
    c.table(f"Images (base {base})", ["image", "id", "total MB", "own layers MB", "dists"], rows)
    c.table(
        "Image budgets (own layers)",
        ["image", "own MB", "budget MB", "before MB", "x before", "within"],
        budget_rows,
    )
    return ok, report


if __name__ == "__main__":
    sys.exit(main())
