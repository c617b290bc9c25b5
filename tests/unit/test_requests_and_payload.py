"""Request validation and the task payload: what the API accepts and what crosses the queue."""

from __future__ import annotations

import pytest

from common.domain.creation import Kind
from common.domain.errors import ValidationError
from common.domain.payload import TaskPayload
from common.domain.requests import normalise_prompt, parse_generation_request

TP = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"


def test_defaults_apply_to_everything_but_the_prompt():
    v = parse_generation_request(Kind.VIDEO, {"prompt": "waves"})
    assert v.params == {"aspect_ratio": "16:9", "duration_seconds": 8}
    i = parse_generation_request(Kind.IMAGE, {"prompt": "cat"})
    assert i.params == {"aspect_ratio": "1:1", "count": 1}


@pytest.mark.parametrize(
    "kind, body, field",
    [
        (Kind.VIDEO, {}, "prompt"),
        (Kind.VIDEO, {"prompt": "  \u200b\n "}, "prompt"),
        (Kind.VIDEO, {"prompt": "x" * 2001}, "prompt"),
        (Kind.VIDEO, {"prompt": 5}, "prompt"),
        (Kind.VIDEO, {"prompt": "a", "duration_seconds": 5}, "duration_seconds"),
        (Kind.VIDEO, {"prompt": "a", "duration_seconds": "8"}, "duration_seconds"),
        (Kind.VIDEO, {"prompt": "a", "aspect_ratio": "1:1"}, "aspect_ratio"),
        (Kind.VIDEO, {"prompt": "a", "count": 1}, "count"),
        (Kind.IMAGE, {"prompt": "a", "count": 0}, "count"),
        (Kind.IMAGE, {"prompt": "a", "count": 5}, "count"),
        (Kind.IMAGE, {"prompt": "a", "count": True}, "count"),
        (Kind.IMAGE, {"prompt": "a", "aspect_ratio": "2:1"}, "aspect_ratio"),
        (Kind.IMAGE, {"prompt": "a", "seed": 1}, "seed"),
        (Kind.IMAGE, ["prompt"], "body"),
    ],
)
def test_bad_requests_name_the_field(kind, body, field):
    """Shown to fail when the upper bound on ``count`` is dropped (scratch branch
    scratch/promises-break-bad-data, 2026-12-01)."""
    with pytest.raises(ValidationError) as err:
        parse_generation_request(kind, body)
    assert err.value.field == field


def test_prompt_is_normalised():
    assert normalise_prompt("Cafe\u0301 \x00at\u202e  night\n\tsky") == "Café at night sky"
    assert parse_generation_request(Kind.IMAGE, {"prompt": "x" * 2000}).prompt == "x" * 2000


def test_payload_round_trips_through_json_and_env():
    p = TaskPayload(creation_id="abc123", kind=Kind.VIDEO, traceparent=TP)
    assert TaskPayload.from_json(p.to_json()) == p
    env = p.to_env()
    assert env["CREATION_ID"] == "abc123" and env["TRACEPARENT"] == TP
    assert TaskPayload.from_env(env, Kind.VIDEO) == p
    assert TaskPayload.from_env(env, Kind.VIDEO, creation_id="other").creation_id == "other"


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"version": 2, "creation_id": "a", "kind": "video"}',
        '{"version": 1, "creation_id": "a", "kind": "audio"}',
        '{"version": 1, "creation_id": "../etc", "kind": "video"}',
        '{"version": 1, "kind": "video"}',
        '{"version": 1, "creation_id": "a", "kind": "video", "traceparent": "nope"}',
        '{"version": 1, "creation_id": "a", "kind": "video", "extra": 1}',
    ],
)
def test_bad_payloads_are_rejected(raw):
    with pytest.raises(ValidationError):
        TaskPayload.from_json(raw)


def test_job_without_creation_id_is_a_clear_error():
    with pytest.raises(ValidationError, match="CREATION_ID"):
        TaskPayload.from_env({}, Kind.IMAGE)


def test_redispatch_number_travels_and_is_validated():
    p = TaskPayload(creation_id="abc", kind=Kind.IMAGE, dispatch=3)
    assert TaskPayload.from_json(p.to_json()).dispatch == 3
    assert "dispatch" not in TaskPayload(creation_id="abc", kind=Kind.IMAGE).to_dict()
    with pytest.raises(ValidationError):
        TaskPayload.from_json('{"version": 1, "creation_id": "a", "kind": "video", "dispatch": -1}')
