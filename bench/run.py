"""The benchmark, in one command: direct, nginx and sttgate side by side, under the same standard load.

    .venv/bin/python -m bench.run --full --profile --out bench/results/ --docs docs/benchmarks.md

Each mode starts its relay, then steps the number of standard streams (20 × 1,600-byte frames/s up, ~4 text
frames/s down per stream), measuring round trips at the client and the relay's CPU and RSS from /proc; then
it measures session opening (latency one at a time, then throughput under concurrency). The overload mode measures
a gateway at its admission limit while as many more sessions are tried; --profile samples the gateway with py-spy.
Every figure is also written as a ratio to the direct connection (added latency) and to nginx (the targets of
docs/benchmarks.md) where that applies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat, report, spy
from bench.loadgen import worker_main
from bench.pull import run_pull
from bench.targets import (
    AiohttpFloor,
    Direct,
    Nginx,
    Sttgate,
    Target,
    TargetUnavailable,
    Upstream,
    pinned,
    postgres_reachable,
)
from bench.upstream import raise_nofile
from bench.wire import ECHO_EVERY

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Plan:
    """How long and how hard: every run is bounded by these numbers."""

    steps: list[int]
    window: float  # seconds measured per step
    settle: float  # seconds between reaching a step and measuring it
    ramp_rate: float  # sessions opened per second while ramping, over all generators
    handshake_seconds: float
    handshake_concurrency: int  # per generator process, for the sessions/s figure
    reference_step: int  # the step the single-step modes run (CPU per frame, metering overhead)
    pull_steps: list[int] = field(default_factory=list)  # concurrent pull tasks
    modes: list[str] = field(default_factory=list)
    # The overload mode's admission limit L (it opens L streams, then tries L more); None: the reference step.
    overload_limit: int | None = None


QUICK = Plan(
    steps=[1, 20],
    window=1.5,
    settle=0.3,
    ramp_rate=200,
    handshake_seconds=1.0,
    handshake_concurrency=4,
    reference_step=20,
    pull_steps=[2],
    modes=["direct", "nginx", "sttgate", "sttgate-overload"],
)
FULL = Plan(
    steps=[1, 100, 500, 1000, 1500, 2000],
    window=10.0,
    settle=3.0,
    ramp_rate=400,
    handshake_seconds=5.0,
    handshake_concurrency=32,
    reference_step=1000,
    pull_steps=[5, 20, 50],
    modes=[
        "direct",
        "nginx",
        "sttgate",
        "sttgate-pg",
        "sttgate-nometer",
        "sttgate-overload",
        "sttgate-2w",
        "sttgate-pull",
        "aiohttp",
    ],
)
ALL_MODES = FULL.modes
# The modes --profile samples at the reference step (one gateway process per database).
PROFILED_MODES = ("sttgate", "sttgate-pg")
# A step is "saturated" (and the mode stops stepping) past this p99 round trip or below this delivery ratio.
SATURATED_P99_MS = 1000.0
MIN_DELIVERY = 0.9
MIN_ECHOES_FOR_DELIVERY = 50


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values)) - 1))]


def _floats(chunks: list[bytes]) -> list[float]:
    values = array("d")
    for chunk in chunks:
        values.frombytes(chunk)
    return sorted(values)


def _merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for res in results:
        for key, count in res.get("errors", {}).items():
            merged[key] = merged.get(key, 0) + count
    return merged


class Generators:
    """The load generator processes (multiprocessing, spawn), each an asyncio loop with many streams."""

    def __init__(self, count: int, cpu: int | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.cpu = cpu
        self.conns = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cpu), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def call(self, name: str, per_worker: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send one command to every generator and wait for all answers."""
        for conn, kwargs in zip(self.conns, per_worker, strict=True):
            conn.send((name, kwargs))
        results = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise RuntimeError(f"load generator did not answer {name!r} within {timeout:.0f} s")
            results.append(conn.recv())
        return results

    def split(self, total: int) -> list[int]:
        k = len(self.conns)
        return [total // k + (1 if i < total % k else 0) for i in range(k)]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit", {}))
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()


def measure_step(
    target: Target,
    gens: Generators,
    upstream: Upstream,
    plan: Plan,
    n: int,
    baseline_rss: int,
    harness_pinned: bool,
    excess: int = 0,
) -> dict[str, Any]:
    """Bring the open streams to ``n``, let them settle, then measure one window; with ``excess``, try to open that
    many more sessions during the window, spread evenly over it (what an admission limit should refuse)."""
    ramp_timeout = 60 + n / plan.ramp_rate * 2
    opened = gens.call(
        "target",
        [
            {"url": target.url, "headers": target.headers, "n": k, "rate": plan.ramp_rate / len(gens.conns)}
            for k in gens.split(n)
        ],
        ramp_timeout,
    )
    time.sleep(plan.settle)
    # PostgreSQL works in its own server processes (all of them are counted, other clients included); SQLite works
    # inside the gateway and is part of the relay's CPU.
    db_pids = procstat.pids_named("postgres") if str(getattr(target, "database_url", "")).startswith("postgres") else []
    relay0, up0, gen0 = procstat.sample(target.pids), procstat.sample(upstream.pids), procstat.sample(gens.pids)
    db0 = procstat.cpu_by_pid(db_pids)
    busy0, total0 = procstat.machine_busy()
    t0 = time.monotonic()
    per_worker: list[dict[str, Any]] = [{"seconds": plan.window} for _ in gens.conns]
    if excess:
        spread = 0.9 * plan.window
        for kwargs, k in zip(per_worker, gens.split(excess), strict=True):
            kwargs["excess"] = {"url": target.url, "headers": target.headers, "n": k, "rate": max(k, 1) / spread}
    results = gens.call("measure", per_worker, plan.window + 60)
    elapsed = time.monotonic() - t0
    relay1, up1, gen1 = procstat.sample(target.pids), procstat.sample(upstream.pids), procstat.sample(gens.pids)
    db_cpu = procstat.cpu_since(db0)
    busy1, total1 = procstat.machine_busy()
    ncpu = os.cpu_count() or 1
    machine_busy = (busy1 - busy0) / (total1 - total0) * 100 * ncpu if total1 > total0 else None
    ours = relay1.cpu + up1.cpu + gen1.cpu - relay0.cpu - up0.cpu - gen0.cpu

    rtts = _floats([r["rtts_us"] for r in results])
    lateness = _floats([r["lateness_ms"] for r in results])
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    frames = sent + received
    relay_cpu = relay1.cpu - relay0.cpu
    step: dict[str, Any] = {
        "streams": n,
        "open": sum(r["open"] for r in results),
        "open_errors": _merge_errors(opened),
        "seconds": round(elapsed, 3),
        "frames_sent": sent,
        "texts_received": received,
        "delivery": round(received * ECHO_EVERY / sent, 4) if sent else None,
        "rtt_samples": len(rtts),
        "rtt_ms": {f"p{q}": _ms(percentile(rtts, q)) for q in (50, 99, 99.9)},
        "relay_cpu_percent": round(relay_cpu / elapsed * 100, 1) if target.pids else None,
        "relay_cpu_us_per_frame": round(relay_cpu / frames * 1e6, 2) if target.pids and frames else None,
        "relay_rss_mb": round(relay1.rss / 2**20, 1) if target.pids else None,
        "relay_rss_kb_per_stream": round((relay1.rss - baseline_rss) / n / 1024, 1)
        if target.pids and n >= 100
        else None,
        "database_cpu_percent": round(db_cpu / elapsed * 100, 1) if db_pids else None,
        "database_cpu_us_per_frame": round(db_cpu / frames * 1e6, 2) if db_pids and frames else None,
        "upstream_cpu_percent": round((up1.cpu - up0.cpu) / elapsed * 100, 1),
        "generator_cpu_percent": round((gen1.cpu - gen0.cpu) / elapsed * 100, 1),
        "machine_busy_percent": round(machine_busy, 1) if machine_busy is not None else None,
        "other_processes_cpu_percent": round(machine_busy - ours / elapsed * 100, 1) if machine_busy else None,
        "generator_lateness_p99_ms": round(percentile(lateness, 99) or 0.0, 2),
        "generator_dropped_ticks": sum(r["dropped_ticks"] for r in results),
        # Bytes a generator could not hand to the kernel at once: the relay pushing back.
        "generator_max_write_buffer_bytes": max(r["max_write_buffer"] for r in results),
        "errors": _merge_errors(results),
    }
    if excess:
        refused = _floats([r["excess"]["refused_ms"] for r in results])
        step["excess"] = {
            "attempts": sum(r["excess"]["attempts"] for r in results),
            "attempts_per_second": round(excess / (0.9 * plan.window), 1),
            "outcome": _merge_errors([{"errors": r["excess"]["outcome"]} for r in results]),
            "refused_503": len(refused),
            "time_to_503_ms": {
                q: round(v, 2) if (v := percentile(refused, p)) is not None else None
                for q, p in (("p50", 50), ("p99", 99), ("max", 100))
            },
        }
    p99 = step["rtt_ms"]["p99"]
    harness = step["upstream_cpu_percent"] + step["generator_cpu_percent"]
    # The harness has one core when pinned (the machine otherwise); past 85 % of it, or with the whole machine
    # over 95 % busy, latency is the machine's, not the relay's.
    step["machine_bound"] = bool(harness > 85 * (1 if harness_pinned else ncpu) or (machine_busy or 0) > 95 * ncpu)
    # A window of a few frames can end between a frame and its echo: below MIN_ECHOES_FOR_DELIVERY expected echoes
    # (1 stream in a 1.5 s --quick window: 6), a missing one is the window's edge, not the relay.
    short_of_echoes = (step["delivery"] or 0) < MIN_DELIVERY and sent >= MIN_ECHOES_FOR_DELIVERY * ECHO_EVERY
    step["saturated"] = bool(step["open"] < 0.98 * n or short_of_echoes or p99 is None or p99 > SATURATED_P99_MS)
    return step


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def measure_handshakes(target: Target, gens: Generators, plan: Plan, concurrency: int) -> dict[str, Any]:
    """Open-and-close sessions back to back; the relay's CPU per session is read over the same interval."""
    relay0 = procstat.sample(target.pids)
    kwargs = {"url": target.url, "headers": target.headers, "seconds": plan.handshake_seconds}
    results = gens.call(
        "handshake", [{**kwargs, "concurrency": concurrency}] * len(gens.conns), plan.handshake_seconds + 60
    )
    relay1 = procstat.sample(target.pids)
    times = _floats([r["times_ms"] for r in results])
    elapsed = max(r["elapsed"] for r in results)
    cpu = relay1.cpu - relay0.cpu
    return {
        "concurrency": concurrency * len(gens.conns),
        "sessions": len(times),
        "sessions_per_second": round(len(times) / elapsed, 1) if elapsed else None,
        "open_ms": {f"p{q}": round(v, 3) if (v := percentile(times, q)) is not None else None for q in (50, 99)},
        "relay_cpu_ms_per_session": round(cpu / len(times) * 1000, 3) if target.pids and times else None,
        "relay_cpu_percent": round(cpu / elapsed * 100, 1) if target.pids and elapsed else None,
        "errors": _merge_errors(results),
    }


@dataclass
class Profiling:
    """``--profile``: where the samples go, and how py-spy runs (on the load generators' core)."""

    directory: Path
    native: bool
    cpus: set[int] | None


def run_mode(
    target: Target,
    gens: Generators,
    upstream: Upstream,
    plan: Plan,
    steps: list[int],
    profiling: Profiling | None = None,
) -> dict[str, Any]:
    """One relay: warm up, step the streams, then the handshake figures; always stops what it started. With
    ``profiling``, an extra window at the reference step is sampled with py-spy (after the measured one)."""
    out: dict[str, Any] = {"name": target.name, "steps": [], "handshake": None}
    started = time.monotonic()
    try:
        target.start()
        out["info"] = dict(target.info)
        # Warm-up: first sessions pay imports, database connections and allocator growth.
        gens.call(
            "handshake",
            [{"url": target.url, "headers": target.headers, "seconds": 0.5, "concurrency": 2}] * len(gens.conns),
            60,
        )
        time.sleep(0.5)
        baseline = procstat.sample(target.pids)
        out["relay_idle_rss_mb"] = round(baseline.rss / 2**20, 1) if target.pids else None
        for n in steps:
            step = measure_step(target, gens, upstream, plan, n, baseline.rss, gens.cpu is not None)
            out["steps"].append(step)
            print(_step_line(target.name, step), flush=True)
            if profiling and n == plan.reference_step and target.pids:
                out["profile"] = {"streams": n, **profile_window(target, plan, profiling)}
            if step["saturated"]:
                break
        gens.call("close_all", [{}] * len(gens.conns), 120)
        time.sleep(0.5)
        out["handshake"] = {
            "latency": measure_handshakes(target, gens, plan, 1),
            "throughput": measure_handshakes(target, gens, plan, plan.handshake_concurrency),
        }
        print(_handshake_line(target.name, out["handshake"]), flush=True)
    except TargetUnavailable as exc:
        out["unavailable"] = str(exc)
        print(f"{target.name}: not measured: {exc}", flush=True)
    except Exception as exc:  # one broken relay must not lose the other modes' figures
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{target.name}: failed: {out['error']}", flush=True)
    finally:
        try:
            gens.call("close_all", [{}] * len(gens.conns), 120)
        finally:
            target.stop()
    out["wall_seconds"] = round(time.monotonic() - started, 1)
    return out


def profile_window(target: Target, plan: Plan, profiling: Profiling) -> dict[str, Any]:
    """Sample the gateway for one window under the load already running."""
    profiling.directory.mkdir(parents=True, exist_ok=True)
    raw = profiling.directory / f"{target.name}.pyspy.txt"
    prof = spy.record(target.pids[0], plan.window, raw, profiling.native, pinned(profiling.cpus))
    print(f"{target.name:>16} profile: {prof.get('unavailable') or prof.get('groups')}", flush=True)
    return {**prof, "raw": str(raw) if raw.exists() else None}


def run_overload_mode(target: Target, gens: Generators, upstream: Upstream, plan: Plan, limit: int) -> dict[str, Any]:
    """A gateway started with admission limit ``limit``: ``limit`` standard streams measured alone, then measured
    again while as many more sessions are tried (2× the admitted load); always stops what it started."""
    out: dict[str, Any] = {"name": target.name, "steps": [], "handshake": None}
    started = time.monotonic()
    try:
        target.start()
        out["info"] = dict(target.info)
        gens.call(
            "handshake",
            [{"url": target.url, "headers": target.headers, "seconds": 0.5, "concurrency": 2}] * len(gens.conns),
            60,
        )
        time.sleep(0.5)
        baseline = procstat.sample(target.pids)
        pinned = gens.cpu is not None
        # The warm-up's sessions may still hold places for a moment after their clients saw the close: open the L
        # streams first, topping up what was refused meanwhile, so that the limit is exactly full.
        kwargs = {"url": target.url, "headers": target.headers, "rate": plan.ramp_rate / len(gens.conns)}
        for _ in range(10):
            per_worker = [{**kwargs, "n": k} for k in gens.split(limit)]
            opened = gens.call("target", per_worker, 60 + limit / plan.ramp_rate * 2)
            if sum(r["open"] for r in opened) >= limit:
                break
            time.sleep(0.2)
        before = measure_step(target, gens, upstream, plan, limit, baseline.rss, pinned)
        print(_step_line(f"{target.name} alone", before), flush=True)
        during = measure_step(target, gens, upstream, plan, limit, baseline.rss, pinned, excess=limit)
        print(_step_line(f"{target.name} +{limit}", during), flush=True)
        print(f"{target.name:>16} excess: {during['excess']}", flush=True)
        out["overload"] = {"limit": limit, "before": before, "during": during}
    except TargetUnavailable as exc:
        out["unavailable"] = str(exc)
        print(f"{target.name}: not measured: {exc}", flush=True)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{target.name}: failed: {out['error']}", flush=True)
    finally:
        try:
            gens.call("close_all", [{}] * len(gens.conns), 120)
        finally:
            target.stop()
    out["wall_seconds"] = round(time.monotonic() - started, 1)
    return out


def run_pull_mode(target: Target, plan: Plan, helper_cpus: set[int] | None) -> dict[str, Any]:
    """Pull tasks instead of pushed streams; always stops the gateway it started."""
    assert isinstance(target, Sttgate)
    try:
        target.start()
        return run_pull(target, plan.pull_steps, plan.window, plan.settle + 2.0, helper_cpus)
    except TargetUnavailable as exc:
        print(f"{target.name}: not measured: {exc}", flush=True)
        return {"name": target.name, "unavailable": str(exc), "steps": []}
    except Exception as exc:
        print(f"{target.name}: failed: {type(exc).__name__}: {exc}", flush=True)
        return {"name": target.name, "error": f"{type(exc).__name__}: {exc}", "steps": []}
    finally:
        target.stop()


def _step_line(name: str, s: dict[str, Any]) -> str:
    r = s["rtt_ms"]
    db = "" if s["database_cpu_percent"] is None else f"PostgreSQL {s['database_cpu_percent']} %, "
    return (
        f"{name:>16} {s['streams']:>5} streams: rtt p50/p99/p99.9 {r['p50']}/{r['p99']}/{r['p99.9']} ms, "
        f"relay {s['relay_cpu_percent']} % CPU {s['relay_cpu_us_per_frame']} µs/frame {s['relay_rss_mb']} MB, "
        f"upstream {s['upstream_cpu_percent']} %, generators {s['generator_cpu_percent']} %, {db}"
        f"machine {s['machine_busy_percent']} %, delivery {s['delivery']}"
        f"{' SATURATED' if s['saturated'] else ''}{' MACHINE-BOUND' if s['machine_bound'] else ''} {s['errors'] or ''}"
    )


def _handshake_line(name: str, h: dict[str, Any]) -> str:
    lat, thr = h["latency"], h["throughput"]
    return (
        f"{name:>16} handshakes: open p50/p99 {lat['open_ms']['p50']}/{lat['open_ms']['p99']} ms; "
        f"{thr['sessions_per_second']} sessions/s at concurrency {thr['concurrency']}, "
        f"relay {thr['relay_cpu_ms_per_session']} ms CPU/session {thr['errors'] or ''}"
    )


def build_target(
    mode: str,
    upstream: Upstream,
    relay_cpus: set[int] | None,
    pg_url: str,
    prepaid: bool = True,
    overload_limit: int = 0,
) -> Target:
    """The relay for a mode name."""
    if mode == "direct":
        return Direct(upstream)
    if mode == "nginx":
        return Nginx(upstream, cpus=relay_cpus)
    if mode == "aiohttp":
        return AiohttpFloor(upstream, cpus=relay_cpus)
    if mode == "sttgate":
        return Sttgate(upstream, mode, cpus=relay_cpus, prepaid=prepaid)
    if mode == "sttgate-nometer":
        return Sttgate(upstream, mode, metering=False, cpus=relay_cpus, prepaid=prepaid)
    if mode == "sttgate-pg":
        if reason := postgres_reachable(pg_url):
            raise TargetUnavailable(reason)
        return Sttgate(upstream, mode, database_url=pg_url, cpus=relay_cpus, prepaid=prepaid)
    if mode == "sttgate-overload":
        return Sttgate(upstream, mode, cpus=relay_cpus, prepaid=prepaid, admission_limit=overload_limit)
    if mode == "sttgate-2w":
        return Sttgate(upstream, mode, workers=2, cpus=None, prepaid=prepaid)
    if mode == "sttgate-pull":
        # FFmpeg, the source and the webhook sink are all on 127.0.0.1: the operator's switch for private addresses.
        env = {"STTGATE_PULL_ALLOW_PRIVATE": "1"}
        return Sttgate(upstream, mode, cpus=relay_cpus, prepaid=prepaid, extra_env=env)
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(ALL_MODES)}")


def mode_steps(mode: str, plan: Plan) -> list[int]:
    """Full stepping for the references and for both databases; the variants only at the steps they are compared on."""
    if mode in ("direct", "nginx", "sttgate", "sttgate-pg"):
        return plan.steps
    if mode == "sttgate-nometer":
        return [plan.reference_step]
    return sorted({plan.reference_step, plan.steps[-1]})


def machine() -> dict[str, Any]:
    """The conditions of the run, printed with every figure."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx_version = None
    if os.path.exists(nginx):
        nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    with open("/proc/loadavg") as fh:
        loadavg = fh.read().split()[:3]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": nginx_version,
        "loadavg_at_start": loadavg,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every mode in one process group, write results.json, report.md and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="seconds: steps 1 and 20 streams (the smoke test)")
    size.add_argument("--full", action="store_true", help="about 12 minutes: steps up to 2,000 streams")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for results.json etc.")
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(ALL_MODES)}")
    parser.add_argument("--steps", help="comma-separated stream counts (overrides the plan)")
    parser.add_argument("--window", type=float, help="seconds measured per step (overrides the plan)")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--upstreams", type=int, default=1, help="minimal upstream processes")
    parser.add_argument("--no-pin", action="store_true", help="do not pin relay to CPU 0 and load to CPU 1")
    parser.add_argument("--pg-url", default=os.environ.get("STTGATE_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--postpaid", action="store_true", help="bench account postpaid (default: prepaid)")
    parser.add_argument(
        "--overload-limit", type=int, help="admission limit L of the overload mode (default: the reference step)"
    )
    parser.add_argument("--docs", type=Path, help="rewrite the generated section of this Markdown file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"sample {' and '.join(PROFILED_MODES)} with py-spy for one more window at the reference step",
    )
    parser.add_argument(
        "--profile-python-only",
        action="store_true",
        help="py-spy without --native (C and kernel time then counts for the Python function calling it)",
    )
    args = parser.parse_args(argv)

    base = FULL if args.full else QUICK
    plan = replace(base, steps=list(base.steps), pull_steps=list(base.pull_steps), modes=list(base.modes))
    if args.modes:
        plan.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.steps:
        plan.steps = [int(s) for s in args.steps.split(",")]
        plan.reference_step = max((s for s in plan.steps if s <= plan.reference_step), default=plan.steps[0])
    if args.window:
        plan.window = args.window
    plan.overload_limit = args.overload_limit or plan.reference_step
    for mode in plan.modes:
        if mode not in ALL_MODES:
            parser.error(f"unknown mode {mode!r}")
    if "direct" not in plan.modes:
        plan.modes.insert(0, "direct")  # every added figure is relative to it

    raise_nofile()
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    relay_cpus, load_cpu = ({0}, 1) if pin else (None, None)
    results: dict[str, Any] = {
        "kind": "full" if args.full else "quick",
        "machine": machine(),
        "plan": asdict(plan),
        "setup": {
            "generators": args.generators,
            "upstreams": args.upstreams,
            "pinning": "relay on CPU 0; generators and upstream on CPU 1" if pin else "none",
        },
        "modes": {},
    }
    profiling = (
        Profiling(args.out / "profiles", not args.profile_python_only, {load_cpu} if load_cpu is not None else None)
        if args.profile
        else None
    )
    upstream = Upstream(procs=args.upstreams, cpus={load_cpu} if load_cpu is not None else None)
    gens = Generators(args.generators, load_cpu)
    started = time.monotonic()
    try:
        upstream.start()
        for mode in plan.modes:
            try:
                target = build_target(
                    mode,
                    upstream,
                    relay_cpus,
                    args.pg_url,
                    prepaid=not args.postpaid,
                    overload_limit=plan.overload_limit,
                )
            except TargetUnavailable as exc:
                results["modes"][mode] = {"name": mode, "unavailable": str(exc), "steps": [], "handshake": None}
                print(f"{mode}: not measured: {exc}", flush=True)
                continue
            if mode == "sttgate-pull":
                results["pull"] = run_pull_mode(target, plan, {load_cpu} if load_cpu is not None else None)
                continue
            if mode == "sttgate-overload":
                results["modes"][mode] = run_overload_mode(target, gens, upstream, plan, plan.overload_limit)
            else:
                results["modes"][mode] = run_mode(
                    target, gens, upstream, plan, mode_steps(mode, plan), profiling if mode in PROFILED_MODES else None
                )
                if "profile" in results["modes"][mode]:
                    results.setdefault("profiles", {})[mode] = results["modes"][mode].pop("profile")
            if "error" in results["modes"][mode]:
                gens.close()  # a generator may still be busy with the failed command: start afresh
                gens = Generators(args.generators, load_cpu)
    finally:
        gens.close()
        upstream.stop()
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = report.summarize(results)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "report.md").write_text(markdown)
    plot_path = (args.docs.parent / "benchmarks.png") if args.docs else (args.out / "benchmarks.png")
    try:
        from bench.plot import plot

        plot(results, plot_path)
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
    if args.docs:
        report.update_docs(args.docs, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
