"""The legacy worker's Celery app: the seed's ``celery_app.py``, with its known pitfalls fixed.

Why each setting (see notes/platform-facts.md §3):

- ``task_acks_late=True``: a message is acknowledged only after the task returns, so a worker
  that dies mid-generation does not silently lose the creation.
- ``task_reject_on_worker_lost=True``: without it, acks_late still *acks* when a prefork child
  is killed (OOM, SIGKILL) and the message is gone; with it the message is requeued.
- ``worker_prefetch_multiplier=1``: a worker reserves one message per free slot. Generations
  take minutes; prefetching more would park creations behind a busy worker while another idles,
  and every reserved message is one more unacked message at risk of visibility-timeout redelivery.
- ``visibility_timeout`` (Redis transport): an unacked message is *redelivered* after this long,
  even if its worker is still running it (celery#5935, pretix#2058: a 4 h task ran 4 times).
  It must exceed the longest job, plus any retry ``countdown`` (a countdown task sits unacked in
  the worker's memory until it is due). Two hours is ~20x a Veo generation. Redelivery is
  harmless anyway because ``run_job`` is idempotent (lease claim), but it wastes a delivery.
- JSON only: the payload is ``TaskPayload.to_dict()``; pickle would let anyone who can write to
  Redis execute code in the worker.
- No result backend: the outcome lives in the creation store (that is what the API polls);
  storing Celery results in Redis would only grow memory nobody reads.
"""

from __future__ import annotations

from celery import Celery

from common.adapters.celery_dispatch import LEGACY_QUEUE
from common.config import Settings


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("phoenix-legacy", broker=settings.celery_broker_url, set_as_current=True)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Longer than the longest job (a Veo generation is 1-2 min, its lease-renewed worst
            # case is bounded by the sweeper's max_age); lowered by tests of redelivery.
            "visibility_timeout": settings.celery_visibility_timeout_seconds,
            # Fail fast instead of hanging on a half-open connection (Memorystore failover,
            # VPC connector hiccup); the worker reconnects on its own.
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=LEGACY_QUEUE,
        broker_connection_retry_on_startup=True,
        # Our own structlog configuration (common.logs) owns the root logger.
        worker_hijack_root_logger=False,
        task_track_started=False,
        worker_send_task_events=False,
    )
    return app


celery_app = create_celery_app(Settings.from_env())
