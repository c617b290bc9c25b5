"""Checks that media bytes are what a browser can actually decode, not just the right MIME type.

There is no ffprobe in the dev environment, so videos are probed with the ffmpeg binary that
imageio-ffmpeg ships: ``ffmpeg -i`` prints the container and stream description, and decoding the
whole stream into the null muxer both counts the frames and proves every frame decodes. The MP4
box layout is read directly to check ``+faststart`` (the ``moov`` atom before ``mdat``), which
decides whether a browser can start playback before the download finishes.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FFMPEG_TIMEOUT_S = 120

_INPUT_RE = re.compile(r"Input #0, (?P<formats>[\w,]+), from")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO_STREAM_RE = re.compile(
    r"Stream #\d+:\d+\S*: Video: (?P<codec>\w+)(?P<rest>.*)", re.MULTILINE
)
_SIZE_RE = re.compile(r", (?P<w>\d{1,5})x(?P<h>\d{1,5})[ ,\[]")
_PIXFMT_RE = re.compile(r"\), (?P<pix>[a-z0-9_]+)[(,]|^[^,]*, (?P<pix2>[a-z0-9_]+)[(,]")
_FPS_RE = re.compile(r", (?P<fps>\d+(?:\.\d+)?) fps")
_PROFILE_RE = re.compile(r"^ \((?P<profile>[^)]+)\)")


def probe_png(data: bytes) -> dict[str, Any]:
    """Width, height and mode of a PNG, after verifying chunk CRCs and decoding every pixel."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray)) or not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    try:
        with Image.open(BytesIO(data)) as img:
            if img.format != "PNG":
                raise ValueError(f"not a PNG (Pillow reads it as {img.format})")
            img.verify()
        with Image.open(BytesIO(data)) as img:
            img.load()
            return {"width": img.width, "height": img.height, "mode": img.mode}
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises several types for corrupt files
        raise ValueError(f"invalid PNG: {type(exc).__name__}: {exc}") from exc


def probe_mp4(data_or_path: bytes | str | os.PathLike[str]) -> dict[str, Any]:
    """The first video stream's codec, size, fps, container duration and decoded frame count.

    Raises ValueError when ffmpeg cannot open or fully decode it, or it has no video stream.
    Extra keys: ``fps``, ``pix_fmt``, ``profile``, ``decoded_seconds`` (from decoding) and
    ``moov_before_mdat`` (faststart).
    """
    if isinstance(data_or_path, (bytes, bytearray)):
        if not data_or_path:
            raise ValueError("empty data")
        with tempfile.TemporaryDirectory(prefix="media-probe-") as tmp:
            path = Path(tmp) / "probe.mp4"
            path.write_bytes(bytes(data_or_path))
            return _probe_file(path)
    path = Path(data_or_path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return _probe_file(path)


def _probe_file(path: Path) -> dict[str, Any]:
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "info",
        # Fail on any decoding error instead of concealing it: a half-broken file must not pass.
        "-xerror",
        "-err_detect",
        "explode",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-f",
        "null",
        "-progress",
        "pipe:1",
        "-nostats",
        "-",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ValueError(f"ffmpeg timed out probing {path}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ValueError(f"ffmpeg could not decode the video (exit {proc.returncode}): {tail}")

    # Only the input section describes the file; the output section describes the null muxer.
    input_info = proc.stderr.split("Output #0", 1)[0]
    container = _INPUT_RE.search(input_info)
    if not container or "mp4" not in container.group("formats").split(","):
        found = container.group("formats") if container else "unknown"
        raise ValueError(f"not an MP4 container (ffmpeg reads it as {found})")
    stream = _VIDEO_STREAM_RE.search(input_info)
    if not stream:
        raise ValueError("no video stream")
    rest = stream.group("rest")
    size = _SIZE_RE.search(rest)
    if not size:
        raise ValueError(f"cannot read the frame size from: {stream.group(0)}")
    pix = _PIXFMT_RE.search(rest)
    fps = _FPS_RE.search(rest)
    profile = _PROFILE_RE.search(rest)
    duration = _DURATION_RE.search(input_info)

    progress = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line
    )  # the last block wins: it is the final tally
    frames = int(progress.get("frame", "0"))
    if frames <= 0:
        raise ValueError("the video stream has no decodable frames")
    out_us = progress.get("out_time_us", "")
    decoded = int(out_us) / 1e6 if out_us.lstrip("-").isdigit() else None

    return {
        "width": int(size.group("w")),
        "height": int(size.group("h")),
        "codec": stream.group("codec"),
        "profile": profile.group("profile") if profile else None,
        "pix_fmt": (pix.group("pix") or pix.group("pix2")) if pix else None,
        "fps": float(fps.group("fps")) if fps else None,
        "duration_seconds": (
            int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
        )
        if duration
        else decoded,
        "decoded_seconds": decoded,
        "frames": frames,
        "moov_before_mdat": _moov_before_mdat(path),
    }


def _moov_before_mdat(path: Path) -> bool | None:
    """Walk the top-level MP4 boxes; None if neither box is found (not an ISO-BMFF file)."""
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset + 8 <= total:
            fh.seek(offset)
            header = fh.read(16)
            size = int.from_bytes(header[:4], "big")
            box = header[4:8]
            if size == 1 and len(header) >= 16:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = total - offset
            if box == b"moov":
                return True
            if box == b"mdat":
                return False
            if size < 8:
                return None
            offset += size
    return None
