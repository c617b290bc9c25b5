"""The chaos benchmark, small (issue 12): 100 creations through the emulator chain under the
seeded fault schedule of ``benchmarks/chaos.py`` (duplicate deliveries, SIGKILL at random
phases and from outside, task-timeout SIGTERM, store and dispatch outages, provider 429/503,
slow calls and dropped answers, a backlog beyond the stand-in's execution limit), with the
sweeper running. The full run (``benchmarks/run chaos``, 1000 creations) prints the README's
figures; this one must hold the same promises.
"""

from __future__ import annotations

from pathlib import Path

import jobs.image.main  # noqa: F401  (Pants: the job processes run the job entrypoints)
import jobs.video.main  # noqa: F401
from benchmarks import chaos


def test_a_hundred_creations_under_chaos_end_exactly_once(tmp_path: Path) -> None:
    report = chaos.run(creations=100, seed=7, work=tmp_path, drain_timeout=600)
    print("\n" + "\n".join(report.lines()))

    completed, failed = report.statuses["completed"], report.statuses["failed"]
    assert report.accepted == 100 == completed + failed
    assert report.failed_without_reason == 0
    assert report.lost == 0 and report.stuck == []
    # Billed start calls per creation <= 1 wherever no unknown-outcome fault was injected.
    assert report.doubles_plain == []
    assert report.media_overwritten == 0 and report.media_missing == 0
    assert completed >= 80  # failures are real reasons (filtered prompts, attempts), not losses
    # The faults really happened (a run without them would prove nothing).
    injected = report.injected
    assert injected["duplicate deliveries"] > 0
    assert sum(n for k, n in injected.items() if k.startswith("SIGKILL at phase")) > 0
    assert injected["SIGKILL from outside"] > 0
    assert injected["store outage windows"] > 0 and injected["dispatch outage windows"] > 0
    assert injected["provider 429"] + injected["provider 503"] > 0
    assert report.ok
