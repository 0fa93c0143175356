"""SPEC §3, §4 and §7 across gateways: two real ``sttgate serve`` processes on one real PostgreSQL database.

Each test gets a fresh PostgreSQL schema (``options=-csearch_path=…`` in the URL, like ``tests/store``), the
in-process emulators of ``tests/conftest.py`` on an ephemeral port, and two ``sttgate serve`` subprocesses with
distinct ``STTGATE_GATEWAY_ID``s on different ports. Accounts, keys and the usage document go through the
``sttgate`` command line, as an operator would use them. The whole module is skipped, with the reason, when
PostgreSQL is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from conftest import OPERATOR_ASSEMBLYAI_KEY, EmulatorServer
from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import Store

STTGATE = str(Path(sys.executable).parent / "sttgate")
PG_CANDIDATES = [
    url
    for url in (
        os.environ.get("STTGATE_TEST_POSTGRES_URL"),
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://root@127.0.0.1:5432/test",
    )
    if url
]
CYCLE_NANOS = 208_333  # one 5-second AssemblyAI cycle at the default 0.15 USD/h
FRAME = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
BYTES_PER_CYCLE = 5 * 16_000 * 2


def _find_postgres() -> tuple[str | None, str]:
    """The first reachable PostgreSQL URL, or None and why none was."""
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
        return None, f"asyncpg not installed: {exc}"

    async def probe() -> tuple[str | None, str]:
        errors = []
        for url in PG_CANDIDATES:
            try:
                conn = await asyncpg.connect(url, timeout=5)
            except Exception as exc:
                errors.append(f"{url}: {exc!r}")
                continue
            await conn.close()
            return url, ""
        return None, "; ".join(errors)

    return asyncio.run(probe())


PG_URL, PG_ERROR = _find_postgres()
pytestmark = pytest.mark.skipif(
    PG_URL is None, reason=f"multi-gateway tests need PostgreSQL at 127.0.0.1:5432/test; unreachable: {PG_ERROR}"
)


def nanos_usd(nanos: int) -> str:
    """The wire form of an amount (SPEC §5: a decimal string with 9 places, ``"0"`` for nothing)."""
    return "0" if nanos == 0 else f"{Decimal(nanos).scaleb(-9):f}"


# --- fixtures: a schema, the command line, gateway processes ---------------------------------------------------


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """A migrated, empty schema of its own on the shared ``test`` database; its URL."""
    import asyncpg

    assert PG_URL is not None
    admin = await asyncpg.connect(PG_URL, timeout=5)
    schema = f"sttgate_mgw_{uuid.uuid4().hex[:16]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    try:
        store = await Store.connect(url, migrate=True)
        await store.close()
        yield url
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
def cli(pg: str) -> Callable[..., Awaitable[Any]]:
    """``await cli("usage", "--account", ID)``: runs ``sttgate … --json`` on the test schema, returns its JSON."""

    async def run(*args: str) -> Any:
        proc = await asyncio.create_subprocess_exec(
            STTGATE,
            *args,
            "--json",
            env={**os.environ, "STTGATE_DATABASE_URL": pg},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, f"sttgate {' '.join(args)} failed: {err.decode()}"
        return json.loads(out)

    return run


@dataclass
class Customer:
    id: str
    key: str


@pytest.fixture
def customer(cli: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Customer]]:
    """``await customer(max_streams=K, balance="USD")``: an account and a key made with the CLI."""

    async def make(*, max_streams: int, balance: str | None = None) -> Customer:
        args = ["accounts", "create", "--name", "multi-gateway", "--max-streams", str(max_streams)]
        if balance is not None:
            args += ["--balance", balance]
        account = await cli(*args)
        key = await cli("keys", "create", "--account", account["id"])
        assert key["key"].startswith("sk-mai-")
        return Customer(account["id"], key["key"])

    return make


@dataclass
class ServeProcess:
    """A ``sttgate serve`` subprocess; stderr is drained continuously so its pipe never fills."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def ws_url(self, query: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/ws/v2/audio-stream?{query}", encoded=True)


@pytest.fixture
async def serve(pg: str, emulator: EmulatorServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await serve("a", "b", **env)``: gateways on one database, started together; all killed and reaped."""
    procs: list[ServeProcess] = []
    readers: list[asyncio.Task[None]] = []

    async def start_one(name: str, env: dict[str, str]) -> ServeProcess:
        proc = await asyncio.create_subprocess_exec(
            STTGATE,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            env={
                **os.environ,
                "STTGATE_DATABASE_URL": pg,
                "STTGATE_ASSEMBLYAI_URL": emulator.assemblyai_url,
                "ASSEMBLYAI_API_KEY": OPERATOR_ASSEMBLYAI_KEY,
                "STTGATE_GATEWAY_ID": f"gateway-{name}",
                "STTGATE_LOG_LEVEL": "INFO",
                **env,
            },
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        sp = ServeProcess(name, proc)
        procs.append(sp)
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace")
                sp.lines.append(line)
                match = re.search(r"event=gateway_listening .*port=(\d+)", line)
                if match and not listening.done():
                    listening.set_result(int(match.group(1)))
            if not listening.done():
                listening.set_exception(RuntimeError(f"gateway {name} exited:\n{sp.log}"))

        readers.append(asyncio.create_task(read()))
        sp.port = await asyncio.wait_for(listening, 30)
        return sp

    async def start(*names: str, **env: str) -> list[ServeProcess]:
        return list(await asyncio.gather(*(start_one(name, env) for name in names)))

    try:
        yield start
    finally:
        for sp in procs:
            if sp.proc.returncode is None:
                sp.proc.kill()
        for sp in procs:
            await sp.proc.wait()
        for task in readers:
            await asyncio.wait_for(task, 10)


# --- a raw WebSocket client: keeps the refusal's JSON body and holds an accepted socket --------------------------


@dataclass
class RawSocket:
    """The outcome of one upgrade request: the status, the refusal body, and for a 101 the open connection."""

    status: int
    headers: dict[str, str]
    body: Any = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def close(self, code: int = 1000) -> tuple[int | None, str]:
        """A client-initiated close handshake; returns the code and reason of the gateway's close frame."""
        assert self.reader is not None and self.writer is not None
        mask = os.urandom(4)
        payload = struct.pack("!H", code)
        self.writer.write(
            bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        )
        await self.writer.drain()
        try:
            async with asyncio.timeout(10):
                while True:
                    b0, b1 = await self.reader.readexactly(2)
                    length = b1 & 0x7F
                    if length == 126:
                        (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                    elif length == 127:
                        (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                    data = await self.reader.readexactly(length)
                    if b0 & 0x0F == 0x8:
                        if len(data) < 2:
                            return None, ""
                        return struct.unpack("!H", data[:2])[0], data[2:].decode()
        finally:
            self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def upgrade(port: int, query: str) -> RawSocket:
    """``GET /ws/v2/audio-stream?query`` as a WebSocket upgrade, written byte for byte on a plain TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/v2/audio-stream?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    async with asyncio.timeout(15):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status == 101:
        return RawSocket(status, headers, None, reader, writer)
    try:
        async with asyncio.timeout(10):
            raw = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return RawSocket(status, headers, json.loads(raw))


async def poll(predicate: Callable[[], Awaitable[Any]], deadline: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``deadline`` seconds."""
    try:
        async with asyncio.timeout(deadline):
            while True:
                value = await predicate()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        pytest.fail(f"not within {deadline} s: {what}")


def assert_too_many_streams(sock: RawSocket) -> None:
    assert sock.status == 429, (sock.status, sock.body)
    assert sock.headers.get("content-type", "").startswith("application/json")
    assert set(sock.body) == {"error"}
    assert sock.body["error"]["code"] == "too_many_streams"
    assert isinstance(sock.body["error"]["message"], str) and sock.body["error"]["message"]


# --- 1. max_streams is one limit across all gateways -----------------------------------------------------------


async def test_max_streams_holds_across_two_gateways_under_a_burst(serve, customer, cli, emulator):
    acct = await customer(max_streams=3)
    a, b = await serve("a", "b")
    query = f"provider=assemblyai&api_key={acct.key}&sample_rate=16000"

    # 12 handshakes at once, 6 on each gateway.
    gateways = [a, b] * 6
    socks = await asyncio.gather(*(upgrade(gw.port, query) for gw in gateways))
    try:
        accepted = [(gw, s) for gw, s in zip(gateways, socks, strict=True) if s.status == 101]
        refused = [s for s in socks if s.status != 101]
        assert len(accepted) == 3, [s.status for s in socks]
        assert len(refused) == 9
        for sock in refused:
            assert_too_many_streams(sock)
        assert len({s.headers["x-session-id"] for _, s in accepted}) == 3

        # The three stay open while the others are refused: three live sessions, upstream too, and still full.
        usage = await cli("usage", "--account", acct.id)
        assert len(usage["sessions"]) == 3
        assert all(s["ended_at"] is None for s in usage["sessions"])
        assert sorted(s["id"] for s in usage["sessions"]) == sorted(s.headers["x-session-id"] for _, s in accepted)
        records = emulator.recorder.find(provider="assemblyai")
        assert sum(r.accepted for r in records) == 3 and not any(r.ended for r in records)
        for gw in (a, b):
            assert_too_many_streams(await upgrade(gw.port, query))

        # One closes; a handshake on the *other* gateway gets the freed slot on its first try.
        first_gw, first = accepted[0]
        assert await first.close(1000) == (1000, "")
        other = b if first_gw is a else a
        newcomer = await upgrade(other.port, query)
        assert newcomer.status == 101, newcomer.body
        accepted = [*accepted[1:], (other, newcomer)]
        # ...and the account is full again, on both gateways.
        for gw in (a, b):
            assert_too_many_streams(await upgrade(gw.port, query))

        for _, sock in accepted:
            assert await sock.close(1000) == (1000, "")
    finally:
        for sock in socks:
            sock.abort()

    usage = await cli("usage", "--account", acct.id)
    assert [(s["close_code"], s["closed_by"]) for s in usage["sessions"]] == [(1000, "client")] * 4
    assert all(s["ended_at"] is not None for s in usage["sessions"])


# --- 2. one prepaid balance, debited by sessions on both gateways, never below zero ----------------------------


@dataclass
class StreamOutcome:
    frames_sent: int = 0
    close_code: int | None = None
    close_reason: str | None = None
    message_types: list[str] = field(default_factory=list)


async def stream_audio(ws: aiohttp.ClientWebSocketResponse, frames: int) -> StreamOutcome:
    """Send ``frames`` 100 ms frames as fast as the sockets allow, then ``Terminate``; read until the close."""
    out = StreamOutcome()

    async def send() -> None:
        try:
            for _ in range(frames):
                if ws.closed:
                    return
                await ws.send_bytes(FRAME)
                out.frames_sent += 1
            if not ws.closed:
                await ws.send_str('{"type": "Terminate"}')
        except (ConnectionError, RuntimeError):
            pass  # the gateway closed the socket (4002) while we were sending

    async def receive() -> None:
        while True:
            msg = await ws.receive(timeout=20)
            if msg.type is WSMsgType.TEXT:
                out.message_types.append(json.loads(msg.data).get("type"))
            elif msg.type is WSMsgType.CLOSE:
                out.close_code, out.close_reason = msg.data, msg.extra
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                out.close_code = ws.close_code
                return

    await asyncio.gather(send(), receive())
    await ws.close()
    return out


async def test_a_shared_prepaid_balance_ends_at_exactly_zero_never_below(serve, customer, cli, emulator):
    cycles_paid = 6
    start_nanos = cycles_paid * CYCLE_NANOS
    acct = await customer(max_streams=10, balance=nanos_usd(start_nanos))
    a, b = await serve("a", "b")
    query = f"provider=assemblyai&api_key={acct.key}&sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"

    # Four sessions, two on each gateway, each wanting 12 s (3 cycles): 12 cycles asked of a balance of 6.
    frames_each = 120
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(gw.ws_url(query), max_msg_size=0) for gw in (a, b, a, b)]
        outcomes = await asyncio.gather(*(stream_audio(ws, frames_each) for ws in sockets))

    for out in outcomes:
        completed = out.close_code == 1000 and "Termination" in out.message_types and out.frames_sent == frames_each
        cut_off = (out.close_code, out.close_reason) == (4002, "insufficient balance")
        assert completed or cut_off, out
    assert any(out.close_code == 4002 for out in outcomes)  # the balance could not pay for everyone

    usage = await cli("usage", "--account", acct.id)
    assert usage["balance_usd"] == "0"
    sessions = usage["sessions"]
    assert len(sessions) == 4
    assert all(s["ended_at"] is not None for s in sessions)
    assert sum(Decimal(s["cost_usd"]) for s in sessions) == Decimal(nanos_usd(start_nanos))
    assert usage["totals"]["assemblyai"]["cost_usd"] == nanos_usd(start_nanos)
    assert sum(s["billed_seconds"] for s in sessions) == cycles_paid * 5
    assert sorted(s["close_code"] for s in sessions) == sorted(out.close_code for out in outcomes)

    # The providers received no more audio than the paid cycles cover.
    records = emulator.recorder.find(provider="assemblyai")
    assert len(records) == 4
    for rec in records:
        await rec.wait_ended(timeout=10)
    assert sum(rec.audio_bytes for rec in records) <= cycles_paid * BYTES_PER_CYCLE
    # Session by session: an upstream got more than all but the last of its session's paid cycles, never more than
    # all of them. (Sessions are paired by rank; the intervals of different cycle counts do not overlap.)
    paid = sorted(s["billed_seconds"] // 5 for s in sessions)
    received = sorted(rec.audio_bytes for rec in records)
    for cycles, nbytes in zip(paid, received, strict=True):
        assert (cycles - 1) * BYTES_PER_CYCLE < nbytes <= cycles * BYTES_PER_CYCLE, (paid, received)


# --- 3. a crashed gateway's slot frees without restarting it ---------------------------------------------------


async def test_a_killed_gateways_slot_is_taken_over_by_the_other_gateway(serve, customer, cli, pg):
    acct = await customer(max_streams=1, balance="1")
    # A short lease on both: A's slot expires 4 s after its last renewal, and B's reaper runs every 4 s.
    a, b = await serve("a", "b", STTGATE_LEASE_TTL_SECONDS="4", STTGATE_LEASE_RENEW_SECONDS="1")
    query = f"provider=assemblyai&api_key={acct.key}&sample_rate=16000&emu_rate_check=off"

    store = await Store.connect(pg, migrate=False)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(a.ws_url(query), max_msg_size=0)
            for _ in range(60):  # 6 s of audio: two cycles, charged before the audio is forwarded
                await ws.send_bytes(FRAME)

            async def charged() -> bool:
                sessions = (await Admin(store, names()).usage(acct.id))["sessions"]
                return bool(sessions) and sessions[0]["billed_seconds"] == 10

            await poll(charged, 10, "A's session charged two cycles")
            held = (await Admin(store, names()).usage(acct.id))["sessions"][0]["id"]
            assert_too_many_streams(await upgrade(b.port, query))

            # Mid-stream, A dies without a word.
            a.proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(a.proc.wait(), 10) == -signal.SIGKILL
            assert_too_many_streams(await upgrade(b.port, query))  # the lease is still fresh

            refusals: list[RawSocket] = []

            async def admitted() -> RawSocket | None:
                sock = await upgrade(b.port, query)
                if sock.status == 101:
                    return sock
                refusals.append(sock)
                return None

            taken = await poll(admitted, 20, "a handshake on gateway B accepted after A's lease expired")
            for sock in refusals:
                assert_too_many_streams(sock)
            await ws.close()

            async def reaped() -> dict[str, Any] | None:
                for s in (await Admin(store, names()).usage(acct.id))["sessions"]:
                    if s["id"] == held and s["closed_by"] == "gateway_crash":
                        return s
                return None

            await poll(reaped, 20, "A's session marked gateway_crash")
            usage = await cli("usage", "--account", acct.id)
            crashed = next(s for s in usage["sessions"] if s["id"] == held)
            assert crashed["closed_by"] == "gateway_crash" and crashed["ended_at"] is not None
            assert (crashed["billed_seconds"], crashed["cost_usd"]) == (10, nanos_usd(2 * CYCLE_NANOS))
            assert usage["balance_usd"] == nanos_usd(10**9 - 2 * CYCLE_NANOS)
            live = next(s for s in usage["sessions"] if s["id"] == taken.headers["x-session-id"])
            assert live["ended_at"] is None
            assert await taken.close(1000) == (1000, "")
    finally:
        await store.close()
    assert a.proc.returncode == -signal.SIGKILL  # A was never restarted
