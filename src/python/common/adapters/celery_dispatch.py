"""Legacy dispatch: hand a creation to the Celery worker through Redis (phase 1-2 of the migration).

The API only *sends* tasks, by name, exactly as the seed's API did
(``celery_app.send_task('jobs.async_video_generation_worker.generate_video_task', ...)``), so it
imports none of the worker's code: the API PEX needs celery/kombu/redis-py and nothing else.

This module and ``jobs/legacy/`` are the only places allowed to import Celery or Redis, so phase 3
(decommission) deletes exactly two targets plus the ``"celery"`` branch in ``common.dispatchers``.

Failure policy: a Redis outage must not hang the request thread. Connection and publish retries
are bounded to a couple of seconds, after which ``DispatchError`` is raised; the API answers 503
(the ``pending`` record survives) and the sweeper re-dispatches it later.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import structlog
from celery import Celery

from common.adapters.process_wide import process_wide
from common.config import Settings
from common.domain.creation import Creation, Kind
from common.domain.errors import DispatchError
from common.domain.kinds import KINDS
from common.domain.payload import TaskPayload
from common.ports import Dispatcher

# The seed's task names (the registry's ``legacy_task``): the deployed legacy worker registers
# exactly these, so they are a wire contract between the API and the worker and must never be
# renamed while both run. Kinds without one never reach this path (the rollout refuses).
TASK_NAMES: dict[Kind, str] = {s.kind: s.legacy_task for s in KINDS.specs() if s.legacy_task}

# The seed called send_task without a queue, i.e. Celery's default queue "celery" (a Redis list
# of that name). Keeping it means messages already sitting in the production Redis are still
# consumed by the new worker build, and the drain tool knows which list to watch.
LEGACY_QUEUE = "celery"

log = structlog.get_logger(__name__)

# Bounded broker behaviour for the *sending* side (the API). Seconds.
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 3.0
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    # One quick retry covers a dropped pooled connection (Redis restarted, idle TCP reset);
    # anything longer is an outage and the sweeper is the better place to wait it out.
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


@process_wide
def sender_app(broker_url: str) -> Celery:
    """The process-wide Celery app for ``broker_url`` (``process_wide``: each app owns a broker
    connection pool)."""
    app = Celery("phoenix-api", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=LEGACY_QUEUE,
        broker_connection_timeout=CONNECT_TIMEOUT_S,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        broker_transport_options={
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
        },
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
    )
    return app


# kombu's Redis transport keeps priority sub-queues as "<queue>\x06\x16<step>" and messages
# delivered to a worker but not yet acknowledged in the hash "unacked".
_PRIORITY_SEP, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)
UNACKED_KEY = "unacked"
# The sweeper asks about hundreds of creations per pass; one snapshot of the queue serves them.
SNAPSHOT_TTL_S = 2.0


def _payload_key(raw: bytes | str, unacked: bool) -> tuple[str, int] | None:
    """(creation id, dispatch number) of one queued kombu message (Celery protocol 2 body:
    base64 JSON [args, kwargs, embed]); unacked entries wrap it as [message, exchange, key]."""
    try:
        message = json.loads(raw)
        if unacked:
            message = message[0]
        body = message.get("body")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        payload = args[0]
        return str(payload["creation_id"]), int(payload.get("dispatch") or 0)
    except Exception:
        return None


class CeleryDispatcher(Dispatcher):
    name = "celery"

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._snapshot: tuple[float, set[tuple[str, int]]] | None = None
        self._snapshot_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "CeleryDispatcher":
        return cls(sender_app(settings.celery_broker_url))

    def dispatch(self, payload: TaskPayload) -> None:
        task_name = TASK_NAMES[payload.kind]
        try:
            self._app.send_task(
                task_name,
                args=[payload.to_dict()],
                queue=LEGACY_QUEUE,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                # Celery's own task id = creation id makes "which message is this" obvious in
                # `celery inspect` output and the drain report; the dispatch number keeps a
                # sweeper re-dispatch distinct, and lets cancel name every id to revoke.
                task_id=task_id_for(payload.creation_id, payload.dispatch),
            )
        except Exception as exc:  # kombu OperationalError, redis ConnectionError, OSError, ...
            raise DispatchError(f"celery broker unavailable: {type(exc).__name__}: {exc}") from exc

    def task_exists(self, payload: TaskPayload) -> bool | None:
        """Whether the message is still in Redis: in the queue list (or a priority sub-list),
        or delivered to a worker and not yet acknowledged (kombu re-queues those if the worker
        dies, so the task will still run)."""
        return (payload.creation_id, payload.dispatch) in self._queued()

    def _queued(self) -> set[tuple[str, int]]:
        with self._snapshot_lock:
            now = time.monotonic()
            if self._snapshot is not None and now - self._snapshot[0] < SNAPSHOT_TTL_S:
                return self._snapshot[1]
            try:
                with self._app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.default_channel
                    pipe = channel.client.pipeline()
                    keys = [LEGACY_QUEUE] + [
                        f"{LEGACY_QUEUE}{getattr(channel, 'sep', _PRIORITY_SEP)}{step}"
                        for step in getattr(channel, "priority_steps", _PRIORITY_STEPS)
                        if step
                    ]
                    for key in keys:
                        pipe.lrange(key, 0, -1)
                    pipe.hvals(getattr(channel, "unacked_key", UNACKED_KEY))
                    *lists, unacked = pipe.execute()
            except Exception as exc:
                raise DispatchError(
                    f"celery broker could not be asked: {type(exc).__name__}: {exc}"
                ) from exc
            found = {
                k for raw in (m for lst in lists for m in lst) if (k := _payload_key(raw, False))
            }
            found |= {k for raw in unacked if (k := _payload_key(raw, True))}
            self._snapshot = (now, found)
            return found

    def cancel(self, creation: Creation) -> list[str]:
        """Revoke every task this creation may have been sent as. Workers drop a revoked message
        when they receive it (also one already prefetched); a worker started after the revoke
        does not know it, which the job's claim covers (a cancelled record exits at once)."""
        ids = [task_id_for(creation.id, n) for n in range(creation.dispatches + 1)]
        try:
            self._app.control.revoke(ids)
        except Exception as exc:  # the broker is down: the claim check still stops the job
            log.warning("celery_revoke_failed", creation_id=creation.id, error=repr(exc)[:300])
            return []
        return [f"revoked celery task(s) {', '.join(ids)}"]

    def close(self) -> None:
        # The app (and its pool) is shared process-wide; nothing per-dispatcher to release.
        return None


def task_id_for(creation_id: str, dispatch: int = 0) -> str:
    """Re-dispatches of one creation (sweeper) get distinct Celery task ids (revocation and
    `celery inspect` are keyed by task id), and cancel can derive all of them."""
    return f"{creation_id}-d{dispatch}"
