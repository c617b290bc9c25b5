"""The OpenAPI document and the Flask routes cannot drift apart: every route the app serves
(except static files) is documented with the same methods, and every documented operation is
served. Clients and the fuzz test (tests/integration/test_openapi_fuzz.py) trust the document;
an undocumented route is untested surface, a documented-but-missing one breaks generated
clients."""

from __future__ import annotations

import re
from pathlib import Path

from api.app import create_app
from api.openapi import build_openapi
from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from tests.support.openapi_routes import documented_operations, flask_operations, openapi_paths


def _app(tmp_path: Path):
    recorder = RecordingDispatcher()
    # Local media: the local runtime's route set (it adds /media/<key>), the superset.
    return create_app(
        Settings(data_dir=tmp_path, dispatch="record", admins=("admin",)),
        store=InMemoryCreationStore(),
        media=LocalMediaStore(tmp_path / "media"),
        dispatchers=lambda path: recorder,
    )


def test_every_served_route_is_documented_and_every_documented_route_is_served(tmp_path):
    served = flask_operations(_app(tmp_path))
    documented = documented_operations(build_openapi())
    undocumented = sorted(served - documented)
    phantom = sorted(documented - served)
    assert not undocumented, f"served but not in build_openapi(): {undocumented}"
    assert not phantom, f"in build_openapi() but not served: {phantom}"


def test_documented_path_parameters_match_the_route_placeholders():
    doc = build_openapi()
    for path, item in doc["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            declared = {p["name"] for p in params if p.get("in") == "path"}
            assert declared == placeholders, (method, path, declared)
            for p in params:
                if p.get("in") == "path":
                    assert p.get("required") is True, (method, path, p)


def test_the_served_document_is_the_built_one(tmp_path):
    client = _app(tmp_path).test_client()
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json() == build_openapi()


def test_the_rule_translation_itself():
    assert openapi_paths("/api/generate/<any(video, image):kind>") == [
        "/api/generate/video",
        "/api/generate/image",
    ]
    assert openapi_paths("/api/creations/<creation_id>") == ["/api/creations/{creation_id}"]
    assert openapi_paths("/media/<path:key>") == ["/media/{key}"]
