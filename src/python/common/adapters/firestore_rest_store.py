"""The jobs' creation store: Firestore through its REST API, with the standard library only.

Why a second Firestore adapter. A Cloud Run Job execution is one cold process per creation, and
the claim is the first thing it does. google-cloud-firestore brings grpc, protobuf, proto-plus
and google-api-core: ~0.45 s of imports in the job image before the claim could start
(`benchmarks/run cold_start --containers-only`, "where the time goes"), more than the rest of
the job's start-up together. This adapter speaks the same Firestore (REST v1, the JSON mapping
of the same RPCs) over ``http.client`` and ``json``, which the job has loaded anyway. The API
and the sweeper keep the gRPC client (``firestore_store``): long-lived processes, where the
import is paid once. Both lay documents out by ``firestore_schema``; the store contract tests
hold both to one contract and check that each reads what the other wrote.

``update`` is the same transaction as the gRPC adapter's: beginTransaction, read the document
in it, apply the pure lifecycle function, commit the write with ``updated_at`` as a
server-timestamp transform. A commit that Firestore aborts (a concurrent transaction touched the
document) is retried from the read with ``retryTransaction``, so the lifecycle re-runs on fresh
data and a second claim raises AlreadyClaimed.

Where it connects: ``PHOENIX_FIRESTORE_REST_URL`` if set (tests: the REST stand-in in front of
the gRPC emulator, ``tools/standins/firestore_rest.py``), else ``http://$FIRESTORE_EMULATOR_HOST``
(Google's emulator serves REST on its gRPC port), else ``https://firestore.googleapis.com``.
Credentials: none against an emulator; on Cloud Run an access token from the metadata server
(one HTTP GET, cached until shortly before it expires); elsewhere (a developer pointing the
production profile at a real project) Application Default Credentials through google-auth,
imported only then.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, TypeVar

from opentelemetry import trace

from common import tracing
from common.adapters import firestore_schema as schema
from common.config import Settings
from common.domain import creation as lifecycle
from common.domain import quota as quotas
from common.domain.creation import Creation
from common.domain.errors import NotFound
from common.domain.quota import Refusal, UserQuota
from common.ports import AdmissionAsk, CreationStore, ScanQuery

T = TypeVar("T")

PRODUCTION_URL = "https://firestore.googleapis.com"
_METADATA_TOKEN_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
)
_SCOPE = "https://www.googleapis.com/auth/datastore"
_DEFAULT_TX_ATTEMPTS = 5  # google-cloud-firestore's default
_TIMEOUT_S = 30.0
_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL"})
_RETRY_DELAYS_S = (0.1, 0.4, 1.0)


class FirestoreRestError(RuntimeError):
    """A Firestore error answer: ``status`` is the canonical code name (``ABORTED``, ...)."""

    def __init__(self, status: str, http_status: int, message: str) -> None:
        super().__init__(f"Firestore {status} ({http_status}): {message}")
        self.status = status
        self.http_status = http_status


class TransactionContended(ValueError):
    """Every attempt of a transaction was aborted by concurrent ones (nothing was written).
    A ValueError like google-cloud-firestore's, so callers handle both adapters alike."""


# --- values: Python <-> Firestore's JSON ``Value`` --------------------------------------------


def encode_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):  # before int: bool is an int
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, datetime):
        return {"timestampValue": _rfc3339(value)}
    if isinstance(value, Mapping):
        return {"mapValue": {"fields": {str(k): encode_value(v) for k, v in value.items()}}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [encode_value(v) for v in value]}}
    raise TypeError(f"cannot store {type(value).__name__} in Firestore")


def decode_value(value: Mapping[str, Any]) -> Any:
    if not value:
        return None
    kind, raw = next(iter(value.items()))
    if kind == "nullValue":
        return None
    if kind == "integerValue":
        return int(raw)
    if kind in ("booleanValue", "stringValue", "referenceValue"):
        return raw
    if kind == "doubleValue":
        return float(raw)  # NaN/Infinity arrive as strings
    if kind == "timestampValue":
        return _parse_rfc3339(raw)
    if kind == "mapValue":
        return decode_fields(raw.get("fields") or {})
    if kind == "arrayValue":
        return [decode_value(v) for v in raw.get("values") or ()]
    if kind == "bytesValue":
        return base64.b64decode(raw)
    raise ValueError(f"unsupported Firestore value {kind}")


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: decode_value(v) for name, v in fields.items()}


def _rfc3339(value: datetime) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_rfc3339(raw: str) -> datetime:
    """Firestore answers up to nanoseconds ("...T10:00:00.123456789Z"); datetime keeps micro."""
    stamp, _, frac = raw.rstrip("Z").partition(".")
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S")
    micros = int((frac + "000000")[:6]) if frac else 0
    return parsed.replace(microsecond=micros, tzinfo=timezone.utc)


# --- credentials --------------------------------------------------------------------------------


class _AccessToken:
    """An OAuth access token for the Firestore API, refreshed a minute before it expires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def header(self) -> str:
        with self._lock:
            if time.monotonic() >= self._expires - 60:
                self._token, lifetime = self._fetch()
                self._expires = time.monotonic() + lifetime
            return f"Bearer {self._token}"

    @staticmethod
    def _fetch() -> tuple[str, float]:
        if os.environ.get("K_SERVICE") or os.environ.get("CLOUD_RUN_JOB"):
            # Cloud Run: the metadata server, without importing google-auth before the claim.
            conn = http.client.HTTPConnection("metadata.google.internal", timeout=10)
            try:
                conn.request("GET", _METADATA_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                raise FirestoreRestError("UNAUTHENTICATED", resp.status, body.decode()[:200])
            data = json.loads(body)
            return data["access_token"], float(data.get("expires_in", 300))
        import google.auth  # not on Cloud Run: whatever ADC finds
        import google.auth.transport.requests

        creds, _ = google.auth.default(scopes=[_SCOPE])
        creds.refresh(google.auth.transport.requests.Request())
        expiry = getattr(creds, "expiry", None)
        lifetime = (expiry - datetime.utcnow()).total_seconds() if expiry else 300.0
        return str(creds.token), lifetime


# --- the REST client ------------------------------------------------------------------------------


class FirestoreRest:
    """The few Firestore v1 REST calls the store needs, one keep-alive connection per thread
    (a job's heartbeat thread renews the lease while its main thread waits on the provider)."""

    def __init__(self, base_url: str, project: str, database: str, *, authenticate: bool) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not a Firestore REST URL: {base_url!r}")
        self._https = parsed.scheme == "https"
        self._netloc = parsed.netloc
        self._prefix = parsed.path.rstrip("/")
        self.database = f"projects/{project}/databases/{database}"
        self.documents = f"{self.database}/documents"
        self._token = _AccessToken() if authenticate else None
        self._local = threading.local()
        self._connections: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
                with self._lock:
                    self._connections.discard(conn)  # (gone already if close() ran)
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._netloc, timeout=_TIMEOUT_S)
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        return conn

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Iterable[tuple[str, str]] = (),
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """One REST call. ``retry``: a call that changes nothing (a read, a query, beginning a
        transaction) is tried again on the transient answers Google's client libraries
        retry (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL) and on a refused
        or dropped connection, ``_RETRY_DELAYS_S`` apart; a commit is not (its outcome would
        be unknown: the job's own retry decides)."""
        delays = _RETRY_DELAYS_S if retry else ()
        for delay in (*delays, None):
            try:
                return self._call_once(method, path, body, query, timeout)
            except FirestoreRestError as exc:
                if delay is None or exc.status not in _TRANSIENT:
                    raise
            except OSError:
                if delay is None:
                    raise
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _call_once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        query: Iterable[tuple[str, str]],
        timeout: float | None,
    ) -> Any:
        # Document ids are ours (hex, u_<hash>, resource names without "/"), but a path is
        # still quoted; ":" (":commit"), "(" and ")" ("(default)") stay as Google writes them.
        url = f"{self._prefix}/v1/{urllib.parse.quote(path, safe='/():')}"
        params = urllib.parse.urlencode(list(query))
        if params:
            url += "?" + params
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers["Authorization"] = self._token.header() if self._token else "Bearer owner"
        operation = path.rpartition(":")[2] if ":" in path.rpartition("/")[2] else method
        # A CLIENT span per call, as the gRPC adapter's calls get from the gRPC instrumentation.
        with tracing.tracer("phoenix.firestore_rest").start_as_current_span(
            f"Firestore {operation}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system": "firestore",
                "db.operation": operation,
                "http.request.method": method,
                "server.address": self._netloc,
            },
        ) as span:
            status, raw = self._send(method, url, data, headers, timeout)
            span.set_attribute("http.response.status_code", status)
        if status >= 400:
            raise _error_from(status, raw)
        return json.loads(raw) if raw else {}

    def _send(
        self,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = self._connection(fresh=attempt == 2)
            conn.timeout = _TIMEOUT_S if timeout is None else timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed while idle: once more on a new one.
                conn.close()
                if attempt == 2:
                    raise
            except BaseException:
                conn.close()  # half a request/answer on it: the next call reconnects
                raise
        raise AssertionError("unreachable")

    def get(self, name: str, transaction: str | None = None) -> dict[str, Any] | None:
        """The document's fields, or None if it does not exist."""
        query = [("transaction", transaction)] if transaction else []
        try:
            doc = self.call("GET", name, query=query)
        except FirestoreRestError as exc:
            if exc.status == "NOT_FOUND":
                return None
            raise
        return decode_fields(doc.get("fields") or {})

    def begin(self, retrying: str | None = None) -> str:
        options = {"readWrite": {"retryTransaction": retrying} if retrying else {}}
        answer = self.call("POST", f"{self.documents}:beginTransaction", {"options": options})
        return str(answer["transaction"])

    def commit(self, writes: list[dict[str, Any]], transaction: str | None = None) -> datetime:
        body: dict[str, Any] = {"writes": writes}
        if transaction:
            body["transaction"] = transaction
        answer = self.call("POST", f"{self.database}/documents:commit", body, retry=False)
        return _parse_rfc3339(answer["commitTime"])

    def rollback(self, transaction: str) -> None:
        try:
            self.call(
                "POST",
                f"{self.database}/documents:rollback",
                {"transaction": transaction},
                retry=False,  # best effort: the transaction expires on its own
            )
        except (FirestoreRestError, OSError):
            pass  # it expires on its own; a failed rollback must not hide the real error

    def run_query(self, structured: dict[str, Any]) -> list[dict[str, Any]]:
        answers = self.call("POST", f"{self.documents}:runQuery", {"structuredQuery": structured})
        return [
            decode_fields(a["document"].get("fields") or {}) for a in answers if "document" in a
        ]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _error_from(http_status: int, raw: bytes) -> FirestoreRestError:
    try:
        err = json.loads(raw)
        if isinstance(err, list):  # streaming methods answer errors inside an array
            err = err[0]
        err = err["error"]
        return FirestoreRestError(str(err.get("status", "UNKNOWN")), http_status, err["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return FirestoreRestError("UNKNOWN", http_status, raw.decode(errors="replace")[:300])


# --- writes and queries -----------------------------------------------------------------------------


def set_write(name: str, fields: Mapping[str, Any], *, must_not_exist: bool = False) -> dict:
    """Replace the whole document (what the SDK's ``set``/``create`` send); an ``updated_at``
    field becomes the server's commit time."""
    fields = dict(fields)
    stamp = "updated_at" in fields
    fields.pop("updated_at", None)
    write: dict[str, Any] = {
        "update": {"name": name, "fields": {k: encode_value(v) for k, v in fields.items()}}
    }
    if stamp:
        write["updateTransforms"] = [
            {"fieldPath": "updated_at", "setToServerValue": "REQUEST_TIME"}
        ]
    if must_not_exist:
        write["currentDocument"] = {"exists": False}
    return write


def _field_filter(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"fieldFilter": {"field": {"fieldPath": field}, "op": op, "value": encode_value(value)}}


def structured_query(
    collection: str,
    filters: list[dict[str, Any]],
    order_by: str | None = None,
    descending: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    query: dict[str, Any] = {"from": [{"collectionId": collection}]}
    if len(filters) == 1:
        query["where"] = filters[0]
    elif filters:
        query["where"] = {"compositeFilter": {"op": "AND", "filters": filters}}
    if order_by:
        direction = "DESCENDING" if descending else "ASCENDING"
        query["orderBy"] = [{"field": {"fieldPath": order_by}, "direction": direction}]
    if limit is not None:
        query["limit"] = limit
    return query


class _Transaction:
    """Reads in the transaction, writes collected for its commit."""

    def __init__(self, rest: FirestoreRest, transaction_id: str) -> None:
        self.id = transaction_id
        self._rest = rest
        self.writes: list[dict[str, Any]] = []

    def get(self, name: str) -> dict[str, Any] | None:
        return self._rest.get(name, transaction=self.id)

    def set(self, name: str, fields: Mapping[str, Any], *, must_not_exist: bool = False) -> None:
        self.writes.append(set_write(name, fields, must_not_exist=must_not_exist))


def run_transaction(
    rest: FirestoreRest, body: Callable[[_Transaction], T], attempts: int = _DEFAULT_TX_ATTEMPTS
) -> tuple[T, datetime | None]:
    """Run ``body`` in a read-write transaction and commit what it wrote; returns its result
    and the commit time (None when it wrote nothing). Aborted commits are retried from the top;
    any other error rolls back and propagates."""
    retrying: str | None = None
    for attempt in range(1, attempts + 1):
        tx = _Transaction(rest, rest.begin(retrying))
        try:
            result = body(tx)
            if not tx.writes:
                rest.rollback(tx.id)
                return result, None
            return result, rest.commit(tx.writes, tx.id)
        except FirestoreRestError as exc:
            rest.rollback(tx.id)
            if exc.status != "ABORTED":
                raise
            if attempt == attempts:
                raise TransactionContended(
                    f"transaction still aborted after {attempts} attempts"
                ) from exc
            retrying = tx.id
        except BaseException:
            rest.rollback(tx.id)
            raise
    raise AssertionError("unreachable")


# --- the store ----------------------------------------------------------------------------------------


def rest_url_from_env(env: Mapping[str, str]) -> tuple[str, bool]:
    """(base URL, whether to send real credentials) for this process."""
    explicit = env.get("PHOENIX_FIRESTORE_REST_URL", "")
    emulator = env.get("FIRESTORE_EMULATOR_HOST", "")
    if explicit:
        return explicit, not emulator and explicit.startswith("https://")
    if emulator:
        return f"http://{emulator}", False
    return PRODUCTION_URL, True


def rest_client(settings: Settings, env: Mapping[str, str] | None = None) -> FirestoreRest:
    """The client for the configured project and database, connected where ``env`` says."""
    url, authenticate = rest_url_from_env(os.environ if env is None else env)
    project = settings.gcp_project or "phoenix-local"
    return FirestoreRest(url, project, settings.firestore_database, authenticate=authenticate)


class FirestoreRestCreationStore(CreationStore):
    def __init__(self, rest: FirestoreRest, *, prefix: str = "") -> None:
        self._rest = rest
        self._collection = f"{prefix}{schema.COLLECTION}"
        self._quotas = f"{prefix}{schema.QUOTA_COLLECTION}"

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> "FirestoreRestCreationStore":
        return cls(rest_client(settings, env), prefix=settings.firestore_prefix)

    @property
    def collection_name(self) -> str:
        return self._collection

    def _doc(self, creation_id: str) -> str:
        return f"{self._rest.documents}/{self._collection}/{creation_id}"

    def _quota_doc(self, doc_id: str) -> str:
        return f"{self._rest.documents}/{self._quotas}/{doc_id}"

    def add(self, creation: Creation) -> None:
        write = set_write(
            self._doc(creation.id), schema.creation_document(creation), must_not_exist=True
        )
        try:
            self._rest.commit([write])
        except FirestoreRestError as exc:
            if exc.status == "ALREADY_EXISTS":
                raise ValueError(f"creation {creation.id} already exists") from None
            raise

    def get(self, creation_id: str) -> Creation | None:
        data = self._rest.get(self._doc(creation_id))
        return lifecycle.from_dict(data) if data is not None else None

    def update(self, creation_id: str, change: Callable[[Creation], Creation]) -> Creation:
        name = self._doc(creation_id)

        def apply(tx: _Transaction) -> Creation:
            data = tx.get(name)
            if data is None:
                raise NotFound(creation_id)
            current = lifecycle.from_dict(data)
            updated = change(current)
            if updated is current:
                return current
            if updated.status.terminal and not current.status.terminal:
                # Free the user's admission slot in the same transaction (reads before writes).
                self._release_in_tx(tx, updated.user_id, creation_id)
            tx.set(name, schema.creation_document(updated))
            return updated

        result, committed = run_transaction(self._rest, apply)
        if committed is None:
            return result
        return dataclasses.replace(result, updated_at=committed)

    def list_for_user(self, user_id: str, limit: int) -> list[Creation]:
        # The same query (and composite index) as the gRPC adapter's.
        query = structured_query(
            self._collection,
            [_field_filter("user_id", "EQUAL", user_id)],
            order_by="created_at",
            descending=True,
            limit=limit,
        )
        return [lifecycle.from_dict(d) for d in self._rest.run_query(query)]

    def _scan(self, filters: ScanQuery) -> list[Creation]:
        plan = schema.plan_scan(filters)
        if plan is None:
            return []
        where = [_field_filter(field, op, value) for field, op, value in plan.where]
        query = structured_query(self._collection, where, order_by=plan.order_by, limit=plan.limit)
        found = [lifecycle.from_dict(d) for d in self._rest.run_query(query)]
        return schema.finish_scan(found, plan)

    def delete(self, creation_id: str) -> bool:
        name = self._doc(creation_id)
        if self._rest.get(name) is None:
            return False
        self._rest.commit([{"delete": name}])
        return True

    def ping(self) -> None:
        # A bounded read of one (possibly missing) document: proves auth and reachability.
        try:
            self._rest.call("GET", self._doc("_ping"), timeout=5, retry=False)
        except FirestoreRestError as exc:
            if exc.status != "NOT_FOUND":
                raise

    def close(self) -> None:
        self._rest.close()

    # --- admission ------------------------------------------------------------------------

    def _release_in_tx(self, tx: _Transaction, user_id: str, creation_id: str) -> None:
        name = self._quota_doc(schema.quota_doc_id(user_id))
        data = tx.get(name)
        if data is None:
            return
        user = quotas.user_from_dict(user_id, data)
        released = quotas.release(user, creation_id)
        if released is not user:
            tx.set(name, quotas.user_to_dict(released))

    def _admit(self, ask: AdmissionAsk) -> Refusal | None:
        user_id, creation_id, policy, now, insert = ask
        qname = self._quota_doc(schema.quota_doc_id(user_id))
        gname = self._quota_doc(schema.GLOBAL_QUOTA)
        cname = self._doc(insert.id) if insert is not None else None

        def apply(tx: _Transaction) -> Refusal | None:
            if cname is not None and tx.get(cname) is not None:
                raise ValueError(f"creation {insert.id if insert else ''} already exists")
            user = quotas.user_from_dict(user_id, tx.get(qname))
            glob = None
            if policy.global_per_minute > 0:
                glob = quotas.global_from_dict(tx.get(gname))
            decided = quotas.admit(user, glob, policy, creation_id, now)
            if isinstance(decided, Refusal):
                return decided
            new_user, new_glob = decided
            if cname is not None and insert is not None:
                tx.set(cname, schema.creation_document(insert), must_not_exist=True)
            if new_user is not user:
                tx.set(qname, quotas.user_to_dict(new_user))
            if new_glob is not None and new_glob is not glob:
                tx.set(gname, quotas.global_to_dict(new_glob))
            return None

        try:
            refusal, _ = run_transaction(self._rest, apply, attempts=schema.QUOTA_TX_ATTEMPTS)
        except FirestoreRestError as exc:
            if exc.status == "ALREADY_EXISTS":
                raise ValueError(f"creation {creation_id} already exists") from None
            raise
        except TransactionContended:
            # One user's burst on one document: nothing was written, so a refusal to retry
            # shortly, never a 500 (as the gRPC adapter answers).
            return Refusal("busy", "too many requests at once; try again in a moment", 1)
        return refusal

    def release_quota(self, user_id: str, creation_id: str) -> None:
        run_transaction(
            self._rest,
            lambda tx: self._release_in_tx(tx, user_id, creation_id),
            attempts=schema.QUOTA_TX_ATTEMPTS,
        )

    def quota(self, user_id: str) -> UserQuota:
        data = self._rest.get(self._quota_doc(schema.quota_doc_id(user_id)))
        return quotas.user_from_dict(user_id, data)

    def quota_holders(self, limit: int = 1000) -> list[UserQuota]:
        query = structured_query(
            self._quotas, [_field_filter("active_count", "GREATER_THAN", 0)], limit=limit
        )
        found = []
        for data in self._rest.run_query(query):
            user_id = data.get("user_id")
            if isinstance(user_id, str):
                found.append(quotas.user_from_dict(user_id, data))
        return found
