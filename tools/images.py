"""Which container image plays which part, and how to find the built one.

Why one module: image targets and repository names are being reshaped (lean production job
images, a shared Dockerfile), and the stand-in, the emulator profile, the container tests and
the cold-start benchmark all need "the video job's image". They ask here, by role; a renamed
repository is a one-line change in ``REPOSITORIES``. Target addresses appear only where Pants
needs them (the ``runtime_package_dependencies`` of the tests that run images).

How an image is found, most precise first:

1. the ``*.docker-info.json`` files Pants writes next to a packaged ``docker_image`` (in a test
   sandbox through ``runtime_package_dependencies``, or under ``dist/`` after
   ``./pants package``): they carry the exact image id that build produced, so a test never
   runs an image another worktree tagged the same way in the shared engine;
2. else the newest image of that repository in the local engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# role -> image repository (what the docker_image targets' `repository` field says).
REPOSITORIES = {
    "api": "phoenix-api",
    "video-job": "phoenix-video-job",
    "image-job": "phoenix-image-job",
    # benchmarks/cold_start.py's baseline: the image job importing the cloud SDKs eagerly.
    "eager-image-job": "phoenix-eager-image-job",
}

# The base every image is built FROM (benchmarks report pull size above it): the official image,
# or the local equivalent ./pants and benchmarks/run passed as BASE_IMAGE (tools/docker-engine).
BASE_IMAGE = os.environ.get("BASE_IMAGE") or "python:3.11-slim-bookworm"

# What builds them when none is found (directory globs survive target renames).
BUILD_HINT = "./pants package src/python/api:: src/python/jobs:: benchmarks::"


class ImageNotFound(RuntimeError):
    """No built image for a role: the message says how to build it."""


class EngineUnavailable(RuntimeError):
    """No Docker engine answers."""


@dataclass(frozen=True)
class BuiltImage:
    role: str
    repository: str
    ref: str  # what to pass to `docker run`: an image id (sha256:...) or repository:tag
    source: str  # where it was found: a docker-info.json path or "engine"


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise EngineUnavailable("no `docker` client on PATH; run `tools/provision`")
    return path


def engine_available(timeout: float = 10.0) -> bool:
    """True when a Docker engine answers (``docker version`` reaches the server)."""
    try:
        proc = subprocess.run(
            [docker_cli(), "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (EngineUnavailable, OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def require_engine() -> str:
    """The docker client path, or EngineUnavailable with the fix."""
    cli = docker_cli()
    if not engine_available():
        raise EngineUnavailable(
            "no Docker engine answers (`docker version`); run under ./pants or benchmarks/run,"
            " which start one, or start one with `tools/docker-engine up`"
        )
    return cli


def _docker_info_files(roots: Iterable[Path]) -> list[Path]:
    # Pants writes <dotted.dir.of.target>/<name>.docker-info.json at the root of dist/ (or of
    # the test sandbox): one level down, no deep walk.
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found.extend(root.glob("*/*.docker-info.json"))
    return found


def _from_docker_info(role: str, repository: str, roots: Iterable[Path]) -> BuiltImage | None:
    newest: tuple[float, BuiltImage] | None = None
    for path in _docker_info_files(roots):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        image_id = info.get("image_id")
        repos = {r.get("repository") for r in info.get("registries", [])}
        if not image_id or repository not in repos:
            continue
        candidate = (path.stat().st_mtime, BuiltImage(role, repository, image_id, str(path)))
        if newest is None or candidate[0] > newest[0]:
            newest = candidate
    return newest[1] if newest else None


def _from_engine(role: str, repository: str) -> BuiltImage | None:
    proc = subprocess.run(
        [docker_cli(), "image", "ls", repository, "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    ids = proc.stdout.split() if proc.returncode == 0 else []
    # `docker image ls` lists newest first.
    return BuiltImage(role, repository, ids[0], "engine") if ids else None


def find_image(role: str, search: Iterable[str | os.PathLike[str]] | None = None) -> BuiltImage:
    """The image for ``role`` ("api", "video-job", ...): see the module docstring for the order.

    ``search``: directories holding Pants' docker-info.json files (default: the working
    directory, which is the sandbox under ``pants test``, and ``dist/`` of the checkout).
    """
    from tools.servers import repo_root

    repository = REPOSITORIES[role]
    roots = [Path(p) for p in search] if search is not None else [Path.cwd(), repo_root() / "dist"]
    # The sandbox (cwd) first: a test must run what Pants built for it.
    for root in roots:
        hit = _from_docker_info(role, repository, [root])
        if hit is not None:
            return hit
    hit = _from_engine(role, repository)
    if hit is None:
        raise ImageNotFound(f"no {repository} image in the local engine; build it: {BUILD_HINT}")
    return hit
