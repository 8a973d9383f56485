"""Secrets stay secret: no environment value, credential or fingerprint key in any byte
the inventory writes (DuckDB file and WAL, Parquet files, whatever else lands beside them),
prints (stdout, stderr) or logs (every logger, DEBUG level), errors and retries included.

Every file is scanned twice: its raw bytes, and its decoded contents (every string of every
row of every table and view), since DuckDB and Parquet may compress what they store. The
scanner proves it can fail: with --include-env-values it finds the values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import BASE_SECRET_KEY, Faults, Fleet, Simulator
from inventory.storage.fingerprint import load_key

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
R3 = ("us-east-1", "eu-west-2", "ap-northeast-1")


def strings(value: Any) -> Iterator[str]:
    """Every string inside a decoded value (maps come as lists of pairs)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings(v)


def decoded_duckdb(db: Path) -> Iterator[str]:
    """Every string in every table and view of the database."""
    with duckdb.connect(str(db), read_only=True) as con:
        relations = [
            r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()
        ]
        assert {"containers", "errors", "latest_containers"} <= set(relations)
        for name in relations:
            yield name
            yield from strings(con.sql(f'select * from "{name}"').to_arrow_table().to_pylist())


def decoded_parquet(lake: Path) -> Iterator[str]:
    files = sorted(lake.rglob("*.parquet"))
    assert len(files) >= 6
    for f in files:
        yield from strings(pq.read_table(f).to_pylist())


def found(secrets: Iterable[str], texts: Iterable[str]) -> set[str]:
    secrets = [s for s in secrets if s]
    hits: set[str] = set()
    for text in texts:
        hits.update(s for s in secrets if s in text)
    return hits


def found_in_bytes(secrets: Iterable[str | bytes], files: Iterable[Path]) -> dict[str, set[str]]:
    needles = [(s, s.encode() if isinstance(s, str) else s) for s in secrets if s]
    out: dict[str, set[str]] = {}
    for f in files:
        data = f.read_bytes()
        hits = {repr(s) for s, b in needles if b in data}
        if hits:
            out[str(f)] = hits
    return out


def env_values_in_targets(
    fleet: Fleet, accounts: Iterable[str], regions: Iterable[str]
) -> set[str]:
    """The environment values of the services a collect of these targets answers with."""
    out: set[str] = set()
    for acct in accounts:
        for region in regions:
            for svc in fleet.services(acct, region):
                for slot in ("currentDeployment", "nextDeployment"):
                    for c in (svc.get(slot) or {}).get("containers", {}).values():
                        out.update((c.get("environment") or {}).values())
    return out


def collect(tmp_path: Path, config: Path, *extra: str) -> tuple[Any, Path, Path]:
    db, lake = tmp_path / "out" / "inv.duckdb", tmp_path / "out" / "lake"
    result = CliRunner().invoke(
        app,
        ["collect", "--config", str(config), "--db", str(db), "--parquet-dir", str(lake), *extra],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result, db, lake


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    return caplog


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [caplog.text]
    for r in caplog.records:
        out.append(r.getMessage())
        out.append(repr(r.args))
        if r.exc_info:
            out.append(logging.Formatter().formatException(r.exc_info))
    return out


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_nothing_written_printed_or_logged_holds_a_secret(
    engine: str,
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    debug_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INVENTORY_FINGERPRINT_KEY", raising=False)
    fleet = Fleet(6, seed=1, regions=R3)
    accounts = fleet.account_ids
    faults = Faults(
        throttle_rate=0.2,
        error_5xx_rate=0.1,
        drop_rate=0.03,
        denied_accounts={accounts[-1]},
        denied_regions={("*", R3[1])},
        malformed={(accounts[0], R3[0])},  # the showcase's busiest region: anomalies
        seed=5,
    )
    sim = make_simulator(fleet=fleet, faults=faults)
    config = write_accounts(tmp_path / "accounts.toml", accounts)

    result, db, lake = collect(tmp_path, config, "--max-attempts", "12", "--engine", engine)

    assert result.exit_code == 3, result.output
    env_values = fleet.secrets()
    collected = env_values_in_targets(fleet, accounts[:-1], (R3[0], R3[2]))
    assert len(collected) >= 10 and collected <= env_values  # values really went through
    key = load_key(db)
    creds = [BASE_SECRET_KEY]
    for c in sim.issued_credentials():
        creds += [c.secret_access_key, c.session_token]
    assert len(creds) == 1 + 2 * len(accounts[:-1])

    # the run went through errors, retries and anomalies, so their messages are scanned too
    with duckdb.connect(str(db), read_only=True) as con:
        codes = {r[0] for r in con.execute("select error_code from errors").fetchall()}
        counters = con.execute("select api_calls, retries from runs").fetchone()
        attempts = dict(
            ((a, r), n)
            for a, r, n in con.execute("select account_id, region, attempts from scans").fetchall()
        )
    assert {"AccessDenied", "AccessDeniedException"} <= codes
    assert codes & {"UnexpectedShape", "UnknownEnumValue"}
    # ... and every request was counted: retries, drops and the denied AssumeRole included
    calls = sim.lightsail_calls()
    assert counters == (sim.total_requests, sum(calls.values()) - len(calls))
    assert counters[1] > 0
    assert {t: n for t, n in attempts.items() if n} == calls
    records = debug_logs.records
    assert any(r.levelno == logging.DEBUG and r.name.startswith("botocore") for r in records)

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert db in files and any(p.suffix == ".parquet" for p in files)
    parquet = [p for p in files if p.suffix == ".parquet"]
    outputs = [result.stdout, result.stderr]
    everything = [*outputs, *log_texts(debug_logs)]

    # environment values: nowhere
    assert found_in_bytes(env_values, files) == {}
    assert found(env_values, decoded_duckdb(db)) == set()
    assert found(env_values, decoded_parquet(lake)) == set()
    assert found(env_values, everything) == set()
    # credentials: in no log line, output or error message, and nowhere on disk
    assert found(creds, everything) == set()
    assert found(creds, decoded_duckdb(db)) == set()
    assert found_in_bytes(creds, files) == {}
    # the fingerprint key: never exported, never printed or logged
    assert found_in_bytes([key, key.hex()], [*parquet, db]) == {}
    assert found([key.hex(), key.decode("latin-1")], everything) == set()


def test_the_scanner_finds_values_that_are_stored(
    tmp_path: Path, make_simulator: MakeSimulator, write_accounts: WriteAccounts
) -> None:
    """--include-env-values --export-env-values stores and exports the values: the same scan
    must see them (else it is blind)."""
    fleet = Fleet(3, seed=1, regions=R3[:1])
    make_simulator(fleet=fleet)
    config = write_accounts(tmp_path / "accounts.toml", fleet.account_ids)

    result, db, lake = collect(tmp_path, config, "--include-env-values", "--export-env-values")

    assert result.exit_code == 0, result.output
    collected = env_values_in_targets(fleet, fleet.account_ids, R3[:1])
    assert collected
    assert found(collected, decoded_duckdb(db)) == collected
    assert found(collected, decoded_parquet(lake)) == collected
    assert found(collected, [result.stdout, result.stderr]) == set()
