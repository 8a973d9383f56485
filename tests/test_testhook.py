"""The test hook (inventory/testhook.py) that the crash, locking and store tests stop
processes with: every point the code names is documented, each is reached from one place,
and without INVENTORY_TEST_PAUSE_AT (or with another point) nothing stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from helpers import stopped_at

from inventory import testhook

PACKAGE = Path(testhook.__file__).resolve().parent


def test_every_point_is_documented_and_reached_from_one_place() -> None:
    named: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        named += re.findall(r'testhook\.pause_at\("([^"]+)"\)', path.read_text())
    assert sorted(named) == sorted(testhook.POINTS)
    doc = testhook.__doc__ or ""
    assert all(f"`{point}`" in doc for point in testhook.POINTS)


def run(env: dict[str, str]) -> subprocess.Popen[str]:
    code = "from inventory import testhook; testhook.pause_at('run-begun'); print('went on')"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != testhook.ENV} | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_unset_or_another_point_stops_nothing() -> None:
    for env in ({}, {testhook.ENV: ""}, {testhook.ENV: "run-finished"}):
        out, err = run(env).communicate(timeout=60)
        assert (out, err) == ("went on\n", ""), env


def test_the_named_point_stops_the_process_until_continued() -> None:
    proc = run({testhook.ENV: "run-begun"})
    try:
        stopped_at(proc.pid, proc.poll)
        assert proc.poll() is None
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out == "went on\n"
    assert err == f"inventory: test hook {testhook.ENV}=run-begun: stopping (SIGSTOP)\n"
