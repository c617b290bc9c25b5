"""One MediaStore contract for the local directory and Cloud Storage (gcp-storage-emulator).

The storage emulator serves V4 signed URLs without checking the signature or expiry, so the
signed-URL test proves the URL's shape and that it points at the object (it downloads it), not
that Google would accept the signature. The signature itself is produced by google-cloud-storage
with a locally generated service-account key, exactly as with a real key file.
"""

from __future__ import annotations

import urllib.parse
import uuid

import pytest
import requests

from common.adapters.local_media import LocalMediaStore
from common.config import Settings
from common.domain.creation import MediaRef
from tools.emulator_profile import write_signing_key
from tools.servers import gcs_emulator

BUCKET = "phoenix-media-test"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator(default_bucket=BUCKET) as server:
        yield server


def _gcs_store(gcs, monkeypatch, tmp_path, **overrides):
    from common.adapters.gcs_media import GcsMediaStore

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    settings = Settings(
        gcp_project="phoenix-test",
        media="gcs",
        media_bucket=BUCKET,
        media_signing_key_file=write_signing_key(tmp_path / "sa.json"),
        **overrides,
    )
    return GcsMediaStore.from_settings(settings)


@pytest.fixture(params=["local", "gcs"])
def media(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalMediaStore(tmp_path / "media")
    return _gcs_store(request.getfixturevalue("gcs"), monkeypatch, tmp_path)


def _key(name: str = "0.png") -> str:
    return f"{uuid.uuid4().hex}/{name}"  # unique per test: the emulator is module-wide


def test_put_read_roundtrip(media):
    key = _key()
    payload = bytes(range(256)) * 64
    ref = media.put(key, payload, "image/png")
    assert ref == MediaRef(key=key, mime_type="image/png")
    assert media.read(key) == payload
    media.put(key, b"replaced", "image/png")  # same key again: overwritten, not duplicated
    assert media.read(key) == b"replaced"


def test_read_of_a_missing_key_raises_key_error(media):
    with pytest.raises(KeyError):
        media.read(_key("missing.png"))


def test_a_key_no_filesystem_can_hold_is_missing_not_an_error(media, tmp_path):
    """The OpenAPI fuzz found it: /media/<300 bytes of text> answered 500 (ENAMETOOLONG)."""
    with pytest.raises(KeyError):
        media.read(_key("ṯ" * 120 + ".png"))
    if isinstance(media, LocalMediaStore):
        with pytest.raises(KeyError):
            media.file_path(_key("x" * 300))


def test_delete_for_removes_every_object_of_one_creation_and_nothing_else(media):
    cid, other = uuid.uuid4().hex, uuid.uuid4().hex
    media.put(f"{cid}/0.png", b"a", "image/png")
    media.put(f"{cid}/1.png", b"b", "image/png")
    media.put(f"{cid}/4242/sample_0.mp4", b"c", "video/mp4")  # a provider's own sub-folder
    media.put(f"{other}/0.png", b"keep", "image/png")
    assert media.delete_for(cid) == 3
    for key in (f"{cid}/0.png", f"{cid}/1.png", f"{cid}/4242/sample_0.mp4"):
        with pytest.raises(KeyError):
            media.read(key)
    assert media.read(f"{other}/0.png") == b"keep"
    assert media.delete_for(cid) == 0  # idempotent: a retried delete finds nothing
    for bad in ("", "..", "a/b"):
        with pytest.raises(KeyError):
            media.delete_for(bad)


def test_local_urls_are_served_by_the_api(tmp_path):
    store = LocalMediaStore(tmp_path)
    assert store.url_for(MediaRef("abc/0.png", "image/png")) == "/media/abc/0.png"
    assert store.output_prefix("abc") is None
    with pytest.raises(NotImplementedError):
        store.ref_from_uri("gs://b/creations/abc/0.mp4", "video/mp4")


def test_gcs_objects_live_under_creations_prefix(gcs, monkeypatch, tmp_path):
    from google.cloud import storage

    store = _gcs_store(gcs, monkeypatch, tmp_path)
    key = _key()
    store.put(key, b"png", "image/png")
    blob = storage.Client(project="phoenix-test").bucket(BUCKET).get_blob(f"creations/{key}")
    assert blob is not None and blob.content_type == "image/png"


def test_gcs_signed_url_is_v4_expiring_and_fetches_the_object(gcs, monkeypatch, tmp_path):
    store = _gcs_store(gcs, monkeypatch, tmp_path, signed_url_seconds=600)
    key = _key()
    ref = store.put(key, b"signed bytes", "image/png")
    url = store.url_for(ref)
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.path == f"/{BUCKET}/creations/{key}"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["600"]
    assert len(query["X-Goog-Signature"][0]) >= 256  # hex RSA-2048 signature
    assert query["X-Goog-Credential"][0].startswith("media-signer@")
    # Points at the emulator (what a browser on this machine can reach) and serves the bytes.
    assert url.startswith(gcs.url)
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == b"signed bytes"


def test_gcs_public_base_url_skips_signing(gcs, monkeypatch, tmp_path):
    store = _gcs_store(gcs, monkeypatch, tmp_path, media_public_base_url="https://cdn.example/m/")
    ref = MediaRef("abc/0.png", "image/png")
    assert store.url_for(ref) == "https://cdn.example/m/creations/abc/0.png"


def test_gcs_output_prefix_and_ref_from_uri(gcs, monkeypatch, tmp_path):
    store = _gcs_store(gcs, monkeypatch, tmp_path)
    prefix = store.output_prefix("c1")
    assert prefix == f"gs://{BUCKET}/creations/c1/"
    ref = store.ref_from_uri(prefix + "1234/sample_0.mp4", "video/mp4")
    assert ref == MediaRef("c1/1234/sample_0.mp4", "video/mp4")
    # An adopted object is an ordinary key afterwards.
    store.put(ref.key, b"mp4", "video/mp4")
    assert store.read(ref.key) == b"mp4"
    for foreign in ("gs://other-bucket/creations/c1/x.mp4", f"gs://{BUCKET}/elsewhere/x.mp4"):
        with pytest.raises(ValueError):
            store.ref_from_uri(foreign, "video/mp4")


def test_gcs_store_requires_a_bucket(gcs, monkeypatch):
    from common.adapters.gcs_media import GcsMediaStore
    from common.config import ConfigError

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    with pytest.raises(ConfigError):
        GcsMediaStore.from_settings(Settings(media="gcs", media_bucket=""))


def test_gcs_without_a_key_file_signs_through_iam_with_the_runtime_account(
    gcs, monkeypatch, tmp_path
):
    """Cloud Run has no private key: the adapter must hand the runtime account's email and
    access token to google-cloud-storage, which then calls IAM signBlob. The IAM call itself
    (network) is replaced; we check what it is asked to sign with, and the URL built from it."""
    import google.auth
    from google.cloud.storage import _signing

    from common.adapters.gcs_media import GcsMediaStore

    class RuntimeCredentials:  # what google.auth.default() gives on Cloud Run, after refresh
        service_account_email = "default"
        token = None
        valid = False
        refreshes = 0

        def refresh(self, request):
            RuntimeCredentials.refreshes += 1
            self.service_account_email = "phoenix-api@phoenix-test.iam.gserviceaccount.com"
            self.token = "ya29.runtime-token"
            self.valid = True

    signed_with: list[tuple[str, str]] = []

    def fake_sign_message(message, access_token, service_account_email, *args, **kwargs):
        signed_with.append((access_token, service_account_email))
        return "c2lnbmF0dXJl"  # base64("signature")

    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (RuntimeCredentials(), "p"))
    monkeypatch.setattr(_signing, "_sign_message", fake_sign_message)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    store = GcsMediaStore.from_settings(Settings(gcp_project="phoenix-test", media_bucket=BUCKET))
    url = store.url_for(MediaRef("abc/0.png", "image/png"))
    url2 = store.url_for(MediaRef("abc/1.png", "image/png"))
    assert (
        signed_with
        == [("ya29.runtime-token", "phoenix-api@phoenix-test.iam.gserviceaccount.com")] * 2
    )
    assert RuntimeCredentials.refreshes == 1  # the token is reused while valid
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Goog-Credential"][0].startswith("phoenix-api@")
    assert query["X-Goog-Signature"] == ["7369676e6174757265"]  # hex of the IAM signature
    assert url2 != url


def test_find_outputs_lists_what_a_provider_wrote_under_a_start_prefix(media):
    """How a retry finds the output of a start call whose answer it never got (issue 12):
    everything under ``output_prefix(id) + marker/``, nothing of another marker. A store with
    no prefix a provider can write to (local) has nothing to find."""
    cid = uuid.uuid4().hex
    prefix = media.output_prefix(cid)
    if prefix is None:
        assert media.find_outputs(f"gs://{BUCKET}/creations/{cid}/m1/") == []
        return
    media.put(f"{cid}/m1/1700/sample_0.mp4", b"video", "video/mp4")
    media.put(f"{cid}/m1/1700/sample_1.png", b"image", "image/png")
    media.put(f"{cid}/m2/1800/sample_0.mp4", b"other start", "video/mp4")
    assert media.find_outputs(f"{prefix}m1/") == [
        f"{prefix}m1/1700/sample_0.mp4",
        f"{prefix}m1/1700/sample_1.png",
    ]
    assert media.find_outputs(f"{prefix}m3/") == []
    with pytest.raises(ValueError):
        media.find_outputs("gs://someone-elses-bucket/creations/x/")
