"""The usage flattener's fast path (`fast_points`) against its checked path.

A well-formed GetContainerServiceMetricData answer is read a column at a time; anything
irregular goes value by value through `UsageFlattener.checked_points`, which records each
problem. The fast path may only ever take an answer the checked path would store as it is,
with the same values: hypothesis draws answers of every shape and compares the two.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory.run.usage import (
    POINT_COLUMNS,
    MetricAnswer,
    Points,
    UsageFlattener,
    compact,
    fast_points,
)
from inventory.storage.flatten import Anomaly, Check, known_enums

END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
WINDOW = (END - dt.timedelta(days=1), END)
T0 = int(WINDOW[0].timestamp())


def metric(answer: Any, status: str = "ok", name: str = "web") -> MetricAnswer:
    return MetricAnswer(name, f"arn:{name}", "CPUUtilization", status, answer, END, 1)


def checked(answer: Any) -> tuple[Points, list[Anomaly]]:
    """What the checked path stores of `answer`, and what it records."""
    found: list[Anomaly] = []
    points = UsageFlattener().checked_points(metric(answer), Check(found, known_enums()))
    return points, found


def point(ts: Any = T0, average: Any = 1.5, maximum: Any = 2.5, unit: Any = "Percent") -> Any:
    return {"timestamp": ts, "average": average, "maximum": maximum, "unit": unit}


def columns(points: Points) -> dict[str, list[Any]]:
    return {c: points.column(c).to_pylist() for c in POINT_COLUMNS}


# --------------------------------------------------------------------------- properties

GOOD_TS = st.one_of(
    st.integers(T0, T0 + 10**6), st.floats(T0, T0 + 10**6, allow_nan=False, width=64)
)
GOOD_NUMBER = st.one_of(
    st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-(10**6), 10**6)
)
GOOD_UNIT = st.one_of(st.none(), st.sampled_from(["Percent", "Count", ""]))
ANY_TS = st.one_of(
    GOOD_TS,
    st.none(),
    st.booleans(),
    st.floats(),  # NaN, ±inf, far out of range
    st.integers(-(10**15), 10**15),  # out of the years 1..9999 at both ends
    st.sampled_from(["2026-11-01T00:00:00+00:00", "yesterday", ""]),
    st.lists(st.integers(), max_size=1),
)
ANY_NUMBER = st.one_of(
    GOOD_NUMBER,
    st.floats(),
    st.booleans(),
    st.just(10**400),  # beyond a float
    st.text(max_size=2),
    st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
)
ANY_UNIT = st.one_of(
    GOOD_UNIT,
    st.text(max_size=3),
    st.sampled_from(["é", "\ud800"]),
    st.integers(),
    st.lists(st.none()),
)


def datapoints(ts: Any, number: Any, unit: Any) -> Any:
    return st.fixed_dictionaries(
        {}, optional={"timestamp": ts, "average": number, "maximum": number, "unit": unit}
    )


GOOD_POINT = st.fixed_dictionaries(
    {"timestamp": GOOD_TS},
    optional={"average": GOOD_NUMBER, "maximum": GOOD_NUMBER, "unit": GOOD_UNIT},
)
ANY_POINT = st.one_of(
    datapoints(ANY_TS, ANY_NUMBER, ANY_UNIT), st.integers(), st.none(), st.text(max_size=2)
)
ANY_ANSWER = st.one_of(
    st.fixed_dictionaries({"metricData": st.lists(ANY_POINT, max_size=6)}),
    st.fixed_dictionaries({"metricData": st.one_of(st.none(), st.integers(), st.text(max_size=2))}),
    st.just({}),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(ANY_ANSWER)
def test_the_fast_path_takes_only_what_the_checked_path_stores_unchanged(answer: Any) -> None:
    fast = fast_points(answer)
    slow, found = checked(answer)
    if fast is not None:
        assert found == []
        assert columns(fast) == columns(slow)


@PROPERTY
@given(st.lists(GOOD_POINT, max_size=8), st.sampled_from(["CPUUtilization", "MemoryUtilization"]))
def test_a_well_formed_answer_takes_the_fast_path(data: list[Any], name: str) -> None:
    answer = {"metricName": name, "metricData": data}
    fast = fast_points(answer)
    assert fast is not None
    slow, found = checked(answer)
    assert found == [] and columns(fast) == columns(slow)


# --------------------------------------------------------------------------- cases


def test_fast_path_values_are_the_stored_ones() -> None:
    """Integer and float timestamps to microseconds, integers to floats,
    an absent statistic or unit NULL."""
    answer = {
        "metricData": [
            point(T0, 1, 2),
            {"timestamp": T0 + 3600.25, "maximum": 7.25},
        ]
    }
    fast = fast_points(answer)
    assert fast is not None
    micros = fast.period_start.cast(pa.int64()).to_pylist()
    assert micros == [T0 * 10**6, (T0 + 3600) * 10**6 + 250_000]
    assert fast.average.to_pylist() == [1.0, None]
    assert fast.maximum.to_pylist() == [2.0, 7.25]
    assert fast.unit.to_pylist() == ["Percent", None]


@pytest.mark.parametrize(
    "data",
    [
        [point(), 7],  # a datapoint that is not an object
        [point(), {"average": 1.0}],  # without its timestamp: left out, silently
        [point(ts=None)],
        [point(ts=True)],
        [point(ts="2026-11-01T00:00:00+00:00")],  # an ISO string: the checked path reads it
        [point(ts=float("nan"))],
        [point(ts=float("inf"))],
        [point(ts=10**13)],  # after the year 9999
        [point(average=float("nan"))],
        [point(maximum=float("-inf"))],
        [point(average=True)],
        [point(maximum="3")],
        [point(average=10**400)],
        [point(average=1e308), point(average=1e308)],  # finite, but their sum is not
        [point(unit="é")],  # not ASCII: the checked path looks closer
        [point(unit="\ud800")],
        [point(unit=["Percent"])],
    ],
)
def test_each_irregularity_takes_the_checked_path(data: list[Any]) -> None:
    assert fast_points({"metricData": data}) is None
    assert compact({"metricData": data}) == {"metricData": data}


@pytest.mark.parametrize("answer", [None, {}, {"metricData": None}, {"metricData": {}}, [1]])
def test_an_answer_without_its_list_takes_the_checked_path(answer: Any) -> None:
    assert fast_points(answer) is None
    _, found = checked(answer)
    assert [a.error_code for a in found] == ["UnexpectedShape"]


def test_a_number_beyond_a_float_is_an_anomaly_not_a_crash() -> None:
    f = UsageFlattener()
    found = f.add_metric(
        "r", "111111111111", "us-east-1", WINDOW, metric({"metricData": [point(average=10**400)]})
    )
    assert [a.error_code for a in found] == ["UnexpectedShape"]
    assert "metricData[0].average: expected number" in found[0].message
    (row,) = f.take()["service_utilization"].to_pylist()
    assert (row["average"], row["maximum"], row["status"]) == (None, 2.5, "ok")


def test_rows_are_the_same_from_an_answer_and_from_its_points() -> None:
    """The fetcher keeps compact(answer); the flattener stores the same rows from either."""
    answers = [
        {"metricData": [point(T0 + 3600 * i, i, 2 * i) for i in range(5)]},
        {"metricData": []},
        {"metricData": [point(average="x")]},
    ]
    tables = []
    for keep in (lambda a: a, compact):
        f = UsageFlattener()
        for i, answer in enumerate(answers):
            f.add_metric(
                "r", "111111111111", "us-east-1", WINDOW, metric(keep(answer), name=f"s{i}")
            )
        tables.append(f.take()["service_utilization"])
    assert isinstance(compact(answers[0]), Points)
    assert tables[0].equals(tables[1])
    assert tables[0].num_rows == 5 + 1 + 1


def test_take_lays_out_each_answer_with_its_own_columns() -> None:
    """Runs of rows of several answers and statuses, each row with its answer's constant
    columns (run-end decoded in Arrow), in the order added; then empty buffers."""
    f = UsageFlattener()
    f.add_metric(
        "r", "111111111111", "us-east-1", WINDOW, metric(None, status="disabled", name="off")
    )
    ok = {"metricData": [point(T0), point(T0 + 3600, unit="Count")]}
    f.add_metric("r", "222222222222", "eu-west-2", WINDOW, metric(compact(ok), name="web"))
    f.add_metric("r", "222222222222", "eu-west-2", WINDOW, metric({"metricData": []}, name="api"))
    f.add_metric("r", "222222222222", "eu-west-2", WINDOW, metric(None, status="failed", name="db"))
    assert f.rows["service_utilization"] == 5
    rows = f.take()["service_utilization"].to_pylist()
    got = [
        (r["account_id"], r["region"], r["service_name"], r["service_arn"], r["status"], r["unit"])
        for r in rows
    ]
    assert got == [
        ("111111111111", "us-east-1", "off", "arn:off", "disabled", None),
        ("222222222222", "eu-west-2", "web", "arn:web", "ok", "Percent"),
        ("222222222222", "eu-west-2", "web", "arn:web", "ok", "Count"),
        ("222222222222", "eu-west-2", "api", "arn:api", "no_datapoints", None),
        ("222222222222", "eu-west-2", "db", "arn:db", "failed", None),
    ]
    assert {
        (r["window_start"], r["window_end"], r["period_seconds"], r["collected_at"]) for r in rows
    } == {(*WINDOW, 3600, END)}
    assert [r["period_start"] for r in rows[1:3]] == [WINDOW[0], WINDOW[0] + dt.timedelta(hours=1)]
    assert f.rows["service_utilization"] == 0
    assert f.take()["service_utilization"].num_rows == 0


@pytest.mark.parametrize("edge", [-62135596800, 253402300799])
def test_the_years_1_and_9999_are_in_range_one_second_beyond_is_not(edge: int) -> None:
    assert fast_points({"metricData": [point(ts=edge)]}) is not None
    beyond = edge + (1 if edge > 0 else -1)
    assert fast_points({"metricData": [point(ts=beyond)]}) is None
    _, found = checked({"metricData": [point(ts=beyond)]})
    assert "timestamp out of range" in found[0].message
