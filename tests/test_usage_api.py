"""``GET /api/v2/usage``: the docs/contract.md#usage document, for the account whose own key asks, and for no one
else."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sttgate.admin import Admin
from sttgate.providers import names
from tests.support.upgrade import handshake


async def _stream_12_seconds(gw, key: str) -> None:
    async with gw.connect("assemblyai", key, "sample_rate=16000&emu_rate_check=off") as ws:
        for _ in range(120):
            await ws.send_bytes(b"\0" * 3200)  # 100 ms of 16 kHz s16le
        await ws.send_str(json.dumps({"type": "Terminate"}))
        async for _ in ws:
            pass


async def test_usage_shows_the_callers_bill_only(gateway, account, store) -> None:
    gw = await gateway()
    mine = await account(balance_usd="0.12")
    other = await account()
    # The gateway ends the session row before the client sees its close, so the bill is final here.
    await _stream_12_seconds(gw, mine.key)
    async with gw.http.get(f"{gw.http_url}/api/v2/usage", headers={"Authorization": f"Bearer {mine.key}"}) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["account_id"] == mine.id
    assert doc["totals"]["assemblyai"] == {
        "sessions": 1,
        "audio_seconds": 12.0,
        "billed_seconds": 15,
        "cost_usd": "0.000624999",
    }
    assert doc["totals"]["elevenlabs"]["cost_usd"] == "0"
    assert doc["balance_usd"] == "0.119375001"
    [session] = doc["sessions"]
    assert session["kind"] == "websocket" and session["closed_by"] in ("client", "upstream")
    # The same document as the CLI prints, and another account sees none of it.
    assert doc == await Admin(store, names()).usage(mine.id)
    async with gw.http.get(f"{gw.http_url}/api/v2/usage?api_key={other.key}") as resp:
        theirs = await resp.json()
    assert theirs["account_id"] == other.id and theirs["sessions"] == [] and theirs["balance_usd"] is None


async def test_usage_filters_by_time(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    await _stream_12_seconds(gw, acct.key)
    url = f"{gw.http_url}/api/v2/usage"
    async with gw.http.get(url, params={"since": "2999-01-01"}, headers={"Authorization": acct.key}) as resp:
        assert (await resp.json())["sessions"] == []
    async with gw.http.get(url, params={"since": "not-a-date"}, headers={"Authorization": acct.key}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_usage_needs_a_valid_key(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    [key] = await store.list_keys(acct.id)
    await store.revoke_key(key.id)
    cases = (({}, "missing_api_key"), ({"Authorization": "sk-mai-" + "x" * 43}, "invalid_api_key"))
    for headers, code in (*cases, ({"Authorization": acct.key}, "invalid_api_key")):
        async with gw.http.get(f"{gw.http_url}/api/v2/usage", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == code


async def test_cli_and_api_read_since_and_until_alike(gateway, account, store, tmp_path) -> None:
    """``until=<today>`` means through today on both (it was today's midnight over HTTP); a refused handshake is on
    neither."""
    gw = await gateway()
    acct = await account()
    await _stream_12_seconds(gw, acct.key)
    status, _, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_handshake_status=503"))
    assert status == 502
    [session] = (await Admin(store, names()).usage(acct.id))["sessions"]
    today = datetime.fromisoformat(session["started_at"]).date()  # the session's UTC day, even just past midnight
    yesterday, tomorrow = (today + timedelta(days=d) for d in (-1, 1))
    windows = [
        {"until": today.isoformat()},
        {"since": today.isoformat()},
        {"since": today.isoformat(), "until": today.isoformat()},
        {"until": f"{tomorrow.isoformat()}T00:00:00+00:00"},
        {"until": yesterday.isoformat()},
        {"since": tomorrow.isoformat()},
    ]
    for params in windows:
        async with gw.http.get(f"{gw.http_url}/api/v2/usage", params=params, headers={"Authorization": acct.key}) as r:
            assert r.status == 200
            over_http = await r.json()
        flags = [arg for name, value in params.items() for arg in (f"--{name}", value)]
        cli = await asyncio.to_thread(
            subprocess.run,
            [*_sttgate(), "usage", "--account", acct.id, *flags, "--json", "--database-url", str(store.engine.url)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == over_http, params
        expected = 0 if params in ({"until": yesterday.isoformat()}, {"since": tomorrow.isoformat()}) else 1
        assert len(over_http["sessions"]) == over_http["totals"]["assemblyai"]["sessions"] == expected, params


async def test_bad_windows_are_400_invalid_request(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    bad = [
        {"since": "yesterday"},
        {"until": "2026-11-31"},
        {"until": "9999-12-31"},
        {"since": "2026-02-01", "until": "2026-01-01"},
    ]
    for params in bad:
        async with gw.http.get(f"{gw.http_url}/api/v2/usage", params=params, headers={"Authorization": acct.key}) as r:
            assert r.status == 400, params
            assert (await r.json())["error"]["code"] == "invalid_request"


def _sttgate() -> list[str]:
    script = Path(sys.executable).with_name("sttgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sttgate"]


async def _stream_query(gw, query: str) -> None:
    """A short session opened with ``query`` (a key or a token), ended by the client."""
    async with gw.http.ws_connect(gw.ws_url(f"provider=assemblyai&sample_rate=16000&emu_rate_check=off&{query}")) as ws:
        for _ in range(30):
            await ws.send_bytes(b"\0" * 3200)
        await ws.send_str(json.dumps({"type": "Terminate"}))
        async for _ in ws:
            pass


async def _usage_over_http(gw, key: str, **params: str) -> dict:
    async with gw.http.get(f"{gw.http_url}/api/v2/usage", params=params, headers={"Authorization": key}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_sessions_are_attributed_to_the_key_or_the_tokens_minting_key(gateway, account, store) -> None:
    """docs/contract.md#usage: a session opened with a key, and one opened with a token that key minted, both carry
    that key's id; ``key_id`` keeps only that key's sessions, and the per-key documents add up to the account's."""
    gw = await gateway()
    acct = await account(balance_usd="0.12")
    [first] = await store.list_keys(acct.id)
    second = await store.create_key(acct.id)
    async with gw.http.post(
        f"{gw.http_url}/api/v2/audio-stream/token",
        json={"provider": "assemblyai"},
        headers={"Authorization": f"Bearer {acct.key}"},
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    await _stream_query(gw, f"api_key={acct.key}")
    await _stream_query(gw, f"token={token}")
    await _stream_query(gw, f"api_key={second.key}")

    everything = await _usage_over_http(gw, acct.key)
    assert sorted(s["api_key_id"] for s in everything["sessions"]) == sorted([first.id, first.id, second.id])
    per_key = {k: await _usage_over_http(gw, acct.key, key_id=k) for k in (first.id, second.id)}
    assert [len(per_key[first.id]["sessions"]), len(per_key[second.id]["sessions"])] == [2, 1]
    for key_id, doc in per_key.items():
        assert {s["api_key_id"] for s in doc["sessions"]} == {key_id}
        assert doc["account_id"] == acct.id and doc["balance_usd"] == everything["balance_usd"]
    for provider, total in everything["totals"].items():
        parts = [doc["totals"][provider] for doc in per_key.values()]
        assert sum(p["sessions"] for p in parts) == total["sessions"]
        assert sum(p["billed_seconds"] for p in parts) == total["billed_seconds"]
        assert sum(Decimal(p["cost_usd"]) for p in parts) == Decimal(total["cost_usd"])
        assert abs(sum(p["audio_seconds"] for p in parts) - total["audio_seconds"]) < 0.01
    assert everything["totals"]["assemblyai"]["sessions"] == 3 and Decimal(everything["balance_usd"]) < Decimal("0.12")


async def test_cli_and_api_filter_by_key_alike(gateway, account, store) -> None:
    gw = await gateway()
    acct = await account()
    other = await account()
    [key] = await store.list_keys(acct.id)
    [other_key] = await store.list_keys(other.id)
    spare = await store.create_key(acct.id)
    await _stream_query(gw, f"api_key={acct.key}")
    await _stream_query(gw, f"api_key={other.key}")
    for key_id, expected in ((key.id, 1), (spare.id, 0), (other_key.id, 0)):
        over_http = await _usage_over_http(gw, acct.key, key_id=key_id)
        cli = await asyncio.to_thread(
            subprocess.run,
            [
                *_sttgate(),
                "usage",
                "--account",
                acct.id,
                "--key-id",
                key_id,
                "--json",
                "--database-url",
                str(store.engine.url),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == over_http, key_id
        # Another account's key gives nothing: never someone else's sessions.
        assert len(over_http["sessions"]) == over_http["totals"]["assemblyai"]["sessions"] == expected, key_id
        assert all(s["api_key_id"] == key.id for s in over_http["sessions"])
    assert over_http["account_id"] == acct.id
