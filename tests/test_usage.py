"""`collect --usage`: GetContainerServicePowers per region and GetContainerServiceMetricData per
service, against the simulator's ground truth (`fleet.powers`, `fleet.utilization`'s raw
5-minute samples, aggregated to hours here, never with inventory.run.usage).

Real parts: aiobotocore clients over HTTP to the simulator, a DuckDB file, Parquet read back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from inventory.cli import app
from inventory.model import Account, Options, Plan
from inventory.run import builder as builder_mod
from inventory.run.collect import Collector
from inventory.run.pipeline import run_collect
from inventory.run.usage import (
    METRIC_DATA,
    METRICS,
    POWERS,
    MetricAnswer,
    UsageFetcher,
    UsageFlattener,
)
from inventory.simulator import Faults, Fleet, Simulator
from inventory.simulator.fleet import DISABLED_PROFILE, POWER_SPECS, USAGE_PROFILES
from inventory.storage import lakequery, schema
from inventory.storage.fingerprint import Fingerprinter
from inventory.storage.flatten import Flattener
from inventory.storage.store import Store

MakeSimulator = Callable[..., Simulator]
R2 = ("us-east-1", "eu-west-2")
Row = tuple[Any, ...]
runner = CliRunner()


def plan_for(fleet: Fleet, **options: Any) -> Plan:
    accounts = tuple(Account(id=a, role_arn=f"arn:aws:iam::{a}:role/R") for a in fleet.account_ids)
    opts = {"concurrency": 8, "rate": 2000.0, "timeout": 5.0, "usage": True, **options}
    return Plan(accounts=accounts, regions=fleet.regions, options=Options(**opts))


def services_of(fleet: Fleet) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (a, r, s) for a in fleet.account_ids for r in fleet.regions for s in fleet.services(a, r)
    ]


def epoch(t: dt.datetime) -> float:
    return t.timestamp()


def utilization_truth(fleet: Fleet, start: dt.datetime, end: dt.datetime) -> list[Row]:
    """service_utilization's rows (account, region, name, arn, metric, period start, average,
    maximum, unit, status), from the simulator's raw samples, aggregated per hour here."""
    rows: list[Row] = []
    for a, r, svc in services_of(fleet):
        name, arn = svc["containerServiceName"], svc["arn"]
        for metric in METRICS:
            if svc["state"] == "DISABLED":
                rows.append((a, r, name, arn, metric, None, None, None, None, "disabled"))
                continue
            hours: dict[float, list[float]] = {}
            for t, v in fleet.utilization(a, r, name, metric, epoch(start), epoch(end)):
                hours.setdefault(t - (t - epoch(start)) % 3600, []).append(v)
            if not hours:
                rows.append((a, r, name, arn, metric, None, None, None, None, "no_datapoints"))
            for h, vs in sorted(hours.items()):
                at = dt.datetime.fromtimestamp(h, dt.UTC)
                rows.append(
                    (a, r, name, arn, metric, at, sum(vs) / len(vs), max(vs), "Percent", "ok")
                )
    return sorted(rows, key=repr)


UTILIZATION_SQL = (
    "SELECT account_id, region, service_name, service_arn, metric, period_start, average, "
    "maximum, unit, status FROM service_utilization"
)
POWERS_SQL = (
    "SELECT DISTINCT region, power_id, name, price_per_month, cpu_count, ram_size_gb, is_active "
    "FROM container_powers"
)


def powers_truth(fleet: Fleet) -> list[Row]:
    return sorted(
        (r, p["powerId"], p["name"], p["price"], p["cpuCount"], p["ramSizeInGb"], p["isActive"])
        for r in fleet.regions
        for p in fleet.powers(r)["powers"]
    )


def as_utc(rows: list[Row]) -> list[Row]:
    return sorted(
        (
            tuple(v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v for v in row)
            for row in rows
        ),
        key=repr,
    )


def window_of(store: Store) -> tuple[dt.datetime, dt.datetime]:
    _, rows = store.query_rows(
        "SELECT DISTINCT window_start, window_end, period_seconds FROM service_utilization"
    )
    ((start, end, period),) = rows
    assert period == 3600
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(("engine", "workers"), [("lean", 1), ("botocore", 2)])
def test_usage_tables_equal_the_ground_truth(
    engine: str, workers: int, tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=3, regions=R2)
    fleet.power_prices[("eu-west-2", "nano")] = 7.5  # a region priced otherwise
    sim = make_simulator(fleet=fleet)
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
    before = dt.datetime.now(dt.UTC)
    summary = asyncio.run(
        run_collect(plan_for(fleet, engine=engine, workers=workers), db, str(lake))
    )
    assert summary.status == "complete" and summary.exit_code == 0 and summary.workers == workers

    services = services_of(fleet)
    profiles = {fleet.usage_profile(a, r, s["containerServiceName"]) for a, r, s in services}
    assert profiles == {*USAGE_PROFILES, DISABLED_PROFILE}  # every case is exercised
    with Store.open(db, read_only=True) as store:
        start, end = window_of(store)
        assert end <= before and end == end.replace(minute=0, second=0, microsecond=0)
        assert before - end < dt.timedelta(hours=1) and end - start == dt.timedelta(days=14)
        want = utilization_truth(fleet, start, end)
        assert as_utc(store.query_rows(UTILIZATION_SQL)[1]) == want
        assert sorted(store.query_rows(POWERS_SQL)[1]) == powers_truth(fleet)
        _, errors = store.query_rows("SELECT * FROM errors")
        (run,) = store.runs()
    assert errors == []  # disabled and no_datapoints are not errors
    statuses = {row[-1] for row in want}
    assert statuses == {"ok", "disabled", "no_datapoints"} and len(want) > 14 * 24 * 10
    with lakequery.open_lake(lake) as con:
        assert as_utc(con.execute(UTILIZATION_SQL).fetchall()) == want
        assert sorted(con.execute(POWERS_SQL).fetchall()) == powers_truth(fleet)

    # calls: the powers once per region and process, two metric calls per enabled service
    enabled = sum(s["state"] != "DISABLED" for _, _, s in services)
    powers_calls = sim.operation_stats(POWERS)["calls"]
    assert len(R2) <= powers_calls <= len(R2) * workers
    assert sim.operation_stats(METRIC_DATA)["ok"] == 2 * enabled
    targets = len(fleet.account_ids) * len(R2)
    calls = len(fleet.account_ids) + targets + powers_calls + 2 * enabled
    assert run["api_calls"] == sim.total_requests == calls and run["retries"] == 0


def test_usage_calls_throttled_are_retried_and_counted(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=3, regions=R2)
    faults = Faults(operation_throttle={POWERS: 0.5, METRIC_DATA: 0.3}, seed=5)
    sim = make_simulator(fleet=fleet, faults=faults)
    db = tmp_path / "inv.duckdb"
    summary = asyncio.run(run_collect(plan_for(fleet, max_attempts=20), db, None))
    assert summary.status == "complete"
    throttled = sum(sim.operation_stats(op)["throttled"] for op in (POWERS, METRIC_DATA))
    assert throttled > 5
    assert sim.operation_stats("GetContainerServices")["throttled"] == 0  # only the new calls
    with Store.open(db, read_only=True) as store:
        start, end = window_of(store)
        assert as_utc(store.query_rows(UTILIZATION_SQL)[1]) == utilization_truth(fleet, start, end)
        assert sorted(store.query_rows(POWERS_SQL)[1]) == powers_truth(fleet)
        (run,) = store.runs()
        assert store.query_rows("SELECT count(*) FROM errors")[1] == [(0,)]
    assert run["retries"] == throttled and run["api_calls"] == sim.total_requests


def test_a_failing_metric_call_does_not_stop_the_others(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(3, seed=3, regions=R2)
    acct = fleet.showcase_account_id
    assert acct is not None
    region = max(R2, key=lambda r: len(fleet.services(acct, r)))
    gone = next(
        s["containerServiceName"] for s in fleet.services(acct, region) if s["state"] != "DISABLED"
    )
    faults = Faults(vanished={(acct, region, gone)})
    make_simulator(fleet=fleet, faults=faults)
    db = tmp_path / "inv.duckdb"
    assert asyncio.run(run_collect(plan_for(fleet), db, None)).status == "complete"
    with Store.open(db, read_only=True) as store:
        start, end = window_of(store)
        _, errors = store.query_rows(
            "SELECT account_id, region, operation, error_code, attempts FROM errors"
        )
        _, failed = store.query_rows(
            "SELECT service_name, metric FROM service_utilization WHERE status = 'failed'"
        )
        got = as_utc(store.query_rows(UTILIZATION_SQL)[1])
        _, scans = store.query_rows("SELECT DISTINCT status FROM scans")
    assert errors == [(acct, region, METRIC_DATA, "NotFoundException", 1)] * 2
    assert sorted(failed) == [(gone, m) for m in METRICS]
    want = [r for r in utilization_truth(fleet, start, end) if r[:3] != (acct, region, gone)]
    assert [r for r in got if r[2] != gone] == want and scans == [("ok",)]


def test_a_refused_metric_call_is_made_once_per_target(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(2, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet, faults=Faults(denied_operations={METRIC_DATA}))
    db = tmp_path / "inv.duckdb"
    assert asyncio.run(run_collect(plan_for(fleet), db, None)).status == "complete"
    with_enabled = {(a, r) for a, r, s in services_of(fleet) if s["state"] != "DISABLED"}
    assert sim.operation_stats(METRIC_DATA)["calls"] == len(with_enabled)
    with Store.open(db, read_only=True) as store:
        _, errors = store.query_rows("SELECT account_id, region, error_code, message FROM errors")
        _, statuses = store.query_rows("SELECT DISTINCT status FROM service_utilization")
        assert len(store.query_rows(POWERS_SQL)[1]) == len(POWER_SPECS) * len(R2)
    assert {(a, r) for a, r, _, _ in errors} == with_enabled and len(errors) == len(with_enabled)
    assert {c for _, _, c, _ in errors} == {"AccessDeniedException"}
    assert any("not called for the other" in m for *_, m in errors)
    assert {s for (s,) in statuses} <= {"failed", "disabled"}


def test_without_usage_no_usage_call_is_made(tmp_path: Path, make_simulator: MakeSimulator) -> None:
    fleet = Fleet(3, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    assert asyncio.run(run_collect(plan_for(fleet, usage=False), db, None)).status == "complete"
    assert sim.operation_stats(POWERS)["calls"] == sim.operation_stats(METRIC_DATA)["calls"] == 0
    assert sim.operation_stats("GetContainerServices")["calls"] == 3 * len(R2)
    with Store.open(db, read_only=True) as store:
        for table in ("container_powers", "service_utilization"):
            assert store.query_rows(f"SELECT count(*) FROM {table}")[1] == [(0,)]


@pytest.mark.parametrize("usage_rows", [500, 10**9])
def test_usage_rows_are_flushed_per_batch(
    make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch, usage_rows: int
) -> None:
    """Memory is bounded by the batch: the builder hands its usage rows to the sink once
    FLUSH_USAGE_ROWS are pending, so no batch holds more than that plus one target's rows;
    they do not count towards FLUSH_ROWS (inventory rows: a write per 20,000 datapoints made
    the store's writes most of --usage's CPU)."""
    fleet = Fleet(6, seed=3, regions=R2)
    make_simulator(fleet=fleet)
    monkeypatch.setattr(builder_mod, "FLUSH_ROWS", 500)
    monkeypatch.setattr(builder_mod, "FLUSH_USAGE_ROWS", usage_rows)
    monkeypatch.setattr(builder_mod, "FLUSH_SECONDS", 3600.0)
    # a target's rows at most: per service and metric, one per hour of the window (+1 for
    # a window that does not start on a sample)
    per_target = max(len(fleet.services(a, r)) for a in fleet.account_ids for r in R2)
    per_target *= len(METRICS) * (14 * 24 + 1)
    batches: list[int] = []
    inventory_rows: list[int] = []

    async def sink(tables: dict[str, Any]) -> None:
        batches.append(
            tables["service_utilization"].num_rows if "service_utilization" in tables else 0
        )
        inventory_rows.extend(
            t.num_rows for name, t in tables.items() if name in schema.INVENTORY_TABLES
        )

    async def collect() -> int:
        plan = plan_for(fleet)
        b = builder_mod.RunBuilder("r", Flattener(Fingerprinter(b"k" * 32).__call__))
        async with Collector(plan.options, R2) as collector:
            await builder_mod.collect_into(b, collector, list(plan.accounts), sink)
        return b.tally.targets_ok

    assert asyncio.run(collect()) == len(fleet.account_ids) * len(R2)
    assert sum(batches) > 3 * 500
    if usage_rows == 500:
        assert len([n for n in batches if n]) >= 3
        assert max(batches) <= 500 + per_target + len(POWER_SPECS)
    else:  # fewer than FLUSH_ROWS inventory rows: the usage rows alone never flush
        assert 0 < sum(inventory_rows) < 500
        assert [n for n in batches if n] == [sum(batches)]


# --------------------------------------------------------------------------- the simulator


def _lightsail(sim: Simulator) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        "lightsail",
        region_name="us-east-1",
        endpoint_url=sim.url,
        aws_access_key_id="AKIDSIMULATORBASE",
        aws_secret_access_key="sim-base-secret",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"period": 100_000}, "period 100000: must be an integer from 60 to 86400"),
        ({"metricName": "NetworkIn"}, "metricName 'NetworkIn'"),
        ({"period": 300}, "asks for 4032 datapoints; at most 1440 per call"),
        ({"statistics": ["p99"]}, "statistics ['p99']"),
    ],
)
def test_the_simulator_refuses_a_metric_request_aws_would(
    change: dict[str, Any], message: str, make_simulator: MakeSimulator
) -> None:
    fleet = Fleet(0, seed=1, regions=("us-east-1",))
    sim = make_simulator(fleet=fleet)
    (svc, *_) = fleet.services(fleet.hub_account_id, "us-east-1")
    end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    params = {
        "serviceName": svc["containerServiceName"],
        "metricName": "CPUUtilization",
        "startTime": end - dt.timedelta(days=14),
        "endTime": end,
        "period": 3600,
        "statistics": ["Average"],
        **change,
    }
    with pytest.raises(ClientError) as raised:  # botocore checks none of these
        _lightsail(sim).get_container_service_metric_data(**params)
    err = raised.value.response["Error"]
    assert err["Code"] == "InvalidInputException" and message in err["Message"]


def test_the_simulator_series_follow_their_profiles() -> None:
    """Idle uses next to nothing, steady sits in the middle, bursty has peaks far above its
    average, over-provisioned stays low: what the named queries will tell apart."""
    fleet = Fleet(40, seed=2, regions=R2)
    seen: dict[str, list[tuple[float, float]]] = {}
    for a, r, s in services_of(fleet):
        profile = fleet.usage_profile(a, r, s["containerServiceName"])
        samples = [
            v
            for _, v in fleet.utilization(
                a, r, s["containerServiceName"], "CPUUtilization", 0, 7 * 86400
            )
        ]
        if samples:
            seen.setdefault(profile, []).append((sum(samples) / len(samples), max(samples)))
    assert set(seen) == {"idle", "steady", "bursty", "over_provisioned"}
    assert all(avg < 1 and peak < 1 for avg, peak in seen["idle"])
    assert all(30 < avg < 60 for avg, _ in seen["steady"])
    assert all(peak > 80 and avg < 25 for avg, peak in seen["bursty"])
    assert all(1 < avg < 8 and peak < 10 for avg, peak in seen["over_provisioned"])


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--usage", "--usage-days", "0"], "error: --usage-days 0: must be at least 1"),
        (["--usage", "--usage-days", "15"], "error: --usage-days 15: must be at most 14"),
        (["--usage-days", "3"], "error: --usage-days 3: only with --usage"),
    ],
)
def test_usage_days_out_of_range_is_a_usage_error(
    args: list[str], message: str, tmp_path: Path, write_accounts: Callable[..., Path]
) -> None:
    accounts = write_accounts(tmp_path / "accounts.toml", ["111111111111"])
    result = runner.invoke(
        app, ["collect", "--config", str(accounts), "--db", str(tmp_path / "x.duckdb"), *args]
    )
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- monthly_cost


def monthly_cost(db: Path) -> list[dict[str, Any]]:
    out = runner.invoke(app, ["query", "monthly_cost", "--db", str(db), "--format", "json"])
    assert out.exit_code == 0, out.output
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_monthly_cost_uses_the_prices_of_the_same_run(
    tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    """A --usage run prices its services with the API's prices of its region ('api'); a plain
    run after it, with the bundled list ('bundled'): never another run's prices."""
    fleet = Fleet(3, seed=3, regions=R2)
    fleet.power_prices.update({("eu-west-2", p): 1.0 + i for i, p in enumerate(POWER_SPECS)})
    make_simulator(fleet=fleet)
    db = tmp_path / "inv.duckdb"
    asyncio.run(run_collect(plan_for(fleet), db, None))
    rows = monthly_cost(db)
    assert len(rows) == len(services_of(fleet)) and {r["price_source"] for r in rows} == {"api"}
    for r in rows:
        price = fleet.power_prices.get((r["region"], r["power"]), POWER_SPECS[r["power"]][2])
        assert (r["usd_per_node_month"], r["usd_per_month"]) == (price, price * r["scale"])
    assert {r["region"] for r in rows if r["usd_per_node_month"] < 7} == {"eu-west-2"}

    asyncio.run(run_collect(plan_for(fleet, usage=False), db, None))
    rows = monthly_cost(db)
    assert {r["price_source"] for r in rows} == {"bundled"}
    for r in rows:
        price = POWER_SPECS[r["power"]][2]  # the bundled list agrees with AWS's prices
        assert (r["usd_per_node_month"], r["usd_per_month"]) == (price, price * r["scale"])


# --------------------------------------------------------------------------- the flattener


def test_answers_of_unexpected_shape_become_nulls_and_anomalies() -> None:
    """Never raises: a bad value is NULL and one anomaly, a datapoint without its time is
    left out, an answer without its list is 'no_datapoints' and an anomaly."""
    end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    window = (end - dt.timedelta(days=1), end)
    f = UsageFlattener()
    points = [
        {"timestamp": "yesterday"},
        {"timestamp": epoch(end) - 3600, "average": "high", "maximum": 3, "unit": "Percent"},
        7,
    ]
    bad = MetricAnswer("web", "arn:w", "CPUUtilization", "ok", {"metricData": points}, end, 1)
    empty = MetricAnswer("web", "arn:w", "MemoryUtilization", "ok", {"metricData": None}, end, 2)
    found = f.add_metric("r", "111111111111", "us-east-1", window, bad)
    found += f.add_metric("r", "111111111111", "us-east-1", window, empty)
    found += f.add_powers("r", "111111111111", "us-east-1", end, {"powers": [{"price": "7"}]})
    assert [a.error_code for a in found] == ["UnexpectedShape"] * 5
    assert all("yesterday" not in a.message or "timestamp" in a.message for a in found)
    tables = f.take()
    rows = [
        (r["metric"], r["period_start"], r["average"], r["maximum"], r["status"])
        for r in tables["service_utilization"].to_pylist()
    ]
    assert rows == [
        ("CPUUtilization", end - dt.timedelta(hours=1), None, 3.0, "ok"),
        ("MemoryUtilization", None, None, None, "no_datapoints"),
    ]
    (power,) = tables["container_powers"].to_pylist()
    assert power["price_per_month"] is None and power["region"] == "us-east-1"


def test_cli_usage_with_fewer_days(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: Callable[..., Path]
) -> None:
    """`collect --usage --usage-days 2` from the command line: a two-day window, its rows,
    and the lake has them too."""
    fleet = Fleet(2, seed=3, regions=R2)
    make_simulator(fleet=fleet)
    accounts = write_accounts(tmp_path / "a.toml", fleet.account_ids, regions=R2, role_name="R")
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
    out = runner.invoke(
        app,
        ["collect", "--config", str(accounts), "--db", str(db), "--parquet-dir", str(lake),
         "--usage", "--usage-days", "2", "--rate", "2000"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    with Store.open(db, read_only=True) as store:
        start, end = window_of(store)
        assert end - start == dt.timedelta(days=2)
        assert as_utc(store.query_rows(UTILIZATION_SQL)[1]) == utilization_truth(fleet, start, end)
    with lakequery.open_lake(lake) as con:
        (n,) = con.execute(
            "SELECT count(*) FROM service_utilization WHERE status = 'ok'"
        ).fetchone()
    assert n > 0 and n % 48 == 0  # whole days of hourly datapoints, per service and metric


def test_simulator_command_line_throttles_and_denies_an_operation() -> None:
    from inventory.simulator.__main__ import build, parse_args

    sim = build(
        parse_args([f"--throttle-operation={METRIC_DATA}=0.25", f"--deny-operation={POWERS}"])
    )
    assert sim.faults.operation_throttle == {METRIC_DATA: 0.25}
    assert sim.faults.denied_operations == {POWERS}
    with pytest.raises(SystemExit):
        parse_args([f"--throttle-operation={METRIC_DATA}=2"])


async def test_a_stop_keeps_the_main_data_and_records_the_usage_calls_cut_short(
    make_simulator: MakeSimulator,
) -> None:
    """Ctrl-C (SIGTERM) right after GetContainerServices: no usage call is made, the
    services are kept, and the cut-short calls are one 'Interrupted' errors row each
    (the powers call, the first metric call that says how many services it skipped)."""
    fleet = Fleet(1, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet)
    acct = fleet.account_ids[0]
    region = max(R2, key=lambda r: len(fleet.services(acct, r)))
    options = Options(concurrency=1, rate=2000.0, timeout=5.0, usage=True)
    async with Collector(options, [region]) as collector:
        fetcher = UsageFetcher(collector)

        async def after(result: Any) -> Any:
            collector.stop("SIGTERM")
            return await fetcher(result)

        collector.after_collect = after
        account = Account(id=acct, role_arn=f"arn:aws:iam::{acct}:role/R")
        (result,) = [r async for r in collector.results([account])]
    assert result.ok and result.services == fleet.services(acct, region)
    assert [(e.operation, e.error_code) for e in result.anomalies] == [
        (POWERS, "Interrupted"),
        (METRIC_DATA, "Interrupted"),
    ]
    assert "not called for the other" in result.anomalies[1].message
    assert {m.status for m in result.usage.metrics} <= {"failed", "disabled"}
    assert sim.operation_stats(POWERS)["calls"] == sim.operation_stats(METRIC_DATA)["calls"] == 0
