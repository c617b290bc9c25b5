"""Adding a kind is one registry entry (plus its jobs/<kind>/ folder and a generator method):
the API's routes, its OpenAPI document, the Cloud Tasks job map, the settings, the payload and
rollout checks and the generators all read the registry. Built here around a test-only third
kind (tests/support/third_kind.py: "audio"); the affected-services answer for its job folder is
tests/integration/test_affected_services.py::test_a_new_kind_is_its_job_folder_only...
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from api.app import create_app
from api.openapi import build_openapi
from common.adapters.cloud_tasks_dispatch import CloudTasksDispatcher
from common.adapters.local_dispatch import RecordingDispatcher, job_commands
from common.adapters.local_generator import LocalGenerator
from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.adapters.vertex_generator import VertexGenerator
from common.config import Settings
from common.domain.errors import GenerationError, ValidationError
from common.domain.kinds import KINDS, Kind, KindRegistry
from common.domain.payload import TaskPayload
from common.domain.requests import parse_generation_request
from common.domain.rollout import Rollout, RolloutError
from common.ports import GeneratedMedia, GenerationContext, Generator
from tests.support.openapi_routes import documented_operations, flask_operations
from tests.support.third_kind import AUDIO, WITH_AUDIO

USER = {"X-Phoenix-User": "u1"}
AUDIO_KIND = Kind("audio")


def _app(tmp_path: Path, kinds: KindRegistry):
    recorder = RecordingDispatcher()
    app = create_app(
        Settings(data_dir=tmp_path, dispatch="record"),
        store=InMemoryCreationStore(),
        media=LocalMediaStore(tmp_path / "media"),
        dispatchers=lambda path: recorder,
        kinds=kinds,
    )
    return app, recorder


def test_the_api_built_from_a_registry_serves_its_third_kind(tmp_path):
    app, recorder = _app(tmp_path, WITH_AUDIO)
    client = app.test_client()
    resp = client.post(
        "/api/generate/audio", json={"prompt": "rain", "voice": "high"}, headers=USER
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)
    view = resp.get_json()
    assert view["kind"] == "audio"
    assert view["params"] == {"voice": "high", "seconds": 10}  # the model's defaults
    assert [p.kind for p in recorder.dispatched] == [AUDIO_KIND]
    read = client.get(resp.headers["Location"], headers=USER)
    assert read.status_code == 200 and read.get_json()["kind"] == "audio"
    # The kind's own model validates, with the API's error contract.
    bad = client.post("/api/generate/audio", json={"prompt": "x", "seconds": 31}, headers=USER)
    assert bad.status_code == 400
    assert bad.get_json()["error"]["code"] == "invalid_request"
    assert bad.get_json()["error"]["message"] == "seconds: must be at most 30"
    # The other kinds are still served, with their own rules.
    assert client.post("/api/generate/image", json={"prompt": "c"}, headers=USER).status_code == 202
    wrong = client.post("/api/generate/image", json={"prompt": "c", "voice": "low"}, headers=USER)
    assert wrong.status_code == 400 and wrong.get_json()["error"]["message"].startswith("voice:")


def test_the_production_registry_does_not_know_the_test_kind(tmp_path):
    app, _ = _app(tmp_path, KINDS)
    resp = app.test_client().post("/api/generate/audio", json={"prompt": "x"}, headers=USER)
    assert resp.status_code == 404
    with pytest.raises(ValidationError) as err:
        parse_generation_request("audio", {"prompt": "x"})
    assert err.value.field == "kind"


def test_the_openapi_document_comes_from_the_registry_and_matches_the_routes(tmp_path):
    doc = build_openapi(WITH_AUDIO)
    assert [p for p in doc["paths"] if p.startswith("/api/generate/")] == [
        "/api/generate/video",
        "/api/generate/image",
        "/api/generate/audio",
    ]
    body = doc["paths"]["/api/generate/audio"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    assert schema["properties"]["voice"]["enum"] == ["low", "high"]
    assert schema["properties"]["seconds"]["maximum"] == 30
    kind_enum = doc["components"]["schemas"]["Creation"]["properties"]["kind"]["enum"]
    assert kind_enum == ["video", "image", "audio"]
    app, _ = _app(tmp_path, WITH_AUDIO)
    assert flask_operations(app) == documented_operations(doc)
    assert app.test_client().get("/api/openapi.json").get_json() == doc


def test_the_cloud_tasks_job_map_and_settings_come_from_the_registry():
    settings = Settings.from_env(
        {
            "PHOENIX_TASKS_QUEUE": "projects/p/locations/us-central1/queues/q",
            "PHOENIX_CLOUD_TASKS_ENDPOINT": "127.0.0.1:9",  # never connected to here
            "PHOENIX_RUN_API_URL": "http://127.0.0.1:9",
            "PHOENIX_IMAGE_JOB": "custom-image-job",
            "PHOENIX_LOCAL_JOB_CMD_AUDIO": "python3.11 audio-job.pex",
        }
    )
    dispatcher = CloudTasksDispatcher.from_settings(settings, WITH_AUDIO)
    run = "http://127.0.0.1:9/v2/projects/p/locations/us-central1/jobs"
    assert dispatcher.run_url(AUDIO_KIND) == f"{run}/phoenix-audio-job:run"
    assert dispatcher.run_url(Kind.IMAGE) == f"{run}/custom-image-job:run"  # PHOENIX_IMAGE_JOB
    assert dispatcher.run_url(Kind.VIDEO) == f"{run}/phoenix-video-job:run"
    task = dispatcher.build_task(TaskPayload(creation_id="c1", kind=AUDIO_KIND))
    assert task["http_request"]["url"] == f"{run}/phoenix-audio-job:run"
    assert job_commands(settings) == {"audio": ["python3.11", "audio-job.pex"]}


def test_file_extensions_come_from_the_registry():
    assert [KINDS.extension(m) for m in ("video/mp4", "image/png", "image/jpeg")] == [
        "mp4",
        "png",
        "jpg",
    ]
    assert KINDS.extension("audio/mpeg") == "bin"
    assert WITH_AUDIO.extension("audio/mpeg") == "mp3"


def test_payloads_and_the_rollout_flag_accept_only_registered_kinds():
    with pytest.raises(ValidationError) as err:
        TaskPayload.from_dict({"version": 1, "creation_id": "c1", "kind": "audio"})
    assert err.value.field == "kind" and "video, image" in err.value.message
    with pytest.raises(RolloutError, match="unknown kind 'audio'"):
        Rollout.parse("audio=local:100", "local")


def test_a_kind_the_legacy_worker_cannot_make_is_never_routed_to_it():
    """A kind added after the migration began has no seed Celery task: neither its own weights
    nor a celery default may send it to the legacy worker (it would have no task to run)."""
    assert AUDIO.legacy_task is None
    assert all(KINDS.spec(k).legacy_task for k in KINDS)  # the seed's two kinds have theirs
    with pytest.raises(RolloutError, match="audio: the legacy Celery worker cannot make"):
        Rollout.parse("audio=cloud-tasks:50,celery:50", "local", kinds=WITH_AUDIO)
    with pytest.raises(RolloutError, match="audio=cloud-tasks:100"):
        Rollout.parse("video=celery:100", "celery", kinds=WITH_AUDIO)
    mixed = Rollout.parse("audio=cloud-tasks:100", "celery", kinds=WITH_AUDIO)
    assert mixed.route(AUDIO_KIND, "u1") == "cloud-tasks"
    assert mixed.route(Kind.VIDEO, "u1") == "celery"  # the seed's kinds may still use it


class _NoProviderCalls:
    """A generation context that fails the test on anything a provider call would use."""

    creation_id = "c1"
    lease_owner = "job/test"
    existing_operation = None
    output_prefix = None
    start_marker = None

    def __getattr__(self, name: str):
        raise AssertionError(f"ctx.{name} used: no provider call may start for this kind")


def _ctx() -> GenerationContext:
    return cast(GenerationContext, _NoProviderCalls())


def _refusal(generator: Generator, kind: Kind) -> GenerationError:
    with pytest.raises(GenerationError) as err:
        generator.generate(kind, "a prompt", {}, _ctx())
    assert err.value.code == "unsupported_kind" and err.value.retryable is False
    return err.value


def test_generators_raise_on_a_kind_they_do_not_know():
    # The local generator used to render any non-image kind as a video.
    _refusal(LocalGenerator(), AUDIO_KIND)

    # The Vertex generator used to send any non-image kind to Veo: it must not even build a
    # client (no SDK call, no Veo slot).
    def no_client():
        raise AssertionError("no Vertex client may be built for an unknown kind")

    vertex = VertexGenerator(
        no_client, imagen_model="i", veo_model="v", guard=None, veo_limit=1  # type: ignore[arg-type]
    )
    _refusal(vertex, AUDIO_KIND)

    # Registered, but this generator has no method for it: refused, naming the method.
    class LocalWithAudio(LocalGenerator):
        kinds = WITH_AUDIO

    assert "generate_audio()" in _refusal(LocalWithAudio(), AUDIO_KIND).message

    # A generator that has the method is called with the request.
    class AudioGenerator(Generator):
        kinds = WITH_AUDIO

        def generate_audio(self, prompt, params, ctx):
            return [GeneratedMedia(mime_type="audio/mpeg", data=prompt.encode())]

    made = AudioGenerator().generate(AUDIO_KIND, "hum", {"seconds": 3}, _ctx())
    assert made == [GeneratedMedia(mime_type="audio/mpeg", data=b"hum")]
    assert AUDIO.generator == "generate_audio"
