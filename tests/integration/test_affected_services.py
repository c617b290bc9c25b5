"""tools.affected_services against real git history, answered by the repository's real Pants.

The repository's files (as they are in this checkout) are copied into a temporary git
repository and committed; each scenario then commits a change on a branch from that snapshot
and asks the tool, which runs this repository's ``./pants`` (same pants.toml, same BUILD files,
same dependency inference) inside the copy. Nested under ``./pants test``, that Pants has its
own build root, workdir and pantsd (stopped by pid at the end); it reuses the checkout's
``.pants-bootstrap`` venv and the user's named caches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.third_kind import AUDIO
from tools import affected_services as aff

API, VIDEO, IMAGE = "phoenix-api", "phoenix-video-job", "phoenix-image-job"
ALL_THREE = [API, IMAGE, VIDEO]  # sorted by image target address


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,  # the developer's hooks/signing must not interfere
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def _source_root() -> Path:
    env = os.environ.get("PHOENIX_REPO_ROOT")
    root = Path(env).resolve() if env else Path(__file__).resolve().parents[2]
    if not (root / "pants").is_file() or not (root / ".git").exists():
        pytest.fail(f"no checkout at {root} (set PHOENIX_REPO_ROOT to the repository root)")
    return root


def _stop_pantsd(repo: Path) -> None:
    for pid_file in repo.glob(".pids/*/pantsd/pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Iterator[Path]:
    src = _source_root()
    dst = tmp_path_factory.mktemp("affected") / "repo"
    listing = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        path = src / rel
        if path.is_symlink():
            # Tracked relative links (a service's Dockerfile -> the shared one) stay links;
            # absolute ones (a worktree's .pants-bootstrap) are machine state, not the repo.
            target = os.readlink(path)
            if not os.path.isabs(target):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / rel).symlink_to(target)
        elif path.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)
    bootstrap = src / ".pants-bootstrap"
    if bootstrap.exists():
        (dst / ".pants-bootstrap").symlink_to(bootstrap.resolve())
    git(dst, "init", "-q", "-b", "main")
    exclude = dst / ".git/info/exclude"
    exclude.write_text("/.pants-bootstrap\n/.pants.d/\n/.pids/\n/dist/\n/.tools\n")
    git(dst, "add", "-A")
    git(dst, "commit", "-q", "-m", "snapshot")
    git(dst, "tag", "snapshot")
    yield dst
    _stop_pantsd(dst)


def scenario(repo: Path, name: str, files: dict[str, str], delete: tuple[str, ...] = ()) -> str:
    """A branch from the snapshot with one commit; returns the base (the snapshot)."""
    git(repo, "checkout", "-q", "-f", "-B", name, "snapshot")
    git(repo, "clean", "-q", "-fd")
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for rel in delete:
        (repo / rel).unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", name)
    return git(repo, "rev-parse", "snapshot")


def touched(repo: Path, rel: str) -> dict[str, str]:
    """``rel`` as in the snapshot, plus a comment line."""
    return {rel: git(repo, "show", f"snapshot:{rel}") + "\n# touched by the test\n"}


def job_entry(repo: Path, kind: str) -> str:
    """The entry module of the job's deployed PEX: production.py where the production target
    is lean (the local generator only in main.py's -local variant), else main.py."""
    production = f"src/python/jobs/{kind}/production.py"
    return production if (repo / production).is_file() else f"src/python/jobs/{kind}/main.py"


def names(repo: Path, base: str) -> list[str]:
    return aff.affected_services(repo, base).names


def test_creation_lifecycle_change_affects_all_three(repo):
    base = scenario(repo, "lifecycle", touched(repo, "src/python/common/domain/creation.py"))
    result = aff.affected_services(repo, base)
    assert result.names == ALL_THREE
    assert not result.global_change
    assert {d.image_target: d.deploy_dir for d in result.affected} == {
        "src/python/api:docker": "src/python/api/deploy",
        "src/python/jobs/image:docker": "src/python/jobs/image/deploy",
        "src/python/jobs/video:docker": "src/python/jobs/video/deploy",
    }


def test_change_inside_one_job_stays_in_that_job(repo):
    base = scenario(repo, "video", touched(repo, job_entry(repo, "video")))
    assert names(repo, base) == [VIDEO]
    if job_entry(repo, "video").endswith("production.py"):
        # main.py is the local variant's entry only: not in the deployed image.
        base = scenario(repo, "video-local", touched(repo, "src/python/jobs/video/main.py"))
        assert names(repo, base) == []


def test_module_only_the_jobs_import_affects_both_jobs_not_the_api(repo):
    # The Vertex generator is imported lazily by the jobs only; the API's PEX has none of it.
    base = scenario(repo, "vertex", touched(repo, "src/python/common/adapters/vertex_generator.py"))
    assert names(repo, base) == [IMAGE, VIDEO]


def test_docs_tests_and_workflows_affect_nothing(repo):
    files = touched(repo, "README.md")
    files.update(touched(repo, "tests/unit/test_sweeper.py"))
    files.update(touched(repo, ".github/workflows/ci.yml"))
    base = scenario(repo, "docs", files)
    result = aff.affected_services(repo, base)
    assert result.names == [] and result.changed  # something changed, nothing deployable


def test_lockfile_change_affects_everything_through_pants(repo):
    base = scenario(repo, "lock", touched(repo, "3rdparty/python/python-default.lock"))
    result = aff.affected_services(repo, base)
    assert result.names == ALL_THREE
    assert not result.global_change  # Pants saw it: the requirements depend on the lockfile


def test_unknown_base_means_everything(repo):
    scenario(repo, "unknown-base", {})
    for base in (aff.ZERO_SHA, "deadbeef" * 5):
        result = aff.affected_services(repo, base)
        assert result.names == ALL_THREE and result.global_change


def test_merge_base_ignores_what_landed_on_main_meanwhile(repo):
    base = scenario(repo, "feature", touched(repo, job_entry(repo, "image")))
    feature = git(repo, "rev-parse", "HEAD")
    # main moves on with a change that would affect everything...
    git(repo, "checkout", "-q", "-B", "main-later", base)
    (repo / "src/python/common/domain/creation.py").write_text(
        (repo / "src/python/common/domain/creation.py").read_text() + "\n# later on main\n"
    )
    git(repo, "commit", "-q", "-am", "main moves on")
    main_tip = git(repo, "rev-parse", "HEAD")
    # ...and the PR (feature checked out, base = main's tip) still affects only its own job.
    git(repo, "checkout", "-q", feature)
    assert names(repo, main_tip) == [IMAGE]


def test_untracked_package_data_affects_only_the_api(repo):
    # Not committed, not even added: Pants diffs the working tree, and static/* is a
    # resources() target the API's sources depend on.
    base = scenario(repo, "worktree", {})
    (repo / "src/python/api/static/extra.css").write_text("body {}\n")
    assert names(repo, base) == [API]


def new_kind_folder(kind: str) -> dict[str, str]:
    """What adding a kind puts beside its registry entry: jobs/<kind>/ with its two one-line
    entrypoints, deploy/ and a BUILD of one macro call (PEXes + a docker_image tagged
    cloud-run, phoenix-<kind>-job), plus an untagged image for local use."""
    entry = """
        import sys

        from common.domain.kinds import Kind
        from common.generators import PRODUCTION
        from common.job_main import main

        if __name__ == "__main__":
            sys.exit(main(Kind({kind!r}), generators=PRODUCTION))
        """
    return {
        f"src/python/jobs/{kind}/__init__.py": "",
        f"src/python/jobs/{kind}/production.py": entry.format(kind=kind),
        f"src/python/jobs/{kind}/main.py": entry.format(kind=kind)
        .replace("common.generators import PRODUCTION", "common.local_generators import ALL")
        .replace("generators=PRODUCTION", "generators=ALL"),
        f"src/python/jobs/{kind}/Dockerfile": "FROM python:3.11-slim-bookworm\n",
        f"src/python/jobs/{kind}/deploy/job.yaml": "kind: Job\n",
        f"src/python/jobs/{kind}/BUILD": f"""
            phoenix_job("{kind}")
            # An image for local use only: not tagged cloud-run, never deployed.
            phoenix_image(
                name="docker-dev",
                pex="{kind}-job-local",
                pex_path="src.python.jobs.{kind}/{kind}-job-local.pex",
                repository="phoenix-{kind}-dev",
                deployed=False,
            )
            """,
    }


def test_a_new_kind_is_its_job_folder_only_and_untagged_images_are_not_deployed(repo):
    """The test-only third kind's registry entry (tests/support/third_kind.py) names its job;
    its folder is all Pants needs to answer for it."""
    job = AUDIO.job
    base = scenario(repo, "new-kind", new_kind_folder(AUDIO.kind.value))
    result = aff.affected_services(repo, base)
    assert result.names == [job]
    assert result.affected[0].deploy_dir == f"src/python/jobs/{AUDIO.kind.value}/deploy"
    # From now on it is one of the deployables: a shared change reaches it too.
    git(repo, "tag", "-f", "with-audio")
    (repo / "src/python/common/domain/creation.py").write_text(
        (repo / "src/python/common/domain/creation.py").read_text() + "\n# shared\n"
    )
    git(repo, "commit", "-q", "-am", "shared change")
    assert names(repo, "with-audio") == [API, job, IMAGE, VIDEO]


def test_cli_github_outputs_and_manual_service(repo, capsys):
    base = scenario(repo, "cli", touched(repo, job_entry(repo, "image")))
    assert aff.main(["--repo", str(repo), "--base", base, "--format", "github"]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert json.loads(out["deploy_matrix"]) == [
        {
            "service": IMAGE,
            "image_target": "src/python/jobs/image:docker",
            "deploy_dir": "src/python/jobs/image/deploy",
        }
    ]
    assert out["any_deployable"] == "true" and out["global"] == "false"

    assert aff.main(["--repo", str(repo), "--service", API, "--format", "lines"]) == 0
    assert capsys.readouterr().out == f"{API}\n"
    assert aff.main(["--repo", str(repo), "--service", "no-such", "--format", "lines"]) == 2
    assert "no-such" in capsys.readouterr().err
    assert aff.main(["--repo", str(repo), "--base", base, "--head", "no-such-rev"]) == 2
    # A head that is not checked out cannot be answered (Pants reads the working tree).
    assert aff.main(["--repo", str(repo), "--base", base, "--head", base]) == 2


def test_a_broken_build_file_fails_loudly(repo):
    base = scenario(repo, "broken", {"src/python/jobs/video/BUILD": "pex_binary(name=\n"})
    with pytest.raises(aff.PantsError):
        aff.affected_services(repo, base)


# Last: a pants.toml change restarts the nested Pants' scheduler (slow), twice.
def test_pants_configuration_is_global(repo):
    base = scenario(repo, "toml", touched(repo, "pants.toml"))
    result = aff.affected_services(repo, base)
    assert result.names == ALL_THREE and result.global_change
