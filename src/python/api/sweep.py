"""``python -m api.sweep``: one sweeper pass, for a schedule in production.

In production Cloud Scheduler runs this every minute as a Cloud Run Job that uses the API's
image (it needs exactly the API's adapters: the store and the dispatchers): deploy/
sweeper-job.yaml and sweeper-schedule.yaml, applied by the deploy workflow. The local runtime
runs the same function in a thread instead.
Exit code: 0 when the pass ran (even if some re-dispatches failed: they are retried next
minute), 2 on bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import timedelta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phoenix-sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=500, help="records to look at per pass")
    args = parser.parse_args(argv)

    from api.creation_service import DispatcherPool
    from common import bootstrap, observability
    from common.config import ConfigError, Settings
    from common.dispatchers import build_dispatcher
    from common.domain.creation import utcnow
    from common.domain.rollout import make_route
    from common.sweeper import SweepPolicy, sweep

    try:
        settings = Settings.from_env()
        route = make_route(settings)
        observability.configure(settings, "phoenix-sweeper")
    except ConfigError as exc:
        print(f"phoenix-sweep: {exc}", file=sys.stderr)
        return 2
    store = bootstrap.build_store(settings)
    dispatchers = DispatcherPool(lambda path: build_dispatcher(settings, path))
    try:
        report = sweep(
            store,
            dispatchers,
            now=utcnow(),
            policy=SweepPolicy(pending_timeout=timedelta(seconds=settings.pending_timeout_seconds)),
            limit=args.limit,
            route=route,
            media=bootstrap.build_media(settings),
        )
        # Local jobs started by this pass must finish before the process exits.
        for dispatcher in dispatchers.built().values():
            wait_idle = getattr(dispatcher, "wait_idle", None)
            if callable(wait_idle):
                wait_idle()
    finally:
        dispatchers.close()
        store.close()
        observability.shutdown()
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
