"""At-least-once delivery, for real: two job processes receive the same creation at the same
moment (Cloud Tasks retrying a timed-out dispatch, the sweeper racing a slow job, ...). The
lease claim in the SQLite store must let exactly one of them generate; the other must back off
with exit code 0 (a non-zero exit would make Cloud Run retry the duplicate).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jobs.image.main  # noqa: F401  (Pants: ship the job module into the test sandbox)
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status

ROUNDS = 5
# The winner holds its lease for at least this long while "generating", so the loser, started
# in the same millisecond, reliably finds a live lease rather than a finished record.
PROMPT = "a race between two deliveries [slow:2]"


def _job_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    env.update(
        PHOENIX_DATA_DIR=str(data_dir),
        PHOENIX_LOG_FORMAT="json",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_two_simultaneous_deliveries_generate_exactly_once(tmp_path: Path, round_no: int) -> None:
    settings = Settings(data_dir=tmp_path)
    store = SqliteCreationStore(settings.sqlite_path)
    creation = lc.new(
        user_id="racer",
        kind=Kind.IMAGE,
        prompt=PROMPT,
        params={"aspect_ratio": "1:1", "count": 1},
        path="local",
        now=lc.utcnow(),
    )
    store.add(creation)

    cmd = [sys.executable, "-m", "jobs.image.main", "--creation-id", creation.id]
    env = _job_env(tmp_path)
    # Back to back: both interpreters start within a millisecond of each other.
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        outputs.append(out.decode(errors="replace"))
    report = "\n---\n".join(outputs)

    # Both exit 0: the winner because it finished, the loser because a duplicate is not an error.
    assert [p.returncode for p in procs] == [0, 0], report

    # Exactly one generation: one claim in the logs, one duplicate, one attempt on the record.
    claimed = [o for o in outputs if "job_claimed" in o]
    duplicates = [o for o in outputs if "job_duplicate_delivery_lease_live" in o]
    assert len(claimed) == 1, report
    assert len(duplicates) == 1, report
    assert sum(o.count("job_completed") for o in outputs) == 1, report

    final = store.get(creation.id)
    assert final is not None
    assert final.status is Status.COMPLETED, final
    assert final.attempts == 1
    assert len(final.media) == 1
    written = [p for p in (settings.media_dir / creation.id).rglob("*") if p.is_file()]
    # No leftovers from a second writer: the one file is the one the record points to.
    assert [p.relative_to(settings.media_dir).as_posix() for p in written] == [final.media[0].key]
    store.close()
