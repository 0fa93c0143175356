"""CPU and memory of process trees, read from /proc (per-thread run time; resident set size)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. nginx workers, ``sttgate serve --workers N``)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        pids.extend(_children(pids[i]))
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), 0 if it is gone.

    Read from each thread's schedstat (nanoseconds) rather than stat's utime+stime (10 ms ticks), so that a
    window of a few seconds at a few streams is still measurable; falls back to stat without schedstats.
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_BYTES
    except OSError:
        return 0


@dataclass
class Sample:
    """CPU seconds and RSS of a group of process trees at one instant."""

    cpu: float
    rss: int


def sample(roots: list[int]) -> Sample:
    """Sum over the trees of ``roots``; children are re-listed each time so forked workers are counted."""
    pids = {p for root in roots for p in tree(root)}
    return Sample(sum(cpu_seconds(p) for p in pids), sum(rss_bytes(p) for p in pids))


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` (no children), for :func:`cpu_since`."""
    return {p: cpu_seconds(p) for p in pids}


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds used since ``before`` by the processes still running: one that ended meanwhile (a PostgreSQL
    backend of another client) would otherwise count its whole past as negative."""
    total = 0.0
    for pid, cpu in before.items():
        now = cpu_seconds(pid)
        if now >= cpu:
            total += now - cpu
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores; includes other tenants."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    idle = fields[3] + fields[4]
    total = sum(fields)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def pids_named(prefix: str) -> list[int]:
    """Every process whose command name starts with ``prefix`` (e.g. the PostgreSQL server's backends)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().startswith(prefix):
                        out.append(int(entry))
            except OSError:
                continue
    return out
