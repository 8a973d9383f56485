"""Installed from a wheel, the tool works: scripts/install-wheel.sh builds the wheel, installs
it into a fresh virtual environment and runs `inventory query --list`, `inventory demo` and
the named query `monthly_cost` from an empty folder. The wheel carries every module and the
repository's sql/ (as the package data inventory/sql). A missing or empty query folder is an
error, never an empty list of named queries.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import install_wheel, inventory
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-wheel.sh"
DEV_TOOLS = {"pytest", "pytest-asyncio", "moto", "flask", "docker", "mypy", "ruff", "pyinstrument"}


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    checkout = sorted(os.listdir(ROOT))
    proc = install_wheel(SCRIPT, venv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(ROOT)) == checkout  # the build left nothing in the checkout
    out = proc.stdout
    listed = out.split("== inventory query --list")[1].split("== inventory demo")[0]
    names = {line.split(",")[0] for line in listed.strip().splitlines()[1:]}
    assert names == {p.stem for p in (ROOT / "sql" / "queries").glob("*.sql")}
    assert "run " in out and ": complete" in out  # the demo's summary
    cost = out.split("== inventory query monthly_cost")[1].split("== ok")[0].strip().splitlines()
    assert cost[0].startswith("account_id,account_name,region,service_name")
    assert len(cost) > 1
    first = dict(zip(cost[0].split(","), cost[1].split(","), strict=True))
    # the demo asks no prices (no --usage): priced from the list in the wheel
    assert (first["price_as_of"], first["price_source"]) == ("2026-11-27", "bundled")
    # the installed package: every module of the checkout, and all of sql/ under inventory/sql
    (site,) = venv.glob("lib/python3*/site-packages")
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "inventory").rglob("*.py")}
    installed = {p.relative_to(site).as_posix() for p in (site / "inventory").rglob("*.py")}
    assert modules <= installed, sorted(modules - installed)
    sql = {p.relative_to(ROOT / "sql").as_posix() for p in (ROOT / "sql").rglob("*") if p.is_file()}
    shipped = {
        p.relative_to(site / "inventory" / "sql").as_posix()
        for p in (site / "inventory" / "sql").rglob("*")
        if p.is_file()
    }
    assert sql <= shipped, sorted(sql - shipped)
    # nothing of the checkout was used: the installed package is the one in the venv
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import inventory.answers.queries as q; print(q.SQL_DIR)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == site / "inventory" / "sql"
    # the runtime environment: the runtime dependencies, hash-checked, and no development tool
    assert "== the runtime dependencies, hash-pinned" in out
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    frozen = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout
    installed_dists = {canonicalize_name(line.split("==")[0]) for line in frozen.split()}
    assert "lightsail-inventory" in installed_dists and not installed_dists & DEV_TOOLS
    # ... where a file whose hash differs from the pinned one is refused
    version = next(
        line.split("==")[1].split()[0]
        for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
        if line.startswith("six==")
    )
    bad = tmp_path / "bad.txt"
    bad.write_text(f"six=={version} --hash=sha256:{'0' * 64}\n", encoding="utf-8")
    refused = subprocess.run(
        [*pip, "install", "--require-hashes", "--no-deps", "--force-reinstall",
         "--no-cache-dir", "-r", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr


def test_install_script_refuses_a_used_destination(tmp_path: Path) -> None:
    used = tmp_path / "venv"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    proc = subprocess.run([str(SCRIPT), str(used)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"DEST_VENV {used} exists" in proc.stderr
    assert (used / "keep.txt").read_text() == "mine" and sorted(os.listdir(used)) == ["keep.txt"]
    usage = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage: scripts/install-wheel.sh DEST_VENV" in usage.stderr


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_a_missing_or_empty_query_folder_is_an_error(tmp_path: Path, layout: str) -> None:
    sql = tmp_path / "sql"
    if layout == "empty":
        (sql / "queries").mkdir(parents=True)
        (sql / "queries" / "README.txt").write_text("no queries here")
    env = {"INVENTORY_SQL_DIR": str(sql)}
    problem = "is missing" if layout == "missing" else "has no .sql files"
    db = tmp_path / "demo.duckdb"
    demo = inventory(
        "demo", "--accounts", "1", "--latency-ms", "0", "--db", str(db), "--parquet-dir",
        str(tmp_path / "lake"), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    for args in (
        ("query", "--list"),
        ("query", "monthly_cost", "--db", str(db)),
        ("report", "--html", str(tmp_path / "report.html"), "--db", str(db)),
    ):
        proc = inventory(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert line == (
            f"error: INVENTORY_SQL_DIR='{sql}': {sql / 'queries'} {problem}; "
            "point it at a folder with queries/*.sql, or unset it"
        )
    assert not (tmp_path / "report.html").exists()
