"""Process identity (docs/operations.md#process-identity): a second ``sttgate serve --workers 2`` on the same port and
database (a zero-downtime restart with ``SO_REUSEPORT``, or a double start) never closes or frees the sessions the
first one still serves, even under the same ``STTGATE_GATEWAY_ID``; ``max_streams`` holds throughout.

On a SQLite file and on PostgreSQL (a fresh schema; skipped, with the reason, when PostgreSQL is unreachable).
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from sqlalchemy import select
from yarl import URL

from sttgate.store import Store
from sttgate.store.database import utcnow
from sttgate.store.tables import sessions
from tests.support.accounts import create_account
from tests.support.emulator import EmulatorServer
from tests.support.postgres import fresh_schema
from tests.support.serve import ServeProcess, serve_env, serve_processes
from tests.support.upgrade import RawSocket, raw_upgrade
from tests.support.waiting import wait_for

LEASE_TTL = 2.0  # short, so that the second instance's reaper runs several times while the first's session lives
FRAME = b"\x00" * 3200


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database of the given kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sttgate.db'}"
        await (await Store.connect(url, migrate=True)).close()
        yield url
        return
    async with fresh_schema("sttgate_identity") as url:
        await (await Store.connect(url, migrate=True)).close()
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(sp: ServeProcess) -> list[str]:
    """The gateway ids of ``sp``'s workers that listen."""
    return re.findall(r"event=gateway_listening gateway=(\S+)", sp.log)


def assert_too_many_streams(sock: RawSocket) -> None:
    assert (sock.status, sock.body["error"]["code"]) == (429, "too_many_streams"), (sock.status, sock.body)


async def still_streaming(ws: aiohttp.ClientWebSocketResponse, marker: int) -> None:
    await ws.send_bytes(bytes([marker]) * 3200)
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, bytes([marker]) * 3200)


async def test_a_second_instance_on_the_same_port_leaves_the_first_ones_sessions_alone(
    database_url: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    store = await Store.connect(database_url, migrate=False)
    try:
        acct = await create_account(store, max_streams=1)
        port = free_port()
        query = f"provider=assemblyai&api_key={acct.key}&emu_echo=1"
        # Both under the same configured name: the collision a deterministic id would turn into a takeover.
        env = {
            **serve_env(emulator, database_url, "gateway"),
            "STTGATE_LEASE_TTL_SECONDS": str(LEASE_TTL),
            "STTGATE_LEASE_RENEW_SECONDS": "0.5",
        }

        async def row() -> tuple[str, object, object, str | None]:
            async with store.engine.connect() as conn:
                r = (await conn.execute(select(sessions).where(sessions.c.account_id == acct.id))).one()
            return r.gateway_id, r.ended_at, r.lease_expires_at, r.closed_by

        async with serve_processes() as spawn, aiohttp.ClientSession() as http:
            first = await spawn("--port", str(port), "--workers", "2", env=env, cwd=tmp_path, name="first")
            await wait_for(lambda: len(listening(first)) == 2, 30, what="both workers of the first instance listen")
            url = URL(f"http://127.0.0.1:{port}/ws/v2/audio-stream?{query}", encoded=True)
            ws = await http.ws_connect(url)
            await still_streaming(ws, 1)
            gateway_id, ended, _, _ = await row()
            assert gateway_id in listening(first) and ended is None
            assert_too_many_streams(await raw_upgrade(port, query))

            second = await spawn("--port", str(port), "--workers", "2", env=env, cwd=tmp_path, name="second")
            await wait_for(lambda: len(listening(second)) == 2, 30, what="both workers of the second instance listen")
            # Four processes, four ids, all readable: the configured name, the worker, the start.
            ids = listening(first) + listening(second)
            assert len(set(ids)) == 4 and all(re.fullmatch(r"gateway/[01]#[0-9a-f]{8}", i) for i in ids)
            second_started = utcnow()

            # Handshakes land on either instance (SO_REUSEPORT): every one is refused until the second has refused
            # some itself.
            async def second_refused() -> bool:
                assert_too_many_streams(await raw_upgrade(port, query))
                return '" 429 ' in second.log

            await wait_for(second_refused, 30, 0.05, "a handshake refused by the second instance")

            # A full lease period and more with both running: the second's reaper has run, the session is renewed.
            async def renewed_past_a_reap() -> bool:
                _, ended, expires, _ = await row()
                assert ended is None
                return expires >= second_started + timedelta(seconds=2 * LEASE_TTL + 0.5)

            await wait_for(renewed_past_a_reap, 30, 0.1, "the session renewed after the second's first reaper pass")
            await still_streaming(ws, 2)

            second.proc.send_signal(signal.SIGTERM)
            assert await second.wait() == 0
            assert "sessions_reaped" not in second.log
            await still_streaming(ws, 3)
            assert (await row())[1] is None
            assert_too_many_streams(await raw_upgrade(port, query))

            await ws.close()

            async def ended_row() -> tuple[str, object, object, str | None] | None:
                current = await row()
                return current if current[1] is not None else None

            _, _, _, closed_by = await wait_for(ended_row, 15, 0.05, "the session's end written by the first instance")
            assert closed_by == "client"
            taken = await raw_upgrade(port, query)  # the slot is free again
            assert taken.status == 101
            assert await taken.close(1000) == (1000, "")
            first.proc.send_signal(signal.SIGTERM)
            assert await first.wait() == 0
    finally:
        await store.close()
