"""Per-key governance through a running gateway (docs/contract.md#keys): the provider allow-list, expiry, the key's
own stream limit, and usage by key."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import Store
from sttgate.store import auth as auth_module
from sttgate.store.accounts import KeyOptions
from tests.support.upgrade import raw_upgrade
from tests.support.waiting import wait_for

PCM = "sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"
FRAME = b"\x00" * 3200  # 100 ms of 16 kHz pcm_s16le


def refusal(sock) -> tuple[int, str]:
    assert set(sock.body) == {"error"}, sock.body
    return sock.status, sock.body["error"]["code"]


async def new_key(store: Store, account_id: str, **options) -> str:
    return (await store.create_key(account_id, KeyOptions(**options))).key


async def test_a_key_limited_to_assemblyai_is_refused_403_on_elevenlabs(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    key = await new_key(store, acct.id, providers=("assemblyai",))
    refused = await raw_upgrade(gw.port, f"provider=elevenlabs&api_key={key}")
    assert refusal(refused) == (403, "provider_not_allowed")
    assert "assemblyai" in refused.body["error"]["message"]
    # After the provider check (docs/contract.md#refusals): an unknown provider is still 400.
    assert refusal(await raw_upgrade(gw.port, f"provider=nope&api_key={key}")) == (400, "invalid_provider")
    allowed = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={key}&{PCM}")
    try:
        assert allowed.status == 101, allowed.body
    finally:
        await allowed.close(1000)
    # Nothing reached ElevenLabs.
    assert gw.emulator.recorder.find(provider="elevenlabs") == []


async def test_tokens_follow_the_minting_keys_allow_list(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    key = await new_key(store, acct.id, providers=("assemblyai",))
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gw.http_url}/api/v2/audio-stream/token"
    async with gw.http.post(url, json={"provider": "elevenlabs"}, headers=headers) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "provider_not_allowed"
    async with gw.http.post(url, json={}, headers=headers) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    refused = await raw_upgrade(gw.port, f"provider=elevenlabs&token={token}")
    assert refusal(refused) == (403, "provider_not_allowed")
    # The provider-shaped mint of a provider the key may not open is refused too.
    async with gw.http.post(
        f"{gw.http_url}/elevenlabs/v1/single-use-token/realtime_scribe", headers={"xi-api-key": key}
    ) as resp:
        assert resp.status == 403


async def test_an_expired_key_is_refused_like_a_revoked_one(gateway, account, store, monkeypatch) -> None:
    gw = await gateway()
    acct = await account()
    key = await new_key(store, acct.id, expires_in_seconds=60, name="short-lived")
    # A token minted while the key is valid...
    async with gw.http.post(
        f"{gw.http_url}/api/v2/audio-stream/token", json={}, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    ok = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={key}&{PCM}")
    assert ok.status == 101, ok.body
    await ok.close(1000)

    later = auth_module.utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(auth_module, "utcnow", lambda: later)
    refused = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={key}&{PCM}")
    assert refusal(refused) == (401, "invalid_api_key")
    assert refused.body == (await raw_upgrade(gw.port, "provider=assemblyai&api_key=sk-mai-" + "x" * 43)).body
    # ...outlives nothing: the key expired, so the token is refused (and not spent).
    assert refusal(await raw_upgrade(gw.port, f"provider=assemblyai&token={token}&{PCM}")) == (401, "invalid_token")


async def test_a_revoked_keys_tokens_are_refused(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    created = await store.create_key(acct.id)
    async with gw.http.post(
        f"{gw.http_url}/api/v2/audio-stream/token", json={}, headers={"Authorization": f"Bearer {created.key}"}
    ) as resp:
        token = (await resp.json())["token"]
    await store.revoke_key(created.id)
    assert refusal(await raw_upgrade(gw.port, f"provider=assemblyai&token={token}&{PCM}")) == (401, "invalid_token")


async def test_a_keys_max_streams_holds_within_the_accounts(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account(max_streams=5)
    limited = await new_key(store, acct.id, max_streams=1)
    other = await new_key(store, acct.id)
    query = f"provider=assemblyai&api_key={limited}&{PCM}"
    first = await raw_upgrade(gw.port, query)
    opened = []
    try:
        assert first.status == 101, first.body
        second = await raw_upgrade(gw.port, query)
        assert refusal(second) == (429, "too_many_streams")
        assert "key" in second.body["error"]["message"]
        # The account still has room: another key of it opens sessions up to the account's limit of 5.
        for _ in range(4):
            sock = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={other}&{PCM}")
            opened.append(sock)
            assert sock.status == 101, sock.body
        full = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={other}&{PCM}")
        assert refusal(full) == (429, "too_many_streams")
        assert "account" in full.body["error"]["message"]
    finally:
        for sock in opened:
            await sock.close(1000)
        await first.close(1000)


async def test_usage_by_key_sums_to_the_accounts(gateway, account, store, admin: Admin) -> None:
    gw = await gateway()
    acct = await account()
    keys = [acct.key, await new_key(store, acct.id, name="second")]
    for n, key in enumerate(keys, start=1):
        async with gw.connect("assemblyai", key, PCM) as ws:
            for _ in range(60 * n):  # 6 s, then 12 s of audio: 2 and 3 cycles
                await ws.send_bytes(FRAME)
            await ws.send_str('{"type": "Terminate"}')
            async for _ in ws:
                pass

    async def ended() -> dict | None:
        usage = await admin.usage(acct.id)
        return usage if len(usage["sessions"]) == 2 and all(s["ended_at"] for s in usage["sessions"]) else None

    whole = await wait_for(ended, 15, what="both sessions ended")
    ids = [(await store.list_keys(acct.id))[i].id for i in range(2)]
    by_key = [await admin.usage(acct.id, key_id=k) for k in ids]
    assert [len(u["sessions"]) for u in by_key] == [1, 1]
    for provider in names():
        assert sum(Decimal(u["totals"][provider]["cost_usd"]) for u in by_key) == Decimal(
            whole["totals"][provider]["cost_usd"]
        )
        assert (
            sum(u["totals"][provider]["billed_seconds"] for u in by_key) == whole["totals"][provider]["billed_seconds"]
        )
    assert whole["totals"]["assemblyai"]["billed_seconds"] == 25


async def test_last_used_is_recorded(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    assert (await store.list_keys(acct.id))[0].last_used_at is None
    sock = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={acct.key}&{PCM}")
    await sock.close(1000)

    async def used():
        return (await store.list_keys(acct.id))[0].last_used_at

    assert await wait_for(used, 10, what="last_used_at written") is not None
