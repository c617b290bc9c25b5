"""tools/docker-engine against an engine of its own (a throwaway socket, data root and pid file
under a temp dir), never the one ./pants brought up: `up` starts an engine when none answers and
reports its pid, `base` gives it a Python 3.11 base laid out like the official image without
ever trusting an image that merely carries the official name, `down` leaves nothing running.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(os.environ["PHOENIX_REPO_ROOT"]) / "tools" / "docker-engine"
OFFICIAL = "python:3.11-slim-bookworm"


def engine(
    *args: str, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def docker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=300)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


@pytest.fixture
def own_engine():
    # A short path: unix socket paths are limited to ~108 bytes.
    tmp = tempfile.mkdtemp(prefix="phx-eng-", dir="/tmp")
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp}/e.sock")
    env.pop("BASE_IMAGE", None)
    assert docker("info", env=env).returncode != 0, "nothing answers there yet"
    started = engine("up", env=env)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())
    try:
        yield env, pid, Path(tmp)
    finally:
        engine("down", str(pid), env=env)
        subprocess.run(["rm", "-rf", tmp], check=False)


def bridge_index(name: str) -> str | None:
    path = Path(f"/sys/class/net/{name}/ifindex")
    return path.read_text().strip() if path.exists() else None


def test_an_engine_beside_another_leaves_the_other_engines_bridge_alone():
    # dockerd --bridge none deletes docker0 at start, breaking the default engine's builds.
    before = bridge_index("docker0")
    tmp = tempfile.mkdtemp(prefix="phx-eng-", dir="/tmp")
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp}/e.sock")
    started = engine("up", env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert bridge_index("docker0") == before
    finally:
        engine("down", started.stdout.strip(), env=env)
        subprocess.run(["rm", "-rf", tmp], check=False)
    assert bridge_index("docker0") == before


def test_up_starts_an_engine_once_and_down_leaves_nothing_running(own_engine):
    env, pid, tmp = own_engine
    assert alive(pid)
    info = docker("info", "--format", "{{.DockerRootDir}}", env=env)
    assert info.stdout.strip() == f"{tmp}/e-root"
    again = engine("up", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "", "answering: nothing started"
    assert engine("down", str(pid), env=env).returncode == 0
    assert not alive(pid)
    assert docker("info", env=env).returncode != 0


def test_base_builds_a_local_python_image_with_the_official_layout(own_engine):
    env, _, _ = own_engine
    base = engine("base", env=env)
    assert base.returncode == 0, base.stderr
    name = base.stdout.strip()
    # No registry answers here (the official image cannot be pulled): a local base, own name.
    assert name and name != OFFICIAL
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "sh",
        "-c",
        "readlink -f /usr/local/bin/python3.11 /usr/local/bin/python3 /usr/local/bin/python;"
        " python3.11 -c 'import sys, ssl, sqlite3, venv; print(sys.version_info[:2])';"
        ' echo "$PATH $LANG"',
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:3] == ["/usr/bin/python3.11"] * 3
    assert lines[3] == "(3, 11)"
    assert lines[4].startswith("/usr/local/sbin:/usr/local/bin:") and lines[4].endswith("C.UTF-8")
    # Idempotent: the second call finds it.
    assert engine("base", env=env).stdout.strip() == name


def test_base_does_not_trust_an_image_that_only_carries_the_official_name(own_engine):
    env, _, _ = own_engine
    name = engine("base", env=env).stdout.strip()
    # A local stand-in tagged with the official name has no registry digest: still ours.
    assert docker("tag", name, OFFICIAL, env=env).returncode == 0
    assert engine("base", env=env).stdout.strip() == name
