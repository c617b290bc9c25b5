"""Paid Veo work is never thrown away or paid twice (issue 12, cases 4-6), over a scripted
google-genai client (no HTTP: the wire format is the integration tests' business).

Tests whose docstring starts with "Before:" failed against the previous generator as named.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

from google.genai import errors as genai_errors
from google.genai import types

from common.adapters.concurrency_guard import InMemoryConcurrencyGuard
from common.adapters.memory_store import InMemoryCreationStore
from common.adapters.vertex_generator import Polling, VertexGenerator
from common.domain import creation as lc
from common.domain.creation import Kind, MediaRef, Status
from common.job_runner import EXIT_RETRY, JobDeps, run_job
from common.ports import MediaStore
from tests.support.generation_context import BareContext

BUCKET_HEAD = "gs://bucket/creations/"
FAST = Polling(
    initial=0.01,
    maximum=0.02,
    slot_initial=0.01,
    slot_maximum=0.02,
    slot_wait=0.3,
    unknown_window=5.0,
)


class Bucket(MediaStore):
    """Our bucket as the job sees it: Veo writes under ``output_prefix``; jobs adopt objects."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key, data, mime_type):
        self.objects[BUCKET_HEAD + key] = data
        return MediaRef(key, mime_type)

    def read(self, key):
        return self.objects[BUCKET_HEAD + key]

    def url_for(self, ref):
        return BUCKET_HEAD + ref.key

    def output_prefix(self, creation_id):
        return f"{BUCKET_HEAD}{creation_id}/"

    def find_outputs(self, prefix_uri):
        return sorted(u for u in self.objects if u.startswith(prefix_uri))

    def ref_from_uri(self, uri, mime_type):
        return MediaRef(uri[len(BUCKET_HEAD) :], mime_type)


class FakeVeo:
    """``client.models.generate_videos`` / ``client.operations.get`` with scripted starts.

    Script items: "ok"; "accept-then-timeout" (Veo accepts, the answer never arrives);
    "accept-silently-then-timeout" (accepted but its output never appears in time);
    an Exception (raised without starting anything)."""

    def __init__(self, bucket: Bucket, *script, polls: int = 1) -> None:
        self.bucket = bucket
        self.script = list(script)
        self.polls = polls
        self.starts = 0
        self.ops: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self.models = self
        self.operations = self

    def generate_videos(self, *, model, source, config):
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        self.starts += 1
        name = f"projects/p/locations/l/publishers/google/models/veo/operations/{next(self._ids)}"
        self.ops[name] = {"polls": self.polls, "prefix": config.output_gcs_uri}
        if step == "accept-then-timeout":
            self._finish(name)  # Veo runs it to the end; nobody learnt its name
            raise TimeoutError("read timed out")
        if step == "accept-silently-then-timeout":
            raise TimeoutError("read timed out")
        return types.GenerateVideosOperation(name=name)

    def _finish(self, name):
        uri = f"{self.ops[name]['prefix']}{name.rsplit('/', 1)[1]}/sample_0.mp4"
        self.bucket.objects[uri] = b"mp4"
        return uri

    def get(self, operation):
        op = self.ops[operation.name]
        if op["polls"] > 0:
            op["polls"] -= 1
            return types.GenerateVideosOperation(name=operation.name)
        uri = self._finish(operation.name)
        video = types.GeneratedVideo(video=types.Video(uri=uri, mime_type="video/mp4"))
        return types.GenerateVideosOperation(
            name=operation.name,
            done=True,
            response=types.GenerateVideosResponse(generated_videos=[video]),
        )


def _setup(*script, limit=10, polls=1, polling=FAST):
    bucket = Bucket()
    fake = FakeVeo(bucket, *script, polls=polls)
    guard = InMemoryConcurrencyGuard()
    gen = VertexGenerator(
        lambda: fake,
        imagen_model="imagen",
        veo_model="veo",
        guard=guard,
        veo_limit=limit,
        polling=polling,
    )
    store = InMemoryCreationStore()
    c = lc.new(
        user_id="u",
        kind=Kind.VIDEO,
        prompt="a fox",
        params={"aspect_ratio": "16:9", "duration_seconds": 4},
        path="cloud-tasks",
        now=lc.utcnow(),
    )
    store.add(c)
    deps = JobDeps(store=store, generator=gen, media=bucket, clock=lc.utcnow)
    return store, c.id, deps, fake, guard, gen


def test_a_start_of_unknown_outcome_is_found_not_paid_for_again():
    """Before: a ``generate_videos`` that timed out after Veo accepted it was classed
    retryable and the retry started a second (billed) operation. Now the marker written before
    the call leads the retry to the first operation's output.

    Shown to fail on 2026-12-01 with the unknown-outcome marker ignored by the generator
    (``scratch/reliability-break-unknown-outcome-ignored``).
    """
    store, cid, deps, fake, _, _ = _setup("accept-then-timeout")
    first = run_job(cid, Kind.VIDEO, deps, owner="attempt-0")
    assert first.exit_code == EXIT_RETRY
    c = store.get(cid)
    assert c.error.code == "start_outcome_unknown" and c.start_marker
    second = run_job(cid, Kind.VIDEO, deps, owner="attempt-1")
    assert second.status == "completed"
    assert fake.starts == 1
    done = store.get(cid)
    assert done.start_marker is None
    assert done.media[0].key.startswith(f"{cid}/{c.start_marker}/")


def test_an_unknown_start_whose_output_never_appears_is_started_again_after_the_window():
    """Guard naming the remaining window: if the accepted start's output does not appear within
    ``unknown_window`` (Veo's longest run), the attempt that looked hands the creation back
    without having used an attempt, and the next one starts again; a second payment is then
    possible only for a start Veo accepted and ran longer than that window.

    Shown to fail on 2026-12-01 with the unknown-outcome marker ignored by the generator
    (``scratch/reliability-break-unknown-outcome-ignored``); ``claim`` not resuming a recorded
    operation or unknown start (``scratch/reliability-break-claim-ignores-operation``).
    """
    window = dataclasses.replace(FAST, unknown_window=0.3)
    store, cid, deps, fake, _, _ = _setup("accept-silently-then-timeout", polling=window)
    assert run_job(cid, Kind.VIDEO, deps, owner="a0").exit_code == EXIT_RETRY
    started = time.monotonic()
    looked = run_job(cid, Kind.VIDEO, deps, owner="a1")
    assert looked.exit_code == EXIT_RETRY and time.monotonic() - started >= 0.2
    c = store.get(cid)
    assert (c.attempts, c.resumes, c.start_marker) == (1, 1, None)  # looking used no attempt
    assert run_job(cid, Kind.VIDEO, deps, owner="a2").status == "completed"
    assert fake.starts == 2 and store.get(cid).attempts == 2


def test_a_definite_refusal_clears_the_marker_and_the_retry_starts_at_once():
    """Guard: a 429 answered by Veo started nothing, so the retry does not wait the window."""
    quota = genai_errors.ClientError(
        429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
    )
    store, cid, deps, fake, _, _ = _setup(quota)
    assert run_job(cid, Kind.VIDEO, deps, owner="a0").exit_code == EXIT_RETRY
    assert store.get(cid).start_marker is None
    started = time.monotonic()
    assert run_job(cid, Kind.VIDEO, deps, owner="a1").status == "completed"
    assert time.monotonic() - started < FAST.unknown_window and fake.starts == 1


def test_polling_a_recorded_operation_needs_no_slot_and_no_attempt():
    """Before: a resumed job had to win a Veo slot before it could poll its recorded operation
    (here it waited, gave up with ``provider_busy`` and burned an attempt), and ``claim`` at
    the attempt limit failed the creation without looking at its operation.

    Shown to fail on 2026-12-01 with a resume queueing for a Veo slot (``scratch/reliability-break-
    resume-waits-for-slot``); ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store, cid, deps, fake, guard, gen = _setup(limit=1)
    op = fake.generate_videos(model="veo", source=None, config=types.GenerateVideosConfig(
        output_gcs_uri=f"{BUCKET_HEAD}{cid}/m/"))  # fmt: skip
    store.update(
        cid,
        lambda c: dataclasses.replace(c, operation=op.name, attempts=deps.max_attempts),
    )
    assert guard.acquire(gen.veo_resource, "someone-else", limit=1, ttl=FAST_TTL)
    out = run_job(cid, Kind.VIDEO, deps, owner="resumer")
    assert out.status == "completed", store.get(cid).error
    c = store.get(cid)
    assert c.status is Status.COMPLETED and c.attempts == deps.max_attempts
    assert fake.starts == 1  # the one made above; none by the job


FAST_TTL = __import__("datetime").timedelta(minutes=5)


# A bare generation context for one execution attempt (what the job runner passes).
_Ctx = BareContext


def test_overlapping_executions_of_one_creation_never_free_each_others_slot():
    """Before: the slot was keyed by creation id, so when a job whose lease had lapsed
    overlapped its successor, the loser's ``finally`` released the winner's slot while the
    winner's operation still ran (uncounted against the cap).

    Shown to fail on 2026-12-01 with the Veo slot keyed by creation id (``scratch/reliability-break-
    slot-per-creation``).
    """
    store, cid, deps, fake, guard, gen = _setup(limit=5, polls=40)
    winner = _Ctx(cid, "exec-2/a0")
    t = threading.Thread(target=gen.generate, args=(Kind.VIDEO, "a fox", {}, winner))
    t.start()
    deadline = time.monotonic() + 5
    while "exec-2/a0" not in guard.holders(gen.veo_resource) and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.polls = 0
    loser = _Ctx(cid, "exec-1/a0")
    gen.generate(Kind.VIDEO, "a fox", {}, loser)  # finishes first, releases in ``finally``
    assert list(guard.holders(gen.veo_resource)) == ["exec-2/a0"]
    t.join(10)
