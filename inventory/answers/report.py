"""`inventory report --html FILE`: one self-contained HTML page about one run.

The page holds everything it shows: inline CSS, SVG bar charts drawn here, no script, no
font, image or stylesheet from anywhere (a Content-Security-Policy forbids every fetch).
It shows, for the newest finished run (or `--run`):

  - the run's status and why it ended (`ended`): complete, partial (failed targets, an
    interruption, a failed export), failed (every target, an error that stopped it, or a
    process that ended without finishing it), or not finished; a run without scans says so;
  - totals: accounts, targets ok/failed, services, deployments, containers, API calls,
    retries, wall time;
  - services by region and by state (SVG bar charts; a region whose targets failed says so);
  - failures and anomalies: the run's `errors` rows;
  - cost and utilization (gather_costs → Costs → _cost_section): the monthly cost, by
    account and by power, rightsizing's savings, and SVG lines of the CPU and memory of the
    most expensive services, from the named queries monthly_cost, cost_by_account and
    rightsizing and the `collect --usage` tables; without usage data it says so;
  - findings: every named query of `sql/queries/` that runs without a parameter (or whose
    parameters all have defaults), read when the report is made, with its description and
    its first rows. Queries that need a parameter are listed, not run.

"As of the run": the named queries read the `latest_*` views. For the report they run in a
connection where every table is narrowed to the runs up to the reported one (temporary views
shadow the tables and the `latest_*` views), so a report of an older run shows the findings
of that day, not today's, and a newer run never leaks into it.

Secrets: the `environment` column (values or fingerprints) is never shown, whatever query
selects it. Everything from the data is HTML-escaped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from inventory import __version__
from inventory.answers import queries
from inventory.errors import StoreError, UsageError
from inventory.storage import lakequery, schema
from inventory.storage.files import keep_mode, make_dirs
from inventory.storage.store import Store, is_damage, select_list, view_statements

FINDING_ROWS = 20  # rows shown per named query
FAILURE_ROWS = 200  # errors rows shown
CELL_CHARS = 160  # longer cell values are cut (the whole value is in the cell's title)
WRAP_CHARS = 40  # shorter cell values stay on one line
HIDDEN_COLUMNS = frozenset({"environment"})  # never shown: secrets or their fingerprints

# Colours of the service states (Lightsail's ContainerServiceState).
STATE_COLOURS = {
    "RUNNING": "#2f9e44",
    "READY": "#1c7ed6",
    "DEPLOYING": "#f08c00",
    "UPDATING": "#f59f00",
    "PENDING": "#fab005",
    "DISABLED": "#868e96",
    "DELETING": "#e03131",
}
BAR_COLOUR = "#4263eb"
FAIL_COLOUR = "#c92a2a"


# --------------------------------------------------------------------------- the data


@dataclass
class Finding:
    """One named query's answer (or why it has none)."""

    name: str
    description: str
    params: dict[str, str] = field(default_factory=dict)  # bound values (defaults)
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # the first FINDING_ROWS
    total: int = 0
    hidden: list[str] = field(default_factory=list)  # columns left out (environment)
    needs: list[str] = field(default_factory=list)  # parameters without a default: not run
    error: str | None = None

    @property
    def ran(self) -> bool:
        return not self.needs and self.error is None


@dataclass
class Report:
    """What `build` found and the page it rendered."""

    run: dict[str, Any]
    regions: list[tuple[str, int, int]]  # (region, services, failed targets), every scanned one
    states: list[tuple[str, int]]  # (state, services)
    errors_total: int
    errors: list[dict[str, Any]]  # the first FAILURE_ROWS
    error_groups: list[tuple[str, str, str | None, int, int]]  # op, code, region, rows, accounts
    # the fleet the findings describe, as of the run: (run defining it or None, accounts, pairs)
    fleet: tuple[str | None, int, int]
    findings: list[Finding]
    generated_at: dt.datetime
    ended: str = ""  # the run's status and why it ended, in a sentence or two
    scans: int = 0  # account × region scanned (rows in scans)
    costs: Costs | None = None  # the cost section's data (gather_costs)
    html: str = ""

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])


# --------------------------------------------------------------------------- named queries


def _run_finding(
    con: duckdb.DuckDBPyConnection, query: queries.NamedQuery, sql_dir: Path
) -> Finding:
    finding = Finding(query.name, query.description)
    try:
        used = queries.used_params(query.text)
    except duckdb.Error as e:
        finding.error = f"cannot parse: {e}"
        return finding
    finding.needs = sorted(p for p in used if query.params.get(p) is None)
    if finding.needs:
        return finding
    values = queries.defaults(query.params, sql_dir)
    finding.params = {p: values[p] for p in sorted(used)}
    try:
        cur = con.execute(query.text, finding.params or None)
        columns = [d[0] for d in cur.description or []]
        keep = [i for i, c in enumerate(columns) if c.lower() not in HIDDEN_COLUMNS]
        finding.hidden = [c for c in columns if c.lower() in HIDDEN_COLUMNS]
        finding.columns = [columns[i] for i in keep]
        first = cur.fetchmany(FINDING_ROWS)
        finding.rows = [tuple(r[i] for i in keep) for r in first]
        finding.total = len(first)
        while chunk := cur.fetchmany(10_000):
            finding.total += len(chunk)
    except duckdb.Error as e:
        finding.error = str(e)
    return finding


# --------------------------------------------------------------------------- gathering


def _pick_run(con: duckdb.DuckDBPyConnection, source: str, run_id: str | None) -> dict[str, Any]:
    """The reported run's row: `run_id`, else the newest finished run. A run with one runs
    row (a store's, an unsharded run's in the lake) is that row; the shards of a sharded run
    in the lake are one run, their totals (run_totals)."""
    if run_id is None:
        newest = con.execute(
            "SELECT run_id FROM run_totals WHERE status <> 'running' "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1"
        ).fetchone()
        if newest is None:
            raise StoreError(f"{source}: no finished run yet; run `inventory collect` first")
        run_id = str(newest[0])
    cur = con.execute(f"SELECT {select_list(con, 'runs')} FROM runs WHERE run_id = ?", [run_id])
    rows = cur.fetchall()
    if len(rows) > 1:
        cur = con.execute("SELECT * FROM run_totals WHERE run_id = ?", [run_id])
        rows = cur.fetchall()
    if not rows:
        raise UsageError(f"--run {run_id!r}: no such run in {source} (see: inventory runs)")
    cols = [d[0] for d in cur.description or []]
    return dict(zip(cols, rows[0], strict=True))


def _scope_to(con: duckdb.DuckDBPyConnection, run: dict[str, Any]) -> None:
    """Make this connection see the store as it was when `run` finished: temporary views
    named like the tables hold only the runs up to `run`, and the latest_* views are
    rebuilt over them. Nothing is written to the database."""
    db = con.execute("SELECT current_database()").fetchone()
    assert db is not None
    base = f'"{str(db[0]).replace(chr(34), chr(34) * 2)}".main'
    con.execute(
        f"CREATE TEMP TABLE _report_runs AS SELECT run_id FROM {base}.runs "
        "WHERE started_at < $started OR (started_at = $started AND run_id <= $id)",
        {"started": run["started_at"], "id": run["run_id"]},
    )
    for table in schema.TABLES:
        # every schema.py column (NULL where a store no writer of this version migrated lacks
        # it), so that the views below can be built over any store
        con.execute(
            f"CREATE TEMP VIEW {table} AS SELECT {select_list(con, table)} FROM {base}.{table} "
            "WHERE run_id IN (SELECT run_id FROM temp.main._report_runs)"
        )
    for sql in view_statements("CREATE OR REPLACE TEMP VIEW"):
        con.execute(sql)


def gather(
    con: duckdb.DuckDBPyConnection,
    source: str,
    run_id: str | None = None,
    sql_dir: Path | None = None,
    generated_at: dt.datetime | None = None,
) -> Report:
    """Everything the page shows, read from `con`: a store's read-only connection or the
    lake's (lakequery.open_lake), which have the same tables and views. `source` names it in
    errors. The connection gets temporary views (`_scope_to`): give it one of its own."""
    sql_dir = queries.SQL_DIR if sql_dir is None else sql_dir
    named = queries.load(sql_dir)
    try:
        run = _pick_run(con, source, run_id)
        rid = run["run_id"]
        regions = con.execute(
            "SELECT s.region, coalesce(c.n, 0), s.failed FROM ("
            "  SELECT region, count(*) FILTER (WHERE status <> 'ok') AS failed"
            "  FROM scans WHERE run_id = $id GROUP BY region) AS s "
            "LEFT JOIN (SELECT region, count(*) AS n FROM container_services"
            "  WHERE run_id = $id GROUP BY region) AS c ON c.region = s.region "
            "ORDER BY 2 DESC, 1",
            {"id": rid},
        ).fetchall()
        states = con.execute(
            "SELECT coalesce(state, 'NULL'), count(*) FROM container_services "
            "WHERE run_id = $id GROUP BY 1 ORDER BY 2 DESC, 1",
            {"id": rid},
        ).fetchall()
        errors_total_row = con.execute(
            "SELECT count(*) FROM errors WHERE run_id = $id", {"id": rid}
        ).fetchone()
        cur = con.execute(
            "SELECT account_id, region, operation, error_code, attempts, message, "
            "occurred_at FROM errors WHERE run_id = $id "
            "ORDER BY account_id, region NULLS FIRST, operation, occurred_at "
            f"LIMIT {FAILURE_ROWS}",
            {"id": rid},
        )
        cols = [d[0] for d in cur.description or []]
        errors = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        scans_row = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE error_code = 'Interrupted') "
            "FROM scans WHERE run_id = $id",
            {"id": rid},
        ).fetchall()[0]
        run_errors = con.execute(
            "SELECT operation, error_code, message FROM errors WHERE run_id = $id "
            "AND region IS NULL AND coalesce(account_id, '') = '' ORDER BY occurred_at",
            {"id": rid},
        ).fetchall()
        groups = con.execute(
            "SELECT operation, error_code, region, count(*), count(DISTINCT account_id) "
            "FROM errors WHERE run_id = $id GROUP BY ALL "
            "ORDER BY 4 DESC, 1, 2, 3 NULLS FIRST",
            {"id": rid},
        ).fetchall()
        _scope_to(con, run)
        fleet = con.execute(
            "SELECT (SELECT run_id FROM fleet_run), count(DISTINCT account_id), count(*) FROM fleet"
        ).fetchone()
        assert fleet is not None
    except duckdb.Error as e:
        if is_damage(e):
            raise  # the store's connection says so, naming the file (exit 2)
        raise StoreError(f"{source}: cannot read run {run_id or 'newest'}: {e}") from e
    findings = [_run_finding(con, q, sql_dir) for q in named]
    costs = gather_costs(con, named, sql_dir)
    errors_total = int(errors_total_row[0]) if errors_total_row else 0
    return Report(
        run=run,
        ended=why_it_ended(run, int(scans_row[0]), int(scans_row[1]), run_errors, errors_total),
        scans=int(scans_row[0]),
        regions=[(str(r), int(n), int(f)) for r, n, f in regions],
        states=[(str(s), int(n)) for s, n in states],
        errors_total=errors_total,
        errors=errors,
        error_groups=[(str(o), str(c), g, int(n), int(a)) for o, c, g, n, a in groups],
        fleet=(fleet[0], int(fleet[1]), int(fleet[2])),
        findings=findings,
        generated_at=generated_at or dt.datetime.now(dt.UTC),
        costs=costs,
    )


def why_it_ended(
    run: dict[str, Any],
    scans: int,
    interrupted: int,
    run_errors: Sequence[tuple[str, str, str]],
    errors_total: int,
) -> str:
    """The run's status and why it ended, from its runs row, scans and errors."""
    status = str(run.get("status") or "unknown")
    targets = run.get("targets") or 0
    failed = run.get("targets_failed") or 0
    stopped = ""
    if run_errors:
        op, code, message = run_errors[0]
        more = f" (and {len(run_errors) - 1} more)" if len(run_errors) > 1 else ""
        stopped = f"{op} {code}: {message}{more}"
    if status == "running":
        text = (
            "Not finished: the run is still going, or its process was killed and no collect "
            "has run since (the next one marks it failed)."
        )
    elif status == "failed":
        if stopped:
            text = f"Failed: stopped by an error, {stopped}."
        elif scans and failed >= scans and scans >= targets:
            text = "Failed: every account × region failed (see the errors below)."
        else:
            text = (
                f"Failed: the process ended (killed, or the machine stopped) after {scans} of "
                f"{targets} account × region; the next collect marked the run failed and "
                "removed its inventory rows."
            )
    elif status == "partial":
        if interrupted:
            text = (
                f"Partial: interrupted (Ctrl-C or SIGTERM); {interrupted} account × region "
                "not collected, what was collected is kept."
            )
        elif stopped and not failed:
            text = f"Partial: every account × region answered, but {stopped}."
        else:
            text = f"Partial: {failed} of {targets} account × region failed."
    elif status == "complete":
        text = "Complete: every account × region answered."
    else:
        text = f"Status {status}."
    if not scans:
        text += " This run has no scans: no account × region was collected."
    if not errors_total and status != "complete":
        text += " It recorded no errors."
    return text


# --------------------------------------------------------------------------- formatting


def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _utc_time_text(v: dt.datetime | None) -> str:
    """`2026-11-27 05:36:50Z` (UTC), or a dash for none."""
    if v is None:
        return "—"
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC)
    return v.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if v.tzinfo is not None else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _num(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def _cell_text(v: Any) -> str:
    """A cell value as text (maps as k=v, lists comma-separated, timestamps in UTC)."""
    if isinstance(v, dt.datetime):
        return _utc_time_text(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".12g")
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "; ".join(f"{k}={'NULL' if x is None else _cell_text(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        if not v:
            return "[]"
        return ", ".join("NULL" if x is None else _cell_text(x) for x in v)
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    """One <td>: escaped, cut when long (the whole value in its title), numbers right."""
    if v is None:
        return '<td class="null">NULL</td>'
    text = _cell_text(v)
    cls = ' class="num"' if _is_num(v) else ' class="wrap"' if len(text) > WRAP_CHARS else ""
    if len(text) > CELL_CHARS:
        return f'<td{cls} title="{esc(text)}">{esc(text[: CELL_CHARS - 1])}…</td>'
    return f"<td{cls}>{esc(text)}</td>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """A table of `rows` under `columns` (the header of an all-numbers column on the right)."""
    numeric = [
        any(r[i] is not None for r in rows) and all(r[i] is None or _is_num(r[i]) for r in rows)
        for i in range(len(columns))
    ]
    head = "".join(
        ('<th class="num">' if n else "<th>") + f"{esc(c)}</th>"
        for c, n in zip(columns, numeric, strict=True)
    )
    body = "\n".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


# --------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    colour: str = BAR_COLOUR
    note: str = ""  # shown after the value, in red (e.g. "6 targets failed")
    kind: str = ""  # data-kind attribute: what the label is (region, state)
    prefix: str = ""  # shown before the value (e.g. "$")


def bar_chart(title: str, bars: Sequence[Bar], empty: str = "nothing to show") -> str:
    """A horizontal SVG bar chart: one row per bar, label left, value right of the bar."""
    if not bars:
        return f'<p class="muted">{esc(empty)}</p>'
    label_w, right_w, width = 128, 150, 640
    row_h, bar_h, top = 26, 16, 6
    area = width - label_w - right_w
    peak = max(b.value for b in bars) or 1
    height = top * 2 + row_h * len(bars)
    parts = [
        f'<svg class="chart" role="img" aria-label="{esc(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{esc(title)}</title>",
        f'<line x1="{label_w}" y1="{top - 2}" x2="{label_w}" y2="{height - top + 2}" '
        'stroke="#adb5bd" stroke-width="1"/>',
    ]
    for i, b in enumerate(bars):
        y = top + i * row_h
        w = round(area * b.value / peak, 1)
        if b.value and w < 2:
            w = 2.0
        mid = y + row_h / 2
        parts.append(f'<g class="row" data-{esc(b.kind or "label")}="{esc(b.label)}">')
        parts.append(
            f'<text x="{label_w - 8}" y="{mid:.1f}" text-anchor="end" dominant-baseline="central" '
            f'class="label">{esc(b.label)}</text>'
        )
        rect_y = y + (row_h - bar_h) / 2
        parts.append(
            f'<rect class="bar" x="{label_w}" y="{rect_y:.1f}" width="{w}" height="{bar_h}" '
            f'rx="2" fill="{esc(b.colour)}" data-label="{esc(b.label)}" data-value="{b.value}">'
            f"<title>{esc(b.label)}: {esc(b.prefix)}{b.value:,}"
            f"{esc(' · ' + b.note if b.note else '')}</title>"
            "</rect>"
        )
        note = f'<tspan class="note" dx="6">{esc(b.note)}</tspan>' if b.note else ""
        parts.append(
            f'<text x="{label_w + w + 6}" y="{mid:.1f}" dominant-baseline="central" '
            f'class="value">{esc(b.prefix)}{b.value:,}{note}</text>'
        )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- the cost section
# Kept apart from the rest of the page (gather_costs → Costs → _cost_section): its numbers are
# the named queries' own answers (monthly_cost, cost_by_account, rightsizing) run in the
# report's as-of-the-run connection, so the page and `inventory query` never disagree.

COST_SERVICES = 8  # the most expensive services whose utilization is drawn
RIGHTSIZING_ROWS = 10  # rightsizing rows shown
METRICS = (("CPUUtilization", "CPU", "#4263eb"), ("MemoryUtilization", "memory", "#ae3ec9"))
COST_QUERIES = ("monthly_cost", "cost_by_account", "rightsizing")
NO_DATA = {  # service_utilization.status -> what a chart without datapoints says
    "no_datapoints": "no datapoints",
    "disabled": "disabled: nothing runs",
    "failed": "not read: the call failed (see the failures)",
}

# (period_start, average, maximum) of one metric, oldest first
Series = list[tuple[dt.datetime, float | None, float | None]]


@dataclass
class ServiceCost:
    """One service of the fleet as of the run, with its monthly_cost row and utilization."""

    account_id: str
    region: str
    service_name: str
    power: str | None
    scale: int | None
    usd_per_month: float | None
    series: dict[str, Series] = field(default_factory=dict)  # metric -> datapoints
    status: dict[str, str] = field(default_factory=dict)  # metric -> why no datapoints

    @property
    def key(self) -> str:
        return f"{self.account_id}/{self.region}/{self.service_name}"


@dataclass
class Costs:
    """What the cost section shows, or why it cannot (`error`)."""

    services: list[ServiceCost] = field(default_factory=list)  # dearest first
    accounts: list[tuple[str, str | None, int, float]] = field(default_factory=list)
    total: float = 0.0  # cost_by_account's total row
    unpriced: int = 0
    price_sources: list[str] = field(default_factory=list)  # 'api', 'bundled'
    usage: bool = False  # utilization recorded for the scans the page describes
    rightsizing: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def by_power(self) -> list[tuple[str, int, float]]:
        """(power, nodes, USD per month), dearest first."""
        out: dict[str, tuple[int, float]] = {}
        for s in self.services:
            nodes, usd = out.get(s.power or "NULL", (0, 0.0))
            out[s.power or "NULL"] = (nodes + (s.scale or 0), usd + (s.usd_per_month or 0.0))
        return sorted(((p, n, u) for p, (n, u) in out.items()), key=lambda t: (-t[2], t[0]))

    @property
    def saving(self) -> float:
        return sum(float(r["usd_saving_per_month"] or 0) for r in self.rightsizing)


def _named_rows(
    con: duckdb.DuckDBPyConnection, query: queries.NamedQuery, sql_dir: Path
) -> list[dict[str, Any]]:
    """A named query's whole answer with its default parameters, as dicts."""
    values = queries.defaults(query.params, sql_dir)
    cur = con.execute(query.text, {p: values[p] for p in queries.used_params(query.text)} or None)
    columns = [d[0] for d in cur.description or []]
    return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


def _utilization(con: duckdb.DuckDBPyConnection, services: Sequence[ServiceCost]) -> None:
    """Fill in the datapoints of `services` in their newest good scan (`series`), and for a
    metric without any, the status that says why (`status`: no_datapoints, disabled, failed)."""
    by_key = {s.key: s for s in services}
    cur = con.execute(
        "SELECT u.account_id || '/' || u.region || '/' || u.service_name, u.metric, "
        "u.status, u.period_start, u.average, u.maximum FROM service_utilization AS u "
        "JOIN latest_scans AS l ON u.run_id = l.run_id AND u.account_id = l.account_id "
        "AND u.region = l.region "
        "WHERE list_contains($keys, u.account_id || '/' || u.region || '/' || u.service_name) "
        "ORDER BY 1, 2, 4",
        {"keys": list(by_key)},
    )
    for key, metric, status, start, average, maximum in cur.fetchall():
        s = by_key[key]
        if status == "ok" and start is not None:
            s.series.setdefault(metric, []).append((start, average, maximum))
        else:
            s.status[metric] = str(status)


def _has_usage(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute(
        "SELECT count(*) FROM service_utilization AS u JOIN latest_scans AS l "
        "ON u.run_id = l.run_id AND u.account_id = l.account_id AND u.region = l.region"
    ).fetchone()
    return bool(row and row[0])


def gather_costs(
    con: duckdb.DuckDBPyConnection, named: Sequence[queries.NamedQuery], sql_dir: Path
) -> Costs:
    """The cost section's data, read in `con` (already narrowed to the run, see `_scope_to`).
    A failure (a query missing from the SQL folder, a store without the tables) is shown on
    the page, never fatal to the report."""
    by_name = {q.name: q for q in named}
    missing = [n for n in COST_QUERIES if n not in by_name]
    if missing:
        return Costs(error=f"named queries missing from {sql_dir}: {', '.join(missing)}")
    try:
        priced = _named_rows(con, by_name["monthly_cost"], sql_dir)
        per_account = _named_rows(con, by_name["cost_by_account"], sql_dir)
        usage = _has_usage(con)
        rightsizing = _named_rows(con, by_name["rightsizing"], sql_dir) if usage else []
        services = [
            ServiceCost(
                r["account_id"],
                r["region"],
                r["service_name"],
                r["power"],
                r["scale"],
                None if r["usd_per_month"] is None else float(r["usd_per_month"]),
            )
            for r in priced
        ]
        services.sort(key=lambda s: (-(s.usd_per_month or 0.0), s.key))
        if usage:
            _utilization(con, services[:COST_SERVICES])
    except duckdb.Error as e:
        return Costs(error=str(e).strip().splitlines()[0])
    total = next((r for r in per_account if r["level"] == "total"), None)
    return Costs(
        services=services,
        accounts=[
            (r["account_id"], r["account_name"], int(r["services"]), float(r["usd_per_month"]))
            for r in per_account
            if r["level"] == "account"
        ],
        total=float(total["usd_per_month"]) if total else 0.0,
        unpriced=int(total["unpriced"]) if total else 0,
        price_sources=str(total["price_source"] or "").split(", ") if total else [],
        usage=usage,
        rightsizing=rightsizing,
    )


def _usd(v: float | Decimal | None) -> str:
    return "—" if v is None else f"${float(v):,.2f}"


def sparkline(title: str, points: Series, colour: str) -> str:
    """A small SVG line of one metric (0..100 %): the maxima as a line, the averages as a
    shaded area beneath, one step per datapoint."""
    width, height, pad = 220, 44, 2
    values = [(a, m) for _, a, m in points]
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def y(v: float | None) -> float:
        return pad + (height - 2 * pad) * (1 - min(max(v or 0.0, 0.0), 100.0) / 100)

    xs = [pad + i * step for i in range(len(values))]
    peak = " ".join(f"{x:.1f},{y(m):.1f}" for x, (_, m) in zip(xs, values, strict=True))
    area = (
        f"{xs[0]:.1f},{height - pad} "
        + " ".join(f"{x:.1f},{y(a):.1f}" for x, (a, _) in zip(xs, values, strict=True))
        + f" {xs[-1]:.1f},{height - pad}"
    )
    return (
        f'<svg class="spark" role="img" aria-label="{esc(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        f'data-points="{len(values)}"><title>{esc(title)}</title>'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f9fa"/>'
        f'<polygon points="{area}" fill="{esc(colour)}" fill-opacity="0.18"/>'
        f'<polyline points="{peak}" fill="none" stroke="{esc(colour)}" stroke-width="1.5"/>'
        "</svg>"
    )


def _metric_cell(s: ServiceCost, metric: str, word: str, colour: str) -> str:
    points = s.series.get(metric, [])
    if not points:
        why = NO_DATA.get(s.status.get(metric, ""), s.status.get(metric, "not collected"))
        return f'<td class="null" data-status="{esc(s.status.get(metric, ""))}">{esc(why)}</td>'
    peak = max((m for _, _, m in points if m is not None), default=0.0)
    mean = [a for _, a, _ in points if a is not None]
    avg = sum(mean) / len(mean) if mean else 0.0
    title = f"{word} of {s.service_name}: max {peak:.1f} %, average {avg:.1f} %"
    return (
        f'<td class="spark" data-metric="{esc(metric)}">{sparkline(title, points, colour)}'
        f'<div class="muted">max {peak:.1f} % · avg {avg:.1f} % · {len(points)} points</div></td>'
    )


def _utilization_table(c: Costs) -> str:
    rows = []
    for s in c.services[:COST_SERVICES]:
        cells = "".join(_metric_cell(s, m, w, col) for m, w, col in METRICS)
        rows.append(
            f'<tr data-service="{esc(s.key)}"><td>{esc(s.service_name)}<div class="muted">'
            f"{esc(s.account_id)} · {esc(s.region)}</div></td>"
            f"<td>{esc(s.power or 'NULL')} × {esc(s.scale)}</td>"
            f'<td class="num">{esc(_usd(s.usd_per_month))}</td>{cells}</tr>'
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in ("service", "power × scale", "per month"))
    head += "".join(f"<th>{esc(w)} (max line, average shaded)</th>" for _, w, _ in METRICS)
    return (
        f'<div class="scroll"><table class="utilization"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _rightsizing_table(c: Costs) -> str:
    down = [r for r in c.rightsizing if r["action"] == "downsize"]
    if not down:
        return '<p class="none muted">Rightsizing: no service can run cheaper with the headroom kept.</p>'
    rows = [
        (
            r["account_id"],
            r["region"],
            r["service_name"],
            f"{r['power']} × {r['scale']}",
            r["usd_per_month"],
            f"{r['recommended_power']} × {r['recommended_scale']}",
            r["recommended_usd_per_month"],
            r["usd_saving_per_month"],
            r["cpu_max_pct"],
            r["memory_max_pct"],
            min(r["cpu_datapoints"], r["memory_datapoints"]),
        )
        for r in down[:RIGHTSIZING_ROWS]
    ]
    columns = ["account", "region", "service", "now", "USD now", "recommended", "USD then"]
    columns += ["saving", "CPU max %", "memory max %", "datapoints"]
    more = f" (the first {RIGHTSIZING_ROWS}; inventory query rightsizing for all)"
    count = f"{len(down):,} service{'s' if len(down) != 1 else ''} to downsize" + (
        more if len(down) > RIGHTSIZING_ROWS else ""
    )
    return f'<p class="count">{esc(count)}</p>' + _table(columns, rows, "rightsizing")


def _cost_section(c: Costs | None) -> str:
    """The cost section: totals, cost by account and by power, rightsizing's savings, and the
    utilization of the dearest services; without utilization data it says so."""
    if c is None:
        return ""
    if c.error is not None:
        return f'<p class="err" id="costs-error">No cost section: {esc(c.error)}</p>'
    sources = ", ".join(c.price_sources) or "none"
    cards = [
        _card("monthly cost", _usd(c.total), f"prices: {sources}"),
        _card(
            "services priced", _num(len(c.services) - c.unpriced), f"{c.unpriced} without a price"
        ),
    ]
    if c.usage:
        n = sum(1 for r in c.rightsizing if r["action"] == "downsize")
        what = f"a month, {n} service{'s' if n != 1 else ''}"
        unpriced = sum(1 for r in c.rightsizing if r["action"] == "unpriced")
        if unpriced:  # low usage, but no run prices to judge by (rightsizing's 'unpriced')
            what += f"; {unpriced} not judged: no prices"
        cards.append(_card("rightsizing saves", _usd(c.saving), what))
    account_bars = [
        Bar(name or acct, round(usd), prefix="$", kind="account")
        for acct, name, _, usd in c.accounts
    ]
    power_bars = [
        Bar(f"{p} ({n} nodes)", round(usd), prefix="$", kind="power") for p, n, usd in c.by_power
    ]
    out = (
        '<div class="cards">' + "".join(cards) + "</div>"
        '<div class="charts" style="margin-top:14px">'
        '<div class="panel" id="cost-by-account"><h3>Monthly cost by account (USD)</h3>'
        + bar_chart("Monthly cost by account", account_bars, "no services")
        + '</div><div class="panel" id="cost-by-power"><h3>Monthly cost by power (USD)</h3>'
        + bar_chart("Monthly cost by power", power_bars, "no services")
        + "</div></div>"
    )
    if not c.usage:
        return out + (
            '<p class="muted" id="no-usage">No utilization data for the scans this page '
            "describes: <code>inventory collect --usage</code> records it. Rightsizing and "
            "the utilization charts need it.</p>"
        )
    return (
        out
        + '<h3 style="margin-top:18px" id="rightsizing">Rightsizing</h3>'
        + _rightsizing_table(c)
        + f'<h3 style="margin-top:18px" id="utilization">Utilization of the {COST_SERVICES} '
        "most expensive services</h3>" + _utilization_table(c)
    )


# --------------------------------------------------------------------------- the page

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2933;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", "DejaVu Sans", sans-serif; }
header { background: #1f2933; color: #f8f9fa; padding: 20px 32px 18px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .meta { color: #ced4da; font-size: 13px; }
header .meta code { color: #f8f9fa; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 32px 48px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #dde1e6; }
h3 { font-size: 15px; margin: 0 0 2px; }
h3 code { font-size: 14px; }
details > summary { cursor: default; color: #3e4c59; margin: 12px 0 6px; font-weight: 600; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas,
  "Liberation Mono", "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px;
  font-weight: 600; text-transform: uppercase; letter-spacing: .03em; vertical-align: 2px; }
.badge.complete { background: #d3f9d8; color: #2b8a3e; }
.badge.partial { background: #fff3bf; color: #8f5f00; }
.badge.failed { background: #ffe3e3; color: #c92a2a; }
.badge.running { background: #dbe4ff; color: #3b5bdb; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: 10px 12px; }
.card .k { color: #616e7c; font-size: 12px; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .v.bad { color: #c92a2a; }
.card .sub { color: #7b8794; font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 14px; }
.panel { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: 12px 14px; }
.panel h3 { margin-bottom: 8px; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg.chart text { font-size: 12px; fill: #1f2933; font-family: inherit; }
svg.chart text.value { font-variant-numeric: tabular-nums; fill: #3e4c59; }
svg.chart tspan.note { fill: #c92a2a; }
svg.spark { display: block; }
td.spark { min-width: 240px; }
.muted { color: #7b8794; }
.ended { font-size: 15px; margin: 16px 0 0; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { text-align: left; padding: 5px 9px; border-bottom: 1px solid #edf0f2;
  vertical-align: top; }
th.num { text-align: right; }
th { background: #f8f9fa; font-weight: 600; color: #3e4c59; white-space: nowrap;
  position: sticky; top: 0; }
td { white-space: nowrap; }
td.wrap { white-space: normal; overflow-wrap: break-word; min-width: 240px; max-width: 520px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.null { color: #9aa5b1; font-style: italic; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.failures td:nth-child(4), table.groups td:nth-child(2) { color: #c92a2a; font-weight: 600; }
.finding { margin: 18px 0 0; }
.finding .desc { margin: 0 0 6px; color: #3e4c59; }
.finding .count { color: #616e7c; font-size: 12.5px; margin: 0 0 6px; }
.finding .none { color: #2b8a3e; }
.finding .err { color: #c92a2a; white-space: pre-wrap; }
nav.toc { font-size: 13px; columns: 3 240px; margin: 0; padding-left: 18px; }
nav.toc li { break-inside: avoid; }
nav.toc .n { color: #7b8794; }
footer { color: #7b8794; font-size: 12px; margin-top: 36px; }
@media print { header { background: #fff; color: #000; } header .meta { color: #333; }
  .scroll { overflow: visible; } }
"""

# No fetch of any kind: no script, no remote style, font, image or frame.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _card(key: str, value: str, sub: str = "", bad: bool = False) -> str:
    cls = "v bad" if bad else "v"
    sub_html = f'<div class="sub">{esc(sub)}</div>' if sub else ""
    return (
        f'<div class="card" data-total="{esc(key)}"><div class="k">{esc(key)}</div>'
        f'<div class="{cls}">{esc(value)}</div>{sub_html}</div>'
    )


def _totals(run: dict[str, Any]) -> str:
    wall = None
    if run.get("finished_at") and run.get("started_at"):
        wall = (run["finished_at"] - run["started_at"]).total_seconds()
    calls, retries = run.get("api_calls"), run.get("retries")
    rate = f"{calls / wall:,.0f} per second" if calls and wall else ""
    failed = run.get("targets_failed") or 0
    cards = [
        _card("accounts", _num(run.get("accounts"))),
        _card("targets", _num(run.get("targets")), "account × region"),
        _card("targets ok", _num(run.get("targets_ok"))),
        _card("targets failed", _num(run.get("targets_failed")), bad=failed > 0),
        _card("services", _num(run.get("services"))),
        _card("deployments", _num(run.get("deployments"))),
        _card("containers", _num(run.get("containers"))),
        _card("API calls", _num(calls), rate),
        _card("retries", _num(retries)),
        _card("wall time", _duration(wall)),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _charts(r: Report) -> str:
    with_services = [(reg, n, f) for reg, n, f in r.regions if n or f]
    quiet = sorted(reg for reg, n, f in r.regions if not n and not f)
    region_bars = [
        Bar(
            reg,
            n,
            FAIL_COLOUR if f and not n else BAR_COLOUR,
            f"{f} target{'s' if f != 1 else ''} failed" if f else "",
            "region",
        )
        for reg, n, f in with_services
    ]
    state_bars = [Bar(s, n, STATE_COLOURS.get(s, "#748ffc"), kind="state") for s, n in r.states]
    quiet_html = (
        f'<p class="muted">Scanned, no services: {esc(", ".join(quiet))}.</p>' if quiet else ""
    )
    return (
        '<div class="charts">'
        '<div class="panel" id="by-region"><h3>Services by region</h3>'
        + bar_chart("Services by region", region_bars, "no region scanned in this run")
        + quiet_html
        + "</div>"
        '<div class="panel" id="by-state"><h3>Services by state</h3>'
        + bar_chart("Services by state", state_bars, "no services in this run")
        + "</div></div>"
    )


def _failures(r: Report) -> str:
    if not r.errors_total:
        if r.run.get("status") == "complete":
            return '<p class="none muted">None: every account and region answered.</p>'
        none = "No errors recorded for this run" + ("" if r.scans else ", and it has no scans")
        return f'<p class="muted">{esc(none)}: see why it ended, above.</p>'
    shown = len(r.errors)
    count = (
        f"{r.errors_total:,} rows in the errors table, by error:"
        if shown == r.errors_total
        else f"{r.errors_total:,} rows in the errors table (the first {shown:,} listed below), by error:"
    )
    rows = [
        (
            e["account_id"],
            e["region"] if e["region"] is not None else "(every region)",
            e["operation"],
            e["error_code"],
            e["attempts"],
            e["message"],
        )
        for e in r.errors
    ]
    groups = [
        (op, code, region if region is not None else "(every region)", n, accounts)
        for op, code, region, n, accounts in r.error_groups
    ]
    summary = _table(["operation", "error_code", "region", "rows", "accounts"], groups, "groups")
    detail = _table(
        ["account", "region", "operation", "error_code", "attempts", "message"],
        rows,
        "failures",
    )
    opened = " open" if r.errors_total <= 25 else ""
    return (
        f'<p class="count muted">{esc(count)}</p>{summary}'
        f"<details{opened}><summary>Every failure</summary>{detail}</details>"
    )


def _finding(f: Finding) -> str:
    head = (
        f'<section class="finding" id="q-{esc(f.name)}" data-query="{esc(f.name)}">'
        f"<h3><code>{esc(f.name)}</code></h3>"
        f'<p class="desc">{esc(f.description or "(no description)")}</p>'
    )
    if f.params:
        shown = ", ".join(f"{k}={Path(v).name if '/' in v else v}" for k, v in f.params.items())
        head += f'<p class="count">parameters (defaults): <code>{esc(shown)}</code></p>'
    if f.error is not None:
        return head + f'<p class="err">this query failed: {esc(f.error)}</p></section>'
    if f.total == 0:
        return head + '<p class="count none">no rows: nothing to report.</p></section>'
    count = f"{f.total:,} row{'s' if f.total != 1 else ''}"
    if f.total > len(f.rows):
        count += f"; the first {len(f.rows)} shown (inventory query {f.name} for all)"
    if f.hidden:
        count += f"; column {', '.join(f.hidden)} not shown (secrets)"
    return head + f'<p class="count">{esc(count)}</p>' + _table(f.columns, f.rows) + "</section>"


def _findings(r: Report) -> str:
    ran = [f for f in r.findings if not f.needs]
    needs = [f for f in r.findings if f.needs]
    if not r.findings:
        return '<p class="muted">No named queries found.</p>'
    toc = "".join(
        f'<li><a href="#q-{esc(f.name)}">{esc(f.name)}</a> '
        f'<span class="n">({"error" if f.error else f"{f.total:,}"})</span></li>'
        for f in ran
    )
    out = f'<nav class="toc"><ul>{toc}</ul></nav>' if ran else ""
    out += "".join(_finding(f) for f in ran)
    if needs:
        items = "".join(
            f'<li data-needs="{esc(f.name)}"><code>{esc(f.name)}</code>: '
            f"{esc(f.description)} <span class='muted'>(inventory query {esc(f.name)} "
            + esc(" ".join(f"--param {p}=VALUE" for p in f.needs))
            + ")</span></li>"
            for f in needs
        )
        out += (
            '<h3 style="margin-top:22px">Queries that need a parameter (not run)</h3>'
            f"<ul>{items}</ul>"
        )
    return out


def _fleet_text(fleet: tuple[str | None, int, int]) -> str:
    defined_by, accounts, pairs = fleet
    size = (
        f"{accounts:,} account{'s' if accounts != 1 else ''}, "
        f"{pairs:,} account × region pair{'s' if pairs != 1 else ''}"
    )
    if defined_by is None:
        return f"The fleet: {size} (every pair scanned so far; no run defines it yet)."
    return f"The fleet: {size}, as planned by run {defined_by} (and scanned ok since)."


def render(r: Report) -> str:
    """The whole page."""
    run = r.run
    status = str(run.get("status") or "unknown")
    title = f"Lightsail container inventory: run {r.run_id}"
    meta = (
        f"run <code>{esc(r.run_id)}</code> "
        f'<span class="badge {esc(status)}">{esc(status)}</span> · '
        f"started {esc(_utc_time_text(run.get('started_at')))} · finished {esc(_utc_time_text(run.get('finished_at')))}"
        f" · collected by lightsail-inventory {esc(run.get('tool_version') or '?')}"
    )
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>Lightsail container inventory</h1><div class='meta'>{meta}</div></header>",
        "<main>",
        f'<p class="ended" id="ended" data-status="{esc(status)}">{esc(r.ended)}</p>',
        '<h2 id="totals">Totals</h2>',
        _totals(run),
        '<h2 id="charts">Services</h2>',
        _charts(r),
        '<h2 id="failures">Failures and anomalies</h2>',
        _failures(r),
        '<h2 id="costs">Cost and utilization</h2>',
        _cost_section(r.costs),
        '<h2 id="findings">Findings</h2>',
        '<p class="muted">The named queries of <code>sql/queries/</code>, as of this run: for '
        "each account × region of the fleet, its newest good scan up to this run. "
        f"{esc(_fleet_text(r.fleet))} Environment values are never shown.</p>",
        _findings(r),
        f"<footer>Generated {esc(_utc_time_text(r.generated_at))} by lightsail-inventory "
        f"{esc(__version__)} (<code>inventory report</code>). Self-contained: no script, no "
        "external resource.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(body) + "\n"


def build(
    con: duckdb.DuckDBPyConnection,
    source: str,
    run_id: str | None = None,
    sql_dir: Path | None = None,
    generated_at: dt.datetime | None = None,
) -> Report:
    """Gather and render the report of `run_id` (default: the newest finished run)."""
    report = gather(con, source, run_id, sql_dir, generated_at)
    report.html = render(report)
    return report


@contextlib.contextmanager
def reading(db: Path, lake: str | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """(a connection of its own, its name for messages): over the lake at `lake` when given
    (`report --lake`: no store needed), else over the store `db`, read-only."""
    if lake is not None:
        con = lakequery.open_lake(lake)
        try:
            yield con, lake
        finally:
            con.close()
        return
    with Store.open(db, read_only=True) as store, store.connection(read_only=True) as con:
        yield con, str(store.path)


def load(
    db: Path, run_id: str | None = None, sql_dir: Path | None = None, lake: str | None = None
) -> Report:
    """The report of `db` (read-only), or of the lake `lake`, not written anywhere yet."""
    with reading(db, lake) as (con, source):
        return build(con, source, run_id, sql_dir)


def write(
    db: Path,
    out: Path,
    run_id: str | None = None,
    sql_dir: Path | None = None,
    lake: str | None = None,
) -> Report:
    """Write the report of `db` (or of the lake `lake`) to `out` (whole or not at all: a
    temporary file renamed). A new report is 0600 (folders made for it 0700;
    INVENTORY_GROUP_READABLE=1: 0640 and 0750); one written again keeps its mode."""
    report = load(db, run_id, sql_dir, lake)
    out = Path(out)
    try:
        make_dirs(out.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(report.html)
            keep_mode(out, Path(tmp))  # the mode of the report it replaces, else 0600
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise UsageError(f"--html {out}: cannot write the report: {e.strerror or e}") from e
    return report
