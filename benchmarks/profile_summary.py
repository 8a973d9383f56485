"""The top functions by own time of a profile (a pstats file, e.g. pyinstrument `-r pstats`).

    python -m benchmarks.profile_summary ours.pstats --top 15

pyinstrument samples wall time: the event loop's wait for the network shows up as its
selector's `poll`/`select`. The figure that matters for CPU is the share of the rest.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from pathlib import Path


def _where(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    path = filename
    for marker in ("site-packages/", "/inventory/", "/lib/python3"):
        if marker in filename:
            path = filename.split(marker, 1)[1]
            if marker == "/inventory/":
                path = "inventory/" + path
            break
    return f"{func}  ({path}:{line})" if line else f"{func}  ({path})"


def top(path: Path, n: int) -> tuple[float, float, list[tuple[float, float, str]]]:
    """(total own seconds, idle seconds, [(own s, cumulative s, where)]) best first."""
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    idle = sum(
        v[2]
        for k, v in raw.items()
        if k[2] in ("poll", "select") or k[2].startswith(("<method 'poll'", "<method 'select'"))
    )
    ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return total, idle, [(v[2], v[3], _where(k)) for k, v in ranked]


def summary_text(path: Path, n: int = 15) -> str:
    total, idle, rows = top(path, n)
    busy = max(total - idle, 1e-9)
    out = [
        f"sampled {total:.1f}s wall in all, of which {idle:.1f}s waiting in the selector "
        f"(idle); % busy = share of the other {busy:.1f}s",
        f"{'own s':>7} {'% all':>6} {'% busy':>7} {'cum s':>7}  function",
    ]
    for own, cum, where in rows:
        is_idle = where.split()[0] in ("poll", "select") or "method 'poll'" in where
        busy_pct = "-" if is_idle else f"{100 * own / busy:.1f}"
        out.append(
            f"{own:7.2f} {100 * own / max(total, 1e-9):6.1f} {busy_pct:>7} {cum:7.2f}  {where}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pstats_file", type=Path)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print(summary_text(args.pstats_file, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
