"""Run the simulator as its own process.

    python -m inventory.simulator --port 0 --accounts 1000 --seed 1 --latency-ms 50

Prints one line, `listening on http://127.0.0.1:PORT`, then serves until SIGTERM / SIGINT.
`--print-accounts` prints an accounts file (TOML) for the fleet that the same `--accounts`
and `--seed` serve, and exits: `inventory collect --config` reads it as it is.
`--throttle-operation OP=RATE` and `--deny-operation OP` (repeatable) throttle or refuse one
Lightsail operation (e.g. the `collect --usage` calls). Pair options (`--hang-region`,
`--deny-region`, `--unenabled-region`, `--malformed`, `--huge-answer`, `--unknown-members`,
`--bad-leaves`, `--no-services-member`, `--services-not-list`) take `REGION` (every account) or `ACCOUNT:REGION`, and may be repeated.
Every request's SigV4 signature is verified (the base identity's keys are the ones
`--print-env` exports); `--no-verify-signatures` accepts any.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from inventory.simulator.faults import Faults, Pair
from inventory.simulator.fleet import HUB_ACCOUNT_ID, Fleet
from inventory.simulator.server import Simulator


def _pair(value: str) -> Pair:
    account, sep, region = value.rpartition(":")
    return (account if sep else "*", region)


def _operation_rate(value: str) -> tuple[str, float]:
    op, sep, rate = value.partition("=")
    try:
        got = float(rate)
    except ValueError:
        got = -1.0
    if not (sep and op and 0.0 <= got <= 1.0):
        raise argparse.ArgumentTypeError(f"{value!r}: expected OPERATION=RATE, RATE from 0 to 1")
    return op, got


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inventory.simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions", default=None, help="comma-separated; default every region")
    p.add_argument("--services-per-account", type=float, default=1.5)
    p.add_argument(
        "--generation",
        type=int,
        default=0,
        help="serve the fleet after N evolve() steps (known changes: try `inventory diff`)",
    )
    p.add_argument("--hub-account", default=HUB_ACCOUNT_ID)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--throttle-rate", type=float, default=0.0)
    p.add_argument(
        "--throttle-operation",
        action="append",
        default=[],
        type=_operation_rate,
        metavar="OP=RATE",
        help="throttle this Lightsail operation's calls at RATE too "
        "(e.g. GetContainerServiceMetricData=0.2)",
    )
    p.add_argument(
        "--deny-operation", action="append", default=[], metavar="OP", help="AccessDenied"
    )
    p.add_argument("--error-rate", type=float, default=0.0, help="5xx answers")
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--deny-account", action="append", default=[], metavar="ID")
    p.add_argument("--deny-region", action="append", default=[], type=_pair)
    p.add_argument("--unenabled-region", action="append", default=[], type=_pair)
    p.add_argument("--hang-region", action="append", default=[], type=_pair)
    p.add_argument("--malformed", action="append", default=[], type=_pair)
    p.add_argument(
        "--huge-answer",
        action="append",
        default=[],
        type=_pair,
        help="GetContainerServices answers of --huge-bytes there",
    )
    p.add_argument("--huge-bytes", type=int, default=50 * 1024 * 1024)
    for flag in (
        "--unknown-members",
        "--bad-leaves",
        "--no-services-member",
        "--services-not-list",
    ):
        p.add_argument(flag, action="append", default=[], type=_pair)
    p.add_argument(
        "--unreachable-region",
        action="append",
        default=[],
        metavar="REGION",
        help="close every Lightsail connection for REGION unanswered (may be repeated)",
    )
    p.add_argument("--credential-ttl", type=float, default=3600.0, metavar="SECONDS")
    p.add_argument("--external-id", default=None)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument(
        "--no-verify-signatures",
        dest="verify_signatures",
        action="store_false",
        help="accept any signature (a benchmark's floor); any key without a session token "
        "is then the base identity",
    )
    p.add_argument("--print-env", action="store_true", help="also print export lines")
    p.add_argument(
        "--print-accounts",
        action="store_true",
        help="print an accounts file (TOML) for this fleet and exit; the same --accounts, "
        "--seed and --external-id serve it",
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Simulator:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()] if args.regions else None
    fleet = Fleet(
        args.accounts,
        seed=args.seed,
        regions=regions,
        services_per_account=args.services_per_account,
        hub_account_id=args.hub_account,
    )
    for _ in range(args.generation):
        fleet = fleet.evolve()
    faults = Faults(
        latency_ms=args.latency_ms,
        throttle_rate=args.throttle_rate,
        operation_throttle=dict(args.throttle_operation),
        denied_operations=set(args.deny_operation),
        error_5xx_rate=args.error_rate,
        drop_rate=args.drop_rate,
        denied_accounts=set(args.deny_account),
        denied_regions=set(args.deny_region),
        unenabled_regions=set(args.unenabled_region),
        hang_regions=set(args.hang_region),
        malformed=set(args.malformed),
        huge_answers=set(args.huge_answer),
        huge_bytes=args.huge_bytes,
        unknown_members=set(args.unknown_members),
        bad_leaves=set(args.bad_leaves),
        no_services_member=set(args.no_services_member),
        services_not_list=set(args.services_not_list),
        unreachable_regions=set(args.unreachable_region),
        credential_ttl_s=args.credential_ttl,
        external_id=args.external_id,
        seed=args.fault_seed,
    )
    return Simulator(
        fleet, faults, host=args.host, port=args.port, verify_signatures=args.verify_signatures
    )


async def serve(sim: Simulator, print_env: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"listening on {sim.url}", flush=True)
        if print_env:
            for k, v in sim.env().items():
                print(f"export {k}={v}", flush=True)
        await stop.wait()


def accounts_toml(fleet: Fleet, external_id: str | None = None) -> str:
    """An accounts file for `fleet`: the role every simulated account has, one
    [[accounts]] entry per member account (named team-00, team-01, ...)."""
    lines = [
        "# the bundled simulator's accounts: python -m inventory.simulator --print-accounts",
        'role_name = "LightsailInventoryReader"',
    ]
    if external_id:
        lines.append(f'external_id = "{external_id}"')
    for i, account_id in enumerate(fleet.account_ids):
        lines += ["", "[[accounts]]", f'id = "{account_id}"', f'name = "team-{i:02d}"']
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_accounts:
        sim = build(args)
        sys.stdout.write(accounts_toml(sim.fleet, args.external_id))
        return 0
    asyncio.run(serve(build(args), args.print_env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
