"""A query parameter carrying a gateway key or token, whatever its name, is refused and never forwarded
(docs/contract.md#forwarding)."""

from __future__ import annotations

import pytest

from tests.support.upgrade import handshake


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("provider=assemblyai&apiKey={key}", "'apiKey'"),
        ("provider=assemblyai&sample_rate=16000&x-api-key={key}&emu_echo=1", "'x-api-key'"),
        ("provider=elevenlabs&keyterms=%5B%22{key}%22%5D", "'keyterms'"),
        ("provider=assemblyai&{key}", "A query parameter name"),
    ],
)
async def test_a_misnamed_credential_is_refused_before_the_provider(gateway, account, query, named):
    gw = await gateway()
    acct = await account()
    url = gw.ws_url("api_key=" + acct.key + "&" + query.format(key=acct.key))
    status, body, _ = await handshake(url)
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert named in body["error"]["message"] and acct.key not in body["error"]["message"]
    assert gw.emulator.recorder.sessions == []


async def test_a_token_under_another_name_is_refused_on_a_drop_in_route(gateway, account):
    gw = await gateway()
    acct = await account()
    url = f"{gw.http_url}/assemblyai/v3/ws?sample_rate=16000&session_token=sttg_abcdefghijklmnopqrstuvwxyz0123456789"
    status, body, _ = await handshake(url, headers={"Authorization": acct.key})
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert "'session_token'" in body["error"]["message"]
    assert gw.emulator.recorder.sessions == []
