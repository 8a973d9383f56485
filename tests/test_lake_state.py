"""State that lives in the lake: a scheduled container with no disk that survives the night.

Each night is `collect --config s3://… --db <new, thrown away> --parquet-dir s3://…`, with the
fingerprint key in INVENTORY_FINGERPRINT_KEY (the scheduler's secret); then `diff --lake`,
`report --lake` and `prune --lake` work from the lake alone, against moto's S3 server on
127.0.0.1 and the simulator, through the real CLI.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import s3_keys
from rich.console import Console
from test_diff import REGIONS, expected_changes
from typer.testing import CliRunner

from inventory import render
from inventory.cli import app
from inventory.model import ErrorRecord, utcnow
from inventory.plan.runid import new_run_id
from inventory.run.pipeline import RunSummary
from inventory.simulator import Fleet, Simulator
from inventory.storage import lakequery, schema
from inventory.storage.fingerprint import KEY_ENV, Fingerprinter, key_id, key_path

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
KEY_A = "night-scheduler-secret-key-A-0123456789abcdef"
KEY_B = "night-scheduler-secret-key-B-0123456789abcdef"
runner = CliRunner()


def one_line(text: str) -> str:
    return " ".join(text.split())


class Nights:
    """The bucket holding the accounts file and the lake; `night(db)` is one scheduled run."""

    def __init__(self, s3: Any, tmp_path: Path, fleet: Fleet, write_accounts: WriteAccounts):
        self.s3, self.tmp = s3, tmp_path
        self.lake = f"s3://{s3.bucket}/lake"
        self.config = f"s3://{s3.bucket}/config/accounts.toml"
        local = write_accounts(tmp_path / "accounts.toml", fleet.all_account_ids, regions=REGIONS)
        s3.put_object(Bucket=s3.bucket, Key="config/accounts.toml", Body=local.read_bytes())
        local.unlink()  # the container has only the bucket

    def night(self, db: str, *extra: str) -> Any:
        args = ["collect", "--config", self.config, "--db", str(self.tmp / db)]
        return runner.invoke(app, [*args, "--parquet-dir", self.lake, *extra])

    def lake_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return lakequery.query_rows(self.lake, sql)[1]

    def objects(self) -> list[str]:
        return s3_keys(self.s3, "lake/")


@pytest.fixture
def nights(
    s3: Any,
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Nights, Simulator]:
    fleet = Fleet(10, seed=3, regions=REGIONS)  # as test_diff: every kind of change
    sim = make_simulator(fleet=fleet)
    monkeypatch.setenv(KEY_ENV, KEY_A)
    return Nights(s3, tmp_path, fleet, write_accounts), sim


def test_two_nights_with_throw_away_stores_then_diff_report_prune_from_the_lake(
    nights: tuple[Nights, Simulator], tmp_path: Path
) -> None:
    n, sim = nights
    first = n.night("a.duckdb")
    assert first.exit_code == 0, first.output
    evolved = sim.fleet.evolve(seed=1)
    accounts = set(sim.fleet.all_account_ids)
    known = expected_changes(evolved.changes, accounts, Fingerprinter(KEY_A.encode()))
    assert {c["kind"] for c in known} >= {"service_added", "state", "env_value"}
    sim.set_fleet(evolved)
    second = n.night("b.duckdb")  # a new store: the previous night is only in the lake
    assert second.exit_code == 0, second.output

    runs = n.lake_rows("SELECT run_id, fingerprint_key_id FROM runs ORDER BY started_at")
    (night1, kid1), (night2, kid2) = runs
    assert kid1 == kid2 == key_id(KEY_A.encode())
    assert not key_path(tmp_path / "a.duckdb").exists()  # the key is the scheduler's secret

    # diff --lake, no --from/--to: each pair's two newest good scans, found in the lake
    out = runner.invoke(app, ["diff", "--lake", n.lake, "--format", "json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    rows = [
        {k: c[k] for k in ("kind", "account_id", "region", "service_name", "field", "old", "new")}
        for c in got["changes"]
    ]
    canon = sorted(json.dumps(r, sort_keys=True) for r in rows)
    assert canon == sorted(json.dumps(r, sort_keys=True) for r in known)
    assert {(c["from_run"], c["to_run"]) for c in got["changes"]} == {(night1, night2)}
    assert got["env_values_not_compared"] == [] and got["compared"] == len(accounts) * len(REGIONS)

    # report --lake: the page of the newest night, from the lake alone
    page = tmp_path / "report.html"
    out = runner.invoke(app, ["report", "--lake", n.lake, "--html", str(page)])
    assert out.exit_code == 0, out.output
    assert f"run {night2} (complete)" in one_line(out.output)
    html = page.read_text()
    ((services,),) = n.lake_rows(f"SELECT services FROM runs WHERE run_id = '{night2}'")
    assert f"<code>{night2}</code>" in html and services > 0
    assert (
        f'data-total="services"><div class="k">services</div><div class="v">{services:,}<' in html
    )
    older = runner.invoke(app, ["report", "--lake", n.lake, "--run", night1, "--html", "-"])
    assert older.exit_code == 0 and f"<code>{night1}</code>" in older.stdout
    both = runner.invoke(app, ["report", "--lake", n.lake, "--db", "x.duckdb", "--html", "-"])
    assert both.exit_code == 2 and "give one or the other" in both.output

    # prune --lake: night 1 is nobody's newest good snapshot any more, night 2 defines the fleet
    before = n.objects()
    sizes = {
        k: n.s3.head_object(Bucket=n.s3.bucket, Key=k)["ContentLength"]
        for k in before
        if f"/{night1}." in k
    }
    assert len(sizes) == len(schema.TABLES)
    dry = runner.invoke(app, ["prune", "--lake", n.lake, "--keep-days", "0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 run; 1 run kept" in dry.output and n.objects() == before
    done = runner.invoke(app, ["prune", "--lake", n.lake, "--keep-days", "0"])
    assert done.exit_code == 0, done.output
    text = one_line(done.output)
    assert "removed 1 run; 1 run kept" in text
    assert f"{len(sizes)} files ({sum(sizes.values()):,} bytes) deleted from {n.lake}" in text
    assert n.objects() == sorted(set(before) - set(sizes))
    assert n.lake_rows("SELECT run_id FROM runs") == [(night2,)]
    again = runner.invoke(app, ["prune", "--lake", n.lake, "--keep-days", "0"])
    assert again.exit_code == 0 and "removed 0 runs; 1 run kept" in again.output


def test_another_key_with_a_new_store_is_refused_by_the_lakes_runs(
    nights: tuple[Nights, Simulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, _ = nights
    assert n.night("a.duckdb").exit_code == 0
    before = n.objects()

    monkeypatch.setenv(KEY_ENV, KEY_B)
    refused = n.night("b.duckdb")
    assert refused.exit_code == 2, refused.output
    line = one_line(refused.output)
    assert f"{KEY_ENV}: fingerprint key id {key_id(KEY_B.encode())}" in line
    assert f"the runs in the lake {n.lake} used key id {key_id(KEY_A.encode())}" in line
    assert "--new-fingerprint-key" in line and "Traceback" not in line
    assert n.objects() == before  # nothing written to the lake

    monkeypatch.delenv(KEY_ENV)  # the secret not given: a key file would be minted
    missing = n.night("c.duckdb")
    assert missing.exit_code == 2 and f"the runs in the lake {n.lake}" in one_line(missing.output)
    assert not key_path(tmp_path / "c.duckdb").exists() and n.objects() == before

    monkeypatch.setenv(KEY_ENV, KEY_B)
    accepted = n.night("d.duckdb", "--new-fingerprint-key")
    assert accepted.exit_code == 0, accepted.output
    kids = n.lake_rows("SELECT DISTINCT fingerprint_key_id FROM runs ORDER BY 1")
    assert sorted(k for (k,) in kids) == sorted([key_id(KEY_A.encode()), key_id(KEY_B.encode())])
    out = runner.invoke(app, ["diff", "--lake", n.lake, "--format", "json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["env_values_not_compared"] != []


def test_a_lake_that_cannot_be_read_stops_collect_before_anything_is_written(
    nights: tuple[Nights, Simulator], tmp_path: Path
) -> None:
    n, _ = nights
    assert n.night("a.duckdb").exit_code == 0
    runs_key = next(k for k in n.objects() if k.startswith("lake/runs/"))
    n.s3.put_object(Bucket=n.s3.bucket, Key=runs_key, Body=b"not parquet")
    before = n.objects()
    out = n.night("b.duckdb")
    assert out.exit_code == 2, out.output
    assert f"--parquet-dir {n.lake}: cannot read the lake's runs" in one_line(out.output)
    assert n.objects() == before


def test_the_accounts_file_from_s3_for_collect_and_doctor(
    nights: tuple[Nights, Simulator],
) -> None:
    n, sim = nights
    doctor = runner.invoke(app, ["doctor", "--config", n.config, "--regions", "us-east-1"])
    assert doctor.exit_code == 0, doctor.output
    sampled = [ln.split()[2].rstrip(":") for ln in doctor.output.splitlines() if "assumed" in ln]
    assert sampled == list(sim.fleet.all_account_ids[:3])  # the file's first three accounts

    bucket = n.s3.bucket
    for url, problem in (
        (f"s3://{bucket}/config/nothing.toml", "no such object (NoSuchKey)"),
        ("s3://no-such-bucket-h13/accounts.toml", "no such object (NoSuchBucket)"),
        (f"s3://{bucket}/config/", "names no object: give s3://bucket/key"),
    ):
        for command in ("collect", "doctor"):
            out = runner.invoke(app, [command, "--config", url])
            assert out.exit_code == 2, out.output
            assert (
                one_line(out.output)
                == f"error: {url}: --config = '{url}': cannot be read from S3: {problem}"
            )


def test_a_sharded_night_is_one_run_in_report_lake(
    nights: tuple[Nights, Simulator], tmp_path: Path
) -> None:
    n, sim = nights
    run_id = new_run_id(dt.datetime.now(dt.UTC))
    for k in (0, 1):  # two array-job tasks, each with its own throw-away store
        out = n.night(f"shard-{k}.duckdb", "--shard", f"{k}/2", "--run-id", run_id)
        assert out.exit_code == 0, out.output
    shards = n.lake_rows("SELECT shard, accounts, services FROM runs ORDER BY shard")
    assert [s for s, _, _ in shards] == [0, 1] and all(a > 0 for _, a, _ in shards)

    out = runner.invoke(app, ["report", "--lake", n.lake, "--html", "-"])
    assert out.exit_code == 0, out.output
    accounts = sum(a for _, a, _ in shards)
    services = sum(s for _, _, s in shards)
    assert accounts == len(sim.fleet.all_account_ids)
    for key, value in (("accounts", accounts), ("services", services)):
        card = f'data-total="{key}"><div class="k">{key}</div><div class="v">{value:,}<'
        assert card in out.stdout, key
    assert f"run {run_id} (complete)" in one_line(out.stderr)


@pytest.mark.parametrize(
    ("dest", "hint"),
    [
        ("s3://lake/lightsail", "--db night.duckdb (or --lake s3://lake/lightsail)"),
        ("data/parquet", "--db night.duckdb\n"),  # a local lake: the store is kept
    ],
)
def test_the_failures_hint_names_an_s3_lake_beside_a_throw_away_store(dest: str, hint: str) -> None:
    """A container's --db is gone when the task ends: the hint names the lake too."""
    now = utcnow()
    summary = RunSummary("20261129T020000Z-abc123", "partial", now, now, db_path="night.duckdb")
    summary.parquet_dest = dest
    summary.tally.targets_failed = 1
    summary.tally.failures.append(
        ErrorRecord(now, "111111111111", "us-east-1", "GetContainerServices", "Denied", "no", 1)
    )
    out = Console(file=io.StringIO(), width=400)
    render.print_failures(out, summary)
    assert hint in out.file.getvalue()  # type: ignore[attr-defined]


def test_s3_that_does_not_answer_is_exit_1_so_the_scheduler_retries_the_night(
    nights: tuple[Nights, Simulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing or denied is the user's to fix (exit 2, no retry); S3 not answering now is
    exit 1, which a Kubernetes Job's backoff or EventBridge's retry policy tries again."""
    n, _ = nights
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    local = tmp_path / "accounts.toml"
    n.s3.download_file(n.s3.bucket, "config/accounts.toml", str(local))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    out = n.night("a.duckdb")  # the accounts file on S3
    assert out.exit_code == 1, out.output
    assert f"error: --config {n.config}: cannot be read from S3: cannot be read (" in one_line(
        out.output
    )
    args = ["collect", "--config", str(local), "--db", str(tmp_path / "b.duckdb")]
    out = runner.invoke(app, [*args, "--parquet-dir", n.lake])  # the lake's runs, for the key
    assert out.exit_code == 1, out.output
    assert f"--parquet-dir {n.lake}: cannot read the lake's runs" in one_line(out.output)
    assert n.objects() == []  # nothing was written
