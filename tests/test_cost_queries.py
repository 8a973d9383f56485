"""rightsizing, idle_services and cost_by_account on hand-made rows: the cases a simulated
fleet does not pin down (the arithmetic of a recommendation, thresholds, ties, inactive
powers, another run's rows, a price missing). The same queries against a real collect
--usage and the simulator's ground truth: tests/test_usage_answers.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from inventory.answers import queries
from inventory.simulator.fleet import POWER_SPECS
from inventory.storage import schema
from inventory.storage.store import POWERS_SQL

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
RUN, OLD = "20261128T000000Z-aaaaaa", "20261127T000000Z-bbbbbb"
REGION = "eu-west-2"
T0 = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


# the store's own tables (rows leave out the columns a query does not read: NULL)
POWER_SCHEMA = schema.CONTAINER_POWERS
USAGE_SCHEMA = schema.SERVICE_UTILIZATION
DEPLOYMENT_SCHEMA = schema.DEPLOYMENTS
SERVICE_SCHEMA = schema.CONTAINER_SERVICES


def service(name: str, power: str = "medium", scale: int = 1, **kw: Any) -> dict[str, Any]:
    row = {
        "run_id": RUN,
        "account_id": "111111111111",
        "account_name": "prod",
        "region": REGION,
        "service_name": name,
        "state": "RUNNING",
        "power": power,
        "scale": scale,
        "is_disabled": False,
        "tags": [],
    }
    row.update(kw)
    return row


def powers(run: str = RUN, region: str = REGION, **changed: Any) -> list[dict[str, Any]]:
    """The six powers of `region` in `run`; `changed`: name -> dict of fields to replace."""
    return [
        {
            "run_id": run,
            "region": region,
            "power_id": f"{name}-1",
            "name": name,
            "price_per_month": price,
            "cpu_count": cpu,
            "ram_size_gb": ram,
            "is_active": True,
        }
        | changed.get(name, {})
        for name, (cpu, ram, price) in POWER_SPECS.items()
    ]


def usage(
    name: str, cpu: list[float] | None, memory: list[float] | None, **kw: Any
) -> list[dict[str, Any]]:
    """Datapoints every 5 minutes from T0 (maximum as given, average half of it); a metric
    given None gets one 'no_datapoints' row."""
    rows = []
    for metric, values in (("CPUUtilization", cpu), ("MemoryUtilization", memory)):
        base = {
            "run_id": RUN,
            "account_id": "111111111111",
            "region": REGION,
            "service_name": name,
            "service_arn": f"arn:aws:lightsail:{REGION}:111111111111:ContainerService/{name}",
            "metric": metric,
            "unit": "Percent",
            "window_start": T0,
            "window_end": T0 + dt.timedelta(hours=1),
        } | kw
        if values is None:
            rows.append(
                base
                | {
                    "period_start": None,
                    "average": None,
                    "maximum": None,
                    "status": "no_datapoints",
                }
            )
            continue
        for i, v in enumerate(values):
            rows.append(
                base
                | {
                    "period_start": T0 + dt.timedelta(minutes=5 * i),
                    "average": v / 2,
                    "maximum": v,
                    "status": "ok",
                }
            )
    return rows


def run(
    name: str,
    services: list[dict[str, Any]],
    power_rows: list[dict[str, Any]] | None = None,
    utilization: list[dict[str, Any]] | None = None,
    deployments: list[dict[str, Any]] | None = None,
    **params: str,
) -> list[dict[str, Any]]:
    """Run the named query `name` with its declared defaults over `params`, on these rows
    under the names the query reads (latest_scans: every (run, account, region) of the
    services), with the store's own run_powers and latest_service_powers views over them."""
    query = next(q for q in queries.load(SQL_DIR) if q.name == name)
    values = queries.defaults(query.params, SQL_DIR) | params
    con = duckdb.connect()
    con.register(
        "latest_container_services",
        pa.Table.from_pylist(services, schema=SERVICE_SCHEMA),
    )
    scans = sorted({(s["run_id"], s["account_id"], s["region"]) for s in services})
    con.register(
        "latest_scans",
        pa.Table.from_pylist(
            [dict(zip(("run_id", "account_id", "region"), k, strict=True)) for k in scans]
        ),
    )
    con.register(
        "container_powers",
        pa.Table.from_pylist(powers() if power_rows is None else power_rows, schema=POWER_SCHEMA),
    )
    con.register(
        "service_utilization", pa.Table.from_pylist(utilization or [], schema=USAGE_SCHEMA)
    )
    if deployments is None:
        deployments = [
            {
                "account_id": s["account_id"],
                "region": s["region"],
                "service_name": s["service_name"],
                "slot": "current",
                "state": "ACTIVE",
            }
            for s in services
        ]
    con.register("latest_deployments", pa.Table.from_pylist(deployments, schema=DEPLOYMENT_SCHEMA))
    for sql in POWERS_SQL:  # the store's price lookup, over the rows above
        con.execute(sql.format(p=""))
    cur = con.execute(query.text, {p: values[p] for p in queries.used_params(query.text)})
    columns = [d[0] for d in cur.description or []]
    return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


# --------------------------------------------------------------------------- rightsizing


def test_rightsizing_projects_the_capacity_in_use_across_all_nodes() -> None:
    # medium × 2 at peaks 5 % CPU, 8 % memory: 0.1 vCPU and 0.64 GB in use. Cheapest with
    # peaks ≤ 60 %: not micro × 1 (0.25 vCPU: 40 %, 1 GB: 64 %), not nano × 2 (1 GB: 64 %),
    # but micro × 2 (0.5 vCPU: 20 %, 2 GB: 32 %) at 20 USD (small × 1 fits too, at 25).
    rows = run(
        "rightsizing", [service("api", "medium", 2)], utilization=usage("api", [3, 5, 4], [8, 6, 7])
    )
    assert len(rows) == 1
    r = rows[0]
    assert (r["power"], r["scale"], r["usd_per_month"]) == ("medium", 2, 100)
    assert (r["cpu_max_pct"], r["memory_max_pct"]) == (5, 8)
    assert (r["cpu_datapoints"], r["memory_datapoints"]) == (3, 3)
    assert (r["window_start"], r["window_end"]) == (T0, T0 + dt.timedelta(hours=1))
    assert (r["action"], r["recommended_power"], r["recommended_scale"]) == ("downsize", "micro", 2)
    assert (r["projected_cpu_max_pct"], r["projected_memory_max_pct"]) == (20, 32)
    assert (r["recommended_usd_per_month"], r["usd_saving_per_month"]) == (20, 80)


def test_rightsizing_headroom_and_thresholds_are_parameters() -> None:
    svc, util = [service("api", "medium", 2)], usage("api", [5], [8])
    # headroom 30 %: peaks may reach 70 %: micro × 1 (40 %, 64 %) fits, 10 USD
    rows = run("rightsizing", svc, utilization=util, headroom_pct="30")
    assert (rows[0]["recommended_power"], rows[0]["usd_saving_per_month"]) == ("micro", 90)
    # thresholds below the peaks: not flagged at all
    assert run("rightsizing", svc, utilization=util, max_cpu_pct="5") == []
    assert run("rightsizing", svc, utilization=util, max_memory_pct="8") == []
    assert len(run("rightsizing", svc, utilization=util, max_memory_pct="8.5")) == 1


def test_rightsizing_never_recommends_something_dearer() -> None:
    # already the cheapest power at scale 1: keep, saving 0
    rows = run("rightsizing", [service("tiny", "nano", 1)], utilization=usage("tiny", [1], [2]))
    assert [(r["action"], r["recommended_power"], r["usd_saving_per_month"]) for r in rows] == [
        ("keep", "nano", 0)
    ]
    # headroom 99 %: nothing cheaper keeps it (small × 3 at 4 % CPU: 0.06 vCPU > 1 % of any)
    rows = run(
        "rightsizing",
        [service("web", "small", 3)],
        utilization=usage("web", [4], [4]),
        headroom_pct="99",
    )
    assert (rows[0]["action"], rows[0]["recommended_usd_per_month"]) == ("keep", 75)


def test_rightsizing_prefers_fewer_nodes_only_when_cheaper_and_skips_inactive_powers() -> None:
    # large × 4 at 10 % CPU, 10 % memory: 0.8 vCPU, 3.2 GB. Candidates ≤ 60 %: medium × 2
    # (40 %, 40 %, 100 USD), small × 3 (53 %, 53 %, 75 USD), ... the cheapest is small × 3
    rows = run("rightsizing", [service("big", "large", 4)], utilization=usage("big", [10], [10]))
    assert (rows[0]["recommended_power"], rows[0]["recommended_scale"]) == ("small", 3)
    assert rows[0]["usd_saving_per_month"] == 400 - 75
    # small inactive in the region: medium × 2 (100 USD) instead
    inactive = powers(small={"is_active": False})
    rows = run("rightsizing", [service("big", "large", 4)], inactive, usage("big", [10], [10]))
    assert (rows[0]["recommended_power"], rows[0]["recommended_scale"]) == ("medium", 2)


def test_rightsizing_prices_are_the_runs_own() -> None:
    # the run's prices make micro dearer than small: small × 1 is the cheapest that fits
    dear = powers(micro={"price_per_month": 30.0})
    rows = run("rightsizing", [service("api", "medium", 2)], dear, usage("api", [5], [8]))
    assert (rows[0]["recommended_power"], rows[0]["recommended_usd_per_month"]) == ("small", 25)
    # another run's or region's powers are not this service's: it cannot be priced
    elsewhere = powers(region="us-east-1") + powers(run=OLD)
    rows = run("rightsizing", [service("api", "medium", 2)], elsewhere, usage("api", [5], [8]))
    assert [(r["service_name"], r["action"], r["usd_per_month"]) for r in rows] == [
        ("api", "unpriced", None)
    ]


def test_rightsizing_lists_a_service_it_cannot_price_as_unpriced() -> None:
    # the powers call failed in us-east-1 (no container_powers there), and eu-west-2 does not
    # list the power "gigantic": both low enough to flag, neither dropped nor guessed
    services = [
        service("east", "medium", 2, region="us-east-1"),
        service("odd", "gigantic", 1),
        service("api", "medium", 2),
    ]
    util = usage("east", [5], [8], region="us-east-1") + usage("odd", [5], [8])
    util += usage("api", [5], [8])
    rows = run("rightsizing", services, utilization=util)
    assert [(r["service_name"], r["action"]) for r in rows] == [
        ("api", "downsize"),
        ("odd", "unpriced"),  # eu-west-2: ordered by saving (NULL last), account, region
        ("east", "unpriced"),
    ]
    for r in rows[1:]:
        assert (r["cpu_max_pct"], r["memory_max_pct"], r["cpu_datapoints"]) == (5, 8, 1)
        unknown = [
            r[k]
            for k in (
                "usd_per_month",
                "recommended_power",
                "recommended_power_id",
                "recommended_scale",
                "recommended_usd_per_month",
                "projected_cpu_max_pct",
                "projected_memory_max_pct",
                "usd_saving_per_month",
            )
        ]
        assert unknown == [None] * 8, r


def test_two_power_ids_with_one_name_are_priced_and_offered_apart() -> None:
    # AWS lists a new medium-2 (15 USD) beside medium-1 (50 USD, no longer active): one name,
    # two powers. Each service is priced by its own powerId; medium-2 is a candidate of its own
    new_id = {
        "run_id": RUN,
        "region": REGION,
        "power_id": "medium-2",
        "name": "medium",
        "price_per_month": 15.0,
        "cpu_count": 1.0,
        "ram_size_gb": 4.0,
        "is_active": True,
    }
    two = [*powers(medium={"is_active": False}), new_id]
    services = [
        service("old", "medium", 2, power_id="medium-1"),
        service("new", "medium", 2, power_id="medium-2"),
        service("unsaid", "medium", 1),  # no powerId: by name, the active one
    ]
    util = usage("old", [5], [8]) + usage("new", [5], [8]) + usage("unsaid", [5], [8])
    rows = {r["service_name"]: r for r in run("rightsizing", services, two, util)}
    assert {n: (r["power_id"], r["usd_per_month"]) for n, r in rows.items()} == {
        "old": ("medium-1", 100),
        "new": ("medium-2", 30),
        "unsaid": (None, 15),
    }
    # 0.1 vCPU and 0.64 GB in use: medium-2 × 1 (10 %, 16 %) at 15 USD is the cheapest
    for name, saving in (("old", 85), ("new", 15)):
        r = rows[name]
        got = (r["action"], r["recommended_power"], r["recommended_power_id"])
        assert got == ("downsize", "medium", "medium-2"), name
        assert (r["recommended_scale"], r["usd_saving_per_month"]) == (1, saving), name
    # unsaid, 15 USD now: 0.05 vCPU, 0.32 GB fit micro × 1 (20 %, 32 %) at 10
    unsaid = rows["unsaid"]
    assert (unsaid["recommended_power_id"], unsaid["usd_saving_per_month"]) == ("micro-1", 5)
    # every cost query prices them the same way
    assert run("cost_by_account", services, two)[-1]["usd_per_month"] == 100 + 30 + 15
    monthly = {r["service_name"]: r for r in run("monthly_cost", services, two)}
    assert {n: float(r["usd_per_month"]) for n, r in monthly.items()} == {
        "old": 100,
        "new": 30,
        "unsaid": 15,
    }
    assert {r["price_source"] for r in monthly.values()} == {"api"}
    idle = run("idle_services", services, two, util, deployments=[])
    assert {r["service_name"]: r["usd_per_month"] for r in idle} == {
        "old": 100,
        "new": 30,
        "unsaid": 15,
    }


@pytest.mark.parametrize(
    "case",
    [
        *("no datapoints", "cpu only", "disabled", "busy cpu", "busy memory", "another run"),
        *("DELETING", "UPDATING", "PENDING", "READY", "no active deployment"),
    ],
)
def test_rightsizing_leaves_out_what_it_cannot_judge_or_must_not_flag(case: str) -> None:
    # states: DELETING, UPDATING (its power or scale changing) and PENDING are not flagged,
    # even with an ACTIVE current deployment; READY has none (AWS), nor has a RUNNING service
    # whose current deployment FAILED: idle_services lists those
    state = case if case.isupper() else "RUNNING"
    svc = service("api", "medium", 2, is_disabled=case == "disabled", state=state)
    slots = {"current": "FAILED" if case == "no active deployment" else "ACTIVE"}
    if case == "READY":
        slots = {}
    slots["next"] = "ACTIVE"  # another slot's ACTIVE is not the current one

    def deployments() -> list[dict[str, Any]]:
        return [
            {
                "account_id": "111111111111",
                "region": REGION,
                "service_name": "api",
                "slot": slot,
                "state": dep_state,
            }
            for slot, dep_state in slots.items()
        ]

    util = {
        "no datapoints": usage("api", None, None),
        "cpu only": usage("api", [5], None),
        "disabled": usage("api", [5], [5]),
        "busy cpu": usage("api", [5, 95, 5], [5]),
        "busy memory": usage("api", [5], [5, 40]),
        "another run": usage("api", [5], [5], run_id=OLD),
    }.get(case, usage("api", [5], [5]))
    assert run("rightsizing", [svc], None, util, deployments()) == []
    # the same service RUNNING (or DEPLOYING its next) with its current deployment ACTIVE
    # is flagged, when it has the datapoints and low peaks
    if case.isupper() or case == "no active deployment":
        slots["current"] = "ACTIVE"
        for judged in ("RUNNING", "DEPLOYING"):
            svc["state"] = judged
            assert len(run("rightsizing", [svc], None, util, deployments())) == 1, judged


# --------------------------------------------------------------------------- idle_services


def test_idle_services_reasons() -> None:
    services = [
        service("off", is_disabled=True, state="DISABLED"),
        service("new", state="DEPLOYING"),
        service("quiet"),
        service("busy"),
        service("unmeasured"),
        service("spike"),
    ]
    deployments = [
        {
            "account_id": "111111111111",
            "region": REGION,
            "service_name": n,
            "slot": "current",
            "state": "ACTIVE",
        }
        for n in ("off", "quiet", "busy", "unmeasured", "spike")
    ] + [
        {
            "account_id": "111111111111",
            "region": REGION,
            "service_name": "new",
            "slot": "current",
            "state": "ACTIVATING",
        },
    ]
    util = (
        usage("quiet", [0.5, 1.9], [5])
        + usage("busy", [30], [30])
        + usage("unmeasured", None, None)
        + usage("spike", [0.5, 2.0], [5])
        + usage("off", [0.1], [1])
    )
    rows = run("idle_services", services, None, util, deployments)
    got = {
        r["service_name"]: (r["disabled"], r["no_active_deployment"], r["cpu_idle"]) for r in rows
    }
    assert got == {
        "off": (True, False, True),
        "new": (False, True, False),
        "quiet": (False, False, True),
    }
    by_name = {r["service_name"]: r for r in rows}
    assert by_name["quiet"]["reasons"] == "CPU below 2% all window"
    assert by_name["quiet"]["cpu_datapoints"] == 2 and by_name["quiet"]["cpu_max_pct"] == 1.9
    assert by_name["off"]["reasons"] == "disabled, CPU below 2% all window"
    assert by_name["new"]["usd_per_month"] == 50
    # a higher bar takes the spike (2.0) in; with no datapoints it is never idle
    rows = run("idle_services", services, None, util, deployments, cpu_idle_pct="2.5")
    assert {r["service_name"] for r in rows} == {"off", "new", "quiet", "spike"}


# --------------------------------------------------------------------------- cost_by_account


def _cost_services() -> list[dict[str, Any]]:
    return [
        service("a", "medium", 2, tags=[("team", "web"), ("env", "prod")]),
        service("b", "small", 1, tags=[("team", "data")]),
        service("c", "nano", 3, tags=[]),
        service("d", "micro", 1, tags=[("team", None)], is_disabled=True),
        service(
            "e", "large", 1, account_id="222222222222", account_name=None, tags=[("Team", "web")]
        ),
    ]


def test_cost_by_account_counts_each_service_once() -> None:
    rows = run("cost_by_account", _cost_services())
    assert [
        (r["level"], r["account_id"], r["services"], r["nodes"], r["usd_per_month"]) for r in rows
    ] == [
        ("account", "111111111111", 4, 7, 100 + 25 + 21 + 10),
        ("account", "222222222222", 1, 1, 100),
        ("total", None, 5, 8, 256),
    ]
    assert {r["price_source"] for r in rows} == {"api"}
    assert rows[0]["account_name"] == "prod" and rows[2]["account_name"] is None


def test_cost_by_account_per_tag_value() -> None:
    rows = run("cost_by_account", _cost_services(), tag_key="team")
    tags = [
        (r["account_id"], r["tag_value"], r["services"], r["usd_per_month"])
        for r in rows
        if r["level"] == "tag"
    ]
    # tag keys are case-sensitive (AWS): "Team" is not "team"; a key without a value is ''

    assert sorted(tags) == sorted(
        [
            ("111111111111", "web", 1, 100),
            ("111111111111", "data", 1, 25),
            ("111111111111", "(untagged)", 1, 21),
            ("111111111111", "", 1, 10),
            ("222222222222", "(untagged)", 1, 100),
        ]
    )
    totals = {
        r["level"]: r["usd_per_month"]
        for r in rows
        if r["level"] != "tag" and r["account_id"] is None
    }
    assert totals == {"total": 256}
    assert sum(t[3] for t in tags) == 256
    assert {r["tag_key"] for r in rows} == {"team"}


def test_cost_by_account_falls_back_to_the_price_list() -> None:
    # no container_powers for this run: the bundled list; a power in neither: unpriced
    services = [service("a", "medium", 2), service("z", "gigantic", 1)]
    rows = run("cost_by_account", services, power_rows=[])
    total = rows[-1]
    assert (total["level"], total["usd_per_month"], total["unpriced"]) == ("total", 100, 1)
    assert total["price_source"] == "bundled"
    # some services priced by the run, others not
    mixed = [service("a", "medium", 2), service("b", "small", 1, region="us-east-1")]
    rows = run("cost_by_account", mixed, power_rows=powers(medium={"price_per_month": 40.0}))
    assert rows[-1]["price_source"] == "api, bundled" and rows[-1]["usd_per_month"] == 80 + 25
