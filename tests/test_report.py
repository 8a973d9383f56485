"""`inventory report --html`: one self-contained page, checked by parsing it.

A module-scoped store holds two real collects against the simulator (real HTTP, real DuckDB):
  run 1: fleet generation 0, every target ok, environment values fingerprinted;
  run 2: generation 1 (`evolve()`), Lightsail AccessDenied in DENIED_REGION for every
         account and AssumeRole denied for DENIED_ACCOUNT: 'partial'. It is collected
         with --include-env-values, so the store holds real secrets the page must not show.
The page is parsed with html.parser into a small tree; totals, chart bars and failure rows
are compared with the store, findings with `inventory query`. Escaping is tested with a
hand-built store whose values are HTML. Chromium is not needed (see the report's docs for
the screenshot command).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import use_simulator_env
from typer.testing import CliRunner

from inventory import cli
from inventory.answers import report
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator
from inventory.storage import schema
from inventory.storage.store import Store

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DENIED_REGION = "ap-northeast-2"  # the showcase account has services there
EMPTY_REGION = "eu-central-1"

runner = CliRunner()


# --------------------------------------------------------------------------- a tiny DOM


VOID = {"meta", "br", "img", "input", "link", "hr", "area", "base", "col", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.iter()
            if n.tag == tag
            and all(
                (v in n.attrs.get("class", "").split()) if k == "class" else n.attrs.get(k) == v
                for k, v in want.items()
            )
        ]

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.tags.append((tag, node.attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.tags.append((tag, node.attrs))
        self.stack[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(text: str) -> TreeBuilder:
    p = TreeBuilder()
    p.feed(text)
    p.close()
    assert [n.tag for n in p.stack] == ["#root"], "unclosed elements"
    return p


def table_rows(table: Node) -> tuple[list[str], list[list[str]]]:
    head = [th.text() for th in table.find("thead").find_all("th")]
    rows = [[td.text() for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    return head, rows


def totals(doc: Node) -> dict[str, str]:
    return {
        card.attrs["data-total"]: card.find("div", **{"class": "v"}).text()
        for card in doc.find_all("div", **{"class": "card"})
    }


def bars(doc: Node, panel: str) -> dict[str, int]:
    found = {}
    for rect in doc.find("div", id=panel).find_all("rect", **{"class": "bar"}):
        assert rect.attrs["data-label"] not in found
        found[rect.attrs["data-label"]] = int(rect.attrs["data-value"])
    return found


# --------------------------------------------------------------------------- the store


@dataclass
class Inventory:
    db: Path
    run1: str
    run2: str
    gens: tuple[Fleet, Fleet]
    accounts: tuple[str, ...]
    denied_account: str
    regions: tuple[str, ...]


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inventory]:
    gen0 = Fleet(6, seed=1)
    gen1 = gen0.evolve()
    regions = {EMPTY_REGION, DENIED_REGION}
    for g in (gen0, gen1):
        for acct in g.all_account_ids:
            regions.update(g.regions_of(acct))
    accounts = gen0.all_account_ids
    denied_account = max(gen0.account_ids[1:], key=lambda a: (len(gen1.regions_of(a)), a))

    def plan(include_env_values: bool) -> Plan:
        return Plan(
            accounts=tuple(
                Account(id=a, role_arn=f"arn:aws:iam::{a}:role/LightsailInventoryReader")
                for a in accounts
            ),
            regions=tuple(sorted(regions)),
            options=Options(include_env_values=include_env_values),
        )

    db = tmp_path_factory.mktemp("report") / "inventory.duckdb"
    faults = Faults()
    with pytest.MonkeyPatch.context() as mp, Simulator(gen0, faults) as sim:
        use_simulator_env(mp, sim)
        first = asyncio.run(run_collect(plan(False), db, None))
        assert first.status == "complete"
        sim.set_fleet(gen1)
        faults.denied_regions.add(("*", DENIED_REGION))
        faults.denied_accounts.add(denied_account)
        second = asyncio.run(run_collect(plan(True), db, None))
        assert second.status == "partial"
    yield Inventory(
        db,
        first.run_id,
        second.run_id,
        (gen0, gen1),
        accounts,
        denied_account,
        tuple(sorted(regions)),
    )


def rows(db: Path, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    store = Store.open(db, read_only=True)
    try:
        return store.query_rows(sql, params)[1]
    finally:
        store.close()


def the_run(db: Path, run_id: str) -> dict[str, Any]:
    store = Store.open(db, read_only=True)
    try:
        run = store.run(run_id)
    finally:
        store.close()
    assert run is not None
    return run


@pytest.fixture(scope="module")
def page(inv: Inventory, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Node]:
    """The page `inventory report --html` writes for the store (its latest run)."""
    out = tmp_path_factory.mktemp("page") / "sub" / "report.html"
    result = runner.invoke(cli.app, ["report", "--html", str(out), "--db", str(inv.db)])
    assert result.exit_code == 0, result.output
    assert inv.run2 in result.stdout and str(out.name) in result.stdout
    assert list(out.parent.iterdir()) == [out]  # written whole: no temporary file left
    text = out.read_text(encoding="utf-8")
    return text, parse(text).root


# --------------------------------------------------------------------------- the page


def test_totals_are_the_runs_row(inv: Inventory, page: tuple[str, Node]) -> None:
    _, doc = page
    run = the_run(inv.db, inv.run2)
    shown = totals(doc)
    for key, column in [
        ("accounts", "accounts"),
        ("targets", "targets"),
        ("targets ok", "targets_ok"),
        ("targets failed", "targets_failed"),
        ("services", "services"),
        ("deployments", "deployments"),
        ("containers", "containers"),
        ("API calls", "api_calls"),
        ("retries", "retries"),
    ]:
        assert shown[key] == f"{run[column]:,}", key
    assert run["targets_failed"] == len(inv.accounts) + len(inv.regions) - 1
    assert run["services"] > 0 and run["targets_ok"] > 0
    assert shown["wall time"].endswith(" s")
    header = doc.find("header").text()
    assert inv.run2 in header and "partial" in header


def test_a_bar_per_region_with_services_and_per_state(
    inv: Inventory, page: tuple[str, Node]
) -> None:
    _, doc = page
    by_region = dict(
        rows(
            inv.db,
            "SELECT region, count(*) FROM container_services WHERE run_id = ? GROUP BY 1",
            [inv.run2],
        )
    )
    region_bars = bars(doc, "by-region")
    assert len(by_region) >= 3
    # every region with services has its bar; a region whose targets failed has one too,
    # that says so (the denied region stored no services this run; the denied account
    # failed everywhere, so even the empty region had a failure)
    assert {r: n for r, n in region_bars.items() if n} == by_region
    assert region_bars[DENIED_REGION] == 0 and region_bars[EMPTY_REGION] == 0
    assert set(region_bars) == set(inv.regions)
    denied = doc.find("g", data_region=DENIED_REGION)
    assert f"{len(inv.accounts)} targets failed" in denied.text()
    assert "1 target failed" in doc.find("g", data_region=EMPTY_REGION).text()

    by_state = dict(
        rows(
            inv.db,
            "SELECT state, count(*) FROM container_services WHERE run_id = ? GROUP BY 1",
            [inv.run2],
        )
    )
    assert bars(doc, "by-state") == by_state
    # widths follow the values: the biggest bar is the longest
    rects = doc.find("div", id="by-state").find_all("rect", **{"class": "bar"})
    widest = max(rects, key=lambda r: float(r.attrs["width"]))
    assert int(widest.attrs["data-value"]) == max(by_state.values())


def test_failures_list_every_errors_row(inv: Inventory, page: tuple[str, Node]) -> None:
    _, doc = page
    head, shown = table_rows(doc.find("table", **{"class": "failures"}))
    assert head == ["account", "region", "operation", "error_code", "attempts", "message"]
    stored = rows(
        inv.db,
        "SELECT account_id, coalesce(region, '(every region)'), operation, error_code, "
        "attempts::VARCHAR, message FROM errors WHERE run_id = ?",
        [inv.run2],
    )
    assert sorted(map(tuple, shown)) == sorted(stored)
    keys = {tuple(r[:5]) for r in shown}
    for acct in inv.accounts:
        if acct != inv.denied_account:
            assert (
                acct,
                DENIED_REGION,
                "GetContainerServices",
                "AccessDeniedException",
                "1",
            ) in keys
    assert (inv.denied_account, "(every region)", "AssumeRole", "AccessDenied", "1") in keys
    # the summary by error
    _, groups = table_rows(doc.find("table", **{"class": "groups"}))
    n = str(len(inv.accounts) - 1)
    assert ["GetContainerServices", "AccessDeniedException", DENIED_REGION, n, n] in groups
    assert ["AssumeRole", "AccessDenied", "(every region)", "1", "1"] in groups


def _cli_query(db: Path, name: str) -> list[dict[str, Any]]:
    result = runner.invoke(cli.app, ["query", name, "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert isinstance(out, list)
    return out


def test_findings_are_every_named_query_without_a_required_parameter(
    inv: Inventory, page: tuple[str, Node]
) -> None:
    _, doc = page
    sections = {s.attrs["data-query"]: s for s in doc.find_all("section", **{"class": "finding"})}
    needs = {li.attrs["data-needs"] for li in doc.find_all("li") if "data-needs" in li.attrs}
    files = sorted((SQL_DIR / "queries").glob("*.sql"))
    assert len(files) >= 5
    for path in files:
        description, params = report.queries.query_header(path.read_text())
        if any(default is None for default in params.values()):
            assert path.stem in needs and path.stem not in sections
            continue
        section = sections.pop(path.stem)
        assert description in section.text()
        assert "this query failed" not in section.text(), section.text()
        # the latest run: what `inventory query NAME` answers now, first rows shown
        expected = _cli_query(inv.db, path.stem)
        tables = section.find_all("table")
        if not expected:
            assert not tables and "no rows" in section.text()
            continue
        head, shown = table_rows(tables[0])
        assert len(shown) == min(len(expected), report.FINDING_ROWS)
        assert head == [c for c in expected[0] if c != "environment"]
        assert f"{len(expected):,} row" in section.text()
    assert not sections, f"sections without a query file: {sorted(sections)}"
    assert "services_in_account" in needs


def test_findings_are_as_of_the_reported_run(inv: Inventory, tmp_path: Path) -> None:
    out = tmp_path / "old.html"
    result = runner.invoke(
        cli.app, ["report", "--html", str(out), "--db", str(inv.db), "--run", inv.run1]
    )
    assert result.exit_code == 0, result.output
    doc = parse(out.read_text()).root
    run = the_run(inv.db, inv.run1)
    assert totals(doc)["services"] == f"{run['services']:,}"
    assert totals(doc)["targets failed"] == "0"
    assert "None: every account and region answered" in doc.text()
    # a region scanned without services and without failures is named, not drawn
    assert EMPTY_REGION not in bars(doc, "by-region")
    assert EMPTY_REGION in doc.find("div", id="by-region").find("p").text()
    # as of run 1 there is no previous run: nothing changed; run 2 has changes
    old = doc.find("section", data_query="changes_since_previous_run")
    assert "no rows" in old.text() and not old.find_all("table")
    assert _cli_query(inv.db, "changes_since_previous_run")
    # services_by_state as of run 1: run 1's own services, not run 2's
    section = doc.find("section", data_query="services_by_state")
    expected = rows(
        inv.db,
        "SELECT count(*) FROM (SELECT DISTINCT account_id, region, state "
        "FROM container_services WHERE run_id = ?)",
        [inv.run1],
    )[0][0]
    assert f"{expected:,} rows" in section.text()


def test_no_environment_values_or_fingerprints(inv: Inventory, tmp_path: Path) -> None:
    """Run 2 stored raw values, run 1 fingerprints: neither reaches the page, even through
    a query that selects the environment column."""
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "queries" / "env_dump.sql").write_text(
        "-- Every container with its environment (a query that should not be written).\n"
        "SELECT service_name, container_name, environment FROM latest_containers\n"
        "ORDER BY cardinality(environment) DESC\n"
    )
    secrets = inv.gens[1].secrets() | inv.gens[0].secrets()
    stored = rows(
        inv.db,
        "SELECT DISTINCT unnest(map_values(environment)) FROM containers WHERE run_id = ?",
        [inv.run2],
    )
    assert {v for (v,) in stored} & secrets, "run 2 must hold raw values for this test"
    for run_id in (inv.run1, inv.run2):
        text = report.load(inv.db, run_id, sql).html
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"environment values on the page: {leaked[:3]}"
        assert "hmac-sha256:" not in text
        dump = parse(text).root.find("section", data_query="env_dump")
        head, shown = table_rows(dump.find("table"))
        assert head == ["service_name", "container_name"] and shown
        assert "column environment not shown" in dump.text()
        # the environment's NAMES are fine (secret_like_env_names lists them)
        names = parse(text).root.find("section", data_query="secret_like_env_names")
        assert names.find_all("table")


def test_the_page_is_self_contained(page: tuple[str, Node]) -> None:
    text, doc = page
    tags = parse(text).tags
    assert not [t for t, _ in tags if t in {"script", "link", "img", "iframe", "object", "embed"}]
    for tag, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert "src" not in attrs
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs
    csp = next(a["content"] for t, a in tags if t == "meta" and "http-equiv" in a)
    assert "default-src 'none'" in csp
    style = doc.find("style").text()
    assert "url(" not in style and "@import" not in style
    assert doc.find_all("svg")


# --------------------------------------------------------------------------- escaping

EVIL = "<script>alert('x')</script>"
EVIL_REGION = "<img src=x onerror=alert(1)>"
EVIL_STATE = '"><svg onload=alert(2)>'


@pytest.fixture
def evil_db(tmp_path: Path) -> tuple[Path, str]:
    """A hand-built store whose strings are HTML (the simulator never sends any)."""
    db = tmp_path / "evil.duckdb"
    run_id = "20261127T000000Z-e71100"
    t0 = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    with Store.open(db) as store:
        store.begin_run(run_id, t0, 1, 2, "test")
        services = pa.Table.from_pylist(
            [
                {
                    "collected_at": t0,
                    "account_id": "000000000001",
                    "account_name": "<b>bold</b> & co",
                    "region": EVIL_REGION,
                    "service_name": EVIL,
                    "state": EVIL_STATE,
                    "scale": 1,
                    "tags": [("<k>", "\"&v'")],
                }
            ],
            schema=schema.CONTAINER_SERVICES.remove(0),
        )
        containers = pa.Table.from_pylist(
            [
                {
                    "collected_at": t0,
                    "account_id": "000000000001",
                    "region": EVIL_REGION,
                    "service_name": EVIL,
                    "slot": "current",
                    "container_name": "</td></tr></table>",
                    "image": "<i>nginx</i>:latest",
                    "image_source": "registry",
                    "environment": [("TOKEN", "s3cr3t-<value>")],
                }
            ],
            schema=schema.CONTAINERS.remove(0),
        )
        scans = pa.Table.from_pylist(
            [
                {"account_id": "000000000001", "region": EVIL_REGION, "status": "ok",
                 "started_at": t0, "finished_at": t0, "attempts": 1, "services": 1},
                {"account_id": "000000000001", "region": "us-east-1", "status": "failed",
                 "started_at": t0, "finished_at": t0, "attempts": 8, "error_code": "<E>"},
            ],
            schema=schema.SCANS.remove(0),
        )  # fmt: skip
        errors = pa.Table.from_pylist(
            [
                {"occurred_at": t0, "account_id": "000000000001", "region": "us-east-1",
                 "operation": "GetContainerServices", "error_code": "<E>",
                 "message": EVIL + " & more", "attempts": 8},
            ],
            schema=schema.ERRORS.remove(0),
        )  # fmt: skip
        store.append(
            run_id,
            {"container_services": services, "containers": containers, "scans": scans,
             "errors": errors},
        )  # fmt: skip
        store.finish_run(run_id, "partial", t0 + dt.timedelta(seconds=3), api_calls=9, retries=7)
    return db, run_id


def test_everything_from_the_data_is_escaped(evil_db: tuple[Path, str], tmp_path: Path) -> None:
    db, run_id = evil_db
    sql = tmp_path / "sql"
    (sql / "queries").mkdir(parents=True)
    (sql / "queries" / "evil.sql").write_text(
        '-- Services & their <tags> ("quoted")\n'
        "SELECT account_name, service_name, state, tags FROM latest_container_services\n"
    )
    (sql / "queries" / "evil_containers.sql").write_text(
        "-- Containers\nSELECT container_name, image, environment FROM latest_containers\n"
    )
    out = tmp_path / "evil.html"
    written = report.write(db, out, sql_dir=sql)
    assert written.run_id == run_id
    text = out.read_text()
    p = parse(text)
    allowed = {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "div",
        "code", "span", "main", "p", "svg", "line", "g", "text", "tspan", "rect", "table",
        "thead", "tbody", "tr", "th", "td", "details", "summary", "section", "nav", "ul", "li",
        "a", "footer",
    }  # fmt: skip
    assert {t for t, _ in p.tags} <= allowed
    assert not [a for _, attrs in p.tags for a in attrs if a.startswith("on")]
    doc = p.root
    # the strings arrive intact as text: escaped, not dropped or mangled
    assert bars(doc, "by-region") == {EVIL_REGION: 1, "us-east-1": 0}
    assert bars(doc, "by-state") == {EVIL_STATE: 1}
    _, failures = table_rows(doc.find("table", **{"class": "failures"}))
    assert failures == [
        ["000000000001", "us-east-1", "GetContainerServices", "<E>", "8", EVIL + " & more"]
    ]
    evil = doc.find("section", data_query="evil")
    assert 'Services & their <tags> ("quoted")' in evil.text()
    head, shown = table_rows(evil.find("table"))
    assert head == ["account_name", "service_name", "state", "tags"]
    assert shown == [["<b>bold</b> & co", EVIL, EVIL_STATE, "<k>=\"&v'"]]
    _, shown = table_rows(doc.find("section", data_query="evil_containers").find("table"))
    assert shown == [["</td></tr></table>", "<i>nginx</i>:latest"]]
    assert "s3cr3t" not in text
    assert totals(doc)["retries"] == "7" and totals(doc)["targets failed"] == "1"


# --------------------------------------------------------------------------- edges


def test_broken_query_is_shown_not_fatal(inv: Inventory, tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    (sql / "queries").mkdir(parents=True)
    (sql / "queries" / "broken.sql").write_text("-- Broken on purpose\nSELECT nope FROM nowhere\n")
    (sql / "queries" / "fine.sql").write_text(
        "-- Services per region\nSELECT region, count(*) AS n FROM latest_container_services "
        "GROUP BY 1 ORDER BY 1\n"
    )
    out = tmp_path / "r.html"
    report.write(inv.db, out, sql_dir=sql)
    doc = parse(out.read_text()).root
    broken = doc.find("section", data_query="broken")
    assert "this query failed" in broken.text() and "nowhere" in broken.text()
    assert doc.find("section", data_query="fine").find_all("table")


def test_long_results_show_the_first_rows(inv: Inventory, tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    (sql / "queries").mkdir(parents=True)
    (sql / "queries" / "many.sql").write_text(
        "-- Many rows\n-- params: n=57\nSELECT i FROM range(CAST($n AS BIGINT)) t(i)\n"
    )
    r = report.load(inv.db, None, sql)
    (finding,) = r.findings
    assert (finding.total, len(finding.rows), finding.params) == (57, 20, {"n": "57"})
    section = parse(r.html).root.find("section", data_query="many")
    _, shown = table_rows(section.find("table"))
    assert [row[0] for row in shown] == [str(i) for i in range(20)]
    assert "57 rows; the first 20 shown" in section.text()


def test_cli_errors(inv: Inventory, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = runner.invoke(
        cli.app, ["report", "--html", str(out), "--db", str(inv.db), "--run", "nope"]
    )
    assert result.exit_code == 2
    assert "--run 'nope': no such run" in " ".join(result.stderr.split())
    result = runner.invoke(cli.app, ["report", "--html", str(out), "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2 and "no inventory database" in " ".join(result.stderr.split())
    assert not out.exists()
    # a store whose only run is still running has nothing to report
    db = tmp_path / "running.duckdb"
    with Store.open(db) as store:
        store.begin_run("20261127T000000Z-000001", dt.datetime.now(dt.UTC), 1, 1, "t")
    result = runner.invoke(cli.app, ["report", "--html", str(out), "--db", str(db)])
    assert result.exit_code == 1 and "no finished run" in " ".join(result.stderr.split())
    # an unwritable destination names the flag
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "r.html"
    result = runner.invoke(cli.app, ["report", "--html", str(bad), "--db", str(inv.db)])
    assert result.exit_code == 2 and "--html" in result.stderr
