"""The one place that turns configuration into storage adapters (store and media).

Generators (jobs only) are chosen in ``common.generators`` and dispatchers (API and sweeper
only) in ``common.dispatchers``: split so that Pants' dependency inference gives each PEX only
the SDKs its service can actually select.

Each branch imports its adapter module only when chosen, so a job configured for the embedded
defaults never pays for importing google-cloud-* or google-genai (job cold start), and the API
PEX need not contain the generator SDKs at all.
"""

from __future__ import annotations

from common.config import ConfigError, Settings
from common.domain.creation import MediaRef
from common.ports import CreationStore, MediaStore


def build_store(settings: Settings) -> CreationStore:
    if settings.store == "sqlite":
        from common.adapters.sqlite_store import SqliteCreationStore

        return SqliteCreationStore(settings.sqlite_path)
    if settings.store == "firestore":
        from common.adapters.firestore_store import FirestoreCreationStore

        return FirestoreCreationStore.from_settings(settings)
    raise ConfigError(f"unknown store {settings.store!r}")


def build_job_store(settings: Settings) -> CreationStore:
    """The store a job claims through: with Firestore, its REST adapter (no google-cloud-firestore
    import before the claim: the job's cold start; see ``firestore_rest_store``)."""
    if settings.store == "firestore":
        from common.adapters.firestore_rest_store import FirestoreRestCreationStore

        return FirestoreRestCreationStore.from_settings(settings)
    return build_store(settings)


def build_media(settings: Settings) -> MediaStore:
    if settings.media == "local":
        from common.adapters.local_media import LocalMediaStore

        return LocalMediaStore(settings.media_dir)
    if settings.media == "gcs":
        from common.adapters.gcs_media import GcsMediaStore

        return GcsMediaStore.from_settings(settings)
    raise ConfigError(f"unknown media store {settings.media!r}")


class LazyMediaStore(MediaStore):
    """Builds the real media store on first use (after the job's claim), for the same reason
    as ``generators.LazyGenerator``: google-cloud-storage costs ~0.2 s to import."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner: MediaStore | None = None

    def _get(self) -> MediaStore:
        if self._inner is None:
            self._inner = build_media(self._settings)
        return self._inner

    def put(self, key: str, data: bytes, mime_type: str) -> MediaRef:
        return self._get().put(key, data, mime_type)

    def read(self, key: str) -> bytes:
        return self._get().read(key)

    def url_for(self, ref: MediaRef) -> str:
        return self._get().url_for(ref)

    def ref_from_uri(self, uri: str, mime_type: str) -> MediaRef:
        return self._get().ref_from_uri(uri, mime_type)

    def delete_for(self, creation_id: str) -> int:
        return self._get().delete_for(creation_id)

    def output_prefix(self, creation_id: str) -> str | None:
        return self._get().output_prefix(creation_id)

    def find_outputs(self, prefix_uri: str) -> list[str]:
        return self._get().find_outputs(prefix_uri)
