"""Pull mode under load: N server-side tasks, each FFmpeg decoding an HTTP AAC stream in real time.

sttgate starts one FFmpeg per task; the gateway paces its 100 ms PCM chunks to the provider (the minimal upstream)
and posts the provider's messages to a webhook. The figures are the gateway's CPU and the FFmpeg processes' CPU
per pulled stream, read separately from /proc, and from them the pulled streams one core carries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import procstat
from bench.targets import Sttgate, TargetUnavailable, free_port, pinned, stop_process, wait_listening

SOURCE_SECONDS = 300
# A radio-like source: 44.1 kHz stereo AAC, which FFmpeg decodes, downmixes and resamples to 16 kHz mono.
SOURCE_ARGS = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={SOURCE_SECONDS}"]
SOURCE_CODEC = ["-ac", "2", "-c:a", "aac", "-b:a", "128k", "-f", "adts"]


def make_source(directory: Path) -> Path:
    """Encode the source once, with the FFmpeg sttgate itself uses (imageio-ffmpeg)."""
    import imageio_ffmpeg

    path = directory / "source.aac"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *SOURCE_ARGS, *SOURCE_CODEC, str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _split_cpu(root: int) -> tuple[float, float, int]:
    """(gateway CPU s, FFmpeg CPU s, FFmpeg processes) of the gateway's process tree."""
    gateway = ffmpeg = 0.0
    count = 0
    for pid in procstat.tree(root):
        cpu = procstat.cpu_seconds(pid)
        if _comm(pid).startswith("ffmpeg"):
            ffmpeg += cpu
            count += 1
        else:
            gateway += cpu
    return gateway, ffmpeg, count


def _post(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Authorization": key, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _hooks(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())["hooks"]


def run_pull(
    target: Sttgate, steps: list[int], window: float, settle: float, helper_cpus: set[int] | None
) -> dict[str, Any]:
    """Step the number of pull tasks; the gateway must already be started with private addresses allowed."""
    out: dict[str, Any] = {"name": "sttgate-pull", "info": {"source": "HTTP, AAC 44.1 kHz stereo 128 kb/s"}}
    with tempfile.TemporaryDirectory(prefix="sttgate-bench-pull-") as tmp:
        source = make_source(Path(tmp))
        port = free_port()
        helper = subprocess.Popen(
            [sys.executable, "-m", "bench.pullsrc", "--port", str(port), "--file", str(source)],
            preexec_fn=pinned(helper_cpus),
        )
        tasks: list[str] = []
        errors: dict[str, int] = {}
        start_url = target.base_url + "/api/v2/audio-stream/start"
        body = {
            "audio_url": f"http://127.0.0.1:{port}/audio",
            "callback_url": f"http://127.0.0.1:{port}/hook",
            "provider": "assemblyai",
            "sample_rate": 16000,
        }
        out["steps"] = []
        try:
            wait_listening(port, helper)
            for n in steps:
                while len(tasks) < n:
                    try:
                        tasks.append(_post(start_url, target.headers["Authorization"], body)["data"]["task_id"])
                    except urllib.error.HTTPError as exc:
                        if exc.code == 404:
                            raise TargetUnavailable("`sttgate serve` does not serve the pull routes (404)") from exc
                        name = f"start_{exc.code}"
                        errors[name] = errors.get(name, 0) + 1
                        if errors[name] > 10:
                            raise
                    except OSError as exc:
                        name = f"start_{type(exc).__name__}"
                        errors[name] = errors.get(name, 0) + 1
                        if errors[name] > 10:
                            raise
                time.sleep(settle)
                gw0, ff0, _ = _split_cpu(target.pids[0])
                hooks0, t0 = _hooks(port), time.monotonic()
                time.sleep(window)
                gw1, ff1, procs = _split_cpu(target.pids[0])
                elapsed = time.monotonic() - t0
                hooks = _hooks(port) - hooks0
                gw_pct, ff_pct = (gw1 - gw0) / elapsed * 100, (ff1 - ff0) / elapsed * 100
                per_stream = (gw_pct + ff_pct) / n
                step = {
                    "tasks": n,
                    "ffmpeg_processes": procs,
                    "gateway_cpu_percent": round(gw_pct, 1),
                    "ffmpeg_cpu_percent": round(ff_pct, 1),
                    "gateway_cpu_percent_per_stream": round(gw_pct / n, 3),
                    "ffmpeg_cpu_percent_per_stream": round(ff_pct / n, 3),
                    "streams_per_core": round(100 / per_stream) if per_stream else None,
                    "webhooks_per_second": round(hooks / elapsed, 1),
                    "errors": dict(errors),
                }
                out["steps"].append(step)
                print(
                    f"{'sttgate-pull':>16} {n:>5} tasks: gateway {step['gateway_cpu_percent']} %, FFmpeg "
                    f"{step['ffmpeg_cpu_percent']} % ({procs} processes), {step['streams_per_core']} streams/core, "
                    f"{step['webhooks_per_second']} webhooks/s {errors or ''}",
                    flush=True,
                )
        finally:
            stop_url = target.base_url + "/api/v2/audio-stream/stop"
            for task_id in tasks:
                try:
                    _post(stop_url, target.headers["Authorization"], {"task_id": task_id})
                except OSError:
                    errors["stop_failed"] = errors.get("stop_failed", 0) + 1
            stop_process(helper)
    return out
