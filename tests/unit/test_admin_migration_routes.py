"""The admin migration dashboard blueprint on a bare Flask app: access control, JSON, HTML/SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask

from api.admin_routes import admin_blueprint
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef
from common.domain.rollout import make_route

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def seed(store):
    for i, (path, outcome) in enumerate(
        [("celery", "completed"), ("celery", "failed"), ("cloud-tasks", "completed")] * 3
    ):
        t = NOW - timedelta(minutes=30 + i)
        c = lc.new(user_id=f"u{i}", kind=Kind.VIDEO, prompt="p", params={}, path=path, now=t)
        c = lc.claim(
            c, owner="o", now=t + timedelta(seconds=2), lease=timedelta(minutes=5), max_attempts=3
        )
        if outcome == "completed":
            c = lc.complete(
                c, owner="o", now=t + timedelta(seconds=90), media=(MediaRef("k", "video/mp4"),)
            )
        else:
            c = lc.fail(
                c,
                owner="o",
                now=t + timedelta(seconds=30),
                error=CreationError("quota_exceeded", "<b>no</b>"),
            )
        store.add(c)


@pytest.fixture
def client_for():
    def make(user: str | None):
        store = InMemoryCreationStore()
        seed(store)
        settings = Settings(admins=("admin-1",), rollout="video=cloud-tasks:25,celery:75")
        app = Flask(__name__)
        app.register_blueprint(
            admin_blueprint(
                store=store,
                settings=settings,
                route=make_route(settings),
                current_user=lambda: user,
                clock=lambda: NOW,
            )
        )
        return app.test_client()

    return make


def test_non_admin_gets_403_json(client_for):
    for url in ("/admin/migration", "/api/admin/migration"):
        resp = client_for("someone").get(url)
        assert resp.status_code == 403
        assert resp.get_json()["error"]["code"] == "forbidden"
        assert resp.get_json()["error"]["message"]


def test_anonymous_gets_401(client_for):
    assert client_for(None).get("/api/admin/migration").status_code == 401


def test_json_groups_rollout_and_cost(client_for):
    resp = client_for("admin-1").get("/api/admin/migration?window_hours=24")
    assert resp.status_code == 200
    body = resp.get_json()
    groups = {(g["path"], g["kind"]): g for g in body["groups"]}
    assert groups[("celery", "video")]["count"] == 6
    assert groups[("celery", "video")]["success_rate"] == 0.5
    assert groups[("celery", "video")]["failure_codes"] == {"quota_exceeded": 3}
    assert groups[("cloud-tasks", "video")]["run_time_s"]["p50"] == 88.0
    assert body["rollout"]["video"] == {"cloud-tasks": 25, "celery": 75}
    assert body["cost_model"]["job_seconds"] == 88.0
    assert body["truncated"] is False


def test_bad_window_is_400(client_for):
    c = client_for("admin-1")
    assert c.get("/api/admin/migration?window_hours=abc").status_code == 400
    assert c.get("/api/admin/migration?window_hours=0").status_code == 400
    assert c.get("/api/admin/migration?preset=nope").status_code == 400


def test_html_has_well_formed_inline_svg_charts_and_escapes_text(client_for):
    resp = client_for("admin-1").get("/admin/migration?window_hours=1")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    svgs = [s.split("</svg>")[0] + "</svg>" for s in page.split("<svg")[1:]]
    assert len(svgs) == 4  # success rate, queue wait, run time, cost curve
    for s in svgs:
        ET.fromstring("<svg" + s)  # parses as XML
    assert "Success rate" in page and "Monthly cost vs volume" in page
    assert "celery / video" in page and "quota_exceeded" in page
    assert "<b>no</b>" not in page  # error messages are never rendered raw


def test_static_css_is_served(client_for):
    resp = client_for("admin-1").get("/admin/static/admin.css")
    assert resp.status_code == 200 and b"font-family" in resp.data


def test_wired_into_the_real_app_with_the_identity_seam(tmp_path):
    """create_app registers the dashboard over the app's own store and identity seam."""
    from api.app import create_app
    from common.adapters.local_media import LocalMediaStore

    store = InMemoryCreationStore()
    seed(store)
    settings = Settings(admins=("boss",), auth="local", data_dir=tmp_path)
    app = create_app(settings, store=store, media=LocalMediaStore(tmp_path))
    client = app.test_client()
    denied = client.get("/api/admin/migration", headers={"X-Phoenix-User": "mallory"})
    assert denied.status_code == 403
    assert denied.get_json() == {
        "error": {"code": "forbidden", "message": "the migration dashboard is for admins only"}
    }
    ok = client.get("/api/admin/migration?window_hours=720", headers={"X-Phoenix-User": "boss"})
    assert ok.status_code == 200
    # No PHOENIX_ROLLOUT: every kind goes 100 % to the default path.
    assert ok.get_json()["rollout"] == {"video": {"local": 100}, "image": {"local": 100}}
    page = client.get("/admin/migration", headers={"X-Phoenix-User": "boss"})
    assert page.status_code == 200 and b"<svg" in page.data


def test_the_live_rollout_split_is_reported_from_the_real_route_seam(tmp_path):
    """With a flag set, the dashboard reports exactly the split the API routes by (both kinds,
    the unconfigured one at the default path's 100 %), and the page shows it."""
    from api.app import create_app
    from common.adapters.local_media import LocalMediaStore

    store = InMemoryCreationStore()
    settings = Settings(
        admins=("boss",),
        auth="local",
        data_dir=tmp_path,
        rollout="video=cloud-tasks:25,celery:75",
    )
    app = create_app(settings, store=store, media=LocalMediaStore(tmp_path))
    client = app.test_client()
    ok = client.get("/api/admin/migration", headers={"X-Phoenix-User": "boss"})
    assert ok.status_code == 200
    assert ok.get_json()["rollout"] == {
        "video": {"cloud-tasks": 25, "celery": 75},
        "image": {settings.dispatch: 100},
    }
    page = client.get("/admin/migration", headers={"X-Phoenix-User": "boss"}).get_data(as_text=True)
    assert "Live rollout" in page and "cloud-tasks" in page
