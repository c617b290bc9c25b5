"""What each deployable PEX holds, read from the PEXes Pants built for this test
(runtime_package_dependencies): dependency inference, not hand-written lists, decides, so these
tests fail as soon as an import drags something into the wrong artefact.

The production job PEXes (``jobs/<kind>:<kind>-job``, what the job images install) must not hold
the local generator or what only it needs (Pillow, imageio-ffmpeg); the repo's job targets
(``<kind>-job-local``) must, which shows the difference comes from the entry modules' imports.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

LOCAL_ONLY_MODULES = ("common/adapters/local_generator.py", "common/local_generators.py")
LOCAL_ONLY_DISTS = ("pillow", "imageio-ffmpeg")
WEB_DISTS = ("flask", "gunicorn", "werkzeug")
GENERATOR_SDKS = ("google-genai", "pillow", "imageio-ffmpeg")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pex(relpath: str) -> tuple[set[str], set[str]]:
    """(first-party files, distribution names) of a PEX in the test sandbox."""
    path = Path(relpath)
    assert path.is_file(), f"{relpath} was not built into the sandbox"
    with zipfile.ZipFile(path) as z:
        info = json.loads(z.read("PEX-INFO"))
        files = {n for n in z.namelist() if not n.startswith((".deps/", "__pex__", ".bootstrap"))}
    dists = {_norm(whl.split("-")[0]) for whl in info["distributions"]}
    return files, dists


@pytest.mark.parametrize("kind", ["video", "image"])
def test_production_job_pex_holds_no_local_generator_pillow_or_ffmpeg(kind):
    files, dists = read_pex(f"src.python.jobs.{kind}/{kind}-job.pex")
    assert f"jobs/{kind}/production.py" in files
    assert "common/adapters/vertex_generator.py" in files
    assert "google-genai" in dists
    assert not [m for m in LOCAL_ONLY_MODULES if m in files]
    assert not [d for d in LOCAL_ONLY_DISTS if d in dists]
    assert not [d for d in WEB_DISTS if d in dists]


@pytest.mark.parametrize("kind", ["video", "image"])
def test_local_job_pex_holds_the_local_generator_too(kind):
    files, dists = read_pex(f"src.python.jobs.{kind}/{kind}-job-local.pex")
    assert all(m in files for m in LOCAL_ONLY_MODULES)
    assert "common/adapters/vertex_generator.py" in files
    assert all(d in dists for d in LOCAL_ONLY_DISTS)


def test_api_pex_holds_no_generator_or_its_sdks():
    files, dists = read_pex("src.python.api/api.pex")
    assert "api/main.py" in files
    assert not [f for f in files if f.startswith("common/adapters/") and "generator" in f]
    assert not [d for d in GENERATOR_SDKS if d in dists]
    assert "flask" in dists and "gunicorn" in dists
