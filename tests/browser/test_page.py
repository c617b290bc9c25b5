"""The page in a real browser (headless Chromium via Playwright) against the real local
server: type a prompt, pick image or video, submit, and watch the result appear inline.

Chromium is Debian's (``apt-get install chromium``; ``tools/provision`` does it for CI), never
a browser downloaded by ``playwright install``.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

# Imported for Pants' dependency inference (it ships only imported code into the sandbox).
import api.local  # noqa: F401
import jobs.image.main  # noqa: F401
import jobs.video.main  # noqa: F401
from tests.support.local_server import start_local_server, stop_server

CHROMIUM = os.environ.get("PHOENIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINISH_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m api.local`` on a free port with its data in a temp dir."""
    server = start_local_server(tmp_path_factory.mktemp("phoenix-browser"))
    try:
        yield server.base
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run tools/provision (apt chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    # A fresh user per test: the list starts empty and tests do not see each other's cards.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors catch what is not an exception: CSP violations, failed resource loads.
    # (The one expected 400 of the validation test is answered, not a failed load.)
    pg.on(
        "console",
        lambda msg: errors.append(msg.text)
        if msg.type == "error" and "status of 400" not in msg.text
        else None,
    )
    pg.goto(f"{base_url}/?user=browser-{uuid.uuid4().hex[:8]}")
    expect(pg.locator("#who")).to_contain_text("browser-")
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_image_and_video_appear_inline_when_finished(page: Page, tmp_path: Path) -> None:
    # Image: 16:9, two of them.
    page.fill("#prompt", "A lighthouse on a cliff at dawn, soft light")
    page.click("label[for=kind-image]")
    expect(page.locator("#options-image")).to_be_visible()
    expect(page.locator("#options-video")).to_be_hidden()
    page.select_option("#image-aspect-ratio", "16:9")
    page.fill("#image-count", "2")
    page.click("#submit")

    image_card = page.locator("[data-testid=creation][data-kind=image]").first
    expect(image_card).to_be_visible()
    expect(image_card).to_have_attribute("data-status", "completed", timeout=FINISH_TIMEOUT_MS)
    images = image_card.locator("img")
    expect(images).to_have_count(2)
    for i in range(2):
        handle = images.nth(i).element_handle()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=handle, timeout=30_000
        )
        width, height = handle.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert abs(width / height - 16 / 9) < 0.02
    expect(image_card.locator("progress")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("")  # cleared for the next prompt

    # Video: 9:16, 4 s. The newest card is first.
    page.fill("#prompt", "A paper boat drifting down a rainy street")
    page.click("label[for=kind-video]")
    page.select_option("#video-aspect-ratio", "9:16")
    page.select_option("#video-duration-seconds", "4")
    page.click("#submit")

    cards = page.locator("[data-testid=creation]")
    expect(cards).to_have_count(2)
    expect(cards.first).to_have_attribute("data-kind", "video")
    expect(cards.first).to_have_attribute("data-status", "completed", timeout=FINISH_TIMEOUT_MS)
    video = cards.first.locator("video")
    expect(video).to_have_count(1)
    src = video.get_attribute("src")
    assert src and src.startswith("/media/") and src.endswith(".mp4")
    # The browser really decodes it: metadata loads and the size is the 9:16 video's.
    page.wait_for_function(
        "v => v.readyState >= 1 && v.videoWidth > 0", arg=video.element_handle(), timeout=30_000
    )
    dims = video.evaluate("v => [v.videoWidth, v.videoHeight, v.duration]")
    assert dims[:2] == [360, 640] and abs(dims[2] - 4.0) < 0.25, dims

    # Reloading shows the same list from GET /api/creations, newest first.
    page.reload()
    expect(page.locator("[data-testid=creation]")).to_have_count(2)
    expect(page.locator("[data-testid=creation]").first).to_have_attribute("data-kind", "video")
    page.locator("[data-testid=creation] video").first.wait_for()

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # For humans: pytest keeps the last few temp dirs; no fixed shared path is written.
    print(f"\nscreenshot: {shot}")


def test_api_errors_are_shown_and_failures_are_reported(page: Page) -> None:
    # Empty prompt: the API's own validation message is shown.
    page.click("label[for=kind-image]")
    page.click("#submit")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("prompt: must not be empty")
    expect(page.locator("[data-testid=creation]")).to_have_count(0)

    # A generation failure ends as a failed card with the reason.
    page.fill("#prompt", "Something the filter blocks [fail:content_filtered]")
    page.click("#submit")
    expect(page.locator("#error")).to_be_hidden()
    card = page.locator("[data-testid=creation]").first
    expect(card).to_have_attribute("data-status", "failed", timeout=FINISH_TIMEOUT_MS)
    expect(card.locator("[data-testid=creation-error]")).to_be_visible()
    expect(card.locator("[data-testid=creation-error]")).to_have_attribute(
        "data-code", "content_filtered"
    )
    expect(card.locator("img")).to_have_count(0)


def _focus_is_visible(page: Page) -> bool:
    """The focused element shows a keyboard focus ring (an outline, not a colour change)."""
    return bool(
        page.evaluate(
            "() => { const el = document.activeElement; const s = getComputedStyle(el);"
            " return el.matches(':focus-visible') && s.outlineStyle !== 'none'"
            " && parseFloat(s.outlineWidth) >= 2; }"
        )
    )


def test_cancel_retry_and_delete_from_the_page_with_the_keyboard(page: Page) -> None:
    # A slow video: Cancel is offered while it is queued or generating.
    page.fill("#prompt", "A slow pan over a glacier [slow:30]")
    page.click("label[for=kind-video]")
    page.select_option("#video-duration-seconds", "4")
    page.click("#submit")
    cards = page.locator("[data-testid=creation]")
    first = cards.first
    expect(first).to_have_attribute("data-status", re.compile("pending|processing"))
    cancel = first.locator("[data-testid=cancel]")
    expect(cancel).to_be_visible()
    expect(first.locator("[data-testid=delete]")).to_be_hidden()
    expect(first.locator("[data-testid=retry]")).to_be_hidden()

    # Keyboard only: focus the button, see the focus ring, press Enter.
    cancel.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # back onto Cancel by keyboard: :focus-visible applies
    assert page.evaluate("document.activeElement.dataset.action") == "cancel"
    assert _focus_is_visible(page)
    page.keyboard.press("Enter")
    expect(first).to_have_attribute("data-status", "cancelled", timeout=30_000)
    expect(first.locator("[data-testid=status]")).to_have_text("Cancelled")
    expect(first.locator("[data-testid=creation-note]")).to_be_visible()
    expect(cancel).to_be_hidden()
    retry = first.locator("[data-testid=retry]")
    expect(retry).to_be_visible()
    expect(first.locator("[data-testid=delete]")).to_be_visible()
    expect(first.locator("video")).to_have_count(0)

    # Retry (keyboard): a NEW creation appears on top with the same prompt; the old one stays.
    cancelled_id = first.get_attribute("data-id")
    retry.focus()
    page.keyboard.press("Enter")
    expect(cards).to_have_count(2)
    newest = cards.first
    assert newest.get_attribute("data-id") != cancelled_id
    expect(newest.locator("[data-testid=prompt]")).to_have_text(
        "A slow pan over a glacier [slow:30]"
    )
    expect(newest).to_have_attribute("data-status", re.compile("pending|processing"))
    # Focus moved to the new card's first control, still visibly.
    assert page.evaluate("document.activeElement.dataset.action") == "cancel"
    newest.locator("[data-testid=cancel]").click()
    expect(newest).to_have_attribute("data-status", "cancelled", timeout=30_000)

    # Delete asks first; dismissing keeps it.
    old = page.locator(f"[data-testid=creation][data-id='{cancelled_id}']")
    page.once("dialog", lambda d: d.dismiss())
    old.locator("[data-testid=delete]").click()
    expect(cards).to_have_count(2)
    messages: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    old.locator("[data-testid=delete]").focus()
    page.keyboard.press("Enter")
    expect(cards).to_have_count(1)
    assert messages and "cannot be undone" in messages[0]
    base, user = _origin_and_user(page)
    gone = requests.get(f"{base}/api/creations/{cancelled_id}", headers={"X-Phoenix-User": user})
    assert gone.status_code == 404


def _origin_and_user(page: Page) -> tuple[str, str]:
    # Checked from outside the page: a 404 inside it would be logged as a console error.
    url = urlsplit(page.url)
    return f"{url.scheme}://{url.netloc}", parse_qs(url.query)["user"][0]


def test_delete_of_a_finished_image_removes_it_and_its_media(page: Page) -> None:
    page.fill("#prompt", "A watercolour fox")
    page.click("label[for=kind-image]")
    page.click("#submit")
    card = page.locator("[data-testid=creation]").first
    expect(card).to_have_attribute("data-status", "completed", timeout=FINISH_TIMEOUT_MS)
    expect(card.locator("[data-testid=cancel]")).to_be_hidden()
    expect(card.locator("[data-testid=retry]")).to_be_hidden()
    src = card.locator("img").first.get_attribute("src")
    assert src and src.startswith("/media/")
    base, user = _origin_and_user(page)
    owner = {"X-Phoenix-User": user}  # local media are served to their owner only
    assert requests.get(base + src, headers=owner, timeout=10).status_code == 200
    page.once("dialog", lambda d: d.accept())
    card.locator("[data-testid=delete]").click()
    expect(page.locator("[data-testid=creation]")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#list-status")).to_have_text("Deleted.")
    gone = requests.get(base + src, headers=owner, timeout=10)
    assert gone.status_code == 404  # the media URL stopped working, for its owner too
    page.reload()  # and it stays gone
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("[data-testid=creation]")).to_have_count(0)
