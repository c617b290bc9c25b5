"""The Firestore REST stand-in (tools/standins/firestore_rest.py) driven over plain HTTP, the way
the jobs' stdlib REST client drives Google, against a real Firestore emulator.

Each test works in its own project (the emulator keeps projects apart), so tests never see each
other's documents. Documents cross between the REST surface and google-cloud-firestore in both
directions to show that both read and write the same data in the same typed shape.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest

from tools import servers

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


@pytest.fixture(scope="module")
def emulator() -> Iterator[servers.ServerHandle]:
    with servers.firestore_emulator() as handle:
        yield handle


class Rest:
    """One project's database on the stand-in, spoken to with urllib only."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.project = f"rest-{uuid.uuid4().hex[:10]}"
        self.database = f"projects/{self.project}/databases/(default)"

    def doc(self, path: str) -> str:
        return f"{self.database}/documents/{path}"

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/v1/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": "Bearer test-token"},
        )
        try:
            with _OPENER.open(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def commit(self, *writes: dict[str, Any], transaction: str | None = None) -> tuple[int, Any]:
        body: dict[str, Any] = {"writes": list(writes)}
        if transaction is not None:
            body["transaction"] = transaction
        return self.call("POST", f"{self.database}/documents:commit", body)

    def get(self, path: str, **query: Any) -> tuple[int, Any]:
        suffix = f"?{urllib.parse.urlencode(query, doseq=True)}" if query else ""
        return self.call("GET", self.doc(path) + suffix)


@pytest.fixture
def rest(emulator: servers.ServerHandle) -> Rest:
    assert emulator.rest_url is not None
    return Rest(emulator.rest_url)


@pytest.fixture
def sdk(emulator: servers.ServerHandle, rest: Rest, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.url)
    client = firestore.Client(project=rest.project)
    yield client
    client.close()


def _create(rest: Rest, path: str, fields: dict[str, Any], stamp: str | None = None) -> dict:
    write: dict[str, Any] = {
        "update": {"name": rest.doc(path), "fields": fields},
        "currentDocument": {"exists": False},
    }
    if stamp:
        write["updateTransforms"] = [{"fieldPath": stamp, "setToServerValue": "REQUEST_TIME"}]
    return write


def _error(status: int, body: Any) -> tuple[int, str]:
    assert set(body) == {"error"} and body["error"]["code"] == status, body
    return status, body["error"]["status"]


# --- writes and reads ---------------------------------------------------------------------------


def test_a_create_with_a_server_timestamp_reads_back_with_its_fields_and_the_commit_time(
    rest: Rest,
) -> None:
    fields = {"status": {"stringValue": "pending"}, "attempts": {"integerValue": "0"}}
    status, committed = rest.commit(_create(rest, "creations/c1", fields, stamp="createdAt"))
    assert status == 200, committed
    assert len(committed["writeResults"]) == 1 and committed["commitTime"].endswith("Z")

    status, doc = rest.get("creations/c1")
    assert status == 200, doc
    assert doc["name"] == rest.doc("creations/c1")
    # REQUEST_TIME is the commit's time, stored as a timestampValue beside the written fields.
    assert doc["fields"] == {**fields, "createdAt": {"timestampValue": committed["commitTime"]}}
    assert doc["createTime"] == doc["updateTime"] == committed["commitTime"]


def test_creating_an_existing_document_is_409_already_exists_and_changes_nothing(
    rest: Rest,
) -> None:
    first = {"status": {"stringValue": "pending"}}
    assert rest.commit(_create(rest, "creations/c1", first))[0] == 200

    status, body = rest.commit(_create(rest, "creations/c1", {"status": {"stringValue": "x"}}))
    assert _error(status, body) == (409, "ALREADY_EXISTS")
    assert rest.get("creations/c1")[1]["fields"] == first


def test_get_of_a_missing_document_is_404_not_found_naming_it(rest: Rest) -> None:
    status, body = rest.get("creations/nope")
    assert _error(status, body) == (404, "NOT_FOUND")
    assert rest.doc("creations/nope") in body["error"]["message"]


def test_a_transaction_reads_then_commits_its_update(rest: Rest) -> None:
    pending = {"status": {"stringValue": "pending"}, "owner": {"nullValue": None}}
    assert rest.commit(_create(rest, "creations/c1", pending))[0] == 200

    status, begun = rest.call("POST", f"{rest.database}/documents:beginTransaction", {})
    assert status == 200, begun
    transaction = begun["transaction"]
    assert base64.b64decode(transaction)  # bytes, base64 in JSON

    status, read = rest.get("creations/c1", transaction=transaction)
    assert status == 200 and read["fields"] == pending, read

    claim = {
        "update": {"name": rest.doc("creations/c1"), "fields": {"owner": {"stringValue": "job"}}},
        "updateMask": {"fieldPaths": ["owner"]},
        "currentDocument": {"exists": True},
    }
    status, committed = rest.commit(claim, transaction=transaction)
    assert status == 200, committed
    status, after = rest.get("creations/c1")
    assert after["fields"] == {
        "status": {"stringValue": "pending"},
        "owner": {"stringValue": "job"},
    }
    assert after["updateTime"] == committed["commitTime"] != after["createTime"]


def test_rollback_answers_an_empty_object(rest: Rest) -> None:
    transaction = rest.call("POST", f"{rest.database}/documents:beginTransaction", {})[1]
    body = {"transaction": transaction["transaction"]}
    assert rest.call("POST", f"{rest.database}/documents:rollback", body) == (200, {})


def test_an_update_of_a_missing_document_with_exists_true_is_404(rest: Rest) -> None:
    write = {
        "update": {"name": rest.doc("creations/ghost"), "fields": {"a": {"booleanValue": True}}},
        "currentDocument": {"exists": True},
    }
    assert _error(*rest.commit(write)) == (404, "NOT_FOUND")
    assert rest.get("creations/ghost")[0] == 404


def test_delete_removes_the_document_and_a_second_delete_with_exists_is_404(rest: Rest) -> None:
    assert rest.commit(_create(rest, "creations/c1", {"a": {"integerValue": "1"}}))[0] == 200

    query = "?currentDocument.exists=true"
    assert rest.call("DELETE", rest.doc("creations/c1") + query) == (200, {})
    assert rest.get("creations/c1")[0] == 404
    assert _error(*rest.call("DELETE", rest.doc("creations/c1") + query)) == (404, "NOT_FOUND")


# --- queries and batch reads --------------------------------------------------------------------


def _seed(rest: Rest, parent: str = "") -> None:
    rows = [("a", "video", 3), ("b", "image", 9), ("c", "video", 7), ("d", "video", 5)]
    writes = [
        _create(
            rest,
            f"{parent}creations/{name}",
            {"kind": {"stringValue": kind}, "n": {"integerValue": str(n)}},
        )
        for name, kind, n in rows
    ]
    assert rest.commit(*writes)[0] == 200


def _videos_by_n_desc(limit: int) -> dict[str, Any]:
    return {
        "from": [{"collectionId": "creations"}],
        "where": {
            "fieldFilter": {
                "field": {"fieldPath": "kind"},
                "op": "EQUAL",
                "value": {"stringValue": "video"},
            }
        },
        "orderBy": [{"field": {"fieldPath": "n"}, "direction": "DESCENDING"}],
        "limit": limit,
    }


def test_run_query_filters_orders_and_limits(rest: Rest) -> None:
    _seed(rest)
    status, answer = rest.call(
        "POST", f"{rest.database}/documents:runQuery", {"structuredQuery": _videos_by_n_desc(2)}
    )
    assert status == 200 and isinstance(answer, list), answer
    names = [item["document"]["name"] for item in answer if "document" in item]
    assert names == [rest.doc("creations/c"), rest.doc("creations/d")]
    assert [item["document"]["fields"]["n"] for item in answer if "document" in item] == [
        {"integerValue": "7"},
        {"integerValue": "5"},
    ]


def test_run_query_under_a_document_parent_sees_only_that_subcollection(rest: Rest) -> None:
    _seed(rest, parent="users/u1/")
    _seed(rest, parent="users/u2/")
    parent = rest.doc("users/u1")
    status, answer = rest.call(
        "POST", f"{parent}:runQuery", {"structuredQuery": _videos_by_n_desc(10)}
    )
    assert status == 200, answer
    names = [item["document"]["name"] for item in answer if "document" in item]
    assert names == [rest.doc(f"users/u1/creations/{n}") for n in ("c", "d", "a")]


def test_run_aggregation_query_counts(rest: Rest) -> None:
    _seed(rest)
    query = _videos_by_n_desc(10)
    del query["orderBy"], query["limit"]
    body = {
        "structuredAggregationQuery": {
            "structuredQuery": query,
            "aggregations": [{"alias": "total", "count": {}}],
        }
    }
    status, answer = rest.call("POST", f"{rest.database}/documents:runAggregationQuery", body)
    assert status == 200, answer
    results = [item["result"] for item in answer if "result" in item]
    assert results == [{"aggregateFields": {"total": {"integerValue": "3"}}}]


def test_batch_get_returns_found_and_missing_documents(rest: Rest) -> None:
    _seed(rest)
    wanted = [rest.doc("creations/a"), rest.doc("creations/zzz"), rest.doc("creations/b")]
    status, answer = rest.call("POST", f"{rest.database}/documents:batchGet", {"documents": wanted})
    assert status == 200 and isinstance(answer, list), answer
    found = {item["found"]["name"]: item["found"]["fields"] for item in answer if "found" in item}
    assert found == {
        rest.doc("creations/a"): {"kind": {"stringValue": "video"}, "n": {"integerValue": "3"}},
        rest.doc("creations/b"): {"kind": {"stringValue": "image"}, "n": {"integerValue": "9"}},
    }
    assert [item["missing"] for item in answer if "missing" in item] == [rest.doc("creations/zzz")]
    assert all("readTime" in item for item in answer)


# --- the same data through the SDK and through REST ---------------------------------------------

WHEN = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=timezone.utc)
PYTHON_VALUES = {
    "s": "text",
    "i": 42,
    "big": 2**53 - 1,  # the emulator (JavaScript numbers) fails a commit of anything larger
    "f": 1.5,
    "b": True,
    "none": None,
    "t": WHEN,
    "m": {"a": 1, "inner": {"x": "y"}},
    "arr": [1, "two", None],
    "raw": b"\x00\xff",
    "empty_map": {},
    "empty_list": [],
}
REST_FIELDS = {
    "s": {"stringValue": "text"},
    "i": {"integerValue": "42"},
    "big": {"integerValue": "9007199254740991"},
    "f": {"doubleValue": 1.5},
    "b": {"booleanValue": True},
    "none": {"nullValue": None},
    "t": {"timestampValue": "2026-01-02T03:04:05.123Z"},
    "m": {
        "mapValue": {
            "fields": {
                "a": {"integerValue": "1"},
                "inner": {"mapValue": {"fields": {"x": {"stringValue": "y"}}}},
            }
        }
    },
    "arr": {
        "arrayValue": {
            "values": [{"integerValue": "1"}, {"stringValue": "two"}, {"nullValue": None}]
        }
    },
    "raw": {"bytesValue": base64.b64encode(b"\x00\xff").decode()},
    "empty_map": {"mapValue": {}},
    "empty_list": {"arrayValue": {}},
}


def test_a_document_the_sdk_wrote_reads_back_through_rest_in_the_typed_json_shape(
    rest: Rest, sdk: Any
) -> None:
    sdk.collection("creations").document("from-sdk").set(PYTHON_VALUES)
    status, doc = rest.get("creations/from-sdk")
    assert status == 200, doc
    assert doc["fields"] == REST_FIELDS


def test_a_document_written_through_rest_reads_back_through_the_sdk_as_the_same_values(
    rest: Rest, sdk: Any
) -> None:
    assert rest.commit(_create(rest, "creations/from-rest", REST_FIELDS))[0] == 200
    snapshot = sdk.collection("creations").document("from-rest").get()
    assert snapshot.exists
    assert snapshot.to_dict() == PYTHON_VALUES


# --- the REST front end's own answers -----------------------------------------------------------


def test_an_unknown_route_is_404_in_googles_error_shape(rest: Rest) -> None:
    status, body = rest.call("POST", f"{rest.database}/documents:frobnicate", {})
    assert _error(status, body) == (404, "NOT_FOUND")


def test_malformed_json_unknown_fields_and_unknown_query_parameters_are_400(rest: Rest) -> None:
    commit = f"{rest.database}/documents:commit"
    assert _error(*rest.call("POST", commit, raw=b"{not json")) == (400, "INVALID_ARGUMENT")
    assert _error(*rest.call("POST", commit, raw=b"[1, 2]")) == (400, "INVALID_ARGUMENT")
    status, body = rest.call("POST", commit, {"writes": [], "bogus": 1})
    assert _error(status, body) == (400, "INVALID_ARGUMENT") and "bogus" in body["error"]["message"]
    status, body = rest.get("creations/c1", nonsense="1")
    assert _error(status, body) == (400, "INVALID_ARGUMENT")
    assert "nonsense" in body["error"]["message"]


def test_a_chunked_request_body_is_read_whole(rest: Rest) -> None:
    """http.client sends an iterable body chunked; the stand-in must not see it as empty."""
    body = json.dumps({"writes": [_create(rest, "creations/chunked", {"a": {"nullValue": None}})]})
    split = urllib.parse.urlsplit(rest.base_url)
    conn = http.client.HTTPConnection("127.0.0.1", split.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/v1/{rest.database}/documents:commit",
            body=iter([body[:20].encode(), body[20:].encode()]),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert len(json.loads(resp.read())["writeResults"]) == 1
    finally:
        conn.close()
    assert rest.get("creations/chunked")[1]["fields"] == {"a": {"nullValue": None}}


def test_the_emulator_handle_exports_the_rest_url_and_stops_the_stand_in_on_exit() -> None:
    with servers.firestore_emulator() as handle:
        url = handle.env["PHOENIX_FIRESTORE_REST_URL"]
        assert url == handle.rest_url and url.startswith("http://127.0.0.1:")
        assert handle.env["FIRESTORE_EMULATOR_HOST"] == handle.url
        status, _ = Rest(url).get("creations/none")
        assert status == 404  # served, by the stand-in of THIS emulator
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
