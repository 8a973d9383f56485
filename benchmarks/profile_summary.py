"""The top functions by own time of a profile, from py-spy or pyinstrument.

    python -m benchmarks.profile_summary ours.collapsed --top 15   # py-spy record -f raw
    python -m benchmarks.profile_summary ours.pstats --top 15      # pyinstrument -r pstats

py-spy's raw (collapsed) stacks hold only samples of threads that were running (not idle),
so the shares are shares of CPU. Lines of one function are summed. pyinstrument samples
wall time in-process (and slows the program down), so read its figures as relative only.
"""

from __future__ import annotations

import argparse
import pstats
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_MARKERS = (
    "site-packages/",
    "/lib/python3.11/",
    "/lib/python3",
    f"{Path(__file__).resolve().parents[1]}/",
)


def _short(path: str) -> str:
    for marker in _MARKERS:
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']}  ({_short(m['file'])})"


# Where a sample's CPU goes: the first area (in this order) that any frame of its stack
# belongs to. Needles are specific so that a worker's bootstrap frames do not swallow it.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up: imports", ("importlib._bootstrap",)),
    (
        "workers: IPC",
        (
            "multiprocessing/queues.py",
            "multiprocessing/connection.py",
            "multiprocessing/reduction.py",
            "collect_in_workers",
        ),
    ),
    ("store: DuckDB writes", ("inventory/store.py", "duckdb/")),
    ("flatten: rows -> Arrow", ("inventory/flatten.py", "pyarrow/")),
    ("signing: SigV4", ("botocore/auth.py", "Signer.")),
    ("botocore/aiobotocore (STS, clients)", ("botocore/",)),
    ("answer: json.loads", ("json/",)),
    ("HTTP: aiohttp", ("aiohttp/", "yarl/", "multidict/")),
    (
        "collector: fetch/retry/credentials",
        (
            "inventory/collect.py",
            "inventory/credentials.py",
            "inventory/pacing.py",
            "inventory/retry.py",
            "inventory/pipeline.py",
            "inventory/lean.py",
        ),
    ),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)


def _area(frames: list[str]) -> str:
    for name, needles in AREAS:
        if any(n in f for f in frames for n in needles):
            return name
    return "other"


def _process_label(frame: str) -> str:
    """py-spy --subprocesses puts `process PID:"CMDLINE"` first; name the collector's roles."""
    pid = frame.split(":", 1)[0].removeprefix("process ").strip()
    if "multiprocessing" in frame or "spawn_main" in frame:
        return f"worker {pid}"
    if "inventory" in frame:
        return f"collector {pid}"
    return f"process {pid}"


def top_collapsed(
    path: Path, n: int
) -> tuple[int, list[tuple[int, int, str]], dict[str, int], dict[str, int]]:
    """From py-spy's raw output: (samples, [(own, cumulative, function)], {process: samples},
    {area: samples})."""
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        raw = [f for f in stack.split(";") if f]
        if raw and raw[0].startswith("process "):
            per_process[_process_label(raw.pop(0))] += k
        frames = [_frame_key(f) for f in raw]
        if not frames:
            continue
        total += k
        areas[_area(frames)] += k
        own[frames[-1]] += k
        for f in set(frames):
            cum[f] += k
    top_rows = [(c, cum[f], f) for f, c in own.most_common(n)]
    return total, top_rows, dict(per_process), dict(areas.most_common())


def _where(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    return f"{func}  ({_short(filename)}:{line})" if line else f"{func}  ({_short(filename)})"


def summary_text(path: Path, n: int = 15, rate: float = 250.0) -> str:
    """A plain-text table; `rate`: py-spy's samples per second (to print seconds)."""
    if path.suffix == ".pstats":
        raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in raw.values())
        ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
        out = [
            f"pyinstrument: {total:.1f}s sampled (wall, in-process)",
            f"{'own s':>7} {'own %':>6} {'cum s':>7}  function",
        ]
        for k, v in ranked:
            out.append(f"{v[2]:7.2f} {100 * v[2] / total:6.1f} {v[3]:7.2f}  {_where(k)}")
        return "\n".join(out)
    total, rows, per_process, areas = top_collapsed(path, n)
    out = [
        f"py-spy: {total} CPU samples at {rate:g}/s = {total / rate:.1f}s on CPU "
        "(idle left out; all threads and processes)"
    ]
    if len(per_process) > 1:
        out.append(
            "by process: "
            + ", ".join(f"{p} {c / rate:.1f}s" for p, c in sorted(per_process.items()))
        )
    out.append(
        "by area: " + ", ".join(f"{a} {100 * c / max(1, total):.0f}%" for a, c in areas.items())
    )
    out.append(f"{'own s':>7} {'own %':>6} {'cum %':>6}  function")
    for own, cum, where in rows:
        out.append(
            f"{own / rate:7.2f} {100 * own / max(1, total):6.1f} "
            f"{100 * cum / max(1, total):6.1f}  {where}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path, help="py-spy raw (collapsed) or a .pstats file")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--rate", type=float, default=250.0, help="py-spy samples per second")
    args = p.parse_args(argv)
    print(summary_text(args.profile, args.top, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
