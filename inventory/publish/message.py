"""The notification of a run's end: one JSON object with a `text` that a Slack incoming
webhook shows as it is, and structured fields for programs (docs/alerts.md).

What goes in is chosen field by field: the run's id, status and counters, failed targets
by region and error code (exact counts) with the first stored message of each (the errors
table's text: AWS's message or ours, never a credential), and the change counts since the
previous run. Never an environment value, an ExternalId, a credential or a webhook URL.
"""

from __future__ import annotations

import json
from typing import Any

from inventory import __version__
from inventory.model import ErrorRecord
from inventory.terminal import plural, visible

MAX_GROUPS = 50  # failure groups in a message (SNS takes 256 KB; the errors table has all)
SHOWN_GROUPS = 5  # of them in `text`
MAX_SUBJECT = 99  # SNS: "less than 100 characters", no line breaks


def _examples(failures: list[ErrorRecord]) -> dict[tuple[str | None, str], str]:
    """The first stored message of each (region, error code); (None, code) for a failure
    of every region of an account (AssumeRole)."""
    out: dict[tuple[str | None, str], str] = {}
    for f in failures:
        out.setdefault((f.region, f.error_code), f.message)
    return out


def failure_groups(tally: Any) -> list[dict[str, Any]]:
    """Failed targets by (region, error code), the biggest first: exact counts."""
    examples = _examples(tally.failures)
    groups = sorted(tally.failed_by.items(), key=lambda kv: (-kv[1], kv[0]))
    return [
        {
            "region": region,
            "error_code": code,
            "targets": n,
            "message": examples.get((region, code), examples.get((None, code))),
        }
        for (region, code), n in groups
    ]


def run_failure(summary: Any) -> list[dict[str, Any]]:
    """The failure that ended the run (an exception: Organizations or GetRegions refused,
    say) as a group of its own, with its operation; no target failed of it (targets 0)."""
    e = getattr(summary, "stopped_by", None)
    if e is None:
        return []
    return [
        {
            "region": e.region,
            "operation": e.operation,
            "error_code": e.error_code,
            "targets": 0,
            "message": e.message,
        }
    ]


def _slack(text: str) -> str:
    """Slack's mrkdwn escapes (&, <, >), control characters made visible."""
    return visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(fields: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    """The `text`: what a person reads in Slack or a mail (every failure group counted)."""
    c = fields["counts"]
    shard = "" if fields["shard"] == "all" else f" (shard {fields['shard']})"
    lines = [
        f"lightsail-inventory run {fields['run_id']}{shard}: {fields['status']} "
        f"(exit {fields['exit_code']})",
        f"{c['targets_ok']}/{c['targets']} targets ok, {c['targets_failed']} failed; "
        f"{plural(c['services'], 'service')}, {plural(c['deployments'], 'deployment')}, "
        f"{plural(c['containers'], 'container')}; {plural(c['api_calls'], 'API call')}, "
        f"{plural(c['retries'], 'retry', 'retries')}, {c['throttled']} throttled",
    ]
    for g in groups[:SHOWN_GROUPS]:
        if "operation" in g:
            lines.append(f"stopped by: {g['operation']} {g['error_code']}")
            continue
        lines.append(f"failed: {g['region']} {g['error_code']}: {plural(g['targets'], 'target')}")
    if len(groups) > SHOWN_GROUPS:
        lines.append(f"… and {len(groups) - SHOWN_GROUPS} more groups of failures")
    lines.append(_changes_line(fields["changes"]))
    return "\n".join(_slack(line) for line in lines)


def _changes_line(changes: dict[str, Any] | None) -> str:
    if changes is None:
        return "changes since the previous run: not compared"
    fresh = changes["not_compared"]
    if not changes["compared"]:  # the first night (or only new pairs): nothing to compare
        return (
            "changes since the previous run: nothing to compare with (no earlier good scan "
            f"of {plural(fresh, 'account × region pair')})"
        )
    counts = ", ".join(f"{n} {kind}" for kind, n in changes["counts"].items())
    return (
        f"changes since the previous run: {plural(changes['changes'], 'change')}"
        + (f" ({counts})" if counts else "")
        + f" across the {plural(changes['compared'], 'account × region pair')} compared"
        + (f"; {fresh} without an earlier good scan" if fresh else "")
    )


def build(summary: Any, shard: str, changes: dict[str, Any] | None) -> dict[str, Any]:
    """The message (a JSON object) of run `summary` (a pipeline.RunSummary)."""
    t = summary.tally
    groups = run_failure(summary) + failure_groups(t)
    fields: dict[str, Any] = {
        "tool": "lightsail-inventory",
        "version": __version__,
        "run_id": summary.run_id,
        "shard": shard,
        "status": summary.status,
        "exit_code": summary.exit_code,
        "started_at": summary.started_at.isoformat(),
        "finished_at": summary.finished_at.isoformat(),
        "wall_seconds": round(summary.wall_seconds, 3),
        "counts": {
            "accounts": summary.accounts,
            "targets": summary.targets,
            "targets_ok": t.targets_ok,
            "targets_failed": t.targets_failed,
            "services": t.services,
            "deployments": t.deployments,
            "containers": t.containers,
            "anomalies": t.anomalies,
            "api_calls": t.api_calls,
            "retries": t.retries,
            "throttled": t.throttled,
            "lowest_rate": t.lowest_rate,
        },
        "failures": groups[:MAX_GROUPS],
        "failure_groups_left_out": max(0, len(groups) - MAX_GROUPS),
        "changes": changes,
    }
    return {"text": _text(fields, groups), **fields}


def subject(message: dict[str, Any]) -> str:
    """SNS's Subject: one short line."""
    line = f"lightsail-inventory {message['status']}: run {message['run_id']}"
    if message["shard"] != "all":
        line += f" shard {message['shard']}"
    return line[:MAX_SUBJECT]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
