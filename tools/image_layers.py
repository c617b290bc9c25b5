"""Reads what a built image really holds, for the image tests and ``benchmarks/run artifacts``
(``tools/images.py`` finds which image plays which role; this module looks inside one).

An image's *own* layers are the ones above its base image (``BASE_IMAGE``: the official
``python:3.11-slim-bookworm`` or the local equivalent tools/docker-engine built): what a deploy
pushes for the service and what a Cloud Run cold start pulls beyond the (shared, cached) base.
``docker save`` gives the layers in order; the base's layer ids (``RootFS.Layers``) are a prefix
of the image's, and the rest are read file by file. Distribution sizes come from the
``*.dist-info/RECORD`` files inside those layers, bytecode (``__pycache__``, compiled at build
time) counted with the module it was compiled from.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

OFFICIAL_BASE = "python:3.11-slim-bookworm"
SITE_PACKAGES = "app/venv/lib/python3.11/site-packages/"
FIRST_PARTY = ("api", "common", "jobs")
_PYC = re.compile(r"^(?P<dir>.*)/__pycache__/(?P<mod>[^./]+)\.[^/]*\.pyc$")


def base_image() -> str:
    """The base the images were built on: what ./pants passed as BASE_IMAGE, else the official."""
    return os.environ.get("BASE_IMAGE") or OFFICIAL_BASE


def docker(*args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def inspect(ref: str) -> dict[str, Any]:
    return json.loads(docker("image", "inspect", ref))[0]


def image_id_from_info(path: str) -> str:
    """The image id Pants recorded in ``<dir>/<name>.docker-info.json`` when it built it."""
    with open(path) as f:
        return str(json.load(f)["image_id"])


@dataclass
class ImageFiles:
    """The files the image's own layers add (path without the leading ``/`` -> size; a later
    layer's version wins, whiteouts remove), and their combined size as docker reports it."""

    ref: str
    base: str
    own_bytes: int
    files: dict[str, int] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)  # RECORD files only
    matches: list[str] = field(default_factory=list)  # files whose content matched `scan`

    def site_packages(self) -> dict[str, int]:
        n = len(SITE_PACKAGES)
        return {p[n:]: s for p, s in self.files.items() if p.startswith(SITE_PACKAGES)}

    def distributions(self) -> dict[str, str]:
        """Normalised distribution name -> version, from the ``*.dist-info`` directories."""
        out: dict[str, str] = {}
        for path in self.site_packages():
            top = path.split("/", 1)[0]
            if top.endswith(".dist-info"):
                name, _, version = top[: -len(".dist-info")].partition("-")
                out[normalise(name)] = version
        return out

    def package_sizes(self) -> dict[str, int]:
        """Bytes per distribution (first-party code under its package name, the rest of the
        image's own files as ``(outside site-packages)``), largest first."""
        owner: dict[str, str] = {}
        for path, data in self.contents.items():
            dist_info = PurePosixPath(path).parent.name
            name = normalise(dist_info[: -len(".dist-info")].partition("-")[0])
            for line in data.decode("utf-8", "replace").splitlines():
                rel = line.split(",", 1)[0]
                if rel:
                    owner[os.path.normpath(rel)] = name
        # Top-level names a distribution owns, for files RECORD does not list (bytecode).
        top_owner = {p.split("/", 1)[0]: d for p, d in owner.items()}
        sizes: dict[str, int] = defaultdict(int)
        for path, size in self.site_packages().items():
            found = owner.get(path)
            m = _PYC.match(path)
            if found is None and m:
                found = owner.get(f"{m['dir']}/{m['mod']}.py")
            top = path.split("/", 1)[0]
            if found is None:
                found = f"{top} (first party)" if top in FIRST_PARTY else top_owner.get(top, top)
            sizes[found] += size
        rest = sum(s for p, s in self.files.items() if not p.startswith(SITE_PACKAGES))
        if rest:
            sizes["(outside site-packages)"] += rest
        return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def own_files(
    ref: str, base: str | None = None, scan: re.Pattern[bytes] | None = None
) -> ImageFiles:
    """Lists the files in ``ref``'s layers above ``base`` (checked to be its base); with
    ``scan``, also which of them have content matching it."""
    base = base or base_image()
    image, base_info = inspect(ref), inspect(base)
    layers, base_layers = image["RootFS"]["Layers"], base_info["RootFS"]["Layers"]
    if layers[: len(base_layers)] != base_layers:
        raise RuntimeError(f"{ref} is not built on {base}: its first layers differ")
    result = ImageFiles(ref=ref, base=base, own_bytes=int(image["Size"]) - int(base_info["Size"]))
    with tempfile.TemporaryDirectory(prefix="phoenix-image-") as tmp:
        archive = os.path.join(tmp, "image.tar")
        subprocess.run(["docker", "save", "-o", archive, ref], check=True, timeout=600)
        with tarfile.open(archive) as outer:
            manifest = json.load(_member(outer, "manifest.json"))[0]
            for layer_path in manifest["Layers"][len(base_layers) :]:
                with tarfile.open(fileobj=_member(outer, layer_path)) as layer:
                    for path, size, data in _layer_files(layer, scan is not None):
                        if size < 0:  # whiteout: a lower layer's file removed
                            result.files.pop(path, None)
                            continue
                        result.files[path] = size
                        if data is None:
                            continue
                        if path.endswith(".dist-info/RECORD"):
                            result.contents[path] = data
                        if scan is not None and scan.search(data):
                            result.matches.append(path)
    return result


def _member(tar: tarfile.TarFile, name: str) -> Any:
    f = tar.extractfile(name)
    if f is None:
        raise RuntimeError(f"{name} missing from docker save output")
    return f


def _layer_files(layer: tarfile.TarFile, read_all: bool) -> Iterator[tuple[str, int, bytes | None]]:
    for m in layer:
        path = m.name.lstrip("./")
        base = PurePosixPath(path).name
        if base.startswith(".wh."):
            yield str(PurePosixPath(path).parent / base[4:]), -1, None
        elif m.isfile():
            keep = read_all or path.endswith(".dist-info/RECORD")
            f = layer.extractfile(m) if keep else None
            yield path, m.size, f.read() if f else None
        elif m.issym() or m.islnk():
            yield path, 0, None
