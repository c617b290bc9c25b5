"""A fake Vertex AI REST server for Imagen (``:predict``) and Veo (``:predictLongRunning`` +
``:fetchPredictOperation``), shaped exactly as google-genai (3.x, Vertex mode) sends and parses.

Why: no Vertex emulator exists and these machines cannot reach Google, yet the job code must be
tested through the real google-genai client — including its error mapping (``ClientError`` with
code 429/400), long-running-operation polling and Cloud Storage output. This server speaks the
same wire format, writes real media (valid PNG/JPEG images; a real 1-second H.264 MP4 made once
with imageio-ffmpeg's ffmpeg) and lets tests script provider behaviour from the prompt text:

* ``[filtered]``  — responsible-AI filter: Imagen returns no image bytes (an entry with
  ``raiFilteredReason`` when ``includeRaiReason`` is set, else no ``predictions`` at all);
  Veo finishes with ``raiMediaFilteredCount: 1`` + ``raiMediaFilteredReasons`` and no videos.
* ``[quota:N]``   — the first N model calls carrying this prompt get HTTP 429
  RESOURCE_EXHAUSTED, later ones succeed.
* ``[invalid]``   — HTTP 400 INVALID_ARGUMENT.
* ``[polls:N]``   — this Veo operation is not done for the first N polls (overrides the server
  default ``polls_before_done``).
* ``[operror]``   — the Veo operation finishes ``done`` with an ``error`` (code 13, INTERNAL).
* ``[drop:N]``    — the first N start calls (``:predict`` / ``:predictLongRunning``) carrying
  this prompt are carried out (images written, the operation started and run to its end, as
  Veo would without anyone polling) and then the connection is closed without an answer: the
  caller cannot know whether its request was accepted ("unknown outcome").

Admin endpoints: ``GET /_fake/calls`` (every model call: method, path, action, model, prompt,
body, status), ``POST /_fake/reset``, ``GET /_fake/health``.

Veo output with ``parameters.storageUri = gs://BUCKET/PREFIX`` is uploaded to the configured
Cloud Storage endpoint (``gcs_endpoint``, else env STORAGE_EMULATOR_HOST) as
``gs://BUCKET/PREFIX/<numeric-id>/sample_<i>.mp4`` — like real Veo, which adds a per-request
folder, so callers must use the returned ``gcsUri`` rather than guess the object name. Without
``storageUri`` the videos come back inline as ``bytesBase64Encoded``.

Use in-process (``with FakeVertexServer() as fake: fake.url``) or as a process:
``python -m tools.standins.fake_vertex --port N [--gcs-endpoint URL]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from tools.servers import BackgroundHttpServer

MODEL_PATH = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<action>predict|predictLongRunning|fetchPredictOperation)$"
)
QUOTA_MARK = re.compile(r"\[quota:(\d+)\]")
DROP_MARK = re.compile(r"\[drop:(\d+)\]")
POLLS_MARK = re.compile(r"\[polls:(\d+)\]")
GENERATE_VIDEO_RESPONSE_TYPE = (
    "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
)
IMAGE_FILTER_REASON = (
    "Your current safety filter threshold filtered out the generated image. "
    "Support codes: 58061214"
)
VIDEO_FILTER_REASON = (
    "Veo could not generate videos because the input prompt violates Google's "
    "Responsible AI practices. Support codes: 58061214"
)
IMAGEN_ASPECT_RATIOS = {
    "1:1",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "5:4",
    "4:5",
    "3:2",
    "2:3",
    "21:9",
    "7:4",
    "4:7",
}
VEO_ASPECT_RATIOS = {"16:9", "9:16"}


class ApiError(Exception):
    """A google-style error response: ``{"error": {"code", "message", "status"}}``."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


# --- media --------------------------------------------------------------------------------------

_video_lock = threading.Lock()
_video_cache: bytes | None = None


def default_video_bytes() -> bytes:
    """A real 1-second 128x72 H.264 MP4 (made once per process with imageio-ffmpeg's ffmpeg)."""
    global _video_cache
    with _video_lock:
        if _video_cache is None:
            import imageio_ffmpeg  # local import: only Veo needs it, keep server start-up fast

            with tempfile.TemporaryDirectory(prefix="fake-vertex-") as tmp:
                out = os.path.join(tmp, "sample.mp4")
                subprocess.run(
                    [
                        imageio_ffmpeg.get_ffmpeg_exe(),
                        "-hide_banner",
                        "-loglevel",
                        "error",
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=size=128x72:rate=8",
                        "-t",
                        "1",
                        "-c:v",
                        "libx264",
                        "-pix_fmt",
                        "yuv420p",
                        "-movflags",
                        "+faststart",
                        "-y",
                        out,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                with open(out, "rb") as fh:
                    _video_cache = fh.read()
        return _video_cache


def _image_size(aspect_ratio: str, longest: int = 128) -> tuple[int, int]:
    w, h = (int(x) for x in aspect_ratio.split(":"))
    if w >= h:
        return longest, max(1, round(longest * h / w))
    return max(1, round(longest * w / h)), longest


def make_image(
    prompt: str, index: int, aspect_ratio: str = "1:1", mime_type: str = "image/png"
) -> bytes:
    """A small valid image whose colour depends on (prompt, index), so samples differ."""
    from PIL import Image  # local import keeps CLI start-up fast

    digest = hashlib.sha256(f"{prompt}\0{index}".encode()).digest()
    img = Image.new("RGB", _image_size(aspect_ratio), tuple(digest[:3]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mime_type == "image/jpeg" else "PNG")
    return buf.getvalue()


# --- Cloud Storage upload (plain JSON API: works against the emulator without extra deps) -----


def parse_gs_uri(uri: str) -> tuple[str, str]:
    m = re.fullmatch(r"gs://([^/]+)/?(.*)", uri)
    if not m:
        raise ApiError(
            400, "INVALID_ARGUMENT", f"storageUri must look like gs://bucket/prefix, got {uri!r}"
        )
    return m.group(1), m.group(2).strip("/")


def upload_to_gcs(endpoint: str, bucket: str, name: str, data: bytes, content_type: str) -> None:
    url = (
        f"{endpoint.rstrip('/')}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        f"?uploadType=media&name={urllib.parse.quote(name, safe='')}"
    )
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": content_type}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        resp.read()


# --- server -------------------------------------------------------------------------------------


class FakeVertexServer:
    """The fake, runnable in a background thread (``start``/``stop`` or ``with``).

    Args:
        polls_before_done: how many ``fetchPredictOperation`` polls report "not done" before a
            Veo operation completes (``[polls:N]`` in a prompt overrides it).
        gcs_endpoint: Cloud Storage (emulator) base URL for ``storageUri`` output; defaults to
            env STORAGE_EMULATOR_HOST at request time.
        video_provider: returns the MP4 bytes to serve (default: a real ffmpeg-made clip).
        require_auth: answer 401 UNAUTHENTICATED to model calls without ``Authorization: Bearer``
            (real Vertex does; google-genai with any OAuth credentials sends one).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        polls_before_done: int = 1,
        gcs_endpoint: str | None = None,
        video_provider: Callable[[], bytes] | None = None,
        require_auth: bool = True,
    ) -> None:
        self.host, self._requested_port = host, port
        self.polls_before_done = polls_before_done
        self.gcs_endpoint = gcs_endpoint
        self.video_provider = video_provider or default_video_bytes
        self.require_auth = require_auth
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._quota_hits: dict[str, int] = {}
        self._drops: dict[str, int] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._httpd: BackgroundHttpServer | None = None

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> "FakeVertexServer":
        if self._httpd is not None:
            return self
        self._httpd = BackgroundHttpServer(
            self.host, self._requested_port, _make_handler(self), "fake-vertex"
        )
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.stop()
        self._httpd = None

    def __enter__(self) -> "FakeVertexServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeVertexServer is not started")
        return self._httpd.port

    @property
    def url(self) -> str:
        """Base URL for ``HttpOptions(base_url=url, api_version="v1")``."""
        return f"http://{self.host}:{self.port}"

    # inspection -----------------------------------------------------------------------------

    def calls(self, action: str | None = None) -> list[dict[str, Any]]:
        """Model calls received so far (deep copies), optionally only one ``action``."""
        with self._lock:
            return [
                copy.deepcopy(c) for c in self._calls if action is None or c["action"] == action
            ]

    def finish_operations(self, prompt_contains: str = "") -> int:
        """Let every unfinished Veo operation whose prompt contains ``prompt_contains`` be done
        at its next poll; returns how many. For tests that must decide WHEN a long operation
        ends (e.g. only after the job polling it was stopped), not guess it from poll timing."""
        with self._lock:
            ops = [
                op
                for op in self._operations.values()
                if op["polls_left"] > 0 and prompt_contains in (op["prompt"] or "")
            ]
            for op in ops:
                op["polls_left"] = 0
            return len(ops)

    def reset(self) -> None:
        """Forget calls, quota counters and operations (tests share one server)."""
        with self._lock:
            self._calls.clear()
            self._quota_hits.clear()
            self._drops.clear()
            self._operations.clear()

    # request handling -----------------------------------------------------------------------

    def handle_model_call(
        self, m: re.Match[str], body: Any, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        action, model = m.group("action"), m.group("model")
        prompt = _prompt_of(body) if action != "fetchPredictOperation" else None
        record: dict[str, Any] = {
            "method": "POST",
            "path": m.group(0),
            "action": action,
            "model": model,
            "prompt": prompt,
            "body": body,
            "authorized": "authorization" in headers,
            "time": time.time(),
        }
        try:
            if self.require_auth and not headers.get("authorization", "").startswith("Bearer "):
                raise ApiError(
                    401,
                    "UNAUTHENTICATED",
                    "Request is missing required authentication credential. Expected OAuth 2 access token.",
                )
            if not isinstance(body, dict):
                raise ApiError(
                    400, "INVALID_ARGUMENT", "Invalid JSON payload received: expected an object."
                )
            if action == "predict":
                status, payload = 200, self._predict(m, body, prompt)
            elif action == "predictLongRunning":
                status, payload = 200, self._predict_long_running(m, body, prompt)
            else:
                status, payload = 200, self._fetch_operation(m, body)
        except ApiError as err:
            status, payload = err.code, err.body()
        record["status"] = status
        if status == 200 and action != "fetchPredictOperation" and self._should_drop(prompt):
            if action == "predictLongRunning":
                self._fetch_until_done(m, payload["name"])
            record["dropped"] = True
            status, payload = 0, {}  # 0: close the connection without an answer
        with self._lock:
            self._calls.append(record)
        return status, payload

    def _should_drop(self, prompt: str | None) -> bool:
        d = DROP_MARK.search(prompt or "")
        if not d:
            return False
        with self._lock:
            used = self._drops.get(prompt or "", 0)
            if used >= int(d.group(1)):
                return False
            self._drops[prompt or ""] = used + 1
            return True

    def _fetch_until_done(self, m: re.Match[str], name: str) -> None:
        """Run an orphaned operation to its end, as Veo does whether or not anyone polls."""
        with self._lock:
            self._operations[name]["polls_left"] = 0
        self._fetch_operation(m, {"operationName": name})

    def _scenario_checks(self, prompt: str | None) -> None:
        """Apply [invalid] / [quota:N] before any work, like the real frontend would."""
        text = prompt or ""
        if "[invalid]" in text:
            raise ApiError(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        q = QUOTA_MARK.search(text)
        if q:
            with self._lock:
                used = self._quota_hits.get(text, 0)
                if used < int(q.group(1)):
                    self._quota_hits[text] = used + 1
                    raise ApiError(
                        429,
                        "RESOURCE_EXHAUSTED",
                        "Resource exhausted. Please try again later. Please refer to "
                        "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                    )

    def _instances_and_params(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        instances, params = body.get("instances"), body.get("parameters", {})
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise ApiError(
                400, "INVALID_ARGUMENT", "instances must be a non-empty list of objects."
            )
        if not isinstance(params, dict):
            raise ApiError(400, "INVALID_ARGUMENT", "parameters must be an object.")
        return instances[0], params

    def _predict(
        self, m: re.Match[str], body: dict[str, Any], prompt: str | None
    ) -> dict[str, Any]:
        instance, params = self._instances_and_params(body)
        if not isinstance(instance.get("prompt"), str) or not instance["prompt"].strip():
            raise ApiError(400, "INVALID_ARGUMENT", "instances[0].prompt is required.")
        self._scenario_checks(prompt)
        count = params.get("sampleCount", 4)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
            raise ApiError(
                400, "INVALID_ARGUMENT", f"sampleCount must be between 1 and 4, got {count!r}."
            )
        aspect = params.get("aspectRatio", "1:1")
        if aspect not in IMAGEN_ASPECT_RATIOS:
            raise ApiError(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio {aspect!r}.")
        mime = (params.get("outputOptions") or {}).get("mimeType", "image/png")
        if mime not in ("image/png", "image/jpeg"):
            raise ApiError(400, "INVALID_ARGUMENT", f"Unsupported output mime type {mime!r}.")
        assert prompt is not None
        if "[filtered]" in prompt:
            if params.get("includeRaiReason"):
                return {"predictions": [{"raiFilteredReason": IMAGE_FILTER_REASON}]}
            return {}
        storage_uri = params.get("storageUri")
        predictions: list[dict[str, Any]] = []
        folder = str(time.time_ns())
        for i in range(count):
            data = make_image(prompt, i, aspect, mime)
            if storage_uri:
                bucket, prefix = parse_gs_uri(storage_uri)
                ext = "jpg" if mime == "image/jpeg" else "png"
                name = "/".join(p for p in (prefix, folder, f"sample_{i}.{ext}") if p)
                self._upload(bucket, name, data, mime)
                predictions.append({"mimeType": mime, "gcsUri": f"gs://{bucket}/{name}"})
            else:
                predictions.append(
                    {"mimeType": mime, "bytesBase64Encoded": base64.b64encode(data).decode()}
                )
        return {"predictions": predictions}

    def _predict_long_running(
        self, m: re.Match[str], body: dict[str, Any], prompt: str | None
    ) -> dict[str, Any]:
        instance, params = self._instances_and_params(body)
        if (
            not (isinstance(instance.get("prompt"), str) and instance["prompt"].strip())
            and "image" not in instance
        ):
            raise ApiError(400, "INVALID_ARGUMENT", "instances[0] needs a prompt or an image.")
        self._scenario_checks(prompt)
        count = params.get("sampleCount", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
            raise ApiError(
                400, "INVALID_ARGUMENT", f"sampleCount must be between 1 and 4, got {count!r}."
            )
        aspect = params.get("aspectRatio", "16:9")
        if aspect not in VEO_ASPECT_RATIOS:
            raise ApiError(
                400, "INVALID_ARGUMENT", f"Unsupported aspect ratio {aspect!r}; use 16:9 or 9:16."
            )
        duration = params.get("durationSeconds", 8)
        if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 8:
            raise ApiError(
                400,
                "INVALID_ARGUMENT",
                f"durationSeconds must be between 1 and 8, got {duration!r}.",
            )
        if params.get("storageUri"):
            parse_gs_uri(params["storageUri"])  # validate now, like the real API
        polls = POLLS_MARK.search(prompt or "")
        name = (
            f"projects/{m.group('project')}/locations/{m.group('location')}/publishers/google/models/"
            f"{m.group('model')}/operations/{uuid.uuid4()}"
        )
        with self._lock:
            self._operations[name] = {
                "prompt": prompt or "",
                "params": params,
                "polls_left": int(polls.group(1)) if polls else self.polls_before_done,
                "result": None,
            }
        return {"name": name}

    def _fetch_operation(self, m: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("operationName")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "INVALID_ARGUMENT", "operationName is required.")
        resource = m.group(0).split(":", 1)[0].split("/", 2)[2]  # projects/.../models/MODEL
        if not name.startswith(resource + "/operations/"):
            raise ApiError(
                400, "INVALID_ARGUMENT", f"operationName {name!r} does not belong to {resource!r}."
            )
        with self._lock:
            op = self._operations.get(name)
            if op is None:
                raise ApiError(404, "NOT_FOUND", f"Operation {name!r} not found.")
            if op["polls_left"] > 0:
                op["polls_left"] -= 1
                return {"name": name}
            if op["result"] is None:
                op["result"] = self._finish(name, op)  # once: later polls see the same result
            return copy.deepcopy(op["result"])

    def _finish(self, name: str, op: dict[str, Any]) -> dict[str, Any]:
        prompt, params = op["prompt"], op["params"]
        if "[operror]" in prompt:
            return {
                "name": name,
                "done": True,
                "error": {"code": 13, "message": "Internal error encountered."},
            }
        response: dict[str, Any] = {"@type": GENERATE_VIDEO_RESPONSE_TYPE}
        if "[filtered]" in prompt:
            response.update(raiMediaFilteredCount=1, raiMediaFilteredReasons=[VIDEO_FILTER_REASON])
            return {"name": name, "done": True, "response": response}
        data = self.video_provider()
        videos: list[dict[str, Any]] = []
        storage_uri = params.get("storageUri")
        folder = str(time.time_ns())
        for i in range(params.get("sampleCount", 1)):
            if storage_uri:
                bucket, prefix = parse_gs_uri(storage_uri)
                obj = "/".join(p for p in (prefix, folder, f"sample_{i}.mp4") if p)
                try:
                    self._upload(bucket, obj, data, "video/mp4")
                except ApiError as err:
                    return {
                        "name": name,
                        "done": True,
                        "error": {"code": _grpc_code(err.code), "message": err.message},
                    }
                videos.append({"gcsUri": f"gs://{bucket}/{obj}", "mimeType": "video/mp4"})
            else:
                videos.append(
                    {"bytesBase64Encoded": base64.b64encode(data).decode(), "mimeType": "video/mp4"}
                )
        response.update(raiMediaFilteredCount=0, videos=videos)
        return {"name": name, "done": True, "response": response}

    def _upload(self, bucket: str, name: str, data: bytes, content_type: str) -> None:
        endpoint = self.gcs_endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        if not endpoint:
            raise ApiError(
                500,
                "INTERNAL",
                "fake_vertex: storageUri was given but no Cloud Storage endpoint is configured "
                "(pass gcs_endpoint / --gcs-endpoint or set STORAGE_EMULATOR_HOST).",
            )
        if "://" not in endpoint:
            endpoint = "http://" + endpoint
        try:
            upload_to_gcs(endpoint, bucket, name, data, content_type)
        except urllib.error.HTTPError as exc:
            status = "NOT_FOUND" if exc.code == 404 else "FAILED_PRECONDITION"
            raise ApiError(
                400 if exc.code != 404 else 404,
                status,
                f"Could not write gs://{bucket}/{name}: storage answered HTTP {exc.code}.",
            ) from None
        except OSError as exc:
            raise ApiError(
                500, "INTERNAL", f"Could not reach storage at {endpoint}: {exc}"
            ) from None


def _grpc_code(http_code: int) -> int:
    return {400: 9, 404: 5, 429: 8, 500: 13}.get(http_code, 2)


def _prompt_of(body: Any) -> str | None:
    try:
        prompt = body["instances"][0].get("prompt")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return prompt if isinstance(prompt, str) else None


def _make_handler(server: FakeVertexServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
        # Headers and body go out in separate writes: without TCP_NODELAY a kept-alive answer
        # waits ~40 ms for the client's delayed ACK (Nagle), on every Vertex call and Veo poll.
        disable_nagle_algorithm = True
        timeout = 30  # idle keep-alive connections must not pin threads forever
        server_version = "FakeVertex/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            if os.environ.get("FAKE_VERTEX_VERBOSE"):
                super().log_message(format, *args)

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode("utf-8", "replace")

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            path = urllib.parse.urlsplit(self.path).path
            if path == "/_fake/calls":
                self._send(200, server.calls())
            elif path == "/_fake/health":
                self._send(200, {"ok": True})
            else:
                self._send(404, ApiError(404, "NOT_FOUND", f"No route for GET {path}").body())

        def do_POST(self) -> None:  # noqa: N802
            path = urllib.parse.urlsplit(self.path).path
            body = self._read_body()
            if path == "/_fake/reset":
                server.reset()
                self._send(200, {"ok": True})
                return
            m = MODEL_PATH.match(path)
            if not m:
                self._send(404, ApiError(404, "NOT_FOUND", f"No route for POST {path}").body())
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, payload = server.handle_model_call(m, body, headers)
            except Exception as exc:  # a bug in the fake must surface as a clear 500, not a hang
                status, payload = (
                    500,
                    ApiError(500, "INTERNAL", f"fake_vertex crashed: {exc!r}").body(),
                )
            if status == 0:  # [drop:N]: the work is done, the answer is lost
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(status, payload)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed on stdout)")
    parser.add_argument(
        "--gcs-endpoint", default=None, help="Cloud Storage (emulator) URL for storageUri output"
    )
    parser.add_argument("--polls-before-done", type=int, default=1)
    parser.add_argument(
        "--no-auth", action="store_true", help="accept model calls without a Bearer token"
    )
    args = parser.parse_args(argv)
    server = FakeVertexServer(
        args.host,
        args.port,
        polls_before_done=args.polls_before_done,
        gcs_endpoint=args.gcs_endpoint,
        require_auth=not args.no_auth,
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY {server.url}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
