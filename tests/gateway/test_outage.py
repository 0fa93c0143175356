"""A database outage while sessions end (docs/operations.md#database-outage): nothing billed is lost.

The database fails as a session ends: SQLite "database or disk is full" (every write of the store raises it), SQLite
locked by another process's writer (writes hang), and PostgreSQL refusing connections (a TCP proxy the test stops).
The client still gets its normal close; handshakes get 503 ``database_unavailable`` (JSON) within 5 s; ``/readyz`` is
503; once the database is back the session's full audio is billed and it is never reaped as ``gateway_crash``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import Store
from sttgate.web.services import SERVICES
from tests.support.accounts import create_account
from tests.support.gateway import Gateway, gateway_settings, running_gateway
from tests.support.postgres import fresh_schema
from tests.support.tcpproxy import TcpProxy
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

# Fast outage settings: a bounded wait of 1 s, readiness looks back 3 s, leases short enough that a lost renewal
# would be reaped during the test.
OUTAGE = {
    "database_timeout_seconds": 1.0,
    "database_failure_window_seconds": 3.0,
    "lease_renew_seconds": 0.5,
    "lease_ttl_seconds": 2.0,
}
SECONDS = 12.0  # of 16 kHz PCM16: 3 cycles


def tone(nbytes: int) -> bytes:
    return bytes((i * 37) & 0xFF for i in range(nbytes))


class DiskFull:
    """Every write of ``store`` raises SQLite's "database or disk is full" (the pool's and the fast path's)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    async def fail(self) -> None:
        self.store.database.write = self._full  # type: ignore[method-assign]
        if self.store._fast is not None:

            async def full(*args: Any) -> Any:
                self._full()

            self.store._fast._write = full  # type: ignore[method-assign]

    async def recover(self) -> None:
        del self.store.database.write
        if self.store._fast is not None:
            del self.store._fast._write


class Locked:
    """Another process holds SQLite's write lock: every writer waits (SQLite's busy timeout is 15 s)."""

    def __init__(self, store: Store) -> None:
        self.path = store.engine.url.database
        self.conn: sqlite3.Connection | None = None

    async def fail(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        await asyncio.to_thread(self.conn.execute, "BEGIN IMMEDIATE")

    async def recover(self) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()


class Refusing:
    """PostgreSQL behind a proxy that stops: open connections die, new ones are refused."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    async def fail(self) -> None:
        await self.proxy.stop()

    async def recover(self) -> None:
        await self.proxy.start()


@asynccontextmanager
async def outage_gateway(kind: str, emulator, tmp_path) -> AsyncIterator[tuple[Gateway, Store, Any]]:
    """A gateway on its own store (SQLite file, or PostgreSQL through a proxy) and the outage to inflict on it."""
    if kind == "postgresql":
        async with fresh_schema("sttgate_outage") as url:
            parts = urlsplit(url)
            proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
            await proxy.start()
            netloc = parts.netloc.rsplit("@", 1)
            host = f"127.0.0.1:{proxy.port}"
            proxied = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
            store = await Store.connect(proxied, migrate=True)
            try:
                async with _gateway(emulator, store) as gw:
                    yield gw, store, Refusing(proxy)
            finally:
                await proxy.start() if proxy._server is None else None
                await store.close()
                await proxy.stop()
        return
    store = await Store.connect(f"sqlite:///{tmp_path / 'outage.db'}", migrate=True)
    try:
        async with _gateway(emulator, store) as gw:
            yield gw, store, DiskFull(store) if kind == "sqlite-full" else Locked(store)
    finally:
        await store.close()


@asynccontextmanager
async def _gateway(emulator, store: Store) -> AsyncIterator[Gateway]:
    settings = gateway_settings(emulator, **OUTAGE)
    async with running_gateway(settings, store) as running, aiohttp.ClientSession() as http:
        yield Gateway(running.app, running.port, settings, emulator, http, running.admin_url)


async def readyz(gw: Gateway) -> int:
    async with gw.http.get(f"{gw.http_url}/readyz") as resp:
        return resp.status


async def refused_handshake(gw: Gateway, key: str) -> tuple[int, Any, float]:
    """A push handshake's status and JSON body, and how long it took."""
    started = time.monotonic()
    status, body, _ = await handshake(gw.ws_url(gw.stream_query("assemblyai", key, "sample_rate=16000")))
    return status, body, time.monotonic() - started


@pytest.mark.parametrize("kind", ["sqlite-full", "sqlite-locked", "postgresql"])
async def test_a_session_ending_in_an_outage_is_billed_in_full_once_the_database_is_back(kind, emulator, tmp_path):
    async with outage_gateway(kind, emulator, tmp_path) as (gw, store, outage):
        acct = await create_account(store, name="outage")
        manager = gw.app[SERVICES].sessions
        assert await readyz(gw) == 200
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
            for _ in range(round(SECONDS * 10)):
                await ws.send_bytes(tone(3200))
            await outage.fail()
            await ws.send_str('{"type":"Terminate"}')
            while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
                pass
            # The client's normal close, not 1011 "internal error".
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
        await wait_for(lambda: len(manager.pending) == 1, 5, what="the end kept in memory")

        status, body, elapsed = await refused_handshake(gw, acct.key)
        assert (status, body["error"]["code"]) == (503, "database_unavailable")
        assert elapsed < 5
        assert await readyz(gw) == 503
        # Longer than the lease: the gateway keeps holding the session while its end is pending.
        await asyncio.sleep(OUTAGE["lease_ttl_seconds"] + 0.5)
        assert await readyz(gw) == 503

        await outage.recover()
        await wait_for(lambda: not manager.pending, 20, what="the pending end written")

        async def ended() -> dict[str, Any] | None:
            usage = await Admin(store, names()).usage(acct.id)
            return usage if usage["sessions"] and usage["sessions"][0]["ended_at"] else None

        usage = await wait_for(ended, 10, what="the session ended in the database")
        session = usage["sessions"][0]
        assert (session["audio_seconds"], session["billed_seconds"]) == (SECONDS, 15)
        # AssemblyAI closes after Terminate: the real ending, never "gateway_crash".
        assert (session["close_code"], session["closed_by"]) == (1000, "upstream")
        await wait_for(lambda: _ready(gw), 10, what="/readyz 200 again")
        # A handshake succeeds again.
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000") as ws:
            await ws.close()


async def _ready(gw: Gateway) -> bool:
    return await readyz(gw) == 200


async def test_a_handshake_while_the_database_hangs_is_503_json_within_the_bound(emulator, tmp_path):
    async with outage_gateway("sqlite-locked", emulator, tmp_path) as (gw, store, outage):
        acct = await create_account(store, name="outage")
        await outage.fail()
        try:
            status, body, elapsed = await refused_handshake(gw, acct.key)
            assert (status, body) == (
                503,
                {
                    "error": {
                        "code": "database_unavailable",
                        "message": "The gateway's database is unavailable; try again shortly.",
                    }
                },
            )
            assert elapsed < 5
            assert await readyz(gw) == 503  # the write probe (nothing else wrote) cannot take the write lock
        finally:
            await outage.recover()
        await wait_for(lambda: _ready(gw), 10, what="/readyz 200 again")


async def test_pending_ends_are_logged_with_their_totals_at_shutdown(emulator, tmp_path, caplog):
    store = await Store.connect(f"sqlite:///{tmp_path / 'outage.db'}", migrate=True)
    try:
        acct = await create_account(store, name="outage")
        outage = DiskFull(store)
        settings = gateway_settings(emulator, **OUTAGE, shutdown_write_seconds=1.0)
        async with running_gateway(settings, store) as running, aiohttp.ClientSession() as http:
            gw = Gateway(running.app, running.port, settings, emulator, http, running.admin_url)
            async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
                for _ in range(60):
                    await ws.send_bytes(tone(3200))
                await outage.fail()
                await ws.close()
            await wait_for(lambda: len(gw.app[SERVICES].sessions.pending) == 1, 5, what="the end kept in memory")
            started = time.monotonic()
        assert time.monotonic() - started < 8
        lost = [r.getMessage() for r in caplog.records if "event=session_end_lost" in r.getMessage()]
        assert len(lost) == 1
        assert "why=shutdown" in lost[0] and "audio_seconds=6.000" in lost[0] and "cycles=2" in lost[0]
        await outage.recover()
    finally:
        await store.close()


async def test_a_pending_end_keeps_its_lease_and_slot_until_written(emulator, tmp_path):
    """Only the end's write fails (the rest of the database works): the session's lease keeps being renewed, so no
    reaper closes it as ``gateway_crash`` and its slot stays taken while this gateway holds its totals."""
    async with outage_gateway("sqlite-full", emulator, tmp_path) as (gw, store, _):
        acct = await create_account(store, name="outage", max_streams=1)
        manager = gw.app[SERVICES].sessions
        end_sessions = store.end_sessions

        async def end_fails(*args: Any, **kwargs: Any) -> set[str]:
            raise sqlite3.OperationalError("database or disk is full")

        store.end_sessions = end_fails  # type: ignore[method-assign]
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
            for _ in range(30):
                await ws.send_bytes(tone(3200))
            await ws.close()
        await wait_for(lambda: len(manager.pending) == 1, 5, what="the end kept in memory")
        await asyncio.sleep(3 * OUTAGE["lease_ttl_seconds"])  # several reaps
        usage = await Admin(store, names()).usage(acct.id)
        assert [s["ended_at"] for s in usage["sessions"]] == [None]
        status, body, _ = await refused_handshake(gw, acct.key)
        assert (status, body["error"]["code"]) == (429, "too_many_streams")  # its slot is still held

        store.end_sessions = end_sessions  # type: ignore[method-assign]
        await wait_for(lambda: not manager.pending, 20, what="the pending end written")
        session = (await Admin(store, names()).usage(acct.id))["sessions"][0]
        assert (session["audio_seconds"], session["closed_by"]) == (3.0, "client")
        assert session["ended_at"]


async def test_other_routes_answer_a_database_failure_with_the_json_refusal(emulator, tmp_path):
    """Token mints and the usage API have no bounded call of their own: a failing database is still 503 JSON."""
    async with outage_gateway("sqlite-full", emulator, tmp_path) as (gw, store, outage):
        acct = await create_account(store, name="outage")
        await outage.fail()
        try:
            async with gw.http.post(
                f"{gw.http_url}/api/v2/audio-stream/token", headers={"Authorization": f"Bearer {acct.key}"}, json={}
            ) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "database_unavailable"
        finally:
            await outage.recover()


async def test_a_prepaid_cycle_that_cannot_be_charged_closes_1011_billing_unavailable(emulator, tmp_path):
    """The database fails at a prepaid charge: the frame is not forwarded, the client gets 1011 ``billing
    unavailable``, and the session's end is written once the database is back (nothing lost: the first cycle, paid
    by the handshake's hold (docs/billing.md#holds) and relayed, is billed from that hold)."""
    async with outage_gateway("sqlite-full", emulator, tmp_path) as (gw, store, outage):
        acct = await create_account(store, name="outage", balance_nanos=10**9)
        manager = gw.app[SERVICES].sessions
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
            await outage.fail()
            for _ in range(51):  # cycle 1 (held: relayed, its write fails), then the frame that opens cycle 2
                await ws.send_bytes(tone(3200))
            while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
                pass
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, "billing unavailable")
        await outage.recover()
        await wait_for(lambda: not manager.pending, 20, what="the pending end written")
        usage = await Admin(store, names()).usage(acct.id)
        session = usage["sessions"][0]
        assert (session["close_code"], session["closed_by"], session["cost_usd"]) == (1011, "gateway", "0.000208333")
        assert usage["balance_usd"] == "0.999791667"
