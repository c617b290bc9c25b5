"""The local generator produces media a browser can decode, deterministically, with the fault
hooks the job and end-to-end tests rely on. Media is checked by decoding it (Pillow, ffmpeg),
not by looking at MIME types."""

from __future__ import annotations

import math
import time
from io import BytesIO
from typing import cast

import pytest
from PIL import Image, ImageChops, ImageStat

from common.adapters.local_generator import (
    MAX_SLOW_SECONDS,
    VIDEO_FPS,
    LocalGenerator,
    parse_fault_hooks,
)
from common.domain.creation import Kind
from common.domain.errors import GenerationError
from common.ports import GenerationContext
from tests.support.media_probe import probe_mp4, probe_png


class FakeCtx:
    """Records what the generator reported; nothing else."""

    def __init__(self) -> None:
        self.creation_id = "c-test"
        self.existing_operation: str | None = None
        self.output_prefix: str | None = None
        self.progress: list[int] = []
        self.operations: list[str] = []
        self.heartbeats = 0

    def report_progress(self, percent: int) -> None:
        self.progress.append(percent)

    def record_operation(self, operation: str) -> None:
        self.operations.append(operation)

    def heartbeat(self) -> None:
        self.heartbeats += 1


class FakeTime:
    """A clock that only moves when the generator sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def gen() -> LocalGenerator:
    return LocalGenerator()


def image(gen: LocalGenerator, prompt: str, ratio: str = "1:1", count: int = 1, ctx=None):
    return gen.generate(
        Kind.IMAGE,
        prompt,
        {"aspect_ratio": ratio, "count": count},
        cast(GenerationContext, ctx or FakeCtx()),  # the markers it lacks are for provider calls
    )


def pixels(data: bytes) -> Image.Image:
    return Image.open(BytesIO(data)).convert("RGB")


def assert_progress_sane(progress: list[int]) -> None:
    assert progress, "no progress reported"
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert all(0 <= p <= 100 for p in progress)
    assert progress[-1] >= 90


# --- images -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "count", "size"),
    [
        ("1:1", 1, (768, 768)),
        ("16:9", 2, (768, 432)),
        ("9:16", 3, (432, 768)),
        ("4:3", 4, (768, 576)),
        ("3:4", 1, (576, 768)),
    ],
)
def test_images_are_valid_pngs_of_the_requested_size_and_count(gen, ratio, count, size):
    ctx = FakeCtx()
    media = image(gen, "a lighthouse on a cliff at dusk", ratio, count, ctx)

    assert len(media) == count
    for m in media:
        assert m.mime_type == "image/png" and m.uri is None
        info = probe_png(m.data)
        assert (info["width"], info["height"]) == size
        rw, rh = (int(x) for x in ratio.split(":"))
        assert abs(size[0] / size[1] - rw / rh) < 0.01
    assert_progress_sane(ctx.progress)
    assert len(ctx.progress) >= count  # at least once per image


def test_same_prompt_and_params_give_byte_identical_pngs(gen):
    first = image(gen, "a red fox in the snow", "16:9", 2)
    second = LocalGenerator().generate(
        Kind.IMAGE, "a red fox in the snow", {"aspect_ratio": "16:9", "count": 2}, FakeCtx()
    )
    assert [m.data for m in first] == [m.data for m in second]


def test_different_prompts_give_visibly_different_images(gen):
    fox = pixels(image(gen, "a red fox in the snow")[0].data)
    whale = pixels(image(gen, "a blue whale in deep water")[0].data)

    mean_fox = ImageStat.Stat(fox).mean
    mean_whale = ImageStat.Stat(whale).mean
    assert math.dist(mean_fox, mean_whale) > 15, (mean_fox, mean_whale)
    # Not just a tint: the average per-pixel difference is large.
    diff = ImageStat.Stat(ImageChops.difference(fox, whale)).mean
    assert sum(diff) / 3 > 20, diff


def test_images_in_one_batch_differ_from_each_other(gen):
    media = image(gen, "four variations of a teapot", "1:1", 4)
    assert len({m.data for m in media}) == 4


def test_markers_are_not_drawn(gen):
    # The drawn text is the prompt without markers: a marker alone does not change the picture.
    plain = image(gen, "a quiet harbour")[0].data
    marked = image(gen, "a quiet harbour [slow:0]")[0].data
    assert plain == marked


@pytest.mark.parametrize(
    "prompt",
    [
        "x",
        "Ünïcödé prompt — Ελληνικά, кириллица, 日本語 and emoji 🦊",
        "word " * 399 + "end",  # ~2000 chars: must wrap and truncate, not overflow
        "a" * 2000,  # one word wider than the image
    ],
)
def test_awkward_prompts_still_render(gen, prompt):
    info = probe_png(image(gen, prompt, "9:16")[0].data)
    assert (info["width"], info["height"]) == (432, 768)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"aspect_ratio": "2:1", "count": 1}, "aspect_ratio"),
        ({"aspect_ratio": "1:1", "count": 5}, "count"),
        ({"aspect_ratio": "1:1", "count": 0}, "count"),
        ({"aspect_ratio": "1:1", "count": True}, "count"),
    ],
)
def test_bad_image_params_fail_permanently(gen, params, fragment):
    with pytest.raises(GenerationError) as err:
        gen.generate(Kind.IMAGE, "p", params, FakeCtx())
    assert err.value.code == "invalid_argument" and not err.value.retryable
    assert fragment in err.value.message


# --- videos -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "duration", "size"),
    [
        ("16:9", 4, (640, 360)),
        ("16:9", 8, (640, 360)),
        ("9:16", 6, (360, 640)),
        ("9:16", 8, (360, 640)),
    ],
)
def test_video_is_browser_playable_h264_of_exact_duration_and_size(gen, ratio, duration, size):
    ctx = FakeCtx()
    media = gen.generate(
        Kind.VIDEO,
        "a red fox running through a snowy forest",
        {"aspect_ratio": ratio, "duration_seconds": duration},
        ctx,
    )

    assert len(media) == 1
    assert media[0].mime_type == "video/mp4" and media[0].uri is None
    info = probe_mp4(media[0].data)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == size
    assert abs(info["duration_seconds"] - duration) <= 1 / VIDEO_FPS, info
    assert abs(info["frames"] - duration * VIDEO_FPS) <= 1, info
    assert info["moov_before_mdat"] is True, "not +faststart: browsers must download it all"
    assert_progress_sane(ctx.progress)
    assert len(ctx.progress) >= 10  # about every 10% of frames


def test_video_is_deterministic_and_prompt_dependent(gen):
    params = {"aspect_ratio": "16:9", "duration_seconds": 4}
    a = gen.generate(Kind.VIDEO, "a comet over the sea", params, FakeCtx())[0].data
    b = gen.generate(Kind.VIDEO, "a comet over the sea", params, FakeCtx())[0].data
    c = gen.generate(Kind.VIDEO, "a tram in the rain", params, FakeCtx())[0].data
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "params",
    [
        {"aspect_ratio": "1:1", "duration_seconds": 8},
        {"aspect_ratio": "16:9", "duration_seconds": 5},
        {"aspect_ratio": "16:9", "duration_seconds": "8"},
    ],
)
def test_bad_video_params_fail_permanently(gen, params):
    with pytest.raises(GenerationError) as err:
        gen.generate(Kind.VIDEO, "p", params, FakeCtx())
    assert err.value.code == "invalid_argument" and not err.value.retryable


# --- fault hooks --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.IMAGE, Kind.VIDEO])
def test_fail_marker_fails_permanently_before_rendering(gen, kind):
    ctx = FakeCtx()
    with pytest.raises(GenerationError) as err:
        gen.generate(kind, "a cat [fail:content_filtered] on a mat", {}, ctx)
    assert err.value.code == "content_filtered"
    assert err.value.retryable is False
    assert ctx.progress == []  # nothing was rendered


@pytest.mark.parametrize("kind", [Kind.IMAGE, Kind.VIDEO])
def test_retry_fail_marker_fails_retryably(gen, kind):
    ctx = FakeCtx()
    with pytest.raises(GenerationError) as err:
        gen.generate(kind, "[retry-fail:quota_exceeded] a cat", {}, ctx)
    assert err.value.code == "quota_exceeded"
    assert err.value.retryable is True
    assert ctx.progress == []


def test_slow_marker_really_waits_and_renews_the_lease_meanwhile():
    ctx = FakeCtx()
    started = time.monotonic()
    media = LocalGenerator().generate(Kind.IMAGE, "a snail [slow:1.2]", {}, ctx)
    elapsed = time.monotonic() - started

    assert elapsed >= 1.2
    waiting = [p for p in ctx.progress if p < 10]
    assert len(waiting) >= 2  # ~every 0.5 s
    assert_progress_sane(ctx.progress)
    assert probe_png(media[0].data)["width"] == 768


def test_slow_marker_is_capped_and_reports_every_half_second():
    fake = FakeTime()
    ctx = FakeCtx()
    LocalGenerator(sleep=fake.sleep, clock=fake.clock).generate(
        Kind.IMAGE, "[slow:99999] a glacier", {}, ctx
    )
    assert sum(fake.slept) == pytest.approx(MAX_SLOW_SECONDS)
    assert max(fake.slept) <= 0.5
    waiting = [p for p in ctx.progress if p < 10]
    assert len(waiting) == pytest.approx(MAX_SLOW_SECONDS / 0.5, abs=1)
    assert waiting == sorted(waiting)


def test_slow_then_fail_waits_first():
    fake = FakeTime()
    ctx = FakeCtx()
    with pytest.raises(GenerationError) as err:
        LocalGenerator(sleep=fake.sleep, clock=fake.clock).generate(
            Kind.VIDEO, "[slow:3] [fail:boom]", {}, ctx
        )
    assert err.value.code == "boom"
    assert sum(fake.slept) == pytest.approx(3.0)
    assert ctx.progress and max(ctx.progress) < 10


def test_parse_fault_hooks_strips_markers_and_ignores_malformed_ones():
    hooks = parse_fault_hooks("a [slow:2.5] cat [retry-fail:net.down-1] sat")
    assert hooks.text == "a cat sat"
    assert hooks.slow_seconds == 2.5
    assert hooks.fail_code == "net.down-1" and hooks.fail_retryable

    plain = parse_fault_hooks("[fail:] [slow:-1] [fail:has space] [FAIL:x]")
    assert plain.fail_code is None and plain.slow_seconds == 0
    assert plain.text == "[fail:] [slow:-1] [fail:has space] [FAIL:x]"

    only_marker = parse_fault_hooks("[fail:x]")
    assert only_marker.text == "[fail:x]"  # never draw an empty prompt


# --- the probe itself must reject bad data (else the tests above prove nothing) ----------


def test_probes_reject_invalid_media(gen, tmp_path):
    png = image(gen, "probe me")[0].data
    params = {"aspect_ratio": "16:9", "duration_seconds": 4}
    mp4 = gen.generate(Kind.VIDEO, "probe me", params, FakeCtx())[0].data

    for bad in (b"", b"not a png", png[:200], png[:60] + bytes([png[60] ^ 0xFF]) + png[61:], mp4):
        with pytest.raises(ValueError):
            probe_png(bad)
    for bad in (b"", b"\x00" * 4096, mp4[: len(mp4) // 2], png):
        with pytest.raises(ValueError):
            probe_mp4(bad)

    path = tmp_path / "v.mp4"
    path.write_bytes(mp4)
    assert probe_mp4(path)["frames"] == 4 * VIDEO_FPS
    with pytest.raises(ValueError):
        probe_mp4(tmp_path / "missing.mp4")
