"""The named query library (sql/queries/*.sql) and `inventory query --list` / `--param`.

One module-scoped store holds three real collects against the simulator (real HTTP, real
DuckDB file):
  run 1: fleet generation 0;
  run 2: generation 1 (`fleet.evolve()`: services added, removed, state/power/scale changed);
  run 3: generation 2, with Lightsail AccessDenied in us-east-1 for every account, so that
         run is 'partial' and us-east-1's newest good scan is still run 2.
Each named query runs through the CLI (`--format json`) and its answer is compared with the
simulator's ground truth computed here in Python from the wire-shaped services, so a wrong
query fails.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import use_simulator_env
from typer.testing import CliRunner

from inventory import cli
from inventory.answers import queries
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator

QUERIES_DIR = Path(__file__).resolve().parent.parent / "sql" / "queries"
FAILING_REGION = "us-east-1"
EMPTY_REGION = "ca-central-1"  # scanned, never any service: zero-row scans
# The public list prices (USD per node per month), written here independently of the CSV.
PRICES = {"nano": 7, "micro": 10, "small": 25, "medium": 50, "large": 100, "xlarge": 200}
DEFAULT_HC = {
    "healthyThreshold": 2,
    "unhealthyThreshold": 2,
    "timeoutSeconds": 2,
    "intervalSeconds": 5,
    "path": "/",
    "successCodes": "200-499",
}
SECRET_WORDS = re.compile(
    "PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|KEY|DSN|AUTH", re.IGNORECASE
)

runner = CliRunner()


@dataclass
class Inventory:
    db: Path
    db_after_first_run: Path
    regions: tuple[str, ...]
    accounts: tuple[str, ...]
    gens: tuple[Fleet, Fleet, Fleet]

    def latest(self, account: str, region: str) -> list[dict[str, Any]]:
        """The services the latest_* views must show for this account × region."""
        fleet = self.gens[1] if region == FAILING_REGION else self.gens[2]
        return fleet.services(account, region)

    def pairs(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for acct in self.accounts:
            for region in self.regions:
                for svc in self.latest(acct, region):
                    yield acct, region, svc

    def deployments(self) -> Iterator[tuple[str, str, dict[str, Any], str, dict[str, Any]]]:
        for acct, region, svc in self.pairs():
            for slot, key in (("current", "currentDeployment"), ("next", "nextDeployment")):
                if svc.get(key):
                    yield acct, region, svc, slot, svc[key]

    def containers(self) -> Iterator[tuple[str, str, dict[str, Any], str, str, dict[str, Any]]]:
        for acct, region, svc, slot, dep in self.deployments():
            for cname, container in dep.get("containers", {}).items():
                yield acct, region, svc, slot, cname, container


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inventory]:
    gen0 = Fleet(6, seed=1)
    gen1 = gen0.evolve()
    gen2 = gen1.evolve()
    regions = {EMPTY_REGION, FAILING_REGION}
    for g in (gen0, gen1, gen2):
        for acct in g.all_account_ids:
            regions.update(g.regions_of(acct))
    accounts = gen0.all_account_ids
    plan = Plan(
        accounts=tuple(
            Account(id=a, role_arn=f"arn:aws:iam::{a}:role/LightsailInventoryReader")
            for a in accounts
        ),
        regions=tuple(sorted(regions)),
        options=Options(),
    )
    tmp = tmp_path_factory.mktemp("queries")
    db = tmp / "inventory.duckdb"
    first = tmp / "first-run.duckdb"
    faults = Faults()
    with pytest.MonkeyPatch.context() as mp, Simulator(gen0, faults) as sim:
        use_simulator_env(mp, sim)
        assert asyncio.run(run_collect(plan, db, None)).status == "complete"
        shutil.copy(db, first)
        sim.set_fleet(gen1)
        assert asyncio.run(run_collect(plan, db, None)).status == "complete"
        sim.set_fleet(gen2)
        faults.denied_regions.add(("*", FAILING_REGION))
        assert asyncio.run(run_collect(plan, db, None)).status == "partial"
    yield Inventory(db, first, plan.regions, accounts, (gen0, gen1, gen2))


def invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


def err(result: Any) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def run_query(inv: Inventory, name: str, *params: str, db: Path | None = None) -> list[dict]:
    argv = ["query", name, "--db", str(db or inv.db), "--format", "json"]
    for p in params:
        argv += ["--param", p]
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def pick(rows: list[dict], *keys: str) -> list[tuple]:
    return sorted(tuple(r[k] for k in keys) for r in rows)


# ------------------------------------------------------------------------ the library


def query_files() -> list[Path]:
    return sorted(QUERIES_DIR.glob("*.sql"))


def test_the_library_has_every_documented_query() -> None:
    names = {p.stem for p in query_files()}
    assert {
        "services_by_state",
        "services_in_account",
        "image_sources",
        "floating_images",
        "endpoints_without_custom_domain",
        "deployment_problems",
        "disabled_services",
        "monthly_cost",
        "secret_like_env_names",
        "default_health_checks",
        "changes_since_previous_run",
    } <= names


@pytest.mark.parametrize("path", query_files(), ids=lambda p: p.stem)
def test_each_query_opens_with_its_description_and_declares_exactly_its_params(
    path: Path,
) -> None:
    text = path.read_text()
    assert text.startswith("-- "), f"{path.name} must open with a `-- <what it answers>` line"
    description, declared = queries.query_header(text)
    assert len(description) > 20 and not description.lower().startswith("params")
    used = set().union(*(s.named_parameters for s in duckdb.extract_statements(text)))
    assert set(declared) == used, f"{path.name}: `-- params:` must list exactly its $NAMEs"
    assert len(duckdb.extract_statements(text)) == 1


def test_price_list_is_data_with_its_source_and_date() -> None:
    with (QUERIES_DIR.parent / "lightsail_container_prices.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["power"]: float(r["usd_per_node_month"]) for r in rows} == PRICES
    assert {r["source"] for r in rows} == {"https://aws.amazon.com/lightsail/pricing/"}
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["as_of"]) for r in rows)


def test_readme_lists_every_query() -> None:
    readme = (QUERIES_DIR.parent / "README.md").read_text()
    for path in query_files():
        assert f"`{path.stem}`" in readme, f"sql/README.md does not mention {path.stem}"


# ------------------------------------------------------------------------ each query


def test_services_by_state(inv: Inventory) -> None:
    truth: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for acct, region, svc in inv.pairs():
        t = truth[(acct, region, svc["state"])]
        t[0] += 1
        t[1] += svc["scale"]
        t[2] += bool(svc["isDisabled"])
    assert len(truth) > 5
    rows = run_query(inv, "services_by_state")
    got = pick(rows, "account_id", "region", "state", "services", "nodes", "disabled")
    assert got == sorted((*k, *v) for k, v in truth.items())


def test_services_in_account_binds_the_account(inv: Inventory) -> None:
    for acct in (inv.gens[0].showcase_account_id, inv.gens[0].hub_account_id):
        assert acct is not None
        truth = sorted(
            (region, svc["containerServiceName"], svc["state"], svc["power"], svc["scale"])
            for a, region, svc in inv.pairs()
            if a == acct
        )
        assert truth
        rows = run_query(inv, "services_in_account", f"account={acct}")
        assert {r["account_id"] for r in rows} == {acct}
        assert pick(rows, "region", "service_name", "state", "power", "scale") == truth


def test_image_sources(inv: Inventory) -> None:
    truth: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, set()])
    for acct, region, svc, slot, _, container in inv.containers():
        t = truth[(acct, region, slot)]
        t[0 if not container["image"].startswith(":") else 1] += 1
        t[2].add(svc["containerServiceName"])
    rows = run_query(inv, "image_sources")
    got = pick(
        rows,
        "account_id",
        "region",
        "slot",
        "registry_containers",
        "lightsail_containers",
        "no_image",
        "services",
    )
    assert got == sorted((*k, v[0], v[1], 0, len(v[2])) for k, v in truth.items())
    assert sum(r["registry_containers"] for r in rows) > 0
    assert sum(r["lightsail_containers"] for r in rows) > 0


def _floating(image: str) -> str | None:
    """'latest', 'untagged' or None for an image reference (written apart from the SQL)."""
    if image.startswith(":"):
        return None  # a Lightsail-pushed image: versioned by Lightsail
    last = image.rpartition("/")[2]
    if "@" in last:
        return None  # pinned by digest
    _, sep, tag = last.partition(":")
    if not sep:
        return "untagged"
    return "latest" if tag == "latest" else None


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx", "untagged"),
        ("nginx:latest", "latest"),
        ("localhost:5000/team/app", "untagged"),
        ("localhost:5000/team/app:latest", "latest"),
        ("localhost:5000/team/app:1.2", None),
        ("ghcr.io/acme/worker@sha256:abc", None),
        ("nginx:latest@sha256:abc", None),
        (":svc.app.3", None),
    ],
)
def test_floating_images_parses_image_references(image: str, expected: str | None) -> None:
    """The query's own parsing, on references the simulator never serves (port in host…)."""
    assert _floating(image) == expected
    con = duckdb.connect()
    con.execute(
        "CREATE TEMP TABLE latest_containers (account_id VARCHAR, region VARCHAR, "
        "service_name VARCHAR, slot VARCHAR, deployment_version INTEGER, "
        "container_name VARCHAR, image VARCHAR, image_source VARCHAR)"
    )
    source = "lightsail" if image.startswith(":") else "registry"
    con.execute(
        "INSERT INTO latest_containers VALUES ('a', 'r', 's', 'current', 1, 'c', ?, ?)",
        [image, source],
    )
    got = [r[-1] for r in con.execute((QUERIES_DIR / "floating_images.sql").read_text()).fetchall()]
    assert got == ([expected] if expected else [])


def test_floating_images(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"], slot, cname, c["image"], kind)
        for acct, region, svc, slot, cname, c in inv.containers()
        if (kind := _floating(c["image"])) is not None
    )
    assert {t[-1] for t in truth} == {"latest", "untagged"}
    rows = run_query(inv, "floating_images")
    keys = ("account_id", "region", "service_name", "slot", "container_name", "image", "problem")
    assert pick(rows, *keys) == truth


def test_endpoints_without_custom_domain(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"])
        for acct, region, svc in inv.pairs()
        if (svc.get("currentDeployment") or {}).get("publicEndpoint")
        and not any((svc.get("publicDomainNames") or {}).values())
    )
    with_domain = [
        svc
        for _, _, svc in inv.pairs()
        if (svc.get("currentDeployment") or {}).get("publicEndpoint")
        and any((svc.get("publicDomainNames") or {}).values())
    ]
    assert truth and with_domain  # both sides of the test occur
    rows = run_query(inv, "endpoints_without_custom_domain")
    assert pick(rows, "account_id", "region", "service_name") == truth


def _deployment_truth(inv: Inventory, stuck_minutes: float) -> list[tuple]:
    now = time.time()
    out = []
    for acct, region, svc, slot, dep in inv.deployments():
        old = now - dep["createdAt"] > stuck_minutes * 60
        if dep["state"] == "FAILED":
            problem = "failed"
        elif dep["state"] == "ACTIVATING" and old:
            problem = "stuck_activating"
        elif slot == "next":
            problem = "pending_next"
        else:
            continue
        out.append((acct, region, svc["containerServiceName"], slot, dep["version"], problem))
    return sorted(out)


def test_deployment_problems(inv: Inventory) -> None:
    keys = ("account_id", "region", "service_name", "slot", "version", "problem")
    truth = _deployment_truth(inv, 30)
    assert {t[-1] for t in truth} == {"failed", "stuck_activating"}  # simulator times are old
    assert pick(run_query(inv, "deployment_problems"), *keys) == truth
    # A window wider than the fleet's age: every ACTIVATING next deployment is just pending.
    wide = 200 * 365 * 24 * 60
    truth = _deployment_truth(inv, wide)
    assert {t[-1] for t in truth} == {"failed", "pending_next"}
    got = pick(run_query(inv, "deployment_problems", f"stuck_minutes={wide}"), *keys)
    assert got == truth


def test_disabled_services(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"])
        for acct, region, svc in inv.pairs()
        if svc["isDisabled"]
    )
    assert truth
    rows = run_query(inv, "disabled_services")
    assert pick(rows, "account_id", "region", "service_name") == truth


def test_monthly_cost_from_power_times_scale(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"], float(PRICES[svc["power"]] * svc["scale"]))
        for acct, region, svc in inv.pairs()
    )
    rows = run_query(inv, "monthly_cost")
    assert pick(rows, "account_id", "region", "service_name", "usd_per_month") == truth
    assert {r["price_as_of"] for r in rows} != {None}
    costs = [r["usd_per_month"] for r in rows]
    assert costs == sorted(costs, reverse=True)  # most expensive first


def test_monthly_cost_with_another_price_list(inv: Inventory, tmp_path: Path) -> None:
    """`--param prices=FILE` replaces the default; a power missing from it gives NULL, not 0.
    The path (with a quote in it) is bound as a value, never spliced into the SQL."""
    prices = tmp_path / "it's; drop table runs; -- prices.csv"
    prices.write_text(
        "power,usd_per_node_month,source,as_of\nnano,1.50,test,2026-01-01\nmicro,2,test,2026-01-01\n"
    )
    rows = run_query(inv, "monthly_cost", f"prices={prices}")
    by_power: dict[str, set] = defaultdict(set)
    for r in rows:
        total = r["usd_per_month"]
        by_power[r["power"]].add((r["usd_per_node_month"], total and total / r["scale"]))
    assert by_power["nano"] == {(1.5, 1.5)}
    assert by_power["micro"] == {(2.0, 2.0)}
    assert by_power["xlarge"] == {(None, None)}
    assert rows[0]["usd_per_month"] is None  # unpriced services come first: they need a look


def test_secret_like_env_names_gives_names_never_values(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"], slot, cname, env_name)
        for acct, region, svc, slot, cname, c in inv.containers()
        for env_name in (c.get("environment") or {})
        if SECRET_WORDS.search(env_name)
    )
    all_names = {n for *_, c in inv.containers() for n in (c.get("environment") or {})}
    assert truth and any(not SECRET_WORDS.search(n) for n in all_names)  # both kinds occur
    result = invoke("query", "secret_like_env_names", "--db", str(inv.db), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    keys = ("account_id", "region", "service_name", "slot", "container_name", "env_name")
    assert pick(rows, *keys) == truth
    assert all(r["looks_like"] and r["looks_like"] in r["env_name"].upper() for r in rows)
    assert "hmac-sha256" not in result.stdout
    for fleet in inv.gens:
        for secret in fleet.secrets():
            assert secret not in result.stdout


def test_default_health_checks(inv: Inventory) -> None:
    truth = sorted(
        (acct, region, svc["containerServiceName"], slot)
        for acct, region, svc, slot, dep in inv.deployments()
        if dep.get("publicEndpoint")
        and {**DEFAULT_HC, **(dep["publicEndpoint"].get("healthCheck") or {})} == DEFAULT_HC
    )
    custom = [
        dep
        for *_, dep in inv.deployments()
        if dep.get("publicEndpoint") and dep["publicEndpoint"]["healthCheck"] != DEFAULT_HC
    ]
    assert truth and custom
    rows = run_query(inv, "default_health_checks")
    assert pick(rows, "account_id", "region", "service_name", "slot") == truth


CHANGE_KEYS = (
    "account_id",
    "region",
    "service_name",
    "change",
    "old_state",
    "new_state",
    "old_power",
    "new_power",
    "old_scale",
    "new_scale",
)


def _expected_changes(inv: Inventory, gens: Callable[[str], tuple[int, int]]) -> list[tuple]:
    """Every difference between the generations `gens(region)` gives, as the query's rows."""
    out = []
    for acct in inv.accounts:
        for region in inv.regions:
            old_gen, new_gen = gens(region)
            before = {
                s["containerServiceName"]: s for s in inv.gens[old_gen].services(acct, region)
            }
            after = {s["containerServiceName"]: s for s in inv.gens[new_gen].services(acct, region)}
            for name in before.keys() | after.keys():
                o, n = before.get(name, {}), after.get(name, {})
                if not o:
                    change = "added"
                elif not n:
                    change = "removed"
                elif any(o[k] != n[k] for k in ("state", "power", "scale")):
                    change = "changed"
                else:
                    continue
                sides = (side.get(k) for k in ("state", "power", "scale") for side in (o, n))
                out.append((acct, region, name, change, *sides))
    return sorted(out)


def _assert_every_kind(truth: list[tuple]) -> None:
    """Added, removed, and a change of each of state, power and scale alone all occur."""
    assert {t[3] for t in truth} == {"added", "removed", "changed"}
    for i in (4, 6, 8):  # old_state, old_power, old_scale; the new one follows
        others = [j for j in (4, 6, 8) if j != i]
        assert any(
            t[3] == "changed" and t[i] != t[i + 1] and all(t[j] == t[j + 1] for j in others)
            for t in truth
        ), f"no change of {CHANGE_KEYS[i]} alone in the fixture"


def test_changes_since_previous_run(inv: Inventory) -> None:
    """Per account × region, its two newest good scans: us-east-1 failed in run 3, so there
    it is generation 0 → 1; everywhere else 1 → 2."""
    truth = _expected_changes(inv, lambda r: (0, 1) if r == FAILING_REGION else (1, 2))
    assert {t[3] for t in truth} == {"added", "removed", "changed"}
    assert any(t[1] == FAILING_REGION for t in truth)
    assert any(t[1] != FAILING_REGION for t in truth)
    rows = run_query(inv, "changes_since_previous_run")
    assert pick(rows, *CHANGE_KEYS) == truth
    run_ids = sorted({r["run_id"] for r in rows} | {r["previous_run_id"] for r in rows})
    assert len(run_ids) == 3  # us-east-1 compares runs 1 → 2, the rest 2 → 3


def test_changes_since_previous_run_skips_a_failed_run(inv: Inventory, tmp_path: Path) -> None:
    """A run marked 'failed' (e.g. interrupted: its inventory rows deleted, its ok scans
    kept) is no good run: the comparison falls back to runs 1 → 2 everywhere."""
    db = tmp_path / "copy.duckdb"
    shutil.copy(inv.db, db)
    con = duckdb.connect(str(db))
    # run ids sort by start second only; two test runs can share one: order by started_at
    newest = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert newest is not None
    con.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", [newest[0]])
    con.execute("DELETE FROM container_services WHERE run_id = ?", [newest[0]])
    con.close()
    truth = _expected_changes(inv, lambda r: (0, 1))
    _assert_every_kind(truth)
    rows = run_query(inv, "changes_since_previous_run", db=db)
    assert pick(rows, *CHANGE_KEYS) == truth


def test_changes_since_previous_run_needs_two_runs(inv: Inventory) -> None:
    assert run_query(inv, "changes_since_previous_run", db=inv.db_after_first_run) == []


# ------------------------------------------------------------------------ edge cases
# Cases the simulator's fleet does not produce, on hand-made rows under the views' names.


def run_on(sql_name: str, **tables: list[dict[str, Any]]) -> list[tuple]:
    con = duckdb.connect()
    for name, rows in tables.items():
        con.register(name, pa.Table.from_pylist(rows))
    return con.execute((QUERIES_DIR / f"{sql_name}.sql").read_text()).fetchall()


def _deployment(slot: str = "current", **hc: Any) -> dict[str, Any]:
    fields = {
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
        "timeout_seconds": 2,
        "interval_seconds": 5,
        "path": "/",
        "success_codes": "200-499",
    }
    fields.update(hc)
    return {
        "run_id": "r1",
        "account_id": "111111111111",
        "region": "eu-west-2",
        "service_name": "web",
        "slot": slot,
        "version": 1,
        "state": "ACTIVE",
        "public_endpoint_container_name": "app",
        "public_endpoint_container_port": 80,
        **{f"health_check_{k}": v for k, v in fields.items()},
    }


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        ({}, True),
        ({k: None for k in ("healthy_threshold", "path", "success_codes")}, True),
        ({"healthy_threshold": 3}, False),
        ({"unhealthy_threshold": 3}, False),
        ({"timeout_seconds": 5}, False),
        ({"interval_seconds": 10}, False),
        ({"path": "/health"}, False),
        ({"success_codes": "200"}, False),
    ],
)
def test_default_health_checks_field_by_field(change: dict[str, Any], listed: bool) -> None:
    rows = run_on("default_health_checks", latest_deployments=[_deployment(**change)])
    assert len(rows) == int(listed)


def test_endpoints_without_custom_domain_edge_cases() -> None:
    def svc(name: str, domains: Any) -> dict[str, Any]:
        return {
            "run_id": "r1",
            "account_id": "111111111111",
            "region": "eu-west-2",
            "service_name": name,
            "state": "RUNNING",
            "url": f"https://{name}.example/",
            "public_domain_names": domains,
        }

    services = [
        svc("no-domains", None),
        svc("empty-map", []),  # pyarrow: a map given as a list of pairs
        svc("cert-without-names", [("cert", [])]),
        svc("has-domain", [("cert", ["a.example.com"])]),
        svc("endpoint-only-next", None),
    ]
    deployments = [
        {**_deployment(), "service_name": n}
        for n in ("no-domains", "empty-map", "cert-without-names", "has-domain")
    ]
    deployments.append({**_deployment("next"), "service_name": "endpoint-only-next"})
    deployments.append({**_deployment("next"), "service_name": "no-domains"})  # no duplicate
    services_tbl = pa.Table.from_pylist(
        services,
        schema=pa.schema(
            [
                *(pa.field(k, pa.string()) for k in services[0] if k != "public_domain_names"),
                pa.field("public_domain_names", pa.map_(pa.string(), pa.list_(pa.string()))),
            ]
        ),
    )
    con = duckdb.connect()
    con.register("latest_container_services", services_tbl)
    con.register("latest_deployments", pa.Table.from_pylist(deployments))
    sql = (QUERIES_DIR / "endpoints_without_custom_domain.sql").read_text()
    names = [r[2] for r in con.execute(sql).fetchall()]
    assert names == ["cert-without-names", "empty-map", "no-domains"]


# ------------------------------------------------------------------------ --list


def test_list_shows_every_query_with_its_description_and_params() -> None:
    result = invoke("query", "--list", "--format", "json")
    assert result.exit_code == 0, result.output
    listed = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(listed) == {p.stem for p in query_files()}
    for path in query_files():
        description, _ = queries.query_header(path.read_text())
        assert listed[path.stem]["description"] == description
    assert listed["services_in_account"]["params"] == "account"
    assert listed["deployment_problems"]["params"] == "stuck_minutes=30"
    assert listed["monthly_cost"]["params"].startswith("prices=")
    assert listed["services_by_state"]["params"] == ""


def test_list_as_csv_and_table() -> None:
    result = invoke("query", "--list", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == [p.stem for p in query_files()]
    table = invoke("query", "--list")
    assert table.exit_code == 0, table.output
    assert "named queries" in table.stdout and "services_by_state" in table.stdout


def test_list_needs_no_database_and_takes_no_query(tmp_path: Path) -> None:
    result = invoke("query", "--list", "--db", str(tmp_path / "absent.duckdb"))
    assert result.exit_code == 0
    result = invoke("query", "services_by_state", "--list")
    assert result.exit_code == 2
    assert "--list takes no" in err(result)


def test_a_new_query_file_is_listed_and_runnable(
    inv: Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How to add one (sql/README.md): drop a file in queries/; {sql_dir} defaults work."""
    (tmp_path / "queries").mkdir()
    (tmp_path / "regions.txt").write_text("region\nus-east-1\n")
    (tmp_path / "queries" / "in_listed_regions.sql").write_text(
        "-- Services in the regions a file lists.\n"
        "-- params: regions={sql_dir}/regions.txt, min_scale\n"
        "SELECT service_name FROM latest_container_services\n"
        "WHERE region IN (SELECT region FROM read_csv($regions, header = true))\n"
        "  AND scale >= CAST($min_scale AS INTEGER)\n"
    )
    monkeypatch.setattr(queries, "SQL_DIR", tmp_path)
    listed = json.loads(invoke("query", "--list", "-f", "json").stdout)
    assert listed == [
        {
            "name": "in_listed_regions",
            "params": "regions={sql_dir}/regions.txt, min_scale",
            "description": "Services in the regions a file lists.",
        }
    ]
    rows = run_query(inv, "in_listed_regions", "min_scale=1")
    truth = sorted(
        svc["containerServiceName"] for _, region, svc in inv.pairs() if region == "us-east-1"
    )
    assert sorted(r["service_name"] for r in rows) == truth


# ------------------------------------------------------------------------ --param binding


def test_param_values_are_bound_verbatim_never_spliced(inv: Inventory) -> None:
    evil = "x'; drop table runs; --"
    assert run_query(inv, "services_in_account", f"account={evil}") == []
    rows = run_query(inv, "select $v as v, length($v) as n", f"v={evil}")
    assert rows == [{"v": evil, "n": len(evil)}]
    rows = run_query(inv, "select count(*) as runs from runs")
    assert rows == [{"runs": 3}]
    # '=' after the first one belongs to the value
    assert run_query(inv, "select $v as v", "v=a=b") == [{"v": "a=b"}]


def test_missing_param_is_a_usage_error_naming_it(inv: Inventory) -> None:
    result = invoke("query", "services_in_account", "--db", str(inv.db))
    assert result.exit_code == 2
    assert "needs --param account=VALUE" in err(result)
    result = invoke("query", "select $a, $b", "--db", str(inv.db), "-p", "b=1")
    assert result.exit_code == 2
    assert "--param a=VALUE" in err(result)


def test_unknown_param_is_a_usage_error_naming_it(inv: Inventory) -> None:
    result = invoke("query", "services_in_account", "--db", str(inv.db), "-p", "acount=1")
    assert result.exit_code == 2
    assert "acount" in err(result) and "it takes: account" in err(result)
    result = invoke("query", "services_by_state", "--db", str(inv.db), "-p", "x=1")
    assert result.exit_code == 2
    assert "$x" in err(result) and "it takes: none" in err(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "novalue"], "expected NAME=VALUE"),
        (["-p", "1bad=x"], "expected NAME=VALUE"),
        (["-p", "account=1", "-p", "account=2"], "given twice"),
    ],
)
def test_malformed_params_are_usage_errors(inv: Inventory, args: list[str], message: str) -> None:
    result = invoke("query", "services_in_account", "--db", str(inv.db), *args)
    assert result.exit_code == 2
    assert message in err(result)


def test_positional_parameters_are_refused_with_a_hint(inv: Inventory) -> None:
    result = invoke("query", "select ?", "--db", str(inv.db), "-p", "a=1")
    assert result.exit_code == 2
    assert "use $NAME" in err(result)


def test_unknown_query_name_points_at_list(inv: Inventory) -> None:
    result = invoke("query", "no_such_query", "--db", str(inv.db))
    assert result.exit_code == 2
    assert "no_such_query" in err(result) and "--list" in err(result)
