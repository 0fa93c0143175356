"""Hold a steady load on one relay and run a command against its processes meanwhile (perf, py-spy, strace).

    .venv/bin/python -m bench.hold MODE STREAMS SECONDS [-- COMMAND ...]
    .venv/bin/python -m bench.hold MODE sessions:CONCURRENCY SECONDS [-- COMMAND ...]

``MODE`` is one of ``bench.run``'s modes (``nginx``, ``sttgate``, ``sttgate-nometer``, ``sttgate-pg``, ``aiohttp``,
...). The relay is started and pinned as ``bench.run`` does (relay on CPU 0, the load on CPU 1), then held under one
of two loads for ``SECONDS``: ``STREAMS`` standard streams (opened first, measured after 3 s of settling), or, with
``sessions:C``, sessions opened and closed back to back, ``C`` at a time per generator (two generators). Meanwhile
``COMMAND`` runs; in it, ``{pids}`` is the relay's process ids and their children's, comma-separated, ``{pid}`` the
last of them (nginx's worker) and ``{seconds}`` the window. It prints the CPU per frame (or per session) and its user
and system parts, then the same for each thread of the relay's processes that ran (from ``/proc``: which thread, the
event loop's or a database driver's, spends it). For example, the system calls per frame of two relays::

    .venv/bin/python -m bench.hold nginx 500 10 -- perf stat -e raw_syscalls:sys_enter -p {pids} -- sleep {seconds}
    .venv/bin/python -m bench.hold sttgate 500 10 -- perf stat -e raw_syscalls:sys_enter -p {pids} -- sleep {seconds}

``PREPAID=0`` in the environment makes the account postpaid. Figures from a machine doing other work are noisy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from array import array
from pathlib import Path

from bench import procstat
from bench.run import DEFAULT_PG_URL, Generators, build_target
from bench.targets import Upstream


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _threads(pids: list[int]) -> dict[tuple[int, int], tuple[float, float]]:
    """User and system CPU seconds of every thread of ``pids``, by (process, thread) id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], tuple[float, float]] = {}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, tid)] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
    return out


def _apply(command: list[str], values: dict[str, str]) -> subprocess.Popen[bytes] | None:
    if not command:
        return None
    words = []
    for word in command:
        for key, value in values.items():
            word = word.replace(key, value)
        words.append(word)
    return subprocess.Popen(words)


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = argv[: argv.index("--")] if "--" in argv else argv
    if len(args) != 3 or not (args[1].isdigit() or args[1].removeprefix("sessions:").isdigit()):
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    mode, load, seconds = args[0], args[1], float(args[2])
    concurrency = int(load.removeprefix("sessions:")) if load.startswith("sessions:") else 0
    streams = 0 if concurrency else int(load)
    upstream = Upstream(procs=1, cpus={1})
    upstream.start()
    target = build_target(mode, upstream, {0}, DEFAULT_PG_URL, prepaid=os.environ.get("PREPAID", "1") == "1")
    gens = Generators(2, 1)
    try:
        target.start()
        warm = {"url": target.url, "headers": target.headers, "seconds": 0.5, "concurrency": 2}
        gens.call("handshake", [warm] * 2, 60)
        if streams:
            opening = [{"url": target.url, "headers": target.headers, "n": k, "rate": 200} for k in gens.split(streams)]
            gens.call("target", opening, 120)
            time.sleep(3)
        pids = list(target.pids) + [child for pid in target.pids for child in _children(pid)]
        threads0 = _threads(pids)
        cpu0 = procstat.sample(target.pids)
        started = time.monotonic()
        proc = _apply(command, {"{pids}": ",".join(map(str, pids)), "{pid}": str(pids[-1]), "{seconds}": str(seconds)})
        if concurrency:
            burst = {"url": target.url, "headers": target.headers, "seconds": seconds, "concurrency": concurrency}
            results = gens.call("handshake", [burst] * 2, seconds + 60)
            count = sum(len(array("d", r["times_ms"])) for r in results)
            unit, scale, what = "session", 1e3, f"sessions:{concurrency} ({count / seconds:.0f} sessions/s)"
        else:
            results = gens.call("measure", [{"seconds": seconds}] * 2, seconds + 60)
            count = sum(r["sent"] + r["received"] for r in results)
            unit, scale, what = "frame", 1e6, f"{streams} streams"
        elapsed = time.monotonic() - started
        cpu1 = procstat.sample(target.pids)
        threads1 = _threads(pids)
        if proc is not None:
            proc.wait()
        per = "us" if unit == "frame" else "ms"
        cpu = cpu1.cpu - cpu0.cpu
        user = sum(u for u, _ in threads1.values()) - sum(u for u, _ in threads0.values())
        system = sum(s for _, s in threads1.values()) - sum(s for _, s in threads0.values())
        print(
            f"{mode} {what}: {count} {unit}s, {cpu / count * scale:.3f} {per} CPU per {unit}"
            f" (user {user / count * scale:.3f}, system {system / count * scale:.3f}),"
            f" {cpu / elapsed * 100:.1f} % of a core; pids {pids}",
            flush=True,
        )
        for (pid, tid), (u1, s1) in sorted(threads1.items()):
            u0, s0 = threads0.get((pid, tid), (0.0, 0.0))
            if u1 - u0 + s1 - s0 > 0:
                name = "main thread" if tid == pid else f"thread {tid}"
                print(
                    f"  pid {pid} {name}: user {(u1 - u0) / count * scale:.3f}, system {(s1 - s0) / count * scale:.3f}"
                    f" {per} per {unit}",
                    flush=True,
                )
    finally:
        gens.call("close_all", [{}] * 2, 120)
        target.stop()
        upstream.stop()
        gens.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
