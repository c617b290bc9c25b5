"""Side-by-side numbers for the migration dashboard, computed from creation records alone.

Pure (no I/O): give it the records of a window and it returns, per dispatch path x kind, how many
ran, how many succeeded, why the others failed, how long they waited in the queue, how long they
ran, how often they were retried and what they cost. The record is the single source of truth on
every path (the same ``run_job`` writes it), so the comparison measures the transports and not
two bookkeeping systems.

Definitions (so the numbers can be checked by hand):

- success rate = completed / (completed + failed); records still pending/processing are counted
  in ``in_progress`` and excluded (they have no outcome yet). None when nothing finished.
  Cancelled records are counted in ``cancelled``, apart from failures: the user stopped them,
  the path did not fail them, so they are not in the success rate.
- cancel saved = for each cancelled record, ``common.cost.cancel_saving``: the provider's
  price if no generation had started, plus the job run time not spent (Cloud Run Jobs only).
- queue wait = claimed_at - created_at (first claim; includes dispatch and any cold start);
  run time = finished_at - claimed_at, for finished records that were claimed.
- percentiles use the nearest-rank method (p-th = the ceil(p/100 * n)-th smallest value): always
  an observed value, stable for the small samples of an early rollout.
- retries = sum(max(attempts - 1, 0)).
- cost: ``common.cost`` prices the path for the window. A path's fixed monthly cost (Redis,
  connector, always-on worker) is prorated to the window and shared among that path's creations in
  proportion to their count; variable cost uses each group's own mean run time and attempts. So a
  lightly used legacy path shows its true (high) cost per creation.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from common import cost as cost_model
from common.domain.creation import Creation, Status

DEFAULT_JOB_SECONDS = 120.0  # the seed's "60-120 s" upper bound, when nothing was measured yet
CURVE_POINTS = (0, 250, 500, 1000, 2500, 5000, 10_000)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None for an empty sample)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Percentiles":
        return cls(
            percentile(values, 50), percentile(values, 95), percentile(values, 99), len(values)
        )

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"p50": r(self.p50), "p95": r(self.p95), "p99": r(self.p99), "n": self.n}


@dataclass(frozen=True)
class GroupStats:
    path: str
    kind: str
    count: int
    completed: int
    failed: int
    in_progress: int
    success_rate: float | None
    failure_codes: dict[str, int]
    queue_wait_s: Percentiles
    run_time_s: Percentiles
    retries: int
    mean_run_s: float | None
    cost_total_usd: float = 0.0
    cost_per_creation_usd: float | None = None
    cancelled: int = 0
    cancel_saved_usd: float = 0.0

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "count": self.count,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "in_progress": self.in_progress,
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "failure_codes": dict(self.failure_codes),
            "queue_wait_s": self.queue_wait_s.to_dict(),
            "run_time_s": self.run_time_s.to_dict(),
            "retries": self.retries,
            "cost_total_usd": round(self.cost_total_usd, 4),
            "cost_per_creation_usd": None
            if self.cost_per_creation_usd is None
            else round(self.cost_per_creation_usd, 5),
            "cancel_saved_usd": round(self.cancel_saved_usd, 4),
        }


@dataclass(frozen=True)
class MigrationReport:
    window_start: datetime
    window_end: datetime
    groups: list[GroupStats]
    job_seconds: float
    job_seconds_source: str
    cost_curve: list[dict]
    preset: str = "list"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "window": {
                "start": self.window_start.isoformat(),
                "end": self.window_end.isoformat(),
                "hours": round((self.window_end - self.window_start).total_seconds() / 3600, 3),
            },
            "groups": [g.to_dict() for g in self.groups],
            "cost_model": {
                "preset": self.preset,
                "job_seconds": round(self.job_seconds, 3),
                "job_seconds_source": self.job_seconds_source,
                "curve": self.cost_curve,
            },
            "notes": list(self.notes),
        }


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def _group(path: str, kind: str, items: list[Creation]) -> GroupStats:
    items = [c for c in items if c.status.public]  # deleting tombstones are on their way out
    completed = [c for c in items if c.status is Status.COMPLETED]
    failed = [c for c in items if c.status is Status.FAILED]
    cancelled = [c for c in items if c.status is Status.CANCELLED]
    finished = len(completed) + len(failed)
    waits = [w for c in items if (w := _seconds(c.created_at, c.claimed_at)) is not None]
    runs = [
        r for c in completed + failed if (r := _seconds(c.claimed_at, c.finished_at)) is not None
    ]
    codes = Counter(c.error.code if c.error else "unknown" for c in failed)
    return GroupStats(
        path=path,
        kind=kind,
        count=len(items),
        completed=len(completed),
        failed=len(failed),
        in_progress=len(items) - finished - len(cancelled),
        cancelled=len(cancelled),
        success_rate=(len(completed) / finished) if finished else None,
        failure_codes=dict(codes.most_common()),
        queue_wait_s=Percentiles.of(waits),
        run_time_s=Percentiles.of(runs),
        retries=sum(max(c.attempts - 1, 0) for c in items),
        mean_run_s=(sum(runs) / len(runs)) if runs else None,
    )


def _with_costs(
    groups: list[GroupStats],
    window: timedelta,
    preset: cost_model.Preset,
    job_seconds: float,
    cancelled_of: dict[tuple[str, str], list[Creation]] | None = None,
) -> list[GroupStats]:
    cancelled_of = cancelled_of or {}
    month_fraction = window.total_seconds() / cost_model.SECONDS_PER_MONTH
    per_path_count: Counter[str] = Counter()
    for g in groups:
        per_path_count[g.path] += g.count
    priced = []
    for g in groups:
        run_s = g.mean_run_s if g.mean_run_s is not None else job_seconds
        saved = sum(
            cost_model.cancel_saving(
                path=g.path,
                kind=c.kind.value,
                params=dict(c.params),
                provider_started=bool(c.provider_started),
                ran_seconds=_seconds(c.claimed_at, c.cancelled_at) or 0.0,
                job_seconds=run_s,
                preset=preset,
            ).total
            for c in cancelled_of.get((g.path, g.kind), [])
        )
        attempts = 1 + g.retries / g.count if g.count else 1.0
        # Fixed share: the path's monthly fixed cost over the window, split by count.
        fixed_month = cost_model.monthly(g.path, 0, run_s, preset).fixed_total
        share = g.count / per_path_count[g.path] if per_path_count[g.path] else 0.0
        fixed = fixed_month * month_fraction * share
        # Variable: price the group's monthly *rate* (free tiers and worker saturation are
        # monthly), then take the window's fraction of it.
        rate = g.count / month_fraction if month_fraction else 0.0
        variable = (
            cost_model.monthly(g.path, rate, run_s, preset, attempts).variable_total
            * month_fraction
        )
        total = fixed + variable
        priced.append(
            GroupStats(
                **{
                    **g.__dict__,
                    "cost_total_usd": total,
                    "cost_per_creation_usd": (total / g.count) if g.count else None,
                    "cancel_saved_usd": saved,
                }
            )
        )
    return priced


def cost_curve(
    job_seconds: float, preset: cost_model.Preset, points: Iterable[int] = CURVE_POINTS
) -> list[dict]:
    """Monthly cost of each architecture against monthly volume (the dashboard's line chart)."""
    return [
        {
            "creations": n,
            "celery": round(cost_model.legacy_monthly(n, job_seconds, preset).total, 2),
            "cloud_tasks": round(cost_model.jobs_monthly(n, job_seconds, preset).total, 2),
        }
        for n in points
    ]


def compute(
    creations: Iterable[Creation],
    *,
    now: datetime,
    window: timedelta,
    preset: cost_model.Preset = cost_model.LIST,
    preset_name: str = "list",
) -> MigrationReport:
    start = now - window
    in_window = [c for c in creations if start <= c.created_at <= now]
    by_key: dict[tuple[str, str], list[Creation]] = {}
    for c in in_window:
        by_key.setdefault((c.path, c.kind.value), []).append(c)
    groups = [_group(path, kind, items) for (path, kind), items in sorted(by_key.items())]

    measured, n = cost_model.measured_run_seconds(in_window, kind="video")
    if n:
        job_seconds, source = measured, f"median run time of {n} completed videos in the window"
    else:
        job_seconds, source = DEFAULT_JOB_SECONDS, "default (no completed video in the window)"
    notes = []
    if any(
        c.claimed_at is None
        for c in in_window
        if c.status.terminal and c.status is not Status.CANCELLED  # cancelled while queued
    ):
        notes.append("some finished records were never claimed (failed before a job ran)")
    priced = _with_costs(
        groups,
        window,
        preset,
        job_seconds,
        {key: [c for c in items if c.status is Status.CANCELLED] for key, items in by_key.items()},
    )
    # The dashboard's table stays within a laptop's width: what cancel saved is a note (and a
    # field of every group in the JSON).
    notes += [
        f"cancel saved ${g.cancel_saved_usd:,.2f} on {g.path} {g.kind} "
        f"({g.cancelled} cancelled; provider charges already started are not counted as saved)"
        for g in priced
        if g.cancelled
    ]
    return MigrationReport(
        window_start=start,
        window_end=now,
        groups=priced,
        job_seconds=job_seconds,
        job_seconds_source=source,
        cost_curve=cost_curve(job_seconds, preset),
        preset=preset_name,
        notes=notes,
    )
