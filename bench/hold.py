"""Hold N standard streams on one relay and run a command against its processes meanwhile (perf, py-spy, strace).

    .venv/bin/python -m bench.hold MODE STREAMS SECONDS [-- COMMAND ...]

``MODE`` is one of ``bench.run``'s modes (``nginx``, ``sttgate``, ``sttgate-nometer``, ``sttgate-pg``, ...). The
relay is started and pinned as ``bench.run`` does (relay on CPU 0, the load on CPU 1), ``STREAMS`` standard streams
are opened, and after 3 s of settling ``COMMAND`` starts while the streams are measured for ``SECONDS``; in it,
``{pids}`` is the relay's process ids and their children's, comma-separated, ``{pid}`` the last of them (nginx's
worker) and ``{seconds}`` the window. One line is printed: frames relayed, CPU per frame, and its user and system
parts (from ``/proc``). For example, the system calls per frame of two relays::

    .venv/bin/python -m bench.hold nginx 500 10 -- perf stat -e raw_syscalls:sys_enter -p {pids} -- sleep {seconds}
    .venv/bin/python -m bench.hold sttgate 500 10 -- perf stat -e raw_syscalls:sys_enter -p {pids} -- sleep {seconds}

``PREPAID=0`` in the environment makes the account postpaid. Figures from a machine doing other work are noisy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import procstat
from bench.run import DEFAULT_PG_URL, Generators, build_target
from bench.targets import Upstream


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _user_system(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` (every thread)."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = argv[: argv.index("--")] if "--" in argv else argv
    if len(args) != 3:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    mode, streams, seconds = args[0], int(args[1]), float(args[2])
    upstream = Upstream(procs=1, cpus={1})
    upstream.start()
    target = build_target(mode, upstream, {0}, DEFAULT_PG_URL, prepaid=os.environ.get("PREPAID", "1") == "1")
    gens = Generators(2, 1)
    try:
        target.start()
        warm = {"url": target.url, "headers": target.headers, "seconds": 0.5, "concurrency": 2}
        gens.call("handshake", [warm] * 2, 60)
        opening = [{"url": target.url, "headers": target.headers, "n": k, "rate": 200} for k in gens.split(streams)]
        gens.call("target", opening, 120)
        time.sleep(3)
        pids = list(target.pids) + [child for pid in target.pids for child in _children(pid)]
        user0, system0 = _user_system(pids)
        cpu0 = procstat.sample(target.pids)
        started = time.monotonic()
        values = {"{pids}": ",".join(map(str, pids)), "{pid}": str(pids[-1]), "{seconds}": str(seconds)}
        proc = None
        if command:
            words = []
            for word in command:
                for key, value in values.items():
                    word = word.replace(key, value)
                words.append(word)
            proc = subprocess.Popen(words)
        results = gens.call("measure", [{"seconds": seconds}] * 2, seconds + 60)
        elapsed = time.monotonic() - started
        cpu1 = procstat.sample(target.pids)
        user1, system1 = _user_system(pids)
        if proc is not None:
            proc.wait()
        frames = sum(r["sent"] + r["received"] for r in results)
        cpu = cpu1.cpu - cpu0.cpu
        print(
            f"{mode} {streams} streams: {frames} frames, {cpu / frames * 1e6:.2f} us CPU per frame"
            f" (user {(user1 - user0) / frames * 1e6:.2f}, system {(system1 - system0) / frames * 1e6:.2f}),"
            f" {cpu / elapsed * 100:.1f} % of a core; pids {pids}",
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
