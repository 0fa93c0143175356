"""What a Prometheus counter increment costs, in one process and in multiprocess mode (``serve --workers N``).

Run: ``.venv/bin/python bench/bench_metrics.py``. Prints nanoseconds per ``inc()``; asserts nothing. Each mode runs in
a fresh interpreter, because prometheus-client chooses its value class when it is first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

INCS = 1_000_000

_MEASURE = f"""
import timeit
from prometheus_client import CollectorRegistry, Counter
child = Counter("c", "c", ["provider", "direction"], registry=CollectorRegistry()).labels("assemblyai", "up")
plain = 0
def plain_inc():
    global plain
    plain += 1
best = min(timeit.repeat(child.inc, number={INCS}, repeat=5)) / {INCS} * 1e9
ints = min(timeit.repeat(plain_inc, number={INCS}, repeat=5)) / {INCS} * 1e9
print(f"{{best:.0f}} ns per Counter.inc(), {{ints:.0f}} ns per plain int += 1")
"""


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    print("one process:   ", end="", flush=True)
    subprocess.run([sys.executable, "-c", _MEASURE], env=env, check=True)
    with tempfile.TemporaryDirectory() as path:
        print("multiprocess:  ", end="", flush=True)
        subprocess.run([sys.executable, "-c", _MEASURE], env={**env, "PROMETHEUS_MULTIPROC_DIR": path}, check=True)


if __name__ == "__main__":
    main()
