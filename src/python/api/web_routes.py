"""The page (``/`` and ``/static/...``) and, in local mode, the media files (``/media/<key>``).

The page is static HTML + a small script that talks to the JSON API, so the API needs no
templates and the page works the same against a local server or Cloud Run. Media is served
here only when the media store is the local directory; in production the API hands out GCS
URLs and never proxies bytes.

A media file is served only to the owner of the creation it belongs to: anyone else (and any
key that is not one of the creation's media) gets exactly the 404 of a foreign creation, so
neither creations nor files can be probed. In local mode the browser's ``<img>``/``<video>``
requests carry no ``X-Phoenix-User`` header, so the page also sets the ``phoenix_user`` cookie
(``api.identity``).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_file, send_from_directory

from api.creation_service import CreationService
from api.identity import current_user
from common.domain.errors import NotFound
from common.ports import MediaStore

STATIC_DIR = Path(__file__).parent / "static"

# The page only talks to its own origin; media may come from GCS (https:) in production.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: https:; media-src 'self' https:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

# Media keys are "<creation id>/<n>.<ext>" and written once (write-then-rename) before the
# creation completes, so a browser may keep them; "private": they are a user's content.
MEDIA_MAX_AGE_SECONDS = 3600


def web_blueprint(media: MediaStore, creations: CreationService) -> Blueprint:
    bp = Blueprint("web", __name__, static_folder=str(STATIC_DIR), static_url_path="/static")

    @bp.get("/")
    def index() -> Response:
        response = send_from_directory(STATIC_DIR, "index.html", max_age=0)
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    file_path = getattr(media, "file_path", None)
    if callable(file_path):  # LocalMediaStore: files on this machine

        @bp.get("/media/<path:key>")
        def media_file(key: str) -> Response:
            creation_id, _, _ = key.partition("/")
            # Raises NotFound (the API's one 404) for a missing or foreign creation.
            creation = creations.get(current_user(), creation_id)
            if key not in {m.key for m in creation.media}:
                raise NotFound(creation_id)
            try:
                path = file_path(key)
            except KeyError:
                raise NotFound(creation_id) from None
            # conditional=True: ETag/Last-Modified and Range requests (the video player seeks
            # with byte ranges; Safari refuses to play MP4 without them).
            response = send_file(path, conditional=True, max_age=MEDIA_MAX_AGE_SECONDS)
            response.headers["Cache-Control"] = f"private, max-age={MEDIA_MAX_AGE_SECONDS}"
            return response

    return bp
