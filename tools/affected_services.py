"""Which deployables does a git change affect?  (CI decides what to build, test and deploy.)

    python -m tools.affected_services --base REV [--head REV] [--repo DIR]
                                      [--format lines|json|github] [--explain]
    python -m tools.affected_services --service api --format github   # manual deploy
    python -m tools.affected_services --all --format github

Why not ``pants --changed-since``: this must run in a plain checkout (the deploy workflow's
first job, before any Pants bootstrap) and in tests, and it must answer per *deployable*, not
per target. It mirrors what Pants' dependency inference puts into each PEX:

* a service's inputs are the transitive FIRST-PARTY import closure of its entry module
  (``ast`` over the files under the source roots; absolute, ``from`` and relative imports, plus
  ``importlib.import_module("literal")``), with every package ``__init__.py`` on the way;
* plus the BUILD files of every directory above a file of the closure (``common/BUILD`` owns
  ``common/**/*.py``), plus non-Python files beside a module of the closure (package data);
* plus the service's own directory (BUILD, Dockerfile, deploy/ descriptors, static files);
* plus the global inputs every service is built from (the lockfile, pants.toml, ./pants, the
  root BUILD).

Imports are resolved by trying each source root; whatever does not resolve to a file of the
tree (stdlib, third party) is not an input: third-party changes arrive through the lockfile,
which is global. Imports inside functions count (the adapters are imported lazily but shipped).

Deleted files count: the closure is computed on the base tree AND the head tree and united, so
deleting a module the base imported affects its importers even though head no longer has it.

The diff is taken from ``merge-base(base, head)``: for a push that is ``before`` itself, for a
PR it ignores what landed on main meanwhile, and for a force push it falls back to the common
ancestor (more services, never fewer). A base that does not exist (the all-zero ``before`` of a
new branch, a commit garbage-collected after a force push) marks EVERY service affected: when
unsure, deploy.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import posixpath
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

# --- The service table: the one place that knows the deployables ------------------------------


@dataclass(frozen=True)
class Service:
    """One deployable. ``image_target``/``deploy_kind``/``descriptor`` are None for a service
    that is tracked (its changes are reported) but not deployed by .github/workflows/deploy.yml."""

    name: str
    entry: str  # entry module (repo-relative path)
    directory: str  # everything under it is an input of this service
    image_target: str | None = None  # Pants docker_image address
    deploy_kind: str | None = None  # "service" (gcloud run services replace) | "job"
    descriptor: str | None = None  # Cloud Run YAML applied by the deploy workflow

    @property
    def deployable(self) -> bool:
        return self.image_target is not None


SERVICES: tuple[Service, ...] = (
    Service(
        "api",
        entry="src/python/api/main.py",
        directory="src/python/api/",
        image_target="src/python/api:docker",
        deploy_kind="service",
        descriptor="src/python/api/deploy/service.yaml",
    ),
    Service(
        "video-job",
        entry="src/python/jobs/video/main.py",
        directory="src/python/jobs/video/",
        image_target="src/python/jobs/video:docker",
        deploy_kind="job",
        descriptor="src/python/jobs/video/deploy/job.yaml",
    ),
    Service(
        "image-job",
        entry="src/python/jobs/image/main.py",
        directory="src/python/jobs/image/",
        image_target="src/python/jobs/image:docker",
        deploy_kind="job",
        descriptor="src/python/jobs/image/deploy/job.yaml",
    ),
    # The Celery worker of the side-by-side phase: reported so CI tests it, not deployed here.
    Service(
        "legacy-worker",
        entry="src/python/jobs/legacy/worker.py",
        directory="src/python/jobs/legacy/",
    ),
)

SOURCE_ROOTS: tuple[str, ...] = ("src/python", "")  # pants.toml [source].root_patterns

# A change to any of these rebuilds every service (exact paths, or prefixes ending in "/").
GLOBAL_INPUTS: tuple[str, ...] = ("3rdparty/python/", "pants.toml", "pants", "BUILD")

# Beside a module these are documentation, not package data.
DOC_SUFFIXES: tuple[str, ...] = (".md", ".rst")

ZERO_SHA = "0" * 40


class GitError(RuntimeError):
    """A git command failed; the message carries its stderr."""


# --- Trees: the files of one revision, or of the working tree ---------------------------------


def _git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


class Tree:
    """The files of one state of the repository: names, and contents on demand."""

    def __init__(self, files: Iterable[str]) -> None:
        self.files = frozenset(files)
        self.dirs = frozenset(d for f in self.files for d in _ancestors(f))
        self._cache: dict[str, bytes | None] = {}

    def read(self, path: str) -> bytes | None:
        if path not in self.files:
            return None
        if path not in self._cache:
            self._cache[path] = self._load(path)
        return self._cache[path]

    def _load(self, path: str) -> bytes | None:
        raise NotImplementedError


class GitTree(Tree):
    """A committed revision; contents come from ``git cat-file --batch`` in one call per
    batch of paths (a closure walk reads a few dozen files)."""

    def __init__(self, repo: Path, rev: str) -> None:
        self._repo = repo
        self._rev = rev
        listing = _git(repo, "ls-tree", "-r", "-z", "--name-only", rev)
        super().__init__(p for p in listing.decode().split("\0") if p)

    def prefetch(self, paths: Iterable[str]) -> None:
        wanted = [p for p in paths if p in self.files and p not in self._cache]
        if not wanted:
            return
        out = _git(
            self._repo,
            "cat-file",
            "--batch",
            input="".join(f"{self._rev}:{p}\n" for p in wanted).encode(),
        )
        pos = 0
        for p in wanted:
            header_end = out.index(b"\n", pos)
            header = out[pos:header_end].split()
            if len(header) < 3 or header[1] == b"missing":
                self._cache[p] = None
                pos = header_end + 1
                continue
            size = int(header[2])
            start = header_end + 1
            self._cache[p] = out[start : start + size]
            pos = start + size + 1  # contents are followed by a newline

    def _load(self, path: str) -> bytes | None:
        self.prefetch([path])
        return self._cache.get(path)


class WorkTree(Tree):
    """The checkout as it is now: tracked files that still exist plus untracked, not ignored
    files (what ``git add -A`` would commit)."""

    def __init__(self, repo: Path) -> None:
        self._repo = repo
        listing = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = {p for p in listing.decode().split("\0") if p}
        super().__init__(p for p in names if (repo / p).is_file())

    def _load(self, path: str) -> bytes | None:
        try:
            return (self._repo / path).read_bytes()
        except OSError:
            return None


# --- Import closure ---------------------------------------------------------------------------


def _ancestors(path: str) -> Iterator[str]:
    """Directories containing ``path``, innermost first, ending with "" (the repo root)."""
    d = posixpath.dirname(path)
    while d:
        yield d
        d = posixpath.dirname(d)
    yield ""


def _module_of(path: str) -> tuple[str, str] | None:
    """(source root, dotted module) of a .py file, using the first root that contains it."""
    for root in SOURCE_ROOTS:
        prefix = f"{root}/" if root else ""
        if path.startswith(prefix) and path.endswith(".py"):
            parts = path[len(prefix) : -3].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return root, ".".join(parts)
    return None


def imported_modules(source: bytes, module: str, is_package: bool) -> set[str]:
    """Dotted names a module may import (absolute, relative resolved against ``module``).
    For ``from a import b`` both ``a`` and ``a.b`` are returned: ``b`` may be a submodule."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()  # a broken file imports nothing we can know; its own change still counts
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                keep = len(base_parts) - (node.level - 1)
                if keep < 0:
                    continue  # beyond the top-level package
                base = ".".join(base_parts[:keep])
                target = ".".join(p for p in (base, node.module or "") if p)
            else:
                target = node.module or ""
            if target:
                names.add(target)
            for alias in node.names:
                if alias.name != "*":
                    names.add(f"{target}.{alias.name}" if target else alias.name)
        elif (
            isinstance(node, ast.Call)
            and _is_import_module(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _resolve(tree: Tree, dotted: str) -> list[str]:
    """Files that importing ``dotted`` loads from this tree: the module's file and the
    ``__init__.py`` of every package on its path. Empty if it is not first-party."""
    parts = dotted.split(".")
    for root in SOURCE_ROOTS:
        prefix = f"{root}/" if root else ""
        base = prefix + "/".join(parts)
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in tree.files:
                inits = [f"{prefix}{'/'.join(parts[:i])}/__init__.py" for i in range(1, len(parts))]
                return [candidate, *(p for p in inits if p in tree.files)]
        if base in tree.dirs and f"{base}/__init__.py" not in tree.files:
            # A namespace package: importing it loads nothing, but its parents' inits.
            inits = [f"{prefix}{'/'.join(parts[:i])}/__init__.py" for i in range(1, len(parts))]
            return [p for p in inits if p in tree.files]
    return []


def import_closure(tree: Tree, entry: str) -> set[str]:
    """Every first-party .py file the entry module transitively imports (entry included)."""
    if entry not in tree.files:
        return set()
    seen: set[str] = set()
    frontier = [entry]
    located = _module_of(entry)
    if located:  # the entry's own packages are imported before it runs
        frontier.extend(_resolve(tree, located[1])[1:])
    while frontier:
        batch = [p for p in dict.fromkeys(frontier) if p not in seen]
        frontier = []
        if isinstance(tree, GitTree):
            tree.prefetch(batch)
        for path in batch:
            seen.add(path)
            loc = _module_of(path)
            source = tree.read(path)
            if loc is None or source is None:
                continue
            for dotted in imported_modules(source, loc[1], path.endswith("/__init__.py")):
                frontier.extend(p for p in _resolve(tree, dotted) if p not in seen)
    return seen


def service_inputs(tree: Tree, service: Service) -> set[str]:
    """Files of ``tree`` whose change affects ``service`` (global inputs excluded)."""
    closure = import_closure(tree, service.entry)
    inputs = set(closure)
    module_dirs = {posixpath.dirname(p) for p in closure}
    for path in closure:
        for d in _ancestors(path):
            build = f"{d}/BUILD" if d else "BUILD"
            if build in tree.files:
                inputs.add(build)
    for path in tree.files:
        if path.startswith(service.directory):
            inputs.add(path)
        elif (
            posixpath.dirname(path) in module_dirs
            and not path.endswith(".py")
            and not path.endswith(DOC_SUFFIXES)
        ):
            inputs.add(path)  # package data beside a module of the closure
    return inputs


def is_global_input(path: str) -> bool:
    return any(path.startswith(g) if g.endswith("/") else path == g for g in GLOBAL_INPUTS)


# --- Change detection -------------------------------------------------------------------------


@dataclass
class Result:
    affected: list[str]  # service names, in SERVICES order
    reasons: dict[str, str] = field(default_factory=dict)  # service -> one file that did it
    changed: list[str] = field(default_factory=list)
    global_change: bool = False
    base: str | None = None
    head: str | None = None


def resolve_rev(repo: Path, rev: str) -> str | None:
    """The commit ``rev`` names, or None if it does not exist here."""
    if not rev or set(rev) == {"0"}:
        return None
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    except GitError:
        return None


def changed_files(repo: Path, base: str, head: str | None) -> list[str]:
    """Paths added, modified or deleted between ``base`` and ``head`` (None: the working tree,
    including untracked files). Renames are reported as delete + add: both paths count."""
    args = ["diff", "--name-only", "-z", "--no-renames", base]
    if head is not None:
        args.append(head)
    names = set(_git(repo, *args).decode().split("\0"))
    if head is None:
        untracked = _git(repo, "ls-files", "-z", "--others", "--exclude-standard")
        names.update(untracked.decode().split("\0"))
    return sorted(n for n in names if n)


def affected_services(
    repo: Path | str,
    base: str,
    head: str | None = None,
    services: Sequence[Service] = SERVICES,
) -> Result:
    """The services whose inputs differ between ``base`` and ``head`` (None = working tree)."""
    repo = Path(repo)
    head_sha = resolve_rev(repo, head) if head is not None else None
    if head is not None and head_sha is None:
        raise GitError(f"head revision {head!r} does not exist in {repo}")
    base_sha = resolve_rev(repo, base)
    if base_sha is None:
        return Result(
            affected=[s.name for s in services],
            reasons={s.name: f"base {base!r} unknown: everything" for s in services},
            global_change=True,
            base=None,
            head=head_sha,
        )
    try:
        merge_base = _git(repo, "merge-base", base_sha, head_sha or "HEAD").decode().strip()
    except GitError:
        merge_base = base_sha  # unrelated histories: compare trees directly
    changed = changed_files(repo, merge_base, head_sha)
    result = Result(affected=[], changed=changed, base=merge_base, head=head_sha)
    if not changed:
        return result

    global_hits = [p for p in changed if is_global_input(p)]
    result.global_change = bool(global_hits)
    old_tree = GitTree(repo, merge_base)
    new_tree: Tree = GitTree(repo, head_sha) if head_sha else WorkTree(repo)
    changed_set = set(changed)
    for service in services:
        if global_hits:
            result.affected.append(service.name)
            result.reasons[service.name] = global_hits[0]
            continue
        inputs = service_inputs(old_tree, service) | service_inputs(new_tree, service)
        # A brand-new file under the service directory is in neither tree's listing above
        # only if it was deleted again; the prefix test catches every path regardless.
        hits = sorted(p for p in changed_set if p in inputs or p.startswith(service.directory))
        if hits:
            result.affected.append(service.name)
            result.reasons[service.name] = hits[0]
    return result


# --- Output -----------------------------------------------------------------------------------


def deploy_matrix(names: Iterable[str], services: Sequence[Service] = SERVICES) -> list[dict]:
    """Matrix entries for .github/workflows/deploy.yml: only deployable services."""
    wanted = set(names)
    return [
        {
            "service": s.name,
            "image_target": s.image_target,
            "deploy_kind": s.deploy_kind,
            "descriptor": s.descriptor,
        }
        for s in services
        if s.name in wanted and s.deployable
    ]


def render(result: Result, fmt: str, services: Sequence[Service] = SERVICES) -> str:
    if fmt == "lines":
        return "".join(f"{name}\n" for name in result.affected)
    matrix = deploy_matrix(result.affected, services)
    if fmt == "json":
        return (
            json.dumps(
                {
                    "affected": result.affected,
                    "services": {s.name: s.name in result.affected for s in services},
                    "reasons": result.reasons,
                    "global": result.global_change,
                    "base": result.base,
                    "head": result.head,
                    "changed_files": result.changed,
                    "deploy_matrix": matrix,
                },
                indent=2,
            )
            + "\n"
        )
    if fmt == "github":
        compact = (",", ":")  # one line per output: $GITHUB_OUTPUT is line-based
        lines = [f"{s.name}={'true' if s.name in result.affected else 'false'}" for s in services]
        lines += [
            f"matrix={json.dumps(result.affected, separators=compact)}",
            f"deploy_matrix={json.dumps(matrix, separators=compact)}",
            f"any={'true' if result.affected else 'false'}",
            f"any_deployable={'true' if matrix else 'false'}",
            f"global={'true' if result.global_change else 'false'}",
        ]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def main(argv: Sequence[str] | None = None) -> int:
    names = [s.name for s in SERVICES]
    parser = argparse.ArgumentParser(
        prog="python -m tools.affected_services",
        description="Print the services affected by the git diff base..head.",
    )
    parser.add_argument("--base", help="base revision (e.g. origin/main, or a push's before SHA)")
    parser.add_argument("--head", help="head revision (default: the working tree)")
    parser.add_argument("--repo", default=".", help="repository directory (default: .)")
    parser.add_argument("--format", choices=("lines", "json", "github"), default="lines")
    parser.add_argument(
        "--service",
        action="append",
        choices=names,
        default=[],
        help="report this service as affected without diffing (manual deploy; repeatable)",
    )
    parser.add_argument("--all", action="store_true", help="report every service as affected")
    parser.add_argument(
        "--explain", action="store_true", help="print why each service is affected (stderr)"
    )
    args = parser.parse_args(argv)

    if args.all or args.service:
        chosen = names if args.all else [n for n in names if n in args.service]
        result = Result(affected=chosen, reasons={n: "requested" for n in chosen})
    elif args.base:
        try:
            result = affected_services(Path(args.repo), args.base, args.head)
        except GitError as exc:
            print(f"affected_services: {exc}", file=sys.stderr)
            return 2
    else:
        parser.error("--base is required unless --service or --all is given")

    if args.explain or os.environ.get("GITHUB_ACTIONS") == "true":
        for name in names:
            why = result.reasons.get(name)
            print(f"{name}: {'affected by ' + why if why else 'unchanged'}", file=sys.stderr)
    sys.stdout.write(render(result, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
