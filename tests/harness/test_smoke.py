"""Smoke test of the benchmark harness: a seconds-long run produces a well-formed result (never a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402 - bench/ is a top-level directory of the repository, not a package

QUANTILES = ("p50", "p99", "p99.9")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--modes", "direct,sttgate", "--out", str(out)],
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


def test_capacity_interpolates_and_bounds() -> None:
    def step(n: int, added: float, machine_bound: bool = False) -> dict:
        return {"streams": n, "saturated": False, "machine_bound": machine_bound, "added_ms": {"p99": added}}

    assert report.capacity([step(500, 1.0), step(1000, 9.0)]) == {"streams": 750, "bound": "interpolated"}
    assert report.capacity([step(500, 1.0), step(1000, 2.0)]) == {"streams": 1000, "bound": "at_least"}
    assert report.capacity([step(500, 1.0), step(1000, 9.0, machine_bound=True)])["bound"] == "machine"
