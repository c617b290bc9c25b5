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
from common.ports import CreationStore, MediaStore


def build_store(settings: Settings) -> CreationStore:
    if settings.store == "sqlite":
        from common.adapters.sqlite_store import SqliteCreationStore

        return SqliteCreationStore(settings.sqlite_path)
    if settings.store == "firestore":
        from common.adapters.firestore_store import FirestoreCreationStore

        return FirestoreCreationStore.from_settings(settings)
    raise ConfigError(f"unknown store {settings.store!r}")


def build_media(settings: Settings) -> MediaStore:
    if settings.media == "local":
        from common.adapters.local_media import LocalMediaStore

        return LocalMediaStore(settings.media_dir)
    if settings.media == "gcs":
        from common.adapters.gcs_media import GcsMediaStore

        return GcsMediaStore.from_settings(settings)
    raise ConfigError(f"unknown media store {settings.media!r}")
