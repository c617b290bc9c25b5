"""Configuration: every setting comes from the environment and has an embedded default, so a
fresh checkout runs with no configuration at all. Read once per process into ``Settings``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from common.domain.quota import QuotaPolicy

STORES = ("sqlite", "firestore")
DISPATCHERS = ("local", "cloud-tasks", "celery", "record")
GENERATORS = ("local", "vertex")
MEDIA = ("local", "gcs")
AUTH_MODES = ("local", "firebase")
LEGACY_POOLS = ("prefork", "threads", "solo")


class ConfigError(ValueError):
    """A setting has a value the program cannot run with; the message names it."""


# The one way to run header identity where production could be running (a local stand-in of
# the production chain, e.g. the emulator profile). Named so a deploy cannot set it by accident.
ALLOW_HEADER_IDENTITY = "PHOENIX_ALLOW_HEADER_IDENTITY"
_YES = ("yes", "true", "1")


def _auth_mode(env: Mapping[str, str], store: str) -> str:
    """``PHOENIX_AUTH``, refusing header identity where it would let anyone be anyone.

    ``local`` trusts ``X-Phoenix-User``: fine on a developer's machine, an open door anywhere
    else. One variable missing from a deploy must not become that door, so it is refused on
    Cloud Run (``K_SERVICE`` for the service, ``CLOUD_RUN_JOB`` for jobs) and with the Firestore
    store unless ``PHOENIX_ALLOW_HEADER_IDENTITY=yes`` says it is deliberate. An empty value is
    an error, never the default: it is what a broken template or secret reference produces."""
    raw = env.get("PHOENIX_AUTH")
    if raw is not None and not raw.strip():
        raise ConfigError(
            "PHOENIX_AUTH is set but empty: set PHOENIX_AUTH=firebase (with "
            "PHOENIX_FIREBASE_PROJECT) in production, or PHOENIX_AUTH=local on a developer machine"
        )
    mode = _choice(env, "PHOENIX_AUTH", "local", AUTH_MODES)
    if mode == "firebase" and not env.get("PHOENIX_FIREBASE_PROJECT", "").strip():
        raise ConfigError(
            "PHOENIX_AUTH=firebase needs PHOENIX_FIREBASE_PROJECT=<Firebase project id> "
            "(the audience and issuer of its ID tokens)"
        )
    if mode != "local":
        return mode
    signs = [f"{name}={env[name]!r}" for name in ("K_SERVICE", "CLOUD_RUN_JOB") if env.get(name)]
    if store == "firestore":
        signs.append("PHOENIX_STORE=firestore")
    if not signs:
        return mode
    override = env.get(ALLOW_HEADER_IDENTITY)
    if override is None:
        raise ConfigError(
            f"refusing to start with header identity (PHOENIX_AUTH "
            f"{'unset' if raw is None else '=local'}: anyone could act as any user, admins "
            f"included) because {' and '.join(signs)} looks like production. Set "
            "PHOENIX_AUTH=firebase and PHOENIX_FIREBASE_PROJECT=<project>; for a local stand-in "
            f"of production only, set {ALLOW_HEADER_IDENTITY}=yes"
        )
    if override.strip().lower() not in _YES:
        raise ConfigError(
            f"{ALLOW_HEADER_IDENTITY}={override!r}: set it to 'yes' to allow header identity "
            "here, or remove it and set PHOENIX_AUTH=firebase"
        )
    return mode


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


# One per kind of the registry (common.domain.kinds), so a new kind needs no new setting.
_JOB_ENV = re.compile(r"PHOENIX_([A-Z][A-Z0-9]*)_JOB")
_LOCAL_JOB_CMD_ENV = re.compile(r"PHOENIX_LOCAL_JOB_CMD_([A-Z][A-Z0-9]*)")
PER_KIND_VARIABLES = (_JOB_ENV, _LOCAL_JOB_CMD_ENV)


def _per_kind(env: Mapping[str, str], pattern: re.Pattern[str]) -> tuple[tuple[str, str], ...]:
    """(kind name, value) for every set variable the pattern matches, e.g. PHOENIX_VIDEO_JOB."""
    found = ((pattern.fullmatch(name), value.strip()) for name, value in env.items())
    return tuple(sorted((m.group(1).lower(), v) for m, v in found if m and v))


def telemetry_from_env(env: Mapping[str, str]) -> tuple[str, str, str]:
    """(trace exporter, metrics exporter, GCP project): the part of ``Settings`` that tracing
    and metrics need, readable on its own so a process (or a test) can configure telemetry
    without every other setting having to be valid."""
    return (
        env.get("PHOENIX_TRACE_EXPORTER", "").strip() or "none",
        env.get("PHOENIX_METRICS_EXPORTER", "").strip() or "none",
        env.get("PHOENIX_GCP_PROJECT", env.get("GOOGLE_CLOUD_PROJECT", "")),
    )


@dataclass(frozen=True)
class Settings:
    port: int = 8080
    data_dir: Path = Path(".phoenix")
    store: str = "sqlite"
    dispatch: str = "local"
    generator: str = "local"
    media: str = "local"
    auth: str = "local"
    log_format: str = "pretty"  # "json" in production (Cloud Logging)
    log_level: str = "INFO"
    # Where spans and metrics go: none, console, file:PATH, otlp, gcp (common.otel_export).
    trace_exporter: str = "none"
    metrics_exporter: str = "none"
    gcp_project: str = ""
    gcp_location: str = "us-central1"
    # Job behaviour
    lease_seconds: int = 120
    max_attempts: int = 3
    pending_timeout_seconds: int = 300
    # Local runtime
    local_max_jobs: int = 4
    sweep_interval_seconds: int = 60
    # Production adapters (documented in the README)
    tasks_queue: str = ""
    tasks_service_account: str = ""
    cloud_tasks_endpoint: str = ""
    run_api_url: str = "https://run.googleapis.com"
    # Cloud Run Job names that differ from the kind registry's defaults: (kind, job) pairs from
    # PHOENIX_<KIND>_JOB. Pairs, not a dict, so Settings stays hashable.
    jobs: tuple[tuple[str, str], ...] = ()
    media_bucket: str = ""
    media_public_base_url: str = ""
    signed_url_seconds: int = 900
    vertex_base_url: str = ""
    imagen_model: str = "imagen-4.0-generate-001"
    veo_model: str = "veo-3.0-generate-001"
    veo_max_concurrent: int = 10
    # Production adapters added with the Firestore/GCS/Vertex/Cloud Tasks adapters.
    firestore_database: str = "(default)"
    # Prepended to every Firestore collection name ("creations", "concurrency"): lets several
    # environments (or parallel test runs) share one project/emulator without seeing each other.
    firestore_prefix: str = ""
    # A service-account JSON key used only to sign media URLs when there is no IAM signer
    # (local emulator profile). Empty in production: the runtime account signs via IAM signBlob.
    media_signing_key_file: str = ""
    # A static bearer token for a local Vertex stand-in. Never set in production (ADC is used).
    vertex_access_token: str = ""
    veo_poll_initial_seconds: float = 2.0
    veo_poll_max_seconds: float = 15.0
    # How long a video job waits for a free Veo slot before handing the creation back (retry).
    veo_slot_wait_seconds: int = 1800
    # After a Veo start call of unknown outcome, how long its output may still appear in the
    # bucket (Veo's longest run); the retry looks for it that long before starting again.
    veo_unknown_window_seconds: int = 900
    # The same for an Imagen call (synchronous): the longest a call can still run (120 s + 30).
    imagen_unknown_window_seconds: int = 150
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    rollout: str = ""
    admins: tuple[str, ...] = ()
    firebase_project: str = ""
    # Where Firebase's signing certificates are fetched (a local stand-in in benchmarks), and
    # the least time between two fetches that unknown key ids may trigger.
    firebase_certs_url: str = ""
    firebase_certs_min_interval_seconds: float = 30.0
    rate_limit_per_minute: int = 30
    max_active_per_user: int = 10
    # Creations admitted per minute across ALL users (0 = no ceiling): one flood of many
    # accounts cannot fill the queue and every Veo slot.
    global_rate_limit_per_minute: int = 0
    # Flag file that overrides ``rollout`` and is re-read when it changes (jobs.legacy.drain).
    rollout_file: str = ""
    # Local dispatcher: the command that runs a kind's job (e.g. a built PEX), as (kind,
    # command) pairs from PHOENIX_LOCAL_JOB_CMD_<KIND>; default the job module.
    local_job_cmds: tuple[tuple[str, str], ...] = ()
    # Legacy Celery path (phase 1-2).
    celery_visibility_timeout_seconds: int = 7200
    legacy_pool: str = "prefork"
    legacy_concurrency: int = 2
    legacy_retry_backoff_seconds: float = 30.0

    @property
    def quota_policy(self) -> "QuotaPolicy":
        from common.domain.quota import QuotaPolicy

        return QuotaPolicy(
            max_active=self.max_active_per_user,
            per_minute=self.rate_limit_per_minute,
            global_per_minute=self.global_rate_limit_per_minute,
        )

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "creations.sqlite3"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        store = _choice(env, "PHOENIX_STORE", "sqlite", STORES)
        return cls(
            port=_int(env, "PORT", 8080, minimum=0),
            data_dir=Path(env.get("PHOENIX_DATA_DIR", ".phoenix") or ".phoenix").resolve(),
            store=store,
            dispatch=_choice(env, "PHOENIX_DISPATCH", "local", DISPATCHERS),
            generator=_choice(env, "PHOENIX_GENERATOR", "local", GENERATORS),
            media=_choice(env, "PHOENIX_MEDIA", "local", MEDIA),
            auth=_auth_mode(env, store),
            log_format=_choice(env, "PHOENIX_LOG_FORMAT", "pretty", ("pretty", "json")),
            log_level=env.get("PHOENIX_LOG_LEVEL", "INFO").upper(),
            trace_exporter=telemetry_from_env(env)[0],
            metrics_exporter=telemetry_from_env(env)[1],
            gcp_project=env.get("PHOENIX_GCP_PROJECT", env.get("GOOGLE_CLOUD_PROJECT", "")),
            gcp_location=env.get("PHOENIX_GCP_LOCATION", "us-central1"),
            lease_seconds=_int(env, "PHOENIX_LEASE_SECONDS", 120, minimum=1),
            max_attempts=_int(env, "PHOENIX_MAX_ATTEMPTS", 3, minimum=1),
            pending_timeout_seconds=_int(env, "PHOENIX_PENDING_TIMEOUT_SECONDS", 300, minimum=1),
            local_max_jobs=_int(env, "PHOENIX_LOCAL_MAX_JOBS", 4, minimum=1),
            sweep_interval_seconds=_int(env, "PHOENIX_SWEEP_INTERVAL_SECONDS", 60, minimum=0),
            tasks_queue=env.get("PHOENIX_TASKS_QUEUE", ""),
            tasks_service_account=env.get("PHOENIX_TASKS_SERVICE_ACCOUNT", ""),
            cloud_tasks_endpoint=env.get("PHOENIX_CLOUD_TASKS_ENDPOINT", ""),
            run_api_url=env.get("PHOENIX_RUN_API_URL", "https://run.googleapis.com").rstrip("/"),
            jobs=_per_kind(env, _JOB_ENV),
            media_bucket=env.get("PHOENIX_MEDIA_BUCKET", ""),
            media_public_base_url=env.get("PHOENIX_MEDIA_PUBLIC_BASE_URL", ""),
            signed_url_seconds=_int(env, "PHOENIX_SIGNED_URL_SECONDS", 900, minimum=1),
            vertex_base_url=env.get("PHOENIX_VERTEX_BASE_URL", ""),
            imagen_model=env.get("PHOENIX_IMAGEN_MODEL", "imagen-4.0-generate-001"),
            veo_model=env.get("PHOENIX_VEO_MODEL", "veo-3.0-generate-001"),
            veo_max_concurrent=_int(env, "PHOENIX_VEO_MAX_CONCURRENT", 10, minimum=1),
            firestore_database=env.get("PHOENIX_FIRESTORE_DATABASE", "(default)") or "(default)",
            firestore_prefix=env.get("PHOENIX_FIRESTORE_PREFIX", ""),
            media_signing_key_file=env.get("PHOENIX_MEDIA_SIGNING_KEY_FILE", ""),
            vertex_access_token=env.get("PHOENIX_VERTEX_ACCESS_TOKEN", ""),
            veo_poll_initial_seconds=_float(env, "PHOENIX_VEO_POLL_INITIAL_SECONDS", 2.0),
            veo_poll_max_seconds=_float(env, "PHOENIX_VEO_POLL_MAX_SECONDS", 15.0),
            veo_slot_wait_seconds=_int(env, "PHOENIX_VEO_SLOT_WAIT_SECONDS", 1800, minimum=0),
            veo_unknown_window_seconds=_int(
                env, "PHOENIX_VEO_UNKNOWN_WINDOW_SECONDS", 900, minimum=0
            ),
            imagen_unknown_window_seconds=_int(
                env, "PHOENIX_IMAGEN_UNKNOWN_WINDOW_SECONDS", 150, minimum=0
            ),
            celery_broker_url=env.get("PHOENIX_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
            rollout=env.get("PHOENIX_ROLLOUT", ""),
            admins=tuple(a.strip() for a in env.get("PHOENIX_ADMINS", "").split(",") if a.strip()),
            firebase_project=env.get("PHOENIX_FIREBASE_PROJECT", ""),
            firebase_certs_url=env.get("PHOENIX_FIREBASE_CERTS_URL", ""),
            firebase_certs_min_interval_seconds=_float(
                env, "PHOENIX_FIREBASE_CERTS_MIN_INTERVAL_SECONDS", 30.0
            ),
            rate_limit_per_minute=_int(env, "PHOENIX_RATE_LIMIT_PER_MINUTE", 30, minimum=0),
            max_active_per_user=_int(env, "PHOENIX_MAX_ACTIVE_PER_USER", 10, minimum=0),
            global_rate_limit_per_minute=_int(
                env, "PHOENIX_GLOBAL_RATE_LIMIT_PER_MINUTE", 0, minimum=0
            ),
            rollout_file=env.get("PHOENIX_ROLLOUT_FILE", "").strip(),
            local_job_cmds=_per_kind(env, _LOCAL_JOB_CMD_ENV),
            celery_visibility_timeout_seconds=_int(
                env, "PHOENIX_CELERY_VISIBILITY_TIMEOUT_SECONDS", 7200, minimum=1
            ),
            legacy_pool=_choice(env, "PHOENIX_LEGACY_POOL", "prefork", LEGACY_POOLS),
            legacy_concurrency=_int(env, "PHOENIX_LEGACY_CONCURRENCY", 2, minimum=1),
            legacy_retry_backoff_seconds=_float(env, "PHOENIX_LEGACY_RETRY_BACKOFF_SECONDS", 30.0),
        )
