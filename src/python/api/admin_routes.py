"""Admin-only migration dashboard: the side-by-side comparison of the dispatch paths (ADR §5).

``GET /admin/migration`` renders ``templates/admin_migration.html`` (Jinja2, autoescaped) with
the server-side SVG charts of ``api.charts`` (no JavaScript, nothing fetched from the internet,
so it works behind IAP and under a strict CSP); ``GET
/api/admin/migration?window_hours=24`` returns the same numbers as JSON for scripts. Both read the
window's records with one ``store.scan`` and compute everything in ``common.migration_stats``.

Access: the caller's id (``api.identity.current_user()``) must be in ``PHOENIX_ADMINS``;
anyone else gets 403 with the API's error shape. The blueprint takes its dependencies explicitly
(store, settings, route) so it does not care how the app factory holds them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from api import charts
from common import cost as cost_model
from common import migration_stats
from common.config import Settings
from common.domain.kinds import KINDS
from common.ports import CreationStore

MAX_RECORDS = 50_000
MAX_WINDOW_HOURS = 24 * 90


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
        return {k.value: rollout.weights(k) for k in KINDS}

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

# Counts shown per path/kind, in this order, for whichever of them the report carries (a count
# added to ``migration_stats.GroupStats`` appears here without touching the template).
COUNT_COLUMNS = ("count", "completed", "failed", "cancelled", "in_progress")
WINDOWS = ((1, "1 h"), (24, "24 h"), (168, "7 d"), (720, "30 d"))

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every value is escaped unless it is Markup (the charts)
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt_usd(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"${v:,.{digits}f}"


def _label(g: migration_stats.GroupStats) -> str:
    return f"{g.path} / {g.kind}"


def _percentiles(p: migration_stats.Percentiles) -> str:
    return " / ".join(charts.fmt_seconds(v) for v in (p.p50, p.p95, p.p99))


def _table(groups: list[migration_stats.GroupStats]) -> tuple[list[str], list[list[Any]]]:
    counts = (
        [c for c in COUNT_COLUMNS if all(hasattr(g, c) for g in groups)]
        if groups
        else [c for c in COUNT_COLUMNS if c in migration_stats.GroupStats.__dataclass_fields__]
    )
    columns = [
        "path",
        "kind",
        *(c.replace("_", " ") for c in counts),
        "success",
        "failure codes",
        "retries",
        "queue wait p50/p95/p99",
        "run time p50/p95/p99",
        "cost / creation",
        "cost (window)",
    ]
    rows = [
        [
            g.path,
            g.kind,
            *(getattr(g, c) for c in counts),
            "–" if g.success_rate is None else f"{g.success_rate * 100:.1f}%",
            ", ".join(f"{code}×{n}" for code, n in g.failure_codes.items()) or "–",
            g.retries,
            _percentiles(g.queue_wait_s),
            _percentiles(g.run_time_s),
            _fmt_usd(g.cost_per_creation_usd),
            _fmt_usd(g.cost_total_usd, 2),
        ]
        for g in groups
    ]
    return columns, rows


def _charts(report: migration_stats.MigrationReport) -> list[Markup]:
    groups = report.groups
    return [
        charts.hbars(
            [
                (
                    _label(g),
                    None if g.success_rate is None else g.success_rate * 100,
                    charts.PATH_COLORS.get(g.path, "#555"),
                )
                for g in groups
            ],
            max_value=100,
            unit="%",
            title="Success rate (completed / finished)",
        ),
        charts.grouped_bars(
            [
                (_label(g), (g.queue_wait_s.p50, g.queue_wait_s.p95, g.queue_wait_s.p99))
                for g in groups
            ],
            series=("p50", "p95", "p99"),
            title="Queue wait (created → claimed)",
        ),
        charts.grouped_bars(
            [(_label(g), (g.run_time_s.p50, g.run_time_s.p95, g.run_time_s.p99)) for g in groups],
            series=("p50", "p95", "p99"),
            title="Run time (claimed → finished)",
        ),
        charts.cost_curve(
            report.cost_curve,
            title=f"Monthly cost vs volume (job run time {report.job_seconds:.0f} s)",
        ),
    ]


def render_page(
    report: migration_stats.MigrationReport,
    *,
    rollout: dict[str, dict[str, int]] | None = None,
    truncated: bool = False,
) -> str:
    columns, rows = _table(list(report.groups))
    notes = list(report.notes)
    if truncated:
        notes.append(
            f"Only the first {MAX_RECORDS:,} records were read; narrow the window for exact "
            "figures."
        )
    return _templates.get_template("admin_migration.html").render(
        report=report,
        hours=(report.window_end - report.window_start).total_seconds() / 3600,
        windows=WINDOWS,
        rollout=rollout,
        notes=notes,
        columns=columns,
        rows=rows,
        charts=_charts(report),
        cost_rows=[p for p in report.cost_curve if p["creations"] in (0, 1000, 10_000)],
    )
