"""Values stay where the user put them: `--include-env-values` stores environment values (and
secret-looking command arguments) in the DuckDB file only; the Parquet lake gets their
fingerprints unless `--export-env-values` (collect and export) says otherwise. Command
arguments that carry secrets are fingerprinted like environment values, by the same
secret-like rule as the `secret_like_env_names` named query."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import Fleet, Simulator
from inventory.storage.fingerprint import Fingerprinter, load_key

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
REGION = "us-east-1"
# Planted in one container of the fleet: (argument as sent, secret it carries or None).
COMMAND = [
    ("./app", None),
    ("--password=hunter2-pw", "hunter2-pw"),
    ("--token", None),
    ("tok-0b5e1c", "tok-0b5e1c"),
    ("DB_PASSWORD=pw-4471", "pw-4471"),
    ("--api-key", None),
    ("ak-93f2", "ak-93f2"),
    ("--port", None),
    ("8080", None),
    ("--verbose", None),
]
SHELL = ["sh", "-c", "export GITHUB_TOKEN=ghp-77aa; exec ./run --secret s-5150 --workers 2"]
SECRETS = {s for _, s in COMMAND if s} | {"ghp-77aa;", "s-5150"}


def plant(fleet: Fleet) -> tuple[str, str, str]:
    """Give two containers of the fleet secret-carrying commands (the simulator serves the
    fleet's cached answers); returns (account, service, container) of the first."""
    for account in fleet.account_ids:
        for svc in fleet.services(account, REGION):
            containers = (svc.get("currentDeployment") or {}).get("containers") or {}
            if len(containers) >= 1:
                names = sorted(containers)
                containers[names[0]]["command"] = [arg for arg, _ in COMMAND]
                for other in fleet.services(account, REGION):
                    dep = other.get("nextDeployment") or other.get("currentDeployment") or {}
                    for c in (dep.get("containers") or {}).values():
                        if c is not containers[names[0]]:
                            c["command"] = list(SHELL)
                            break
                return account, svc["containerServiceName"], names[0]
    raise AssertionError("the fleet has no container in " + REGION)


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def lake_rows(lake: Path, table: str = "containers") -> list[dict[str, Any]]:
    files = sorted((lake / table).rglob("*.parquet"))
    assert files
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def store_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        rel = con.sql(sql)
        return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def all_strings(rows: list[dict[str, Any]]) -> str:
    return repr(rows)


def env_values(rows: list[dict[str, Any]]) -> set[str]:
    return {v for r in rows for _, v in (_pairs(r["environment"])) if v is not None}


def _pairs(m: Any) -> list[tuple[str, Any]]:
    if m is None:
        return []
    return list(m.items()) if isinstance(m, dict) else [tuple(p) for p in m]


@pytest.fixture
def collected(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[Any, Path, Path, Fleet]]:
    monkeypatch.delenv("INVENTORY_FINGERPRINT_KEY", raising=False)

    def run(*flags: str) -> tuple[Any, Path, Path, Fleet]:
        fleet = Fleet(3, seed=1, regions=[REGION])
        plant(fleet)
        make_simulator(fleet=fleet)
        config = write_accounts(
            tmp_path / "accounts.toml", fleet.account_ids, external_id=None, regions=[REGION]
        )
        db, lake = tmp_path / "inv.duckdb", tmp_path / "lake"
        result = invoke(
            "collect", "-c", str(config), "--db", str(db), "--parquet-dir", str(lake), *flags
        )
        assert result.exit_code == 0, result.output
        return result, db, lake, fleet

    return run


def test_include_env_values_keeps_values_out_of_the_lake(
    collected: Callable[..., tuple[Any, Path, Path, Fleet]], tmp_path: Path
) -> None:
    _, db, lake, _ = collected("--include-env-values")
    fp = Fingerprinter(load_key(db))
    stored = store_rows(db, "select * from containers")
    values = env_values(stored)
    assert len(values) >= 3 and not any(v.startswith("hmac-sha256:") for v in values)
    commands = [r["command"] for r in stored if r["command"]]
    assert [a for a, _ in COMMAND] in commands  # the store keeps what the user asked for

    # the lake: the same rows, values replaced by the store key's fingerprints
    in_lake = lake_rows(lake)
    assert env_values(in_lake) == {fp(v) for v in values}
    assert [arg if s is None else arg.replace(s, fp(s)) for arg, s in COMMAND] in [
        r["command"] for r in in_lake
    ]
    for f in lake.rglob("*.parquet"):
        data = f.read_bytes()
        assert not [v for v in values | SECRETS if v.encode() in data], f
    assert not [v for v in values | SECRETS if v in all_strings(in_lake)]

    # export: fingerprints again by default; the values only when asked
    (run_id,) = (r["run_id"] for r in store_rows(db, "select run_id from runs"))
    again, plain = tmp_path / "again", tmp_path / "plain"
    assert invoke("export", "--run", run_id, "--to", str(again), "--db", str(db)).exit_code == 0
    assert env_values(lake_rows(again)) == {fp(v) for v in values}
    result = invoke(
        "export", "--run", run_id, "--to", str(plain), "--db", str(db), "--export-env-values"
    )
    assert result.exit_code == 0, result.output
    assert env_values(lake_rows(plain)) == values
    assert [a for a, _ in COMMAND] in [r["command"] for r in lake_rows(plain)]


def test_export_env_values_exports_them(
    collected: Callable[..., tuple[Any, Path, Path, Fleet]],
) -> None:
    _, db, lake, _ = collected("--include-env-values", "--export-env-values")
    values = env_values(store_rows(db, "select * from containers"))
    assert values and env_values(lake_rows(lake)) == values


def test_export_env_values_needs_include_env_values(tmp_path: Path) -> None:
    result = invoke("collect", "--export-env-values", "--db", str(tmp_path / "x.duckdb"))
    assert result.exit_code == 2
    assert "--export-env-values: only with --include-env-values" in result.output
    assert not (tmp_path / "x.duckdb").exists()


def test_secret_command_arguments_are_fingerprinted(
    collected: Callable[..., tuple[Any, Path, Path, Fleet]], tmp_path: Path
) -> None:
    result, db, lake, _ = collected()
    fp = Fingerprinter(load_key(db))
    want = [arg if s is None else arg.replace(s, fp(s)) for arg, s in COMMAND]
    stored = [r["command"] for r in store_rows(db, "select command from containers")]
    assert want in stored
    (shell,) = [c for c in stored if c and c[0] == "sh"][:1]
    assert shell == [
        "sh",
        "-c",
        f"export GITHUB_TOKEN={fp('ghp-77aa;')} exec ./run --secret {fp('s-5150')} --workers 2",
    ]
    assert want in [r["command"] for r in lake_rows(lake)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    hits = {str(f): [s for s in SECRETS if s.encode() in f.read_bytes()] for f in files}
    assert {f: h for f, h in hits.items() if h} == {}
    assert not [s for s in SECRETS if s in result.output]


def test_secret_like_rule_has_one_home(
    collected: Callable[..., tuple[Any, Path, Path, Fleet]],
) -> None:
    """The named query binds the collector's own pattern, and both agree name by name."""
    from inventory.storage.fingerprint import SECRET_NAME_PATTERN, is_secret_name

    sql = Path(__file__).parent.parent / "sql" / "queries" / "secret_like_env_names.sql"
    text = sql.read_text(encoding="utf-8")
    assert "PASSWORD|" not in text  # no second copy of the rule
    _, db, _, _ = collected()
    result = invoke("query", "secret_like_env_names", "--db", str(db), "--format", "json")
    assert result.exit_code == 0, result.output
    import json

    flagged = {r["env_name"] for r in json.loads(result.stdout)}
    names = {k for r in store_rows(db, "select * from latest_containers") for k, _ in
             _pairs(r["environment"])}  # fmt: skip
    assert flagged and names - flagged  # some are, some are not
    assert flagged == {n for n in names if is_secret_name(n)}
    probes = ["db_password", "APIKEY", "api-key", "Auth", "home", "PORT", "monkey", "x_dsn"]
    with duckdb.connect() as con:
        for name in probes:
            (sql_says,) = con.execute(
                "select regexp_matches(upper($n), upper($p))", {"n": name, "p": SECRET_NAME_PATTERN}
            ).fetchone()
            assert sql_says == is_secret_name(name), name


@pytest.mark.parametrize(
    ("command", "want"),
    [
        (["serve", "--port", "80"], None),
        (["--password=a", "-p", "1"], ["--password=<a>", "-p", "1"]),
        (["--Password", "a", "b"], ["--Password", "<a>", "b"]),
        (["--token", "--verbose"], None),  # an option after it is no value
        (["--secret", "two words"], ["--secret", "<two words>"]),
        (["AWS_SECRET_ACCESS_KEY=a=b"], ["AWS_SECRET_ACCESS_KEY=<a=b>"]),
        (["-c", "A_TOKEN=x  run"], ["-c", "A_TOKEN=<x>  run"]),
        (["--password=hmac-sha256:0123456789abcdef"], None),  # already a fingerprint
        (["--auth", 7, "x"], None),  # not a string: left for flatten to report
    ],
)
def test_redact_command_forms(command: list[object], want: list[object] | None) -> None:
    from inventory.storage.fingerprint import redact_command

    assert redact_command(command, lambda v: f"<{v}>") == want
