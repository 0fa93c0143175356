"""Only GET upgrades (docs/contract.md#refusals): HEAD with upgrade headers, and every other method, is 405 before
any credential is read or provider session opened."""

from __future__ import annotations

import base64
import os

import aiohttp
import pytest

from sttgate.providers import PROVIDERS

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
}
DROP_IN = [provider.sdk.stream_path for provider in PROVIDERS.values() if provider.sdk is not None]


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("path", ["/ws/v2/audio-stream", *DROP_IN])
async def test_only_get_upgrades(gateway, account, admin, method, path):
    gw = await gateway()
    acct = await account()
    url = f"{gw.http_url}{path}?provider=assemblyai&api_key={acct.key}&sample_rate=16000"
    headers = {**UPGRADE, "Authorization": acct.key, "xi-api-key": acct.key}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET"
        if method != "HEAD":
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert gw.emulator.recorder.sessions == []
    assert (await admin.usage(acct.id))["sessions"] == []


async def test_get_still_upgrades(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_echo=1") as ws:
        await ws.send_bytes(b"\x00" * 3200)
        assert (await ws.receive(timeout=5)).data == b"\x00" * 3200
