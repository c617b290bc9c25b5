"""A generator that renders real media locally: PNGs with Pillow, H.264 MP4s through ffmpeg.

It exists so the whole flow (API -> dispatch -> job -> media store -> browser) runs on a laptop
and in CI with no cloud account and no cost, and still yields files a browser really decodes:
a fake that returned placeholder bytes would hide broken ``<video>``/``<img>`` handling, wrong
MIME types or byte-range serving until production. (Longer than our ~350-line norm: PNG and
MP4 rendering share the prompt-derived palette, text drawing and fault markers below; one
module keeps that determinism in one place.)

Output is a pure function of (kind, prompt, params): colours, shapes and motion come from a
SHA-256 of the prompt (and the image index), and the prompt text is drawn on the media, so
different prompts look different at a glance and a repeated request gives byte-identical PNGs
(no timestamps or other metadata are written). Videos are 12 fps, exactly
``duration_seconds * 12`` frames, yuv420p H.264 with ``+faststart`` (moov atom first) so a
browser starts playing while the file is still downloading. Text is drawn with DejaVu Sans when
the machine has it (wide script coverage) and otherwise with Pillow's built-in font, so bytes
are reproducible per machine, not necessarily across machines.

Fault hooks, for tests and demos. Markers inside the prompt, interpreted only by this generator
(the Vertex generator sends them to the provider as ordinary text) and removed from the text
drawn on the media:

``[slow:SECONDS]``
    Sleep SECONDS (a float, capped at 600) before rendering, calling ``ctx.report_progress``
    about every 0.5 s with a small creeping value (0..9) so the job's lease keeps being renewed.
    Use it to watch a ``processing`` creation, or to kill a job mid-flight and see the lease
    expire and another execution take over.
``[fail:CODE]``
    Raise ``GenerationError(CODE, ..., retryable=False)``: the creation fails for good with
    ``error.code == CODE`` (like a provider's content filter).
``[retry-fail:CODE]``
    Raise ``GenerationError(CODE, ..., retryable=True)``: the job hands the creation back for
    another attempt; every attempt fails the same way, so it ends ``failed`` once the job's
    ``max_attempts`` is used up (like a provider outage that never recovers).

CODE is 1-64 characters of ``[A-Za-z0-9_.-]``. When both a slow marker and a failure marker
are present, the sleep happens first, so "processing for a while, then failed" can be shown.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps

from common.domain.errors import GenerationError
from common.domain.requests import (
    IMAGE_ASPECT_RATIOS,
    IMAGE_COUNT_RANGE,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
)
from common.ports import GeneratedMedia, GenerationContext, Generator

IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (768, 768),
    "16:9": (768, 432),
    "9:16": (432, 768),
    "4:3": (768, 576),
    "3:4": (576, 768),
}
# Both sides are multiples of 8, so ffmpeg never rescales to fit macroblocks.
VIDEO_SIZES: dict[str, tuple[int, int]] = {"16:9": (640, 360), "9:16": (360, 640)}
VIDEO_FPS = 12
MAX_SLOW_SECONDS = 600.0
SLOW_TICK_SECONDS = 0.5

# x264 settings: "veryfast" keeps an 8 s clip well under a second of encoding on one core while
# the frames are mostly flat colour, so quality is not the constraint. A keyframe every second
# keeps seeking in the browser snappy.
X264_OUTPUT_PARAMS = [
    "-preset",
    "veryfast",
    "-crf",
    "23",
    "-g",
    str(VIDEO_FPS),
    "-movflags",
    "+faststart",
]

_FAIL_RE = re.compile(r"\[(fail|retry-fail):([A-Za-z0-9_.\-]{1,64})\]")
_SLOW_RE = re.compile(r"\[slow:(\d+(?:\.\d*)?|\.\d+)\]")
_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)


@dataclass(frozen=True)
class FaultHooks:
    """The markers found in a prompt, and the prompt with them removed (what gets drawn)."""

    text: str
    slow_seconds: float = 0.0
    fail_code: str | None = None
    fail_retryable: bool = False


def parse_fault_hooks(prompt: str) -> FaultHooks:
    slow = 0.0
    m = _SLOW_RE.search(prompt)
    if m:
        slow = min(MAX_SLOW_SECONDS, float(m.group(1)))
    fail = _FAIL_RE.search(prompt)
    text = " ".join(_FAIL_RE.sub(" ", _SLOW_RE.sub(" ", prompt)).split())
    return FaultHooks(
        text=text or prompt,
        slow_seconds=slow,
        fail_code=fail.group(2) if fail else None,
        fail_retryable=bool(fail and fail.group(1) == "retry-fail"),
    )


class LocalGenerator(Generator):
    """``sleep`` and ``clock`` are injectable so tests can check the slow hook's lease renewal
    without waiting minutes."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sleep = sleep
        self._clock = clock

    # One method per kind (the registry's ``generator`` entry); ``Generator.generate`` picks
    # it and refuses a kind this class has no method for. Parameters are checked before the
    # fault hooks sleep: a bad request fails at once.

    def generate_image(
        self, prompt: str, params: dict, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        size, count = _image_params(params)
        text = self._hooks(prompt, ctx)
        return _render_images(text, size, count, ctx)

    def generate_video(
        self, prompt: str, params: dict, ctx: GenerationContext
    ) -> list[GeneratedMedia]:
        size, duration = _video_params(params)
        text = self._hooks(prompt, ctx)
        return [_render_video(text, size, duration, ctx)]

    def _hooks(self, prompt: str, ctx: GenerationContext) -> str:
        """Apply the prompt's fault markers (sleep, fail); the text left to draw."""
        hooks = parse_fault_hooks(prompt)
        if hooks.slow_seconds > 0:
            self._wait(hooks.slow_seconds, ctx)
        if hooks.fail_code is not None:
            marker = "retry-fail" if hooks.fail_retryable else "fail"
            raise GenerationError(
                hooks.fail_code,
                f"local generator: failure requested by the prompt ([{marker}:{hooks.fail_code}])",
                retryable=hooks.fail_retryable,
            )
        return hooks.text

    def _wait(self, seconds: float, ctx: GenerationContext) -> None:
        start = self._clock()
        deadline = start + seconds
        while True:
            now = self._clock()
            if now >= deadline:
                break
            ctx.report_progress(min(9, int(10 * (now - start) / seconds)))
            self._sleep(min(SLOW_TICK_SECONDS, deadline - now))


# --- parameters ---------------------------------------------------------------------------


def _invalid(message: str) -> GenerationError:
    return GenerationError("invalid_argument", message, retryable=False)


def _image_params(params: dict) -> tuple[tuple[int, int], int]:
    ratio = params.get("aspect_ratio", "1:1")
    count = params.get("count", 1)
    if ratio not in IMAGE_ASPECT_RATIOS:
        raise _invalid(f"unsupported image aspect_ratio {ratio!r}")
    lo, hi = IMAGE_COUNT_RANGE
    if not isinstance(count, int) or isinstance(count, bool) or not lo <= count <= hi:
        raise _invalid(f"image count must be {lo}..{hi}, got {count!r}")
    return IMAGE_SIZES[ratio], count


def _video_params(params: dict) -> tuple[tuple[int, int], int]:
    ratio = params.get("aspect_ratio", "16:9")
    duration = params.get("duration_seconds", 8)
    if ratio not in VIDEO_ASPECT_RATIOS:
        raise _invalid(f"unsupported video aspect_ratio {ratio!r}")
    if duration not in VIDEO_DURATIONS or isinstance(duration, bool):
        raise _invalid(f"unsupported duration_seconds {duration!r}")
    return VIDEO_SIZES[ratio], int(duration)


# --- shared drawing -----------------------------------------------------------------------


def _rng(*parts: Any) -> random.Random:
    """A PRNG seeded from SHA-256 of the parts: ``random.Random(int)`` is stable across Python
    versions and platforms, unlike ``hash()``."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclass(frozen=True)
class _Palette:
    dark: tuple[int, int, int]
    mid: tuple[int, int, int]
    light: tuple[int, int, int]
    accents: tuple[tuple[int, int, int], ...]
    angle: float


def _palette(rng: random.Random) -> _Palette:
    hue = rng.random()
    # Spread hues across the wheel so two prompts rarely share a dominant colour.
    mid_shift = rng.uniform(0.06, 0.2) * rng.choice((-1, 1))
    return _Palette(
        dark=_hsv(hue, rng.uniform(0.6, 0.9), rng.uniform(0.18, 0.35)),
        mid=_hsv(hue + mid_shift, rng.uniform(0.55, 0.85), rng.uniform(0.5, 0.7)),
        light=_hsv(hue + 2 * mid_shift, rng.uniform(0.35, 0.65), rng.uniform(0.8, 0.97)),
        accents=tuple(
            _hsv(
                hue + offset + rng.uniform(-0.05, 0.05),
                rng.uniform(0.5, 1.0),
                rng.uniform(0.7, 1.0),
            )
            for offset in (0.33, 0.5, 0.66, 0.9)
        ),
        angle=rng.uniform(0, 360),
    )


def _gradient(size: tuple[int, int], pal: _Palette) -> Image.Image:
    """A three-stop linear gradient at the palette's angle. A square of side >= the target's
    diagonal, rotated about its centre, still covers a centred crop of the target, so no
    empty corners appear."""
    w, h = size
    side = math.ceil(math.hypot(w, h)) + 2
    ramp = Image.linear_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    ramp = ramp.rotate(pal.angle, resample=Image.Resampling.BILINEAR)
    left, top = (side - w) // 2, (side - h) // 2
    ramp = ramp.crop((left, top, left + w, top + h))
    return ImageOps.colorize(ramp, black=pal.dark, white=pal.light, mid=pal.mid).convert("RGB")


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONT_CANDIDATES:
        if os.path.exists(path):
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, max_lines: int
) -> list[str]:
    """Greedy word wrap by rendered width; overlong words are split, and text beyond
    ``max_lines`` is cut with an ellipsis (prompts may be 2000 characters)."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    lines: list[str] = []
    current = ""
    for word in text.split():
        while word:
            candidate = f"{current} {word}" if current else word
            if measure(candidate, font=font) <= width:
                current, word = candidate, ""
                continue
            if current:
                lines.append(current)
                current = ""
            else:  # a single word wider than the line: split at the longest prefix that fits
                lo, hi = 1, len(word) - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if measure(word[:mid], font=font) <= width:
                        lo = mid
                    else:
                        hi = mid - 1
                cut = lo
                lines.append(word[:cut])
                word = word[cut:]
            if len(lines) > max_lines:
                break
        if len(lines) > max_lines:
            break
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and measure(last + " …", font=font) > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + " …"]
    return lines


def _text_panel(
    size: tuple[int, int], text: str, *, font_size: int, max_lines: int, anchor_y: float
) -> Image.Image:
    """The prompt on a translucent dark panel (legible on any palette), as an RGBA layer."""
    w, h = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(font_size)
    margin = max(12, w // 24)
    pad = max(8, font_size // 2)
    lines = _wrap(text, font, w - 2 * margin - 2 * pad, max_lines)
    line_h = int(font_size * 1.3)
    panel_h = line_h * len(lines) + 2 * pad
    top = int(min(h - margin - panel_h, max(margin, anchor_y * h - panel_h / 2)))
    draw.rounded_rectangle(
        (margin, top, w - margin, top + panel_h), radius=pad, fill=(10, 10, 16, 150)
    )
    for i, line in enumerate(lines):
        draw.text(
            (margin + pad, top + pad + i * line_h), line, font=font, fill=(255, 255, 255, 240)
        )
    return layer


# --- images -------------------------------------------------------------------------------


def _render_images(
    text: str, size: tuple[int, int], count: int, ctx: GenerationContext
) -> list[GeneratedMedia]:
    out = []
    ctx.report_progress(10)
    for index in range(count):
        out.append(GeneratedMedia(mime_type="image/png", data=render_image(text, size, index)))
        ctx.report_progress(10 + (90 * (index + 1)) // count)
    return out


def render_image(text: str, size: tuple[int, int], index: int = 0) -> bytes:
    """One PNG; public so tools and tests can render without a context."""
    w, h = size
    rng = _rng("image", index, text)
    pal = _palette(rng)
    img = _gradient(size, pal).convert("RGBA")

    shapes = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    unit = min(w, h)
    for _ in range(rng.randint(7, 13)):
        colour = rng.choice(pal.accents) + (rng.randint(70, 170),)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.28) * unit
        shape = rng.choice(("ellipse", "rect", "polygon", "ring"))
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "ellipse":
            draw.ellipse(box, fill=colour)
        elif shape == "ring":
            draw.ellipse(box, outline=colour, width=max(3, int(r / 5)))
        elif shape == "rect":
            draw.rounded_rectangle(box, radius=r / 4, fill=colour)
        else:
            draw.regular_polygon(
                (cx, cy, r), n_sides=rng.randint(3, 7), rotation=rng.uniform(0, 360), fill=colour
            )
    img.alpha_composite(shapes)

    # Scale by area, not width, so portrait images do not get a tiny font.
    font_size = max(14, round(math.sqrt(w * h) / 26))
    img.alpha_composite(
        _text_panel(size, text, font_size=font_size, max_lines=7, anchor_y=rng.uniform(0.45, 0.7))
    )
    label = ImageDraw.Draw(img)
    small = _font(max(11, round(math.sqrt(w * h) / 48)))
    label.text(
        (12, 10), f"local generator · image {index + 1}", font=small, fill=(255, 255, 255, 200)
    )

    buf = BytesIO()
    # No pnginfo, no tIME chunk: the bytes depend only on the pixels.
    img.convert("RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --- video --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Orb:
    colour: tuple[int, int, int, int]
    radius: float
    ax: float
    ay: float
    fx: int
    fy: int
    phase_x: float
    phase_y: float
    pulse: int


def _render_video(
    text: str, size: tuple[int, int], duration: int, ctx: GenerationContext
) -> GeneratedMedia:
    import imageio_ffmpeg

    w, h = size
    total = duration * VIDEO_FPS
    rng = _rng("video", text)
    pal = _palette(rng)
    # A background twice as wide as the frame, panned across once over the clip: motion for
    # the cost of a crop per frame instead of a gradient per frame.
    backdrop = _gradient((2 * w, h), pal)
    unit = min(w, h)
    orbs = [
        _Orb(
            colour=rng.choice(pal.accents) + (rng.randint(110, 190),),
            radius=rng.uniform(0.06, 0.16) * unit,
            ax=rng.uniform(0.15, 0.42),
            ay=rng.uniform(0.15, 0.42),
            # Integer cycles per clip: the loop in a <video loop> element is seamless.
            fx=rng.randint(1, 3),
            fy=rng.randint(1, 3),
            phase_x=rng.uniform(0, 2 * math.pi),
            phase_y=rng.uniform(0, 2 * math.pi),
            pulse=rng.randint(1, 4),
        )
        for _ in range(rng.randint(5, 8))
    ]
    font_size = max(14, round(math.sqrt(w * h) / 20))
    panel = _text_panel(size, text, font_size=font_size, max_lines=5, anchor_y=0.5)
    small_px = max(11, round(math.sqrt(w * h) / 34))
    bar_h = max(4, h // 90)

    ctx.report_progress(10)
    next_report = 1
    with tempfile.TemporaryDirectory(prefix="phoenix-video-") as tmp:
        path = os.path.join(tmp, "out.mp4")
        writer = imageio_ffmpeg.write_frames(
            path,
            (w, h),
            fps=VIDEO_FPS,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=8,
            ffmpeg_log_level="error",
            output_params=list(X264_OUTPUT_PARAMS),
        )
        writer.send(None)
        try:
            for i in range(total):
                frame = _video_frame(i, total, backdrop, orbs, panel, small_px, bar_h, duration)
                writer.send(frame)
                if (i + 1) * 10 >= next_report * total:  # every ~10% of frames
                    ctx.report_progress(10 + (80 * (i + 1)) // total)
                    next_report += 1
        except OSError as exc:  # ffmpeg died: surfaces as a broken pipe on write
            raise GenerationError(
                "render_failed", f"ffmpeg stopped accepting frames: {exc}", retryable=True
            ) from exc
        finally:
            writer.close()  # waits for ffmpeg to finish the file (and the faststart rewrite)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
    if len(data) < 1024:
        raise GenerationError("render_failed", "ffmpeg produced no usable output", retryable=True)
    ctx.report_progress(95)
    return GeneratedMedia(mime_type="video/mp4", data=data)


def _video_frame(
    i: int,
    total: int,
    backdrop: Image.Image,
    orbs: list[_Orb],
    panel: Image.Image,
    small_px: int,
    bar_h: int,
    duration: int,
) -> bytes:
    w, h = panel.size
    t = i / total  # 0..1 over the clip
    x0 = round(t * w)
    frame = backdrop.crop((x0, 0, x0 + w, h)).convert("RGBA")

    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    tau = 2 * math.pi * t
    for orb in orbs:
        cx = w * (0.5 + orb.ax * math.sin(orb.fx * tau + orb.phase_x))
        cy = h * (0.5 + orb.ay * math.sin(orb.fy * tau + orb.phase_y))
        r = orb.radius * (1 + 0.25 * math.sin(orb.pulse * tau + orb.phase_x))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=orb.colour)
    frame.alpha_composite(layer)
    frame.alpha_composite(panel)

    draw = ImageDraw.Draw(frame)
    done = (i + 1) / total
    draw.rectangle((0, h - bar_h, w, h), fill=(0, 0, 0, 255))
    draw.rectangle((0, h - bar_h, round(w * done), h), fill=(255, 255, 255, 255))
    seconds = i / VIDEO_FPS
    draw.text(
        (10, h - bar_h - small_px - 10),
        f"{seconds:05.2f}s / {duration}s   frame {i + 1}/{total}",
        font=_font(small_px),
        fill=(255, 255, 255, 230),
    )
    return frame.convert("RGB").tobytes()
