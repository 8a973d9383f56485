"""Shared fixtures. Each section belongs to the module it serves; append yours below."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from inventory.simulator import UNSET_ENV, Faults, Fleet, Simulator


# --------------------------------------------------------------------------- system binaries
def require_binary(name: str, package: str | None = None) -> str:
    """The path of a system program a test needs (Debian's prometheus-pushgateway, chromium,
    promtool from the package `prometheus`). Under CI (.ci/run installs them) a missing one
    fails the test; elsewhere it skips, saying how to install it."""
    path = shutil.which(name)
    if path is None:
        install = f"apt-get install {package or name}"
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs it ({install})")
        pytest.skip(f"{name} is not installed ({install})")
    return path


# --------------------------------------------------------------------------- simulator
# `fleet`: 6 member accounts + the hub, seed 1 (member 0 is the showcase account).
# `simulator`: that fleet served without faults; the AWS env vars point at it.
# `make_simulator(accounts=6, seed=1, faults=..., fleet=..., ...)`: start more, configured
# (`verify_signatures=False`: accept any signature, as the benchmark's unsigned floor).


def use_simulator_env(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    """Point the standard AWS variables of this test at `sim` (undone after the test)."""
    for name in UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in sim.env().items():
        monkeypatch.setenv(name, value)


MakeSimulator = Callable[..., Simulator]


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(6, seed=1)


@pytest.fixture
def make_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeSimulator]:
    started: list[Simulator] = []

    def make(
        accounts: int = 6,
        *,
        seed: int = 1,
        faults: Faults | None = None,
        fleet: Fleet | None = None,
        regions: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
        set_env: bool = True,
        verify_signatures: bool = True,
    ) -> Simulator:
        if fleet is None:
            fleet = Fleet(accounts, seed=seed, regions=regions)
        sim = Simulator(
            fleet,
            faults if faults is not None else Faults(),
            clock=clock,
            verify_signatures=verify_signatures,
        ).start()
        started.append(sim)
        if set_env:
            use_simulator_env(monkeypatch, sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def simulator(fleet: Fleet, make_simulator: MakeSimulator) -> Simulator:
    return make_simulator(fleet=fleet)


@pytest.fixture
def sim_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Simulator], Simulator]]:
    """`sim_env(SomeSimulator(...))`: start a simulator, any subclass (one that misbehaves
    on purpose), and point this test's AWS variables at it; stopped after the test."""
    started: list[Simulator] = []

    def use(sim: Simulator) -> Simulator:
        sim.start()
        started.append(sim)
        use_simulator_env(monkeypatch, sim)
        return sim

    yield use
    for sim in started:
        sim.stop()


# --------------------------------------------------------------------------- end to end
# `write_accounts(path, ids, names=..., regions=..., ...)`: writes an accounts file (TOML).

WriteAccounts = Callable[..., Path]


def _write_accounts(
    path: Path,
    account_ids: Sequence[str],
    *,
    names: dict[str, str] | None = None,
    regions: Sequence[str] | None = None,
    role_name: str = "LightsailInventoryReader",
    external_id: str | None = None,
    role_arns: dict[str, str] | None = None,
) -> Path:
    lines = [f'role_name = "{role_name}"']
    if external_id is not None:
        lines.append(f'external_id = "{external_id}"')
    if regions is not None:
        lines.append("regions = [" + ", ".join(f'"{r}"' for r in regions) + "]")
    for acct in account_ids:
        lines += ["", "[[accounts]]", f'id = "{acct}"']
        if names and acct in names:
            lines.append(f'name = "{names[acct]}"')
        if role_arns and acct in role_arns:
            lines.append(f'role_arn = "{role_arns[acct]}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def write_accounts() -> WriteAccounts:
    return _write_accounts


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server (the S3 stand-in) on 127.0.0.1, a free port, for the module's tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --------------------------------------------------------------------------- S3 (moto)
# `s3`: a fresh bucket on moto's server (named after the test) and a boto3 client for it
# (`s3.bucket`), with AWS_ENDPOINT_URL_S3 and test credentials set for the code under test.


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    import boto3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = request.node.name.replace("_", "-")[:60].strip("-")
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client
