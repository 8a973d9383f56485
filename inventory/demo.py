"""`inventory demo`: start the bundled simulator in-process, collect from it, show the result.

Everything is real but AWS: HTTP on 127.0.0.1, aiobotocore clients, STS AssumeRole per
account, the DuckDB file and the Parquet lake. The simulated base credentials are set in
this process only, so a real AWS profile is never touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from inventory import render
from inventory.model import Account, Options, Plan
from inventory.plan.regions import all_regions
from inventory.run.pipeline import run_collect
from inventory.simulator import UNSET_ENV, Faults, Fleet, Simulator
from inventory.storage.store import Store

DEMO_QUERY = """
select region, state, count(*) as services, sum(scale) as nodes
from latest_container_services
group by all
order by services desc, region, state
limit 12
"""


def run(*, accounts: int, db: Path, parquet_dir: str, latency_ms: float, seed: int = 7) -> int:
    fleet = Fleet(accounts=accounts, seed=seed)
    faults = Faults(latency_ms=latency_ms, throttle_rate=0.02, seed=seed)
    out = render.console()
    with Simulator(fleet, faults) as sim:
        # this process only: the simulator's endpoints and fake keys; a real session token,
        # profile or endpoint in the environment must never reach it (or AWS)
        saved = {k: os.environ.get(k) for k in (*sim.env(), *UNSET_ENV)}
        for k in UNSET_ENV:
            os.environ.pop(k, None)
        os.environ.update(sim.env())
        try:
            plan = Plan(
                accounts=tuple(
                    Account(
                        id=a,
                        name=f"demo-{i:02d}",
                        role_arn=f"arn:aws:iam::{a}:role/LightsailInventoryReader",
                    )
                    for i, a in enumerate(fleet.account_ids)
                ),
                regions=all_regions(),
                options=Options(concurrency=64, rate=500.0, timeout=5.0),
                source="demo",
            )
            out.print(
                f"simulator at {sim.url}: {accounts} accounts × {len(plan.regions)} regions "
                f"({latency_ms:g} ms latency, 2% throttling)",
                soft_wrap=True,
            )
            with render.ProgressView() as progress:
                summary = asyncio.run(
                    run_collect(
                        plan, db, parquet_dir, on_start=progress.start, on_result=progress.advance
                    )
                )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    out.print(render.summary_table(summary))
    render.print_failures(out, summary)
    store = Store.open(db, read_only=True)
    try:
        columns, rows = store.query_rows(DEMO_QUERY)
    finally:
        store.close()
    out.print(render.rows_table(columns, rows, "services by region and state (latest run)"))
    out.print(
        f"\nAsk it more: {command_name()} query --db {db} "
        '"select * from latest_containers limit 5"',
        soft_wrap=True,
    )
    return summary.exit_code


def command_name(argv0: str | None = None) -> str:
    """How to run `inventory` again from here: `inventory` when that is the one on PATH,
    else the path this one was started by (`.venv/bin/inventory` after `make demo`)."""
    started = argv0 if argv0 is not None else sys.argv[0]
    if Path(started).name != "inventory":  # python -m inventory, or embedded
        return "inventory"
    on_path = shutil.which("inventory")
    if on_path is not None and Path(on_path).resolve() == Path(started).resolve():
        return "inventory"
    return started
