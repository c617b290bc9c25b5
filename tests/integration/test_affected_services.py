"""tools.affected_services against real git repositories (git init, real commits).

A miniature of the monorepo proves each rule on its own (shared code, one service's directory,
docs, the lockfile, a module only the jobs import, a deleted module, relative imports); then a
copy of the real ``src/python`` proves the rules hold for the actual import graph, where a
change to the creation lifecycle must redeploy all three services.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools import affected_services as aff
from tools.affected_services import affected_services

ALL_THREE = ["api", "video-job", "image-job"]


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


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


MINI = {
    "pants.toml": "[GLOBAL]\npants_version = '2.17.1'\n",
    "BUILD": "# root\n",
    "README.md": "# Phoenix\n",
    "docs/notes.md": "notes\n",
    ".github/workflows/ci.yml": "on: push\n",
    "3rdparty/python/requirements.txt": "flask\n",
    "3rdparty/python/python-default.lock": "{}\n",
    "tests/unit/test_x.py": "from common import x\n",
    "src/python/common/__init__.py": "",
    "src/python/common/BUILD": "python_sources(sources=['**/*.py'])\n",
    "src/python/common/x.py": "import os\n\nVALUE = 1\n",
    "src/python/common/unused.py": "VALUE = 3\n",
    "src/python/common/domain/__init__.py": "",
    # Relative import: common.domain.model -> common.domain.rules
    "src/python/common/domain/model.py": "from .rules import RULE\n",
    "src/python/common/domain/rules.py": "RULE = 1\n",
    # Only the jobs import this (lazily, inside a function, like the real adapters).
    "src/python/common/job_only.py": """
        def run():
            from common.domain.model import RULE
            return RULE
        """,
    "src/python/api/__init__.py": "",
    "src/python/api/BUILD": "pex_binary(name='api', entry_point='main.py')\n",
    "src/python/api/main.py": """
        import flask

        from common import x
        from api.routes import ROUTES
        """,
    "src/python/api/routes.py": "ROUTES = []\n",
    "src/python/api/static/app.js": "// js\n",
    "src/python/jobs/__init__.py": "",
    "src/python/jobs/BUILD": "python_sources()\n",
    "src/python/jobs/video/__init__.py": "",
    "src/python/jobs/video/main.py": """
        import common.x
        import common.job_only
        """,
    "src/python/jobs/video/Dockerfile": "FROM python:3.11-slim\n",
    "src/python/jobs/image/__init__.py": "",
    "src/python/jobs/image/main.py": """
        from common import job_only, x
        """,
    "src/python/jobs/image/deploy/job.yaml": "kind: Job\n",
}


@pytest.fixture
def mini(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "mini"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, MINI)
    return repo, commit(repo, "initial")


def change(repo: Path, base: str, files: dict[str, str], delete: tuple[str, ...] = ()) -> list[str]:
    write(repo, files)
    for rel in delete:
        (repo / rel).unlink()
    head = commit(repo, "change")
    return affected_services(repo, base, head).affected


def test_change_in_common_affects_all_three(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/common/x.py": "VALUE = 2\n"}) == ALL_THREE


def test_change_in_image_job_affects_only_image_job(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/jobs/image/main.py": "from common import x\n"}) == [
        "image-job"
    ]


def test_change_in_video_job_affects_only_video_job(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/jobs/video/Dockerfile": "FROM python:3.12-slim\n"}) == [
        "video-job"
    ]


def test_docs_tests_and_workflows_affect_nothing(mini):
    repo, base = mini
    affected = change(
        repo,
        base,
        {
            "README.md": "# Phoenix!\n",
            "docs/notes.md": "more\n",
            "tests/unit/test_x.py": "from common import x  # noqa\n",
            ".github/workflows/ci.yml": "on: [push]\n",
        },
    )
    assert affected == []


def test_lockfile_change_affects_everything(mini):
    repo, base = mini
    result = affected_services(
        repo, base, _commit_change(repo, {"3rdparty/python/python-default.lock": '{"x": 1}\n'})
    )
    assert result.affected == [*ALL_THREE, "legacy-worker"]
    assert result.global_change


def test_pants_toml_change_affects_everything(mini):
    repo, base = mini
    assert change(repo, base, {"pants.toml": "[GLOBAL]\n"}) == [*ALL_THREE, "legacy-worker"]


def test_module_only_jobs_import_affects_both_jobs_not_api(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/common/job_only.py": "def run():\n    return 2\n"}) == [
        "video-job",
        "image-job",
    ]


def test_relative_import_is_followed(mini):
    repo, base = mini
    # common.domain.rules is reached only via `from .rules import RULE` in common.domain.model,
    # which only the jobs import.
    assert change(repo, base, {"src/python/common/domain/rules.py": "RULE = 2\n"}) == [
        "video-job",
        "image-job",
    ]


def test_package_init_on_the_path_counts(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/common/domain/__init__.py": "X = 1\n"}) == [
        "video-job",
        "image-job",
    ]


def test_unimported_module_and_service_build_file(mini):
    repo, base = mini
    assert change(repo, base, {"src/python/common/unused.py": "VALUE = 4\n"}) == []
    # common/BUILD owns every common module: all services that import common.
    assert change(repo, base, {"src/python/common/BUILD": "python_sources()\n"}) == ALL_THREE


def test_deleted_common_module_affects_its_importers(mini):
    repo, base = mini
    # Head no longer has common/x.py (the importers are broken, which CI will report); the
    # base tree's closure still links it to all three services.
    assert change(repo, base, {}, delete=("src/python/common/x.py",)) == ALL_THREE


def test_deleted_jobs_only_module(mini):
    repo, base = mini
    assert change(repo, base, {}, delete=("src/python/common/job_only.py",)) == [
        "video-job",
        "image-job",
    ]


def test_working_tree_mode_sees_uncommitted_and_untracked_files(mini):
    repo, base = mini
    write(repo, {"src/python/api/routes.py": "ROUTES = [1]\n"})
    assert affected_services(repo, base).affected == ["api"]
    git(repo, "checkout", "--", ".")
    write(repo, {"src/python/jobs/video/deploy/job.yaml": "kind: Job\n"})  # untracked
    assert affected_services(repo, base).affected == ["video-job"]


def test_unknown_base_means_everything(mini):
    repo, _ = mini
    head = git(repo, "rev-parse", "HEAD")
    for base in (aff.ZERO_SHA, "deadbeef" * 5):
        result = affected_services(repo, base, head)
        assert result.affected == [*ALL_THREE, "legacy-worker"]


def test_merge_base_ignores_what_landed_on_main_meanwhile(mini):
    repo, base = mini
    git(repo, "checkout", "-q", "-b", "feature")
    feature = _commit_change(repo, {"src/python/jobs/image/main.py": "from common import x\n"})
    git(repo, "checkout", "-q", "main")
    main_head = _commit_change(repo, {"src/python/common/x.py": "VALUE = 9\n"})
    # PR view: base = main's tip, head = the feature branch -> only the feature's own change.
    assert affected_services(repo, main_head, feature).affected == ["image-job"]


def _commit_change(repo: Path, files: dict[str, str]) -> str:
    write(repo, files)
    return commit(repo, "change")


def test_cli_github_format(mini, capsys):
    repo, base = mini
    head = _commit_change(repo, {"src/python/jobs/image/main.py": "from common import x\n"})
    assert (
        aff.main(["--repo", str(repo), "--base", base, "--head", head, "--format", "github"]) == 0
    )
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["api"] == "false" and out["video-job"] == "false" and out["image-job"] == "true"
    assert out["legacy-worker"] == "false"
    assert json.loads(out["matrix"]) == ["image-job"]
    assert json.loads(out["deploy_matrix"]) == [
        {
            "service": "image-job",
            "image_target": "src/python/jobs/image:docker",
            "deploy_kind": "job",
            "descriptor": "src/python/jobs/image/deploy/job.yaml",
        }
    ]
    assert out["any"] == "true" and out["global"] == "false"


def test_cli_manual_service_and_bad_head(mini, capsys):
    repo, _ = mini
    assert aff.main(["--service", "video-job", "--format", "lines"]) == 0
    assert capsys.readouterr().out == "video-job\n"
    assert aff.main(["--repo", str(repo), "--base", "HEAD", "--head", "no-such-rev"]) == 2


def test_legacy_worker_is_tracked_but_not_deployed(mini):
    repo, base = mini
    head = _commit_change(
        repo,
        {
            "src/python/jobs/legacy/__init__.py": "",
            "src/python/jobs/legacy/worker.py": "from common import x\n",
        },
    )
    result = affected_services(repo, base, head)
    assert result.affected == ["legacy-worker"]
    assert aff.deploy_matrix(result.affected) == []


# --- The real layout --------------------------------------------------------------------------


def _real_root() -> Path:
    env = os.environ.get("PHOENIX_REPO_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def test_real_layout_creation_lifecycle_change_affects_all_three(tmp_path):
    src = _real_root()
    if not (src / "src/python/common/domain/creation.py").is_file():
        pytest.fail(f"no checkout at {src} (set PHOENIX_REPO_ROOT to the repository root)")
    repo = tmp_path / "real"
    shutil.copytree(
        src / "src/python",
        repo / "src/python",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in ("pants.toml", "BUILD", "pants", "README.md"):
        if (src / name).is_file():
            shutil.copy2(src / name, repo / name)
    shutil.copytree(src / "3rdparty", repo / "3rdparty")
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, "snapshot of the real layout")

    creation = repo / "src/python/common/domain/creation.py"
    creation.write_text(creation.read_text() + "\n# touched by the test\n")
    head = commit(repo, "touch the creation lifecycle")
    result = affected_services(repo, base, head)
    for name in ALL_THREE:
        assert name in result.affected, (name, result.reasons)

    # And a change inside one job's directory stays inside that job.
    (repo / "src/python/jobs/video/main.py").write_text(
        (repo / "src/python/jobs/video/main.py").read_text() + "\n# touched\n"
    )
    assert affected_services(repo, head, commit(repo, "video only")).affected == ["video-job"]
