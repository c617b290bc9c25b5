"""Which deployables does a git change affect?  Pants answers from its dependency graph.

    python -m tools.affected_services --base REV [--head REV] [--repo DIR]
                                      [--format lines|json|github] [--explain]
    python -m tools.affected_services --service phoenix-api --format github   # manual deploy
    python -m tools.affected_services --all --format github

A deployable is a ``docker_image`` target tagged ``cloud-run`` (``DEPLOY_TAG``); its name is
the image's ``repository`` field and what it deploys is the ``deploy/`` folder beside its BUILD
file (applied by tools/deploy/deploy-service). Adding a service is adding such a target and its
folder: nothing in this file names a service.

The question asked of Pants is

    ./pants --changed-since=MERGE_BASE --changed-dependents=transitive \\
            --filter-target-type=docker_image --filter-tag-regex='^cloud-run$' peek

so an image is affected when one of its own sources (the Dockerfile) or anything it depends
on transitively changed: the PEX target, every first-party module dependency inference puts
into it (lazy imports included), package data, BUILD files, third-party requirements whose
lockfile entry changed. Pants diffs the checkout (HEAD, plus uncommitted and untracked files)
against the merge base, so a PR ignores what landed on main meanwhile.

What Pants cannot see: its own configuration and launcher (``GLOBAL_INPUTS``): a change there
marks every deployable affected. So does a base that does not exist here (the all-zero
``before`` of a new branch, a commit gone after a force push): when unsure, deploy.

A file deleted by the change counts through its owning target in the head tree; the modules
that imported it changed too in any change that still builds (CI stops one that does not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

DEPLOY_TAG = "cloud-run"

# Inputs of every build that are not in Pants' graph (exact repo-relative paths).
GLOBAL_INPUTS: tuple[str, ...] = ("pants.toml", "pants", "pants-plugins/macros.py")

ZERO_SHA = "0" * 40

PANTSD_START_ATTEMPTS = 3


class GitError(RuntimeError):
    """A git command failed; the message carries its stderr."""


class PantsError(RuntimeError):
    """The Pants query failed (a broken BUILD file, a missing source): the message carries the
    end of its output. Never answered with a guess: CI must stop and show it."""


@dataclass(frozen=True)
class Deployable:
    """One deployable image and where its Cloud Run descriptors live."""

    service: str  # the image repository, e.g. phoenix-api
    image_target: str  # the docker_image address, e.g. src/python/api:docker
    deploy_dir: str  # repo-relative folder applied by tools/deploy/deploy-service


@dataclass
class Result:
    affected: list[Deployable]
    changed: list[str] = field(default_factory=list)
    global_change: bool = False
    reason: str = ""
    base: str | None = None
    head: str | None = None

    @property
    def names(self) -> list[str]:
        return [d.service for d in self.affected]


# --- git ------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def resolve_rev(repo: Path, rev: str) -> str | None:
    """The commit ``rev`` names, or None if it does not exist here."""
    if not rev or set(rev) == {"0"}:
        return None
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except GitError:
        return None


def changed_files(repo: Path, merge_base: str) -> list[str]:
    """What Pants will diff: merge base to HEAD, plus uncommitted and untracked files."""
    names = set(_git(repo, "diff", "--name-only", "--no-renames", merge_base).splitlines())
    names.update(_git(repo, "ls-files", "--others", "--exclude-standard").splitlines())
    return sorted(n for n in names if n)


# --- Pants ----------------------------------------------------------------------------------


def _pants(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "PANTS_DYNAMIC_UI": "false",
        "PANTS_COLORS": "false",
        "PHOENIX_SKIP_PROVISION": "1",  # a query needs no test servers
    }
    for _ in range(PANTSD_START_ATTEMPTS):
        proc = subprocess.run(
            [str(repo / "pants"), *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        # Pants' client gives a starting pantsd a fixed 60 s; on a loaded machine the daemon
        # comes up later, and the next invocation connects to it.
        if proc.returncode == 0 or "waiting for pantsd to start" not in proc.stderr:
            break
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise PantsError(f"./pants {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def query_deployables(repo: Path, changed_since: str | None) -> list[Deployable]:
    """The tagged docker_image targets: all of them, or those affected since a commit."""
    scope = (
        [f"--changed-since={changed_since}", "--changed-dependents=transitive"]
        if changed_since
        else []
    )
    out = _pants(
        repo,
        *scope,
        "--filter-target-type=docker_image",
        f"--filter-tag-regex=^{DEPLOY_TAG}$",
        "peek",
        *([] if changed_since else ["::"]),
    )
    targets = json.loads(out) if out.strip() else []
    found: dict[str, Deployable] = {}
    for t in targets:
        address = t["address"]
        spec_path, _, name = address.partition(":")
        service = t.get("repository") or name
        if service in found:
            raise PantsError(
                f"{address} and {found[service].image_target} both deploy as {service!r}: "
                "give one a different `repository`"
            )
        found[service] = Deployable(
            service=service,
            image_target=address,
            deploy_dir=f"{spec_path}/deploy" if spec_path else "deploy",
        )
    return sorted(found.values(), key=lambda d: d.image_target)


# --- the answer -------------------------------------------------------------------------------


def affected_services(repo: Path | str, base: str, head: str | None = None) -> Result:
    """The deployables a change from ``merge-base(base, HEAD)`` to the checkout affects.
    ``head``, when given, must be what is checked out (Pants reads the working tree)."""
    repo = Path(repo)
    head_sha = resolve_rev(repo, "HEAD")
    if head is not None:
        wanted = resolve_rev(repo, head)
        if wanted is None:
            raise GitError(f"head revision {head!r} does not exist in {repo}")
        if wanted != head_sha:
            raise GitError(f"head {head} ({wanted}) is not checked out in {repo} (HEAD {head_sha})")
    base_sha = resolve_rev(repo, base)
    if base_sha is None:
        return Result(
            affected=query_deployables(repo, None),
            global_change=True,
            reason=f"base {base!r} unknown here: everything",
            head=head_sha,
        )
    try:
        merge_base = _git(repo, "merge-base", base_sha, "HEAD").strip()
    except GitError:
        merge_base = base_sha  # unrelated histories: compare with the base itself
    changed = changed_files(repo, merge_base)
    result = Result(affected=[], changed=changed, base=merge_base, head=head_sha)
    global_hits = [p for p in changed if p in GLOBAL_INPUTS]
    if global_hits:
        result.global_change = True
        result.reason = f"{global_hits[0]} changed (outside Pants' graph): everything"
        result.affected = query_deployables(repo, None)
    elif changed:
        result.reason = "Pants: changed targets and their transitive dependents"
        result.affected = query_deployables(repo, merge_base)
    else:
        result.reason = "no change"
    return result


# --- output ---------------------------------------------------------------------------------


def render(result: Result, fmt: str) -> str:
    matrix = [asdict(d) for d in result.affected]
    if fmt == "lines":
        return "".join(f"{name}\n" for name in result.names)
    if fmt == "json":
        return (
            json.dumps(
                {
                    "affected": result.names,
                    "deploy_matrix": matrix,
                    "global": result.global_change,
                    "reason": result.reason,
                    "base": result.base,
                    "head": result.head,
                    "changed_files": result.changed,
                },
                indent=2,
            )
            + "\n"
        )
    if fmt == "github":
        compact = (",", ":")  # one line per output: $GITHUB_OUTPUT is line-based
        return (
            "\n".join(
                [
                    f"deploy_matrix={json.dumps(matrix, separators=compact)}",
                    f"any_deployable={'true' if matrix else 'false'}",
                    f"global={'true' if result.global_change else 'false'}",
                ]
            )
            + "\n"
        )
    raise ValueError(f"unknown format {fmt!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.affected_services",
        description="Print the deployables (tagged docker_image targets) a git change affects.",
    )
    parser.add_argument("--base", help="base revision (e.g. origin/main, or a push's before SHA)")
    parser.add_argument("--head", help="head revision; must be checked out (default: HEAD)")
    parser.add_argument("--repo", default=".", help="repository directory (default: .)")
    parser.add_argument("--format", choices=("lines", "json", "github"), default="lines")
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        help="report this deployable (image repository name) as affected without diffing "
        "(manual deploy; repeatable)",
    )
    parser.add_argument("--all", action="store_true", help="report every deployable")
    parser.add_argument("--explain", action="store_true", help="say why (stderr)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()

    try:
        if args.all or args.service:
            every = query_deployables(repo, None)
            unknown = set(args.service) - {d.service for d in every}
            if unknown:
                names = ", ".join(d.service for d in every)
                print(
                    f"affected_services: unknown service(s) {sorted(unknown)}; deployables: {names}",
                    file=sys.stderr,
                )
                return 2
            chosen = every if args.all else [d for d in every if d.service in args.service]
            result = Result(affected=chosen, reason="requested")
        elif args.base:
            result = affected_services(repo, args.base, args.head)
        else:
            parser.error("--base is required unless --service or --all is given")
    except (GitError, PantsError) as exc:
        print(f"affected_services: {exc}", file=sys.stderr)
        return 2

    if args.explain or os.environ.get("GITHUB_ACTIONS") == "true":
        print(f"affected_services: {result.reason}", file=sys.stderr)
        for path in result.changed[:50]:
            print(f"  changed: {path}", file=sys.stderr)
        for d in result.affected:
            print(f"  affected: {d.service} ({d.image_target})", file=sys.stderr)
    sys.stdout.write(render(result, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
