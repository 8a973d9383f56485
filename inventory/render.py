"""Terminal output: the progress bar, the end-of-run summary and query results."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from inventory.model import FailureGroup, group_failures
from inventory.terminal import plural, visible

if TYPE_CHECKING:  # importing the pipeline loads aiobotocore, duckdb, pyarrow
    from inventory.run.pipeline import RunSummary


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


class ProgressView:
    """A rich progress bar on a terminal; silent when stderr is not one."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self.failed = 0

    def __enter__(self) -> ProgressView:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]collecting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("targets · {task.fields[failed]} failed"),
                TimeElapsedColumn(),
                console=console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def start(self, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task("collect", total=total, failed=0)

    def advance(self, ok: bool) -> None:
        if not ok:
            self.failed += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, failed=self.failed)


def summary_table(s: RunSummary) -> Table:
    colour = {"complete": "green", "partial": "yellow"}.get(s.status, "red")
    t = Table(
        title=f"run {visible(s.run_id)}: [{colour}]{s.status}[/]", show_header=False, box=None
    )
    t.add_column(style="bold")
    t.add_column(justify="right")
    n = s.tally
    calls_s = n.api_calls / s.wall_seconds if s.wall_seconds > 0 else 0.0
    rows = [
        ("accounts", f"{s.accounts:,}"),
        ("targets (account × region)", f"{s.targets:,}"),
        ("  ok", f"{n.targets_ok:,}"),
        ("  failed", f"{n.targets_failed:,}"),
        ("services", f"{n.services:,}"),
        ("deployments", f"{n.deployments:,}"),
        ("containers", f"{n.containers:,}"),
        ("API calls", f"{n.api_calls:,}  ({calls_s:,.0f}/s)"),
        ("retries", f"{n.retries:,}"),
        ("anomalies", f"{n.anomalies:,}"),
        (
            "wall time",
            f"{s.wall_seconds:.2f} s" + (f" ({s.workers} workers)" if s.workers > 1 else ""),
        ),
        ("database", s.db_path),
    ]
    if s.parquet_dest:
        rows.append(("parquet", f"{s.parquet_dest} ({plural(len(s.parquet_files), 'file')})"))
    for k, v in rows:
        t.add_row(k, Text(visible(v)))
    return t


FAILURE_GROUPS_SHOWN = 20  # groups printed; the errors table has every failure


def failure_cells(g: FailureGroup) -> tuple[str, str, str, str, str, str]:
    """One group of failures as text cells, every value whole: region, operation, error
    code, how many failed, example accounts, the first message. AWS's text: control
    characters shown escaped, never obeyed."""
    more = g.count - len(g.accounts)
    return (
        visible(g.region or "(every region)"),
        visible(g.operation),
        visible(g.error_code),
        plural(g.count, "target") if g.region else plural(g.count, "account"),
        visible(", ".join(g.accounts)) + (f" and {more} more" if more > 0 else ""),
        visible(g.message),
    )


def print_failures(out: Console, s: RunSummary) -> None:
    """The run's failures grouped by (region, operation, error code), biggest first, with
    counts and example accounts; then how many groups are not shown and where every error
    is. On a terminal a table; elsewhere (cron, a log file) one line per group with every
    value whole, never cut to the terminal's width. Nothing when nothing failed."""
    failures = s.tally.failures
    if not failures:
        return
    groups = group_failures(failures)
    shown, rest = groups[:FAILURE_GROUPS_SHOWN], groups[FAILURE_GROUPS_SHOWN:]
    cells = [failure_cells(g) for g in shown]
    title = (
        f"failures: {plural(s.tally.targets_failed, 'target')} failed, "
        f"{plural(len(groups), 'group')} by region and error"
    )
    regions = s.targets // s.accounts if s.accounts else 0

    def targets(gs: list[FailureGroup]) -> int:  # an account's AssumeRole: all its regions
        return sum(g.count if g.region else g.count * regions for g in gs)

    notes = []
    if rest:
        notes.append(
            f"and {plural(len(rest), 'more group')} "
            f"({plural(targets(rest), 'more failed target')}), not shown"
        )
    if targets(groups) < s.tally.targets_failed:
        notes.append(f"grouped from the first {plural(len(failures), 'failure')} of the run")
    # a run that wrote its lake to S3 (a container's, say) may have a throw-away --db
    lake = f" (or --lake {s.parquet_dest})" if (s.parquet_dest or "").startswith("s3://") else ""
    notes.append(
        "every error is in the errors table: inventory query "
        f"\"select * from errors where run_id = '{s.run_id}'\" --db {s.db_path}{lake}"
    )
    if out.is_terminal:  # short values whole, long ones (accounts, message) folded
        columns = ("region", "operation", "error", "failed", "example accounts", "message")
        print_wide(rows_table(columns, cells, title))
    else:
        lines = [title]
        lines += [f"  {'  '.join(row[:4])}  ({row[4]}): {row[5]}" for row in cells]
        out.print(Text("\n".join(lines)), soft_wrap=True)
    out.print(Text("\n".join(notes)), soft_wrap=True)


def _json_value(v: Any) -> Any:
    """A query result's cell as a JSON value (times in ISO 8601, decimals as floats)."""
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).isoformat() if v.tzinfo else v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Rows as csv or json text (the table format is rendered by `rows_table`)."""
    if fmt == "json":
        return json.dumps(
            [dict(zip(columns, map(_json_value, r), strict=True)) for r in rows], indent=2
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(v) for v in r])
    return buf.getvalue()


def _csv_cell(v: Any) -> Any:
    """Booleans as `true` / `false` and maps and lists as JSON, as the json format has them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(_json_value(v))
    return _json_value(v)


SHORT_CELL = 24  # columns whose values are all this short are never wrapped
WIDEST = 400  # a results table is printed at its natural width, up to this many columns


def print_wide(table: Table) -> None:
    """A results table no narrower than its short columns need (ids, regions and states stay
    whole; long text folds): a terminal narrower than that wraps lines, as psql's do."""
    out = console()
    # the least width at which the short columns stay whole (long ones fold within it)
    need = Console(width=WIDEST).measure(table).minimum
    if need > out.width:
        out = Console(width=need, highlight=False, soft_wrap=False)
    out.print(table)


def rows_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> Table:
    # values are shown as stored, control characters made visible (terminal.visible)
    cells = [["" if v is None else visible(str(_json_value(v))) for v in r] for r in rows]
    t = Table(title=None if title is None else Text(visible(title)))
    for i, c in enumerate(columns):
        # short values (ids, regions, states) stay whole; long ones fold
        widest = max((len(row[i]) for row in cells), default=0)
        short = widest <= SHORT_CELL
        t.add_column(
            Text(visible(c)), overflow="fold", no_wrap=short, min_width=widest if short else None
        )
    for row in cells:  # Text: values are shown as stored, never read as markup
        t.add_row(*(Text(v) for v in row))
    return t
