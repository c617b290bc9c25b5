"""Chooses how a creation reaches its job. Used by the API and the sweeper; imports are lazy so
the embedded default never loads google-cloud-tasks or celery."""

from __future__ import annotations

from common.config import ConfigError, Settings
from common.ports import Dispatcher


def build_dispatcher(settings: Settings, path: str | None = None) -> Dispatcher:
    """``path`` overrides ``settings.dispatch`` (the rollout picks a path per creation)."""
    name = path or settings.dispatch
    if name == "local":
        from common.adapters.local_dispatch import LocalProcessDispatcher, job_commands

        return LocalProcessDispatcher(
            max_parallel=settings.local_max_jobs, command_for=job_commands(settings)
        )
    if name == "record":
        from common.adapters.local_dispatch import RecordingDispatcher

        return RecordingDispatcher()
    if name == "cloud-tasks":
        from common.adapters.cloud_tasks_dispatch import CloudTasksDispatcher

        return CloudTasksDispatcher.from_settings(settings)
    if name == "celery":
        from common.adapters.celery_dispatch import CeleryDispatcher

        return CeleryDispatcher.from_settings(settings)
    raise ConfigError(f"unknown dispatcher {name!r}")
