"""Monthly budgets through a running gateway (docs/billing.md#budgets): 402 ``budget_exceeded`` for new sessions once
the month's cost has reached the budget, 4002 ``budget exceeded`` at a running session's next cycle, and the
``budget.threshold`` events that spending records (docs/contract.md#account-events)."""

from __future__ import annotations

import json

from aiohttp import WSMsgType

from sttgate.core.outcomes import SessionKind
from sttgate.web.services import SERVICES
from tests.support.upgrade import raw_upgrade
from tests.support.waiting import wait_for

CYCLE = 208_333  # one 5-second AssemblyAI cycle at the default 0.15 USD/h
PCM = "sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"
FRAME = b"\x00" * 3200  # 100 ms


async def test_a_reached_budget_refuses_new_sessions_402(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account(balance_usd="10")
    await store.update_account(acct.id, monthly_budget_nanos=2 * CYCLE)
    await store.open_session(
        session_id="spent",
        account_id=acct.id,
        kind=SessionKind.WEBSOCKET,
        provider="assemblyai",
        gateway_id="elsewhere",
        min_balance_nanos=CYCLE,
        lease_ttl=30,
    )
    assert await store.charge_cycles("spent", acct.id, 1, CYCLE)
    ok = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={acct.key}&{PCM}")  # 1 of 2 cycles spent
    assert ok.status == 101, ok.body
    await ok.close(1000)
    assert await store.charge_cycles("spent", acct.id, 1, CYCLE)
    refused = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={acct.key}&{PCM}")
    assert (refused.status, refused.body["error"]["code"]) == (402, "budget_exceeded")
    # The balance would pay: the budget is what refuses (checked after the balance, docs/contract.md#refusals).
    await store.update_account(acct.id, monthly_budget_nanos=3 * CYCLE)
    again = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={acct.key}&{PCM}")
    assert again.status == 101, again.body
    await again.close(1000)


async def test_a_running_session_ends_4002_at_its_next_cycle_past_the_budget(gateway, account, store) -> None:
    gw = await gateway(account_refresh_seconds=0.05)
    acct = await account()  # postpaid: the budget, not a balance, stops it
    await store.update_account(acct.id, monthly_budget_nanos=2 * CYCLE, webhook_url="http://127.0.0.1:9/events")
    manager = gw.app[SERVICES].sessions
    async with gw.connect("assemblyai", acct.key, PCM) as ws:
        live = await wait_for(lambda: next(iter(manager.live.values()), None), 5, what="the session registered")
        await wait_for(lambda: live.billing.budget.budget_nanos == 2 * CYCLE or None, 5, what="the budget seen")
        sent = 0
        while sent < 150 and not ws.closed:  # 15 s of audio: 3 cycles wanted, 2 allowed
            await ws.send_bytes(FRAME)
            sent += 1
            if live.cut_off:
                break
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
            assert msg.type is WSMsgType.TEXT, msg
        assert (ws.close_code, msg.extra) == (4002, "budget exceeded")
    (record,) = gw.emulator.recorder.find(provider="assemblyai")
    await record.wait_ended(timeout=10)
    assert record.audio_bytes == 2 * 5 * 16_000 * 2  # exactly the two cycles within the budget reached the provider
    assert [json.loads(t)["type"] for t in record.texts_in()] == ["Terminate"]  # ended gracefully

    async def ended():
        (s,) = (await store.usage(acct.id)).sessions
        return s if s.ended_at is not None else None

    session = await wait_for(ended, 10, what="the session's end written")
    assert (session.cycles, session.cost_nanos, session.close_code) == (2, 2 * CYCLE, 4002)

    async def thresholds():
        found = [e["data"]["percent"] for e in await store.events.list_events(acct.id)]
        return found if len(found) == 3 else None

    assert await wait_for(thresholds, 10, what="the thresholds recorded") == [50, 80, 100]
