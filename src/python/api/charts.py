"""The migration dashboard's three SVG charts, drawn on the server (no JavaScript, nothing
fetched from the internet: the page works behind IAP and under a strict CSP).

Each function returns ``Markup`` (safe to place in the Jinja template as is) and escapes every
piece of text it draws. Layout: the title on the first line, the legend (if any) on its own
line under it, then the plot, so a long title never runs into the legend.
"""

from __future__ import annotations

from markupsafe import Markup, escape

__all__ = ["PATH_COLORS", "cost_curve", "grouped_bars", "hbars", "fmt_seconds"]

PATH_COLORS = {"cloud-tasks": "#229954", "celery": "#2E86C1", "local": "#7F8C8D"}
SERIES_COLORS = ("#5DADE2", "#F5B041", "#C0392B")  # p50, p95, p99
WIDTH = 580  # two charts side by side fit a 1280 px window (admin.css)
TITLE_Y, LEGEND_Y = 16, 36  # baselines: the legend row sits under the title


def fmt_seconds(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _open(title: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text class="title" x="0" y="{TITLE_Y}" font-size="14" font-weight="bold">'
        f"{escape(title)}</text>",
    ]


def _legend(entries: list[tuple[str, str]], *, x0: float = 0) -> list[str]:
    """One legend row under the title; each entry is as wide as its label needs."""
    out, x = [], x0
    for name, color in entries:
        out.append(
            f'<g class="legend"><rect x="{x:.0f}" y="{LEGEND_Y - 9}" width="10" height="10" '
            f'fill="{color}"/><text x="{x + 14:.0f}" y="{LEGEND_Y}" font-size="11">'
            f"{escape(name)}</text></g>"
        )
        x += 14 + 7 * len(name) + 16  # ~7 px per character at 11 px
    return out


def hbars(
    rows: list[tuple[str, float | None, str]],
    *,
    max_value: float,
    unit: str,
    title: str,
    width: int = WIDTH,
) -> Markup:
    """Horizontal bars: (label, value, colour) per row."""
    bar_h, gap, left, top = 22, 8, 170, 28
    height = top + len(rows) * (bar_h + gap) + 10
    plot_w = width - left - 70
    out = _open(title, width, height)
    for i, (label, value, color) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(
            f'<text x="{left - 8}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        if value is None:
            out.append(
                f'<text x="{left + 4}" y="{y + 15}" font-size="12" fill="#888">no data</text>'
            )
            continue
        w = 0 if max_value <= 0 else max(1.0, plot_w * min(value, max_value) / max_value)
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        out.append(
            f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="12">'
            f"{value:.1f}{escape(unit)}</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def grouped_bars(
    groups: list[tuple[str, tuple[float | None, ...]]],
    *,
    series: tuple[str, ...],
    title: str,
    width: int = WIDTH,
) -> Markup:
    """Vertical grouped bars (e.g. p50/p95/p99 per path/kind), values in seconds."""
    height, top, bottom, left = 270, 52, 46, 56
    plot_h = height - top - bottom
    values = [v for _, vs in groups for v in vs if v is not None]
    vmax = max(values) if values else 1.0
    vmax = vmax * 1.1 if vmax > 0 else 1.0
    n = max(1, len(groups))
    slot = (width - left - 10) / n
    bw = max(4.0, min(28.0, (slot - 16) / max(1, len(series))))
    out = _open(title, width, height)
    out += _legend([(name, SERIES_COLORS[j % 3]) for j, name in enumerate(series)], x0=left)
    for k in range(5):  # y grid
        tick = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{escape(fmt_seconds(tick))}</text>"
        )
    for i, (label, vs) in enumerate(groups):
        x0 = left + i * slot + 8
        for j, v in enumerate(vs):
            if v is None:
                continue
            h = plot_h * v / vmax
            out.append(
                f'<rect x="{x0 + j * bw:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
                f'height="{h:.1f}" fill="{SERIES_COLORS[j % 3]}">'
                f"<title>{escape(label)} {escape(series[j])}: {escape(fmt_seconds(v))}</title>"
                "</rect>"
            )
        # "path / kind" on two lines: six groups of one line each collide at this width.
        cx = x0 + len(vs) * bw / 2
        lines = "".join(
            f'<tspan x="{cx:.1f}" dy="{0 if n == 0 else 13}">{escape(part)}</tspan>'
            for n, part in enumerate(label.split(" / "))
        )
        out.append(
            f'<text class="xlabel" x="{cx:.1f}" y="{height - bottom + 15}" font-size="11" '
            f'text-anchor="middle">{lines}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def cost_curve(curve: list[dict], *, title: str, width: int = WIDTH) -> Markup:
    """Monthly cost of both architectures against monthly volume."""
    height, top, bottom, left, right = 290, 52, 40, 64, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    xmax = max((p["creations"] for p in curve), default=1) or 1
    ymax = max((max(p["celery"], p["cloud_tasks"]) for p in curve), default=1.0) * 1.1 or 1.0
    lines = (
        ("celery", "Celery + Redis (legacy)", PATH_COLORS["celery"]),
        ("cloud_tasks", "Cloud Tasks + Jobs", PATH_COLORS["cloud-tasks"]),
    )

    def xy(n: float, usd: float) -> tuple[float, float]:
        return left + plot_w * n / xmax, top + plot_h - plot_h * usd / ymax

    out = _open(title, width, height)
    out += _legend([(name, color) for _, name, color in lines], x0=left)
    for k in range(5):
        usd = ymax * k / 4
        _, y = xy(0, usd)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"${usd:,.0f}</text>"
        )
    last_label_x = -1e9
    for p in curve:
        x, _ = xy(p["creations"], 0)
        if x - last_label_x < 40:  # keep tick labels from overlapping at the low end
            continue
        last_label_x = x
        out.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" font-size="10" '
            f'text-anchor="middle">{p["creations"]:,}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle">creations per month</text>'
    )
    for key, name, color in lines:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(p["creations"], p[key]) for p in curve))
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5">'
            f"<title>{escape(name)}</title></polyline>"
        )
        for p in curve:
            x, y = xy(p["creations"], p[key])
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                f'<title>{escape(name)}: {p["creations"]:,}/month = ${p[key]:,.2f}</title>'
                "</circle>"
            )
    out.append("</svg>")
    return Markup("".join(out))
