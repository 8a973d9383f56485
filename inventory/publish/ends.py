"""`publish`: everything a run publishes once it has ended (`run_collect` returned, or
raised after recording the run as failed: pipeline.summary_of), in order: the summary
file, the metrics (textfile, Pushgateway), then the notifications. Each is on its own: one
that fails (or raises, whatever the reason) is logged and the others still go; none
changes the exit status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from inventory import logs
from inventory.plan.runid import Shard
from inventory.publish import changes, metrics, send
from inventory.publish import message as message_mod
from inventory.publish.targets import Publishing, Target, shown_url
from inventory.storage.files import write_replacing

log = logging.getLogger("inventory.publish")


def shard_label(shard: Shard | None) -> str:
    """The `shard` label and field: "K/N", or "all" for an unsharded run."""
    return "all" if shard is None else str(shard)


def write_summary(path: Path, summary: Any) -> None:
    """The run_end event's object (logs.summary_json) as the file's one line, written
    atomically; a new file is private like every file the tool makes (files.py)."""
    write_replacing(path, (logs.summary_json(summary) + "\n").encode("utf-8"))


def _step(kind: str, target: str, action: Callable[[], Any], run_id: str, what: str) -> None:
    """One publishing step, run once: whatever it raises (a full disk, a bug) is one warning
    `<kind>_failed`, never an exception, so no step changes the exit status or stops the
    next one. `what`: what failed, for the message ("could not be written")."""
    try:
        action()
    except Exception as exc:
        logs.event(
            log,
            logging.WARNING,
            f"{kind}_failed",
            f"{kind} {target} {what} ({send.reason(exc)}): the run is stored as it was",
            run_id=run_id,
            target=target,
            reason=send.reason(exc),
        )


def _notify(summary: Any, label: str, targets: tuple[Target, ...]) -> None:
    """Build the message once and send it to each target (send.notify retries and logs)."""
    message = message_mod.build(summary, label, changes.since_previous(summary))
    for target in targets:
        send.notify(target, message)


def publish(summary: Any, shard: Shard | None, where: Publishing) -> None:
    """Publish run `summary` (a pipeline.RunSummary) wherever `where` says."""
    label = shard_label(shard)
    run_id = summary.run_id
    written = "could not be written"
    if where.summary_json is not None:
        path = where.summary_json
        _step("summary", str(path), partial(write_summary, path, summary), run_id, written)
    if where.metrics_file is not None:
        mfile = where.metrics_file
        write = partial(metrics.write_textfile, mfile, summary, label)
        _step("metrics", str(mfile), write, run_id, written)
    if where.pushgateway is not None:
        shown = shown_url(where.pushgateway)
        push = partial(metrics.push, where.pushgateway, summary, label)
        _step(
            "metrics",
            shown,
            partial(send.deliver, "metrics", shown, push, run_id),
            run_id,
            "could not be pushed",
        )
    if where.notify:
        shown = ", ".join(t.shown for t in where.notify)
        notify = partial(_notify, summary, label, where.notify)
        _step("notify", shown, notify, run_id, "could not be sent")
