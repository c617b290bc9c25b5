"""Property-based fuzzing of the real Flask app against its own OpenAPI document.

Schemathesis reads ``/api/openapi.json`` from the app (not from ``build_openapi()`` directly, so
the route that serves the document is exercised too) and generates requests for every
operation: valid ones (positive mode) and deliberately invalid ones (negative mode: wrong types,
missing fields, out-of-range numbers, strange headers). Over 1000 requests in total, none may
produce a 5xx and every response must match the document: status code listed, content type,
declared headers, and the body schema (``Creation``, ``Error``...).

"No bad data" is checked, not assumed: the app runs with the rate limit and the
unfinished-creation cap OFF (with them on, most valid POSTs would be 429 and prove nothing), a
floor of 2xx answers is required for the positive cases of every operation, and every creation
the API accepted (202) is read back afterwards: it must be exactly what was sent (prompt after
the documented normalisation, every sent parameter with its type, defaults for the rest, the
caller as owner), equal to the 202 body, and dispatched exactly once.

Hypothesis health checks stay on except the two that only say "this input space is large or
slow to generate" (``too_slow``, ``data_too_large``). "No invalid input can be generated"
(``Unsatisfiable``, or ``filter_too_much`` with zero inputs) is allowed only for the
operations listed in ``NO_INVALID_INPUT`` (those whose every input is an unconstrained string),
and the test asserts it happens for exactly those.

Why it matters: clients (the page, scripts, generated SDKs) rely on the document; a 500 on bad
input is a bug that also leaks into error budgets and alerts. Nothing runs behind the API
(``RecordingDispatcher``), so the fuzzer cannot start jobs.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef
from common.domain.requests import defaults, normalise_prompt

MIN_REQUESTS = 1000
# Accepted (202) generation requests that are read back; a few hundred in practice.
MIN_ACCEPTED = 100
# Operations whose every input is an unconstrained string (``/media/{key}``): schemathesis
# cannot build an invalid request for them, so their negative mode is Unsatisfiable.
NO_INVALID_INPUT = {"GET /media/{key}"}
# Share of positive (schema-valid) cases that must be answered 2xx, per operation. With the
# limits off, a valid generation request is refused only for a prompt that normalises to
# nothing, which the generator rarely produces. Three operations answer 4xx to random valid
# input by design and have no floor: random ids/keys are unknown (404; the seeded pass covers
# known ids; cancel/retry/delete of a random id is the same 404) and random users are not admins (403).
DEFAULT_2XX_FLOOR = 0.5
POSITIVE_2XX_FLOOR: dict[str, float] = {
    "POST /api/generate/image": 0.8,
    "POST /api/generate/video": 0.8,
    "GET /api/creations/{creation_id}": 0.0,
    "GET /media/{key}": 0.0,
    "GET /admin/migration": 0.0,
    "GET /api/admin/migration": 0.0,
    "GET /api/admin/failures": 0.0,
    "POST /api/creations/{creation_id}/cancel": 0.0,
    "POST /api/creations/{creation_id}/retry": 0.0,
    "DELETE /api/creations/{creation_id}": 0.0,
}
# Only "the input space is big/slow to generate" checks; never filter_too_much / too_large etc.
SUPPRESSED_HEALTH_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]
# Per operation and mode. Operations without parameters exhaust their (tiny) input space
# quickly; the ones with bodies/queries/headers get plenty.
EXAMPLES = 150
CHECKS = [
    not_a_server_error,
    # Negative mode: a request the document calls invalid must not be accepted (2xx).
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def _seed(store: SqliteCreationStore, media: LocalMediaStore) -> list[str]:
    """Records in every status for the default local user, so the fuzzer's GETs and lists
    validate every shape of the ``Creation`` view (media URLs, errors, progress)."""
    now = lc.utcnow()
    ids = []
    for i, kind in enumerate([Kind.IMAGE, Kind.VIDEO, Kind.IMAGE, Kind.VIDEO]):
        c = lc.new(user_id="local", kind=kind, prompt=f"seed {i}", params={}, path="local", now=now)
        if i >= 1:
            c = lc.claim(c, owner="o", now=now, lease=timedelta(minutes=5), max_attempts=3)
            c = lc.report_progress(c, owner="o", now=now, progress=40)
        if i == 2:
            ref = media.put(f"{c.id}/0.png", b"\x89PNG fake", "image/png")
            c = lc.complete(
                c, owner="o", now=now, media=(ref, MediaRef(f"{c.id}/1.png", "image/png"))
            )
        if i == 3:
            c = lc.fail(c, owner="o", now=now, error=CreationError("content_filtered", "no"))
        store.add(c)
        ids.append(c.id)
    return ids


@pytest.fixture
def fuzz_app(tmp_path: Path) -> Any:
    settings = Settings(
        data_dir=tmp_path, dispatch="record", rate_limit_per_minute=0, max_active_per_user=0
    )
    store = SqliteCreationStore(settings.sqlite_path)
    media = LocalMediaStore(settings.media_dir)
    recorder = RecordingDispatcher()
    app = create_app(settings, store=store, media=media, dispatchers=lambda path: recorder)
    app.seeded_ids = _seed(store, media)  # type: ignore[attr-defined]
    app.recorder = recorder  # type: ignore[attr-defined]
    yield app
    store.close()


@dataclass
class Accepted:
    """One 202 from a generation endpoint: what was sent and what came back."""

    kind: str
    user: str
    body: dict[str, Any]
    response: dict[str, Any]


def test_fuzzed_requests_never_5xx_and_always_match_the_document(fuzz_app: Any) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", fuzz_app)
    statuses: Counter[str] = Counter()
    positive: dict[str, Counter[str]] = {}
    failures: list[str] = []
    samples: dict[str, str] = {}
    accepted: list[Accepted] = []
    unsatisfiable: set[str] = set()
    requests_sent = 0

    def exercise(label: str, strategy: Any, examples: int) -> None:
        nonlocal requests_sent

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,  # no .hypothesis/ directory in the checkout; parallel-safe
            suppress_health_check=SUPPRESSED_HEALTH_CHECKS,
            derandomize=False,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            nonlocal requests_sent
            response = case.call()
            requests_sent += 1
            statuses[f"{case.method} {case.path} -> {response.status_code}"] += 1
            if label.endswith(" positive"):
                positive.setdefault(label, Counter())[str(response.status_code)[0] + "xx"] += 1
            if response.status_code == 202 and case.path.startswith("/api/generate/"):
                headers = {k.lower(): v for k, v in (case.headers or {}).items()}
                accepted.append(
                    Accepted(
                        kind=case.path.rsplit("/", 1)[1],
                        user=headers.get("x-phoenix-user", "local"),
                        body=copy.deepcopy(case.body),
                        response=response.json(),
                    )
                )
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseExceptionGroup as group:
                # Collect every failure (no shrinking, no stop) and report them all at the end.
                for failure in group.exceptions:
                    kind = f"{label}: {type(failure).__name__}: {getattr(failure, 'title', '')}"
                    failures.append(kind)
                    samples.setdefault(
                        kind,
                        f"{response.status_code} {str(failure)[:400]}\n"
                        f"{case.as_curl_command()}",
                    )

        try:
            run()
        except (hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck) as exc:
            # "No invalid request exists": hypothesis says so as Unsatisfiable or as a
            # filter_too_much health check with zero inputs generated. Any other health check
            # failure is real. Which operations may do this is asserted below.
            if isinstance(exc, hypothesis.errors.FailedHealthCheck) and (
                "0 inputs were generated successfully" not in str(exc)
            ):
                raise
            unsatisfiable.add(label)

    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # Schemathesis leaves out the operation that serves the document itself.
    assert len(operations) >= 6
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        exercise(f"{label} positive", op.as_strategy(GenerationMode.POSITIVE), EXAMPLES)
        if _has_inputs(op):
            exercise(f"{label} negative", op.as_strategy(GenerationMode.NEGATIVE), EXAMPLES)
        if op.path == "/api/creations/{creation_id}":
            for cid in fuzz_app.seeded_ids:
                exercise(
                    f"{label} seeded",
                    op.as_strategy(GenerationMode.POSITIVE, path_parameters={"creation_id": cid}),
                    10,
                )

    by_status = Counter(key.rsplit(" ", 1)[1] for key in statuses.elements())
    print(
        f"\nopenapi fuzz: {requests_sent} requests over {len(operations)} operations; "
        f"statuses {dict(sorted(by_status.items()))}; failures {len(failures)}; "
        f"accepted creations {len(accepted)}; unsatisfiable {sorted(unsatisfiable)}"
    )
    for label, counts in sorted(positive.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert requests_sent >= MIN_REQUESTS
    report = "\n\n".join(
        f"{n} x {kind}\n  e.g. {samples[kind]}" for kind, n in Counter(failures).most_common()
    )
    print(report)
    assert not failures, f"{len(failures)} failures:\n\n{report}"
    assert not any(s.startswith("5") for s in by_status), statuses
    assert unsatisfiable == {f"{op} negative" for op in NO_INVALID_INPUT}, unsatisfiable

    # Positive cases are valid by the document, so most must succeed (the rest are 4xx the
    # document allows: a prompt that normalises to nothing, an unknown creation id, ...).
    for label, counts in positive.items():
        share = counts["2xx"] / sum(counts.values())
        floor = POSITIVE_2XX_FLOOR.get(label.removesuffix(" positive"), DEFAULT_2XX_FLOOR)
        assert share >= floor, (label, dict(counts), floor)

    # No bad data: every accepted creation reads back exactly as sent, and was dispatched once.
    assert len(accepted) >= MIN_ACCEPTED, len(accepted)
    client = fuzz_app.test_client()
    document = client.get("/api/openapi.json").get_json()
    request_schemas = {
        kind: document["components"]["schemas"][f"{kind.title()}Request"]
        for kind in ("video", "image")
    }
    dispatched = Counter(p.creation_id for p in fuzz_app.recorder.dispatched)
    for a in accepted:
        cid = a.response["id"]
        read = client.get(f"/api/creations/{cid}", headers={"X-Phoenix-User": a.user})
        assert read.status_code == 200, (a, read.get_data(as_text=True))
        view = read.get_json()
        assert view == a.response, (a, view)
        assert view["kind"] == a.kind and view["status"] == "pending"
        assert view["prompt"] == normalise_prompt(a.body["prompt"]), (a.body, view["prompt"])
        if (
            a.body["prompt"] == " ".join(a.body["prompt"].split())
            and a.body["prompt"].isprintable()
        ):
            assert view["prompt"] == a.body["prompt"]  # nothing to normalise: stored verbatim
        expected = defaults(a.kind)
        expected.update({k: v for k, v in a.body.items() if k != "prompt"})
        assert view["params"] == expected, (a.body, view["params"])
        for name, value in view["params"].items():
            want = expected[name]
            # Same JSON type: an int stays an int (and is not a bool), a string a string.
            assert isinstance(value, type(want)) and isinstance(value, bool) == isinstance(
                want, bool
            ), (name, value)
        # And what is stored is a valid request by the document's own schema (not only by the
        # validator that let it in).
        stored = {"prompt": view["prompt"], **view["params"]}
        problems = _violations(stored, request_schemas[a.kind])
        assert not problems, (a.body, stored, problems)
        assert dispatched[cid] == 1, (cid, dispatched[cid])
    assert len({a.response["id"] for a in accepted}) == len(accepted)


def _violations(value: Any, schema: dict[str, Any], where: str = "body") -> list[str]:
    """The keywords the request schemas use, checked here independently of the app's validator
    (type, enum, bounds, lengths, pattern, required, additionalProperties)."""
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "object": dict,
        "number": (int, float),
    }
    want = schema.get("type")
    if want and (not isinstance(value, kinds[want]) or isinstance(value, bool)):
        return [f"{where}: not a {want}: {value!r}"]
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{where}: {value!r} < {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{where}: {value!r} > {schema['maximum']}")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            out.append(f"{where}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: does not match {schema['pattern']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            out += [f"{where}.{k}: not allowed" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                out += _violations(v, props[k], f"{where}.{k}")
    return out


def _has_inputs(op: Any) -> bool:
    definition = op.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody")) or "{" in op.path
