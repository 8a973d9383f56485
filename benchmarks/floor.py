"""The floor: the least work that fetches the same answers, for `make bench` to measure against.

One aiohttp session, the same HTTP requests the collector makes (one AssumeRole per account,
one GetContainerServices per account × region, at the same concurrency), but unsigned (the
simulator runs with its signature check off, so the `Authorization` header only carries the
credential scope it tells accounts and regions apart by), answers read with `json.loads`
(AssumeRole's XML by two regular expressions), and nothing flattened or stored. What the
collector costs above this is its own: signing, retries, pacing, flattening, the store.

    python -m benchmarks.floor --config accounts.toml --regions us-east-1,... --concurrency 256

It prints one JSON object on stdout, with the same keys the peer prints.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

_AKID = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_TOKEN = re.compile(rb"<SessionToken>([^<]+)</SessionToken>")
TARGET = "Lightsail_20161128.GetContainerServices"


def _auth(key: str, region: str, service: str) -> str:
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/{day}/{region}/{service}/aws4_request, "
        "SignedHeaders=host, Signature=0"
    )


async def sweep(
    accounts: list[dict[str, Any]], regions: list[str], concurrency: int, external_id: str | None
) -> dict[str, Any]:
    sts_url = os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ["AWS_ENDPOINT_URL"]
    ls_url = os.environ.get("AWS_ENDPOINT_URL_LIGHTSAIL") or os.environ["AWS_ENDPOINT_URL"]
    base_key = os.environ["AWS_ACCESS_KEY_ID"]
    calls = ok = failed = services = 0
    roles: dict[str, asyncio.Task[tuple[str, str] | None]] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:

        async def assume(account: dict[str, Any]) -> tuple[str, str] | None:
            nonlocal calls
            form = {
                "Action": "AssumeRole",
                "Version": "2011-06-15",
                "RoleArn": account.get("role_arn")
                or f"arn:aws:iam::{account['id']}:role/{account['role_name']}",
                "RoleSessionName": "floor",
            }
            if external_id:
                form["ExternalId"] = external_id
            calls += 1
            async with http.post(
                sts_url,
                data=urlencode(form),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": _auth(base_key, "us-east-1", "sts"),
                },
            ) as resp:
                body = await resp.read()
            key, token = _AKID.search(body), _TOKEN.search(body)
            return (key.group(1).decode(), token.group(1).decode()) if key and token else None

        async def one(account: dict[str, Any], region: str) -> None:
            nonlocal calls, ok, failed, services
            task = roles.get(account["id"])
            if task is None:
                task = roles[account["id"]] = asyncio.ensure_future(assume(account))
            creds = await task
            if creds is None:
                failed += 1
                return
            calls += 1
            async with http.post(
                ls_url,
                data=b"{}",
                headers={
                    "Content-Type": "application/x-amz-json-1.1",
                    "X-Amz-Target": TARGET,
                    "X-Amz-Security-Token": creds[1],
                    "Authorization": _auth(creds[0], region, "lightsail"),
                },
            ) as resp:
                body = await resp.read()
                status = resp.status
            if status == 200:
                ok += 1
                services += len(json.loads(body).get("containerServices") or ())
            else:
                failed += 1

        queue = iter([(a, r) for a in accounts for r in regions])

        async def worker() -> None:
            for account, region in queue:
                await one(account, region)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "api_calls": calls,
        "targets": len(accounts) * len(regions),
        "targets_ok": ok,
        "targets_failed": failed,
        "services": services,
        "deployments": 0,
        "containers": 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--regions", required=True)
    p.add_argument("--concurrency", type=int, default=256)
    args = p.parse_args(argv)
    cfg = tomllib.loads(args.config.read_text())
    accounts = [
        {"role_name": cfg.get("role_name", "LightsailInventoryReader"), **a}
        for a in cfg["accounts"]
    ]
    t0 = time.perf_counter()
    report = asyncio.run(
        sweep(accounts, args.regions.split(","), args.concurrency, cfg.get("external_id"))
    )
    report["wall_s"] = time.perf_counter() - t0
    print(json.dumps(report))
    return 0 if report["targets_failed"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
