"""The rollout flag: parsing, split accuracy, stickiness, monotonic migration, file override."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import replace

import pytest

from common.config import ConfigError, Settings
from common.domain.creation import Kind
from common.domain.rollout import PATH_ORDER, Rollout, RolloutError, bucket, make_route

USERS = [f"user-{i}" for i in range(10_000)]


def shares(rollout: Rollout, kind: Kind) -> dict[str, float]:
    counts = Counter(rollout.route(kind, u) for u in USERS)
    return {p: 100 * n / len(USERS) for p, n in counts.items()}


@pytest.mark.parametrize(
    "flag,kind,expected",
    [
        ("video=cloud-tasks:25,celery:75", Kind.VIDEO, {"cloud-tasks": 25, "celery": 75}),
        ("video=cloud-tasks:50,celery:50", Kind.VIDEO, {"cloud-tasks": 50, "celery": 50}),
        (
            "video=cloud-tasks:10,celery:90;image=celery:100",
            Kind.VIDEO,
            {"cloud-tasks": 10, "celery": 90},
        ),
        ("image=celery:1,cloud-tasks:99", Kind.IMAGE, {"cloud-tasks": 99, "celery": 1}),
        (
            "image=cloud-tasks:20,local:30,celery:50",
            Kind.IMAGE,
            {"cloud-tasks": 20, "local": 30, "celery": 50},
        ),
    ],
)
def test_split_within_three_points_over_10k_users(flag, kind, expected):
    got = shares(Rollout.parse(flag, "local"), kind)
    assert set(got) == set(expected)
    for path, pct in expected.items():
        assert abs(got[path] - pct) <= 3, (path, got)


def test_kinds_not_mentioned_use_the_default_path():
    r = Rollout.parse("video=cloud-tasks:25,celery:75", "celery")
    assert {r.route(Kind.IMAGE, u) for u in USERS[:500]} == {"celery"}
    assert Rollout.parse("", "cloud-tasks").route(Kind.VIDEO, "anyone") == "cloud-tasks"
    assert Rollout.parse("  ", "local").weights(Kind.IMAGE) == {"local": 100}


def test_whitespace_and_trailing_separator_are_tolerated():
    r = Rollout.parse(" video = cloud-tasks : 25 , celery:75 ; ", "local")
    assert r.weights(Kind.VIDEO) == {"cloud-tasks": 25, "celery": 75}


def test_same_user_always_gets_the_same_path():
    r = Rollout.parse("video=cloud-tasks:50,celery:50", "local")
    again = Rollout.parse("video=cloud-tasks:50,celery:50", "local")
    for u in USERS[:2000]:
        first = r.route(Kind.VIDEO, u)
        assert all(r.route(Kind.VIDEO, u) == first for _ in range(3))
        assert again.route(Kind.VIDEO, u) == first  # a fresh parse (another API instance) agrees


def test_order_of_paths_in_the_flag_does_not_matter():
    a = Rollout.parse("video=cloud-tasks:30,celery:70", "local")
    b = Rollout.parse("video=celery:70,cloud-tasks:30", "local")
    assert all(a.route(Kind.VIDEO, u) == b.route(Kind.VIDEO, u) for u in USERS)


def test_bucket_is_sha256_of_kind_and_user():
    import hashlib

    digest = hashlib.sha256(b"video:alice").digest()
    assert bucket(Kind.VIDEO, "alice") == int.from_bytes(digest[:8], "big") % 10_000
    assert 0 <= bucket("image", "alice") < 10_000


@pytest.mark.parametrize("steps", [[0, 1, 5, 10, 25, 50, 75, 99, 100], [10, 60, 100]])
def test_raising_the_new_share_only_moves_users_from_old_to_new(steps):
    previous: dict[str, str] | None = None
    moved_total = 0
    initially_on_celery: int | None = None
    for pct in steps:
        flag = (
            f"video=cloud-tasks:{pct},celery:{100 - pct}"
            if 0 < pct < 100
            else ("video=cloud-tasks:100" if pct == 100 else "video=celery:100")
        )
        r = Rollout.parse(flag, "local")
        now = {u: r.route(Kind.VIDEO, u) for u in USERS}
        if previous is not None:
            for u in USERS:
                if previous[u] == "cloud-tasks":
                    assert now[u] == "cloud-tasks", f"{u} moved back to celery at {pct}%"
                elif now[u] != previous[u]:
                    moved_total += 1
        previous = now
        if initially_on_celery is None:
            initially_on_celery = sum(1 for p in now.values() if p == "celery")
    # Ending at 100%: every user who started on celery moved exactly once, nobody else moved.
    assert moved_total == initially_on_celery


def test_three_paths_monotonic_when_weight_moves_toward_the_front():
    # local (middle) -> cloud-tasks and celery -> local/cloud-tasks: every C_k grows.
    before = Rollout.parse("video=cloud-tasks:10,local:20,celery:70", "local")
    after = Rollout.parse("video=cloud-tasks:30,local:30,celery:40", "local")
    rank = {p: i for i, p in enumerate(PATH_ORDER)}
    for u in USERS:
        assert rank[after.route(Kind.VIDEO, u)] <= rank[before.route(Kind.VIDEO, u)]


@pytest.mark.parametrize(
    "flag,needle",
    [
        ("video=cloud-tasks:25,celery:70", "sum to 95"),
        ("video=cloud-tasks:60,celery:60", "sum to 120"),
        ("audio=celery:100", "unknown kind 'audio'"),
        ("video=rabbitmq:100", "unknown path 'rabbitmq'"),
        ("video=cloud-tasks:abc,celery:75", "'abc'"),
        ("video=cloud-tasks:2.5,celery:97.5", "'2.5'"),
        ("video=cloud-tasks:-5,celery:105", "'-5'"),
        ("video=cloud-tasks:,celery:100", "''"),
        ("video=celery:50,celery:50", "'celery' is given twice"),
        ("video=celery:100;video=cloud-tasks:100", "'video' is given twice"),
        ("video", "should look like"),
        ("video=celery", "should be 'path:percent'"),
    ],
)
def test_bad_flags_are_rejected_with_a_message_naming_the_problem(flag, needle):
    with pytest.raises(RolloutError) as info:
        Rollout.parse(flag, "local")
    assert needle in str(info.value)
    assert isinstance(info.value, ConfigError)  # the API's start-up already refuses ConfigError


def test_without_celery_moves_its_share_and_makes_every_kind_explicit():
    r = Rollout.parse("video=cloud-tasks:25,celery:75", "celery")  # image defaults to celery
    drained = r.without("celery", to="cloud-tasks")
    assert drained.to_flag() == "video=cloud-tasks:100;image=cloud-tasks:100"
    again = Rollout.parse(drained.to_flag(), "celery")
    assert again.share("celery") == {Kind.VIDEO: 0, Kind.IMAGE: 0}


def test_make_route_refuses_a_bad_flag_at_start_up():
    with pytest.raises(RolloutError, match="sum to 90"):
        make_route(Settings(rollout="video=celery:90", dispatch="local"))


def test_make_route_uses_env_flag_and_exposes_the_rollout():
    route = make_route(Settings(rollout="video=celery:100", dispatch="cloud-tasks"))
    assert route(Kind.VIDEO, "u1") == "celery"
    assert route(Kind.IMAGE, "u1") == "cloud-tasks"
    assert route.rollout.weights(Kind.VIDEO) == {"celery": 100}


def test_rollout_file_overrides_env_and_is_reread_on_change(tmp_path):
    flag_file = tmp_path / "rollout"
    settings = Settings(rollout="video=celery:100", dispatch="local")
    route = make_route(replace(settings, rollout_file=str(flag_file)))
    assert route(Kind.VIDEO, "u1") == "celery"  # file absent: the env flag applies

    flag_file.write_text("video=cloud-tasks:100\n")
    assert route(Kind.VIDEO, "u1") == "cloud-tasks"

    # A bad edit is ignored (last good flag keeps serving) instead of breaking the API.
    flag_file.write_text("video=cloud-tasks:10")
    os.utime(flag_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert route(Kind.VIDEO, "u1") == "cloud-tasks"
    assert "sum to 10" in (route.last_error or "")

    flag_file.write_text("video=celery:100;image=celery:100")
    assert route(Kind.IMAGE, "u1") == "celery"
    flag_file.unlink()
    assert route(Kind.IMAGE, "u1") == "local"  # back to env + default


def test_a_bad_rollout_file_at_start_up_refuses_to_start(tmp_path):
    flag_file = tmp_path / "rollout"
    flag_file.write_text("video=celery:99")
    with pytest.raises(RolloutError, match="PHOENIX_ROLLOUT_FILE"):
        make_route(Settings(dispatch="local", rollout_file=str(flag_file)))
