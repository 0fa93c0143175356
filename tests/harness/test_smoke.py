"""Smoke test of the benchmark harness: a seconds-long run produces a well-formed result (never a speed)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import report, spy  # noqa: E402 - bench/ is a top-level directory of the repository, not a package

QUANTILES = ("p50", "p99", "p99.9")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict:
    """One quick run of the benchmark for every test here. pytest-xdist may give this module's tests to several
    workers, each with its own module fixture: they share the run through the session's common temporary directory,
    the first one under the lock making it (two runs at once also measured each other)."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    out = shared / "bench-smoke"
    with open(shared / "bench-smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "results.json").exists():
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.run",
                    "--quick",
                    "--modes",
                    "direct,sttgate,sttgate-overload,aiohttp",
                    "--out",
                    str(out),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").read_text().startswith(report.BEGIN_MARK)
    return json.loads((out / "results.json").read_text())


def _well_formed_steps(mode: dict) -> None:
    assert mode["steps"], mode
    for step in mode["steps"]:
        assert step["open"] == step["streams"], step
        assert step["frames_sent"] > 0 and step["texts_received"] > 0
        assert step["rtt_samples"] > 0
        values = [step["rtt_ms"][q] for q in QUANTILES]
        assert all(v is not None and v > 0 for v in values)
        assert values == sorted(values)
        assert not step["errors"], step["errors"]


def test_direct_is_well_formed(results: dict) -> None:
    assert results["machine"]["nproc"] >= 1
    direct = results["modes"]["direct"]
    _well_formed_steps(direct)
    hs = direct["handshake"]
    assert hs["latency"]["sessions"] > 0 and hs["throughput"]["sessions"] > 0
    assert not hs["throughput"]["errors"]


def test_sttgate_is_measured_or_says_why(results: dict) -> None:
    mode = results["modes"]["sttgate"]
    assert "error" not in mode, mode["error"]
    if mode.get("unavailable"):
        return
    _well_formed_steps(mode)
    for step in mode["steps"]:
        assert step["relay_cpu_percent"] is not None and step["relay_rss_mb"] > 0
        assert set(step["added_ms"]) == set(QUANTILES)
    assert mode["handshake"]["throughput"]["sessions"] > 0
    summary = results["summary"]["modes"]["sttgate"]
    assert "capacity" in summary  # None in --quick: no step has the 1,000 round trips a p99 needs
    assert {t["verdict"] for t in results["summary"]["targets"]} <= {"met", "missed", "not measured", "not determined"}


def test_the_floor_relays_both_ways(results: dict) -> None:
    """The floor of the stack (``bench/floor.py``: aiohttp alone, no gateway logic) carries the standard streams both
    ways and opens sessions, so its figures stand beside sttgate's."""
    mode = results["modes"]["aiohttp"]
    assert "error" not in mode, mode.get("error")
    _well_formed_steps(mode)
    for step in mode["steps"]:
        assert step["relay_cpu_percent"] is not None and step["relay_rss_mb"] > 0
    throughput = mode["handshake"]["throughput"]
    assert throughput["sessions"] > 0 and not throughput["errors"], throughput


def test_overload_refuses_every_excess_session_with_503(results: dict) -> None:
    """The overload mode: a gateway at its admission limit (the reference step) answers every one of as many more
    sessions 503 gateway_overloaded, and the streams it admitted stay open and measured."""
    mode = results["modes"]["sttgate-overload"]
    assert "error" not in mode, mode["error"]
    if mode.get("unavailable"):
        return
    limit = results["plan"]["reference_step"]
    o = results["summary"]["overload"]
    assert (o["limit"], o["admitted_open"], o["attempts"]) == (limit, limit, limit)
    refused = (o["gateway_overloaded"], o["refused_503"], o["admitted_excess"], o["other_outcomes"])
    assert refused == (limit, limit, 0, {})
    assert o["time_to_503_ms"]["p50"] <= o["time_to_503_ms"]["p99"] <= o["time_to_503_ms"]["max"]
    assert mode["overload"]["during"]["open"] == limit and not mode["overload"]["during"]["errors"]
    rows = [t for t in results["summary"]["targets"] if "2× the admitted load" in t["target"]]
    assert len(rows) == 2 and all(t["value"] is not None for t in rows)


def test_capacity_ratio_to_nginx_is_met_missed_or_undetermined_by_its_bounds() -> None:
    exact = {"streams": 900, "bound": "interpolated"}
    nginx = {"streams": 1000, "bound": "interpolated"}
    assert report.capacity_verdict(exact, nginx) == (0.9, "met")
    assert report.capacity_verdict({"streams": 500, "bound": "interpolated"}, nginx) == (0.5, "missed")
    # nginx never passed 5 ms: its capacity is a lower bound, so a ratio under 0.9 is a miss, over it unknown
    assert report.capacity_verdict({"streams": 500, "bound": "interpolated"}, {**nginx, "bound": "at_least"})[1] == (
        "missed"
    )
    assert report.capacity_verdict(exact, {**nginx, "bound": "machine"})[1] == "not determined"
    # sttgate passed 5 ms below its first counted step: an upper bound
    below = {"streams": 0, "bound": "below", "next_step_failed": 100}
    assert report.capacity_verdict(below, nginx) == (0.1, "missed")
    assert report.capacity_verdict({"streams": 1000, "bound": "at_least"}, nginx) == (1.0, "met")
    assert report.capacity_verdict(None, nginx) == (None, "not measured")


def test_profile_groups_own_time_and_drops_waiting_threads() -> None:
    root = 'process 1:"sttgate serve";run (uvloop/__init__.py:92);Loop__run (loop.c:20313);uv__io_poll (linux.c:1546)'
    relay = f"{root};FrameSocket.data_received (sttgate/gateway/framesocket.py:141)"
    raw = "\n".join(
        [
            f"{root};epoll_pwait (libc.so.6) 500",  # waiting for sockets: idle
            f"{relay};ClientToProvider._run (sttgate/gateway/passthrough.py:164);UVStream__try_write (loop.c:1);"
            "write (libc.so.6) 40",
            f"{relay};FrameScanner.feed (sttgate/core/frames.py:80);_PyEval_EvalFrameDefault (libpython3.11.so) 20",
            f"{relay};Meter.binary (sttgate/providers/assemblyai.py:50) 10",
            f"{relay};Billing.add (sttgate/core/billing.py:99);PyObject_Malloc (libpython3.11.so) 10",
            "Thread.run (threading.py:982);_execute (aiosqlite/core.py:100);sqlite3VdbeExec (libsqlite3.so) 15",
            "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81);"
            "PyThread_acquire_lock_timed (libpython3.11.so);0x7f10 (libc.so.6) 300",  # a waiting thread
            "<lambda> (<string>:1) 5",
        ]
    )
    prof = spy.summarize(raw)
    assert (prof["samples"], prof["idle_samples"]) == (100, 800)
    assert prof["groups"] == {
        "event loop and kernel": 40.0,
        "frame scanner": 20.0,
        "database": 15.0,
        "metering": 10.0,
        "billing and session control": 10.0,
        "other": 5.0,
    }
    assert prof["in_system_calls_and_libc"] == 40.0
    top = {t["function"]: (t["percent"], t["group"]) for t in prof["top"]}
    assert top["write (libc.so.6)"] == (40.0, spy.LIBC)
    assert top["FrameScanner.feed (sttgate/core/frames.py)"] == (20.0, "frame scanner")
    assert top["Billing.add (sttgate/core/billing.py)"] == (10.0, "billing and session control")  # not the allocator
    assert top["sqlite3VdbeExec (libsqlite3.so)"] == (15.0, "database")


def test_capacity_interpolates_and_bounds() -> None:
    def step(n: int, added: float, machine_bound: bool = False) -> dict:
        return {"streams": n, "saturated": False, "machine_bound": machine_bound, "added_ms": {"p99": added}}

    assert report.capacity([step(500, 1.0), step(1000, 9.0)]) == {"streams": 750, "bound": "interpolated"}
    assert report.capacity([step(500, 1.0), step(1000, 2.0)]) == {"streams": 1000, "bound": "at_least"}
    assert report.capacity([step(500, 1.0), step(1000, 9.0, machine_bound=True)])["bound"] == "machine"
