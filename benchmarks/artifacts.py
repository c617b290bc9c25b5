"""Deployable artefacts: builds the three PEXes and prints each one's size and contents.

Run (repo root):  benchmarks/run artifacts [--no-build]

``./pants package src/python/api:api src/python/jobs/image:image-job src/python/jobs/video:video-job``,
then for each PEX: file size, the top-level requirements and every distribution it carries
(``PEX-INFO`` read from the zip: ``requirements`` and the keys of ``distributions``).
Asserts (exit 1 if violated): the API PEX contains neither google-genai nor Pillow; the job
PEXes contain neither Flask nor gunicorn. Further separations are printed for information.
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
    "image-job": ["flask", "gunicorn"],
    "video-job": ["flask", "gunicorn"],
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
    ap.add_argument("--no-build", action="store_true", help="inspect the PEXes already in dist/")
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
    c.emit_json(
        "artifacts",
        {
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
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
