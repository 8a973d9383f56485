"""The peer: a Lightsail container-service inventory the way a user writes it today.

Plain boto3 (synchronous) in a `ThreadPoolExecutor(32)`, one task per account: assume the
account's role with STS, then for every region create a Lightsail client bound to those
credentials and that region and call `get_container_services()`. Standard retries. The
answers are flattened into plain Python lists of rows, turned into pyarrow Tables and stored
in DuckDB with `CREATE TABLE ... AS SELECT * FROM <arrow table>` at the end.

It is meant to be realistic and fair, not a straw man: one boto3 Session is reused (warmed in
the main thread so that concurrent client creation is safe), one STS client is shared by all
threads (clients are thread-safe), and the store is fed from Arrow, not row by row. Like most
hand-written scripts it keeps the whole fleet in memory until the end and does not close its
clients (they are garbage-collected).

    python -m benchmarks.peer_boto3 --config accounts.toml --db peer.duckdb

It prints one JSON object on stdout: api_calls, targets, rows per table, failures, timings.
Environment values are not stored: the peer keeps only the variable names.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pyarrow as pa
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def lightsail_regions(session: boto3.Session) -> list[str]:
    """Every region where Lightsail has an endpoint (the installed botocore's endpoint data)."""
    return list(session.get_available_regions("lightsail"))


class Counter:
    """Counts every HTTP request (retries included) through botocore's before-send event."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def __call__(self, **_: Any) -> None:
        with self._lock:
            self.n += 1


def _ts(v: Any) -> datetime | None:
    return v if isinstance(v, datetime) else None


class Rows:
    """The three inventory tables as lists of dicts (thread-safe appends)."""

    def __init__(self) -> None:
        self.services: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.containers: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.ok = 0
        self.lock = threading.Lock()

    def add(self, account_id: str, region: str, services: list[dict[str, Any]]) -> None:
        svc_rows, dep_rows, con_rows = [], [], []
        now = datetime.now().astimezone()
        for s in services:
            name = s.get("containerServiceName")
            svc_rows.append(
                {
                    "collected_at": now,
                    "account_id": account_id,
                    "region": region,
                    "service_name": name,
                    "arn": s.get("arn"),
                    "created_at": _ts(s.get("createdAt")),
                    "power": s.get("power"),
                    "state": s.get("state"),
                    "scale": s.get("scale"),
                    "is_disabled": s.get("isDisabled"),
                    "url": s.get("url"),
                    "tags": json.dumps(s.get("tags")),
                    "public_domain_names": json.dumps(s.get("publicDomainNames")),
                }
            )
            for slot, key in (("current", "currentDeployment"), ("next", "nextDeployment")):
                d = s.get(key)
                if not d:
                    continue
                dep_rows.append(
                    {
                        "account_id": account_id,
                        "region": region,
                        "service_name": name,
                        "slot": slot,
                        "version": d.get("version"),
                        "state": d.get("state"),
                        "created_at": _ts(d.get("createdAt")),
                        "health_check_path": (d.get("publicEndpoint") or {})
                        .get("healthCheck", {})
                        .get("path"),
                    }
                )
                for cname, c in (d.get("containers") or {}).items():
                    image = c.get("image") or ""
                    con_rows.append(
                        {
                            "account_id": account_id,
                            "region": region,
                            "service_name": name,
                            "slot": slot,
                            "deployment_version": d.get("version"),
                            "container_name": cname,
                            "image": image,
                            "image_source": "lightsail" if image.startswith(":") else "registry",
                            "command": c.get("command"),
                            "environment_names": sorted(c.get("environment") or {}),
                            "ports": json.dumps(c.get("ports")),
                        }
                    )
        with self.lock:
            self.ok += 1
            self.services.extend(svc_rows)
            self.deployments.extend(dep_rows)
            self.containers.extend(con_rows)

    def fail(self, account_id: str, region: str | None, op: str, exc: Exception) -> None:
        code = (
            exc.response.get("Error", {}).get("Code", "ClientError")
            if isinstance(exc, ClientError)
            else type(exc).__name__
        )
        with self.lock:
            self.failures.append(
                {"account_id": account_id, "region": region, "operation": op, "code": code}
            )


def collect_account(
    session: boto3.Session,
    sts: Any,
    config: Config,
    account: dict[str, str],
    regions: list[str],
    rows: Rows,
) -> None:
    account_id = account["id"]
    try:
        kwargs = {"RoleArn": account["role_arn"], "RoleSessionName": "inventory-peer"}
        if account.get("external_id"):
            kwargs["ExternalId"] = account["external_id"]
        creds = sts.assume_role(**kwargs)["Credentials"]
    except (ClientError, BotoCoreError) as exc:
        for region in regions:
            rows.fail(account_id, region, "AssumeRole", exc)
        return
    for region in regions:
        try:
            client = session.client(
                "lightsail",
                region_name=region,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                config=config,
            )
            answer = client.get_container_services()
        except (ClientError, BotoCoreError) as exc:
            rows.fail(account_id, region, "GetContainerServices", exc)
            continue
        rows.add(account_id, region, answer.get("containerServices", []))


def load_accounts(path: Path) -> tuple[list[dict[str, str]], list[str] | None]:
    doc = tomllib.loads(path.read_text())
    role_name = doc.get("role_name")
    out = []
    for a in doc.get("accounts", []):
        arn = a.get("role_arn") or f"arn:aws:iam::{a['id']}:role/{role_name}"
        ext = a.get("external_id") or doc.get("external_id")
        out.append({"id": a["id"], "role_arn": arn, **({"external_id": ext} if ext else {})})
    return out, doc.get("regions")


def store(db: Path, rows: Rows) -> dict[str, int]:
    con = duckdb.connect(str(db))
    counts = {}
    try:
        for name, data in (
            ("container_services", rows.services),
            ("deployments", rows.deployments),
            ("containers", rows.containers),
        ):
            if not data:
                counts[name] = 0
                continue
            table = pa.Table.from_pylist(data)
            con.register("batch", table)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM batch")
            con.unregister("batch")
            counts[name] = table.num_rows
    finally:
        con.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="accounts TOML (role_name, ids)")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--regions", default=None, help="comma-separated (default: every region)")
    p.add_argument("--max-attempts", type=int, default=3, help="botocore standard retries")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    accounts, file_regions = load_accounts(args.config)
    session = boto3.Session()
    counter = Counter()
    session.events.register("before-send", counter)
    config = Config(retries={"mode": "standard", "max_attempts": args.max_attempts})
    regions = (
        args.regions.split(",") if args.regions else file_regions or lightsail_regions(session)
    )
    # Warm the session in this thread (loaders, endpoint data, credential chain), so that the
    # worker threads' concurrent client creation does not race on its lazy initialisation.
    sts = session.client("sts", config=config)
    session.client("lightsail", region_name=regions[0], config=config)
    rows = Rows()
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        futures = [
            pool.submit(collect_account, session, sts, config, a, regions, rows) for a in accounts
        ]
        for f in futures:
            f.result()
    t2 = time.perf_counter()
    counts = store(args.db, rows)
    t3 = time.perf_counter()
    report = {
        "api_calls": counter.n,
        "accounts": len(accounts),
        "targets": len(accounts) * len(regions),
        "targets_ok": rows.ok,
        "targets_failed": len(accounts) * len(regions) - rows.ok,
        "failures_by_code": _by_code(rows.failures),
        "services": counts["container_services"],
        "deployments": counts["deployments"],
        "containers": counts["containers"],
        "setup_s": round(t1 - t0, 3),
        "collect_s": round(t2 - t1, 3),
        "store_s": round(t3 - t2, 3),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    if rows.ok == 0:
        return 1
    return 3 if rows.failures else 0


def _by_code(failures: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in failures:
        out[f["code"]] = out.get(f["code"], 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
