"""The migration dashboard in headless Chromium at 1280 px: nothing overflows the window, no
chart's legend overlaps its title (the cost chart's legend once sat on top of its title) and
no two group labels of a bar chart overlap.

The dashboard blueprint is served in-process by werkzeug on 127.0.0.1 over a seeded store with
every path and kind, so the table is as wide as it gets. A screenshot is left in the test's own
temporary directory for humans (its path is printed: run with ``-s`` to see it).
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from flask import Flask
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from api.admin_routes import admin_blueprint
from common.adapters.memory_store import InMemoryCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef
from common.domain.rollout import make_route

CHROMIUM = os.environ.get("PHOENIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
WINDOW = 1280
NOW = datetime.now(timezone.utc)


def _finished(n: int, path: str, kind: Kind, error: CreationError | None) -> lc.Creation:
    """Creation ``n`` on ``path``: claimed 3 s after creation, finished 95 s (or 20 s) later."""
    t = NOW - timedelta(minutes=30 + n)
    c = lc.new(user_id=f"u{n}", kind=kind, prompt="p", params={}, path=path, now=t)
    c = lc.claim(
        c, owner="o", now=t + timedelta(seconds=3), lease=timedelta(minutes=5), max_attempts=3
    )
    if error is not None:
        return lc.fail(c, owner="o", now=t + timedelta(seconds=20), error=error)
    media = (MediaRef("k", "video/mp4"),)
    return lc.complete(c, owner="o", now=t + timedelta(seconds=95), media=media)


def _seeded_store() -> InMemoryCreationStore:
    """Every path x kind (the widest table), two completed and one failed each."""
    quota = CreationError("provider_quota_exceeded", "quota")
    store = InMemoryCreationStore()
    combos = [(p, k) for p in ("celery", "cloud-tasks", "local") for k in (Kind.VIDEO, Kind.IMAGE)]
    for n, (path, kind, error) in enumerate(
        (p, k, e) for p, k in combos for e in (None, quota, None)
    ):
        store.add(_finished(n, path, kind, error))
    return store


@pytest.fixture(scope="module")
def dashboard_url() -> Iterator[str]:
    settings = Settings(admins=("admin",), rollout="video=cloud-tasks:25,celery:75")
    app = Flask(__name__)
    app.register_blueprint(
        admin_blueprint(
            store=_seeded_store(),
            settings=settings,
            route=make_route(settings),
            current_user=lambda: "admin",
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/admin/migration?window_hours=24"
    finally:
        server.shutdown()
        thread.join(10)


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["right"] <= b["left"]
        or b["right"] <= a["left"]
        or a["bottom"] <= b["top"]
        or b["bottom"] <= a["top"]
    )


def test_dashboard_fits_1280px_and_legends_clear_titles(dashboard_url: str, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run tools/provision (apt chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WINDOW, "height": 900})
            page.goto(dashboard_url)
            screenshot = tmp_path / "phoenix-admin.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            boxes = page.evaluate(
                """() => [...document.querySelectorAll('svg')].map(svg => {
                    const box = e => { const r = e.getBoundingClientRect();
                        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
                    return {title: box(svg.querySelector('text.title')),
                            svg: box(svg),
                            legends: [...svg.querySelectorAll('g.legend')].map(box),
                            xlabels: [...svg.querySelectorAll('text.xlabel')].map(box)};
                })"""
            )
            table_right = page.evaluate(
                "document.querySelector('table.groups').getBoundingClientRect().right"
            )
        finally:
            browser.close()
    assert scroll_width <= WINDOW, f"page is {scroll_width} px wide in a {WINDOW} px window"
    assert table_right <= WINDOW
    assert len(boxes) == 4
    assert sum(len(b["legends"]) for b in boxes) == 3 + 3 + 2  # p50/p95/p99 twice, 2 cost lines
    for chart in boxes:
        assert chart["svg"]["right"] <= WINDOW
        for legend in chart["legends"]:
            assert not _overlap(chart["title"], legend), chart
            assert legend["right"] <= chart["svg"]["right"]
        labels = chart["xlabels"]
        for i, a in enumerate(labels):  # the bar charts' group labels stay apart
            assert a["bottom"] <= chart["svg"]["bottom"]
            assert not any(_overlap(a, b) for b in labels[i + 1 :]), labels
