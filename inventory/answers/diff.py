"""What changed between two snapshots, per account × region.

`diff(con, from_run, to_run)` compares, for every account × region, two good scans (the
views `good_scans` and `latest_scans`, store.FLEET_SQL: scans status 'ok' in a good run):

- neither run given: for each account × region of the current fleet, its newest good scan
  (the one the latest_* views show, `latest_scans`) and the good scan just before it;
- `to_run` given: that run's scan and the good scan just before it;
- `from_run` given: that run's scan and the newest good scan, for the pairs still in the
  fleet (a pair that left it is listed as not compared);
- both given: those two runs, where both scanned it ok.

An account × region without two such scans is listed in `Diff.uncompared` with the reason.
`con` is any DuckDB connection with the tables and views: the store's (`Store.connection()`)
or the lake's (`lakequery.open_lake`).

What is compared, by name: services (added, removed; state, power, scale, is_disabled, url,
public domain names, tags), their deployments by slot ('current', 'next': appeared,
disappeared, version, or state when the version is the same) and, within a slot present on
both sides, containers by name (appeared, disappeared, image, ports, command, environment
names added or removed, values changed). Environment values are compared as stored (the
HMAC fingerprint, by default) and shown only as fingerprints: a store made with
`--include-env-values` holds raw values, and those are never shown (old/new are null).
Values of two runs are compared only when both were kept the same way (runs.env_values)
with the same key (runs.fingerprint_key_id): otherwise every value would seem to change, so
no `env_value` change is reported for that pair of runs and `Diff.env_not_compared` (and the
title, once) says why. Runs from before those columns (NULL) are compared as before.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from inventory.errors import UsageError
from inventory.storage.fingerprint import PREFIX as FINGERPRINT_PREFIX

# Every kind of change, in the order they are reported within a service.
KINDS = (
    "service_added",
    "service_removed",
    "state",
    "power",
    "scale",
    "disabled",
    "url",
    "domains",
    "tags",
    "deployment_added",
    "deployment_removed",
    "deployment_version",
    "deployment_state",
    "container_added",
    "container_removed",
    "image",
    "ports",
    "command",
    "env_added",
    "env_removed",
    "env_value",
)
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}

# container_services column -> change kind (compared as values; maps as dicts).
SERVICE_FIELDS = {
    "state": "state",
    "power": "power",
    "scale": "scale",
    "is_disabled": "disabled",
    "url": "url",
    "public_domain_names": "domains",
    "tags": "tags",
}
CONTAINER_FIELDS = {"image": "image", "ports": "ports", "command": "command"}


@dataclass(frozen=True, slots=True)
class Change:
    """One difference. `field` names what changed: a column (`state`), a deployment slot's
    (`current.version`), a container's (`current.containers.app.image`) or an environment
    variable (`current.containers.app.environment.API_KEY`); None for a whole service."""

    kind: str
    account_id: str
    region: str
    service_name: str
    field: str | None
    old: Any
    new: Any
    from_run: str
    to_run: str


@dataclass(frozen=True, slots=True)
class Pair:
    """The two scans compared for one account × region."""

    account_id: str
    region: str
    from_run: str
    to_run: str


@dataclass(frozen=True, slots=True)
class Uncompared:
    account_id: str
    region: str
    reason: str


@dataclass
class Diff:
    from_run: str | None  # as asked (None: per account × region)
    to_run: str | None
    pairs: list[Pair] = field(default_factory=list)
    uncompared: list[Uncompared] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    # (from_run, to_run, why): run pairs whose environment values were not compared
    env_not_compared: list[tuple[str, str, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per pair of runs whose environment values could not be compared."""
        return [
            f"environment values not compared between runs {a} and {b}: {why}"
            for a, b, why in self.env_not_compared
        ]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.changes:
            out[c.kind] = out.get(c.kind, 0) + 1
        return {k: out[k] for k in KINDS if k in out}

    def runs(self) -> tuple[set[str], set[str]]:
        """The distinct (from, to) runs of the compared pairs."""
        return {p.from_run for p in self.pairs}, {p.to_run for p in self.pairs}

    def title(self) -> str:
        froms, tos = self.runs()
        if len(froms) == 1 and len(tos) == 1:
            between = f"from run {next(iter(froms))} to run {next(iter(tos))}"
        elif self.pairs:
            between = "between each account × region's two chosen scans (see from_run, to_run)"
        else:
            between = "nothing to compare"
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items()) or "no changes"
        text = (
            f"{len(self.changes)} changes in {len(self.pairs)} account × region pairs, "
            f"{between}: {counts}"
        )
        if self.uncompared:
            text += f"; {len(self.uncompared)} account × region pairs not compared"
        for note in self.notes():
            text += f"; {note}"
        return text

    def rows(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(columns, rows) for table and CSV output: maps and lists as compact JSON."""
        columns = ["account_id", "region", "service_name", "change", "field", "old", "new"]
        froms, tos = self.runs()
        per_pair = len(froms) > 1 or len(tos) > 1
        if per_pair:
            columns += ["from_run", "to_run"]
        rows = []
        for c in self.changes:
            row: tuple[Any, ...] = (
                c.account_id,
                c.region,
                c.service_name,
                c.kind,
                c.field,
                _text(c.old),
                _text(c.new),
            )
            if per_pair:
                row += (c.from_run, c.to_run)
            rows.append(row)
        return columns, rows

    def to_json(self) -> dict[str, Any]:
        return {
            "from_run": self.from_run,
            "to_run": self.to_run,
            "compared": len(self.pairs),
            "counts": self.counts(),
            "changes": [asdict(c) for c in self.changes],
            "uncompared": [asdict(u) for u in self.uncompared],
            "env_values_not_compared": [
                {"from_run": a, "to_run": b, "reason": why} for a, b, why in self.env_not_compared
            ],
        }


# --------------------------------------------------------------------------- choosing scans


# The good scans (the store's views `good_scans` and `latest_scans`, the one definition of a
# good scan), each with the good scan before it; `newest`: this is the pair's scan in
# latest_scans (so the pair is in the current fleet).
_GOOD_SCANS = """
SELECT g.account_id, g.region, g.run_id, g.prev_run, l.run_id IS NOT NULL AS newest FROM (
    SELECT account_id, region, run_id,
           lead(run_id) OVER (
               PARTITION BY account_id, region ORDER BY run_started_at DESC, run_id DESC
           ) AS prev_run
    FROM good_scans
) AS g
LEFT JOIN latest_scans AS l
  ON l.account_id = g.account_id AND l.region = g.region AND l.run_id = g.run_id
WHERE l.run_id IS NOT NULL OR g.run_id = $from_run OR g.run_id = $to_run
"""

# A run (all its shards' runs rows): whether it is good, the statuses of its rows, its start.
_RUN = """
SELECT bool_or(g.run_id IS NOT NULL), string_agg(DISTINCT r.status, '/'), min(r.started_at)
FROM runs AS r LEFT JOIN good_runs AS g ON g.run_id = r.run_id
WHERE r.run_id = ?
HAVING count(*) > 0
"""


def _check_run(con: duckdb.DuckDBPyConnection, flag: str, run_id: str) -> dt.datetime:
    rows = con.execute(_RUN, [run_id]).fetchall()
    if not rows:
        raise UsageError(f"{flag} {run_id!r}: no such run (list them with `inventory runs`)")
    good, status, started_at = rows[0]
    if not good:
        raise UsageError(
            f"{flag} {run_id!r}: that run is {status}; only complete or partial runs have "
            "snapshots to compare"
        )
    return started_at


def choose_pairs(
    con: duckdb.DuckDBPyConnection,
    from_run: str | None = None,
    to_run: str | None = None,
    accounts: Collection[str] | None = None,
) -> tuple[list[Pair], list[Uncompared]]:
    """Which two scans to compare for each account × region (see the module docstring);
    `accounts`: only theirs (one shard's, when a lake holds every shard of a run)."""
    if from_run is not None and to_run is not None:
        if from_run == to_run:
            raise UsageError(f"--from and --to are the same run ({from_run}); nothing to compare")
        f_at = _check_run(con, "--from", from_run)
        t_at = _check_run(con, "--to", to_run)
        if (f_at, from_run) > (t_at, to_run):
            raise UsageError(
                f"--from {from_run} started after --to {to_run}; give the older run as --from"
            )
    elif from_run is not None:
        _check_run(con, "--from", from_run)
    elif to_run is not None:
        _check_run(con, "--to", to_run)
    rows = con.execute(_GOOD_SCANS, {"from_run": from_run, "to_run": to_run}).fetchall()
    newest: dict[tuple[str, str], tuple[str, str | None]] = {}
    in_from: set[tuple[str, str]] = set()
    in_to: dict[tuple[str, str], str | None] = {}
    for account_id, region, run_id, prev_run, is_newest in rows:
        if accounts is not None and account_id not in accounts:
            continue
        key = (account_id, region)
        if is_newest:
            newest[key] = (run_id, prev_run)
        if run_id == from_run:
            in_from.add(key)
        if run_id == to_run:
            in_to[key] = prev_run
    pairs: list[Pair] = []
    skipped: list[Uncompared] = []
    if to_run is not None:
        for key in sorted(in_to.keys() | in_from):
            if key not in in_to:
                skipped.append(Uncompared(*key, f"not scanned ok in run {to_run}"))
                continue
            if from_run is None:
                before = in_to[key]
                if before is None:
                    skipped.append(Uncompared(*key, f"no good scan before run {to_run}"))
                else:
                    pairs.append(Pair(*key, before, to_run))
            elif key in in_from:
                pairs.append(Pair(*key, from_run, to_run))
            else:
                skipped.append(Uncompared(*key, f"not scanned ok in run {from_run}"))
    else:
        if from_run is not None:
            for key in sorted(in_from - newest.keys()):
                skipped.append(Uncompared(*key, "no longer in the fleet (no latest_* rows)"))
        for key in sorted(newest):
            latest, before = newest[key]
            if from_run is not None:
                if key not in in_from:
                    skipped.append(Uncompared(*key, f"not scanned ok in run {from_run}"))
                elif latest == from_run:
                    skipped.append(Uncompared(*key, f"no good scan after run {from_run}"))
                else:
                    pairs.append(Pair(*key, from_run, latest))
            elif before is None:
                skipped.append(Uncompared(*key, "only one good scan"))
            else:
                pairs.append(Pair(*key, before, latest))
    return pairs, skipped


# --------------------------------------------------------------------------- comparing


def diff(
    con: duckdb.DuckDBPyConnection,
    from_run: str | None = None,
    to_run: str | None = None,
    accounts: Collection[str] | None = None,
) -> Diff:
    """Every change between the chosen scans of each account × region (of `accounts` only,
    when given)."""
    pairs, skipped = choose_pairs(con, from_run, to_run, accounts)
    result = Diff(from_run, to_run, pairs, skipped)
    if not pairs:
        return result
    sides = pa.table(
        {
            "run_id": [p.from_run for p in pairs] + [p.to_run for p in pairs],
            "account_id": [p.account_id for p in pairs] * 2,
            "region": [p.region for p in pairs] * 2,
            "side": [0] * len(pairs) + [1] * len(pairs),
        }
    )
    view = "_diff_sides"
    con.register(view, sides)
    try:
        services = _fetch(
            con, view, "container_services", ["service_name", *SERVICE_FIELDS], ["service_name"]
        )
        deployments = _fetch(
            con,
            view,
            "deployments",
            ["service_name", "slot", "version", "state"],
            ["service_name", "slot"],
        )
        containers = _fetch(
            con,
            view,
            "containers",
            ["service_name", "slot", "container_name", *CONTAINER_FIELDS, "environment"],
            ["service_name", "slot", "container_name"],
        )
    finally:
        con.unregister(view)
    runs = {(p.account_id, p.region): p for p in pairs}
    modes = _env_modes(con, {p.from_run for p in pairs} | {p.to_run for p in pairs})
    why_not: dict[tuple[str, str], str | None] = {}
    for p in pairs:
        if (p.from_run, p.to_run) not in why_not:
            why = _env_incomparable(modes.get(p.from_run), modes.get(p.to_run))
            why_not[(p.from_run, p.to_run)] = why
            if why is not None:
                result.env_not_compared.append((p.from_run, p.to_run, why))
    out: list[Change] = []
    for key, pair in runs.items():
        out.extend(
            _compare_target(
                pair,
                why_not[(pair.from_run, pair.to_run)] is None,
                services.get((*key, 0), {}),
                services.get((*key, 1), {}),
                deployments.get((*key, 0), {}),
                deployments.get((*key, 1), {}),
                containers.get((*key, 0), {}),
                containers.get((*key, 1), {}),
            )
        )
    out.sort(
        key=lambda c: (c.account_id, c.region, c.service_name, _KIND_ORDER[c.kind], c.field or "")
    )
    result.changes = out
    return result


Rows = dict[tuple[Any, ...], dict[str, Any]]


def _fetch(
    con: duckdb.DuckDBPyConnection,
    sides: str,
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
) -> dict[tuple[str, str, int], Rows]:
    """{(account, region, side): {key values: row}} for the rows of the compared scans."""
    cols = ", ".join(f't."{c}"' for c in columns)
    cur = con.execute(
        f"SELECT d.account_id, d.region, d.side, {cols} FROM {table} AS t JOIN {sides} AS d "
        "ON t.run_id = d.run_id AND t.account_id = d.account_id AND t.region = d.region"
    )
    out: dict[tuple[str, str, int], Rows] = {}
    for row in cur.fetchall():
        values = dict(zip(columns, row[3:], strict=True))
        out.setdefault((row[0], row[1], row[2]), {})[tuple(values[k] for k in key)] = values
    return out


def _env_modes(
    con: duckdb.DuckDBPyConnection, run_ids: set[str]
) -> dict[str, tuple[str | None, bool | None]]:
    """{run_id: (fingerprint_key_id, env_values)}; empty for a store or lake without them."""
    cur = con.execute("SELECT * FROM runs LIMIT 0")
    names = {d[0] for d in cur.description or []}
    cur.fetchall()
    if not {"fingerprint_key_id", "env_values"} <= names:
        return {}
    rows = con.execute(
        "SELECT run_id, any_value(fingerprint_key_id), any_value(env_values) FROM runs "
        "WHERE list_contains($ids, run_id) GROUP BY run_id",
        {"ids": sorted(run_ids)},
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _env_incomparable(
    old: tuple[str | None, bool | None] | None, new: tuple[str | None, bool | None] | None
) -> str | None:
    """Why the environment values of two runs cannot be compared, or None when they can."""
    if old is None or new is None or old[1] is None or new[1] is None:
        return None  # a run from before runs.env_values: compared as before
    if old[1] != new[1]:
        stored = "values" if new[1] else "fingerprints"
        return f"one stored fingerprints, the other values (the newer stored {stored})"
    if not new[1] and old[0] != new[0]:
        return f"fingerprinted with different keys (key id {old[0]}, then {new[0]})"
    return None


def _compare_target(
    pair: Pair,
    env_comparable: bool,
    old_svcs: Rows,
    new_svcs: Rows,
    old_deps: Rows,
    new_deps: Rows,
    old_cons: Rows,
    new_cons: Rows,
) -> Iterable[Change]:
    def change(kind: str, service: str, what: str | None, old: Any, new: Any) -> Change:
        return Change(
            kind, pair.account_id, pair.region, service, what, old, new, pair.from_run, pair.to_run
        )

    for (name,) in sorted(new_svcs.keys() - old_svcs.keys()):
        yield change("service_added", name, None, None, new_svcs[(name,)]["state"])
    for (name,) in sorted(old_svcs.keys() - new_svcs.keys()):
        yield change("service_removed", name, None, old_svcs[(name,)]["state"], None)
    common = {k[0] for k in old_svcs.keys() & new_svcs.keys()}
    for name in sorted(common):
        old, new = old_svcs[(name,)], new_svcs[(name,)]
        for column, kind in SERVICE_FIELDS.items():
            if _differs(old[column], new[column]):
                yield change(kind, name, column, _comparable(old[column]), _comparable(new[column]))
    # deployments, by slot
    slots_both: set[tuple[str, str]] = set()
    for key in sorted((old_deps.keys() | new_deps.keys()), key=_str_key):
        name, slot = key
        if name not in common:
            continue
        o, n = old_deps.get(key), new_deps.get(key)
        if o is None and n is not None:
            yield change("deployment_added", name, f"{slot}.version", None, n["version"])
        elif n is None and o is not None:
            yield change("deployment_removed", name, f"{slot}.version", o["version"], None)
        elif o is not None and n is not None:
            slots_both.add(key)
            if o["version"] != n["version"]:
                yield change(
                    "deployment_version", name, f"{slot}.version", o["version"], n["version"]
                )
            elif o["state"] != n["state"]:
                yield change("deployment_state", name, f"{slot}.state", o["state"], n["state"])
    # containers of a slot both sides have, by name
    for key in sorted((old_cons.keys() | new_cons.keys()), key=_str_key):
        name, slot, cname = key
        if (name, slot) not in slots_both:
            continue
        base = f"{slot}.containers.{cname}"
        o, n = old_cons.get(key), new_cons.get(key)
        if o is None and n is not None:
            yield change("container_added", name, base, None, n["image"])
            continue
        if n is None and o is not None:
            yield change("container_removed", name, base, o["image"], None)
            continue
        assert o is not None and n is not None
        for column, kind in CONTAINER_FIELDS.items():
            if _differs(o[column], n[column]):
                yield change(
                    kind, name, f"{base}.{column}", _comparable(o[column]), _comparable(n[column])
                )
        old_env, new_env = o["environment"] or {}, n["environment"] or {}
        for var in sorted(new_env.keys() - old_env.keys()):
            yield change(
                "env_added",
                name,
                f"{base}.environment.{var}",
                None,
                _shown_fingerprint(new_env[var]),
            )
        for var in sorted(old_env.keys() - new_env.keys()):
            yield change(
                "env_removed",
                name,
                f"{base}.environment.{var}",
                _shown_fingerprint(old_env[var]),
                None,
            )
        for var in sorted(old_env.keys() & new_env.keys()) if env_comparable else ():
            if old_env[var] != new_env[var]:
                yield change(
                    "env_value",
                    name,
                    f"{base}.environment.{var}",
                    _shown_fingerprint(old_env[var]),
                    _shown_fingerprint(new_env[var]),
                )


def _str_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if k is None else str(k) for k in key)


def _differs(a: Any, b: Any) -> bool:
    return _comparable(a) != _comparable(b)


def _comparable(v: Any) -> Any:
    """A value as compared and shown: JSON-able: maps as dicts with sorted keys (a map's order is not a change)."""
    if isinstance(v, dict):
        return {k: _comparable(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, list | tuple):
        return [_comparable(x) for x in v]
    return v


def _text(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return v


def _shown_fingerprint(value: Any) -> str | None:
    """An environment value as it may be shown: its fingerprint, never a raw value."""
    if isinstance(value, str) and value.startswith(FINGERPRINT_PREFIX):
        return value
    return None
