"""The ports: the small interfaces the API and the jobs depend on.

Each has a local adapter (embedded, zero set-up) and a production adapter (Google Cloud), chosen
once in ``common.bootstrap``. Contract tests run the same assertions against every adapter.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable, NamedTuple, Protocol

from common.domain.creation import Creation, Kind, MediaRef, Status
from common.domain.errors import GenerationError
from common.domain.kinds import KINDS, KindRegistry, UnknownKind
from common.domain.payload import TaskPayload
from common.domain.quota import QuotaPolicy, Refusal, UserQuota


class ScanQuery(NamedTuple):
    """``CreationStore.scan``'s filters."""

    statuses: Iterable[Status] | None
    updated_before: datetime | None
    created_after: datetime | None
    limit: int


class AdmissionAsk(NamedTuple):
    """``CreationStore.admit``'s arguments."""

    user_id: str
    creation_id: str
    policy: QuotaPolicy
    now: datetime
    insert: Creation | None


class CreationStore(abc.ABC):
    """Persistence for creations. ``update`` is the only way to change one: it reads the current
    record, applies a pure lifecycle function and writes the result in ONE transaction, so two
    processes racing (two deliveries of one task) serialise and exactly one claim wins."""

    @abc.abstractmethod
    def add(self, creation: Creation) -> None:
        """Insert a new record; raises ValueError if the id exists."""

    @abc.abstractmethod
    def get(self, creation_id: str) -> Creation | None:
        ...

    @abc.abstractmethod
    def update(self, creation_id: str, change: Callable[[Creation], Creation]) -> Creation:
        """Atomically apply ``change``; raises NotFound, or whatever domain error ``change``
        raises (then nothing is written). Returns the record as written."""

    @abc.abstractmethod
    def list_for_user(self, user_id: str, limit: int) -> list[Creation]:
        """The user's creations, newest first."""

    def scan(
        self,
        *,
        statuses: Iterable[Status] | None = None,
        updated_before: datetime | None = None,
        created_after: datetime | None = None,
        limit: int = 1000,
    ) -> list[Creation]:
        """Creations matching all given filters, oldest ``updated_at`` first (sweeper, dashboard)."""
        return self._scan(ScanQuery(statuses, updated_before, created_after, limit))

    @abc.abstractmethod
    def _scan(self, filters: ScanQuery) -> list[Creation]:
        """What each store implements for ``scan`` (its filters in one tuple)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the backend is unreachable (readiness probe)."""

    def delete(self, creation_id: str) -> bool:
        """Remove the record for good; False if it was not there. Callers delete only
        ``deleting`` tombstones, whose media are already gone (``CreationService.delete``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    # --- Admission: one quota record per user (rules in common.domain.quota) ---------------
    # Not abstract so wrappers (benchmarks' counting stores) need not implement them; every
    # real store does, and the contract tests hold each one to the same behaviour. ``update``
    # also releases a creation's slot in the same transaction that makes it terminal.

    def admit(
        self,
        user_id: str,
        creation_id: str,
        policy: QuotaPolicy,
        now: datetime,
        *,
        insert: Creation | None = None,
    ) -> Refusal | None:
        """In ONE transaction: apply ``quota.admit`` to the user's (and the global) quota
        record and, when admitted, insert ``insert``. Returns None when admitted, else the
        Refusal (nothing written). Raises ValueError if ``insert``'s id exists."""
        return self._admit(AdmissionAsk(user_id, creation_id, policy, now, insert))

    def _admit(self, ask: AdmissionAsk) -> Refusal | None:
        """What each store implements for ``admit`` (its arguments in one tuple)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep quotas")

    def release_quota(self, user_id: str, creation_id: str) -> None:
        """Free ``creation_id``'s slot (idempotent): cancel/delete, and the sweeper."""
        raise NotImplementedError(f"{type(self).__name__} does not keep quotas")

    def quota(self, user_id: str) -> UserQuota:
        """The user's quota record as stored (an empty one if none)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep quotas")

    def quota_holders(self, limit: int = 1000) -> list[UserQuota]:
        """Quota records holding at least one slot (the sweeper checks them against the
        creations)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep quotas")


class Dispatcher(abc.ABC):
    """Hands a creation to whatever will run its job: a local process, Cloud Tasks -> Cloud Run
    Jobs, or (legacy) Celery. At-least-once: it may deliver twice; jobs are idempotent."""

    name: str = "abstract"

    @abc.abstractmethod
    def dispatch(self, payload: TaskPayload) -> None:
        """Enqueue; raise DispatchError when the queue cannot take it (the record survives)."""

    def task_exists(self, payload: TaskPayload) -> bool | None:
        """Is the task this ``payload`` (same creation, same dispatch number) created still
        waiting in the queue, not yet handed to a job? True: leave it, it will run; False: it
        is gone (ran, or was lost); None: this queue cannot tell. The sweeper re-sends only on
        False (or, on None, by its time-based rules). Raise DispatchError if the queue cannot
        be asked right now."""
        return None

    def cancel(self, creation: Creation) -> list[str]:
        """Best effort: withdraw the deliveries of a cancelled creation still waiting on this
        path (a queued task, a Celery message, a local queue entry) and say what was withdrawn.
        Never required for correctness: a delivery after a cancel exits at its claim without
        calling the provider. The default withdraws nothing."""
        return []

    def stop_execution(self, creation: Creation) -> bool:
        """The backstop for a job that did not stop by itself at its next lease renewal: stop
        the execution recorded at claim (Cloud Run ``executions:cancel``). Forceful (SIGTERM,
        then SIGKILL), so it is used only after the job had its chance. False when this path
        cannot (local processes stop themselves; Celery cannot stop a running task safely)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class MediaStore(abc.ABC):
    """Binary artefacts. Records keep keys; URLs are minted per request."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, mime_type: str) -> MediaRef:
        ...

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """Raise KeyError if missing."""

    @abc.abstractmethod
    def url_for(self, ref: MediaRef) -> str:
        ...

    def delete_for(self, creation_id: str) -> int:
        """Remove every object of one creation (its whole prefix, so files a provider wrote
        beside the ones the record names go too); returns how many. Raises on a backend
        failure, so a delete never reports success while media remain."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete")

    def ref_from_uri(self, uri: str, mime_type: str) -> MediaRef:
        """Adopt an object the provider already wrote into our storage (Veo's output_gcs_uri)."""
        raise NotImplementedError(f"{type(self).__name__} cannot adopt external object {uri}")

    def output_prefix(self, creation_id: str) -> str | None:
        """Where a provider may write output directly (gs:// URI), or None if unsupported."""
        return None

    def find_outputs(self, prefix_uri: str) -> list[str]:
        """URIs of the objects a provider wrote under ``prefix_uri`` (one of ``output_prefix``'s
        sub-prefixes). How a job finds the output of a start call whose answer it never got."""
        return []


@dataclass(frozen=True)
class GeneratedMedia:
    """One artefact from a generator: bytes to store, or a URI it already wrote to our storage."""

    mime_type: str
    data: bytes | None = None
    uri: str | None = None


class GenerationContext(Protocol):
    """What a generator may do while it works. A heartbeat thread keeps the job's lease; every
    call raises ``StopWork`` once a renewal reported the lease lost (or another reason to stop).
    """

    creation_id: str
    # The job's lease owner: per-execution-attempt resources (the Veo slot) are held under it.
    lease_owner: str
    existing_operation: str | None
    output_prefix: str | None
    # Set when a previous attempt made a start call whose outcome it never learnt.
    start_marker: str | None

    def mark_start(self) -> str:
        """Record, before a billed start call, that it is about to happen; returns a marker."""
        ...

    def clear_start(self) -> None:
        ...

    def start_marker_age(self) -> float:
        ...

    def output_prefix_for(self, marker: str) -> str | None:
        ...

    def find_outputs(self, marker: str) -> list[str]:
        ...

    def report_progress(self, percent: int) -> None:
        ...

    def record_operation(self, operation: str) -> None:
        ...

    def heartbeat(self) -> None:
        ...


class Generator(abc.ABC):
    """Turns a prompt into media: one method per kind it can make, named by the kind's registry
    entry (``KindSpec.generator``, e.g. ``generate_video``). Raises GenerationError(code,
    message, retryable); a kind it has no method for is a permanent ``unsupported_kind``, never
    a silent fall-through to another kind's provider."""

    kinds: KindRegistry = KINDS

    def generate(
        self, kind: Kind, prompt: str, params: dict, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        try:
            method_name = self.kinds.spec(kind).generator
        except UnknownKind as exc:
            raise GenerationError("unsupported_kind", str(exc), retryable=False) from None
        method: Callable[..., list[GeneratedMedia]] | None = getattr(self, method_name, None)
        if method is None:
            raise GenerationError(
                "unsupported_kind",
                f"{type(self).__name__} cannot make a {kind}: it has no {method_name}()",
                retryable=False,
            )
        return method(prompt, params, ctx)


# --- Added with the Vertex adapter: a global cap on a scarce provider resource ----------------


class ConcurrencyGuard(abc.ABC):
    """Counts simultaneous holders of a resource (e.g. Veo operations) across every job process.

    Cloud Tasks' ``max_concurrent_dispatches`` cannot bound this (``jobs:run`` returns at once,
    so the queue sees each dispatch finish in milliseconds); the jobs themselves must take a
    slot. Slots are leases with an expiry, so a job killed while holding one frees it after
    ``ttl`` without anyone cleaning up. Acquiring as an existing holder renews instead of
    taking a second slot. Holders are lease owners (one execution attempt), never creation
    ids: two overlapping executions of one creation must not share, free or renew one slot.
    """

    @abc.abstractmethod
    def acquire(self, resource: str, holder: str, *, limit: int, ttl: timedelta) -> bool:
        """Take (or renew) ``holder``'s slot if fewer than ``limit`` live holders exist."""

    @abc.abstractmethod
    def renew(
        self, resource: str, holder: str, *, ttl: timedelta, limit: int | None = None
    ) -> bool:
        """Extend the slot. Returns False if it had lapsed; a lapsed slot is taken again only
        while fewer than ``limit`` live holders exist, so a renewal never pushes the count past
        the cap (``limit=None``: re-take unconditionally)."""

    @abc.abstractmethod
    def release(self, resource: str, holder: str) -> None:
        """Free the slot; releasing a slot not held is a no-op."""

    @abc.abstractmethod
    def holders(self, resource: str) -> dict[str, datetime]:
        """Live holders and their expiry (observability, tests)."""
