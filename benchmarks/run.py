"""`make bench`: our collector against the simulator, and the boto3 peer in the same run.

For each fleet size it starts the simulator in its own process (free port, `--latency-ms`),
writes an accounts file for the fleet's member accounts, then runs, each as its own measured
subprocess and one after the other against the same simulator:

- our collector (`python -m inventory collect ... --no-parquet`), once per *variant*, and
- the peer (`benchmarks/peer_boto3.py`: boto3 in a ThreadPoolExecutor(32), the way users
  write it today), for fleets up to `--peer-max-accounts`.

Per run it reports wall seconds, the ideal network bound (calls × latency / concurrency),
CPU seconds (the child's own user+sys from `wait4`, cross-checked against the
RUSAGE_CHILDREN delta), CPU ms per API call (calls from the run's `runs.api_calls` row; the
peer counts its own), a steady-state figure with the interpreter's start-up CPU taken out,
calls/s, peak RSS (the child's ru_maxrss, and the summed RSS of its process tree sampled
from /proc), rows/s into the store, the simulator's CPU meanwhile, and the ratios against the
peer and against the first variant. The JSON of every run goes to benchmarks/results/.

    python -m benchmarks.run --fleets 100 --quick
    python -m benchmarks.run --fleets 1000 --variants "base;workers=2" --repeat 3
    python -m benchmarks.run --fleets 1000 --no-peer --profile

Variants (`--variants`, separated by `;`, or by `,` when no variant has several options):
each is `[label:]opt=value[+opt=value...]`, where `opt` becomes `--opt value` on the collect
command line (`opt=true` a bare flag `--opt`, `opt=false` `--no-opt`), and `env.NAME=value`
sets an environment variable for that run only (for levers toggled by environment), and
`patch=NAME` runs it with benchmarks/experiments/NAME/sitecustomize.py loaded (a lever tried
before it exists in the collector), and `checkout=PATH` runs the collector of another
checkout of this repository (e.g. `git worktree add /tmp/main main`): before and after a
change in one run, against the same simulator. `base` (or an empty variant) runs collect as
it is.

    python -m benchmarks.run --fleets 1000 --no-peer \
        --variants "base;workers=1;prefetch:workers=1+patch=prefetch_roles"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.measure import ProcResult, proc_cpu_s, run_measured, wait_for_quiet
from inventory.model import Options
from inventory.simulator import BASE_ACCESS_KEY, BASE_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
ROLE_NAME = "LightsailInventoryReader"
BASE_ENV = {
    # the simulator's base identity: it verifies every signature with the secret it knows
    "AWS_ACCESS_KEY_ID": BASE_ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": BASE_SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "INVENTORY_FINGERPRINT_KEY": "benchmark-fingerprint-key-0123456789abcdef",
}
# Never let a real profile, token or config reach a benchmark child.
DROP_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
TARGETS = {  # the standing targets, checked in the output (never as timed tests)
    "wall_s_1000": 20.0,
    "peer_wall_ratio": 15.0,
    "cpu_ms_per_call": 2.0,
    "floor_cpu_per_call_ratio": 1.5,  # ours over the floor, same fleet, same run
    "floor_wall_ratio": 1.5,
    "rss_mb_10000": 300.0,
    "rss_growth_10000_vs_1000": 1.3,
}


# --------------------------------------------------------------------------- simulator
class Simulator:
    """`python -m inventory.simulator` in its own process, on a free port."""

    def __init__(self, accounts: int, seed: int, latency_ms: float, extra: list[str]) -> None:
        self.port = _free_port()
        self.cmd = [
            sys.executable,
            "-m",
            "inventory.simulator",
            "--port",
            str(self.port),
            "--accounts",
            str(accounts),
            "--seed",
            str(seed),
            "--latency-ms",
            f"{latency_ms:g}",
            *extra,
        ]
        self.lines: deque[str] = deque(maxlen=200)
        self.url: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def __enter__(self) -> Simulator:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=_child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = "\n".join(self.lines)
                raise RuntimeError(f"simulator did not start: {shlex.join(self.cmd)}\n{tail}")
        return self

    def _drain(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if not self._ready.is_set() and "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip().split()[0]
                self._ready.set()

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, timeout: float = 300) -> Any:
        assert self.url
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        try:
            got = self.get("/_sim/stats", timeout=30)
        except Exception:
            return {}
        return got if isinstance(got, dict) else {}

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) if self.proc else 0.0

    def env(self) -> dict[str, str]:
        assert self.url
        return {"AWS_ENDPOINT_URL_STS": self.url, "AWS_ENDPOINT_URL_LIGHTSAIL": self.url}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update(BASE_ENV)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Numeric deltas of the simulator's stats (nested dicts flattened with dots)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in d.items():
            if isinstance(v, dict) and len(v) > 50:  # per-target counters: just their sum
                out[f"{prefix}{k}.sum"] = sum(x for x in v.values() if isinstance(x, int | float))
            elif isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(after), flat(before)
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


# --------------------------------------------------------------------------- the fleet
@dataclass
class FleetInfo:
    accounts: list[str]
    regions: list[str]
    expected_services: int | None  # member accounts' services, when the truth tells


def fleet_info(sim: Simulator, n: int, seed: int, regions: list[str] | None) -> FleetInfo:
    """Member account ids (from /_sim/truth, else the Fleet class with the same seed).

    Fetching the truth also makes the simulator build its whole fleet before any measured
    run, so that no run pays for the simulator's lazy generation.
    """
    truth: Any = None
    try:
        truth = sim.get("/_sim/truth")
    except Exception as exc:
        print(f"  (no /_sim/truth: {exc}; using Fleet({n}, seed={seed}))")
    ids, expected, regs = _from_truth(truth)
    if not ids:
        from inventory.simulator.fleet import Fleet

        fleet = Fleet(n, seed=seed)
        ids, regs = list(fleet.account_ids), list(fleet.regions)
    if regions:
        regs = regions
    elif not regs:
        from inventory.plan.regions import all_regions

        regs = list(all_regions())
    if expected is not None and isinstance(expected, dict):
        expected = sum(c for (acct, region), c in expected.items() if region in regs)
    return FleetInfo(ids, regs, expected if isinstance(expected, int) else None)


def _from_truth(truth: Any) -> tuple[list[str], Any, list[str]]:
    """Best effort over the truth's shape: member ids, services per (account, region), regions."""
    if not isinstance(truth, dict):
        return [], None, []
    hub = truth.get("hub_account_id")
    ids = truth.get("account_ids") or truth.get("member_account_ids") or []
    if not ids and isinstance(truth.get("accounts"), list | dict):
        raw = truth["accounts"]
        ids = [a.get("id") if isinstance(a, dict) else a for a in raw]
    ids = [str(a) for a in ids if a and str(a) != hub]
    regions = [str(r) for r in truth.get("regions") or []]
    counts: dict[tuple[str, str], int] = {}
    members = set(ids)
    services = truth.get("services")
    if isinstance(services, list):
        for s in services:
            if isinstance(s, dict) and s.get("account_id") in members:
                key = (s["account_id"], s.get("region", ""))
                counts[key] = counts.get(key, 0) + 1
    elif isinstance(services, dict):  # {account: {region: [services] | count}}
        for acct, per in services.items():
            if acct in members and isinstance(per, dict):
                for region, v in per.items():
                    counts[(acct, region)] = v if isinstance(v, int) else len(v)
    return ids, (counts or None), regions


def write_accounts(path: Path, info: FleetInfo) -> None:
    lines = [f'role_name = "{ROLE_NAME}"', 'session_name = "inventory-bench"', ""]
    for i, acct in enumerate(info.accounts):
        lines += ["[[accounts]]", f'id = "{acct}"', f'name = "bench-{i:05d}"', ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    label: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    concurrency: int | None = None  # when the variant sets it, for the network bound
    checkout: Path | None = None  # another checkout's collector (`checkout=PATH`)


def parse_variants(text: str | None) -> list[Variant]:
    if not text:
        return [Variant("ours")]
    parts = text.split(";") if ";" in text else text.split(",")
    out = []
    for raw in parts:
        raw = raw.strip()
        head, sep, tail = raw.partition(":")
        label, spec = (head, tail) if sep and "=" not in head else ("", raw)
        v = Variant(label or raw or "base")
        for item in filter(None, (s.strip() for s in spec.split("+"))):
            if item == "base":
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--variants: {item!r} is not opt=value")
            if key.startswith("env."):
                v.env[key[4:]] = value
                continue
            if key == "patch":
                folder = EXPERIMENTS / value
                if not (folder / "sitecustomize.py").is_file():
                    raise SystemExit(f"--variants: no experiment {folder}/sitecustomize.py")
                v.env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
                continue
            if key == "checkout":
                v.checkout = Path(value).resolve()
                if not (v.checkout / "inventory" / "__main__.py").is_file():
                    raise SystemExit(f"--variants: {value!r} is not a checkout (no inventory/)")
                continue
            opt = "--" + key.strip("-").replace("_", "-")
            if value.lower() == "true":
                v.args.append(opt)
            elif value.lower() == "false":
                v.args.append("--no-" + opt[2:])
            else:
                v.args += [opt, value]
            if opt == "--concurrency":
                v.concurrency = int(value)
        out.append(v)
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"--variants: labels must differ: {labels}")
    return out


def usage_variant(base: Variant) -> Variant:
    """`base` with `collect --usage`: the side-by-side run that prices the feature."""
    return replace(base, label=f"{base.label}+usage", args=[*base.args, "--usage"])


def usage_notes(runs: list[Run], base: str) -> list[str]:
    """Per fleet: what `--usage` costs over the plain collect of the same run (medians)."""
    notes = []
    for n in sorted({r.fleet for r in runs}):

        def median(label: str, key: str, n: int = n) -> float | None:
            got = [
                getattr(r, key) for r in runs if (r.fleet, r.label) == (n, label) and not r.error
            ]
            return statistics.median(got) if got else None

        plain, usage = (
            {k: median(label, k) for k in ("wall_s", "cpu_s", "api_calls", "targets")}
            for label in (base, f"{base}+usage")
        )
        if None in plain.values() or None in usage.values() or not plain["targets"]:
            continue
        extra = (usage["api_calls"] or 0) - (plain["api_calls"] or 0)
        notes.append(
            f"--usage at {n:,} accounts: wall {_ratio(usage['wall_s'], plain['wall_s']):.2f}×, "
            f"CPU {_ratio(usage['cpu_s'], plain['cpu_s']):.2f}× the plain collect; "
            f"{extra:,.0f} more API calls ({extra / plain['targets']:.2f} per account × region)"
        )
    return notes


def collect_options() -> set[str]:
    """The long options `inventory collect --help` lists (to reject a variant early)."""
    got = subprocess.run(
        [sys.executable, "-m", "inventory", "collect", "--help"],
        capture_output=True,
        text=True,
        env={**_child_env(), "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"},
        cwd=ROOT,
    )
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", got.stdout))


# --------------------------------------------------------------------------- one run
@dataclass
class Run:
    fleet: int
    kind: str  # ours | peer | floor
    label: str
    repeat: int
    returncode: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    children_cpu_s: float
    maxrss_mb: float
    tree_peak_rss_mb: float
    tree_peak_at_s: float  # when the tree's RSS peaked (after the start): the export is last
    api_calls: int
    concurrency: int
    net_bound_s: float
    targets: int
    targets_ok: int
    targets_failed: int
    services: int
    deployments: int
    containers: int
    sim_cpu_s: float
    other_cpu_s: float  # CPU of processes that are neither this run nor the simulator
    quiet_before: float  # cores the rest of the machine used just before the run
    sim_stats: dict[str, Any]
    startup_cpu_s: float
    command: str
    workers: int = 1
    engine: str = "-"
    error: str | None = None

    @property
    def processes(self) -> int:
        """Interpreters started: the collector, plus its workers when it spawns them."""
        return 1 + self.workers if self.workers > 1 else 1

    @property
    def rows(self) -> int:
        return self.services + self.deployments + self.containers

    def derived(self) -> dict[str, float | None]:
        calls = self.api_calls or None
        return {
            "cpu_ms_per_call": 1000 * self.cpu_s / calls if calls else None,
            "steady_cpu_ms_per_call": (
                1000 * max(0.0, self.cpu_s - self.startup_cpu_s * self.processes) / calls
                if calls
                else None
            ),
            "calls_per_s": self.api_calls / self.wall_s if self.wall_s else None,
            "rows_per_s": self.rows / self.wall_s if self.wall_s else None,
            "cpu_utilisation": self.cpu_s / self.wall_s if self.wall_s else None,
        }


def startup_cpu(kind: str, log_dir: Path) -> float:
    """CPU of starting the interpreter and importing what the child imports (median of 3)."""
    code = {
        "ours": "import inventory.cli, inventory.run.pipeline, inventory.run.collect, duckdb, pyarrow",
        "peer": "import boto3, duckdb, pyarrow, botocore.session",
        "floor": "import aiohttp, json",
    }[kind]
    got = [
        run_measured(
            [sys.executable, "-c", code], env=_child_env(), cwd=ROOT, log_dir=log_dir, name="start"
        ).cpu_s
        for _ in range(3)
    ]
    return statistics.median(got)


def run_ours(
    sim: Simulator,
    info: FleetInfo,
    variant: Variant,
    args: argparse.Namespace,
    work: Path,
    repeat: int,
    startup: float,
    profile_to: Path | None = None,
) -> Run:
    db = work / f"ours-{_slug(variant.label)}-{repeat}.duckdb"
    concurrency = variant.concurrency or args.concurrency
    lake = work / f"lake-{_slug(variant.label)}-{repeat}"
    # --parquet exports every variant but one that says `parquet=false` (--no-parquet)
    export = args.parquet and "--no-parquet" not in variant.args
    cmd = [
        "collect",
        "--config",
        str(work / "accounts.toml"),
        "--db",
        str(db),
        *(["--parquet-dir", str(lake)] if export else []),
        "--rate",
        f"{args.rate:g}",
        "--regions",
        ",".join(info.regions),
    ]
    if variant.concurrency is None:
        cmd += ["--concurrency", str(args.concurrency)]
    cmd += args.collector_args + variant.args
    if not export and "--no-parquet" not in cmd:
        cmd.append("--no-parquet")
    full = [sys.executable, "-m", "inventory", *cmd]
    if profile_to is not None:
        full = profiled(args.profiler, profile_to, ["inventory", *cmd])
    env = _child_env({**sim.env(), **variant.env, "COLUMNS": "120"})
    root = variant.checkout or ROOT
    if variant.checkout is not None:  # its package first: cwd and PYTHONPATH
        env["PYTHONPATH"] = env["PYTHONPATH"].replace(str(ROOT), str(root))
    quiet = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else -1.0
    st0, sim0 = sim.stats(), sim.cpu_s()
    res = run_measured(
        full,
        env=env,
        cwd=root,
        log_dir=work,
        name=f"ours-{_slug(variant.label)}-{repeat}",
        timeout=args.run_timeout,
    )
    sim_cpu, st1 = sim.cpu_s() - sim0, sim.stats()
    row = _read_run(db)
    error = None
    if res.returncode not in (0, 3) or row is None:
        error = f"exit {res.returncode}: " + (res.stderr.strip() or res.stdout.strip())[-600:]
    row = row or {}
    got_workers = re.search(r"\((\d+) workers\)", res.stdout)
    opts = args.collector_args + variant.args
    engine = opts[opts.index("--engine") + 1] if "--engine" in opts else "default"
    run = _make_run(
        info,
        "ours",
        variant.label,
        repeat,
        res,
        full,
        concurrency,
        args.latency_ms,
        sim_cpu,
        _stats_delta(st0, st1),
        startup,
        quiet,
        api_calls=int(row.get("api_calls") or 0),
        targets=int(row.get("targets") or 0),
        targets_ok=int(row.get("targets_ok") or 0),
        targets_failed=int(row.get("targets_failed") or 0),
        services=int(row.get("services") or 0),
        deployments=int(row.get("deployments") or 0),
        containers=int(row.get("containers") or 0),
        error=error,
    )
    run.workers = int(got_workers.group(1)) if got_workers else 1
    run.engine = engine
    return run


def run_peer(
    sim: Simulator,
    info: FleetInfo,
    args: argparse.Namespace,
    work: Path,
    repeat: int,
    startup: float,
) -> Run:
    db = work / f"peer-{repeat}.duckdb"
    extra = ["--db", str(db), "--threads", str(args.peer_threads)]
    return _run_json_reporter(
        "peer",
        f"peer boto3 x{args.peer_threads}",
        args.peer_threads,
        extra,
        sim,
        info,
        args,
        work,
        repeat,
        startup,
    )


def run_floor(
    sim: Simulator,
    info: FleetInfo,
    args: argparse.Namespace,
    work: Path,
    repeat: int,
    startup: float,
) -> Run:
    extra = ["--concurrency", str(args.concurrency)]
    return _run_json_reporter(
        "floor", "floor aiohttp", args.concurrency, extra, sim, info, args, work, repeat, startup
    )


def _run_json_reporter(
    kind: str,
    label: str,
    concurrency: int,
    extra: list[str],
    sim: Simulator,
    info: FleetInfo,
    args: argparse.Namespace,
    work: Path,
    repeat: int,
    startup: float,
) -> Run:
    """`benchmarks.<peer_boto3|floor>`: a measured subprocess that prints one JSON report."""
    module = {"peer": "benchmarks.peer_boto3", "floor": "benchmarks.floor"}[kind]
    full = [
        sys.executable,
        "-m",
        module,
        "--config",
        str(work / "accounts.toml"),
        "--regions",
        ",".join(info.regions),
        *extra,
    ]
    quiet = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else -1.0
    st0, sim0 = sim.stats(), sim.cpu_s()
    res = run_measured(
        full, env=_child_env(sim.env()), cwd=ROOT, log_dir=work, name=f"{kind}-{repeat}"
    )
    sim_cpu, st1 = sim.cpu_s() - sim0, sim.stats()
    report: dict[str, Any] = {}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    error = None
    if res.returncode not in (0, 3) or not report:
        error = f"exit {res.returncode}: " + (res.stderr.strip() or res.stdout.strip())[-600:]
    return _make_run(
        info,
        kind,
        label,
        repeat,
        res,
        full,
        concurrency,
        args.latency_ms,
        sim_cpu,
        _stats_delta(st0, st1),
        startup,
        quiet,
        api_calls=int(report.get("api_calls") or 0),
        targets=int(report.get("targets") or 0),
        targets_ok=int(report.get("targets_ok") or 0),
        targets_failed=int(report.get("targets_failed") or 0),
        services=int(report.get("services") or 0),
        deployments=int(report.get("deployments") or 0),
        containers=int(report.get("containers") or 0),
        error=error,
    )


def find_py_spy() -> str | None:
    """py-spy on PATH, beside the interpreter, or where $PY_SPY points."""
    for cand in (
        os.environ.get("PY_SPY"),
        shutil.which("py-spy"),
        Path(sys.executable).parent / "py-spy",
    ):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def profiled(profiler: str, out: Path, module_args: list[str]) -> list[str]:
    """The command that runs `python -m <module_args>` under the chosen profiler.

    py-spy samples from outside (CPU samples only, idle threads left out, all threads,
    the collector barely slowed); pyinstrument runs inside and slows it down a lot.
    """
    if profiler == "py-spy":
        spy = find_py_spy()
        assert spy, "py-spy not found"
        rec = [spy, "record", "--subprocesses", "--nonblocking", "-r", "250", "-f", "raw"]
        # --gil: only the thread holding the GIL, i.e. Python's own CPU (py-spy's idle
        # detection counts threads parked in select / Condition.wait as busy here).
        rec += os.environ.get("PY_SPY_ARGS", "--gil").split()
        rec += ["-o", str(out), "--"]
        return [*rec, sys.executable, "-m", *module_args]
    pyi = [sys.executable, "-m", "pyinstrument", "-i", "0.005", "-r", "pstats", "-o", str(out)]
    return [*pyi, "-m", *module_args]


def _make_run(
    info: FleetInfo,
    kind: str,
    label: str,
    repeat: int,
    res: ProcResult,
    cmd: list[str],
    concurrency: int,
    latency_ms: float,
    sim_cpu: float,
    sim_stats: dict[str, Any],
    startup: float,
    quiet: float,
    **counts: Any,
) -> Run:
    calls = counts["api_calls"]
    other = max(0.0, res.machine_busy_s - res.cpu_s - sim_cpu)
    return Run(
        fleet=len(info.accounts),
        kind=kind,
        label=label,
        repeat=repeat,
        returncode=res.returncode,
        wall_s=res.wall_s,
        cpu_s=res.cpu_s,
        user_s=res.user_s,
        sys_s=res.sys_s,
        children_cpu_s=res.children_cpu_s,
        maxrss_mb=res.maxrss_mb,
        tree_peak_rss_mb=res.tree_peak_rss_mb,
        tree_peak_at_s=res.tree_peak_at_s,
        concurrency=concurrency,
        net_bound_s=calls * latency_ms / 1000 / max(1, concurrency),
        sim_cpu_s=sim_cpu,
        other_cpu_s=other,
        quiet_before=quiet,
        sim_stats=sim_stats,
        startup_cpu_s=startup,
        command=shlex.join(cmd),
        **counts,
    )


def _read_run(db: Path) -> dict[str, Any] | None:
    if not db.exists():
        return None
    import duckdb

    try:
        con = duckdb.connect(str(db), read_only=True)
    except Exception:
        return None
    try:
        cur = con.execute("select * from runs order by run_id desc limit 1")
        cols = [d[0] for d in cur.description]
        got = cur.fetchone()
        return dict(zip(cols, got, strict=True)) if got else None
    except Exception:
        return None
    finally:
        con.close()


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60]


# --------------------------------------------------------------------------- reporting
def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """Median per (fleet, label) over the repeats, plus ratios vs the peer and the first variant."""
    groups: dict[tuple[int, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.fleet, r.label), []).append(r)
    rows = []
    for (fleet, label), rs in groups.items():
        good = [r for r in rs if r.error is None] or rs
        med = {k: statistics.median(getattr(r, k) for r in good) for k in _MEDIAN_FIELDS}
        der = [r.derived() for r in good]
        for k in der[0]:
            vals = [d[k] for d in der if d[k] is not None]
            med[k] = statistics.median(vals) if vals else None
        first = good[0]
        rows.append(
            {
                "fleet": fleet,
                "kind": first.kind,
                "label": label,
                "n": len(good),
                "errors": [r.error for r in rs if r.error],
                "concurrency": first.concurrency,
                "workers": first.workers,
                "engine": first.engine,
                "api_calls": first.api_calls,
                "targets": first.targets,
                "targets_ok": first.targets_ok,
                "targets_failed": first.targets_failed,
                "rows": first.rows,
                "services": first.services,
                **med,
            }
        )
    for fleet in {r["fleet"] for r in rows}:
        mine = [r for r in rows if r["fleet"] == fleet]
        peer = next((r for r in mine if r["kind"] == "peer"), None)
        floor = next((r for r in mine if r["kind"] == "floor"), None)
        base = next((r for r in mine if r["kind"] == "ours"), None)
        for r in mine:
            if r["kind"] != "ours":
                continue
            r["floor_wall_ratio"] = _ratio(r["wall_s"], floor and floor["wall_s"])
            r["floor_cpu_per_call_ratio"] = _ratio(
                r["cpu_ms_per_call"], floor and floor["cpu_ms_per_call"]
            )
            r["peer_wall_ratio"] = _ratio(peer and peer["wall_s"], r["wall_s"])
            r["peer_cpu_per_call_ratio"] = _ratio(
                peer and peer["cpu_ms_per_call"], r["cpu_ms_per_call"]
            )
            r["vs_first_wall_ratio"] = _ratio(base and base["wall_s"], r["wall_s"])
            r["vs_first_cpu_per_call_ratio"] = _ratio(
                base and base["cpu_ms_per_call"], r["cpu_ms_per_call"]
            )
    return sorted(rows, key=lambda r: (r["fleet"], r["kind"] != "ours"))


_MEDIAN_FIELDS = (
    "wall_s",
    "cpu_s",
    "user_s",
    "sys_s",
    "children_cpu_s",
    "maxrss_mb",
    "tree_peak_rss_mb",
    "net_bound_s",
    "sim_cpu_s",
    "other_cpu_s",
    "startup_cpu_s",
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(rows: list[dict[str, Any]], notes: list[str]) -> str:
    head = [
        "fleet",
        "variant",
        "eng",
        "proc",
        "conc",
        "wall s",
        "net bound s",
        "CPU s",
        "CPU ms/call",
        "steady ms/call",
        "calls",
        "calls/s",
        "RSS MB",
        "tree RSS MB",
        "rows/s",
        "sim CPU s",
        "other CPU s",
        "ok/targets",
        "peer/ours wall",
        "peer/ours CPU/call",
        "ours/floor wall",
        "ours/floor CPU/call",
        "vs 1st wall",
    ]
    body = []
    for r in rows:
        body.append(
            [
                str(r["fleet"]),
                r["label"],
                {"ours": r["engine"], "peer": "boto3", "floor": "aiohttp"}[r["kind"]],
                str(r["workers"]),
                str(r["concurrency"]),
                _f(r["wall_s"], "{:.2f}"),
                _f(r["net_bound_s"], "{:.2f}"),
                _f(r["cpu_s"], "{:.2f}"),
                _f(r["cpu_ms_per_call"], "{:.2f}"),
                _f(r["steady_cpu_ms_per_call"], "{:.2f}"),
                str(r["api_calls"]),
                _f(r["calls_per_s"], "{:.0f}"),
                _f(r["maxrss_mb"], "{:.0f}"),
                _f(r["tree_peak_rss_mb"], "{:.0f}"),
                _f(r["rows_per_s"], "{:.0f}"),
                _f(r["sim_cpu_s"], "{:.1f}"),
                _f(r["other_cpu_s"], "{:.1f}"),
                f"{r['targets_ok']}/{r['targets']}" + (" ERR" if r["errors"] else ""),
                _f(r.get("peer_wall_ratio"), "{:.2f}x"),
                _f(r.get("peer_cpu_per_call_ratio"), "{:.2f}x"),
                _f(r.get("floor_wall_ratio"), "{:.2f}x"),
                _f(r.get("floor_cpu_per_call_ratio"), "{:.2f}x"),
                _f(r.get("vs_first_wall_ratio"), "{:.2f}x"),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    out = [line(head), line(["-" * w for w in widths]), *(line(b) for b in body)]
    return "\n".join([*out, "", *notes])


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The standing targets, checked on the first variant of each fleet."""
    notes: list[str] = []
    ours: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["kind"] == "ours":
            ours.setdefault(r["fleet"], r)
    if 1000 in ours:
        r = ours[1000]
        notes.append(_target("1,000 accounts wall", r["wall_s"], TARGETS["wall_s_1000"], "s"))
        if r.get("peer_wall_ratio"):
            notes.append(
                _target(
                    "1,000 accounts vs peer (wall)",
                    r["peer_wall_ratio"],
                    TARGETS["peer_wall_ratio"],
                    "x",
                    higher=True,
                )
            )
    for fleet, r in sorted(ours.items()):
        for key, what in (
            ("floor_cpu_per_call_ratio", "CPU per call"),
            ("floor_wall_ratio", "wall"),
        ):
            if r.get(key):
                notes.append(
                    _target(f"{fleet:,} accounts {what} over the floor", r[key], TARGETS[key], "x")
                )
        if r["cpu_ms_per_call"] is not None and fleet >= 1000:
            notes.append(
                _target(
                    f"{fleet:,} accounts CPU per call",
                    r["cpu_ms_per_call"],
                    TARGETS["cpu_ms_per_call"],
                    " ms",
                )
            )
    if 10000 in ours:
        r = ours[10000]
        notes.append(
            _target(
                "10,000 accounts peak RSS", r["tree_peak_rss_mb"], TARGETS["rss_mb_10000"], " MB"
            )
        )
        if 1000 in ours:
            growth = r["tree_peak_rss_mb"] / ours[1000]["tree_peak_rss_mb"]
            notes.append(
                _target("RSS 10,000 vs 1,000", growth, TARGETS["rss_growth_10000_vs_1000"], "x")
            )
    return notes


def _target(what: str, got: float, limit: float, unit: str, higher: bool = False) -> str:
    ok = got >= limit if higher else got <= limit
    by = got / limit if not higher else limit / got
    verdict = "met" if ok else f"MISSED by {by:.2f}x"
    rel = ">=" if higher else "<="
    return f"target {what}: {got:.2f}{unit} (want {rel} {limit:g}{unit}): {verdict}"


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark `inventory collect` against the simulator and a boto3 peer.",
    )
    p.add_argument("--fleets", default="100,1000,10000", help="accounts per fleet, comma list")
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated API latency")
    p.add_argument(
        "--concurrency",
        type=int,
        default=Options().concurrency,
        help="our --concurrency (default: the collector's own default)",
    )
    p.add_argument("--rate", type=float, default=100_000.0, help="our --rate (high: unpaced)")
    p.add_argument("--quick", action="store_true", help="only the smallest fleet (< 60 s)")
    p.add_argument("--no-peer", action="store_true", help="skip the boto3 peer")
    p.add_argument("--peer-max-accounts", type=int, default=1000, help="largest fleet for peer")
    p.add_argument("--peer-threads", type=int, default=32)
    p.add_argument(
        "--no-floor", action="store_true", help="skip the floor (raw aiohttp, unsigned, no store)"
    )
    p.add_argument("--engine", default=None, help="passed to collect as --engine (if it has it)")
    p.add_argument("--workers", default=None, help="passed to collect as --workers (if it has it)")
    p.add_argument(
        "--variants",
        default=None,
        help='our collector variants side by side, e.g. "workers=1;workers=2" (see module doc)',
    )
    p.add_argument(
        "--no-usage",
        action="store_true",
        help="skip the side-by-side run of the first variant with collect --usage",
    )
    p.add_argument(
        "--usage-max-accounts",
        type=int,
        default=1000,
        help="largest fleet for the --usage run (the simulator computes every series)",
    )
    p.add_argument("--collector-arg", action="append", default=[], help="extra collect option")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant (medians reported)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--regions", default=None, help="comma list (default: every region)")
    p.add_argument("--sim-arg", action="append", default=[], help="extra simulator option")
    p.add_argument(
        "--services-per-account",
        type=float,
        default=None,
        help="the simulator's mean services per member account (its default: 1.5); "
        "10 makes the dense fleet of the memory target",
    )
    p.add_argument(
        "--parquet",
        action="store_true",
        help="our collector also exports the run to a local Parquet lake (a folder in the "
        "run's temporary directory) instead of --no-parquet: the export's memory and time count",
    )
    p.add_argument(
        "--verify-signatures",
        action="store_true",
        help="let the simulator check every signature (off by default: the floor sends "
        "unsigned requests, and every run then meets the same simulator)",
    )
    p.add_argument(
        "--huge-answer-mb",
        type=float,
        default=0.0,
        help="one target (the fleet's first account, first region) answers this many MB: "
        "the RSS columns show the collector's peak memory with such an answer",
    )
    p.add_argument(
        "--profile", action="store_true", help="one extra run of the first variant, profiled"
    )
    p.add_argument(
        "--profiler",
        choices=("auto", "py-spy", "pyinstrument"),
        default="auto",
        help="auto: py-spy when installed (PATH, the venv or $PY_SPY), else pyinstrument",
    )
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--run-timeout", type=float, default=3600.0, help="kill a run after S seconds")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run wait up to S s for other processes to go under 0.3 cores "
        "(0: never; default 60, 3 with --quick)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary databases and logs")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: results/<ts>.json)")
    args = p.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 3.0 if args.quick else 60.0
    if args.profiler == "auto":
        args.profiler = "py-spy" if find_py_spy() else "pyinstrument"
    args.fleet_sizes = sorted({int(x) for x in args.fleets.split(",") if x.strip()})
    if args.quick:
        args.fleet_sizes = args.fleet_sizes[:1]
    args.collector_args = []
    for a in args.collector_arg:
        args.collector_args += shlex.split(a)
    if args.engine:
        args.collector_args += ["--engine", args.engine]
    if args.workers:
        args.collector_args += ["--workers", str(args.workers)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = parse_variants(args.variants)
    known = collect_options()
    for opt in [a for v in variants for a in v.args if a.startswith("--")] + [
        a for a in args.collector_args if a.startswith("--")
    ]:
        if known and opt not in known:
            raise SystemExit(f"`inventory collect` has no option {opt} (see collect --help)")
    regions = args.regions.split(",") if args.regions else None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_path = args.out or RESULTS / f"{stamp}.json"
    work_root = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    runs: list[Run] = []
    notes: list[str] = []
    profiles: dict[str, str] = {}
    t_start = time.perf_counter()
    git = _git_state()
    print(
        f"measuring {git['head'][:10]} ({git['subject'][:60]})"
        + (f"; uncommitted changes in {len(git['dirty'])} file(s)" if git["dirty"] else "")
    )
    startups = {"ours": startup_cpu("ours", work_root)}
    if not args.no_peer:
        startups["peer"] = startup_cpu("peer", work_root)
    if not args.no_floor:
        startups["floor"] = startup_cpu("floor", work_root)
    print(
        f"benchmark: fleets {args.fleet_sizes}, latency {args.latency_ms:g} ms, our concurrency "
        f"{args.concurrency}, variants {[v.label for v in variants]}, repeat {args.repeat}; "
        f"start-up CPU ours {startups['ours']:.2f}s"
        + (f", peer {startups['peer']:.2f}s" if "peer" in startups else "")
    )
    try:
        for n in args.fleet_sizes:
            work = work_root / f"fleet-{n}"
            work.mkdir()
            t0 = time.perf_counter()
            sim_args, huge = list(args.sim_arg), None
            if args.services_per_account is not None:
                sim_args += ["--services-per-account", f"{args.services_per_account:g}"]
            if not args.verify_signatures:
                sim_args.append("--no-verify-signatures")
            if args.huge_answer_mb > 0:
                from inventory.simulator import Fleet

                huge = (Fleet(n, seed=args.seed).account_ids[0], (regions or ["us-east-1"])[0])
                sim_args += ["--huge-answer", ":".join(huge)]
                sim_args += ["--huge-bytes", str(int(args.huge_answer_mb * 1024 * 1024))]
            with Simulator(n, args.seed, args.latency_ms, sim_args) as sim:
                info = fleet_info(sim, n, args.seed, regions)
                write_accounts(work / "accounts.toml", info)
                print(
                    f"fleet {n:,}: {len(info.accounts)} accounts × {len(info.regions)} regions "
                    f"= {len(info.accounts) * len(info.regions):,} targets; simulator "
                    f"{sim.url} ready in {time.perf_counter() - t0:.1f}s"
                )
                peer_here = not args.no_peer and n <= args.peer_max_accounts
                if not args.no_peer and not peer_here:
                    notes.append(
                        f"peer skipped at {n:,} accounts (capped at --peer-max-accounts "
                        f"{args.peer_max_accounts:,}: a client per target would take minutes)"
                    )
                mine = list(variants)
                if not args.no_usage and n <= args.usage_max_accounts:
                    mine.append(usage_variant(variants[0]))
                for rep in range(args.repeat):
                    for v in mine:
                        r = run_ours(sim, info, v, args, work, rep, startups["ours"])
                        runs.append(r)
                        _progress(r)
                    if peer_here:
                        r = run_peer(sim, info, args, work, rep, startups["peer"])
                        runs.append(r)
                        _progress(r)
                    if not args.no_floor:
                        r = run_floor(sim, info, args, work, rep, startups["floor"])
                        runs.append(r)
                        _progress(r)
                if args.profile:
                    ext = "collapsed" if args.profiler == "py-spy" else "pstats"
                    prof = work / f"ours.{ext}"
                    r = run_ours(
                        sim, info, variants[0], args, work, 99, startups["ours"], profile_to=prof
                    )
                    if prof.exists():
                        from benchmarks.profile_summary import summary_text

                        text = summary_text(prof, args.profile_top)
                        profiles[str(n)] = text
                        print(
                            f"\nprofile of {variants[0].label} at {n:,} accounts "
                            f"({args.profiler}, wall {r.wall_s:.1f}s, top {args.profile_top} by "
                            f"own time):\n{text}"
                        )
                    else:
                        print(f"profile failed: {r.error}")
            for r in runs if huge else ():
                if r.fleet == n:
                    notes.append(
                        f"huge answer ({args.huge_answer_mb:g} MB from {huge[0]} {huge[1]}) at "
                        f"{n:,}: {r.label}: peak RSS {r.maxrss_mb:.0f} MB, "
                        f"{r.targets_failed} target(s) failed"
                    )
            if info.expected_services is not None and not huge:
                for r in runs:
                    if r.fleet == n and r.error is None and r.services != info.expected_services:
                        notes.append(
                            f"{r.label} at {n:,}: stored {r.services} services, the simulator's "
                            f"truth has {info.expected_services}"
                        )
    finally:
        if not args.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    rows = summarise(runs)
    notes = check_targets(rows) + usage_notes(runs, variants[0].label) + notes
    cores = os.cpu_count() or 1
    noisy = [r.other_cpu_s / r.wall_s for r in runs if r.other_cpu_s > 0.1 * cores * r.wall_s]
    if noisy:
        notes.append(
            f"NOISY: during {len(noisy)} of {len(runs)} runs other processes used more than 10% "
            f"of the {cores} cores (median {statistics.median(noisy):.2f} cores, max "
            f"{max(noisy):.2f}; see 'other CPU s'): wall times and ratios of wall times are "
            "not clean figures; CPU per call is much less affected"
        )
    notes.append(
        "CPU = the collector process's own user+sys (wait4); steady = minus interpreter start-up "
        "and imports; net bound = calls × latency / concurrency; RSS = ru_maxrss, tree RSS = "
        "summed RSS of the process and its children (sampled); rows/s = inventory rows / wall; "
        "other CPU = what the rest of the machine used meanwhile (/proc/stat)."
    )
    print()
    print(render(rows, notes))
    payload = {
        "started": stamp,
        "total_s": round(time.perf_counter() - t_start, 1),
        "git": git,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "summary": rows,
        "runs": [{**asdict(r), **r.derived(), "rows": r.rows} for r in runs],
        "notes": notes,
        "profiles": profiles,
        "work_dir": str(work_root) if args.keep else None,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nresults: {out_path}  (total {payload['total_s']}s)")
    return 1 if any(r.error for r in runs) else 0


def _git_state() -> dict[str, Any]:
    """The commit measured, and whether the collector's code differed from it."""

    def git(*a: str) -> str:
        got = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return got.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": git("status", "--porcelain", "--", "inventory", "pyproject.toml").splitlines(),
    }


def _progress(r: Run) -> None:
    d = r.derived()
    status = f"ERROR {r.error}" if r.error else f"{r.targets_ok}/{r.targets} ok"
    print(
        f"  {r.label:<24} {r.workers} proc  wall {r.wall_s:7.2f}s  cpu {r.cpu_s:7.2f}s  "
        f"{_f(d['cpu_ms_per_call'], '{:.2f}')} ms/call  {r.api_calls} calls  "
        f"rss {r.maxrss_mb:.0f} MB (tree {r.tree_peak_rss_mb:.0f} MB at "
        f"{r.tree_peak_at_s:.0f}s)  {status}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
