"""A run's Prometheus metrics (docs/metrics.md): a textfile for node_exporter's textfile
collector (`--metrics-file`) and a push to a Pushgateway (`--pushgateway`).

Every metric is a gauge named `lightsail_inventory_…`, labelled with the shard ("0/4", or
"all" for an unsharded run) and never with an account id (one series per account would
grow without bound). `lightsail_inventory_last_success_timestamp_seconds` (a success: the
run stored a snapshot, status complete or partial) must survive a failed run, or the
"no successful run in 26 hours" alert would lose its clock:
- the textfile keeps the value it held for this shard when this run failed;
- on the Pushgateway it lives in a group of its own (grouping key shard + result="success")
  that only a successful run replaces; the run's other metrics replace their group
  (job lightsail_inventory, shard) on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.parser import text_string_to_metric_families

from inventory.storage.files import write_replacing

JOB = "lightsail_inventory"
PREFIX = "lightsail_inventory_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"
STATUSES = ("complete", "partial", "failed")
TEXTFILE_MODE = 0o644  # node_exporter runs as another user: it must read the file
PUSH_TIMEOUT = 10.0  # seconds per push


def succeeded(summary: Any) -> bool:
    """A run that stored a snapshot (complete or partial) counts as a success."""
    return summary.status in ("complete", "partial")


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return Gauge(PREFIX + name, doc, ["shard", *labels], registry=registry)


def run_registry(summary: Any, shard: str) -> CollectorRegistry:
    """The run's metrics (everything but the last success time) in a fresh registry."""
    reg = CollectorRegistry()
    t = summary.tally
    status = _gauge(reg, "last_run_status", "1 for the last run's status, 0 else", ["status"])
    for s in STATUSES:
        status.labels(shard, s).set(1 if summary.status == s else 0)
    values = {
        "last_run_exit_code": ("The last run's exit status", summary.exit_code),
        "last_run_start_timestamp_seconds": (
            "When the last run started (Unix time)",
            summary.started_at.timestamp(),
        ),
        "last_run_duration_seconds": ("How long the last run took", summary.wall_seconds),
        "accounts": ("Accounts of the last run", summary.accounts),
        "services": ("Container services stored by the last run", t.services),
        "deployments": ("Deployments stored by the last run", t.deployments),
        "containers": ("Containers stored by the last run", t.containers),
        "anomalies": ("Anomalies recorded by the last run", t.anomalies),
        "api_calls": ("HTTP requests of the last run, retries included", t.api_calls),
        "retries": ("Retried calls of the last run", t.retries),
        "throttled_answers": ("Throttled answers AWS gave the last run", t.throttled),
    }
    if t.lowest_rate is not None:
        values["lowest_rate_calls_per_second"] = (
            "The lowest call rate the last run's pacing came down to (throttling)",
            t.lowest_rate,
        )
    for name, (doc, value) in values.items():
        _gauge(reg, name, doc).labels(shard).set(value)
    targets = _gauge(reg, "targets", "Account × region targets of the last run", ["outcome"])
    targets.labels(shard, "ok").set(t.targets_ok)
    targets.labels(shard, "failed").set(t.targets_failed)
    failed = _gauge(
        reg,
        "failed_targets",
        "Failed targets of the last run by region and error code",
        ["region", "error_code"],
    )
    for (region, code), n in sorted(t.failed_by.items()):
        failed.labels(shard, region, code).set(n)
    return reg


def success_registry(shard: str, when: float) -> CollectorRegistry:
    reg = CollectorRegistry()
    g = Gauge(
        LAST_SUCCESS, "When a run last stored a snapshot (Unix time)", ["shard"], registry=reg
    )
    g.labels(shard).set(when)
    return reg


def previous_success(path: Path, shard: str) -> float | None:
    """The last success time this shard's textfile holds (None: no file, or no such sample;
    a file that does not parse counts as none)."""
    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("shard") == shard:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def textfile(summary: Any, shard: str, previous: float | None) -> bytes:
    """The textfile's content: the run's metrics and the last success time."""
    when = summary.finished_at.timestamp() if succeeded(summary) else previous
    text = generate_latest(run_registry(summary, shard))
    if when is not None:
        text += generate_latest(success_registry(shard, when))
    return text


def write_textfile(path: Path, summary: Any, shard: str) -> None:
    """Write the metrics to `path` atomically (a temporary file in the same folder, renamed
    over it: node_exporter never reads half a file), mode 0644 whatever the umask."""
    data = textfile(summary, shard, previous_success(path, shard))
    write_replacing(path, data, TEXTFILE_MODE)


def push(url: str, summary: Any, shard: str) -> None:
    """Replace this shard's group on the Pushgateway at `url`; on success also its group of
    the last success time (see the module docstring)."""
    push_to_gateway(
        url, JOB, run_registry(summary, shard), grouping_key={"shard": shard}, timeout=PUSH_TIMEOUT
    )
    if succeeded(summary):
        push_to_gateway(
            url,
            JOB,
            success_registry(shard, summary.finished_at.timestamp()),
            grouping_key={"shard": shard, "result": "success"},
            timeout=PUSH_TIMEOUT,
        )
