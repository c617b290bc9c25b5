"""The jobs' Firestore REST client below the store contract: the value codec, Google's error
answers, the transaction loop, reconnects and what it imports. A scripted HTTP server plays
Firestore here; the store contract tests (tests/contract) run the same client against the
emulator through the REST stand-in."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

import pytest

# For the child interpreters below: imported here so that Pants infers the dependencies.
import common.adapters.vertex_generator  # noqa: F401
import common.generators  # noqa: F401
import common.job_main  # noqa: F401
from common.adapters import firestore_rest_store as rest_store
from common.adapters.firestore_rest_store import (
    FirestoreRest,
    FirestoreRestError,
    TransactionContended,
    decode_value,
    encode_value,
    run_transaction,
)
from tests.support.child import run_python
from tools.servers import LOOPBACK, BackgroundHttpServer

Answer = tuple[int, Any]


class ScriptedFirestore:
    """Answers each request with the next scripted (status, body); records what it was sent."""

    def __init__(self, answers: list[Answer | Callable[[dict[str, Any]], Answer]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.close_after_each = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "authorization": self.headers.get("Authorization"),
                }
                owner.requests.append(seen)
                answer = owner.answers.pop(0)
                status, payload = answer(seen) if callable(answer) else answer
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                if owner.close_after_each:
                    self.close_connection = True

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self._server = BackgroundHttpServer(LOOPBACK, 0, Handler, "scripted-firestore")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def scripted():
    servers: list[ScriptedFirestore] = []

    def start(*answers: Answer | Callable[[dict[str, Any]], Answer]) -> ScriptedFirestore:
        server = ScriptedFirestore(list(answers))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _client(server: ScriptedFirestore) -> FirestoreRest:
    return FirestoreRest(server.url, "p", "(default)", authenticate=False)


def _error(status: str, code: int) -> Answer:
    return code, {"error": {"code": code, "message": f"{status} here", "status": status}}


def test_values_round_trip_in_firestore_s_json_types() -> None:
    when = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    value = {
        "s": "x",
        "i": 7,
        "f": 1.5,
        "b": True,
        "n": None,
        "t": when,
        "l": [1, "a", None],
        "m": {"k": {"deep": 2}},
        "empty_list": [],
        "empty_map": {},
    }
    encoded = encode_value(value)
    fields = encoded["mapValue"]["fields"]
    assert fields["i"] == {"integerValue": "7"}  # int64 travels as a string
    assert fields["b"] == {"booleanValue": True}  # not an integer
    assert fields["t"] == {"timestampValue": "2026-12-01T10:00:00.123456Z"}
    assert fields["n"] == {"nullValue": None}
    assert decode_value(json.loads(json.dumps(encoded))) == value


def test_nanosecond_timestamps_and_naive_datetimes() -> None:
    assert decode_value({"timestampValue": "2026-12-01T10:00:00.123456789Z"}) == datetime(
        2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc
    )
    assert decode_value({"timestampValue": "2026-12-01T10:00:00Z"}).microsecond == 0
    naive = datetime(2026, 12, 1, 10, 0, 0)
    assert encode_value(naive) == {"timestampValue": "2026-12-01T10:00:00.000000Z"}
    with pytest.raises(TypeError):
        encode_value(object())


def test_google_s_error_answer_becomes_its_status_and_a_missing_document_none(scripted) -> None:
    server = scripted(_error("NOT_FOUND", 404), _error("PERMISSION_DENIED", 403), (502, "oops"))
    client = _client(server)
    assert client.get(f"{client.documents}/c/missing") is None
    with pytest.raises(FirestoreRestError) as denied:
        client.get(f"{client.documents}/c/x")
    assert (denied.value.status, denied.value.http_status) == ("PERMISSION_DENIED", 403)
    with pytest.raises(FirestoreRestError) as bad_gateway:
        client.get(f"{client.documents}/c/x")
    assert (bad_gateway.value.status, bad_gateway.value.http_status) == ("UNKNOWN", 502)
    assert server.requests[0]["path"] == "/v1/projects/p/databases/(default)/documents/c/missing"
    assert server.requests[0]["authorization"] == "Bearer owner"  # what emulators accept


def test_an_aborted_commit_reruns_the_body_on_a_retry_transaction(scripted) -> None:
    server = scripted(
        (200, {"transaction": "dHgx"}),
        _error("ABORTED", 409),  # the commit of attempt 1
        (200, {}),  # its rollback
        (200, {"transaction": "dHgy"}),
        (200, {"commitTime": "2026-12-01T10:00:01.5Z", "writeResults": [{}]}),
    )
    runs: list[str] = []

    def body(tx: Any) -> str:
        runs.append(tx.id)
        tx.set(f"{_client(server).documents}/c/1", {"status": "processing", "updated_at": 0})
        return "done"

    result, committed = run_transaction(_client(server), body)
    assert (result, runs) == ("done", ["dHgx", "dHgy"])
    assert committed == datetime(2026, 12, 1, 10, 0, 1, 500000, tzinfo=timezone.utc)
    begin_again = server.requests[3]["body"]
    assert begin_again == {"options": {"readWrite": {"retryTransaction": "dHgx"}}}
    commit = server.requests[4]["body"]
    assert commit["transaction"] == "dHgy"
    (write,) = commit["writes"]
    assert "updated_at" not in write["update"]["fields"]  # the server's commit time instead
    assert write["updateTransforms"] == [
        {"fieldPath": "updated_at", "setToServerValue": "REQUEST_TIME"}
    ]


def test_a_transaction_aborted_every_time_is_contended_and_a_failing_body_rolls_back(
    scripted,
) -> None:
    answers: list[Answer] = []
    for n in range(3):
        answers += [(200, {"transaction": f"t{n}"}), _error("ABORTED", 409), (200, {})]
    server = scripted(*answers)
    with pytest.raises(TransactionContended):
        run_transaction(_client(server), lambda tx: tx.set("x", {"a": 1}), attempts=3)
    assert [r["path"].rsplit(":", 1)[1] for r in server.requests].count("commit") == 3

    server2 = scripted((200, {"transaction": "t"}), (200, {}))

    def refuse(tx: Any) -> None:
        raise LookupError("the lifecycle refused")

    with pytest.raises(LookupError):
        run_transaction(_client(server2), refuse)
    assert server2.requests[1]["path"].endswith(":rollback")
    assert server2.requests[1]["body"] == {"transaction": "t"}


def test_a_keep_alive_connection_closed_by_the_server_is_reopened_once(scripted) -> None:
    server = scripted(*[(200, {"fields": {"n": {"integerValue": str(i)}}}) for i in range(3)])
    server.close_after_each = True  # every answer closes the connection the client keeps
    client = _client(server)
    assert [client.get(f"{client.documents}/c/{i}") for i in range(3)] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


def test_each_call_is_a_client_span(scripted, tmp_path) -> None:
    from common import observability, tracing
    from common.config import Settings

    out = tmp_path / "spans.jsonl"
    observability._reset_for_tests()
    try:
        observability.configure(Settings(trace_exporter=f"file:{out}", data_dir=tmp_path), "t")
        server = scripted(_error("NOT_FOUND", 404))
        with tracing.tracer("t").start_as_current_span("caller"):
            _client(server).get("projects/p/databases/(default)/documents/c/1")
        observability.shutdown()
    finally:
        observability._reset_for_tests()
    spans = {s["name"]: s for s in map(json.loads, out.read_text().splitlines())}
    call = spans["Firestore GET"]
    assert call["kind"] == "CLIENT" and call["attributes"]["db.system"] == "firestore"
    assert call["attributes"]["http.response.status_code"] == 404
    assert call["parent_span_id"] == spans["caller"]["span_id"]


def test_where_it_connects() -> None:
    url = rest_store.rest_url_from_env
    assert url({}) == ("https://firestore.googleapis.com", True)
    assert url({"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"}) == ("http://127.0.0.1:8080", False)
    both = {"FIRESTORE_EMULATOR_HOST": "h:1", "PHOENIX_FIRESTORE_REST_URL": "http://h:2"}
    assert url(both) == ("http://h:2", False)
    with pytest.raises(ValueError):
        FirestoreRest("firestore.googleapis.com", "p", "(default)", authenticate=False)


def test_on_cloud_run_the_token_comes_from_the_metadata_server(monkeypatch) -> None:
    asked: list[tuple[str, str, dict[str, str]]] = []

    class FakeResponse:
        status = 200

        def read(self) -> bytes:
            return b'{"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"}'

    class FakeConnection:
        def __init__(self, host: str, timeout: float) -> None:
            self.host = host

        def request(self, method: str, url: str, headers: dict[str, str]) -> None:
            asked.append((self.host, url, headers))

        def getresponse(self) -> FakeResponse:
            return FakeResponse()

        def close(self) -> None:
            pass

    monkeypatch.setenv("CLOUD_RUN_JOB", "phoenix-image-job")
    monkeypatch.setattr(rest_store.http.client, "HTTPConnection", FakeConnection)
    token = rest_store._AccessToken()
    assert token.header() == "Bearer ya29.x"
    assert token.header() == "Bearer ya29.x"  # cached: one fetch
    ((host, url, headers),) = asked
    assert host == "metadata.google.internal" and url.endswith("/service-accounts/default/token")
    assert headers == {"Metadata-Flavor": "Google"}


def test_a_job_on_firestore_imports_no_google_sdk_or_grpc_before_its_claim() -> None:
    """The claim's store is the REST adapter; nothing of google-cloud-firestore, grpc or
    google-auth is imported to build it, and it is kept (not rebuilt) at the claim."""
    result = run_python(
        """
        import os, sys, tempfile
        os.environ.update(
            PHOENIX_DATA_DIR=tempfile.mkdtemp(),
            PHOENIX_STORE="firestore",
            PHOENIX_GCP_PROJECT="phoenix-test",
            FIRESTORE_EMULATOR_HOST="127.0.0.1:9",
            PHOENIX_ALLOW_HEADER_IDENTITY="yes",
            PHOENIX_GENERATOR="vertex",
        )
        from common.config import Settings
        from common import job_main, observability
        from common.generators import PRODUCTION
        settings = Settings.from_env()
        observability.configure(settings, "phoenix-image-job")
        observability.defer_client_instrumentation()  # what job_main.main does first
        deps = job_main.build_job_deps(settings, PRODUCTION)
        job_main.instrument_after_claim(deps)
        claim_store = deps.store
        heavy = ("google", "grpc", "requests", "opentelemetry.instrumentation", "pydantic")
        print("store", type(claim_store).__name__)
        print("heavy", sorted(m for m in sys.modules if m.startswith(heavy)))
        deps.on_phase("claimed", None)
        print("kept", deps.store is claim_store)
        """,
        drop=("PHOENIX_TRACE_EXPORTER", "PHOENIX_METRICS_EXPORTER"),
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["store"] == "FirestoreRestCreationStore"
    assert lines["heavy"] == "[]", lines["heavy"]
    assert lines["kept"] == "True"


def test_threads_use_their_own_connection(scripted) -> None:
    server = scripted(*[(200, {"fields": {}}) for _ in range(2)])
    client = _client(server)
    seen: list[Any] = []

    def read() -> None:
        client.get(f"{client.documents}/c/1")
        seen.append(client._local.conn)

    workers = [threading.Thread(target=read) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(seen) == 2 and seen[0] is not seen[1]
    client.close()
    assert client._connections == set()


def test_a_production_job_never_loads_google_cloud_firestore_even_for_a_veo_slot() -> None:
    """After the claim the job builds the Vertex generator with its Veo slot guard, which
    speaks the same REST client: nothing of google.cloud or gRPC is imported for it."""
    result = run_python(
        """
        import sys
        from common.config import Settings
        from common.adapters.vertex_generator import VertexGenerator
        settings = Settings(
            store="firestore", gcp_project="phoenix-test", generator="vertex",
            vertex_base_url="http://127.0.0.1:9", vertex_access_token="t",
        )
        generator = VertexGenerator.from_settings(settings)  # no call made: no network
        print("guard", type(generator._guard).__name__)
        print("sdk", sorted(m for m in sys.modules if m.startswith(("google.cloud", "grpc"))))
        """,
        env={"FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines == {"guard": "FirestoreConcurrencyGuard", "sdk": "[]"}


def test_a_read_is_retried_on_a_transient_answer_and_a_commit_is_not(scripted) -> None:
    server = scripted(
        _error("UNAVAILABLE", 503),
        _error("DEADLINE_EXCEEDED", 504),
        (200, {"fields": {"n": {"integerValue": "1"}}}),
        _error("UNAVAILABLE", 503),
    )
    client = _client(server)
    assert client.get(f"{client.documents}/c/1") == {"n": 1}  # third time lucky
    with pytest.raises(FirestoreRestError) as unavailable:
        client.commit([{"delete": f"{client.documents}/c/1"}], "dHg=")
    assert unavailable.value.status == "UNAVAILABLE"
    assert len(server.requests) == 4  # 3 reads, 1 commit: an unknown outcome is not resent


def test_a_permanent_error_is_not_retried_and_ids_are_quoted(scripted) -> None:
    server = scripted(_error("PERMISSION_DENIED", 403))
    client = _client(server)
    with pytest.raises(FirestoreRestError):
        client.get(f"{client.documents}/c/a b")
    ((request,),) = [server.requests]
    assert request["path"] == "/v1/projects/p/databases/(default)/documents/c/a%20b"
