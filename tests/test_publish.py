"""What a run publishes when it ends (inventory/publish): Prometheus metrics in a textfile
and on a real Pushgateway, notifications to a webhook on 127.0.0.1 and to SNS on moto's
server, and the summary file. Every test collects against the simulator through the CLI,
then reads back what was published and compares it with the store.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import re
import socket
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import require_binary
from helpers import rows
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from inventory.aws.pacing import default_floor
from inventory.cli import app
from inventory.model import ErrorRecord, utcnow
from inventory.publish import message, metrics, send
from inventory.publish.targets import Publishing, SnsTopic, Webhook, parse_notify, shown_url
from inventory.run.builder import Tally
from inventory.simulator import Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
R3 = ("us-east-1", "eu-west-2", "ap-northeast-1")
DENIED_REGION = "eu-west-2"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def invoke(*args: str) -> Any:
    """`inventory ARGS` in this process; a crash is a failure, not an exit status."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tries and their order are what is tested, not the seconds between them."""
    monkeypatch.setattr(send, "BACKOFF", (0.0, 0.0))


@pytest.fixture
def night(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """`night(*flags)`: one collect of a 4-account fleet (one region denied in one account:
    a partial run) into tmp_path's store and lake, with `flags` added. The fingerprint key
    comes from the environment, as in a scheduled container: a night with a fresh store
    (`db=`) writes to the same lake with the same key."""
    monkeypatch.setenv("INVENTORY_FINGERPRINT_KEY", "publish-tests-" + "k" * 32)
    fleet = Fleet(4, seed=2, regions=R3)
    denied = fleet.account_ids[1]
    sim = make_simulator(fleet=fleet, faults=Faults(denied_regions={(denied, DENIED_REGION)}))
    config = write_accounts(tmp_path / "accounts.toml", fleet.account_ids, regions=R3)

    def run(*flags: str, db: Path | None = None) -> Any:
        db = db or tmp_path / "inv.duckdb"
        base = ["collect", "--config", str(config), "--db", str(db)]
        return invoke(*base, "--parquet-dir", str(tmp_path / "lake"), *flags)

    run.fleet = fleet  # type: ignore[attr-defined]
    run.sim = sim  # type: ignore[attr-defined]
    return run


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(metrics.PREFIX + name, tuple(sorted(labels.items())))]


def the_run(db: Path) -> dict[str, Any]:
    [run] = rows(db, "select * from runs")
    return run


def failed_by(db: Path, run_id: str) -> dict[tuple[str, str], int]:
    got = rows(
        db,
        "select region, error_code, count(*) as n from scans "
        f"where run_id = '{run_id}' and status = 'failed' group by all",
    )
    return {(r["region"], r["error_code"]): r["n"] for r in got}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- Pushgateway
@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """Debian's prometheus-pushgateway on a free 127.0.0.1 port, in memory only (Debian's
    default persists to /var/lib/prometheus: every test would see the others' groups)."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        for _ in range(300):  # until it answers /-/ready (or has died)
            assert proc.poll() is None, "prometheus-pushgateway ended at start"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                threading.Event().wait(0.05)
        else:
            raise AssertionError("prometheus-pushgateway never became ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


GATEWAY = {"job": "lightsail_inventory", "instance": ""}  # the labels a push adds


def gateway_samples(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {k: v for k, v in samples(text).items() if k[0].startswith(metrics.PREFIX)}


def test_metrics_file_and_pushgateway_match_the_store(
    night: Callable[..., Any], tmp_path: Path, pushgateway: str
) -> None:
    prom = tmp_path / "textfile" / "lightsail_inventory.prom"
    prom.parent.mkdir()
    result = night("--metrics-file", str(prom), "--pushgateway", pushgateway)
    assert result.exit_code == 3, result.output  # partial: one region denied
    db = tmp_path / "inv.duckdb"
    run = the_run(db)
    text = prom.read_text()
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter reads it
    assert [p.name for p in prom.parent.iterdir()] == [prom.name]  # no temporary left
    for account in night.fleet.all_account_ids:  # type: ignore[attr-defined]
        assert account not in text  # no per-account labels
    want_failed = failed_by(db, run["run_id"])
    assert want_failed == {(DENIED_REGION, "AccessDeniedException"): 1}

    on_gateway = gateway_samples(pushgateway)
    for got, extra in ((samples(text), {}), (on_gateway, GATEWAY)):
        labels = {"shard": "all", **extra}
        assert value(got, "last_run_status", status="partial", **labels) == 1
        assert value(got, "last_run_status", status="complete", **labels) == 0
        assert value(got, "last_run_exit_code", **labels) == 3
        assert value(got, "targets", outcome="ok", **labels) == run["targets_ok"]
        assert value(got, "targets", outcome="failed", **labels) == run["targets_failed"]
        for name in ("services", "deployments", "containers", "api_calls", "retries"):
            assert value(got, name, **labels) == run[name], name
        assert value(got, "last_run_start_timestamp_seconds", **labels) == pytest.approx(
            run["started_at"].timestamp(), abs=1
        )
        duration = (run["finished_at"] - run["started_at"]).total_seconds()
        assert 0 < value(got, "last_run_duration_seconds", **labels) <= duration + 1
        assert value(got, "throttled_answers", **labels) == 0
        assert value(got, "lowest_rate_calls_per_second", **labels) == 1000.0  # not lowered
        failed = {
            (dict(k[1])["region"], dict(k[1])["error_code"]): v
            for k, v in got.items()
            if k[0] == metrics.PREFIX + "failed_targets"
        }
        assert failed == want_failed
    success = {"shard": "all"}
    assert value(samples(text), "last_success_timestamp_seconds", **success) == pytest.approx(
        run["finished_at"].timestamp(), abs=0.01
    )
    on_gw = {**success, **GATEWAY, "result": "success"}
    assert value(on_gateway, "last_success_timestamp_seconds", **on_gw) == pytest.approx(
        run["finished_at"].timestamp(), abs=0.01
    )


def test_a_failed_run_keeps_the_last_success_time(
    night: Callable[..., Any], tmp_path: Path, pushgateway: str
) -> None:
    prom = tmp_path / "inventory.prom"
    first = night("--metrics-file", str(prom), "--pushgateway", pushgateway)
    assert first.exit_code == 3, first.output
    success = the_run(tmp_path / "inv.duckdb")["finished_at"].timestamp()
    night.sim.faults.denied_regions = {("*", r) for r in R3}  # type: ignore[attr-defined]
    db2 = tmp_path / "second.duckdb"
    second = night("--metrics-file", str(prom), "--pushgateway", pushgateway, db=db2)
    assert second.exit_code == 1, second.output  # every target failed
    assert the_run(db2)["status"] == "failed"
    on_gateway = gateway_samples(pushgateway)
    for got, labels, kept in (
        (samples(prom.read_text()), {"shard": "all"}, {"shard": "all"}),
        (
            on_gateway,
            {"shard": "all", **GATEWAY},
            {"shard": "all", **GATEWAY, "result": "success"},
        ),
    ):
        assert value(got, "last_run_status", status="failed", **labels) == 1
        assert value(got, "targets", outcome="ok", **labels) == 0
        assert value(got, "last_success_timestamp_seconds", **kept) == pytest.approx(
            success, abs=0.01
        )
    # the main group was replaced: no failure series of the first run is left over
    codes = {dict(k[1])["region"] for k in on_gateway if k[0].endswith("failed_targets")}
    assert codes == set(R3)


def test_a_shard_pushes_to_its_own_group(
    night: Callable[..., Any], tmp_path: Path, pushgateway: str
) -> None:
    """A shard's label has a '/' (pushed base64-encoded in the group's URL path)."""
    for k in (0, 1):
        run_id = "20261129T010000Z-night"
        flags = ["--pushgateway", pushgateway, "--shard", f"{k}/2", "--run-id", run_id]
        result = night(*flags, db=tmp_path / f"shard{k}.duckdb")
        assert result.exit_code in (0, 3), result.output
    got = gateway_samples(pushgateway)
    for k in (0, 1):
        [run] = rows(tmp_path / f"shard{k}.duckdb", "select * from runs")
        labels = {**GATEWAY, "shard": f"{k}/2"}
        assert value(got, "accounts", **labels) == run["accounts"]
        assert value(got, "targets", outcome="ok", **labels) == run["targets_ok"]
    assert {dict(k[1])["shard"] for k in got} == {"0/2", "1/2"}


def test_the_documented_delete_removes_an_old_shards_groups(pushgateway: str) -> None:
    """docs/metrics.md's DELETE URLs (shard `3/4`: base64 `My80`) remove both groups of that
    shard, run and last success, and leave the other shards' alone."""
    from inventory.run.pipeline import RunSummary

    now = utcnow()
    for shard in ("3/4", "0/2"):
        metrics.push(pushgateway, RunSummary("20261129T000000Z-abc", "complete", now, now), shard)
    assert {dict(k[1])["shard"] for k in gateway_samples(pushgateway)} == {"3/4", "0/2"}
    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    templates = re.findall(r'curl -X DELETE "http://pgw:9091(\S+)"', doc)
    assert len(templates) == 2
    encoded = base64.urlsafe_b64encode(b"3/4").decode()
    assert encoded == "My80" and "(`0/4` is `MC80`)" in doc
    for path in templates:
        url = pushgateway + path.replace("$v", encoded)
        request = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202
    left = gateway_samples(pushgateway)
    assert {dict(k[1])["shard"] for k in left} == {"0/2"}
    assert value(left, "last_success_timestamp_seconds", shard="0/2", result="success", **GATEWAY)


@pytest.mark.parametrize("workers", [1, 2])
def test_throttled_answers_and_the_lowest_rate(
    night: Callable[..., Any], tmp_path: Path, workers: int
) -> None:
    """Every throttled answer the simulator gave is counted (across worker processes), and
    the lowest rate is the whole run's (each of N workers paces 1/N of --rate)."""
    night.sim.faults.throttle_rate = 0.3  # type: ignore[attr-defined]
    prom = tmp_path / "m.prom"
    result = night("--metrics-file", str(prom), "--rate", "40", "--workers", str(workers))
    assert result.exit_code == 3, result.output
    stats = night.sim.stats()  # type: ignore[attr-defined]
    throttled = sum(op.get("throttled", 0) for op in stats["operations"].values())
    assert throttled > 0
    got = samples(prom.read_text())
    assert value(got, "throttled_answers", shard="all") == throttled
    lowest = value(got, "lowest_rate_calls_per_second", shard="all")
    assert default_floor(40 / workers) * workers <= lowest <= 20  # halved at least once
    denied = {"region": DENIED_REGION, "error_code": "AccessDeniedException", "shard": "all"}
    assert value(got, "failed_targets", **denied) == 1  # counted in whichever process


def test_a_pushgateway_that_is_down_changes_nothing(
    night: Callable[..., Any], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = night("--pushgateway", url, "--log-format", "json")
    assert result.exit_code == 3, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    failed = [e for e in events if e["event"] == "metrics_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    assert failed[-1]["final"] is True and failed[-1]["level"] == "warning"
    assert the_run(tmp_path / "inv.duckdb")["status"] == "partial"


# --------------------------------------------------------------------------- webhooks
class Hook:
    """A webhook on 127.0.0.1 that answers 500 to its first `fail` requests, then 200."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(hook.requests) < hook.fail else 200
                hook.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/s3cr3tt0k3n"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(body) for status, _, body in self.requests if status == 200]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Callable[..., Hook]]:
    started: list[Hook] = []

    def make(fail: int = 0) -> Hook:
        started.append(Hook(fail))
        return started[-1]

    yield make
    for h in started:
        h.stop()


def test_webhook_gets_one_json_message(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    h = hook()
    result = night("--notify", h.url)
    assert result.exit_code == 3, result.output
    [msg] = h.delivered()
    assert h.requests[0][1]["Content-Type"] == "application/json"
    db = tmp_path / "inv.duckdb"
    run = the_run(db)
    assert msg["run_id"] == run["run_id"] and msg["status"] == "partial"
    assert msg["exit_code"] == 3 and msg["shard"] == "all"
    for name in ("targets", "targets_ok", "targets_failed", "services", "api_calls"):
        assert msg["counts"][name] == run[name], name
    [group] = msg["failures"]
    assert (group["region"], group["error_code"], group["targets"]) == (
        DENIED_REGION,
        "AccessDeniedException",
        1,
    )
    [stored] = rows(db, "select message from errors")
    assert group["message"] == stored["message"]
    assert run["run_id"] in msg["text"] and "partial" in msg["text"]
    assert f"{DENIED_REGION} AccessDeniedException: 1 target" in msg["text"]
    assert msg["changes"]["compared"] == 0  # the first run: nothing before it
    assert "s3cr3tt0k3n" not in result.output  # the webhook's token is never shown


def test_notify_targets_from_the_environment(
    night: Callable[..., Any], hook: Callable[..., Hook], monkeypatch: pytest.MonkeyPatch
) -> None:
    """INVENTORY_NOTIFY (space-separated) keeps a webhook's token out of the process list."""
    a, b = hook(), hook()
    monkeypatch.setenv("INVENTORY_NOTIFY", f"{a.url} {b.url}")
    assert night().exit_code == 3
    [got_a], [got_b] = a.delivered(), b.delivered()
    assert got_a == got_b and got_a["status"] == "partial"


def test_changes_since_the_previous_run_from_the_store_then_the_lake(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    first = hook()
    assert night("--notify", first.url).exit_code == 3
    [msg0] = first.delivered()  # the first night: nothing to compare with, and it says so
    assert msg0["changes"]["compared"] == 0 < msg0["changes"]["not_compared"]
    assert "nothing to compare with (no earlier good scan of " in msg0["text"]
    night.sim.set_fleet(night.fleet.evolve(seed=1))  # type: ignore[attr-defined]
    h = hook()
    assert night("--notify", h.url).exit_code == 3
    oracle = invoke("diff", "--db", str(tmp_path / "inv.duckdb"), "--format", "json")
    want = json.loads(oracle.stdout)
    assert want["changes"], "the evolved fleet changed nothing"
    [msg] = h.delivered()
    changes = msg["changes"]
    assert changes["source"] == "store"
    assert changes["changes"] == len(want["changes"]) and changes["counts"] == want["counts"]
    assert changes["compared"] == want["compared"] > 0
    line = f"changes since the previous run: {changes['changes']} changes ("
    assert line in msg["text"]
    assert f"across the {changes['compared']} account × region pairs compared" in msg["text"]
    # a throw-away store (as in a container): the lake holds the previous runs
    h2 = hook()
    assert night("--notify", h2.url, db=tmp_path / "fresh.duckdb").exit_code == 3
    [msg2] = h2.delivered()
    assert msg2["changes"]["source"] == "lake"
    assert msg2["changes"]["compared"] == want["compared"]
    assert msg2["changes"]["changes"] == 0  # the fleet did not change since


def test_webhook_failing_twice_gets_the_message_once(
    night: Callable[..., Any], hook: Callable[..., Hook]
) -> None:
    h = hook(fail=2)
    result = night("--notify", h.url, "--log-format", "json")
    assert result.exit_code == 3, result.output
    assert [status for status, _, _ in h.requests] == [500, 500, 200]
    assert len(h.delivered()) == 1
    failed = [json.loads(x) for x in result.stderr.splitlines() if "notify_failed" in x]
    assert [(e["attempt"], e["reason"], e["final"]) for e in failed] == [
        (1, "HTTP 500", False),
        (2, "HTTP 500", False),
    ]
    assert all(e["target"].endswith("/…") for e in failed)
    assert "s3cr3tt0k3n" not in result.stderr


def test_webhook_always_failing_changes_nothing(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    h = hook(fail=100)
    ok = hook()
    result = night("--notify", h.url, "--notify", ok.url, "--log-format", "json")
    assert result.exit_code == 3, result.output  # as without --notify
    assert len(h.requests) == send.TRIES and not h.delivered()
    assert len(ok.delivered()) == 1  # the other target still gets it
    failed = [json.loads(x) for x in result.stderr.splitlines() if "notify_failed" in x]
    assert [e["final"] for e in failed] == [False, False, True]
    assert {e["level"] for e in failed} == {"warning"}
    run = the_run(tmp_path / "inv.duckdb")
    assert run["status"] == "partial" and run["targets_ok"] == run["targets"] - 1
    assert json.loads(result.stdout)["exit_code"] == 3


def test_no_env_value_in_any_message(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    h = hook()
    summary = tmp_path / "summary.json"
    prom = tmp_path / "m.prom"
    result = night(
        "--include-env-values",
        "--notify",
        h.url,
        "--summary-json",
        str(summary),
        "--metrics-file",
        str(prom),
    )
    assert result.exit_code == 3, result.output
    stored = rows(tmp_path / "inv.duckdb", "select environment from containers")
    values = {v for r in stored for v in (r["environment"] or {}).values() if len(v) >= 4}
    assert values, "the fleet has no environment values to leak"
    published = h.requests[0][2].decode() + summary.read_text() + prom.read_text()
    assert not [v for v in values if v in published]


# --------------------------------------------------------------------------- SNS
def test_sns_on_moto(
    night: Callable[..., Any], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    night.sim  # noqa: B018 (the simulator's AWS variables are set: moto takes any credentials)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto_endpoint)
    kw = {"endpoint_url": moto_endpoint, "region_name": "eu-west-1"}
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name="inventory-runs")["TopicArn"]
    queue = sqs.create_queue(QueueName="inventory-runs")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    result = night("--notify", f"sns:{topic}")
    assert result.exit_code == 3, result.output
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    [envelope] = [json.loads(m["Body"]) for m in got["Messages"]]
    assert envelope["TopicArn"] == topic
    msg = json.loads(envelope["Message"])
    assert envelope["Subject"] == f"lightsail-inventory partial: run {msg['run_id']}"
    assert msg["status"] == "partial" and msg["counts"]["targets_failed"] == 1
    assert msg["text"].startswith(f"lightsail-inventory run {msg['run_id']}: partial")


# --------------------------------------------------------------------------- summary file
def test_summary_json_is_the_run_end_event(night: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    result = night("--summary-json", str(path), "--log-format", "json")
    assert result.exit_code == 3, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    [run_end] = [e for e in events if e["event"] == "run_end"]
    written = json.loads(path.read_text())
    assert len(path.read_text().splitlines()) == 1
    assert {k: v for k, v in written.items() if k != "ts"} == {
        k: v for k, v in run_end.items() if k != "ts"
    }
    assert written["run_id"] == the_run(tmp_path / "inv.duckdb")["run_id"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # private, like every file it makes


# --------------------------------------------------------------------------- bad flags: exit 2
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--notify", "ftp://example.com/x"], "--notify: a ftp: URL (ftp://example.com/…)"),
        (["--notify", "hooks.slack.com/services/T/B/secret"], "--notify: no URL"),
        (["--notify", "sns:arn:aws:sns:eu-west-1:1234:t"], "not an SNS topic ARN"),
        (["--pushgateway", "localhost:9091"], "--pushgateway: a localhost: URL"),
        (["--metrics-file", "/nonexistent-dir/x.prom"], "the folder /nonexistent-dir"),
        (["--summary-json", "/nonexistent-dir/s.json"], "--summary-json /nonexistent-dir/s"),
        (
            ["--notify", "https://[hooks.slack.com/services/T/B/secret"],
            "--notify: not a valid URL (https://[hooks.slack.com/…)",
        ),
        (["--pushgateway", "http://[::1"], "--pushgateway: not a valid URL (http://[::1)"),
        (
            ["--pushgateway", "http://inventory:secret@127.0.0.1:9091"],
            "--pushgateway: a user or password in the URL (http://127.0.0.1:9091)",
        ),
        (["--notify", "https://u:secret@h.example/x"], "user or password in the URL"),
        # /sys takes no new file, even for root: the write probe finds it at preflight
        (["--metrics-file", "/sys/x.prom"], "--metrics-file /sys/x.prom: cannot write in"),
        (["--summary-json", "/sys/s.json"], "cannot write in the folder /sys (Permission"),
    ],
)
def test_bad_publishing_flags_are_usage_errors(
    tmp_path: Path, night: Callable[..., Any], flags: list[str], expected: str
) -> None:
    result = night(*flags)
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and expected in line, line
    assert "secret" not in line
    assert not (tmp_path / "inv.duckdb").exists()  # nothing collected


def test_a_malformed_url_in_the_environment_is_a_usage_error(
    tmp_path: Path, night: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVENTORY_NOTIFY", "https://[hooks.slack.com/services/T/B/secret")
    result = night()
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line == "error: --notify: not a valid URL (https://[hooks.slack.com/…)"
    assert not (tmp_path / "inv.duckdb").exists()


def test_the_write_probe_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    where = Publishing.parse(metrics_file=folder / "m.prom", summary_json=folder / "s.json")
    assert where.metrics_file == folder / "m.prom"
    assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- a run that raised
def test_a_run_that_could_not_start_is_published(
    night: Callable[..., Any], tmp_path: Path, pushgateway: str, hook: Callable[..., Hook]
) -> None:
    """GetRegions refused (`--regions discover`): the run is recorded as failed and exits 1
    with the same message as without publishing flags; it is published all the same, and
    the last success time of the night before is kept."""
    prom, summary = tmp_path / "m.prom", tmp_path / "s.json"
    assert night("--metrics-file", str(prom), "--pushgateway", pushgateway).exit_code == 3
    success = the_run(tmp_path / "inv.duckdb")["finished_at"].timestamp()
    night.sim.faults.denied_operations = {"GetRegions"}  # type: ignore[attr-defined]
    h = hook()
    db = tmp_path / "second.duckdb"
    flags = ["--regions", "discover", "--notify", h.url, "--summary-json", str(summary)]
    result = night(*flags, "--metrics-file", str(prom), "--pushgateway", pushgateway, db=db)
    assert result.exit_code == 1, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: GetRegions failed: AccessDeniedException"), line
    plain = night("--regions", "discover", db=tmp_path / "third.duckdb")  # no publishing
    assert plain.exit_code == 1
    run = the_run(db)
    assert run["status"] == "failed"
    [plain_line] = [x for x in plain.stderr.splitlines() if x.startswith("error:")]
    plain_run = the_run(tmp_path / "third.duckdb")["run_id"]
    assert line.replace(run["run_id"], "RUN") == plain_line.replace(plain_run, "RUN")

    [msg] = h.delivered()
    assert (msg["run_id"], msg["status"], msg["exit_code"]) == (run["run_id"], "failed", 1)
    [stopped] = msg["failures"]
    assert (stopped["operation"], stopped["error_code"], stopped["targets"]) == (
        "GetRegions",
        "AccessDeniedException",
        0,
    )
    [stored] = rows(db, "select operation, message from errors")
    assert stopped["message"] == stored["message"]
    assert msg["counts"]["api_calls"] == run["api_calls"] > 0
    assert "stopped by: GetRegions AccessDeniedException" in msg["text"]
    assert msg["changes"] is None

    written = json.loads(summary.read_text())
    assert (written["run_id"], written["status"], written["exit_code"]) == (
        run["run_id"],
        "failed",
        1,
    )
    assert [(f["operation"], f["error_code"]) for f in written["failures"]] == [
        ("GetRegions", "AccessDeniedException")
    ]
    for got, labels, kept in (
        (samples(prom.read_text()), {"shard": "all"}, {"shard": "all"}),
        (
            gateway_samples(pushgateway),
            {"shard": "all", **GATEWAY},
            {"shard": "all", **GATEWAY, "result": "success"},
        ),
    ):
        assert value(got, "last_run_status", status="failed", **labels) == 1
        assert value(got, "last_run_status", status="partial", **labels) == 0
        assert value(got, "last_run_exit_code", **labels) == 1
        assert value(got, "last_success_timestamp_seconds", **kept) == pytest.approx(
            success, abs=0.01
        )


def test_a_run_refused_before_it_starts_publishes_nothing(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    """A run that never got recorded (here: its --run-id is already in the store, exit 2)
    publishes nothing: the runs table has nothing to say about it."""
    h = hook()
    summary = tmp_path / "s.json"
    assert night("--run-id", "20261129T010000Z-again").exit_code == 3
    again = night(
        "--run-id", "20261129T010000Z-again", "--notify", h.url, "--summary-json", str(summary)
    )
    assert again.exit_code == 2, again.output
    assert h.requests == [] and not summary.exists()


def test_a_message_that_cannot_be_built_changes_nothing(
    night: Callable[..., Any],
    tmp_path: Path,
    hook: Callable[..., Hook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in building the message is one `notify_failed` warning: the exit status and
    the other publishing steps stay as they were."""

    def broken(*args: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(message, "build", broken)
    h = hook()
    summary = tmp_path / "s.json"
    result = night("--notify", h.url, "--summary-json", str(summary), "--log-format", "json")
    assert result.exit_code == 3, result.output
    events = [json.loads(x) for x in result.stderr.splitlines()]
    [failed] = [e for e in events if e["event"] == "notify_failed"]
    assert (failed["reason"], failed["level"]) == ("RuntimeError", "warning")
    assert failed["target"] == shown_url(h.url) and "s3cr3tt0k3n" not in result.stderr
    assert h.requests == []
    assert json.loads(summary.read_text())["status"] == "partial"
    assert json.loads(result.stdout)["exit_code"] == 3


# --------------------------------------------------------------------------- shards
def test_each_shard_counts_its_own_changes(
    night: Callable[..., Any], tmp_path: Path, hook: Callable[..., Hook]
) -> None:
    """Two shards write one lake from throw-away stores (as in containers): each shard's
    message counts the changes of its own accounts, read from the lake."""
    lake = tmp_path / "lake"
    for k in (0, 1):
        first = night(
            "--shard", f"{k}/2", "--run-id", "20261128T010000Z-night", db=tmp_path / f"a{k}.duckdb"
        )
        assert first.exit_code in (0, 3), first.output
    night.sim.set_fleet(night.fleet.evolve(seed=1))  # type: ignore[attr-defined]
    to_run = "20261129T010000Z-night"
    got: dict[int, dict[str, Any]] = {}
    mine: dict[int, set[str]] = {}
    for k in (0, 1):
        h = hook()
        db = tmp_path / f"b{k}.duckdb"
        result = night("--shard", f"{k}/2", "--run-id", to_run, "--notify", h.url, db=db)
        assert result.exit_code in (0, 3), result.output
        [msg] = h.delivered()
        got[k] = msg["changes"]
        mine[k] = {r["account_id"] for r in rows(db, "select distinct account_id from scans")}
    assert mine[0] and mine[1] and not mine[0] & mine[1]
    oracle = invoke("diff", "--lake", str(lake), "--to", to_run, "--format", "json")
    want = json.loads(oracle.stdout)
    assert want["changes"], "the evolved fleet changed nothing"
    for k in (0, 1):
        assert got[k]["source"] == "lake"
        own = [c for c in want["changes"] if c["account_id"] in mine[k]]
        assert got[k]["changes"] == len(own)
    assert got[0]["compared"] + got[1]["compared"] == want["compared"]
    assert got[0]["changes"] + got[1]["changes"] == len(want["changes"])


# --------------------------------------------------------------------------- units
def test_tally_merges_throttles_lowest_rate_and_exact_failures() -> None:
    a = Tally(throttled=2, lowest_rate=250.0, failed_by={("us-east-1", "X"): 2})
    b = Tally(throttled=3, lowest_rate=125.0, failed_by={("us-east-1", "X"): 1, ("r", "Y"): 4})
    a.merge(b)
    a.merge(Tally())  # a worker that made no call: no rate
    assert a.throttled == 5 and a.lowest_rate == 125.0
    assert a.failed_by == {("us-east-1", "X"): 3, ("r", "Y"): 4}


def test_shown_url_hides_paths_and_users() -> None:
    assert shown_url("https://hooks.slack.com/services/T/B/tok") == "https://hooks.slack.com/…"
    assert (
        shown_url("https://u:pw@[hooks.slack.com/services/T/B/tok") == "https://[hooks.slack.com/…"
    )
    assert shown_url("http://u:pw@127.0.0.1:9091") == "http://127.0.0.1:9091"
    assert shown_url("https://h.example/?token=x") == "https://h.example/…"


def test_notify_targets() -> None:
    arn = "arn:aws:sns:eu-west-1:012345678901:runs.fifo"
    assert parse_notify(f"sns:{arn}") == SnsTopic(arn, "eu-west-1")
    assert SnsTopic(arn, "eu-west-1").fifo
    assert parse_notify("https://x.example/hook") == Webhook("https://x.example/hook")
    assert Publishing.parse(notify=["https://a.example", f"sns:{arn}"]).notify[1].region == (
        "eu-west-1"
    )


def test_failure_groups_count_every_target_and_take_the_stored_message() -> None:
    t = Tally(
        failures=[
            ErrorRecord(utcnow(), "111111111111", None, "AssumeRole", "AccessDenied", "m", 1)
        ],
        failed_by={("us-east-1", "AccessDenied"): 7, ("eu-west-2", "AccessDenied"): 7},
    )
    groups = message.failure_groups(t)
    assert [(g["region"], g["targets"], g["message"]) for g in groups] == [
        ("eu-west-2", 7, "m"),
        ("us-east-1", 7, "m"),
    ]


def rules_block() -> str:
    """The Prometheus rule file of docs/metrics.md (its one yaml block)."""
    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    return str(block)


# promtool's unit test of the two rules: the last success 25 h ago (quiet), 27 h (fires);
# 3 failed targets (quiet), then 11 (fires, N = 10).
RULE_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1h
    input_series:
      - series: 'lightsail_inventory_last_success_timestamp_seconds{shard="all",job="lightsail_inventory",instance="",result="success"}'
        values: '0x30'
      - series: 'lightsail_inventory_targets{shard="0/2",outcome="failed"}'
        values: '3 11'
    alert_rule_test:
      - eval_time: 25h
        alertname: LightsailInventoryNoSuccess
        exp_alerts: []
      - eval_time: 27h
        alertname: LightsailInventoryNoSuccess
        exp_alerts:
          - exp_labels: {severity: warning, shard: all}
            exp_annotations:
              summary: "No successful lightsail-inventory run for more than 26 hours (shard all)"
              description: "The nightly collect has not stored a snapshot for 1d 3h 0m 0s: see its log and the runs table (inventory runs)."
      - eval_time: 0h
        alertname: LightsailInventoryFailedTargets
        exp_alerts: []
      - eval_time: 1h
        alertname: LightsailInventoryFailedTargets
        exp_alerts:
          - exp_labels: {severity: warning, shard: 0/2}
            exp_annotations:
              summary: "11 account × region targets failed in the last lightsail-inventory run (shard 0/2)"
              description: "lightsail_inventory_failed_targets says which regions and error codes; the errors table names the accounts."
"""


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """docs/metrics.md's rules are valid (promtool check rules) and fire when they should
    (promtool test rules)."""
    promtool = require_binary("promtool", package="prometheus")
    (tmp_path / "rules.yml").write_text(rules_block())
    (tmp_path / "tests.yml").write_text(RULE_TESTS)
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 2 rules found" in check.stdout
    test = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_alert_rules_use_metrics_the_run_writes() -> None:
    """docs/metrics.md's rule file names only metrics a run writes (checked by name)."""
    rules = yaml.safe_load(rules_block())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "LightsailInventoryNoSuccess",
        "LightsailInventoryFailedTargets",
    }
    written = set(re.findall(r"^# TYPE (\S+)", open_textfile(), re.M))
    for rule in rules:
        for name in re.findall(r"lightsail_inventory_\w+", rule["expr"]):
            assert name in written, name


def open_textfile() -> str:
    """A textfile of a made-up partial run (every metric, a failure group)."""
    from inventory.run.pipeline import RunSummary

    now = utcnow()
    tally = Tally(targets_ok=1, targets_failed=1, lowest_rate=1.0, failed_by={("r", "E"): 1})
    summary = RunSummary("20261129T000000Z-abc", "partial", now, now, tally=tally)
    return metrics.textfile(summary, "all", None).decode()


def test_textfile_mode_ignores_the_umask(tmp_path: Path) -> None:
    from inventory.run.pipeline import RunSummary

    now = utcnow()
    old = os.umask(0o077)
    try:
        metrics.write_textfile(
            tmp_path / "m.prom", RunSummary("20261129T000000Z-abc", "failed", now, now), "0/4"
        )
    finally:
        os.umask(old)
    path = tmp_path / "m.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    got = samples(path.read_text())
    assert value(got, "last_run_status", status="failed", shard="0/4") == 1
    assert not [k for k in got if k[0] == metrics.LAST_SUCCESS]  # never succeeded


def test_a_file_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from inventory.publish.ends import publish
    from inventory.run.pipeline import RunSummary

    now = utcnow()
    gone = tmp_path / "gone"  # checked when the run started, removed since
    where = Publishing(metrics_file=gone / "m.prom", summary_json=gone / "s.json")
    with caplog.at_level(logging.WARNING, logger="inventory.publish"):
        publish(RunSummary("20261129T000000Z-abc", "complete", now, now), None, where)
    events = [(r.event, r.fields["reason"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert events == [
        ("summary_failed", "FileNotFoundError"),
        ("metrics_failed", "FileNotFoundError"),
    ]
