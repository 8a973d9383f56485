"""`collect --deep`: GetContainerServiceDeployments and GetContainerImages per service, against
the simulator's ground truth (`fleet.deployments`, `fleet.images`), computed here from the raw
wire dicts, never with inventory.storage.flatten / inventory.run.deep.

Real parts: aiobotocore clients over HTTP to the simulator, a DuckDB file, Parquet files read
back. Fleets are small (a few accounts × 2 regions, ~17 services)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from fixtures import make_v0
from test_secrets import decoded_duckdb, decoded_parquet, found, found_in_bytes
from typer.testing import CliRunner

from inventory.cli import app
from inventory.model import Account, Options, Plan
from inventory.run.collect import Collector
from inventory.run.deep import DEPLOYMENTS, IMAGES, DeepFetcher, DeepFlattener, DeepResult
from inventory.run.pipeline import run_collect
from inventory.simulator import Faults, Fleet, Simulator
from inventory.storage import lakequery, schema
from inventory.storage.fingerprint import KEY_ENV, Fingerprinter
from inventory.storage.flatten import UNEXPECTED_SHAPE, UNKNOWN_ENUM_VALUE, TargetContext
from inventory.storage.store import Store

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
R2 = ("us-east-1", "eu-west-2")
KEY = "deep-test-fingerprint-key-0123456789abcdef"
DEEP = tuple(schema.DEEP_TABLES)
Row = tuple[Any, ...]


def ms(value: Any) -> int | None:
    """A timestamp (epoch seconds or datetime) as epoch milliseconds: the API's precision."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.timestamp()
    return round(value * 1000)


def plan_for(fleet: Fleet, **options: Any) -> Plan:
    accounts = tuple(Account(id=a, role_arn=f"arn:aws:iam::{a}:role/R") for a in fleet.account_ids)
    return Plan(
        accounts=accounts,
        regions=fleet.regions,
        options=Options(concurrency=8, rate=2000.0, timeout=5.0, deep=True, **options),
    )


def services_of(fleet: Fleet) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (a, r, svc)
        for a in fleet.account_ids
        for r in fleet.regions
        for svc in fleet.services(a, r)
    ]


def truth(fleet: Fleet, fp: Callable[[str], str]) -> dict[str, list[Row]]:
    """The three deep tables (without run_id, collected_at) from the simulator's wire dicts."""
    history: list[Row] = []
    containers: list[Row] = []
    images: list[Row] = []
    for a, r, svc in services_of(fleet):
        name, arn = svc["containerServiceName"], svc["arn"]
        for d in fleet.deployments(a, r, name)["deployments"]:
            ep = d.get("publicEndpoint") or {}
            hc = ep.get("healthCheck") or {}
            history.append(
                (a, r, name, arn, d["version"], d["state"], ms(d["createdAt"]),
                 ep.get("containerName"), ep.get("containerPort"), hc.get("healthyThreshold"),
                 hc.get("unhealthyThreshold"), hc.get("timeoutSeconds"),
                 hc.get("intervalSeconds"), hc.get("path"), hc.get("successCodes"))
            )  # fmt: skip
            for cname, c in d["containers"].items():
                image = c.get("image")
                env = c.get("environment")
                ports = c.get("ports")
                containers.append(
                    (a, r, name, arn, d["version"], cname, image,
                     "lightsail" if image.startswith(":") else "registry",
                     None if c.get("command") is None else tuple(c["command"]),
                     None if env is None else tuple(sorted((k, fp(v)) for k, v in env.items())),
                     None if ports is None else tuple(sorted(ports.items())))
                )  # fmt: skip
        for i in fleet.images(a, r, name)["containerImages"]:
            images.append((a, r, name, i["image"], i["digest"], ms(i["createdAt"]), arn))
    return {
        "deployment_history": sorted(history, key=repr),
        "deployment_history_containers": sorted(containers, key=repr),
        "container_images": sorted(images, key=repr),
    }


def normal(table: str, rows: Iterable[dict[str, Any]]) -> list[Row]:
    """Rows as the truth has them: timestamps in ms, maps as sorted pairs, lists as tuples."""
    out = []
    for row in rows:
        values = []
        for col, v in row.items():
            if col in ("run_id", "collected_at", "run_date"):
                continue
            if isinstance(v, dt.datetime):
                v = ms(v)
            elif col in ("environment", "ports") and v is not None:
                v = tuple(sorted(tuple(p) for p in v))
            elif isinstance(v, list):
                v = tuple(v)
            values.append(v)
        out.append(tuple(values))
    assert [c for c in schema.DEEP_TABLES[table].names if c not in ("run_id", "collected_at")]
    return sorted(out, key=repr)


def stored(query: Callable[[str], Any]) -> dict[str, list[Row]]:
    return {t: normal(t, query(f"SELECT * FROM {t}").to_pylist()) for t in DEEP}


def run_row(db: Path) -> dict[str, Any]:
    with Store.open(db, read_only=True) as store:
        (run,) = store.runs()
    return run


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("engine", "include_env_values", "workers"), [("lean", False, 1), ("botocore", True, 2)]
)
def test_deep_tables_equal_the_ground_truth(
    engine: str,
    include_env_values: bool,
    workers: int,
    tmp_path: Path,
    make_simulator: MakeSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    fleet = Fleet(3, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet)
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
    plan = plan_for(fleet, engine=engine, include_env_values=include_env_values, workers=workers)
    summary = asyncio.run(run_collect(plan, db, str(lake)))
    assert summary.status == "complete" and summary.exit_code == 0
    assert summary.workers == workers  # processes: each worker's deep rows reach the store

    fp = (lambda v: v) if include_env_values else Fingerprinter(KEY.encode())
    want = truth(fleet, fp)
    services = len(services_of(fleet))
    assert services >= 16 and all(want.values())
    # every deployment AWS keeps (past ones too) and every registered image
    assert len(want["deployment_history"]) > services
    with Store.open(db, read_only=True) as store:
        assert stored(store.query) == want
        _, errors = store.query_rows("SELECT * FROM errors")
        _, svc_count = store.query_rows("SELECT count(*) FROM container_services")
    assert errors == [] and svc_count == [(services,)]
    with lakequery.open_lake(lake) as con:  # the lake: fingerprints (no --export-env-values)
        lake_rows = stored(lambda sql: con.sql(sql).to_arrow_table())
    assert lake_rows == truth(fleet, Fingerprinter(KEY.encode()))

    # every call counted: AssumeRole per account, one GetContainerServices per target, two
    # deep calls per service; the simulator saw exactly these requests
    run = run_row(db)
    targets = len(fleet.account_ids) * len(R2)
    assert run["api_calls"] == sim.total_requests == len(fleet.account_ids) + targets + 2 * services
    assert run["retries"] == 0
    assert sim.operation_stats(DEPLOYMENTS)["ok"] == sim.operation_stats(IMAGES)["ok"] == services

    # environment values: only with --include-env-values (the scanner can find them)
    secrets = fleet.secrets()  # the hub's too, which is not collected here
    collected = {v for row in want["deployment_history_containers"] for _, v in row[9] or ()}
    assert len(collected) > 20
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    in_bytes = found_in_bytes(secrets, files)
    in_rows = found(secrets, [*decoded_duckdb(db), *decoded_parquet(lake)])
    assert found(secrets, decoded_parquet(lake)) == set()
    if include_env_values:
        assert in_rows == collected <= secrets
    else:
        assert in_bytes == {} and in_rows == set()


def test_cli_deep_and_a_failing_deep_call_leaves_the_target_whole(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Throttling, 5xx and dropped connections on every Lightsail call are retried and counted;
    a deep call that fails for good (one service's images: NotFound) is one errors row, and
    the target, its scan and the run stay whole."""
    monkeypatch.setenv(KEY_ENV, KEY)
    fleet = Fleet(3, seed=3, regions=R2)
    a, r, svc = services_of(fleet)[1]
    gone = svc["containerServiceName"]
    real_images = fleet.images
    want = truth(fleet, Fingerprinter(KEY.encode()))
    want["container_images"] = [i for i in want["container_images"] if i[:3] != (a, r, gone)]

    def images(account: str, region: str, name: str) -> dict[str, Any]:
        if (account, region, name) == (a, r, gone):
            raise KeyError(name)  # the simulator answers NotFoundException
        return real_images(account, region, name)

    monkeypatch.setattr(fleet, "images", images)
    faults = Faults(throttle_rate=0.25, error_5xx_rate=0.08, drop_rate=0.03, seed=7)
    sim = make_simulator(fleet=fleet, faults=faults)
    config = write_accounts(tmp_path / "accounts.toml", fleet.account_ids, regions=R2)
    db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
    out = CliRunner().invoke(
        app,
        ["collect", "--config", str(config), "--db", str(db), "--parquet-dir", str(lake),
         "--deep", "--rate", "2000", "--timeout", "5"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output

    with Store.open(db, read_only=True) as store:
        assert stored(store.query) == want
        _, errors = store.query_rows(
            "SELECT account_id, region, operation, error_code, message, attempts >= 1 FROM errors"
        )
        _, scans = store.query_rows("SELECT DISTINCT status FROM scans")
    assert errors == [
        (a, r, IMAGES, "NotFoundException", f"service '{gone}': "
         f"The container service '{gone}' does not exist.", True),
    ]  # fmt: skip
    assert scans == [("ok",)]
    run = run_row(db)
    assert run["status"] == "complete" and run["targets_failed"] == 0
    assert run["api_calls"] == sim.total_requests and run["retries"] > 0
    deep_stats = [sim.operation_stats(op) for op in (DEPLOYMENTS, IMAGES)]
    assert all(s["throttled"] + s["errors_5xx"] + s["dropped"] > 0 for s in deep_stats)

    # the deep tables are in the lake, and `query` reaches them
    q = CliRunner().invoke(
        app, ["query", "--lake", str(lake), "-f", "csv", "select count(*) from container_images"]
    )
    assert q.exit_code == 0 and q.stdout.splitlines()[1] == str(len(want["container_images"]))


# --------------------------------------------------------------------------- the fetcher


async def _one_target(
    fleet: Fleet, sim: Simulator, hook: Callable[[Collector, DeepFetcher], Any]
) -> tuple[DeepResult, Collector]:
    """Collect the showcase account's busiest region with `hook(collector, fetcher)` as the
    collector's after_collect."""
    acct = fleet.account_ids[0]
    region = max(fleet.regions, key=lambda r: len(fleet.services(acct, r)))
    options = Options(concurrency=1, rate=2000.0, timeout=5.0, deep=True)
    async with Collector(options, [region]) as collector:
        fetcher = DeepFetcher(collector)
        collector.after_collect = lambda result: hook(collector, fetcher)(result)
        account = Account(id=acct, role_arn=f"arn:aws:iam::{acct}:role/R")
        (result,) = [r async for r in collector.results([account])]
    assert isinstance(result, DeepResult)
    assert result.ok and result.services == fleet.services(acct, region)  # main data kept
    return result, collector


async def test_a_refused_operation_is_called_once_per_target(make_simulator: MakeSimulator) -> None:
    fleet = Fleet(1, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet)

    def deny_deep_calls(collector: Collector, fetcher: DeepFetcher) -> Any:
        async def after(result: Any) -> Any:
            sim.faults.denied_regions.add(("*", result.region))  # from now on: AccessDenied
            return await fetcher(result)

        return after

    result, collector = await _one_target(fleet, sim, deny_deep_calls)
    n = len(result.services or [])
    assert n >= 4 and result.deep == []
    assert [(e.operation, e.error_code, e.attempts) for e in result.anomalies] == [
        (DEPLOYMENTS, "AccessDeniedException", 1),
        (IMAGES, "AccessDeniedException", 1),
    ]
    for e in result.anomalies:
        assert f"(not called for the other {n - 1} of its {n} services" in e.message
    assert sim.operation_stats(DEPLOYMENTS)["calls"] == sim.operation_stats(IMAGES)["calls"] == 1
    assert collector.counter.api_calls == 4 == sim.total_requests  # AssumeRole, GCS, 2 deep


async def test_a_stop_keeps_the_main_data_and_records_what_was_cut_short(
    make_simulator: MakeSimulator,
) -> None:
    fleet = Fleet(1, seed=3, regions=R2)
    sim = make_simulator(fleet=fleet)

    def stop_first(collector: Collector, fetcher: DeepFetcher) -> Any:
        async def after(result: Any) -> Any:
            collector.stop("SIGTERM")
            return await fetcher(result)

        return after

    result, _ = await _one_target(fleet, sim, stop_first)
    n = len(result.services or [])
    assert [(e.operation, e.error_code) for e in result.anomalies] == [
        (DEPLOYMENTS, "Interrupted"),
        (IMAGES, "Interrupted"),
    ]
    assert all("collect was stopped (SIGTERM)" in e.message for e in result.anomalies)
    assert all(f"other {n - 1} of its {n} services" in e.message for e in result.anomalies)
    assert sim.operation_stats(DEPLOYMENTS)["calls"] == sim.operation_stats(IMAGES)["calls"] == 0


# --------------------------------------------------------------------------- flattening


def test_odd_answers_become_anomalies_never_errors_nor_values() -> None:
    secret = "0123456789abcdef-secret"
    ctx = TargetContext("20261127T053650Z-3f9a1c", dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
                        "011111111111", None, "eu-west-2")  # fmt: skip
    f = DeepFlattener(Fingerprinter(b"k" * 32))
    good = {
        "version": 2,
        "state": "EXPLODED",
        "createdAt": 1_700_000_000.5,
        "containers": {"app": {"image": ":api.app.3", "environment": {"A": secret, "B": 7}}},
    }
    anomalies = [
        *f.add(ctx, DEPLOYMENTS, "api", "arn:x", {"deployments": [good, "nope"]}),
        *f.add(ctx, DEPLOYMENTS, "api", "arn:x", {"deployments": None}),
        *f.add(ctx, DEPLOYMENTS, "api", "arn:x", ["not", "an", "object"]),
        *f.add(ctx, IMAGES, "api", "arn:x", {"containerImages": [{"image": 5, "createdAt": "x"}]}),
    ]
    codes = [a.error_code for a in anomalies]
    assert codes == [UNKNOWN_ENUM_VALUE, UNEXPECTED_SHAPE, UNEXPECTED_SHAPE, UNEXPECTED_SHAPE,
                     UNEXPECTED_SHAPE, UNEXPECTED_SHAPE, UNEXPECTED_SHAPE]  # fmt: skip
    text = "\n".join(a.message for a in anomalies)
    assert "deployments[0].state" in text and "deployments[0].containers['app']" in text
    assert "deployments[1]: expected object" in text and "currentDeployment" not in text
    assert secret not in text
    tables = f.take()
    assert {name: t.schema for name, t in tables.items()} == schema.DEEP_TABLES
    (dep,) = tables["deployment_history"].to_pylist()
    assert (dep["version"], dep["state"], dep["service_arn"]) == (2, "EXPLODED", "arn:x")
    (con,) = tables["deployment_history_containers"].to_pylist()
    env = dict(con["environment"])
    assert env["A"].startswith("hmac-sha256:") and env["B"] is None
    (img,) = tables["container_images"].to_pylist()
    assert (img["image"], img["created_at"], img["service_name"]) == (None, None, "api")
    assert img["service_arn"] == "arn:x"  # the service's identity, not only its name
    assert all(t.num_rows == 0 for t in f.take().values())


def test_an_older_store_gains_the_deep_tables_on_open(tmp_path: Path) -> None:
    db = tmp_path / "inventory.duckdb"
    with gzip.open(make_v0.DB_GZ, "rb") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with Store.open(db, read_only=True) as reader:
        _, before = reader.query_rows("SELECT table_name FROM duckdb_tables()")
    assert not {t for (t,) in before} & set(DEEP)
    with Store.open(db) as store:  # a writer migrates
        for table in DEEP:
            t = store.read_run(make_v0.RUN_IDS[0], table).read_all()
            assert t.num_rows == 0 and t.schema == schema.DEEP_TABLES[table]
        runs = store.runs()
    assert {(r["shard"], r["shards"]) for r in runs} == {(None, None)}
