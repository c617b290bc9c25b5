"""Media in a Cloud Storage bucket: ``gs://BUCKET/creations/<creation id>/<n>.<ext>``.

Keys handed to and returned by this store are relative to ``creations/`` (``<id>/<n>.png``, the
same keys the local store uses), so records do not change when media moves between backends.
Veo writes its output straight into ``output_prefix(id)``; the job then adopts that object with
``ref_from_uri`` instead of downloading and re-uploading a large video.

URLs are minted per request: a public base URL (bucket behind a CDN / public-read) if
configured, otherwise a V4 signed GET URL. On Cloud Run there is no private key to sign with,
so signing goes through IAM signBlob with the runtime account's access token (the account
needs ``iam.serviceAccounts.signBlob`` on itself, i.e. roles/iam.serviceAccountTokenCreator).
That is one HTTP call per URL, and ``GET /api/creations?limit=100`` shows up to ~400 media
items: so each signed URL is cached and handed out again until shortly before it expires
(every URL handed out stays valid for at least ``_MIN_REMAINING`` of its lifetime). A listing
then costs one signBlob call per object not seen in the last minutes, and none for the rest.
Locally a service-account key file signs instead (the storage emulator serves signed URLs
without checking them).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Callable

from google.api_core import exceptions as gexc
from google.cloud import storage  # type: ignore[attr-defined]

from common import observability
from common.adapters.process_wide import process_wide
from common.config import ConfigError, Settings
from common.domain.creation import MediaRef
from common.ports import MediaStore

PREFIX = "creations/"
# A cached URL is handed out only while at least this share of its lifetime remains, so a page
# that shows it (and a video player seeking in it) has time to use it.
_MIN_REMAINING = 1 / 3
# Bounded memory: about 300 bytes per entry.
_URL_CACHE_ENTRIES = 20_000


def storage_client(project: str) -> storage.Client:
    """The process-wide client (``process_wide``). With STORAGE_EMULATOR_HOST set the library
    talks to the emulator with anonymous credentials; it still wants a project for bucket
    operations."""
    return _storage_client(project, os.environ.get("STORAGE_EMULATOR_HOST", ""))


@process_wide
def _storage_client(project: str, emulator: str) -> storage.Client:
    observability.instrument_requests()  # its HTTP calls become spans
    if emulator:
        return storage.Client(project=project or "phoenix-local")
    return storage.Client(project=project or None)


class GcsMediaStore(MediaStore):
    def __init__(
        self,
        client: storage.Client,
        bucket: str,
        *,
        public_base_url: str = "",
        signed_url_seconds: int = 900,
        signing_credentials: Any = None,
        api_access_endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not bucket:
            raise ConfigError("PHOENIX_MEDIA_BUCKET is required when PHOENIX_MEDIA=gcs")
        self._client = client
        self._bucket_name = bucket
        self._bucket = client.bucket(bucket)
        self._public_base_url = public_base_url.rstrip("/")
        self._expiry = timedelta(seconds=signed_url_seconds)
        self._signing_credentials = signing_credentials
        self._api_access_endpoint = api_access_endpoint
        self._iam_credentials: Any = None
        self._iam_lock = threading.Lock()
        self._clock = clock
        self._urls: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._urls_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "GcsMediaStore":
        signer = None
        if settings.media_signing_key_file:
            from google.oauth2 import service_account

            signer = service_account.Credentials.from_service_account_file(
                settings.media_signing_key_file
            )
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        return cls(
            storage_client(settings.gcp_project),
            settings.media_bucket,
            public_base_url=settings.media_public_base_url,
            signed_url_seconds=settings.signed_url_seconds,
            signing_credentials=signer,
            # Signed URLs must point where the browser can fetch: the emulator locally.
            api_access_endpoint=emulator or None,
        )

    @property
    def bucket(self) -> str:
        return self._bucket_name

    @staticmethod
    def _object_name(key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise KeyError(key)
        return PREFIX + key

    def put(self, key: str, data: bytes, mime_type: str) -> MediaRef:
        # A single-request upload is atomic: readers see the old object or the whole new one.
        self._bucket.blob(self._object_name(key)).upload_from_string(data, content_type=mime_type)
        return MediaRef(key=key, mime_type=mime_type)

    def read(self, key: str) -> bytes:
        try:
            return self._bucket.blob(self._object_name(key)).download_as_bytes()
        except gexc.NotFound:
            raise KeyError(key) from None

    def delete_for(self, creation_id: str) -> int:
        if not creation_id or "/" in creation_id or creation_id in (".", ".."):
            raise KeyError(creation_id)
        count = 0
        # Everything under the creation's folder: the objects the record names and any a
        # provider wrote beside them (Veo adds its own sub-folder per request).
        for blob in self._client.list_blobs(self._bucket_name, prefix=f"{PREFIX}{creation_id}/"):
            try:
                blob.delete()
            except gexc.NotFound:
                continue  # deleted concurrently (a second delete, the sweeper): that is fine
            count += 1
        return count

    def output_prefix(self, creation_id: str) -> str | None:
        return f"gs://{self._bucket_name}/{PREFIX}{creation_id}/"

    def find_outputs(self, prefix_uri: str) -> list[str]:
        head = f"gs://{self._bucket_name}/"
        if not prefix_uri.startswith(head + PREFIX):
            raise ValueError(f"{prefix_uri} is not under {head}{PREFIX}")
        blobs = self._bucket.client.list_blobs(self._bucket_name, prefix=prefix_uri[len(head) :])
        return sorted(f"{head}{b.name}" for b in blobs)

    def ref_from_uri(self, uri: str, mime_type: str) -> MediaRef:
        """Adopt an object a provider wrote into our bucket; anything else is refused (we would
        otherwise sign URLs for, or depend on, storage we do not own)."""
        head = f"gs://{self._bucket_name}/{PREFIX}"
        if not uri.startswith(head) or len(uri) == len(head):
            raise ValueError(f"{uri} is not under {head}")
        return MediaRef(key=uri[len(head) :], mime_type=mime_type)

    def url_for(self, ref: MediaRef) -> str:
        name = self._object_name(ref.key)
        if self._public_base_url:
            return f"{self._public_base_url}/{name}"
        key = (name, ref.mime_type)
        now = self._clock()
        with self._urls_lock:
            cached = self._urls.get(key)
            if cached is not None and cached[1] > now:
                self._urls.move_to_end(key)
                return cached[0]
        url = self._sign(name, ref.mime_type)
        reuse_until = now + self._expiry.total_seconds() * (1 - _MIN_REMAINING)
        with self._urls_lock:
            self._urls[key] = (url, reuse_until)
            self._urls.move_to_end(key)
            while len(self._urls) > _URL_CACHE_ENTRIES:
                self._urls.popitem(last=False)
        return url

    def _sign(self, name: str, mime_type: str) -> str:
        blob = self._bucket.blob(name)
        kwargs: dict[str, Any] = {
            "version": "v4",
            "method": "GET",
            "expiration": self._expiry,
            "response_type": mime_type,
        }
        if self._api_access_endpoint:
            kwargs["api_access_endpoint"] = self._api_access_endpoint
        if self._signing_credentials is not None:
            return blob.generate_signed_url(credentials=self._signing_credentials, **kwargs)
        creds = self._iam_signer()
        return blob.generate_signed_url(
            service_account_email=creds.service_account_email,
            access_token=creds.token,
            **kwargs,
        )

    def _iam_signer(self) -> Any:
        """The runtime account's credentials, refreshed: generate_signed_url then signs through
        the IAM signBlob API (one HTTP call per URL) because Cloud Run has no private key."""
        import google.auth
        from google.auth.transport.requests import Request

        with self._iam_lock:
            if self._iam_credentials is None:
                creds, _ = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
                self._iam_credentials = creds
            creds = self._iam_credentials
            if not creds.valid or not getattr(creds, "service_account_email", None):
                creds.refresh(Request())
            if not getattr(creds, "service_account_email", None):
                raise ConfigError(
                    "signed media URLs need a service account (Cloud Run runtime account) "
                    "or PHOENIX_MEDIA_SIGNING_KEY_FILE"
                )
            return creds
