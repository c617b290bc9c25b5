"""A fake command-line tool (``gcloud``, ``docker``) for testing the deploy scripts.

The deploy scripts are shell that calls ``gcloud``; what they do is exactly the list of calls
they make. ``install`` writes an executable named NAME into a directory the test puts first on
PATH. Each call appends one JSON line to a log: the argv and, for every argument that names a
file (``FILE`` or ``--flag=FILE``), its content at call time (rendered descriptors are
temporary files the script deletes afterwards). The answer comes from the first rule whose
``argv`` is a prefix of the call's argv; without one, ``describe`` fails like a missing
resource (exit 1, NOT_FOUND) and anything else succeeds silently.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """#!{python} -S
import json, os, sys
argv = sys.argv[1:]
files = {{}}
for arg in argv:
    path = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            files[arg] = f.read()
with open({log!r}, "a", encoding="utf-8") as f:
    f.write(json.dumps({{"argv": argv, "files": files}}) + "\\n")
with open({rules!r}, encoding="utf-8") as f:
    rules = json.load(f)
for rule in rules:
    if argv[: len(rule["argv"])] == rule["argv"]:
        sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
if "describe" in argv[:5]:
    sys.stderr.write("ERROR: (NOT_FOUND) fake: no such resource\\n")
    sys.exit(1)
"""


@dataclass(frozen=True)
class Call:
    argv: list[str]
    files: dict[str, str]

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value`` (last one wins), or None."""
        found = None
        for arg in self.argv:
            if arg.startswith(f"--{name}="):
                found = arg.split("=", 1)[1]
        return found

    def flags(self, name: str) -> list[str]:
        return [a.split("=", 1)[1] for a in self.argv if a.startswith(f"--{name}=")]

    def startswith(self, *words: str) -> bool:
        return self.argv[: len(words)] == list(words)


class FakeCli:
    def __init__(self, bin_dir: Path, name: str) -> None:
        self.log = bin_dir / f"{name}.calls.jsonl"
        self.rules_file = bin_dir / f"{name}.rules.json"
        self.rules_file.write_text("[]")
        exe = bin_dir / name
        exe.write_text(
            _SCRIPT.format(python=sys.executable, log=str(self.log), rules=str(self.rules_file))
        )
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def answer(self, argv: list[str], stdout: str = "", rc: int = 0, stderr: str = "") -> None:
        rules = json.loads(self.rules_file.read_text())
        rules.append({"argv": argv, "stdout": stdout, "rc": rc, "stderr": stderr})
        self.rules_file.write_text(json.dumps(rules))

    def calls(self) -> list[Call]:
        if not self.log.exists():
            return []
        return [Call(**json.loads(line)) for line in self.log.read_text().splitlines()]

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


def install(bin_dir: Path, name: str) -> FakeCli:
    bin_dir.mkdir(parents=True, exist_ok=True)
    return FakeCli(bin_dir, name)


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The test's environment with ``bin_dir`` first on PATH (ahead of any real gcloud)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CLOUDSDK_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
