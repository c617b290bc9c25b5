"""The Firestore REST API v1 (``https://firestore.googleapis.com/v1/...``), served locally by
transcoding each HTTP request to an RPC on the gRPC Firestore emulator.

Why: the production jobs claim their creation through a stdlib-only REST client (importing the
Firestore SDK costs ~440 ms of a job's cold start, issue #11), but our Firestore emulator
(``@firestore-emulator/server``) speaks gRPC only. This server lets that client be tested and
benchmarked against the same emulator the SDK adapter uses, so a document written by either
reads back identically through the other.

Faithful by construction where it matters: Google's REST surface IS gRPC transcoding of the
``google.firestore.v1.Firestore`` service. The URL templates below are that service's
``google.api.http`` rules (google-cloud-firestore's own REST transport carries the same), and
the JSON bodies are the proto3 JSON mapping of the very request/response messages: a body is
parsed by protobuf's JSON parser with unknown fields rejected, sent through the generated GAPIC
client, and the answer printed as Google prints it (camelCase, enums by name, int64 as strings,
defaults omitted). Server streams (``batchGet``, ``runQuery``, ``runAggregationQuery``) answer
a JSON array, as Google does. gRPC errors become Google's REST error body
``{"error": {"code", "message", "status"}}`` with the google.rpc code's HTTP status.
``Authorization: Bearer`` is accepted and ignored, as the emulator does.

The emulator does not implement GetDocument or DeleteDocument, so ``GET``/``DELETE`` of a
document are carried out the way google-cloud-firestore itself does them (a one-document
BatchGetDocuments; a Commit of one delete write). ``PATCH`` (UpdateDocument) is not served:
writes go through ``:commit``.

What it cannot prove: whatever the emulator gets wrong is wrong here too (notes/emulators.md):
transactions are not isolated (the id is a constant dummy, a conflicting writer is never
ABORTED), ``currentDocument.updateTime`` preconditions and read masks are ignored, only the
first transform of a write is applied and ``transformResults`` stay empty, writes of one commit
are applied one by one (not atomically), times have millisecond precision. Nor does it model
Google's front end: no auth check, quotas or ``fields=`` partial responses, and an error during
a stream replaces the whole answer instead of following partial results.

Use: ``with FirestoreRestStandIn("127.0.0.1:PORT") as rest: rest.url``;
``tools.servers.firestore_emulator()`` starts one for its emulator and exports its URL as
``PHOENIX_FIRESTORE_REST_URL``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Sequence

import grpc
from google.api_core import exceptions as core_exceptions
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports.grpc import FirestoreGrpcTransport
from google.cloud.firestore_v1.types import firestore as fs
from google.cloud.firestore_v1.types import write as fs_write
from google.protobuf import json_format

from tools.servers import LOOPBACK, BackgroundHttpServer

# google.rpc.Code -> HTTP status, as Google's REST front end maps them.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# Google's system query parameters: legal on every method, never fields of the request.
SYSTEM_PARAMS = frozenset(
    {"alt", "prettyPrint", "key", "access_token", "$.xgafv", "quotaUser", "callback", "fields"}
)
RPC_TIMEOUT_SECONDS = 30.0
Metadata = Sequence[tuple[str, str]]

_DB = r"projects/[^/]+/databases/[^/]+"
_DOCS = _DB + r"/documents"
_DOC = _DOCS + r"/[^/]+/.+"  # documents/*/** : a collection and at least one more segment


@dataclass(frozen=True)
class Route:
    """One ``google.api.http`` rule; its path variable ``{field=template}`` is the group ``var``."""

    method: str
    pattern: re.Pattern[str]
    field: str  # the request field the path variable fills
    request: Any  # proto-plus request type the HTTP request transcodes to
    call: Callable[[FirestoreClient, Any, Metadata], Any]  # runs it, returns the JSON answer


def _route(method: str, template: str, verb: str, field: str, request: Any, call: Any) -> Route:
    pattern = re.compile(f"^/v1/(?P<var>{template}){re.escape(verb)}$")
    return Route(method, pattern, field, request, call)


def _rpc(name: str, streaming: bool = False) -> Callable[[FirestoreClient, Any, Metadata], Any]:
    """The RPC of the same name on the emulator; a server stream answers a JSON array."""

    def call(client: FirestoreClient, request: Any, metadata: Metadata) -> Any:
        answer = getattr(client, name)(
            request=request, retry=None, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
        )
        return [_to_json(item) for item in answer] if streaming else _to_json(answer)

    return call


def _get_document(client: FirestoreClient, request: Any, metadata: Metadata) -> Any:
    """GetDocument, which the emulator does not implement, done as google-cloud-firestore's own
    ``DocumentReference.get()`` does it: a one-document BatchGetDocuments."""
    pb = type(request).pb(request)
    batch = fs.BatchGetDocumentsRequest(database=_database(request.name), documents=[request.name])
    if pb.HasField("mask"):
        batch.mask = request.mask
    selector = pb.WhichOneof("consistency_selector")  # transaction | read_time
    if selector:
        setattr(batch, selector, getattr(request, selector))
    for answer in client.batch_get_documents(
        request=batch, retry=None, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
    ):
        if answer.found.name:
            return _to_json(answer.found)
    raise RestError("NOT_FOUND", f'Document "{request.name}" not found.')


def _delete_document(client: FirestoreClient, request: Any, metadata: Metadata) -> Any:
    """DeleteDocument, which the emulator does not implement, done as the SDK's
    ``DocumentReference.delete()`` does it: a Commit of one delete write."""
    write = fs_write.Write(delete=request.name)
    if type(request).pb(request).HasField("current_document"):
        write.current_document = request.current_document
    commit = fs.CommitRequest(database=_database(request.name), writes=[write])
    client.commit(request=commit, retry=None, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata)
    return {}


ROUTES = (
    _route("GET", _DOC, "", "name", fs.GetDocumentRequest, _get_document),
    _route("DELETE", _DOC, "", "name", fs.DeleteDocumentRequest, _delete_document),
    _route(
        "POST",
        _DB,
        "/documents:beginTransaction",
        "database",
        fs.BeginTransactionRequest,
        _rpc("begin_transaction"),
    ),
    _route("POST", _DB, "/documents:commit", "database", fs.CommitRequest, _rpc("commit")),
    _route("POST", _DB, "/documents:rollback", "database", fs.RollbackRequest, _rpc("rollback")),
    _route(
        "POST",
        _DB,
        "/documents:batchGet",
        "database",
        fs.BatchGetDocumentsRequest,
        _rpc("batch_get_documents", streaming=True),
    ),
    _route(
        "POST",
        f"{_DOCS}|{_DOC}",
        ":runQuery",
        "parent",
        fs.RunQueryRequest,
        _rpc("run_query", streaming=True),
    ),
    _route(
        "POST",
        f"{_DOCS}|{_DOC}",
        ":runAggregationQuery",
        "parent",
        fs.RunAggregationQueryRequest,
        _rpc("run_aggregation_query", streaming=True),
    ),
)


class RestError(Exception):
    """An answer in Google's REST error shape."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.code = HTTP_STATUS.get(status, 500)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def _query_into(request: dict[str, Any], descriptor: Any, query: str) -> None:
    """gRPC transcoding's query-parameter rule: ``a.b=v`` sets request field ``a.b`` (JSON or
    proto name); repeated fields take every occurrence; values are given as JSON would, except
    that booleans arrive as the strings true/false."""
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in SYSTEM_PARAMS:
            continue
        node, desc, parts = request, descriptor, key.split(".")
        for i, part in enumerate(parts):
            field = desc.fields_by_camelcase_name.get(part) or desc.fields_by_name.get(part)
            if field is None:
                raise RestError(
                    "INVALID_ARGUMENT",
                    f'Invalid JSON payload received. Unknown name "{key}": '
                    "Cannot bind query parameter.",
                )
            name = field.json_name
            if i < len(parts) - 1:
                if field.message_type is None or field.is_repeated:
                    raise RestError("INVALID_ARGUMENT", f"Cannot bind query parameter {key!r}.")
                node, desc = node.setdefault(name, {}), field.message_type
                continue
            converted: Any = value
            if field.type == field.TYPE_BOOL:
                if value not in ("true", "false"):
                    raise RestError("INVALID_ARGUMENT", f"Invalid value at {key!r}: {value!r}")
                converted = value == "true"
            if field.is_repeated:
                node.setdefault(name, []).append(converted)
            else:
                node[name] = converted


def _to_json(message: Any) -> dict[str, Any]:
    """Google's REST printing: camelCase, enum names, defaults omitted."""
    if message is None:  # google.protobuf.Empty
        return {}
    return json_format.MessageToDict(type(message).pb(message))


def _database(resource: str) -> str:
    return "/".join(resource.split("/")[:4])  # projects/P/databases/D


def transcode(
    client: FirestoreClient, route: Route, path_value: str, query: str, raw: bytes
) -> Any:
    """HTTP request -> request message -> RPC -> JSON answer (raises RestError)."""
    request: dict[str, Any] = {}
    if route.method == "POST" and raw.strip():  # every POST rule here has body "*"
        try:
            request = json.loads(raw)
        except ValueError as exc:
            raise RestError("INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}") from None
        if not isinstance(request, dict):
            raise RestError(
                "INVALID_ARGUMENT", "Invalid JSON payload received. Expected an object."
            )
    _query_into(request, route.request.pb().DESCRIPTOR, query)
    request[route.field] = path_value
    try:
        message = route.request.from_json(json.dumps(request), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise RestError("INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}") from None
    # What google-cloud-firestore sends to an emulator besides the routing header.
    metadata = (
        ("google-cloud-resource-prefix", _database(path_value)),
        ("authorization", "Bearer owner"),
    )
    try:
        return route.call(client, message, metadata)
    except core_exceptions.GoogleAPICallError as exc:
        code = getattr(exc, "grpc_status_code", None)
        raise RestError(code.name if code is not None else "UNKNOWN", exc.message) from None


class FirestoreRestStandIn:
    """The REST surface for one gRPC emulator, served from a background thread."""

    def __init__(self, target: str, host: str = LOOPBACK, port: int = 0) -> None:
        self.target, self.host, self._requested_port = target, host, port
        self._channel: grpc.Channel | None = None
        self._client: FirestoreClient | None = None
        self._httpd: BackgroundHttpServer | None = None

    def start(self) -> "FirestoreRestStandIn":
        if self._httpd is None:
            # Like google-cloud-firestore's own emulator channel: insecure, no credentials.
            self._channel = grpc.insecure_channel(self.target)
            transport = FirestoreGrpcTransport(host=self.target, channel=self._channel)
            self._client = FirestoreClient(transport=transport)
            self._httpd = BackgroundHttpServer(
                self.host, self._requested_port, _make_handler(self._client), "firestore-rest"
            )
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stop()
            self._httpd = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> "FirestoreRestStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL: the REST client appends ``/v1/projects/...`` as it would to
        ``https://firestore.googleapis.com``."""
        if self._httpd is None:
            raise RuntimeError("FirestoreRestStandIn is not started")
        return f"http://{self.host}:{self._httpd.port}"


def _make_handler(client: FirestoreClient) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a pooled REST client expects
        # Headers and body go out as two writes: without TCP_NODELAY, Nagle holds the body
        # until the client's delayed ACK (~40 ms a request on a kept-alive connection).
        disable_nagle_algorithm = True
        timeout = 30  # idle keep-alive connections must not pin threads forever
        server_version = "FirestoreRestStandIn/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def _read_body(self) -> bytes:
            """Content-Length or chunked, as http.client sends an iterable body."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers
                    pass
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            raw_body = self._read_body()
            status, payload = 200, None
            try:
                for route in ROUTES:
                    m = route.pattern.match(split.path)
                    if route.method == self.command and m:
                        value = urllib.parse.unquote(m.group("var"))
                        payload = transcode(client, route, value, split.query, raw_body)
                        break
                else:
                    raise RestError("NOT_FOUND", f"No route for {self.command} {split.path}")
            except RestError as err:
                status, payload = err.code, err.body()
            except Exception as exc:  # a bug here must surface as a clear 500, not a hang
                crash = RestError("INTERNAL", f"firestore_rest stand-in crashed: {exc!r}")
                status, payload = crash.code, crash.body()
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815 - stdlib naming

    return Handler
