"""Run Python code in a fresh interpreter that sees the same modules as the test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable


def run_python(
    code: str, *, drop: Iterable[str] = (), env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``code`` (dedented) under ``sys.executable`` with this process's ``sys.path`` as
    PYTHONPATH, the environment plus ``env``, minus the variables named in ``drop`` (unless
    ``env`` sets them). Works from any working directory."""
    env = env or {}
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env}
    for name in drop:
        if name not in env:
            child_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        check=False,
    )
