"""Property-based fuzzing of the real Flask app against its own OpenAPI document.

Schemathesis reads ``/api/openapi.json`` from the app (not from ``build_openapi()`` directly, so
the route that serves the document is exercised too) and generates requests for every
operation: valid ones (positive mode) and deliberately invalid ones (negative mode: wrong types,
missing fields, out-of-range numbers, strange headers). Over 1000 requests in total, none may
produce a 5xx and every response must match the document: status code listed, content type,
declared headers, and the body schema (``Creation``, ``Error``...).

Why it matters: clients (the page, scripts, generated SDKs) rely on the document; a 500 on bad
input is a bug that also leaks into error budgets and alerts. Nothing runs behind the API
(``RecordingDispatcher``), so the fuzzer cannot start jobs.
"""

from __future__ import annotations

from collections import Counter
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

MIN_REQUESTS = 1000
# Per operation and mode. Operations without parameters exhaust their (tiny) input space
# quickly; the ones with bodies/queries/headers get plenty.
EXAMPLES = 150
CHECKS = [
    not_a_server_error,
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
    settings = Settings(data_dir=tmp_path, dispatch="record")
    store = SqliteCreationStore(settings.sqlite_path)
    media = LocalMediaStore(settings.media_dir)
    recorder = RecordingDispatcher()
    app = create_app(settings, store=store, media=media, dispatchers=lambda path: recorder)
    app.seeded_ids = _seed(store, media)  # type: ignore[attr-defined]
    yield app
    store.close()


def test_fuzzed_requests_never_5xx_and_always_match_the_document(fuzz_app: Any) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", fuzz_app)
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    samples: dict[str, str] = {}
    requests_sent = 0

    def exercise(label: str, strategy: Any, examples: int) -> None:
        nonlocal requests_sent

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,  # no .hypothesis/ directory in the checkout; parallel-safe
            suppress_health_check=list(HealthCheck),
            derandomize=False,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            nonlocal requests_sent
            response = case.call()
            requests_sent += 1
            statuses[f"{case.method} {case.path} -> {response.status_code}"] += 1
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
        except hypothesis.errors.Unsatisfiable:
            # Negative mode for an operation whose only input is an unconstrained string
            # (e.g. /media/{key}): no invalid request exists for it. Anything else is a bug.
            if not label.endswith("negative"):
                raise

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
        f"statuses {dict(sorted(by_status.items()))}; failures {len(failures)}"
    )
    assert requests_sent >= MIN_REQUESTS
    report = "\n\n".join(
        f"{n} x {kind}\n  e.g. {samples[kind]}" for kind, n in Counter(failures).most_common()
    )
    print(report)
    assert not failures, f"{len(failures)} failures:\n\n{report}"
    assert not any(s.startswith("5") for s in by_status), statuses


def _has_inputs(op: Any) -> bool:
    definition = op.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody")) or "{" in op.path
