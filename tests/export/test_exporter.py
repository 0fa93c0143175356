"""The exporter in-process (docs/export.md): it sends what is pending at shutdown, resumes a Stripe batch from the
first event not accepted, and holds back only the events of an account that has no external id yet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import update
from yarl import URL

from sttgate.config import ExportSink, Settings
from sttgate.core.outcomes import SessionKind
from sttgate.export.exporter import Exporter
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.store import SessionProgress, Store
from sttgate.store.tables import accounts
from tests.support.emulator import EmulatorServer
from tests.support.export_sinks import STRIPE_KEY, export_sinks
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

PRICE = 208_333


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store.connect(f"sqlite:///{tmp_path / 'export.db'}")
    try:
        yield s
    finally:
        await s.close()


async def _account_with_cycles(store: Store, session_id: str, cycles: int, external_id: str | None) -> str:
    account = await store.create_account(name=session_id)
    if external_id is not None:
        async with store.database.write() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account.id).values(external_id=external_id))
    await store.open_session(
        session_id=session_id,
        account_id=account.id,
        kind=SessionKind.WEBSOCKET,
        provider="assemblyai",
        gateway_id="gw",
        min_balance_nanos=0,
        lease_ttl=30.0,
    )
    await store.flush_progress([SessionProgress(session_id, cycles * 5.0, cycles, cycles * PRICE)])
    return account.id


def _settings(*sinks: dict[str, Any]) -> Settings:
    return Settings(export=[ExportSink(**sink) for sink in sinks], export_poll_seconds=0.02)


async def test_what_is_pending_at_shutdown_is_sent(store: Store) -> None:
    async with export_sinks() as (receiver, _):
        receiver.failing = True
        sink = {
            "name": "meter",
            "type": "cloudevents",
            "url": receiver.url,
            "backoff_seconds": 600,
            "backoff_max_seconds": 600,
        }
        exporter = Exporter(_settings(sink), store, GatewayMetrics(), "gw")
        await exporter.start()
        await _account_with_cycles(store, "s", 4, None)
        await wait_for(lambda: receiver.refused, what="a first refused send (the next retry is 5-10 minutes away)")
        receiver.failing = False
        await exporter.stop(10.0)
    assert receiver.ids == ["s:1", "s:2", "s:3", "s:4"]
    [status] = await store.outbox.status(["meter"])
    assert (status.pending, status.lease_owner, status.last_error) == (0, None, f"HTTP 500 from {receiver.url}")


async def test_a_stripe_batch_resumes_after_the_last_accepted_event(store: Store) -> None:
    async with export_sinks() as (_, recorder):
        recorder.fail_after = 2
        sink = {
            "name": "stripe",
            "type": "stripe",
            "api_base": recorder.api_base,
            "api_key": STRIPE_KEY,
            "batch_size": 10,
            "backoff_seconds": 0.01,
            "backoff_max_seconds": 0.05,
        }
        await store.outbox.register_sinks(["stripe"])
        await _account_with_cycles(store, "unlinked", 2, None)
        await _account_with_cycles(store, "linked", 5, "cus_1")
        exporter = Exporter(_settings(sink), store, GatewayMetrics(), "gw")
        await exporter.start()
        await wait_for(lambda: recorder.refused >= 2, what="two refused calls after two accepted")
        recorder.failing = False
        await wait_for(lambda: len(recorder.ids) == 5, what="the linked account's five events")
        await exporter.stop(5.0)
    assert recorder.ids == [f"linked:{c}" for c in range(1, 6)]  # each once, in order, resumed at linked:3
    [status] = await store.outbox.status(["stripe"])
    assert status.pending == 2  # the unlinked account's events wait for its external_id


async def test_a_sink_that_never_answers_does_not_delay_a_session(store: Store, emulator: EmulatorServer) -> None:
    """The collector accepts the connection and then says nothing: a prepaid session streams, is charged cycle by
    cycle and ends normally meanwhile; its events wait, pending, and go out once the collector answers."""
    answer = asyncio.Event()
    seen = asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        seen.set()
        await answer.wait()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/events", stalled)
    async with serve_app(app) as base:
        sink = {"name": "meter", "type": "cloudevents", "url": f"{base}/events", "timeout_seconds": 20}
        settings = gateway_settings(emulator, export=[ExportSink(**sink)], export_poll_seconds=0.02)
        account = await store.create_account(name="prepaid", balance_nanos=10 * PRICE)
        key = (await store.create_key(account.id)).key
        async with running_gateway(settings, store) as gateway, aiohttp.ClientSession() as http:
            await _account_with_cycles(store, "earlier", 1, None)  # something for the collector to stall on
            await asyncio.wait_for(seen.wait(), 10)
            query = f"provider=assemblyai&api_key={key}&sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"
            url = URL(f"{gateway.http_url}/ws/v2/audio-stream?{query}", encoded=True)
            async with http.ws_connect(url) as ws:
                for _ in range(3 * 50):
                    await ws.send_bytes(b"\x00" * 3200)
                await ws.send_str('{"type": "Terminate"}')
                async for _ in ws:
                    pass
                assert ws.close_code == 1000
            [session] = (await store.usage(account.id)).sessions
            assert session.cycles == 3 and session.ended_at is not None
            [status] = await store.outbox.status(["meter"])
            assert status.pending == 4 and status.sent_total == 0  # nothing accepted yet: the sink still stalls
            answer.set()
            await wait_for(lambda: _sent(store, 4), what="every event accepted once the collector answers")


async def _sent(store: Store, n: int) -> bool:
    [status] = await store.outbox.status(["meter"])
    return status.pending == 0 and status.sent_total == n
