"""Connections of the public listener (docs/operations.md#connections) on a real ``sttgate serve`` process whose
file-descriptor limit is the common 1024: idle and slow clients cannot take ``/healthz`` or new sessions down, a slow
request head is cut off, and refused requests with megabyte headers do not grow the process's memory."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from sttgate.web.services import SERVICES
from tests.support.emulator import EmulatorServer
from tests.support.serve import ServeProcess, serve_env, serve_processes
from tests.support.waiting import wait_for

DESCRIPTORS = 1024
IDLE = 2000
SLOW = 300
MB = 1024 * 1024
# What this test process holds at once: every idle and slow client connection, plus the emulator and some spare.
CLIENT_DESCRIPTORS = IDLE + SLOW + 500


def limit_descriptors() -> None:
    """Runs in the child: the soft and hard limit the common default (the gateway may raise soft only to hard)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


@pytest.fixture(autouse=True)
def client_descriptors() -> None:
    """This process opens thousands of connections: its soft limit raised to the hard one if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < CLIENT_DESCRIPTORS:
        if hard != resource.RLIM_INFINITY and hard < CLIENT_DESCRIPTORS:
            pytest.skip(f"the test needs {CLIENT_DESCRIPTORS} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (CLIENT_DESCRIPTORS, hard))


@pytest.fixture
async def serve(emulator: EmulatorServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ServeProcess]]]:
    """``await serve(**env)``: ``sttgate serve`` on the test's SQLite file with at most 1024 descriptors."""
    async with serve_processes() as spawn:

        async def start(**env: str) -> ServeProcess:
            environment = {**serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "connections"), **env}
            return await spawn(env=environment, cwd=tmp_path, preexec_fn=limit_descriptors)

        yield start


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Clients:
    """Raw client connections held open; all closed at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []

    async def open(self, count: int, first_bytes: bytes = b"", batch: int = 100) -> None:
        async def one() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            if first_bytes:
                writer.write(first_bytes)
            self.readers.append(reader)
            self.writers.append(writer)

        for start in range(0, count, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, count - start))))

    def trickle(self, data: bytes) -> None:
        """One more byte of a never-ending request head on every connection still open."""
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(data)

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


async def echo_session(port: int, key: str) -> None:
    """A new WebSocket session through the gateway and the emulator: one frame there and back."""
    url = URL(f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={key}&emu_echo=1", encoded=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_bytes(b"\x07" * 3200)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x07" * 3200)


async def healthz(port: int) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})


async def test_idle_and_slow_connections_leave_health_and_new_sessions_working(serve, account):
    acct = await account()
    sp = await serve()
    assert "max_connections=384 descriptors=1024" in sp.log  # the child's limit, which the gateway could not raise
    slow_head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n"
    clients = Clients(sp.port)
    try:
        await clients.open(IDLE)
        await clients.open(SLOW, slow_head)
        clients.trickle(b"X")  # the slow ones send a little more, never a whole head
        await healthz(sp.port)
        await echo_session(sp.port, acct.key)
        # Once more after another wave: the gateway still has descriptors for itself, the database and the provider.
        await clients.open(IDLE // 4)
        clients.trickle(b"Y")
        await echo_session(sp.port, acct.key)
        await healthz(sp.port)
    finally:
        clients.close()
    assert sp.proc.returncode is None
    assert "Too many open files" not in sp.log and "Traceback" not in sp.log


async def test_a_request_head_that_never_completes_is_cut_off(serve):
    sp = await serve(STTGATE_REQUEST_HEAD_TIMEOUT_SECONDS="1")
    clients = Clients(sp.port)
    try:
        await clients.open(1, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        reader = clients.readers[0]

        async def keep_sending() -> None:
            while True:
                clients.trickle(b"X")
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(keep_sending())
        try:
            # The gateway closes the connection although bytes keep arriving: EOF, without any answer.
            assert await asyncio.wait_for(reader.read(), 30) == b""
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    finally:
        clients.close()


async def refused_with_big_headers(port: int, head: bytes) -> None:
    """One request whose headers total a megabyte; its answer (a refusal) read to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        with contextlib.suppress(OSError):
            await writer.drain()
        with contextlib.suppress(OSError):
            answer = await reader.read()
            assert answer == b"" or answer.split(b" ", 2)[1] == b"400", answer[:100]
    finally:
        writer.transport.abort()


async def test_requests_with_megabyte_headers_do_not_grow_memory(serve):
    sp = await serve()
    path = b"GET /ws/v2/audio-stream?provider=assemblyai HTTP/1.1\r\nHost: gateway\r\n"
    one_header = path + b"X-Big: " + b"a" * MB + b"\r\n\r\n"
    many_headers = path + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 8100) for i in range(130)) + b"\r\n"
    assert len(many_headers) > MB

    async def wave(head: bytes) -> None:
        await asyncio.gather(*(refused_with_big_headers(sp.port, head) for _ in range(50)))

    # Warm-up at full concurrency: the code paths loaded, and the allocator's peak for 50 megabyte requests at once
    # reached (memory it keeps for reuse is not growth; what a leak keeps grows with every wave after it).
    await wave(one_header)
    await wave(many_headers)
    before = rss_bytes(sp.proc.pid)
    for n in range(10):  # 500 requests, 50 at a time
        await wave(one_header if n % 2 == 0 else many_headers)
    grown = rss_bytes(sp.proc.pid) - before
    # A leak of these requests keeps at least their headers: 500 MB. The allocator's own fragmentation between the
    # two shapes of request has been seen at 54 MB once; 100 MB (a fifth of a leak) tells the two apart.
    assert grown < 100 * MB, f"RSS grew by {grown / MB:.0f} MB"
    await healthz(sp.port)


async def test_a_session_counts_against_the_cap_while_the_relay_holds_its_socket(gateway, account) -> None:
    """The passthrough data plane takes a session's socket away from aiohttp; it still holds a descriptor, so it still
    counts as an open connection (``sttgate_connections_open``) until its relay is done with it."""
    gw = await gateway()
    acct = await account()

    async def open_connections() -> float:
        async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        line = next(ln for ln in text.splitlines() if ln.startswith("sttgate_connections_open "))
        return float(line.split()[1])

    limit = gw.app[SERVICES].connections
    before = await open_connections()  # the scrape's own kept-alive connection, if counted
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        await ws.send_bytes(b"\x00" * 320)
        assert (await ws.receive(timeout=5)).data == b"\x00" * 320
        assert await open_connections() == before + 1  # the session, though aiohttp no longer holds it
    await wait_for(lambda: limit.count == before, what="the relay released the connection")
