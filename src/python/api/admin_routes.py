"""Admin-only migration dashboard: the side-by-side comparison of the dispatch paths (ADR §5).

``GET /admin/migration`` renders HTML with server-side inline SVG charts (no JavaScript, nothing
fetched from the internet, so it works behind IAP and under a strict CSP); ``GET
/api/admin/migration?window_hours=24`` returns the same numbers as JSON for scripts. Both read the
window's records with one ``store.scan`` and compute everything in ``common.migration_stats``.

Access: the caller's id (``api.identity.current_user()``) must be in ``PHOENIX_ADMINS``;
anyone else gets 403 with the API's error shape. The blueprint takes its dependencies explicitly
(store, settings, route) so it does not care how the app factory holds them.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, jsonify, request

from common import cost as cost_model
from common import migration_stats
from common.config import Settings
from common.domain.creation import Kind
from common.ports import CreationStore

MAX_RECORDS = 50_000
MAX_WINDOW_HOURS = 24 * 90
PATH_COLORS = {"cloud-tasks": "#229954", "celery": "#2E86C1", "local": "#7F8C8D"}
SERIES_COLORS = ("#5DADE2", "#F5B041", "#C0392B")  # p50, p95, p99


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def _default_current_user() -> str | None:
    from api.identity import current_user  # imported late: identity depends on app config

    return current_user()


def admin_blueprint(
    *,
    store: CreationStore | Callable[[], CreationStore],
    settings: Settings,
    route: Any = None,
    current_user: Callable[[], str | None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Blueprint:
    """``route`` is the API's route seam (``common.domain.rollout.make_route``); when it exposes
    ``.rollout`` the page shows the live split."""
    bp = Blueprint(
        "admin_migration", __name__, static_folder="static", static_url_path="/admin/static"
    )
    who = current_user or _default_current_user
    get_store = (
        store if callable(store) and not isinstance(store, CreationStore) else (lambda: store)
    )

    def _authorize() -> tuple[Response, int] | None:
        user = who()
        if not user:
            return _error(401, "unauthenticated", "sign in to see the migration dashboard")
        if user not in settings.admins:
            return _error(403, "forbidden", "the migration dashboard is for admins only")
        return None

    def _report() -> (
        tuple[migration_stats.MigrationReport | None, tuple[Response, int] | None, bool]
    ):
        raw = request.args.get("window_hours", "24")
        try:
            hours = float(raw)
        except ValueError:
            return (
                None,
                _error(400, "invalid_request", f"window_hours={raw!r} is not a number"),
                False,
            )
        if not 0 < hours <= MAX_WINDOW_HOURS:
            return (
                None,
                _error(400, "invalid_request", f"window_hours must be in (0, {MAX_WINDOW_HOURS}]"),
                False,
            )
        preset_name = request.args.get("preset", "list")
        if preset_name not in cost_model.PRESETS:
            return (
                None,
                _error(
                    400,
                    "invalid_request",
                    f"preset must be one of {', '.join(sorted(cost_model.PRESETS))}",
                ),
                False,
            )
        now = clock()
        window = timedelta(hours=hours)
        records = get_store().scan(created_after=now - window, limit=MAX_RECORDS)
        report = migration_stats.compute(
            records,
            now=now,
            window=window,
            preset=cost_model.PRESETS[preset_name],
            preset_name=preset_name,
        )
        return report, None, len(records) >= MAX_RECORDS

    def _rollout_dict() -> dict[str, dict[str, int]] | None:
        rollout = getattr(route, "rollout", None)
        if rollout is None:
            return None
        return {k.value: rollout.weights(k) for k in Kind}

    def _authorized_report() -> tuple[Any, bool, tuple[Response, int] | None]:
        """(report, truncated, None) for an admin with a valid window, else (None, False,
        the error response)."""
        denied = _authorize()
        if denied:
            return None, False, denied
        report, err, truncated = _report()
        return report, truncated, err

    @bp.get("/api/admin/migration")
    def migration_json() -> Any:
        report, truncated, err = _authorized_report()
        if err:
            return err
        body = report.to_dict()
        body["truncated"] = truncated
        body["rollout"] = _rollout_dict()
        return jsonify(body)

    @bp.get("/admin/migration")
    def migration_page() -> Any:
        report, truncated, err = _authorized_report()
        if err:
            return err
        page = render_page(report, rollout=_rollout_dict(), truncated=truncated)
        return Response(page, mimetype="text/html")

    return bp


# --- Rendering (pure: report -> HTML string) ---------------------------------------------------

_e = html.escape


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _fmt_usd(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"${v:,.{digits}f}"


def _label(g: migration_stats.GroupStats) -> str:
    return f"{g.path} / {g.kind}"


def svg_hbars(
    rows: list[tuple[str, float | None, str]],
    *,
    max_value: float,
    unit: str,
    title: str,
    width: int = 640,
) -> str:
    """Horizontal bars: (label, value, colour) per row."""
    bar_h, gap, left, top = 22, 8, 170, 28
    height = top + len(rows) * (bar_h + gap) + 10
    plot_w = width - left - 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="16" font-size="14" font-weight="bold">{_e(title)}</text>',
    ]
    for i, (label, value, color) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(
            f'<text x="{left - 8}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{_e(label)}</text>"
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
            f"{value:.1f}{_e(unit)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def svg_grouped_bars(
    groups: list[tuple[str, tuple[float | None, ...]]],
    *,
    series: tuple[str, ...],
    title: str,
    width: int = 640,
) -> str:
    """Vertical grouped bars (e.g. p50/p95/p99 per path/kind), values in seconds."""
    height, top, bottom, left = 260, 40, 46, 56
    plot_h = height - top - bottom
    values = [v for _, vs in groups for v in vs if v is not None]
    vmax = max(values) if values else 1.0
    vmax = vmax * 1.1 if vmax > 0 else 1.0
    n = max(1, len(groups))
    slot = (width - left - 10) / n
    bw = max(4.0, min(28.0, (slot - 16) / max(1, len(series))))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="16" font-size="14" font-weight="bold">{_e(title)}</text>',
    ]
    for j, name in enumerate(series):  # legend
        x = 260 + j * 70
        out.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{SERIES_COLORS[j % 3]}"/>'
            f'<text x="{x + 14}" y="15" font-size="11">{_e(name)}</text>'
        )
    for k in range(5):  # y grid
        tick = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_e(_fmt_s(tick))}</text>"
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
                f"<title>{_e(label)} {_e(series[j])}: {_e(_fmt_s(v))}</title></rect>"
            )
        out.append(
            f'<text x="{x0 + len(vs) * bw / 2:.1f}" y="{height - bottom + 16}" font-size="11" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def svg_cost_curve(curve: list[dict], *, title: str, width: int = 640) -> str:
    """Monthly cost of both architectures against monthly volume."""
    height, top, bottom, left, right = 280, 40, 40, 64, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    xmax = max((p["creations"] for p in curve), default=1) or 1
    ymax = max((max(p["celery"], p["cloud_tasks"]) for p in curve), default=1.0) * 1.1 or 1.0

    def xy(n: float, usd: float) -> tuple[float, float]:
        return left + plot_w * n / xmax, top + plot_h - plot_h * usd / ymax

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="16" font-size="14" font-weight="bold">{_e(title)}</text>',
    ]
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
    for key, name, color in (
        ("celery", "Celery + Redis (legacy)", PATH_COLORS["celery"]),
        ("cloud_tasks", "Cloud Tasks + Jobs", PATH_COLORS["cloud-tasks"]),
    ):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(p["creations"], p[key]) for p in curve))
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5">'
            f"<title>{_e(name)}</title></polyline>"
        )
        for p in curve:
            x, y = xy(p["creations"], p[key])
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                f'<title>{_e(name)}: {p["creations"]:,}/month = ${p[key]:,.2f}</title></circle>'
            )
    for j, (name, color) in enumerate(
        (
            ("Celery + Redis (legacy)", PATH_COLORS["celery"]),
            ("Cloud Tasks + Jobs", PATH_COLORS["cloud-tasks"]),
        )
    ):
        x = 260 + j * 190
        out.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="15" font-size="11">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def render_page(
    report: migration_stats.MigrationReport,
    *,
    rollout: dict[str, dict[str, int]] | None = None,
    truncated: bool = False,
) -> str:
    groups = report.groups
    hours = (report.window_end - report.window_start).total_seconds() / 3600
    success = svg_hbars(
        [
            (
                _label(g),
                None if g.success_rate is None else g.success_rate * 100,
                PATH_COLORS.get(g.path, "#555"),
            )
            for g in groups
        ],
        max_value=100,
        unit="%",
        title="Success rate (completed / finished)",
    )
    waits = svg_grouped_bars(
        [(_label(g), (g.queue_wait_s.p50, g.queue_wait_s.p95, g.queue_wait_s.p99)) for g in groups],
        series=("p50", "p95", "p99"),
        title="Queue wait (created → claimed)",
    )
    runs = svg_grouped_bars(
        [(_label(g), (g.run_time_s.p50, g.run_time_s.p95, g.run_time_s.p99)) for g in groups],
        series=("p50", "p95", "p99"),
        title="Run time (claimed → finished)",
    )
    curve = svg_cost_curve(
        report.cost_curve,
        title=f"Monthly cost vs volume (job run time {report.job_seconds:.0f} s)",
    )
    rows = []
    for g in groups:
        codes = ", ".join(f"{_e(c)}×{n}" for c, n in g.failure_codes.items()) or "–"
        rate = "–" if g.success_rate is None else f"{g.success_rate * 100:.1f}%"
        rows.append(
            "<tr>"
            f"<td>{_e(g.path)}</td><td>{_e(g.kind)}</td><td>{g.count}</td><td>{g.completed}</td>"
            f"<td>{g.failed}</td><td>{g.in_progress}</td><td>{rate}</td><td>{codes}</td>"
            f"<td>{g.retries}</td><td>{_fmt_s(g.queue_wait_s.p50)} / {_fmt_s(g.queue_wait_s.p95)}"
            f" / {_fmt_s(g.queue_wait_s.p99)}</td>"
            f"<td>{_fmt_s(g.run_time_s.p50)} / {_fmt_s(g.run_time_s.p95)} / "
            f"{_fmt_s(g.run_time_s.p99)}</td>"
            f"<td>{_fmt_usd(g.cost_per_creation_usd)}</td><td>{_fmt_usd(g.cost_total_usd, 2)}</td>"
            "</tr>"
        )
    table = (
        "<table><thead><tr><th>path</th><th>kind</th><th>count</th><th>completed</th>"
        "<th>failed</th><th>in progress</th><th>success</th><th>failure codes</th>"
        "<th>retries</th><th>queue wait p50/p95/p99</th><th>run time p50/p95/p99</th>"
        "<th>cost / creation</th><th>cost (window)</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="13">No creations in this window.</td></tr>')
        + "</tbody></table>"
    )
    cost_rows = "".join(
        f"<tr><td>{p['creations']:,}</td><td>${p['celery']:,.2f}</td>"
        f"<td>${p['cloud_tasks']:,.2f}</td></tr>"
        for p in report.cost_curve
        if p["creations"] in (0, 1000, 10_000)
    )
    rollout_html = ""
    if rollout:
        rollout_html = (
            "<p class=rollout>Live rollout: "
            + "; ".join(
                f"<b>{_e(kind)}</b> " + ", ".join(f"{_e(p)} {w}%" for p, w in split.items())
                for kind, split in rollout.items()
            )
            + "</p>"
        )
    notes = "".join(f"<p class=note>{_e(n)}</p>" for n in report.notes)
    if truncated:
        notes += (
            f"<p class=note>Only the first {MAX_RECORDS:,} records were read; "
            "narrow the window for exact figures.</p>"
        )
    windows = " · ".join(
        f'<a href="?window_hours={h}">{label}</a>'
        for h, label in ((1, "1 h"), (24, "24 h"), (168, "7 d"), (720, "30 d"))
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Phoenix · migration</title>"
        '<link rel="stylesheet" href="/admin/static/admin.css"></head><body>'
        "<h1>Celery → Cloud Tasks migration</h1>"
        f"<p>Window: last {hours:g} h ({_e(report.window_start.strftime('%Y-%m-%d %H:%M'))} → "
        f"{_e(report.window_end.strftime('%Y-%m-%d %H:%M'))} UTC) · {windows} · "
        '<a href="/api/admin/migration">JSON</a></p>'
        f"{rollout_html}{notes}"
        f"{table}<div class=charts>{success}{waits}{runs}{curve}</div>"
        "<h2>Monthly cost model</h2>"
        f"<p>Preset <b>{_e(report.preset)}</b>; job run time {report.job_seconds:.1f} s "
        f"({_e(report.job_seconds_source)}). Veo/Imagen, Firestore and storage are the same on "
        "both paths and excluded.</p>"
        "<table><thead><tr><th>creations / month</th><th>Celery + Redis</th>"
        f"<th>Cloud Tasks + Jobs</th></tr></thead><tbody>{cost_rows}</tbody></table>"
        "</body></html>"
    )
