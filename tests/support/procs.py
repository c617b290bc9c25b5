"""Processes as /proc shows them: what tests that start jobs check for leftovers with."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: whoever started it must still reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_whose(proc_file: str, entry: bytes) -> list[int]:
    """Live processes whose /proc/<pid>/<proc_file> (``cmdline`` or ``environ``: NUL-separated
    entries) has ``entry`` as one of its entries."""
    found = []
    for path in Path("/proc").iterdir():
        if not path.name.isdigit():
            continue
        try:
            entries = (path / proc_file).read_bytes().split(b"\0")
        except OSError:
            continue
        if entry in entries and alive(int(path.name)):
            found.append(int(path.name))
    return found
