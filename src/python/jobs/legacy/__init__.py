"""The legacy Celery worker, kept only for the side-by-side phase of the migration.

Phase 3 deletes this package, ``common/adapters/celery_dispatch.py`` and the ``"celery"`` branch
of ``common.dispatchers``; nothing else imports Celery or Redis.
"""
