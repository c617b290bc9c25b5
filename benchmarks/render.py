"""Local generator render time: how long the embedded generator takes to make one PNG and one MP4.

Run (repo root):  benchmarks/run render [--runs 5]

What is measured: ``LocalGenerator().generate`` in this process (Pillow for images; for videos
the frames are drawn with Pillow and encoded by the ffmpeg shipped in imageio-ffmpeg, a child
process), wall time per call, median and max over ``--runs`` calls after one warm-up, for:
one 1:1 image (768x768), four 16:9 images, a 4 s 9:16 video and an 8 s 16:9 video (640x360,
12 fps, H.264). Each prompt differs per run (no cache exists, but the renders must still be
real). The outputs are checked (PNG signature, MP4 ``ftyp`` box) so a broken renderer cannot
report a fast time.

Why it matters: this is the job's "generate" phase on the embedded defaults, i.e. what the
e2e tests and a local demo wait for, and what the local dispatcher's job throughput is made of.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # self-locating
from benchmarks import _common as c  # noqa: E402

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("image 1:1 x1", "image", {"aspect_ratio": "1:1", "count": 1}),
    ("image 16:9 x4", "image", {"aspect_ratio": "16:9", "count": 4}),
    ("video 9:16 4 s", "video", {"aspect_ratio": "9:16", "duration_seconds": 4}),
    ("video 16:9 8 s", "video", {"aspect_ratio": "16:9", "duration_seconds": 8}),
]


class _Ctx:
    """The generation context a job passes; here nothing to renew."""

    creation_id: str = "render-benchmark"
    existing_operation: str | None = None
    output_prefix: str | None = None

    def report_progress(self, percent: int) -> None:
        pass

    def record_operation(self, operation: str) -> None:
        pass

    def heartbeat(self) -> None:
        pass


def _check(kind: str, media: list[Any], params: dict[str, Any]) -> int:
    want = params.get("count", 1) if kind == "image" else 1
    if len(media) != want:
        raise SystemExit(f"{kind}: {len(media)} items, expected {want}")
    size = 0
    for item in media:
        data = item.data or b""
        ok = data.startswith(b"\x89PNG") if kind == "image" else data[4:8] == b"ftyp"
        if not ok:
            raise SystemExit(f"{kind}: output is not a {'PNG' if kind == 'image' else 'MP4'}")
        size += len(data)
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)

    from common.adapters.local_generator import LocalGenerator
    from common.domain.creation import Kind
    from common.ports import GenerationContext

    gen = LocalGenerator()
    ctx = cast(GenerationContext, _Ctx())  # the markers it lacks are for provider calls
    results: dict[str, Any] = {}
    for label, kind, params in CASES:
        gen.generate(Kind(kind), f"warm-up {label}", dict(params), ctx)
        times, sizes = [], []
        for i in range(args.runs):
            t = time.perf_counter()
            media = gen.generate(Kind(kind), f"render benchmark {label} #{i}", dict(params), ctx)
            times.append((time.perf_counter() - t) * 1000)
            sizes.append(_check(kind, media, params))
        results[label] = {
            "runs": args.runs,
            "median_ms": c.r1(c.percentile(times, 50)),
            "max_ms": c.r1(max(times)),
            "bytes_median": int(c.percentile(sizes, 50)),
        }
    c.table(
        f"Local generator render time ({args.runs} runs each after 1 warm-up, wall ms)",
        ["case", "median ms", "max ms", "output bytes (median)"],
        [[k, v["median_ms"], v["max_ms"], v["bytes_median"]] for k, v in results.items()],
    )
    c.emit_json("render", {**c.machine(), "runs": args.runs, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
