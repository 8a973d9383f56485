"""rightsizing, idle_services, cost_by_account and the report's cost section, end to end.

One module-scoped store holds two real collects against the simulator (aiobotocore over
HTTP, a real DuckDB file): run 1 without --usage, run 2 with `--usage --usage-days 2`. The
fleet (3 accounts with services, seed 9, two regions) has every usage profile (idle, steady, bursty,
over_provisioned, no_datapoints, disabled) and one region that prices a power otherwise.
The named queries run through the CLI and are compared with the simulator's ground truth:
its profiles, its raw 5-minute samples (fleet.utilization) and its powers (POWER_SPECS),
never with the collector's code. The report is parsed, and rendered in headless Chromium.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import struct
import subprocess
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, use_simulator_env
from test_report import Node, parse
from typer.testing import CliRunner

from inventory import cli
from inventory.answers import report
from inventory.model import Account, Options, Plan
from inventory.run.pipeline import run_collect
from inventory.simulator import Fleet, Simulator
from inventory.simulator.fleet import DISABLED_PROFILE, POWER_SPECS, USAGE_PROFILES
from inventory.storage.store import Store

REGIONS = ("us-east-1", "eu-west-2")
DEAR = ("eu-west-2", "medium", 55.0)  # (region, power, price): not the bundled list's 50
HEADROOM_TARGET = 60.0  # 100 - headroom_pct's default
THRESHOLD = 20.0  # max_cpu_pct's and max_memory_pct's default
MEMORY_RGB = (0xAE, 0x3E, 0xC9)  # report.METRICS' memory colour: nothing else on the page

runner = CliRunner()


@dataclass
class Usage:
    db: Path
    lake: Path  # the --usage run's Parquet
    fleet: Fleet
    plain_run: str  # collected without --usage
    usage_run: str
    window: tuple[dt.datetime, dt.datetime]

    def services(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for a in self.fleet.account_ids:
            for r in REGIONS:
                for s in self.fleet.services(a, r):
                    yield a, r, s

    def profile(self, a: str, r: str, s: dict[str, Any]) -> str:
        return self.fleet.usage_profile(a, r, s["containerServiceName"])

    def price(self, region: str, power: str) -> float:
        return self.fleet.power_prices.get((region, power), POWER_SPECS[power][2])

    def in_service(self, s: dict[str, Any]) -> bool:
        """Whether rightsizing may judge the service (docs/cost.md): RUNNING, DEPLOYING or
        READY, with its current deployment ACTIVE; DELETING, UPDATING, PENDING and DISABLED
        never."""
        current = s.get("currentDeployment") or {}
        judged = s["state"] in ("RUNNING", "DEPLOYING", "READY")
        return judged and current.get("state") == "ACTIVE"

    def peak(self, a: str, r: str, name: str, metric: str) -> tuple[float, int]:
        """(highest sample, hours with samples) of the window: the ground truth."""
        start, end = (t.timestamp() for t in self.window)
        samples = self.fleet.utilization(a, r, name, metric, start, end)
        hours = {int((t - start) // 3600) for t, _ in samples}
        return max((v for _, v in samples), default=0.0), len(hours)


@pytest.fixture(scope="module")
def usage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Usage]:
    fleet = Fleet(3, seed=9, regions=REGIONS)
    region, power, price = DEAR
    fleet.power_prices[(region, power)] = price
    accounts = tuple(
        Account(id=a, role_arn=f"arn:aws:iam::{a}:role/LightsailInventoryReader")
        for a in fleet.account_ids
    )

    def plan(with_usage: bool) -> Plan:
        options = Options(usage=with_usage, usage_days=2)
        return Plan(accounts=accounts, regions=REGIONS, options=options)

    tmp = tmp_path_factory.mktemp("usage-answers")
    db, lake = tmp / "inventory.duckdb", tmp / "lake"
    with pytest.MonkeyPatch.context() as mp, Simulator(fleet) as sim:
        use_simulator_env(mp, sim)
        first = asyncio.run(run_collect(plan(False), db, None))
        second = asyncio.run(run_collect(plan(True), db, str(lake)))
    assert (first.status, second.status) == ("complete", "complete")
    with Store.open(db, read_only=True) as store:
        _, rows = store.query_rows(
            "SELECT DISTINCT window_start, window_end FROM service_utilization"
        )
    ((start, end),) = rows
    yield Usage(db, lake, fleet, first.run_id, second.run_id, (start, end))


def query(u: Usage, name: str, *params: str, lake: bool = False) -> list[dict[str, Any]]:
    argv = ["query", name, "--format", "json"]
    argv += ["--lake", str(u.lake)] if lake else ["--db", str(u.db)]
    for p in params:
        argv += ["--param", p]
    result = runner.invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def test_the_fleet_has_every_profile(usage: Usage) -> None:
    profiles = {usage.profile(a, r, s) for a, r, s in usage.services()}
    assert profiles == {*USAGE_PROFILES, DISABLED_PROFILE}
    assert any(r == DEAR[0] and s["power"] == DEAR[1] for _, r, s in usage.services())


# --------------------------------------------------------------------------- rightsizing


def cheapest(power: str, scale: int, cpu: float, memory: float, region: str, u: Usage) -> tuple:
    """The ground truth's recommendation: (power, scale, USD a month), written here from the
    rule in docs/cost.md (capacity in use across all nodes, the cheapest that keeps
    the peaks at most 60 %, fewer nodes only when cheaper, never dearer)."""
    cpu_used = POWER_SPECS[power][0] * scale * cpu
    ram_used = POWER_SPECS[power][1] * scale * memory
    now = u.price(region, power) * scale
    fits = [
        (u.price(region, p) * n, -n, p)
        for p, (vcpu, ram, _) in POWER_SPECS.items()
        for n in range(1, scale + 1)
        if cpu_used / (vcpu * n) <= HEADROOM_TARGET and ram_used / (ram * n) <= HEADROOM_TARGET
    ]
    cheaper = [f for f in fits if f[0] < now]
    if not cheaper:
        return power, scale, now
    cost, minus_n, p = min(cheaper)
    return p, -minus_n, cost


def test_rightsizing_flags_the_over_provisioned_and_idle_only(usage: Usage) -> None:
    rows = {
        (r["account_id"], r["region"], r["service_name"]): r for r in query(usage, "rightsizing")
    }
    flagged_profiles, left_out = set(), set()
    for a, region, s in usage.services():
        name, profile = s["containerServiceName"], usage.profile(a, region, s)
        row = rows.pop((a, region, name), None)
        if profile not in ("idle", "over_provisioned") or not usage.in_service(s):
            # steady and bursty peak above the thresholds; no datapoints, disabled: no
            # evidence; deleting, updating, pending, or no active deployment: not in service
            assert row is None, (profile, s["state"], row)
            if profile in ("idle", "over_provisioned"):
                left_out.add(s["state"])  # low enough, but not in service
            continue
        assert row is not None, (profile, name)
        flagged_profiles.add(profile)
        cpu, cpu_n = usage.peak(a, region, name, "CPUUtilization")
        memory, memory_n = usage.peak(a, region, name, "MemoryUtilization")
        assert cpu < THRESHOLD and memory < THRESHOLD
        assert row["cpu_max_pct"] == pytest.approx(cpu, abs=0.005)
        assert row["memory_max_pct"] == pytest.approx(memory, abs=0.005)
        assert (row["cpu_datapoints"], row["memory_datapoints"]) == (cpu_n, memory_n) == (48, 48)
        assert (row["power"], row["scale"]) == (s["power"], s["scale"])
        assert row["usd_per_month"] == usage.price(region, s["power"]) * s["scale"]
        want = cheapest(
            s["power"], s["scale"], row["cpu_max_pct"], row["memory_max_pct"], region, usage
        )
        got = (row["recommended_power"], row["recommended_scale"], row["recommended_usd_per_month"])
        assert got == want
        assert row["usd_saving_per_month"] == pytest.approx(row["usd_per_month"] - want[2])
        assert row["action"] == ("downsize" if want[2] < row["usd_per_month"] else "keep")
        assert max(row["projected_cpu_max_pct"], row["projected_memory_max_pct"]) <= 60
    assert not rows, f"flagged, not in the fleet: {sorted(rows)}"
    assert flagged_profiles == {"idle", "over_provisioned"}
    assert {"DELETING", "UPDATING", "READY"} <= left_out  # the fleet has them: exercised


def test_rightsizing_thresholds_from_the_command_line(usage: Usage) -> None:
    # CPU below 1 %: only the idle profile (its CPU peaks below 1 %, over_provisioned's not)
    rows = query(usage, "rightsizing", "max_cpu_pct=1")
    idle = {
        s["containerServiceName"]
        for a, r, s in usage.services()
        if usage.profile(a, r, s) == "idle" and usage.in_service(s)
    }
    assert idle and {r["service_name"] for r in rows} == idle
    # no headroom to give: every flagged service keeps its power and scale
    for r in query(usage, "rightsizing", "headroom_pct=100"):
        assert (r["action"], r["usd_saving_per_month"]) == ("keep", 0)


@pytest.mark.parametrize(
    ("query_name", "param", "message"),
    [
        (
            "rightsizing",
            "max_cpu_pct=abc",
            "--param max_cpu_pct='abc': not a number ≥ 0 (default 20)",
        ),
        ("rightsizing", "headroom_pct=150", "--param headroom_pct='150': a percentage, 0 to 100"),
        ("rightsizing", "max_memory_pct=-5", "--param max_memory_pct='-5': not a number ≥ 0"),
        ("idle_services", "cpu_idle_pct=inf", "--param cpu_idle_pct='inf': not a number ≥ 0"),
    ],
)
def test_bad_numbers_are_usage_errors(
    usage: Usage, query_name: str, param: str, message: str
) -> None:
    result = runner.invoke(cli.app, ["query", query_name, "--db", str(usage.db), "--param", param])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["rightsizing", "idle_services", "cost_by_account"])
def test_the_lake_gives_the_same_answers(usage: Usage, name: str) -> None:
    # the lake holds only the --usage run: the same newest scans as the store
    answer = query(usage, name, lake=True)
    assert answer and answer == query(usage, name)


# --------------------------------------------------------------------------- idle_services


def test_idle_services_against_the_fleet(usage: Usage) -> None:
    rows = {
        (r["account_id"], r["region"], r["service_name"]): r for r in query(usage, "idle_services")
    }
    want = {}
    for a, region, s in usage.services():
        current = s.get("currentDeployment") or {}
        reasons = (
            s["state"] == "DISABLED",
            current.get("state") != "ACTIVE",
            usage.profile(a, region, s) == "idle",
        )
        if any(reasons):
            want[(a, region, s["containerServiceName"])] = reasons
    got = {k: (r["disabled"], r["no_active_deployment"], r["cpu_idle"]) for k, r in rows.items()}
    assert got == want
    assert any(w[0] for w in want.values()) and any(w[2] for w in want.values())
    for key, r in rows.items():
        s = usage.fleet.find_service(*key)
        assert s is not None
        assert r["usd_per_month"] == usage.price(key[1], s["power"]) * s["scale"]


# --------------------------------------------------------------------------- cost_by_account


def test_cost_by_account_counts_each_service_once_at_the_runs_prices(usage: Usage) -> None:
    per_account: dict[str, float] = defaultdict(float)
    per_team: dict[tuple[str, str], float] = defaultdict(float)
    for a, region, s in usage.services():
        usd = usage.price(region, s["power"]) * s["scale"]
        per_account[a] += usd
        tags = {t["key"]: t.get("value", "") for t in s.get("tags") or []}
        per_team[(a, tags.get("team", "(untagged)"))] += usd
    rows = query(usage, "cost_by_account")
    assert {r["account_id"]: r["usd_per_month"] for r in rows if r["level"] == "account"} == {
        a: pytest.approx(v) for a, v in per_account.items()
    }
    (total,) = [r for r in rows if r["level"] == "total"]
    assert total["usd_per_month"] == pytest.approx(sum(per_account.values()))
    assert total["services"] == sum(1 for _ in usage.services())
    assert (total["price_source"], total["unpriced"]) == ("api", 0)
    rows = query(usage, "cost_by_account", "tag_key=team")
    teams = {
        (r["account_id"], r["tag_value"]): r["usd_per_month"] for r in rows if r["level"] == "tag"
    }
    assert teams == {k: pytest.approx(v) for k, v in per_team.items()}
    assert any(t == "(untagged)" for _, t in teams) and len({t for _, t in teams}) > 2


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def page(usage: Usage, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Node]:
    out = tmp_path_factory.mktemp("cost-page") / "report.html"
    result = runner.invoke(cli.app, ["report", "--html", str(out), "--db", str(usage.db)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    return out, text, parse(text).root


def _money(text: str) -> float:
    return float(text.replace("$", "").replace(",", ""))


def test_the_cost_section_shows_the_queries_answers(
    usage: Usage, page: tuple[Path, str, Node]
) -> None:
    _, _, doc = page
    totals = {c.attrs["data-total"]: c for c in doc.find_all("div", **{"class": "card"})}
    (total,) = [r for r in query(usage, "cost_by_account") if r["level"] == "total"]
    assert _money(totals["monthly cost"].find("div", **{"class": "v"}).text()) == pytest.approx(
        total["usd_per_month"]
    )
    assert "prices: api" in totals["monthly cost"].text()
    rightsizing = [r for r in query(usage, "rightsizing") if r["action"] == "downsize"]
    saving = sum(r["usd_saving_per_month"] for r in rightsizing)
    assert rightsizing and saving > 0
    assert _money(
        totals["rightsizing saves"].find("div", **{"class": "v"}).text()
    ) == pytest.approx(saving)
    # bars: one per account and per power, whole dollars
    accounts = {
        g.attrs["data-account"]: int(g.find("rect").attrs["data-value"])
        for g in doc.find("div", id="cost-by-account").find_all("g")
    }
    assert accounts == {
        r["account_id"]: round(r["usd_per_month"])
        for r in query(usage, "cost_by_account")
        if r["level"] == "account"
    }
    powers: dict[str, float] = defaultdict(float)
    for r in query(usage, "monthly_cost"):
        powers[r["power"]] += r["usd_per_month"]
    assert sum(powers.values()) == pytest.approx(total["usd_per_month"])  # one price rule
    bars = doc.find("div", id="cost-by-power").find_all("rect")
    assert {b.attrs["data-label"].split(" ")[0]: int(b.attrs["data-value"]) for b in bars} == {
        p: round(v) for p, v in powers.items()
    }
    # the rightsizing table: the downsized services, largest saving first
    table = doc.find("table", **{"class": "rightsizing"})
    shown = [[td.text() for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    assert [row[2] for row in shown] == [r["service_name"] for r in rightsizing][
        : report.RIGHTSIZING_ROWS
    ]


def test_the_dearest_services_utilization_as_small_charts(
    usage: Usage, page: tuple[Path, str, Node]
) -> None:
    _, _, doc = page
    dearest = sorted(
        query(usage, "monthly_cost"),
        key=lambda r: (-r["usd_per_month"], f"{r['account_id']}/{r['region']}/{r['service_name']}"),
    )[: report.COST_SERVICES]
    rows = doc.find("table", **{"class": "utilization"}).find("tbody").find_all("tr")
    assert [tr.attrs["data-service"] for tr in rows] == [
        f"{r['account_id']}/{r['region']}/{r['service_name']}" for r in dearest
    ]
    drawn = 0
    for tr, r in zip(rows, dearest, strict=True):
        profile = usage.fleet.usage_profile(r["account_id"], r["region"], r["service_name"])
        sparks = tr.find_all("svg")
        if profile in ("no_datapoints", DISABLED_PROFILE):
            cells = [td.attrs.get("data-status") for td in tr.find_all("td")[3:]]
            assert not sparks and cells == [profile, profile]
            continue
        drawn += 1
        assert [s.attrs["data-points"] for s in sparks] == ["48", "48"]
        for s, metric in zip(sparks, ("CPUUtilization", "MemoryUtilization"), strict=True):
            peak, _ = usage.peak(r["account_id"], r["region"], r["service_name"], metric)
            assert f"max {peak:.1f} %" in s.find("title").text()
            assert len(s.find("polyline").attrs["points"].split()) == 48
    assert drawn >= 2


def test_without_usage_data_the_section_says_so(usage: Usage, tmp_path: Path) -> None:
    out = tmp_path / "plain.html"
    result = runner.invoke(
        cli.app, ["report", "--html", str(out), "--db", str(usage.db), "--run", usage.plain_run]
    )
    assert result.exit_code == 0, result.output
    doc = parse(out.read_text(encoding="utf-8")).root
    assert "collect --usage" in doc.find("p", id="no-usage").text()
    assert not doc.find_all("table", **{"class": "utilization"})
    assert not doc.find_all("table", **{"class": "rightsizing"})
    card = next(
        c
        for c in doc.find_all("div", **{"class": "card"})
        if c.attrs["data-total"] == "monthly cost"
    )
    assert "prices: bundled" in card.text()


# --------------------------------------------------------------------------- Chromium


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG: zlib
    and the five PNG row filters, in pure Python."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    assert head is not None
    width, height, depth, colour, _, _, interlace = head
    assert depth == 8 and colour in (2, 6) and not interlace, head
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev, rows = bytes(stride), []
    for y in range(height):
        at = y * (stride + 1)
        cur = _unfilter(raw[at], raw[at + 1 : at + 1 + stride], prev, bpp)
        rows.append(b"".join(cur[i : i + 3] for i in range(0, stride, bpp)) if bpp == 4 else cur)
        prev = cur
    return width, height, rows


def _unfilter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:  # Up: bytewise (line + prev) mod 256, in one big integer
        n = len(line)
        low, high = (int.from_bytes(bytes([b]) * n, "big") for b in (0x7F, 0x80))
        a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
        return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(n, "big")
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            guess = left
        elif kind == 3:
            guess = (left + up) // 2
        else:  # Paeth
            corner = prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            da, db, dc = abs(p - left), abs(p - up), abs(p - corner)
            guess = left if da <= db and da <= dc else up if db <= dc else corner
        out[i] = (out[i] + guess) & 0xFF
    return bytes(out)


def test_the_page_in_headless_chromium(page: tuple[Path, str, Node], tmp_path: Path) -> None:
    chromium = require_binary("chromium")
    html_path, text, _ = page
    assert "<script" not in text.lower()
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    width, height, rows = read_png(shot)
    assert (width, height) == (1280, 4000)
    # the memory lines (a colour used by nothing else): drawn, in rows of the page
    purple = [
        y
        for y, row in enumerate(rows)
        if any(_near(c, MEMORY_RGB) for c in {row[i : i + 3] for i in range(0, len(row), 3)})
    ]
    pixels = sum(
        _near(rows[y][i : i + 3], MEMORY_RGB) for y in purple for i in range(0, width * 3, 3)
    )
    assert pixels > 300, f"{pixels} pixels of the memory lines: no utilization charts drawn"
    band = rows[purple[0] : purple[-1] + 1]
    colours = {row[i : i + 3] for row in band[::4] for i in range(0, len(row), 3)}
    assert len(colours) > 50, "the cost section's charts look blank"


def _near(rgb: bytes, want: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, want, strict=True))


def test_the_cost_section_escapes_everything_from_the_data() -> None:
    evil = "<script>alert(1)</script>"
    at = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    svc = report.ServiceCost("111111111111", evil, evil, evil, 2, 20.0)
    svc.series["CPUUtilization"] = [(at, 1.0, 2.0), (at, None, None)]
    svc.status["MemoryUtilization"] = evil
    costs = report.Costs(
        services=[svc],
        accounts=[("111111111111", evil, 1, 20.0)],
        total=20.0,
        price_sources=["api"],
        usage=True,
        rightsizing=[
            {
                "account_id": "111111111111",
                "region": evil,
                "service_name": evil,
                "power": evil,
                "scale": 2,
                "usd_per_month": 20.0,
                "action": "downsize",
                "recommended_power": evil,
                "recommended_scale": 1,
                "recommended_usd_per_month": 10.0,
                "usd_saving_per_month": 10.0,
                "cpu_max_pct": 2.0,
                "memory_max_pct": 3.0,
                "cpu_datapoints": 2,
                "memory_datapoints": 0,
            }
        ],
    )
    html = report._cost_section(costs)
    assert "<script" not in html and html.count("&lt;script&gt;") >= 6
    doc = parse(f"<div>{html}</div>").root
    assert len(doc.find_all("svg")) == 3  # two bar charts and one line
    assert report._cost_section(report.Costs(error=evil)).count("<script") == 0


def test_the_saving_counts_no_unpriced_service_and_says_how_many() -> None:
    # rightsizing's 'unpriced' rows (no run prices for their region) have NULL savings
    row = {"account_id": "111111111111", "region": "us-east-1", "service_name": "api"}
    row |= {"power": "small", "scale": 1, "usd_per_month": 25.0, "cpu_max_pct": 1.0}
    row |= {"memory_max_pct": 2.0, "cpu_datapoints": 4, "memory_datapoints": 4}
    down = row | {"action": "downsize", "recommended_power": "micro", "recommended_scale": 1}
    down |= {"recommended_usd_per_month": 10.0, "usd_saving_per_month": 15.0}
    unpriced = row | {"action": "unpriced", "usd_saving_per_month": None}
    costs = report.Costs(usage=True, rightsizing=[down, unpriced, unpriced])
    assert costs.saving == 15.0
    doc = parse(f"<div>{report._cost_section(costs)}</div>").root
    card = doc.find("div", **{"data-total": "rightsizing saves"})
    assert card is not None
    assert (
        card.find("div", **{"class": "sub"}).text() == "a month, 1 service; 2 not judged: no prices"
    )
