"""Account events across gateways (docs/contract.md#account-events): two real ``sttgate serve`` processes on one
PostgreSQL database drain one prepaid balance; the crossing of ``low_balance_usd`` is posted exactly once, signed with
the account's webhook secret, retried after a failure under the same id."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from sttgate.pull.webhooks import SIGNATURE_HEADER, verify
from sttgate.store import Store
from tests.gateway.test_multi_gateway import (  # noqa: F401 (fixtures)
    CYCLE_NANOS,
    cli,
    customer,
    nanos_usd,
    pg,
    serve,
    stream_audio,
)
from tests.support.pull import Receiver
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


async def test_a_balance_crossing_low_is_posted_once_with_two_gateways(serve, customer, pg) -> None:  # noqa: F811
    acct = await customer(max_streams=10, balance=nanos_usd(6 * CYCLE_NANOS))
    receiver = Receiver(script=[500])  # the first post fails: the event is retried, under the same id
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    async with serve_app(app) as base:
        store = await Store.connect(pg, migrate=False)
        try:
            await store.update_account(acct.id, webhook_url=f"{base}/events", low_balance_nanos=3 * CYCLE_NANOS)
            secret = await store.webhook_secret(acct.id)
            env = {
                "STTGATE_PULL_ALLOW_PRIVATE": "true",  # the receiver is on loopback
                "STTGATE_ACCOUNT_EVENTS_POLL_SECONDS": "0.05",
                "STTGATE_WEBHOOK_BACKOFF_SECONDS": "0.05",
            }
            a, b = await serve("a", "b", **env)
            query = f"provider=assemblyai&api_key={acct.key}&sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"
            # Four sessions, two on each gateway, 12 cycles asked of a balance of 6: the balance crosses 3 cycles once.
            async with aiohttp.ClientSession() as http:
                sockets = [await http.ws_connect(gw.ws_url(query), max_msg_size=0) for gw in (a, b, a, b)]
                outcomes = await asyncio.gather(*(stream_audio(ws, 120) for ws in sockets))
            assert any(out.close_code == 4002 for out in outcomes)

            async def all_delivered():
                events = await store.events.list_events(acct.id)
                types = sorted(e["type"] for e in events)
                done = types == ["balance.exhausted", "balance.low"] and all(e["delivered_at"] for e in events)
                return events if done else None

            events = await wait_for(all_delivered, 20, what="the balance events delivered")
        finally:
            await store.close()

    low = next(e for e in events if e["type"] == "balance.low")
    assert low["id"] == f"balance.low:{acct.id}:1"
    assert low["data"]["low_balance_usd"] == nanos_usd(3 * CYCLE_NANOS)
    posts = [(json.loads(body), headers, status) for body, headers, status, _ in receiver.posts]
    low_posts = [(doc, status) for doc, _, status in posts if doc["type"] == "balance.low"]
    # Exactly once accepted; the failed first attempt was retried with the same id and body.
    assert [status for _, status in low_posts] in ([500, 200], [200])
    assert {doc["id"] for doc, _ in low_posts} == {low["id"]}
    assert sum(status == 200 for _, _, status in posts) == 2  # balance.low and balance.exhausted, once each
    assert sum(status == 500 for _, _, status in posts) == 1  # and the one failed attempt
    for body, headers, _, _ in receiver.posts:
        assert verify(secret, body, headers[SIGNATURE_HEADER])
        assert Webhook(secret).verify(body, headers)["id"] == headers["webhook-id"] == json.loads(body)["id"]
        assert headers["X-Sttgate-Event-Id"] == json.loads(body)["id"]
