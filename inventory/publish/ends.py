"""`publish`: everything a run publishes once `run_collect` has returned, in order: the
summary file, the metrics (textfile, Pushgateway), then the notifications. Each is on its
own: one that fails is logged and the others still go; none changes the exit status.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inventory import logs
from inventory.plan.runid import Shard
from inventory.publish import changes, metrics, send
from inventory.publish import message as message_mod
from inventory.publish.targets import Publishing, shown_url
from inventory.storage.files import write_replacing

log = logging.getLogger("inventory.publish")


def shard_label(shard: Shard | None) -> str:
    """The `shard` label and field: "K/N", or "all" for an unsharded run."""
    return "all" if shard is None else str(shard)


def write_summary(path: Path, summary: Any) -> None:
    """The run_end event's object (logs.summary_json) as the file's one line, written
    atomically; a new file is private like every file the tool makes (files.py)."""
    write_replacing(path, (logs.summary_json(summary) + "\n").encode("utf-8"))


def _local(kind: str, path: Path, write: Any, run_id: str) -> None:
    """A local file write: no retry (a full disk stays full), one warning when it fails."""
    try:
        write()
    except Exception as exc:
        logs.event(
            log,
            logging.WARNING,
            f"{kind}_failed",
            f"{kind} {path} could not be written ({send.reason(exc)}): the run is stored as it was",
            run_id=run_id,
            target=str(path),
            reason=send.reason(exc),
        )


def publish(summary: Any, shard: Shard | None, where: Publishing) -> None:
    """Publish run `summary` (a pipeline.RunSummary) wherever `where` says."""
    label = shard_label(shard)
    run_id = summary.run_id
    if where.summary_json is not None:
        path = where.summary_json
        _local("summary", path, lambda: write_summary(path, summary), run_id)
    if where.metrics_file is not None:
        mfile = where.metrics_file
        _local("metrics", mfile, lambda: metrics.write_textfile(mfile, summary, label), run_id)
    if where.pushgateway is not None:
        url = where.pushgateway
        send.deliver("metrics", shown_url(url), lambda: metrics.push(url, summary, label), run_id)
    if where.notify:
        message = message_mod.build(summary, label, changes.since_previous(summary))
        for target in where.notify:
            send.notify(target, message)
