"""src/python/api/deploy/firestore.indexes.json serves every query the Firestore adapters make.

Production Firestore refuses a query that needs a composite index it does not have
(FAILED_PRECONDITION); the emulator enforces no index at all, so every other test passes
either way. Here the real FirestoreCreationStore runs against the emulator, through every
method that queries and every parameter combination ``scan`` accepts, and each query the
google-cloud-firestore client builds is recorded (its StructuredQuery). For each, the
composite index Firestore's rules require is derived and looked up in the file that
tools/deploy/firestore_indexes.py deploys. The other direction holds too: every composite
index in the file serves some recorded query (an unused index costs a write on every change).
"""

from __future__ import annotations

import inspect
import itertools
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from tools.servers import firestore_emulator

ROOT = Path(__file__).resolve().parents[2]
INDEXES = ROOT / "src/python/api/deploy/firestore.indexes.json"

# Filter operators Firestore serves like an equality in an index (IN is a set of equalities).
EQUALITY = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}


@pytest.fixture(scope="module")
def firestore_env():
    with firestore_emulator() as fs:
        yield fs.env


class Recorder:
    """Every StructuredQuery an adapter sends, with the adapter method that built it: the
    gRPC client's (google-cloud-firestore builds it) and the REST client's (built by hand as
    JSON, read here into the same message type, as Firestore's REST front end does)."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, Any]] = []

    def install(self, monkeypatch, adapter: str) -> None:
        if adapter == "rest":
            from google.cloud.firestore_v1.types import StructuredQuery

            from common.adapters.firestore_rest_store import FirestoreRest

            original_run = FirestoreRest.run_query

            def recording_rest(client, structured):
                proto = StructuredQuery.from_json(json.dumps(structured))
                self.queries.append((_adapter_method(), proto))
                return original_run(client, structured)

            monkeypatch.setattr(FirestoreRest, "run_query", recording_rest)
            return
        from google.cloud.firestore_v1.base_query import BaseQuery

        original = BaseQuery._to_protobuf
        recorder = self

        def recording(query):
            proto = original(query)
            recorder.queries.append((_adapter_method(), proto))
            return proto

        monkeypatch.setattr(BaseQuery, "_to_protobuf", recording)


def _adapter_method() -> str:
    for frame in inspect.stack():
        in_adapter = "/common/adapters/firestore_" in frame.filename.replace("\\", "/")
        if in_adapter and not frame.function.startswith("<"):  # not a comprehension
            return frame.function
    return "<outside the adapters>"


def required_index(proto: Any, prefix: str) -> dict | None:
    """The composite index a StructuredQuery needs (Firestore's rules), or None when the
    automatic single-field indexes serve it."""
    equality: list[str] = []
    inequality: list[str] = []

    def walk(f: Any) -> None:
        if f.composite_filter and f.composite_filter.filters:
            for sub in f.composite_filter.filters:
                walk(sub)
        elif f.field_filter and f.field_filter.field.field_path:
            op = f.field_filter.op.name
            (equality if op in EQUALITY else inequality).append(f.field_filter.field.field_path)
        elif f.unary_filter and f.unary_filter.field.field_path:
            equality.append(f.unary_filter.field.field_path)

    walk(proto.where)
    orders = [
        (o.field.field_path, o.direction.name)
        for o in proto.order_by
        if o.field.field_path != "__name__"
    ]
    if inequality and not orders:  # Firestore orders by the inequality field first
        orders = [(inequality[0], "ASCENDING")]
    fields = list(dict.fromkeys([*equality, *(path for path, _ in orders)]))
    (source,) = proto.from_
    group = source.collection_id.removeprefix(prefix)
    if len(fields) <= 1:
        return None if not fields else {"single": fields[0], "collectionGroup": group}
    return {
        "collectionGroup": group,
        "queryScope": "COLLECTION_GROUP" if source.all_descendants else "COLLECTION",
        "equality": sorted(set(equality)),
        "orders": orders,
    }


def served_by(need: dict, spec: dict) -> dict | None:
    """The file's composite index that serves ``need``: its leading fields are the equality
    fields (any order), the rest exactly the query's orders."""
    n = len(need["equality"])
    for index in spec["indexes"]:
        if (index["collectionGroup"], index["queryScope"]) != (
            need["collectionGroup"],
            need["queryScope"],
        ):
            continue
        fields = [(f["fieldPath"], f.get("order")) for f in index["fields"]]
        if sorted(p for p, _ in fields[:n]) == need["equality"] and fields[n:] == need["orders"]:
            return index
    return None


def check(recorded: list[tuple[str, Any]], spec: dict, prefix: str) -> list[str]:
    """Problems: queries no index serves, queries on exempted fields, unused indexes."""
    problems = []
    exempt = {(o["collectionGroup"], o["fieldPath"]) for o in spec.get("fieldOverrides", [])}
    used: list[dict] = []
    for method, proto in recorded:
        need = required_index(proto, prefix)
        if need is None:
            continue
        if "single" in need:
            if (need["collectionGroup"], need["single"]) in exempt:
                problems.append(f"{method}: filters or orders on exempted field {need['single']}")
            continue
        index = served_by(need, spec)
        if index is None:
            problems.append(f"{method}: no composite index for {need}")
        else:
            used.append(index)
    for index in spec["indexes"]:
        if not any(index is u for u in used):
            problems.append(f"index {index} serves no recorded query")
    return problems


def _store(env: dict[str, str], monkeypatch, prefix: str, adapter: str):
    settings = Settings(gcp_project="phoenix-test", firestore_prefix=prefix)
    if adapter == "rest":
        from common.adapters.firestore_rest_store import FirestoreRestCreationStore

        return FirestoreRestCreationStore.from_settings(settings, env=env)
    from common.adapters.firestore_store import FirestoreCreationStore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", env["FIRESTORE_EMULATOR_HOST"])
    return FirestoreCreationStore.from_settings(settings)


def _query_methods(adapter: str) -> set[str]:
    """Adapter methods whose source builds a query (where/order_by/stream; the REST client's
    structured_query)."""
    from common.adapters import firestore_guard, firestore_rest_store, firestore_store

    names = set()
    modules = (firestore_rest_store, firestore_guard) if adapter == "rest" else (firestore_store,)
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name, fn in inspect.getmembers(cls, inspect.isfunction):
                src = inspect.getsource(fn)
                tokens = (".where(", ".order_by(", ".stream(", "structured_query(")
                if any(token in src for token in tokens):
                    names.add(name)
    return names


@pytest.fixture(params=["grpc", "rest"])
def adapter(request) -> str:
    """The API's adapter (google-cloud-firestore) and the jobs' (REST, standard library)."""
    return str(request.param)


@pytest.fixture
def recorded(firestore_env, monkeypatch, adapter) -> tuple[list[tuple[str, Any]], str]:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    store = _store(firestore_env, monkeypatch, prefix, adapter)
    recorder = Recorder()
    recorder.install(monkeypatch, adapter)
    now = lc.utcnow()
    for i, kind in enumerate([Kind.VIDEO, Kind.IMAGE, Kind.VIDEO]):
        params = (
            {"aspect_ratio": "16:9", "duration_seconds": 4}
            if kind is Kind.VIDEO
            else {"aspect_ratio": "1:1", "count": 1}
        )
        store.add(
            lc.new(
                user_id=f"u{i % 2}",
                kind=kind,
                prompt="a cat",
                params=params,
                path="cloud-tasks",
                now=now - timedelta(minutes=i),
            )
        )
    # Every method that queries, with every parameter shape its signature allows.
    assert len(store.list_for_user("u0", 10)) == 2
    status_sets: list[list[Status] | None] = [
        None,
        [Status.PENDING],
        [Status.PENDING, Status.PROCESSING],
    ]
    for statuses, updated_before, created_after in itertools.product(
        status_sets, [None, now + timedelta(seconds=1)], [None, now - timedelta(hours=1)]
    ):
        store.scan(
            statuses=statuses, updated_before=updated_before, created_after=created_after, limit=50
        )
    store.quota_holders(limit=10)  # the quota sweep: one inequality, a single-field index
    store.close()
    return recorder.queries, prefix


def test_every_query_the_store_makes_has_its_index(recorded, adapter):
    queries, prefix = recorded
    spec = json.loads(INDEXES.read_text())
    assert queries, "no query was recorded: the recorder is not hooked into the client"
    assert check(queries, spec, prefix) == []
    # Each method that builds a query was driven here: a new query method fails this test
    # until it is exercised above (and its index added).
    assert _query_methods(adapter) <= {method for method, _ in queries}


def test_exemptions_name_fields_the_store_writes():
    """An exemption for a field that no longer exists is dead configuration (and hides a
    rename: the new field would be indexed after all)."""
    from common.adapters.firestore_store import COLLECTION, _to_document

    creation = lc.new(
        user_id="u",
        kind=Kind.IMAGE,
        prompt="a cat",
        params={"aspect_ratio": "1:1", "count": 1},
        path="cloud-tasks",
        now=lc.utcnow(),
    )
    written = set(_to_document(creation))
    spec = json.loads(INDEXES.read_text())
    exempt = {o["fieldPath"] for o in spec["fieldOverrides"] if o["collectionGroup"] == COLLECTION}
    assert exempt and exempt <= written, exempt - written


def test_a_missing_index_is_reported(recorded):
    queries, prefix = recorded
    spec = json.loads(INDEXES.read_text())
    for dropped in range(len(spec["indexes"])):
        smaller = {**spec, "indexes": [i for n, i in enumerate(spec["indexes"]) if n != dropped]}
        problems = check(queries, smaller, prefix)
        assert any("no composite index" in p for p in problems), spec["indexes"][dropped]


def test_a_wrong_direction_is_reported(recorded):
    queries, prefix = recorded
    spec = json.loads(INDEXES.read_text())
    flipped = json.loads(json.dumps(spec))
    last = flipped["indexes"][0]["fields"][-1]
    last["order"] = "ASCENDING" if last["order"] == "DESCENDING" else "DESCENDING"
    assert any("no composite index" in p for p in check(queries, flipped, prefix))
