"""Monthly cost of the two architectures, from explicit parameters, so the ADR's headline figures
can be re-derived (and challenged) instead of quoted.

Only what differs between the architectures is priced. Veo/Imagen charges, Firestore, storage
and the API service are the same on both paths and are left out.

- Legacy (Celery): Memorystore for Redis + a Serverless VPC Access connector + an always-on
  worker (Cloud Run service, min-instances=1). A queue consumer needs CPU outside requests, so the
  worker must use instance-based billing ("CPU always allocated"): it pays the full vCPU/GiB rate
  for every second of the month. Extra load is absorbed by that instance until its Celery slots
  are busy on average; beyond that, extra instance-seconds are billed (an average-load model: it
  ignores peaks, so it is a lower bound).
- New (Cloud Tasks + Cloud Run Jobs): per creation, one job execution billed for its run time
  plus start-up at the Jobs vCPU/GiB rate, and Cloud Tasks operations (free under 1 M/month).

Two presets: ``Prices()``/``LegacyShape()`` are list prices and a realistic worker;
``SEED`` reproduces the ADR's inputs (Redis ~$30, connector ~$8, worker not counted).

CLI: ``python -m common.cost --creations N [--video-seconds 120] [--from-store] [--preset seed]``.

(Longer than our ~350-line norm: the dated price parameters with their sources, the two cost
models, the cancel saving and the command that prints the README's table are one model, read
together when a price changes.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence

HOURS_PER_MONTH = 730.0  # the convention GCP's pricing calculator uses
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


@dataclass(frozen=True)
class Prices:
    """Unit prices in USD. Each default names its source; override any of them per call/CLI."""

    # Cloud Run, Tier 1 regions, row "Services with CPU always allocated / Jobs":
    # $0.00001800 per vCPU-second beyond the free tier.
    # Source: https://cloud.google.com/run/pricing (stored copy read via the search tool).
    run_usd_per_vcpu_second: float = 0.000018
    # Same row, memory: $0.00000200 per GiB-second. Source: https://cloud.google.com/run/pricing
    run_usd_per_gib_second: float = 0.000002
    # Free tier of that row: first 240,000 vCPU-s and 450,000 GiB-s per month, per *billing
    # account* (shared with the API service and every other Cloud Run workload). Source:
    # https://cloud.google.com/run/pricing. Off by default because it is not ours to spend twice.
    run_free_vcpu_seconds: float = 240_000
    run_free_gib_seconds: float = 450_000
    apply_free_tier: bool = False
    # Cloud Tasks: first 1 M billable operations per month free, then $0.40 per million; "a
    # billable operation is an API call or push delivery attempt", chunked at 32 KB.
    # Source: https://cloud.google.com/tasks/pricing
    tasks_free_ops_per_month: int = 1_000_000
    tasks_usd_per_million_ops: float = 0.40
    # Memorystore for Redis, Basic tier, M1 capacity (1-4 GB), us-central1: $0.049 per GB-hour
    # ($35.77/month for 1 GB). Source: https://cloud.google.com/memorystore/docs/redis/pricing
    # (list price as published; the page was not in the stored corpus this session, so re-check
    # it; the seed ADR rounds 1 GB basic to "~$30/month").
    memorystore_usd_per_gb_hour: float = 0.049
    # Serverless VPC Access connector: billed as its VMs, default machine e2-micro, minimum 2
    # instances. e2-micro on-demand, us-central1: $0.00838 per hour. Sources:
    # https://cloud.google.com/vpc/pricing#serverless-vpc-pricing and
    # https://cloud.google.com/compute/vm-instance-pricing (not re-verified in the stored corpus;
    # the seed ADR says "~$8/month").
    vpc_connector_usd_per_instance_hour: float = 0.00838


@dataclass(frozen=True)
class LegacyShape:
    """The Celery deployment being priced (seed §2: 1 GB basic Redis, connector, worker)."""

    redis_gb: float = 1.0
    vpc_connector_instances: int = 2  # the connector's minimum
    # Assumption: the worker service runs 1 vCPU / 512 MiB (Cloud Run's smallest 1-vCPU shape),
    # min-instances=1, CPU always allocated (needed to consume a queue between requests).
    worker_min_instances: int = 1
    worker_vcpu: float = 1.0
    worker_memory_gib: float = 0.5
    worker_concurrency: int = 2  # Celery --concurrency per instance (jobs wait on Veo, I/O-bound)
    # The seed's "$38 idle" omits the worker's own instance; SEED sets this False to match it.
    count_worker: bool = True


@dataclass(frozen=True)
class JobsShape:
    """The Cloud Tasks + Cloud Run Jobs deployment being priced."""

    job_vcpu: float = 1.0
    job_memory_gib: float = 0.5  # Cloud Run Jobs' default task memory
    # Billed container start-up per execution; the seed quotes a 2-5 s cold start.
    startup_seconds: float = 5.0
    # CreateTask + one push delivery attempt per creation (both are billable operations).
    tasks_ops_per_execution: int = 2


@dataclass(frozen=True)
class ProviderPrices:
    """Generation prices, the same on both paths (so left out of the path comparison), used
    only to say what a cancel saved. List prices as recalled from
    https://cloud.google.com/vertex-ai/generative-ai/pricing (Veo 3 with audio per generated
    second; Imagen 4 per image); the page was not in the stored corpus this session, so re-check
    them before quoting a figure."""

    veo_usd_per_second: float = 0.40
    imagen_usd_per_image: float = 0.04


@dataclass(frozen=True)
class Preset:
    prices: Prices = field(default_factory=Prices)
    legacy: LegacyShape = field(default_factory=LegacyShape)
    jobs: JobsShape = field(default_factory=JobsShape)
    provider: ProviderPrices = field(default_factory=ProviderPrices)


LIST = Preset()
# The ADR's own inputs: Redis ~$30/month, VPC connector ~$8/month (2 e2-micro), worker not
# counted. Expressed as unit prices so the same formulas apply.
SEED = Preset(
    prices=Prices(
        memorystore_usd_per_gb_hour=30.0 / HOURS_PER_MONTH,
        vpc_connector_usd_per_instance_hour=4.0 / HOURS_PER_MONTH,
    ),
    legacy=LegacyShape(count_worker=False),
)
PRESETS = {"list": LIST, "seed": SEED}


@dataclass(frozen=True)
class CostBreakdown:
    architecture: str
    creations: float  # per month (fractional when a short window's rate is extrapolated)
    fixed: dict[str, float]
    variable: dict[str, float]

    @property
    def fixed_total(self) -> float:
        return sum(self.fixed.values())

    @property
    def variable_total(self) -> float:
        return sum(self.variable.values())

    @property
    def total(self) -> float:
        return self.fixed_total + self.variable_total

    def to_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "creations": self.creations,
            "fixed": {k: round(v, 4) for k, v in self.fixed.items()},
            "variable": {k: round(v, 4) for k, v in self.variable.items()},
            "fixed_total": round(self.fixed_total, 2),
            "variable_total": round(self.variable_total, 2),
            "total": round(self.total, 2),
        }


def _run_cost(vcpu_s: float, gib_s: float, p: Prices) -> float:
    if p.apply_free_tier:
        vcpu_s = max(0.0, vcpu_s - p.run_free_vcpu_seconds)
        gib_s = max(0.0, gib_s - p.run_free_gib_seconds)
    return vcpu_s * p.run_usd_per_vcpu_second + gib_s * p.run_usd_per_gib_second


def legacy_monthly(
    creations: float, job_seconds: float, preset: Preset = LIST, attempts_per_creation: float = 1.0
) -> CostBreakdown:
    p, s = preset.prices, preset.legacy
    fixed = {
        "memorystore_redis": s.redis_gb * p.memorystore_usd_per_gb_hour * HOURS_PER_MONTH,
        "vpc_connector": s.vpc_connector_instances
        * p.vpc_connector_usd_per_instance_hour
        * HOURS_PER_MONTH,
    }
    variable: dict[str, float] = {}
    if s.count_worker:
        base_s = s.worker_min_instances * SECONDS_PER_MONTH
        # Busy slot-seconds / slots per instance = instance-seconds needed on average.
        needed_s = creations * attempts_per_creation * job_seconds / max(1, s.worker_concurrency)
        extra_s = max(0.0, needed_s - base_s)
        fixed["worker_always_on"] = _run_cost(
            base_s * s.worker_vcpu, base_s * s.worker_memory_gib, p
        )
        # Free tier (if applied) is consumed by the always-on instance first.
        no_free = replace(p, apply_free_tier=False)
        variable["worker_extra_instances"] = _run_cost(
            extra_s * s.worker_vcpu, extra_s * s.worker_memory_gib, no_free
        )
    return CostBreakdown("celery", creations, fixed, variable)


def jobs_monthly(
    creations: float, job_seconds: float, preset: Preset = LIST, attempts_per_creation: float = 1.0
) -> CostBreakdown:
    p, s = preset.prices, preset.jobs
    executions = creations * attempts_per_creation
    billed_s = executions * (job_seconds + s.startup_seconds)
    ops = executions * s.tasks_ops_per_execution
    billable_ops = max(0.0, ops - p.tasks_free_ops_per_month)
    variable = {
        "cloud_run_jobs": _run_cost(billed_s * s.job_vcpu, billed_s * s.job_memory_gib, p),
        "cloud_tasks": billable_ops / 1_000_000 * p.tasks_usd_per_million_ops,
    }
    return CostBreakdown("cloud-tasks", creations, {}, variable)


def monthly(
    path: str,
    creations: float,
    job_seconds: float,
    preset: Preset = LIST,
    attempts_per_creation: float = 1.0,
) -> CostBreakdown:
    """Cost of running ``creations``/month on ``path``; "local" (dev) costs nothing."""
    if path == "celery":
        return legacy_monthly(creations, job_seconds, preset, attempts_per_creation)
    if path == "cloud-tasks":
        return jobs_monthly(creations, job_seconds, preset, attempts_per_creation)
    return CostBreakdown(path, creations, {}, {})


@dataclass(frozen=True)
class CancelSaving:
    """What one cancel kept from being spent: the provider's charge when no generation had
    started yet, and the job compute it did not run (Cloud Run Jobs only: the legacy worker is
    paid for whether it works or not)."""

    provider_usd: float
    compute_usd: float

    @property
    def total(self) -> float:
        return self.provider_usd + self.compute_usd


def provider_price(kind: str, params: dict, preset: Preset = LIST) -> float:
    """Price of one generation as requested (video: per generated second; image: per image).
    A kind with no price parameter here is priced 0 (nothing is claimed saved for it), never as
    another kind: a new kind's price is added here with it."""
    if kind == "video":
        return float(params.get("duration_seconds") or 8) * preset.provider.veo_usd_per_second
    if kind == "image":
        return float(params.get("count") or 1) * preset.provider.imagen_usd_per_image
    return 0.0


def cancel_saving(
    *,
    path: str,
    kind: str,
    params: dict,
    provider_started: bool,
    ran_seconds: float,
    job_seconds: float,
    preset: Preset = LIST,
) -> CancelSaving:
    """``ran_seconds``: how long the job ran before it stopped (0 if cancelled while queued);
    ``job_seconds``: how long a full run takes (measured or the default). Once the provider
    started a generation its charge is assumed spent (Veo bills the operation, which a client
    cannot cancel); only the job's remaining run time is saved then."""
    provider = 0.0 if provider_started else provider_price(kind, params, preset)
    compute = 0.0
    if path == "cloud-tasks":
        p, s = preset.prices, preset.jobs
        remaining = max(0.0, job_seconds - ran_seconds)
        if ran_seconds <= 0:
            remaining += s.startup_seconds  # no execution was ever started
        compute = remaining * (
            s.job_vcpu * p.run_usd_per_vcpu_second + s.job_memory_gib * p.run_usd_per_gib_second
        )
    return CancelSaving(provider, compute)


def table(
    counts: Iterable[int], job_seconds: float, preset: Preset = LIST
) -> list[tuple[int, CostBreakdown, CostBreakdown]]:
    return [
        (n, legacy_monthly(n, job_seconds, preset), jobs_monthly(n, job_seconds, preset))
        for n in counts
    ]


def break_even_note(job_seconds: float, preset: Preset = LIST) -> str:
    """Creations/month at which the jobs' bill reaches the legacy stack's fixed cost."""
    legacy0 = legacy_monthly(0, job_seconds, preset).total
    per_job = jobs_monthly(1000, job_seconds, preset).total / 1000
    if per_job <= 0:
        return "jobs cost nothing per creation with these prices"
    return f"jobs match the legacy fixed cost at ~{legacy0 / per_job:,.0f} creations/month"


# --- Measuring the job duration from the store --------------------------------------------------


def measured_run_seconds(creations: Iterable, kind: str | None = "video") -> tuple[float, int]:
    """Median claimed->finished seconds of completed creations (of ``kind`` if given)."""
    runs = [
        (c.finished_at - c.claimed_at).total_seconds()
        for c in creations
        if getattr(c.status, "value", c.status) == "completed"
        and c.claimed_at is not None
        and c.finished_at is not None
        and (kind is None or getattr(c.kind, "value", c.kind) == kind)
    ]
    if not runs:
        return 0.0, 0
    return float(statistics.median(runs)), len(runs)


def _from_store(kind: str | None, limit: int) -> tuple[float, int]:
    from common import bootstrap
    from common.config import Settings
    from common.domain.creation import Status

    store = bootstrap.build_store(Settings.from_env())
    try:
        return measured_run_seconds(store.scan(statuses=[Status.COMPLETED], limit=limit), kind)
    finally:
        store.close()


def render_table(rows: Sequence[tuple[int, CostBreakdown, CostBreakdown]]) -> str:
    lines = [
        f"{'creations/month':>16} | {'celery+redis (legacy)':>22} | {'cloud tasks+jobs':>17} | "
        f"{'saving':>8}",
        "-" * 74,
    ]
    for n, legacy, jobs in rows:
        saving = legacy.total - jobs.total
        lines.append(
            f"{n:>16,} | ${legacy.total:>21,.2f} | ${jobs.total:>16,.2f} | ${saving:>7,.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cost", description="Monthly cost: legacy Celery+Redis vs Cloud Tasks+Cloud Run Jobs"
    )
    parser.add_argument("--creations", type=int, default=1000, help="your monthly volume")
    parser.add_argument(
        "--video-seconds",
        type=float,
        default=120.0,
        help="job run time per creation (claimed->finished), seconds; default 120 (seed)",
    )
    parser.add_argument(
        "--from-store",
        action="store_true",
        help="use the median run time of completed creations in the configured store",
    )
    parser.add_argument("--kind", default="video", help="kind measured by --from-store ('' = all)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="list")
    parser.add_argument("--free-tier", action="store_true", help="apply Cloud Run's free tier")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.free_tier:
        preset = replace(preset, prices=replace(preset.prices, apply_free_tier=True))
    job_seconds, source = args.video_seconds, "parameter --video-seconds"
    if args.from_store:
        measured, n = _from_store(args.kind or None, limit=10_000)
        if n:
            job_seconds, source = measured, f"median of {n} completed creations in the store"
        else:
            source += " (store has no completed creations to measure)"
    counts = sorted({0, 1000, 10_000, max(0, args.creations)})
    rows = table(counts, job_seconds, preset)
    if args.json:
        print(
            json.dumps(
                {
                    "job_seconds": job_seconds,
                    "job_seconds_source": source,
                    "preset": args.preset,
                    "prices": asdict(preset.prices),
                    "legacy_shape": asdict(preset.legacy),
                    "jobs_shape": asdict(preset.jobs),
                    "rows": [
                        {"creations": n, "celery": legacy.to_dict(), "cloud_tasks": jobs.to_dict()}
                        for n, legacy, jobs in rows
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"Preset: {args.preset}   job run time: {job_seconds:.1f} s ({source})")
    print(render_table(rows))
    legacy0 = rows[0][1]
    print()
    print("Legacy fixed: " + ", ".join(f"{k} ${v:,.2f}" for k, v in legacy0.fixed.items()))
    marginal = replace(preset, prices=replace(preset.prices, apply_free_tier=False))
    one = jobs_monthly(1, job_seconds, marginal)
    print(
        f"Jobs per creation (beyond any free tier): ${one.total:.5f}; "
        f"{break_even_note(job_seconds, marginal)}"
    )
    print("Excluded (same on both paths): Veo/Imagen usage, Firestore, storage, the API service.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
