"""``sttgate serve`` subprocesses: started on a free port, stderr collected continuously, killed and reaped after."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from yarl import URL

from tests.support.emulator import EmulatorServer, upstream_env

STTGATE = str(Path(sys.executable).parent / "sttgate")
SERVE = [STTGATE, "serve", "--host", "127.0.0.1", "--port", "0"]


def serve_env(emulator: EmulatorServer, database_url: str, gateway_id: str) -> dict[str, str]:
    """The environment of a gateway process on ``database_url`` whose providers are all at ``emulator``."""
    return {
        "STTGATE_DATABASE_URL": database_url,
        **upstream_env(emulator.base),
        "STTGATE_GATEWAY_ID": gateway_id,
        "STTGATE_LOG_LEVEL": "INFO",
    }


def _listening(line: str) -> tuple[str, int]:
    """``(event, port)`` of a ``gateway_listening`` / ``admin_listening`` line, as text or JSON; else ``("", 0)``."""
    if line.startswith("{"):  # STTGATE_LOG_FORMAT=json
        doc = json.loads(line)
        return (doc["event"], int(doc["port"])) if doc.get("event", "").endswith("_listening") else ("", 0)
    match = re.search(r"event=(gateway_listening|admin_listening) .*port=(\d+)", line)
    return (match.group(1), int(match.group(2))) if match else ("", 0)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for a listener whose port 0 means something else than "any")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """A ``sttgate serve`` subprocess; its stderr is collected so the pipe never fills."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self.port_found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.admin_ports: set[int] = set()  # from each worker's event=admin_listening line
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            event, port = _listening(line)
            if event == "gateway_listening" and not self.port_found.done():
                self.port_found.set_result(port)
            if event == "admin_listening":
                self.admin_ports.add(port)
        if not self.port_found.done():
            self.port_found.set_exception(RuntimeError(f"serve {self.name} exited:\n" + self.log))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def admin_url(self) -> str:
        (port,) = self.admin_ports
        return f"http://127.0.0.1:{port}"

    def ws_url(self, query: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/ws/v2/audio-stream?{query}", encoded=True)

    async def wait(self, timeout: float = 15.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self.reader
        return code


@asynccontextmanager
async def serve_processes() -> AsyncIterator[Callable[..., Awaitable[ServeProcess]]]:
    """Yields ``await spawn(*cli_args, env=..., cwd=..., name="", admin=False, preexec_fn=None, wrapper=(),
    startup=30)``, which returns once the process listens (within ``startup`` seconds); ``wrapper`` is a command
    that runs ``sttgate`` (a profiler).

    ``env`` is added to this process's environment; ``preexec_fn`` runs in the child before ``sttgate`` (resource
    limits). The admin listener is off unless ``admin`` (then on a free port: ``ServeProcess.admin_url``) or ``env``
    sets ``STTGATE_ADMIN_PORT``: its default port, 8081, is not the test's to take. Every process still running at the
    end is killed and reaped.
    """
    procs: list[ServeProcess] = []

    async def spawn(
        *args: str,
        env: dict[str, str],
        cwd: Path,
        name: str = "",
        admin: bool = False,
        preexec_fn: Callable[[], None] | None = None,
        wrapper: Sequence[str] = (),
        startup: float = 30,
    ) -> ServeProcess:
        admin_port = str(free_port()) if admin else "0"
        proc = await asyncio.create_subprocess_exec(
            *wrapper,
            *SERVE,
            *args,
            env={**os.environ, "STTGATE_ADMIN_PORT": admin_port, **env},
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec_fn,
        )
        sp = ServeProcess(name, proc)
        procs.append(sp)
        sp.port = await asyncio.wait_for(sp.port_found, startup)
        return sp

    try:
        yield spawn
    finally:
        for sp in procs:
            if sp.proc.returncode is None:
                sp.proc.kill()
        for sp in procs:
            await sp.proc.wait()
        for sp in procs:
            await asyncio.wait_for(sp.reader, 10)
