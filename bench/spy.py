"""Where the relay's CPU goes: py-spy sampling of ``sttgate serve`` at the reference step (``bench.run --profile``).

py-spy is an optional tool (``pip install 'sttgate[bench]'`` or ``pip install py-spy``), never a runtime dependency.
It reads the gateway's memory from outside (ptrace), so the gateway runs unmodified; it is run in an extra window
after the measured one, so its own cost (on the load generator's core) never touches a reported figure.

Each sample is one stack of one busy thread (threads waiting in epoll, on a lock or a queue are dropped). Its "own
time" goes to the innermost frame that is not the interpreter itself (with ``--native``, CPython's evaluation loop
and object helpers are skipped, so a frame's interpreter cost counts for the Python function running it): that is the
function listed. Its group is that of the innermost frame that is neither the interpreter nor the C library, so a
system call counts for what made it (a socket write for the event loop, a semaphore post for the database thread),
and the share spent in the C library and system calls is given apart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# libuv's sources (uvloop bundles it; py-spy --native names its frames by file).
LIBUV_FILES = ("core.c", "linux.c", "stream.c", "tcp.c", "timer.c", "heap-inl.h", "loop-watcher.c", "async.c")
# (group, patterns matched against "function (file:line)"): the first group that matches wins.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    (
        "database",
        ("sttgate/store/", "sqlalchemy", "aiosqlite/", "asyncpg", "pgproto", "sqlite3", "_sqlite", "greenlet"),
    ),
    ("frame scanner", ("sttgate/core/frames.py",)),
    ("metering", ("sttgate/core/metering.py", "sttgate/providers/")),
    (
        "billing and session control",
        (
            "sttgate/core/billing.py",
            "sttgate/core/money.py",
            "sttgate/core/budget.py",
            "sttgate/core/session.py",
            "sttgate/core/idle.py",
            "sttgate/gateway/live.py",
            "sttgate/gateway/manager.py",
            "sttgate/core/",
        ),
    ),
    ("relay (sttgate's socket code)", ("sttgate/gateway/passthrough.py", "sttgate/gateway/framesocket.py")),
    ("handshakes (aiohttp, sttgate/web)", ("aiohttp/", "yarl/", "multidict/", "sttgate/web/", "sttgate/gateway/")),
    (
        "event loop and kernel",
        (
            "uvloop",
            "(loop.c:",
            "_asynciomodule.c",
            "asyncio/",
            "selectors.py",
            "libuv",
            "uv__",
            "uv_",
            *(f"({name}:" for name in LIBUV_FILES),
            "libc.so",
            "libc-",
            "libpthread",
            "[kernel",
            "vdso",
            "syscall",
            "epoll",
            "__libc_",
            "__GI_",
            "__send",
            "__recv",
            "__write",
            "__read",
            "sock_",
        ),
    ),
]
OTHER = "other"
LIBC = "C library and system calls"
# Native frames that are the interpreter running Python code, not work of their own.
INTERPRETER = re.compile(r"\((?:[^)]*/)?(?:libpython|python3)[^)]*\)|\b_?Py[A-Z_]\w*|ceval|_PyEval|method_vectorcall")
# A thread waiting (for sockets, a lock, a queue) is not using CPU; py-spy --native samples it all the same, so a stack
# whose innermost frames past one of these are only the C library's (or unnamed) is dropped as idle.
WAITING = ("epoll_pwait", "epoll_wait", "PyThread_acquire_lock", "pthread_cond_", "sem_wait", "sem_clockwait", "futex")
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a virtual environment's bin/), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, native: bool, preexec: Callable[[], None] | None) -> dict[str, Any]:
    """Sample ``pid`` (and its children) for ``seconds``; the raw collapsed stacks go to ``out``."""
    binary = find_py_spy()
    if binary is None:
        return {"unavailable": "py-spy is not installed (pip install py-spy, or the bench extra)"}
    cmd = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    cmd += ["--rate", "200", "--format", "raw", "--subprocesses", "--output", str(out)]
    cmd += ["--native"] if native else ["--nonblocking"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=preexec)
    if proc.returncode != 0 or not out.exists():
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        return {"unavailable": f"py-spy could not sample: {reason[-1] if reason else proc.returncode}"}
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    return {**summarize(out.read_text()), "tool": f"{version}{' --native' if native else ''}", "seconds": seconds}


def group_of(frame: str) -> str:
    """The group a frame's own time belongs to."""
    for name, patterns in GROUPS:
        if any(p in frame for p in patterns):
            return name
    return OTHER


def idle(stack: list[str]) -> bool:
    """Whether a root-first stack is a thread waiting rather than working."""
    for i in range(len(stack) - 1, -1, -1):
        frame = stack[i]
        if any(w in frame for w in WAITING):
            return True
        if not _libc(frame):
            return False
    return False


def _libc(frame: str) -> bool:
    return frame.startswith("0x") or "(libc" in frame or "(?)" in frame


def owner(stack: list[str], skip_libc: bool = False) -> str:
    """The innermost frame of a root-first stack that is not the interpreter's own machinery (nor, with
    ``skip_libc``, the C library's: a system call is charged to what made it)."""
    for frame in reversed(stack):
        if not INTERPRETER.search(frame) and not (skip_libc and _libc(frame)):
            return frame
    return stack[-1] if stack else "?"


def short(frame: str) -> str:
    """``function (file:line)`` without the line and with the file relative to its package."""
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = path.split("/", 1)[-1]
            break
    return f"{m['function']} ({os.path.basename(path) if path.startswith('/') else path})"


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Own time per group and the top functions, in per cent of the busy samples."""
    idle_samples = in_libc = 0
    groups: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    group_for: dict[str, str] = {}
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        if idle(stack):
            idle_samples += count
            continue
        frame = owner(stack)
        name = short(frame)
        group = group_of(owner(stack, skip_libc=True))
        group_for[name] = LIBC if _libc(frame) else group
        groups[group] += count
        in_libc += count if _libc(frame) else 0
        functions[name] += count
        total += count
    if not total:
        return {"samples": 0, "idle_samples": idle_samples, "groups": {}, "top": []}

    def pct(n: int) -> float:
        return round(n * 100 / total, 1)

    return {
        "samples": total,
        "idle_samples": idle_samples,
        "in_system_calls_and_libc": pct(in_libc),
        "groups": {g: pct(n) for g, n in groups.most_common()},
        "top": [{"function": f, "percent": pct(n), "group": group_for[f]} for f, n in functions.most_common(top)],
    }
