"""``python -m api.sweep`` as production's scheduler runs it: a creation whose dispatch failed
is re-dispatched by the real command, and its (local) job completes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

from common.adapters.sqlite_store import SqliteCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from tests.support.sweep_counts import sweep_counts


def test_sweep_command_recovers_a_creation_whose_dispatch_failed(tmp_path):
    """Shown to fail when the sweeper skips refused dispatches (scratch branch
    scratch/promises-break-sweep-refused, 2026-12-01)."""
    store = SqliteCreationStore(tmp_path / "creations.sqlite3")
    long_ago = lc.utcnow() - timedelta(minutes=2)
    c = lc.new(
        user_id="u",
        kind=Kind.IMAGE,
        prompt="a red fox",
        params={"count": 1, "aspect_ratio": "1:1"},
        path="local",
        now=long_ago,
    )
    store.add(c)
    store.update(c.id, lambda cur: lc.mark_dispatch_failed(cur, now=long_ago, reason="down"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(PHOENIX_DATA_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(
        [sys.executable, "-m", "api.sweep"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == sweep_counts(redispatched=1)
    done = store.get(c.id)
    assert done.status is Status.COMPLETED and done.dispatches == 1
    (ref,) = done.media  # keyed per claim: <id>/<claim token>/0.png
    assert ref.key.startswith(f"{c.id}/") and ref.key.endswith("/0.png")
    assert (tmp_path / "media" / ref.key).is_file()


def test_sweep_command_rejects_bad_configuration(tmp_path):
    env = dict(
        os.environ,
        PHOENIX_DATA_DIR=str(tmp_path),
        PHOENIX_ROLLOUT="video=celery:50",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    out = subprocess.run(
        [sys.executable, "-m", "api.sweep"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "PHOENIX_ROLLOUT" in out.stderr
