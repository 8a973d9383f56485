"""Named queries: the SQL files in sql/queries/, their descriptions and their parameters.

Each file opens with `-- <what it answers>`; a `-- params: a, b=default` line declares its
parameters (a default may contain `{sql_dir}`, replaced by the SQL folder's path in the
bound value, never in the SQL, and `{secret_like_names}`, replaced by the collector's rule of
what names a secret, fingerprint.SECRET_NAME_PATTERN). Values are always bound by DuckDB as
`$NAME`.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inventory.errors import BadStore, InventoryError, StoreError, UsageError

if TYPE_CHECKING:
    import duckdb

SQL_DIR_ENV = "INVENTORY_SQL_DIR"


def default_sql_dir() -> Path:
    """The SQL folder: $INVENTORY_SQL_DIR when set; else the package data `inventory/sql`
    (an installed wheel: pyproject.toml maps the repository's sql/ there); else, run from a
    checkout (the editable install), the repository's own sql/ beside the package."""
    given = os.environ.get(SQL_DIR_ENV)
    if given:
        return Path(given)
    packaged = importlib.resources.files("inventory") / "sql"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


SQL_DIR = default_sql_dir()


def queries_folder(sql_dir: Path | None = None) -> Path:
    """`<sql_dir>/queries`, which must hold at least one `.sql` file: a missing or empty
    folder is an error (a broken install, or $INVENTORY_SQL_DIR naming the wrong folder),
    never an empty list of named queries."""
    base = sql_dir or SQL_DIR
    folder = base / "queries"
    if not any(folder.glob("*.sql")):
        problem = "is missing" if not folder.is_dir() else "has no .sql files"
        given = os.environ.get(SQL_DIR_ENV)
        if given and Path(given) == base:
            raise UsageError(
                f"{SQL_DIR_ENV}={given!r}: {folder} {problem}; "
                "point it at a folder with queries/*.sql, or unset it"
            )
        raise InventoryError(
            f"no named queries: {folder} {problem} (a broken install; reinstall "
            f"lightsail-inventory, or set {SQL_DIR_ENV} to a folder with queries/*.sql)"
        )
    return folder


def resolve_sql(sql_or_name: str) -> tuple[str, str | None]:
    """A named query (sql/queries/NAME.sql) or literal SQL; returns (sql, name)."""
    if re.fullmatch(r"[A-Za-z0-9_\-]+", sql_or_name):
        path = queries_folder() / f"{sql_or_name}.sql"
        if path.is_file():
            return path.read_text(), sql_or_name
        raise UsageError(
            f"no named query {sql_or_name!r} in {SQL_DIR / 'queries'} (see: inventory query --list)"
        )
    return sql_or_name, None


def parse_params(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--param {v!r}: expected NAME=VALUE")
        if key in out:
            raise UsageError(f"--param {key}: given twice")
        out[key] = val
    return out


def query_header(text: str) -> tuple[str, dict[str, str | None]]:
    """A named query's leading `--` comments: (description, {param: default or None}).

    The first comment line is the description; `-- params: a, b=default` declares the
    parameters (a default may contain `{sql_dir}`, replaced by the SQL folder's path).
    """
    description, params = "", {}
    for line in text.splitlines():
        body = line.strip()
        if not body.startswith("--"):
            if body:
                break
            continue
        body = body[2:].strip()
        key, sep, rest = body.partition(":")
        if sep and key.strip().lower() == "params":
            for item in filter(None, (i.strip() for i in rest.split(","))):
                pname, eq, default = item.partition("=")
                params[pname.strip()] = default.strip() if eq else None
        elif not description:
            description = body
    return description, params


@dataclass(frozen=True)
class NamedQuery:
    name: str
    text: str
    description: str
    params: dict[str, str | None]  # declared: name -> default (None: must be given)


def load(sql_dir: Path | None = None) -> list[NamedQuery]:
    """Every sql/queries/*.sql, by name, read now (a query added since appears at once).
    A missing or empty folder raises (see `queries_folder`)."""
    folder = queries_folder(sql_dir)
    out = []
    for path in sorted(folder.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        description, params = query_header(text)
        out.append(NamedQuery(path.stem, text, description, params))
    return out


def used_params(text: str) -> set[str]:
    """The `$NAME`s the SQL uses (duckdb.Error when it does not parse)."""
    import duckdb

    return set().union(*(s.named_parameters for s in duckdb.extract_statements(text)))


def defaults(declared: dict[str, str | None], sql_dir: Path | None = None) -> dict[str, str]:
    """The declared defaults, `{sql_dir}` replaced in the value (never in the SQL)."""
    from inventory.storage.fingerprint import SECRET_NAME_PATTERN

    folder = str(sql_dir or SQL_DIR)
    return {
        k: v.replace("{sql_dir}", folder).replace("{secret_like_names}", SECRET_NAME_PATTERN)
        for k, v in declared.items()
        if v is not None
    }


def bind(text: str, name: str | None, given: dict[str, str]) -> dict[str, str]:
    """The values bound to the query's `$NAME` parameters (never formatted into its text):
    --param values over the named query's declared defaults. An unknown or missing
    parameter is a usage error that names it."""
    import duckdb

    what = f"query {name!r}" if name else "this SQL"
    declared = query_header(text)[1] if name else {}
    values = defaults(declared) if name else {}
    values.update(given)
    try:
        wanted = used_params(text)
    except duckdb.Error:
        return given  # not valid SQL: running it reports the syntax error
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", w) for w in wanted):
        raise UsageError(
            f"{what} uses positional parameters (? or $1); use $NAME with --param NAME=VALUE"
        )
    unknown = sorted(set(given) - wanted)
    if unknown:
        takes = ", ".join(sorted(wanted)) or "none"
        raise UsageError(
            f"--param {unknown[0]}: {what} has no parameter ${unknown[0]} (it takes: {takes})"
        )
    missing = sorted(wanted - set(values))
    if missing:
        raise UsageError(f"{what} needs " + " ".join(f"--param {m}=VALUE" for m in missing))
    for key, value in given.items():
        check_number(key, value, declared.get(key))
    return {k: values[k] for k in wanted}


def check_number(key: str, value: str, default: str | None) -> None:
    """A parameter whose declared default is a number takes a number, not negative (SQL
    would cast it and fail with a database error); one named `*_pct`, a percentage from 0
    to 100. Anything else is a usage error naming the parameter and the value."""
    if default is None or not _is_number(default):
        return
    if not _is_number(value) or float(value) < 0:
        raise UsageError(f"--param {key}={value!r}: not a number ≥ 0 (default {default})")
    if key.endswith("_pct") and float(value) > 100:
        raise UsageError(f"--param {key}={value!r}: a percentage, 0 to 100 (default {default})")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def named_queries() -> list[tuple[str, str, str]]:
    """(name, params, description) of every named query, for `inventory query --list`."""
    return [
        (
            q.name,
            ", ".join(k if v is None else f"{k}={v}" for k, v in q.params.items()),
            q.description,
        )
        for q in load()
    ]


def check_one_statement(text: str, name: str | None) -> None:
    """`inventory query` runs exactly one statement: empty SQL, or several statements (of
    which DuckDB would return only the last result), is a usage error. Text that does not
    parse is left for running it to report."""
    import duckdb

    what = f"query {name!r}" if name else "the SQL"
    try:
        n = len(duckdb.extract_statements(text))
    except duckdb.Error:
        return
    if n == 0:
        raise UsageError(
            f"{what} {text!r}: no SQL statement in it; give one, or a query name "
            "(see: inventory query --list)"
        )
    if n > 1:
        raise UsageError(
            f"{what} has {n} statements; inventory query runs one at a time "
            "(give each its own inventory query)"
        )


def allowed_files(name: str | None, values: Mapping[str, str]) -> list[str]:
    """The files a query may read besides the store: for a named query, the files its bound
    parameters name (e.g. monthly_cost's price list); for ad-hoc SQL, none."""
    if name is None:
        return []
    return sorted({str(Path(v).resolve()) for v in values.values() if v and Path(v).is_file()})


def sandbox(con: duckdb.DuckDBPyConnection, allowed: Iterable[str] = ()) -> None:
    """Lock `con` down for SQL the user typed: from now on it reads what is attached (the
    store, or the lake's registered tables) and the `allowed` files, and nothing else: no
    other file read or written (COPY, read_csv, ATTACH), no network, no extension, and no
    setting changed back (lock_configuration)."""
    paths = [str(p) for p in allowed]
    if paths:
        con.execute(
            "SET allowed_paths = ["
            + ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            + "]"
        )
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def run_sandboxed(
    con: duckdb.DuckDBPyConnection,
    text: str,
    params: Any,
    allowed: Iterable[str] = (),
    db: Path | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement on `con` inside `sandbox`: (column names, rows). A statement that
    reaches outside is a usage error that says so; a damaged store `db` a BadStore (exit 2);
    any other failure a StoreError."""
    import duckdb
    import pyarrow as pa

    from inventory.storage.store import damaged, is_damage

    sandbox(con, allowed)
    try:
        cur = con.execute(text, params)
        return [d[0] for d in cur.description or []], cur.fetchall()
    except (duckdb.PermissionException, duckdb.InvalidInputException) as e:
        first = str(e).strip().splitlines()[0]
        if isinstance(e, duckdb.InvalidInputException) and "has been locked" not in first:
            raise StoreError(f"query failed: {e}") from e
        raise UsageError(
            f"query: SQL here reads the inventory only, no other file, URL or setting ({first})"
        ) from e
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        if db is not None and is_damage(e):
            raise BadStore(damaged(db, e)) from e
        raise StoreError(f"query failed: {e}") from e
