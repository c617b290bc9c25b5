"""The rollout flag: which dispatch path each creation takes while old and new run side by side.

``PHOENIX_ROLLOUT`` looks like ``video=cloud-tasks:25,celery:75;image=celery:100``: per kind, a
list of ``path:weight`` with integer weights summing to 100. Kinds not mentioned use the
default path (``PHOENIX_DISPATCH``). The API reads it; jobs never do, so changing it needs no
job redeploy (and with ``PHOENIX_ROLLOUT_FILE`` no redeploy of anything, see ``make_route``).

Assignment is by user, not by request: ``bucket = sha256(f"{kind}:{user_id}") mod 10000``, so a
user keeps the same path at a given flag (their creations are comparable, and a user never sees
two behaviours at once), and the split is uniform over users.

Monotonic migration. The bucket range [0, 10000) is cut into consecutive segments in the fixed
order ``PATH_ORDER`` = (cloud-tasks, local, celery): the migration target first, the legacy path
last, *whatever the weights*. Let C_k be the cumulative weight of the first k paths. A user in
bucket b is on path i iff C_{i-1} <= b < C_i. If a flag change never lowers any C_k (equivalently:
weight only moves toward the front of PATH_ORDER, e.g. celery -> cloud-tasks), then every user
either stays or moves to an earlier path: new = j with C'_j >= C_j > b forces j <= i. Raising
cloud-tasks from 25 to 50 at celery's expense therefore moves exactly the users in buckets
[2500, 5000) from celery to cloud-tasks and nobody the other way; rolling back (lowering C_1)
moves them back, also deterministically.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.config import ConfigError
from common.domain.creation import Kind
from common.domain.kinds import KINDS, KindRegistry, UnknownKind

if TYPE_CHECKING:
    from common.config import Settings

# Migration target first, legacy last (see the module docstring for why the order is fixed).
PATH_ORDER: tuple[str, ...] = ("cloud-tasks", "local", "celery")
PATHS = frozenset(PATH_ORDER)
LEGACY_PATH = "celery"
BUCKETS = 10_000
_PER_PERCENT = BUCKETS // 100


class RolloutError(ConfigError):
    """The rollout flag is invalid; the message says which part and why (the API won't start)."""


def bucket(kind: Kind | str, user_id: str) -> int:
    """The user's stable position in [0, 10000) for this kind."""
    k = kind.value if isinstance(kind, Kind) else kind
    digest = hashlib.sha256(f"{k}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Rollout:
    # kind -> ((path, weight), ...) in PATH_ORDER, zero weights dropped; kinds absent -> default.
    splits: Mapping[Kind, tuple[tuple[str, int], ...]]
    default_path: str

    @classmethod
    def parse(cls, flag: str, default_path: str, kinds: KindRegistry = KINDS) -> "Rollout":
        rollout = cls(cls._parse_splits(flag, kinds), default_path)
        # The legacy worker makes only the kinds it was deployed with: a newer kind must not be
        # routed there, neither by its own weights nor by falling back to a celery default.
        for spec in kinds.specs():
            if not spec.legacy_task and "celery" in rollout.weights(spec.kind):
                raise RolloutError(
                    f"PHOENIX_ROLLOUT: {spec.kind.value}: the legacy Celery worker cannot make "
                    f"this kind; route it to a new path, e.g. "
                    f"'{spec.kind.value}=cloud-tasks:100'"
                )
        return rollout

    @staticmethod
    def _parse_splits(flag: str, kinds: KindRegistry) -> dict[Kind, tuple[tuple[str, int], ...]]:
        splits: dict[Kind, tuple[tuple[str, int], ...]] = {}
        text = (flag or "").strip()
        if not text:
            return splits
        for section in text.split(";"):
            section = section.strip()
            if not section:
                continue  # tolerate a trailing ';'
            kind_text, sep, rest = section.partition("=")
            if not sep:
                raise RolloutError(
                    f"PHOENIX_ROLLOUT: {section!r} should look like 'video=cloud-tasks:25,celery:75'"
                )
            kind_name = kind_text.strip()
            try:
                kind = kinds.kind(kind_name)
            except UnknownKind:
                raise RolloutError(
                    f"PHOENIX_ROLLOUT: unknown kind {kind_name!r} (expected one of "
                    f"{', '.join(kinds.names)})"
                ) from None
            if kind in splits:
                raise RolloutError(f"PHOENIX_ROLLOUT: kind {kind.value!r} is given twice")
            weights: dict[str, int] = {}
            for item in rest.split(","):
                item = item.strip()
                path, colon, number = item.partition(":")
                path, number = path.strip(), number.strip()
                if not colon or not path:
                    raise RolloutError(
                        f"PHOENIX_ROLLOUT: {kind.value}: {item!r} should be 'path:percent'"
                    )
                if path not in PATHS:
                    raise RolloutError(
                        f"PHOENIX_ROLLOUT: {kind.value}: unknown path {path!r} (expected one of "
                        f"{', '.join(PATH_ORDER)})"
                    )
                if path in weights:
                    raise RolloutError(
                        f"PHOENIX_ROLLOUT: {kind.value}: path {path!r} is given twice"
                    )
                if not number.isdigit():  # rejects '-5', '2.5', '', '1e2'
                    raise RolloutError(
                        f"PHOENIX_ROLLOUT: {kind.value}: weight {number!r} for {path!r} is not a "
                        "whole percentage 0-100"
                    )
                weights[path] = int(number)
            total = sum(weights.values())
            if total != 100:
                raise RolloutError(
                    f"PHOENIX_ROLLOUT: {kind.value}: weights sum to {total}, they must sum to 100"
                )
            splits[kind] = tuple((p, weights[p]) for p in PATH_ORDER if weights.get(p))
        return splits

    def weights(self, kind: Kind) -> dict[str, int]:
        """{path: percent} for this kind (the default path at 100 when not configured)."""
        split = self.splits.get(kind)
        return dict(split) if split else {self.default_path: 100}

    def route(self, kind: Kind, user_id: str) -> str:
        split = self.splits.get(kind)
        if not split:
            return self.default_path
        b = bucket(kind, user_id)
        upper = 0
        for path, weight in split:
            upper += weight * _PER_PERCENT
            if b < upper:
                return path
        return split[-1][0]  # unreachable: weights sum to 100

    def to_flag(self) -> str:
        """Canonical text, every kind explicit (so the default path no longer matters)."""
        parts = []
        for kind in KINDS:
            w = self.weights(kind)
            if any(p not in PATHS for p in w):
                continue  # a non-rollout default (e.g. "record") can only stay implicit
            parts.append(f"{kind.value}=" + ",".join(f"{p}:{w[p]}" for p in PATH_ORDER if p in w))
        return ";".join(parts)

    def without(self, path: str, *, to: str) -> "Rollout":
        """The same rollout with ``path``'s share given to ``to`` (drain: celery -> cloud-tasks).

        Every kind becomes explicit, so a default path equal to ``path`` is replaced as well.
        Weight moves toward the front of PATH_ORDER, so users move only old -> new.
        """
        if to not in PATHS:
            raise RolloutError(f"cannot move traffic to unknown path {to!r}")
        splits: dict[Kind, tuple[tuple[str, int], ...]] = {}
        for kind in KINDS:
            w = self.weights(kind)
            moved = w.pop(path, 0)
            if moved:
                w[to] = w.get(to, 0) + moved
            if any(p not in PATHS for p in w):
                # e.g. default "record": keep it implicit rather than writing an invalid flag
                continue
            splits[kind] = tuple((p, w[p]) for p in PATH_ORDER if w.get(p))
        default = to if self.default_path == path else self.default_path
        return Rollout(splits, default)

    def share(self, path: str) -> dict[Kind, int]:
        return {kind: self.weights(kind).get(path, 0) for kind in KINDS}


class _FileBackedRoute:
    """``route`` that follows ``PHOENIX_ROLLOUT_FILE``: if the file exists its content overrides
    the environment's flag, re-read whenever its mtime/size/inode changes. A bad edit is logged
    and ignored (the last good rollout keeps serving) so a typo cannot take the API down; a bad
    flag at start-up still refuses to start."""

    def __init__(self, env_rollout: Rollout, path: str, default_path: str) -> None:
        self._env = env_rollout
        self._path = path
        self._default = default_path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._current = env_rollout
        self.last_error: str | None = None
        self._refresh(strict=True)

    def _refresh(self, *, strict: bool) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._current = None, self._env
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self._path, encoding="utf-8") as fh:
            text = fh.read().strip()
        try:
            rollout = Rollout.parse(text, self._default)
        except RolloutError as exc:
            if strict:
                raise RolloutError(f"{exc} (from PHOENIX_ROLLOUT_FILE={self._path})") from None
            self.last_error = str(exc)
            import structlog

            structlog.get_logger(__name__).error(
                "rollout_file_invalid_kept_previous", path=self._path, error=str(exc)
            )
            self._stamp = stamp  # don't re-log on every request
            return
        self._stamp, self._current, self.last_error = stamp, rollout, None

    @property
    def rollout(self) -> Rollout:
        with self._lock:
            self._refresh(strict=False)
            return self._current

    def __call__(self, kind: Kind, user_id: str) -> str:
        return self.rollout.route(kind, user_id)


def make_route(settings: "Settings") -> Callable[[Kind, str], str]:
    """The API's ``route`` seam. Raises RolloutError (a ConfigError) on a bad flag, so calling
    it from the app factory makes the API refuse to start with a message naming the problem.

    The returned callable also has ``.rollout`` (the current Rollout) for the admin dashboard.
    """
    base = Rollout.parse(settings.rollout, settings.dispatch)
    if settings.rollout_file:
        return _FileBackedRoute(base, settings.rollout_file, settings.dispatch)

    class _Static:
        rollout = base

        def __call__(self, kind: Kind, user_id: str) -> str:
            return base.route(kind, user_id)

    return _Static()
