"""IAM signBlob calls per ``GET /api/creations?limit=100`` (the listing's cost on Cloud Run).

The real GcsMediaStore signs real V4 URLs through google-cloud-storage; only the HTTP transport
that carries the signBlob call to iamcredentials.googleapis.com is replaced by a fake IAM that
counts calls and returns a signature. No network.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from api.app import create_app
from common.adapters.gcs_media import GcsMediaStore
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Kind, MediaRef, Status

ACCOUNT = "phoenix-api@phoenix-test.iam.gserviceaccount.com"
USER = "lister"


class FakeIam:
    """Stands in for google.auth.transport.requests.Request inside google-cloud-storage's
    signing module: answers signBlob like IAM Credentials does, and counts the calls."""

    calls: list[str] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **kw):  # type: ignore[no-untyped-def]
        assert url.startswith("https://iamcredentials.googleapis.com/") and url.split("?")[
            0
        ].endswith(":signBlob")
        FakeIam.calls.append(url)
        blob = base64.b64encode(b"\x01" * 256).decode()
        return SimpleNamespace(
            status=200, data=json.dumps({"keyId": "k", "signedBlob": blob}).encode()
        )


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def listing(monkeypatch: pytest.MonkeyPatch, tmp_path):  # type: ignore[no-untyped-def]
    from google.cloud.storage import _signing

    FakeIam.calls = []
    monkeypatch.setattr(_signing.requests, "Request", FakeIam)
    clock = Clock()
    media = GcsMediaStore(
        storage.Client(project="phoenix-test", credentials=AnonymousCredentials()),
        "phoenix-test-media",
        signed_url_seconds=900,
        clock=clock,
    )
    creds = SimpleNamespace(service_account_email=ACCOUNT, token="ya29.token", valid=True)
    monkeypatch.setattr(media, "_iam_signer", lambda: creds)
    store = InMemoryCreationStore()
    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record"),
        store=store,
        media=media,
        dispatchers=lambda path: RecordingDispatcher(),
    )
    client = app.test_client()

    def add_completed(n: int, per_creation: int) -> None:
        for _ in range(n):
            c = lc.new(
                user_id=USER, kind=Kind.IMAGE, prompt="p", params={}, path="local", now=lc.utcnow()
            )
            refs = tuple(MediaRef(f"{c.id}/{i}.png", "image/png") for i in range(per_creation))
            store.add(lc.dataclasses.replace(c, status=Status.COMPLETED, media=refs, progress=100))

    def get() -> tuple[int, list[dict[str, Any]]]:
        before = len(FakeIam.calls)
        resp = client.get("/api/creations?limit=100", headers={"X-Phoenix-User": USER})
        assert resp.status_code == 200
        return len(FakeIam.calls) - before, resp.get_json()["creations"]

    return SimpleNamespace(add=add_completed, get=get, clock=clock)


def test_listing_signs_each_object_once_not_once_per_request(listing) -> None:  # type: ignore[no-untyped-def]
    """Shown failing: with the signed-URL cache bypassed (scratch break in
    ``common/adapters/gcs_media.py``), the second listing signed every object again."""
    listing.add(100, 4)  # the worst listing: 100 creations x 4 images
    first_calls, creations = listing.get()
    urls = [m["url"] for c in creations for m in c["media"]]
    assert len(urls) == 400
    assert first_calls == 400  # one signBlob per object never signed before: <= 1 per new object
    query = parse_qs(urlsplit(urls[0]).query)
    assert query["X-Goog-Expires"] == ["900"] and query["X-Goog-Signature"]
    assert ACCOUNT.split("@")[0] in query["X-Goog-Credential"][0]

    # Polling the list again: no IAM call at all, the same (still valid) URLs.
    again_calls, again = listing.get()
    assert again_calls == 0
    assert [m["url"] for c in again for m in c["media"]] == urls

    # Three new objects: three calls.
    listing.add(3, 1)
    listing.clock.t += 60
    calls, _ = listing.get()
    assert calls == 3

    # A cached URL is never handed out with less than a third of its lifetime left: 650 s
    # after the first listing (of 900 s) its 388 objects still shown are signed afresh, once;
    # the 3 signed at 60 s are still fresh enough.
    listing.clock.t += 590
    calls, fresh = listing.get()
    assert sum(len(c["media"]) for c in fresh) == 97 * 4 + 3
    assert calls == 97 * 4
    calls_after, _ = listing.get()
    assert calls_after == 0
    print(
        f"\nIAM signBlob calls per GET /api/creations?limit=100 (400 objects): first {first_calls}, "
        f"repeat {again_calls}, 3 new objects 3, 650 s later {calls} (re-signed), then {calls_after}"
    )


def test_a_public_base_url_needs_no_iam_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage import _signing

    FakeIam.calls = []
    monkeypatch.setattr(_signing.requests, "Request", FakeIam)
    media = GcsMediaStore(
        storage.Client(project="phoenix-test", credentials=AnonymousCredentials()),
        "b",
        public_base_url="https://media.example.com/",
    )
    assert (
        media.url_for(MediaRef("c/0.png", "image/png"))
        == "https://media.example.com/creations/c/0.png"
    )
    assert FakeIam.calls == []
