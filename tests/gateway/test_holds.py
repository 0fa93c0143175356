"""docs/billing.md#holds through the gateway: a cycle paid by a hold never makes a frame wait for the database."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.gateway.test_billing import ended_session, tone
from tests.support.waiting import wait_for


@pytest.mark.parametrize("data_plane", ["passthrough", "aiohttp"])
async def test_a_prepaid_session_relays_while_its_ledger_write_waits(gateway, account, store, monkeypatch, data_plane):
    """Every ledger write of the session waits on an event the test controls: the 5 s of audio of the first cycle
    (paid by the handshake's hold) reach the provider all the same; the customer sees one cycle held meanwhile; the
    second cycle is paid by the hold the released write took; the end refunds the last hold."""
    gw = await gateway(data_plane=data_plane)
    acct = await account(balance_usd="1")
    release = asyncio.Event()
    asked = []
    settle = store.settle_cycles_batch

    async def blocked_settle(requests):
        asked.extend(r.write for r in requests)
        await release.wait()
        return await settle(requests)

    monkeypatch.setattr(store, "settle_cycles_batch", blocked_settle)
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    admin = Admin(gw.app[SERVICES].store, names())
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        for _ in range(50):  # cycle 1, opened by the first frame
            await ws.send_bytes(tone(3200))
        rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
        await rec.wait_for_frames_in(50)  # all relayed while cycle 1's ledger write waits
        await wait_for(lambda: asked, what="cycle 1's ledger write")
        assert [(w.recorded, w.charged, w.hold) for w in asked] == [(1, 0, 1)]
        assert (await admin.usage(acct.id))["balance_usd"] == "0.999791667"  # one cycle held
        release.set()
        for _ in range(50):  # cycle 2: paid by the hold the write took
            await ws.send_bytes(tone(3200))
        await ws.send_str('{"type":"Terminate"}')
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
    assert rec.audio_bytes == 100 * 3200
    assert all(w.charged == 0 for w in asked)  # no frame was charged synchronously
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    assert (session["billed_seconds"], session["cost_usd"]) == (10, "0.000416666")
    assert usage["balance_usd"] == "0.999583334"  # the two cycles opened; the last hold refunded


async def test_one_cycle_of_balance_opens_a_session_and_the_customer_pays_only_what_it_opened(gateway, account):
    """A balance of exactly one cycle opens a session (its hold takes all of it) and pays its first cycle; a session
    that opened no cycle gets its hold back."""
    gw = await gateway()
    for balance, frames, cost, left in (
        ("0.000208333", 20, "0.000208333", "0"),
        ("1", 0, "0", "1.000000000"),
    ):
        acct = await account(balance_usd=balance)
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
            for _ in range(frames):
                await ws.send_bytes(tone(3200))
            await ws.send_str('{"type":"Terminate"}')
            while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
                pass
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
        usage = await ended_session(gw, acct.id)
        assert (usage["sessions"][0]["cost_usd"], usage["balance_usd"]) == (cost, left)
