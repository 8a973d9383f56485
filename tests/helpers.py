"""Small helpers shared by the test modules (import them: `from helpers import rows`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inventory import testhook
from inventory.storage.store import Store


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    """The rows of `sql` on the store at `db`, as dicts, read through a read-only Store."""
    store = Store.open(db, read_only=True)
    try:
        cols, data = store.query_rows(sql)
    finally:
        store.close()
    return [dict(zip(cols, r, strict=True)) for r in data]


def stopped_at(pid: int, poll: Callable[[], int | None], timeout: float = 60) -> None:
    """Until process `pid` has stopped itself at its INVENTORY_TEST_PAUSE_AT point (state
    'T': inventory/testhook.py). Fails when it ended first (`poll`: its Popen.poll) or never
    got there: the event, not a guessed moment, decides when the test goes on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # "pid (comm) S ...": the state follows the last ')'
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("T", "t"):
            return
        if state in ("Z", "X", "gone") or poll() is not None:
            raise AssertionError(f"process {pid} ended ({state}) before its test-hook point")
        if time.monotonic() >= deadline:
            raise AssertionError(f"process {pid} never reached its test-hook point")
        time.sleep(0.01)


def pause_env(env: dict[str, str], point: str) -> dict[str, str]:
    """`env` with INVENTORY_TEST_PAUSE_AT=`point` (one of testhook.POINTS)."""
    assert point in testhook.POINTS, point
    return {**env, testhook.ENV: point}


def policies(text: str) -> list[dict[str, Any]]:
    """The JSON policy documents printed in the output (indented blocks from '{' to '}')."""
    found: list[dict[str, Any]] = []
    block: list[str] | None = None
    indent = 0
    for line in text.splitlines():
        if line.strip() == "{" and block is None:
            block, indent = [], line.index("{")
        if block is not None:
            block.append(line)
            if line.strip() == "}" and line.index("}") == indent:
                found.append(json.loads("\n".join(block)))
                block = None
    return found


def install_wheel(script: Path, dest: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`scripts/install-wheel.sh DEST` run from `cwd` (the checkout's script, or a Docker
    build stage's copy of it), outside any activated virtual environment."""
    return subprocess.run(
        [str(script), str(dest)],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        capture_output=True,
        text=True,
        timeout=900,
    )


def inventory(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`inventory ARGS` as a user (or a pod) runs it: a process of its own, in `cwd`, with
    `env` over this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "inventory", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def s3_keys(s3: Any, prefix: str = "") -> list[str]:
    """Every key in the `s3` fixture's bucket under `prefix`, sorted."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


class _Sent(Exception):
    def __init__(self, request: Any):
        self.request = request


def botocore_request(
    service: str,
    call: Callable[[Any], Any],
    creds: Any,
    region: str,
    endpoint: str | None = None,
) -> tuple[Any, Any]:
    """(the request, the client): what botocore's own `service` client signs and would send
    for `call(client)` with `creds` (a ReadOnlyCredentials), caught before it leaves, to
    compare the lean clients' requests with."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        service,
        region_name=region,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.token,
        **({"endpoint_url": endpoint} if endpoint else {}),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Sent(request)

    client.meta.events.register(f"before-send.{service}", capture)
    try:
        call(client)
    except _Sent as sent:
        return sent.request, client
    raise AssertionError(f"botocore's {service} client sent nothing")
