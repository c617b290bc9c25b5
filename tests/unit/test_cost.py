"""The cost model reproduces the ADR's headline figures from the ADR's own inputs, and its list
price preset is internally consistent (every figure re-derivable by hand)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from common import cost
from common.cost import (
    HOURS_PER_MONTH,
    LIST,
    SECONDS_PER_MONTH,
    SEED,
    jobs_monthly,
    legacy_monthly,
    measured_run_seconds,
)


def test_seed_inputs_reproduce_the_seed_legacy_fixed_cost():
    # Seed §2.2: "Idle Cost: ~$38/month (Redis + VPC Connector), regardless of usage";
    # §4: "~$43 (fixed + variable)".
    idle = legacy_monthly(0, 120, SEED)
    assert idle.fixed == pytest.approx({"memorystore_redis": 30.0, "vpc_connector": 8.0})
    assert 38.0 <= idle.total <= 43.0
    busy = legacy_monthly(1000, 120, SEED)
    assert 38.0 <= busy.total <= 43.0  # usage barely changes the legacy bill


def test_seed_inputs_give_single_digit_dollars_per_thousand_two_minute_videos_on_jobs():
    # Seed §1/§4: "$3-$8/month for 1,000 video generations", "~$0.003 per 2-minute video".
    thousand = jobs_monthly(1000, 120, SEED)
    assert thousand.fixed_total == 0.0
    assert 1.0 <= thousand.total < 10.0
    per_video = jobs_monthly(1, 120, SEED).total
    assert per_video == pytest.approx(0.003, abs=0.001)
    assert jobs_monthly(0, 120, SEED).total == 0.0  # "Idle Cost: $0/month"


def test_seed_saving_is_over_80_percent_at_a_thousand_videos():
    legacy = legacy_monthly(1000, 120, SEED).total
    jobs = jobs_monthly(1000, 120, SEED).total
    assert 1 - jobs / legacy > 0.80


def test_jobs_compute_is_run_time_plus_startup_times_unit_prices():
    p, s = LIST.prices, LIST.jobs
    expected = (
        1000
        * (120 + s.startup_seconds)
        * (s.job_vcpu * p.run_usd_per_vcpu_second + s.job_memory_gib * p.run_usd_per_gib_second)
    )
    assert jobs_monthly(1000, 120, LIST).variable["cloud_run_jobs"] == pytest.approx(expected)
    assert expected == pytest.approx(2.375)


def test_cloud_tasks_is_free_under_a_million_operations_then_40_cents_per_million():
    assert jobs_monthly(10_000, 120, LIST).variable["cloud_tasks"] == 0.0
    # 1,000,000 creations x 2 ops = 2 M ops, 1 M free -> 1 M billable -> $0.40
    assert jobs_monthly(1_000_000, 120, LIST).variable["cloud_tasks"] == pytest.approx(0.40)


def test_list_prices_include_the_always_on_worker_the_seed_leaves_out():
    idle = legacy_monthly(0, 120, LIST)
    redis = 1.0 * 0.049 * HOURS_PER_MONTH
    connector = 2 * 0.00838 * HOURS_PER_MONTH
    worker = SECONDS_PER_MONTH * (1.0 * 0.000018 + 0.5 * 0.000002)
    assert idle.fixed == pytest.approx(
        {"memorystore_redis": redis, "vpc_connector": connector, "worker_always_on": worker}
    )
    assert worker == pytest.approx(49.93, abs=0.01)
    assert idle.total > 90  # nearly double the seed's $38 once the worker is counted


def test_legacy_pays_for_extra_worker_instances_only_past_saturation():
    assert legacy_monthly(40_000, 120, LIST).variable["worker_extra_instances"] == 0.0
    # 2 slots x 2,628,000 s / 120 s = 43,800 creations fill one instance.
    over = legacy_monthly(87_600, 120, LIST).variable["worker_extra_instances"]
    assert over == pytest.approx(legacy_monthly(0, 120, LIST).fixed["worker_always_on"])


def test_free_tier_is_opt_in_and_never_negative():
    free = replace(LIST, prices=replace(LIST.prices, apply_free_tier=True))
    assert jobs_monthly(1000, 120, free).total == 0.0  # 125k vCPU-s < 240k free
    assert jobs_monthly(1000, 120, LIST).total > 0.0


def test_retries_cost_extra_executions():
    once = jobs_monthly(1000, 120, LIST).total
    assert jobs_monthly(1000, 120, LIST, attempts_per_creation=1.5).total == pytest.approx(
        1.5 * once
    )


def test_measured_run_seconds_is_the_median_of_completed_records_of_the_kind():
    from datetime import datetime, timedelta, timezone

    from common.domain import creation as lc
    from common.domain.creation import Kind, MediaRef

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    records = []
    for _i, (kind, secs) in enumerate(
        [(Kind.VIDEO, 60), (Kind.VIDEO, 100), (Kind.VIDEO, 200), (Kind.IMAGE, 5)]
    ):
        c = lc.new(user_id="u", kind=kind, prompt="p", params={}, path="cloud-tasks", now=t0)
        c = lc.claim(c, owner="o", now=t0, lease=timedelta(minutes=5), max_attempts=3)
        c = lc.complete(
            c, owner="o", now=t0 + timedelta(seconds=secs), media=(MediaRef("k", "video/mp4"),)
        )
        records.append(c)
    assert measured_run_seconds(records, "video") == (100.0, 3)
    assert measured_run_seconds(records, None) == (80.0, 4)
    assert measured_run_seconds([], "video") == (0.0, 0)


def test_cli_prints_the_table_at_0_1000_10000(capsys):
    assert cost.main(["--creations", "2500", "--preset", "seed"]) == 0
    out = capsys.readouterr().out
    for n in ("0", "1,000", "2,500", "10,000"):
        assert f" {n} |" in out
    assert "$                38.00" in out


def test_cli_json(capsys):
    assert cost.main(["--json", "--video-seconds", "90"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job_seconds"] == 90
    assert [r["creations"] for r in data["rows"]] == [0, 1000, 10_000]
    assert data["rows"][0]["cloud_tasks"]["total"] == 0.0


def test_cli_from_store_uses_the_measured_median(tmp_path, monkeypatch, capsys):
    from datetime import timedelta

    from common.adapters.sqlite_store import SqliteCreationStore
    from common.config import Settings
    from common.domain import creation as lc
    from common.domain.creation import Kind, MediaRef

    monkeypatch.setenv("PHOENIX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PHOENIX_STORE", "sqlite")
    store = SqliteCreationStore(Settings.from_env().sqlite_path)
    t0 = lc.utcnow()
    for secs in (30, 45, 300):
        c = lc.new(user_id="u", kind=Kind.VIDEO, prompt="p", params={}, path="celery", now=t0)
        c = lc.claim(c, owner="o", now=t0, lease=timedelta(minutes=5), max_attempts=3)
        store.add(
            lc.complete(
                c, owner="o", now=t0 + timedelta(seconds=secs), media=(MediaRef("k", "video/mp4"),)
            )
        )
    store.close()
    assert cost.main(["--from-store", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job_seconds"] == 45.0
    assert "median of 3" in data["job_seconds_source"]


def test_provider_prices_are_per_kind_and_an_unpriced_kind_is_never_priced_as_another():
    p = cost.LIST.provider
    assert cost.provider_price("video", {"duration_seconds": 4}) == 4 * p.veo_usd_per_second
    assert cost.provider_price("image", {"count": 3}) == 3 * p.imagen_usd_per_image
    assert cost.provider_price("audio", {"count": 3, "duration_seconds": 4}) == 0.0
