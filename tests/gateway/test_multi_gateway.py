"""Limits, balances and crash recovery across gateways (docs/operations.md#several-gateways): two real ``sttgate serve``
processes on one real PostgreSQL database.

Each test gets a fresh PostgreSQL schema (``options=-csearch_path=…`` in the URL, like ``tests/store``), the
in-process emulators of ``tests/conftest.py`` on an ephemeral port, and two ``sttgate serve`` subprocesses with
distinct ``STTGATE_GATEWAY_ID``s on different ports. Accounts, keys and the usage document go through the
``sttgate`` command line, as an operator would use them. Each test is skipped, with the reason, when PostgreSQL
is unreachable (``tests.support.postgres``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import Store
from tests.support.emulator import EmulatorServer
from tests.support.postgres import fresh_schema
from tests.support.serve import STTGATE, ServeProcess, serve_env, serve_processes
from tests.support.upgrade import RawSocket, raw_upgrade
from tests.support.waiting import wait_for

CYCLE_NANOS = 208_333  # one 5-second AssemblyAI cycle at the default 0.15 USD/h
FRAME = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
BYTES_PER_CYCLE = 5 * 16_000 * 2


def nanos_usd(nanos: int) -> str:
    """The wire form of an amount (docs/contract.md#usage: a decimal string with 9 places, ``"0"`` for nothing)."""
    return "0" if nanos == 0 else f"{Decimal(nanos).scaleb(-9):f}"


# --- fixtures: a schema, the command line, gateway processes ---------------------------------------------------


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """A migrated, empty schema of its own on the shared ``test`` database; its URL (skips without PostgreSQL)."""
    async with fresh_schema("sttgate_mgw") as url:
        store = await Store.connect(url, migrate=True)
        await store.close()
        yield url


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


@pytest.fixture
async def serve(pg: str, emulator: EmulatorServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await serve("a", "b", **env)``: gateways on one database, started together; all killed and reaped."""
    async with serve_processes() as spawn:

        async def start(*names: str, **env: str) -> list[ServeProcess]:
            return list(
                await asyncio.gather(
                    *(
                        spawn(env={**serve_env(emulator, pg, f"gateway-{name}"), **env}, cwd=tmp_path, name=name)
                        for name in names
                    )
                )
            )

        yield start


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
    socks = await asyncio.gather(*(raw_upgrade(gw.port, query) for gw in gateways))
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
            assert_too_many_streams(await raw_upgrade(gw.port, query))

        # One closes; a handshake on the *other* gateway gets the freed slot on its first try.
        first_gw, first = accepted[0]
        assert await first.close(1000) == (1000, "")
        other = b if first_gw is a else a
        newcomer = await raw_upgrade(other.port, query)
        assert newcomer.status == 101, newcomer.body
        accepted = [*accepted[1:], (other, newcomer)]
        # ...and the account is full again, on both gateways.
        for gw in (a, b):
            assert_too_many_streams(await raw_upgrade(gw.port, query))

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

            await wait_for(charged, 10, 0.2, "A's session charged two cycles")
            held = (await Admin(store, names()).usage(acct.id))["sessions"][0]["id"]
            assert_too_many_streams(await raw_upgrade(b.port, query))

            # Mid-stream, A dies without a word.
            a.proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(a.proc.wait(), 10) == -signal.SIGKILL
            assert_too_many_streams(await raw_upgrade(b.port, query))  # the lease is still fresh

            refusals: list[RawSocket] = []

            async def admitted() -> RawSocket | None:
                sock = await raw_upgrade(b.port, query)
                if sock.status == 101:
                    return sock
                refusals.append(sock)
                return None

            taken = await wait_for(admitted, 20, 0.2, "a handshake on gateway B accepted after A's lease expired")
            for sock in refusals:
                assert_too_many_streams(sock)
            await ws.close()

            async def reaped() -> dict[str, Any] | None:
                for s in (await Admin(store, names()).usage(acct.id))["sessions"]:
                    if s["id"] == held and s["closed_by"] == "gateway_crash":
                        return s
                return None

            await wait_for(reaped, 20, 0.2, "A's session marked gateway_crash")
            usage = await cli("usage", "--account", acct.id)
            crashed = next(s for s in usage["sessions"] if s["id"] == held)
            assert crashed["closed_by"] == "gateway_crash" and crashed["ended_at"] is not None
            assert (crashed["billed_seconds"], crashed["cost_usd"]) == (10, nanos_usd(2 * CYCLE_NANOS))
            # A's two cycles (its hold refunded by the reaper), and the cycle B's live session holds
            # (docs/billing.md#holds).
            assert usage["balance_usd"] == nanos_usd(10**9 - 3 * CYCLE_NANOS)
            live = next(s for s in usage["sessions"] if s["id"] == taken.headers["x-session-id"])
            assert live["ended_at"] is None
            assert await taken.close(1000) == (1000, "")
    finally:
        await store.close()
    assert a.proc.returncode == -signal.SIGKILL  # A was never restarted
