"""Drain the legacy path before deleting it (ADR §5, phase 3 "Drain Stop").

1. Stop sending: computes the rollout flag with Celery's share moved to the new path (default
   ``cloud-tasks``) from the current one, prints it, and with ``--rollout-file`` writes it to the
   file the API re-reads on change (``PHOENIX_ROLLOUT_FILE``), so no redeploy is needed.
2. Wait for the legacy side to be empty, reporting each poll:
   - queued: LLEN of the Celery queue list(s) in Redis (incl. kombu's priority sub-queues);
   - unacked: kombu's ``unacked`` hash, i.e. messages delivered to a worker and not yet acked
     (running, prefetched, waiting out a retry countdown, or orphaned by a dead worker, which
     Redis would only redeliver after the visibility timeout);
   - in flight: ``celery inspect`` active / reserved / scheduled on every live worker;
   - open legacy creations: records on path "celery" that are not completed/failed (this also
     covers the instant a message is between the list and the unacked hash).
3. Exit 0 only when all four are zero; after ``--timeout`` exit 1 listing what is stuck.

Run it while the workers are still up (they drain the queue), with the API's PHOENIX_* config.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence, TextIO

from common.adapters.celery_dispatch import LEGACY_QUEUE
from common.config import ConfigError, Settings
from common.domain.creation import Creation, Status
from common.domain.rollout import LEGACY_PATH, PATH_ORDER, Rollout

# kombu's Redis transport: priority sub-queues are "<queue>\x06\x16<step>" for steps 3, 6, 9,
# and delivered-but-unacked messages live in the hash "unacked" (see kombu.transport.redis).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"

SAFE_TO_DELETE = (
    "It is now safe to delete the legacy worker service (phoenix-video-worker), the Memorystore "
    "Redis instance and the Serverless VPC Access connector, then remove PHOENIX_CELERY_BROKER_URL "
    "and the celery path (phase 3)."
)


@dataclass
class Snapshot:
    queued: int = 0
    unacked: int = 0
    active: int = 0
    reserved: int = 0
    scheduled: int = 0
    workers: int = 0
    open_legacy: list[Creation] = field(default_factory=list)
    in_flight_ids: list[str] = field(default_factory=list)
    unacked_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clear(self) -> bool:
        return (
            not self.errors
            and self.queued == 0
            and self.unacked == 0
            and self.active + self.reserved + self.scheduled == 0
            and not self.open_legacy
        )

    def line(self, elapsed: float) -> str:
        text = (
            f"[{elapsed:6.1f}s] queued={self.queued} unacked={self.unacked} "
            f"active={self.active} reserved={self.reserved} scheduled={self.scheduled} "
            f"workers={self.workers} open_legacy_creations={len(self.open_legacy)}"
        )
        if self.errors:
            text += " errors=" + "; ".join(self.errors)
        return text


# --- Step 1: the flag ----------------------------------------------------------------------------


def current_flag(settings: Settings, rollout_file: str | None) -> str:
    """The flag the API is using now: the rollout file if present, else PHOENIX_ROLLOUT."""
    if rollout_file and Path(rollout_file).exists():
        return Path(rollout_file).read_text(encoding="utf-8").strip()
    return settings.rollout


def drained_flag(flag: str, default_path: str, to: str) -> tuple[str, dict[str, int]]:
    """The flag with celery's share moved to ``to``, and the share each kind had before."""
    rollout = Rollout.parse(flag, default_path)
    before = {k.value: v for k, v in rollout.share(LEGACY_PATH).items()}
    return rollout.without(LEGACY_PATH, to=to).to_flag(), before


def write_atomically(path: str, text: str) -> None:
    # Rename is atomic: the API never reads a half-written flag (and the inode change is seen).
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".rollout-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- Step 2: observing the legacy side -----------------------------------------------------------


def _queue_keys(
    queues: Sequence[str], sep: str = _PRIORITY_SEP, steps: Sequence[int] = _PRIORITY_STEPS
) -> list[str]:
    keys = []
    for q in queues:
        keys.append(q)
        keys.extend(f"{q}{sep}{step}" for step in steps if step)
    return keys


def _creation_id_from_args(args: Any) -> str | None:
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], dict):
        cid = args[0].get("creation_id")
        return str(cid) if cid else None
    return None


def _creation_id_from_unacked(raw: bytes | str) -> str | None:
    """Best effort: unacked values are JSON [message, exchange, routing_key] with a base64 body
    holding Celery protocol 2's [args, kwargs, embed]."""
    try:
        message = json.loads(raw)[0]
        body = message.get("body")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        return _creation_id_from_args(decoded[0])
    except Exception:
        return None


class LegacyObserver:
    def __init__(self, settings: Settings, queues: Sequence[str], inspect_timeout: float) -> None:
        from common import bootstrap
        from jobs.legacy.celery_app import create_celery_app

        self._app = create_celery_app(settings)
        self._conn: Any = None
        self._store = bootstrap.build_store(settings)
        self._queues = list(queues)
        self._inspect_timeout = inspect_timeout

    def _channel(self) -> Any:
        """kombu's Redis channel: its ``client`` is a redis-py client configured exactly like the
        workers' (URL, key prefix, timeouts), and it knows the unacked key's name."""
        if self._conn is None:
            self._conn = self._app.connection_for_read()
            self._conn.ensure_connection(max_retries=1)
        return self._conn.default_channel

    def snapshot(self, limit: int = 10_000) -> Snapshot:
        snap = Snapshot()
        try:
            channel = self._channel()
            pipe = channel.client.pipeline()
            keys = _queue_keys(
                self._queues,
                getattr(channel, "sep", _PRIORITY_SEP),
                getattr(channel, "priority_steps", _PRIORITY_STEPS),
            )
            for key in keys:
                pipe.llen(key)
            pipe.hvals(getattr(channel, "unacked_key", UNACKED_KEY))
            *lengths, unacked = pipe.execute()
            snap.queued = int(sum(lengths))
            snap.unacked = len(unacked)
            snap.unacked_ids = [i for i in map(_creation_id_from_unacked, unacked) if i]
        except Exception as exc:
            snap.errors.append(f"redis: {type(exc).__name__}: {exc}")
            self._drop_connection()  # reconnect on the next poll
        try:
            inspect = self._app.control.inspect(timeout=self._inspect_timeout)
            replies: dict[str, dict[str, list]] = {}
            for what in ("active", "reserved", "scheduled"):
                for worker, tasks in (getattr(inspect, what)() or {}).items():
                    replies.setdefault(worker, {})[what] = tasks or []
            snap.workers = len(replies)
            for tasks_by_kind in replies.values():
                snap.active += len(tasks_by_kind.get("active", []))
                snap.reserved += len(tasks_by_kind.get("reserved", []))
                snap.scheduled += len(tasks_by_kind.get("scheduled", []))
                for what, tasks in tasks_by_kind.items():
                    for t in tasks:
                        req = t.get("request", t) if what == "scheduled" else t
                        cid = _creation_id_from_args(req.get("args"))
                        if cid:
                            snap.in_flight_ids.append(f"{cid} ({what})")
        except Exception as exc:
            snap.errors.append(f"inspect: {type(exc).__name__}: {exc}")
        try:
            open_records = self._store.scan(
                statuses=[Status.PENDING, Status.PROCESSING], limit=limit
            )
            snap.open_legacy = [c for c in open_records if c.path == LEGACY_PATH]
        except Exception as exc:
            snap.errors.append(f"store: {type(exc).__name__}: {exc}")
        return snap

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_connection()
        self._store.close()


def describe_stuck(snap: Snapshot, now: datetime) -> list[str]:
    lines = []
    if snap.queued:
        lines.append(f"- {snap.queued} message(s) still queued in Redis (is a worker running?)")
    if snap.unacked:
        ids = ", ".join(snap.unacked_ids) or "unknown creations"
        lines.append(
            f"- {snap.unacked} message(s) delivered but not acknowledged ({ids}); a dead worker's "
            "messages come back only after the visibility timeout"
        )
    if snap.in_flight_ids:
        lines.append("- in flight on workers: " + ", ".join(snap.in_flight_ids))
    for c in snap.open_legacy:
        age = (now - c.created_at).total_seconds()
        lease = c.lease_expires_at.isoformat() if c.lease_expires_at else "none"
        last = f", last error {c.error.code}" if c.error else ""
        lines.append(
            f"- creation {c.id} ({c.kind.value}) is {c.status.value} on path celery, "
            f"{age:.0f}s old, attempts {c.attempts}, lease until {lease}{last}"
        )
    for err in snap.errors:
        lines.append(f"- could not check: {err}")
    return lines


def drain(
    observer: LegacyObserver,
    *,
    timeout: float,
    poll_interval: float,
    out: TextIO,
    clock: Any = time.monotonic,
    sleep: Any = time.sleep,
) -> int:
    start = clock()
    while True:
        snap = observer.snapshot()
        elapsed = clock() - start
        print(snap.line(elapsed), file=out, flush=True)
        if snap.clear:
            print(
                "Legacy path drained: queue empty, nothing in flight, no open creations on path "
                "celery.",
                file=out,
                flush=True,
            )
            print(SAFE_TO_DELETE, file=out, flush=True)
            return 0
        if elapsed >= timeout:
            print(f"NOT drained after {timeout:g}s. Stuck:", file=out, flush=True)
            for line in describe_stuck(snap, datetime.now(timezone.utc)):
                print(line, file=out, flush=True)
            print("Do not delete the legacy infrastructure yet.", file=out, flush=True)
            return 1
        sleep(min(poll_interval, max(0.0, timeout - elapsed)))


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.legacy.drain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rollout-file",
        default=None,
        help="write the new flag here (the API re-reads it on change); default "
        "PHOENIX_ROLLOUT_FILE",
    )
    parser.add_argument(
        "--to", default="cloud-tasks", choices=[p for p in PATH_ORDER if p != LEGACY_PATH]
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--inspect-timeout", type=float, default=1.0)
    parser.add_argument("-Q", "--queues", default=LEGACY_QUEUE, help="comma-separated")
    parser.add_argument(
        "--no-flag", action="store_true", help="only wait/check; do not compute or write the flag"
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
        args.rollout_file = args.rollout_file or settings.rollout_file or None
        if not args.no_flag:
            flag = current_flag(settings, args.rollout_file)
            new_flag, before = drained_flag(flag, settings.dispatch, args.to)
    except ConfigError as exc:
        print(f"drain: {exc}", file=sys.stderr)
        return 2
    if not args.no_flag:
        shares = ", ".join(f"{k} {v}%" for k, v in before.items())
        print(f"Legacy (celery) share before: {shares}", file=out)
        print(f"PHOENIX_ROLLOUT={new_flag}", file=out)
        if args.rollout_file:
            write_atomically(args.rollout_file, new_flag)
            print(
                f"Wrote the new flag to {args.rollout_file}; the API applies it on its next "
                "request.",
                file=out,
            )
        else:
            print(
                "Set this as the API's PHOENIX_ROLLOUT (or pass --rollout-file) so no new work "
                "goes to Celery.",
                file=out,
            )
        out.flush()

    observer = LegacyObserver(
        settings, [q.strip() for q in args.queues.split(",") if q.strip()], args.inspect_timeout
    )
    try:
        return drain(observer, timeout=args.timeout, poll_interval=args.poll_interval, out=out)
    finally:
        observer.close()


if __name__ == "__main__":
    sys.exit(main())
