"""The account-event poster (docs/contract.md#account-events) on one gateway: ``key.expiring`` found, posted signed
to the account's webhook URL, retried after a failure with the same id and body, then marked delivered."""

from __future__ import annotations

import json

from standardwebhooks import Webhook

from sttgate.pull.webhooks import SIGNATURE_HEADER, verify
from sttgate.store.accounts import KeyOptions
from tests.support.waiting import wait_for


async def test_a_key_expiring_within_7_days_is_posted_once_signed(gateway, account, store, receiver) -> None:
    rec, hook = receiver
    rec.script = [503]
    acct = await account()
    await store.update_account(acct.id, webhook_url=hook)
    soon = await store.create_key(acct.id, KeyOptions(name="ci", expires_in_seconds=2 * 86400))
    await store.create_key(acct.id, KeyOptions(expires_in_seconds=8 * 86400))  # not yet
    gw = await gateway(pull_allow_private=True, account_events_poll_seconds=0.02, webhook_backoff_seconds=0.02)

    async def delivered():
        events = await store.events.list_events(acct.id)
        return events if events and all(e["delivered_at"] for e in events) else None

    (event,) = await wait_for(delivered, 10, what="key.expiring delivered")
    assert event["id"] == f"key.expiring:{soon.id}:{soon.expires_at.isoformat()}"
    assert [status for *_, status, _ in rec.posts] == [503, 200]
    (first, _, _, _), (second, headers, _, _) = rec.posts
    assert first == second  # the retry posts the same bytes
    doc = json.loads(second)
    assert (doc["type"], doc["id"], doc["data"]["key_id"], doc["data"]["name"]) == (
        "key.expiring",
        event["id"],
        soon.id,
        "ci",
    )
    secret = await store.webhook_secret(acct.id)
    assert verify(secret, second, headers[SIGNATURE_HEADER])
    assert Webhook(secret).verify(second, headers)["id"] == event["id"]  # any Standard Webhooks library
    assert headers["webhook-id"] == event["id"]
    assert headers["X-Sttgate-Event-Id"] == event["id"] and headers["X-Sttgate-Event"] == "key.expiring"
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        exposition = await resp.text()
    assert 'sttgate_account_event_posts_total{outcome="failed"} 1.0' in exposition
    assert 'sttgate_account_event_posts_total{outcome="delivered"} 1.0' in exposition
