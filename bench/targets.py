"""What the load generator talks to: the upstream directly, nginx in front of it, or sttgate in front of it.

Each target starts its own processes on free loopback ports, says which process trees are "the relay"
(measured from /proc), and stops everything it started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.wire import ASSEMBLYAI_PATH

PROVIDER_QUERY = "sample_rate=16000&encoding=pcm_s16le"
OPERATOR_KEY = "bench-operator-key"
# sttgate's switch for metering/billing; the harness reports when the gateway does not know it.
METERING_SWITCH = "STTGATE_METERING_ENABLED"


class TargetUnavailable(RuntimeError):
    """The target cannot run here (nginx absent, PostgreSQL unreachable, no switch); the reason is reported."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """Return once something accepts on ``port``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child (and whatever it forks) to ``cpus``."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only the process this harness started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Upstream:
    """The minimal upstream (bench.upstream), in ``procs`` processes sharing one port."""

    procs: int = 1
    cpus: set[int] | None = None
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "bench.upstream", "--port", str(self.port)]
        if self.procs > 1:
            cmd.append("--reuse-port")
        for _ in range(self.procs):
            self.processes.append(subprocess.Popen(cmd, preexec_fn=pinned(self.cpus)))
        wait_listening(self.port, self.processes[0])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{ASSEMBLYAI_PATH}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for proc in self.processes:
            stop_process(proc)
        self.processes.clear()


class Target:
    """A relay under test (or none, for direct)."""

    name = "target"
    url = ""
    headers: dict[str, str] = {}
    pids: list[int] = []
    info: dict[str, str] = {}

    # The relay's process and its temporary directory, for the targets that start one (``stop`` ends both).
    proc: subprocess.Popen[bytes] | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        """Start the relay's processes."""

    def stop(self) -> None:
        """Stop what ``start`` started."""
        if self.proc is not None:
            stop_process(self.proc)
        if self.tmp is not None:
            self.tmp.cleanup()

    def _launch(self, cmd: list[str], port: int, cpus: set[int] | None) -> None:
        """Start a proxy on ``port`` that forwards any path to the upstream; wait until it listens."""
        self.proc = subprocess.Popen(cmd, preexec_fn=pinned(cpus))
        wait_listening(port, self.proc)
        self.url = f"ws://127.0.0.1:{port}{ASSEMBLYAI_PATH}?{PROVIDER_QUERY}"
        self.pids = [self.proc.pid]


class Direct(Target):
    """No relay: client → upstream. The physical limit every relay is compared with."""

    def __init__(self, upstream: Upstream) -> None:
        self.name = "direct"
        self.url = f"{upstream.url}?{PROVIDER_QUERY}"
        self.headers = {"Authorization": OPERATOR_KEY}
        self.pids = []
        self.info = {}


NGINX_CONF = """\
{user}
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream stt {{ server 127.0.0.1:{upstream_port}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://stt;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """The nginx binary, if installed (Debian: ``apt-get install nginx-light``)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


class Nginx(Target):
    """nginx from the distribution as a plain WebSocket reverse proxy: no auth, no billing."""

    def __init__(self, upstream: Upstream, workers: int = 1, cpus: set[int] | None = None) -> None:
        self.name = "nginx"
        self.upstream = upstream
        self.workers = workers
        self.cpus = cpus
        self.binary = find_nginx()
        if self.binary is None:
            raise TargetUnavailable("nginx is not installed (apt-get install -y nginx-light)")
        version = subprocess.run([self.binary, "-v"], capture_output=True, text=True).stderr.strip()
        self.info = {"version": version.split("/", 1)[-1], "binary": self.binary}
        self.headers = {"Authorization": OPERATOR_KEY}

    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="sttgate-bench-nginx-")
        port = free_port()
        conf = Path(self.tmp.name) / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                workers=self.workers,
                tmp=self.tmp.name,
                upstream_port=self.upstream.port,
                port=port,
            )
        )
        self._launch([self.binary or "nginx", "-p", self.tmp.name, "-c", str(conf)], port, self.cpus)


class AiohttpFloor(Target):
    """``bench.floor``: a relay of aiohttp alone (server upgrade, client connect, forwarding), no gateway logic."""

    def __init__(self, upstream: Upstream, cpus: set[int] | None = None) -> None:
        self.name = "aiohttp"
        self.upstream = upstream
        self.cpus = cpus
        self.headers = {"Authorization": OPERATOR_KEY}
        self.info = {"relay": "aiohttp.web + ClientSession.ws_connect on uvloop"}

    def start(self) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "bench.floor", "--port", str(port)]
        cmd += ["--upstream", f"ws://127.0.0.1:{self.upstream.port}"]
        self._launch(cmd, port, self.cpus)


def postgres_reachable(url: str) -> str | None:
    """None when ``url`` accepts a connection, else the reason (reported in place of the figures)."""
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL not reachable at {url}: {type(exc).__name__}: {exc}"
    return None


class Sttgate(Target):
    """``sttgate serve`` with a real account and key: authentication, limits, metering and billing on."""

    # How to run the gateway's console script (this checkout's, in this interpreter).
    command = (sys.executable, "-m", "sttgate")

    def __init__(
        self,
        upstream: Upstream,
        name: str,
        database_url: str | None = None,
        workers: int = 1,
        metering: bool = True,
        cpus: set[int] | None = None,
        prepaid: bool = True,
        extra_env: dict[str, str] | None = None,
        admission_limit: int = 0,
    ) -> None:
        self.name = name
        # STTGATE_MAX_SESSIONS_PER_PROCESS: 0 (off) to step past the gateway's default limit and find its knee; the
        # overload mode sets it to measure what the limit protects.
        self.admission_limit = admission_limit
        self.prepaid = prepaid
        self.extra_env = extra_env or {}
        self.base_url = ""
        self.upstream = upstream
        self.database_url = database_url
        self.workers = workers
        self.metering = metering
        self.cpus = cpus
        self.info = {}

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            STTGATE_DATABASE_URL=self.database_url or "",
            STTGATE_ASSEMBLYAI_URL=self.upstream.url,
            ASSEMBLYAI_API_KEY=OPERATOR_KEY,
            STTGATE_DRAIN_SECONDS="1",
            STTGATE_LOG_LEVEL="WARNING",
            STTGATE_DEMO_PAGE="false",
            STTGATE_MAX_SESSIONS_PER_PROCESS=str(self.admission_limit),
        )
        if not self.metering:
            env[METERING_SWITCH] = "false"
        env.update(self.extra_env)
        return env

    def _cli(self, *args: str) -> dict:
        out = subprocess.run(
            [*self.command, *args, "--json"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sttgate {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout)

    def start(self) -> None:
        if importlib.util.find_spec("sttgate.cli") is None:
            raise TargetUnavailable("sttgate serve has not landed (no sttgate.cli)")
        self.tmp = tempfile.TemporaryDirectory(prefix="sttgate-bench-")
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.tmp.name}/sttgate.db"
        if not self.metering and METERING_SWITCH.removeprefix("STTGATE_").lower() not in self._cli("config"):
            raise TargetUnavailable(f"sttgate has no metering/billing switch ({METERING_SWITCH}=false)")
        port = free_port()
        cmd = [*self.command, "serve", "--host", "127.0.0.1", "--port", str(port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        self.proc = subprocess.Popen(cmd, env=self._env(), preexec_fn=pinned(self.cpus))
        wait_listening(port, self.proc)
        self._wait_ready(port)
        # Prepaid debits the balance synchronously once per 5 s cycle and stream (the costlier path); postpaid
        # accrues in memory and writes in batches.
        balance = ["--balance", "1000000"] if self.prepaid else []
        name = f"bench-{os.getpid()}-{time.time_ns()}"
        account = self._cli("accounts", "create", "--name", name, "--max-streams", "1000000", *balance)
        key = self._cli("keys", "create", "--account", str(account["id"]))["key"]
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = f"ws://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&{PROVIDER_QUERY}"
        self.headers = {"Authorization": key}
        self.pids = [self.proc.pid]
        self.info = {
            "database": self.database_url.split(":", 1)[0],
            "workers": str(self.workers),
            "metering": "on" if self.metering else "off",
            "account": "prepaid" if self.prepaid else "postpaid",
            "admission_limit": str(self.admission_limit or "off"),
        }

    @staticmethod
    def _wait_ready(port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("sttgate /readyz did not answer 200")
