"""Side-by-side statistics over hand-made records whose every figure is checkable by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common import cost as cost_model
from common import migration_stats as ms
from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)
MEDIA = (MediaRef("k/0.mp4", "video/mp4"),)


def make(
    path: str,
    kind: Kind = Kind.VIDEO,
    *,
    age: float = 3600,
    wait: float | None = 2,
    run: float | None = 60,
    outcome: str = "completed",
    code: str = "boom",
    attempts: int = 1,
):
    created = NOW - timedelta(seconds=age)
    c = lc.new(user_id="u", kind=kind, prompt="p", params={}, path=path, now=created)
    if wait is None:
        return c  # still pending
    claimed_at = created + timedelta(seconds=wait)
    for i in range(attempts - 1):  # earlier attempts failed retryably
        c = lc.claim(c, owner=f"o{i}", now=claimed_at, lease=LEASE, max_attempts=9)
        c = lc.release_for_retry(
            c, owner=f"o{i}", now=claimed_at, error=CreationError("flaky", "x"), max_attempts=9
        )
    c = lc.claim(c, owner="o", now=claimed_at, lease=LEASE, max_attempts=9)
    if outcome == "processing" or run is None:
        return c
    done = claimed_at + timedelta(seconds=run)
    if outcome == "completed":
        return lc.complete(c, owner="o", now=done, media=MEDIA)
    return lc.fail(c, owner="o", now=done, error=CreationError(code, "failed"))


def group(report, path, kind="video"):
    return next(g for g in report.groups if g.path == path and g.kind == kind)


def test_percentile_is_nearest_rank():
    assert ms.percentile([], 50) is None
    assert ms.percentile([7.0], 99) == 7.0
    values = list(range(1, 101))  # 1..100
    assert ms.percentile(values, 50) == 50
    assert ms.percentile(values, 95) == 95
    assert ms.percentile(values, 99) == 99
    assert ms.percentile([3, 1, 2], 50) == 2
    assert ms.percentile([1, 2, 3, 4], 50) == 2


def test_counts_success_rate_and_failure_codes_per_path_and_kind():
    records = (
        [make("celery") for _ in range(3)]
        + [make("celery", outcome="failed", code="quota") for _ in range(2)]
        + [make("celery", outcome="failed", code="safety")]
        + [make("celery", outcome="processing")]
        + [make("celery", wait=None)]
        + [make("cloud-tasks") for _ in range(4)]
        + [make("cloud-tasks", Kind.IMAGE, run=5)]
    )
    report = ms.compute(records, now=NOW, window=timedelta(hours=24))
    assert [(g.path, g.kind) for g in report.groups] == [
        ("celery", "video"),
        ("cloud-tasks", "image"),
        ("cloud-tasks", "video"),
    ]
    legacy = group(report, "celery")
    assert (legacy.count, legacy.completed, legacy.failed, legacy.in_progress) == (8, 3, 3, 2)
    assert legacy.success_rate == pytest.approx(0.5)
    assert legacy.failure_codes == {"quota": 2, "safety": 1}
    assert group(report, "cloud-tasks").success_rate == 1.0
    assert group(report, "cloud-tasks", "image").count == 1


def test_queue_wait_and_run_time_percentiles():
    records = [
        make("cloud-tasks", wait=w, run=r)
        for w, r in [(1, 50), (2, 60), (3, 70), (4, 80), (100, 300)]
    ]
    g = group(ms.compute(records, now=NOW, window=timedelta(hours=24)), "cloud-tasks")
    assert (g.queue_wait_s.p50, g.queue_wait_s.p95, g.queue_wait_s.p99) == (3, 100, 100)
    assert (g.run_time_s.p50, g.run_time_s.p95, g.run_time_s.p99) == (70, 300, 300)
    assert g.queue_wait_s.n == 5 and g.run_time_s.n == 5


def test_pending_records_have_no_wait_and_processing_ones_no_run_time():
    records = [make("celery", wait=None), make("celery", wait=7, outcome="processing")]
    g = group(ms.compute(records, now=NOW, window=timedelta(hours=24)), "celery")
    assert g.queue_wait_s.n == 1 and g.queue_wait_s.p50 == 7
    assert g.run_time_s.n == 0 and g.run_time_s.p50 is None
    assert g.success_rate is None


def test_retries_sum_attempts_beyond_the_first():
    records = [make("celery", attempts=3), make("celery", attempts=2), make("celery")]
    assert group(ms.compute(records, now=NOW, window=timedelta(hours=24)), "celery").retries == 3


def test_window_excludes_older_records():
    records = [make("celery", age=3600), make("celery", age=3 * 86400)]
    report = ms.compute(records, now=NOW, window=timedelta(hours=24))
    assert group(report, "celery").count == 1


def test_costs_prorate_fixed_cost_to_the_window_and_split_it_by_count():
    records = (
        [make("celery", run=120) for _ in range(3)]
        + [make("celery", Kind.IMAGE, run=10)]
        + [make("cloud-tasks", run=120) for _ in range(10)]
    )
    window = timedelta(hours=24)
    report = ms.compute(records, now=NOW, window=window, preset=cost_model.SEED)
    fraction = window.total_seconds() / cost_model.SECONDS_PER_MONTH
    legacy_video, legacy_image = group(report, "celery"), group(report, "celery", "image")
    # Seed preset: $38/month fixed, no variable; 3 of the 4 legacy creations are videos.
    assert legacy_video.cost_total_usd == pytest.approx(38.0 * fraction * 3 / 4)
    assert legacy_image.cost_total_usd == pytest.approx(38.0 * fraction * 1 / 4)
    assert legacy_video.cost_per_creation_usd == pytest.approx(38.0 * fraction / 4)
    jobs = group(report, "cloud-tasks")
    per_job = (120 + 5) * (0.000018 + 0.5 * 0.000002)
    assert jobs.cost_per_creation_usd == pytest.approx(per_job)
    assert jobs.cost_total_usd == pytest.approx(10 * per_job)
    assert legacy_video.cost_per_creation_usd > 100 * jobs.cost_per_creation_usd


def test_cost_curve_uses_the_measured_median_video_run_time():
    records = [make("cloud-tasks", run=r) for r in (30, 40, 50)]
    report = ms.compute(records, now=NOW, window=timedelta(hours=24))
    assert report.job_seconds == 40
    assert "3 completed videos" in report.job_seconds_source
    points = {p["creations"]: p for p in report.cost_curve}
    assert points[0]["cloud_tasks"] == 0.0
    assert points[1000]["cloud_tasks"] == pytest.approx(
        cost_model.jobs_monthly(1000, 40).total, abs=0.01
    )
    assert points[1000]["celery"] == pytest.approx(
        cost_model.legacy_monthly(1000, 40).total, abs=0.01
    )


def test_empty_window_and_json_shape():
    report = ms.compute([], now=NOW, window=timedelta(hours=1))
    d = report.to_dict()
    assert d["groups"] == []
    assert d["window"]["hours"] == 1
    assert d["cost_model"]["job_seconds"] == ms.DEFAULT_JOB_SECONDS
    full = ms.compute(
        [make("celery", outcome="failed", code="quota")], now=NOW, window=timedelta(hours=2)
    ).to_dict()["groups"][0]
    assert full["failure_codes"] == {"quota": 1}
    assert set(full["queue_wait_s"]) == {"p50", "p95", "p99", "n"}
    assert full["success_rate"] == 0.0


def _cancelled(path: str, *, while_running: bool, operation: bool = False, ran: float = 30):
    """A video of 8 s cancelled while queued, or after ``ran`` s of its job (with or without a
    Veo operation already started)."""
    created = NOW - timedelta(hours=1)
    c = lc.new(
        user_id="u",
        kind=Kind.VIDEO,
        prompt="p",
        params={"duration_seconds": 8},
        path=path,
        now=created,
    )
    if not while_running:
        return lc.cancel(c, now=created + timedelta(seconds=5))
    claimed_at = created + timedelta(seconds=2)
    c = lc.claim(c, owner="o", now=claimed_at, lease=LEASE, max_attempts=3)
    if operation:
        c = lc.record_operation(c, owner="o", now=claimed_at, operation="ops/1")
    c = lc.cancel(c, now=claimed_at + timedelta(seconds=ran - 1))
    return lc.finish_cancel(c, owner="o", now=claimed_at + timedelta(seconds=ran))


def test_cancelled_are_counted_apart_from_failed_and_outside_the_success_rate():
    records = (
        [make("cloud-tasks") for _ in range(3)]
        + [make("cloud-tasks", outcome="failed")]
        + [_cancelled("cloud-tasks", while_running=False) for _ in range(2)]
        + [_cancelled("cloud-tasks", while_running=True)]
    )
    g = group(ms.compute(records, now=NOW, window=timedelta(hours=24)), "cloud-tasks")
    assert (g.count, g.completed, g.failed, g.cancelled, g.in_progress) == (7, 3, 1, 3, 0)
    assert g.success_rate == pytest.approx(0.75)
    assert g.failure_codes == {"boom": 1}
    assert g.to_dict()["cancelled"] == 3


def test_cancel_saved_counts_the_provider_charge_only_before_it_started():
    prices = cost_model.LIST
    full_run = 60.0  # the completed videos' mean run time below
    per_second = prices.jobs.job_vcpu * prices.prices.run_usd_per_vcpu_second + (
        prices.jobs.job_memory_gib * prices.prices.run_usd_per_gib_second
    )
    veo = 8 * prices.provider.veo_usd_per_second
    records = [make("cloud-tasks", run=full_run)]
    queued = [_cancelled("cloud-tasks", while_running=False)]
    report = ms.compute(records + queued, now=NOW, window=timedelta(hours=24))
    g = group(report, "cloud-tasks")
    assert report.notes == [
        f"cancel saved ${g.cancel_saved_usd:,.2f} on cloud-tasks video (1 cancelled; provider "
        "charges already started are not counted as saved)"
    ]
    # Cancelled while queued: no Veo charge, no execution at all (run + start-up).
    assert g.cancel_saved_usd == pytest.approx(
        veo + (full_run + prices.jobs.startup_seconds) * per_second
    )
    started = [_cancelled("cloud-tasks", while_running=True, operation=True, ran=20)]
    g = group(ms.compute(records + started, now=NOW, window=timedelta(hours=24)), "cloud-tasks")
    # Veo had started: its charge is spent; only the 40 s of job not run are saved.
    assert g.cancel_saved_usd == pytest.approx((full_run - 20) * per_second)
    legacy = [_cancelled("celery", while_running=True, operation=True)]
    g = group(ms.compute(legacy, now=NOW, window=timedelta(hours=24)), "celery")
    assert g.cancel_saved_usd == 0.0  # the always-on worker costs the same either way
