"""A test hook, for tests only: stop the process at a named point, so that a test can kill
or signal it exactly there instead of guessing the moment with sleeps.

`INVENTORY_TEST_PAUSE_AT=<point>`, read once when this module is imported, makes
`pause_at(<point>)` write one line to stderr and stop the process with SIGSTOP (as Ctrl-Z
would); the test sees it stopped (state 'T' in /proc/<pid>/stat), then kills it, or signals
it and sends SIGCONT to let it go on from that point. Unset (always, outside the tests),
`pause_at` is one comparison with None and returns. An unknown point name stops nothing.

The points (`append-uncommitted` and `batch-appended` are reached at each batch written,
`lock-wait` at each look at a held lock, `worker-start` once in each worker, the others
once a run):
  - `store-opened`: the collect holds the writer lock and the store is open, nothing begun;
  - `run-begun`: `begin_run` committed the run's row ('running'), no target written yet;
  - `append-uncommitted`: inside `Store.append`, its rows inserted but not committed;
  - `batch-appended`: the pipeline wrote a batch of results (committed), the run not finished;
  - `run-finished`: `finish_run` committed the run's status, before the Parquet export;
  - `lock-wait`: `collect --wait` found the writer lock held and is about to wait for it;
  - `worker-start`: a `--workers` process started, before it installs its signal handlers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "INVENTORY_TEST_PAUSE_AT"
POINTS = frozenset(
    {
        "store-opened",
        "run-begun",
        "append-uncommitted",
        "batch-appended",
        "run-finished",
        "lock-wait",
        "worker-start",
    }
)

PAUSE_AT: str | None = os.environ.get(ENV) or None


def pause_at(point: str) -> None:
    """Stop this process here when INVENTORY_TEST_PAUSE_AT names `point` (a test hook)."""
    if PAUSE_AT is None or point != PAUSE_AT:
        return
    sys.stderr.write(f"inventory: test hook {ENV}={point}: stopping (SIGSTOP)\n")
    sys.stderr.flush()
    # To this thread: it stops before its next instruction (sent to the process, another
    # thread could take the stop while this one runs on, e.g. into a COMMIT).
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
