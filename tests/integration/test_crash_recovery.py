"""Crash recovery, small: SIGKILL real video job processes at each dangerous point (before the
claim, right after Veo accepted the operation, while polling, halfway through writing the video,
after storing it but before completing), then run the product's sweeper until everything
settles. Every creation must complete, none may be left pending/processing, and the fake Veo
must have been asked exactly once per creation (a retried job resumes the recorded operation).

The full-size run with random external kills and re-deliveries that crash again is
``benchmarks/run crash_recovery``; this test uses its machinery with the deterministic
kill points only, so its assertions cannot be flaky (see the benchmark's note on the one
unrecoverable window, which only a random kill can hit).
"""

from __future__ import annotations

from pathlib import Path

import jobs.video.main  # noqa: F401  (Pants: the child runs the video job entrypoint)
from benchmarks import crash_recovery as bench

CREATIONS_PER_POINT = 2


def test_killed_jobs_are_recovered_by_the_sweeper_without_generating_twice(
    tmp_path: Path,
) -> None:
    points = bench.SELF_KILL_POINTS
    report = bench.run(
        creations=len(points) * CREATIONS_PER_POINT,
        work=tmp_path,
        recrash=0.0,
        kill_points=points,
        settle_timeout=180.0,
    )
    print("\n" + "\n".join(report.lines()))

    assert report.kill_points == {p: CREATIONS_PER_POINT for p in points}
    # Every first delivery really died by SIGKILL.
    assert report.initial_exit_codes == {-9: report.creations}
    assert report.stuck == []
    assert report.statuses == {"completed": report.creations}
    assert report.completed_without_media == []
    # Never generated twice: one Veo operation per creation, whatever the kill point.
    assert report.generated_twice == []
    assert sum(report.veo_starts_per_creation.values()) == report.creations
    assert set(report.veo_starts_per_creation.values()) == {1}
    # A crash before the claim costs no attempt; the others cost one. (A third attempt is
    # legitimate only if a starved process missed its 2 s lease and was taken over; it would
    # still resume the same Veo operation, which the assertion above checks.)
    assert report.attempts[1] >= CREATIONS_PER_POINT
    assert set(report.attempts) <= {1, 2, 3}
    # Every re-delivery exited 0 (completed, or backed off as a duplicate).
    assert set(report.redelivery_exit_codes) == {0}
