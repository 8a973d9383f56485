"""Measuring one child process: wall time, its own CPU and peak RSS, and its process tree's RSS.

`run_measured(cmd)` starts `cmd`, reaps it with `os.wait4` (whose rusage is that child's
alone, plus any grandchildren it reaped itself) and cross-checks the CPU with the
`RUSAGE_CHILDREN` delta around it. A long-lived child that is not reaped meanwhile (the
simulator) does not enter either figure. A sampler thread also polls /proc for the summed RSS
of the child and its descendants (what `--workers N` processes hold together).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcResult:
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float  # ru_maxrss of the child (the largest single process of its tree)
    tree_peak_rss_mb: float  # peak of the summed RSS of the child and its descendants (sampled)
    tree_peak_at_s: float  # when that peak was sampled, seconds after the start
    children_cpu_s: float  # RUSAGE_CHILDREN delta around the run (cross-check)
    machine_busy_s: float  # CPU the whole machine spent meanwhile (all processes, all cores)
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux 3.5+: /proc/PID/task/TID/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    return out


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> int:
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_bytes(p)
        todo.extend(_children(p))
    return total


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / TICKS


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_for_quiet(max_wait: float, *, cores: float = 0.3, window: float = 2.0) -> float:
    """Wait (at most `max_wait` s) until other processes use under `cores` for `window` s.

    Returns the CPU (in cores) the rest of the machine used in the last window.
    """
    deadline = time.monotonic() + max_wait
    while True:
        b0, s0, t0 = machine_busy_s(), self_cpu_s(), time.monotonic()
        time.sleep(window)
        used = (machine_busy_s() - b0 - (self_cpu_s() - s0)) / (time.monotonic() - t0)
        if used < cores or time.monotonic() >= deadline:
            return used


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak, self.peak_at = 0, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.is_set():
            rss = tree_rss(self.pid)
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.perf_counter() - t0
            self.stop.wait(self.interval)


def run_measured(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_dir: Path,
    name: str,
    timeout: float | None = None,
    sample_interval: float = 0.1,
) -> ProcResult:
    """Run `cmd` to completion and measure it; its stdout/stderr go to files in `log_dir`."""
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = machine_busy_s()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=dict(env) if env else None, cwd=cwd, stdout=out, stderr=err
        )
        sampler = _Sampler(proc.pid, sample_interval)
        sampler.start()
        timer = None
        if timeout:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            wall = time.perf_counter() - t0
            sampler.stop.set()
            if timer:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    busy = machine_busy_s() - busy0
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ProcResult(
        returncode=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,  # Linux: kilobytes
        tree_peak_rss_mb=max(sampler.peak / 2**20, usage.ru_maxrss / 1024),
        tree_peak_at_s=sampler.peak_at,
        children_cpu_s=children_cpu,
        machine_busy_s=busy,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
