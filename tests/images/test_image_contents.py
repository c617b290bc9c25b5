"""The three images as built (runtime_package_dependencies on the docker_image targets: Pants
builds them, on the engine and base ./pants brought up, before this module runs), read layer by
layer from the engine with tools/image_layers.py.

Only the image's own layers (above its base) are inspected: they are what this repo puts in.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess

import pytest

from tools import image_layers as images

INFO = {
    "api": "src.python.api/docker.docker-info.json",
    "video-job": "src.python.jobs.video/docker.docker-info.json",
    "image-job": "src.python.jobs.image/docker.docker-info.json",
}
JOBS = ["video-job", "image-job"]
REVISION_LABEL = "org.opencontainers.image.revision"

# Key material: a PEM private key with a base64 body, raw or JSON-escaped as in a service-account
# key file (library code and docstrings that merely show the header, like cryptography's parsers
# or google-auth's "<key bytes>" example, do not match).
SECRET_CONTENT = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:\s|\\n)+(?:[A-Za-z0-9+/=]|\s|\\n){64,}"
)
SECRET_NAMES = re.compile(
    r"(^|/)(\.env|\.netrc|\.git-credentials|\.npmrc|\.pypirc|id_rsa|id_ed25519|id_ecdsa"
    r"|credentials(\.json)?|application_default_credentials\.json|[^/]*service[-_]?account[^/]*\.json"
    r"|[^/]*\.(key|p12|pfx|jks))$"
    r"|(^|/)\.(docker|ssh|aws|config/gcloud)/"
)
SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE|_KEY$|^KEY$)", re.I)
# Test files: a test suite directory anywhere, pytest's conftest, and our own test modules.
TEST_PATHS = re.compile(r"(^|/)tests/|(^|/)conftest\.py$|site-packages/(api|common|jobs)/.*test_")


@functools.cache
def image_id(name: str) -> str:
    return images.image_id_from_info(INFO[name])


@functools.cache
def own(name: str) -> images.ImageFiles:
    return images.own_files(image_id(name), scan=SECRET_CONTENT)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``docker run --rm --network none [--env ...] ARGS`` (no network: nothing here needs one)."""
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *flags, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", JOBS)
def test_job_image_holds_vertex_but_no_web_server_and_no_local_generator(name):
    files, dists = own(name).site_packages(), own(name).distributions()
    assert "google-genai" in dists and "common/adapters/vertex_generator.py" in files
    assert not {"flask", "gunicorn", "werkzeug"} & set(dists)
    assert not {"pillow", "imageio-ffmpeg"} & set(dists)
    assert not [p for p in files if p.startswith("common/") and "local_generator" in p]


def test_api_image_holds_no_generator_sdk():
    dists = own("api").distributions()
    assert {"flask", "gunicorn"} <= set(dists)
    assert not {"google-genai", "pillow", "imageio-ffmpeg"} & set(dists)
    ours = [p for p in own("api").site_packages() if p.startswith("common/")]
    assert ours and not [p for p in ours if "generator" in p]


@pytest.mark.parametrize("name", list(INFO))
def test_image_runs_as_a_non_root_user(name):
    user = images.inspect(image_id(name))["Config"]["User"]
    assert user not in ("", "0", "root") and not user.startswith(("0:", "root:"))
    proc = run("--entrypoint", "id", image_id(name), "-u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() not in ("", "0")


@pytest.mark.parametrize("name", list(INFO))
def test_image_carries_the_commit_it_was_built_from(name):
    head = subprocess.run(
        ["git", "-C", os.environ["PHOENIX_REPO_ROOT"], "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    labels = images.inspect(image_id(name))["Config"]["Labels"] or {}
    assert labels.get(REVISION_LABEL) == head


@pytest.mark.parametrize("name", list(INFO))
def test_image_holds_no_credentials(name):
    image = own(name)
    assert image.matches == []
    assert [p for p in image.files if SECRET_NAMES.search(p)] == []
    base_env = set(images.inspect(images.base_image())["Config"]["Env"] or [])
    added = [e for e in images.inspect(image_id(name))["Config"]["Env"] if e not in base_env]
    assert [e for e in added if SECRET_ENV.search(e.split("=", 1)[0])] == []


@pytest.mark.parametrize("name", list(INFO))
def test_image_holds_no_test_files(name):
    assert [p for p in own(name).files if TEST_PATHS.search(p)] == []


@pytest.mark.parametrize("name", JOBS)
def test_job_image_runs_a_job_and_refuses_the_generator_it_lacks(name):
    env = {"CREATION_ID": "no-such-creation", "PHOENIX_DATA_DIR": "/tmp/data"}
    vertex = run(image_id(name), env={**env, "PHOENIX_GENERATOR": "vertex"})
    # A creation that does not exist is a permanent no-op for the job: exit 0, logged as JSON.
    assert vertex.returncode == 0, vertex.stderr
    assert '"message": "job_creation_missing"' in vertex.stdout + vertex.stderr
    local = run(image_id(name), env={**env, "PHOENIX_GENERATOR": "local"})
    assert local.returncode == 2
    assert "PHOENIX_GENERATOR='local' is not in this build" in local.stderr


# What src/python/Dockerfile prunes from every image (its PRUNE list, as module names) and the
# modules each service must still import (the API versions we call).
PRUNED = [
    "google.cloud.tasks_v2beta2",
    "google.cloud.tasks_v2beta3",
    "google.cloud.firestore_admin",
    "google.cloud.firestore_admin_v1",
    "celery.bin",
    "celery.__main__",
    "click_repl",
    "prompt_toolkit",
    "wcwidth",
]
# Imports of a pruned module that stay, each inside a function no Phoenix code calls:
# Celery.start() and Celery.worker_main() run the celery command line from code; the API only
# calls send_task (common/adapters/celery_dispatch.py).
ALLOWED_IMPORTS = {("celery/app/base.py", "celery.bin.celery")}
STILL_IMPORTS = {
    "api": "api.main api.sweep common.adapters.celery_dispatch celery.app.base kombu"
    " google.cloud.tasks_v2 google.cloud.firestore google.cloud.storage",
    "video-job": "jobs.video.production google.cloud.firestore google.cloud.storage google.genai",
    "image-job": "jobs.image.production google.cloud.firestore google.cloud.storage google.genai",
}
# Run inside the image: every module named in argv[2] imports, and no module left in
# site-packages imports a pruned one, except under `try: ... except ImportError` (optional by
# the library's own design, like Celery's unused Cloud Storage result backend). Prints
# {"offenders": [[file, module], ...], "parsed": N}.
_SCAN = """
import ast, importlib, json, pathlib, sys
pruned, wanted = sys.argv[1].split(), sys.argv[2].split()
for m in wanted:
    importlib.import_module(m)
site = pathlib.Path(sys.prefix, "lib", "python3.11", "site-packages")
def names(node):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [node.module + "." + a.name for a in node.names]
    return []
def optional(tree):
    out = set()
    for t in ast.walk(tree):
        if isinstance(t, ast.Try) and any(
            "ImportError" in ast.unparse(h.type or ast.Name("BaseException")) for h in t.handlers
        ):
            out.update(id(n) for b in t.body for n in ast.walk(b))
    return out
offenders, parsed = [], 0
for f in sorted(site.rglob("*.py")):
    try:
        tree = ast.parse(f.read_bytes())
    except (SyntaxError, ValueError):
        continue
    parsed += 1
    guarded = optional(tree)
    for node in ast.walk(tree):
        for n in names(node):
            if id(node) not in guarded and any(n == p or n.startswith(p + ".") for p in pruned):
                offenders.append([str(f.relative_to(site)), n])
print(json.dumps({"offenders": offenders, "parsed": parsed}))
"""


@pytest.mark.parametrize("name", list(INFO))
def test_pruned_code_is_gone_and_nothing_left_imports_it(name):
    files = own(name).site_packages()
    paths = [m.replace(".", "/") for m in PRUNED]
    assert [p for p in files if p.startswith(tuple(f"{m}/" for m in paths))] == []
    assert [p for p in files if p in {f"{m}.py" for m in paths}] == []
    assert [p for p in files if p.endswith((".pyi", ".proto"))] == []
    assert [p for p in files if p.startswith("celery/__pycache__/__main__.")] == []
    assert "app/venv/bin/celery" not in own(name).files
    proc = run(
        "--entrypoint",
        "/app/venv/bin/python",
        image_id(name),
        "-c",
        _SCAN,
        " ".join(PRUNED),
        STILL_IMPORTS[name],
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["parsed"] > 1000  # the scan read the venv, not an empty directory
    offenders = [
        (path, module)
        for path, module in result["offenders"]
        if not any(path == p and module.startswith(m) for p, m in ALLOWED_IMPORTS)
    ]
    assert offenders == []


def test_api_image_imports_the_app():
    proc = run("--entrypoint", "/app/venv/bin/python", image_id("api"), "-c", "import api.main")
    assert proc.returncode == 0, proc.stderr


def test_the_credential_scan_finds_a_real_key_raw_or_in_a_key_file():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    key_file = json.dumps({"type": "service_account", "private_key": pem})
    assert SECRET_CONTENT.search(pem.encode()) and SECRET_CONTENT.search(key_file.encode())
    example = '"private_key": "-----BEGIN EC PRIVATE KEY-----\\n<key bytes>\\n-----END EC'
    assert not SECRET_CONTENT.search(example.encode())
    assert SECRET_NAMES.search("home/phoenix/.config/gcloud/application_default_credentials.json")
