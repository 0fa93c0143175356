"""The official ``deepgram-sdk`` (7.x), unmodified, through the gateway to the emulator.

The SDK is pointed at the gateway by its base URL only (an environment whose ``base`` and ``production`` are
``http://…/deepgram`` and ``ws://…/deepgram``; docs/sdk.md) and given the customer's ``sk-mai-`` key or a token from
the gateway's ``/deepgram/v1/auth/grant``; it streams the bundled speech sample, receives transcripts, and the
account is billed exactly (docs/billing.md).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from tests.sdk.test_sdk_clients import CHUNK, SECONDS, TIMEOUT, Start, assert_bill, assert_emulator_words, sample_pcm
from tests.support.gateway import AccountGateway, ended_usage

pytest.importorskip("deepgram", minversion="5", reason="pip install 'deepgram-sdk>=7'")

from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.environment import DeepgramClientEnvironment

# The SDK imports websockets' deprecated names and opens its async socket with the legacy API: both warn.
pytestmark = [
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:websockets.client.WebSocketClientProtocol is deprecated:DeprecationWarning"),
]

QUERY = "channels=1&encoding=linear16&interim_results=true&model=nova-3&punctuate=true&sample_rate=16000"
OPTIONS: dict[str, Any] = {
    "model": "nova-3",
    "encoding": "linear16",
    "sample_rate": 16000,
    "channels": 1,
    "interim_results": True,
    "punctuate": True,
}


def environment(gw: AccountGateway) -> DeepgramClientEnvironment:
    """The gateway as the SDK's whole environment: REST (``auth/grant``) and the listen WebSocket."""
    base = f"{gw.host}/deepgram"
    return DeepgramClientEnvironment(
        base=f"http://{base}", production=f"ws://{base}", agent=f"ws://{base}", agent_rest=f"http://{base}"
    )


def finals_and_metadata(messages: list[Any]) -> tuple[list[str], Any]:
    finals = [
        m.channel.alternatives[0].transcript
        for m in messages
        if getattr(m, "type", None) == "Results" and m.is_final and m.channel.alternatives[0].transcript
    ]
    metadata = [m for m in messages if getattr(m, "type", None) == "Metadata"]
    assert len(metadata) == 1, messages
    return finals, metadata[0]


def assert_upstream(gw: AccountGateway, secret: str) -> None:
    rec = gw.recorder.last if gw.recorder else None
    assert rec is not None and rec.provider == "deepgram"
    # The SDK's query went upstream byte for byte; the operator's key replaced the customer's credential.
    assert rec.query_string == QUERY
    assert rec.header("Authorization") == "Token emulator-deepgram-key"
    assert secret not in str(rec.headers) and secret not in rec.query_string
    assert rec.texts_in() == ['{"type": "CloseStream"}']


async def test_deepgram_async_sdk_with_api_key(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    client = AsyncDeepgramClient(api_key=gw.key, environment=environment(gw))
    pcm = sample_pcm()
    messages: list[Any] = []
    async with asyncio.timeout(TIMEOUT), client.listen.v1.connect(**OPTIONS) as conn:
        for i in range(0, len(pcm), CHUNK):
            await conn.send_media(pcm[i : i + CHUNK])
        await conn.send_close_stream()  # then read until the gateway relays the provider's close
        messages = [message async for message in conn]
    finals, metadata = finals_and_metadata(messages)
    assert_emulator_words(" ".join(finals))
    assert metadata.duration == SECONDS
    assert_upstream(gw, gw.key)
    usage = await ended_usage(gw, "deepgram")
    assert_bill(usage, "deepgram", gw.settings.rate_deepgram, SECONDS)
    # The provider's own figure equals the gateway's.
    assert usage["sessions"][0]["audio_seconds"] == metadata.duration


def _sync_session(gw: AccountGateway, token: str, pcm: bytes) -> list[Any]:
    """The sync client (``websockets.sync``) with a bearer token, reading on a thread as the SDK's docs show."""
    client = DeepgramClient(access_token=token, environment=environment(gw))
    messages: list[Any] = []
    with client.listen.v1.connect(**OPTIONS) as conn:
        reader = threading.Thread(target=lambda: messages.extend(conn), daemon=True)
        reader.start()
        for i in range(0, len(pcm), CHUNK):
            conn.send_media(pcm[i : i + CHUNK])
        conn.send_close_stream()
        reader.join(TIMEOUT)
        assert not reader.is_alive()
    return messages


async def test_deepgram_sdk_with_a_granted_token(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    async with httpx.AsyncClient() as http:  # the SDK does not close a client it made itself
        backend = AsyncDeepgramClient(api_key=gw.key, environment=environment(gw), httpx_client=http)
        grant = await backend.auth.v1.tokens.grant(ttl_seconds=60)
    assert grant.access_token.startswith("sttg_") and grant.expires_in == 60

    pcm = sample_pcm(3.0)
    messages = await asyncio.to_thread(_sync_session, gw, grant.access_token, pcm)
    finals, metadata = finals_and_metadata(messages)
    assert_emulator_words(" ".join(finals))
    assert metadata.duration == 3.0
    assert_upstream(gw, grant.access_token)
    assert_bill(await ended_usage(gw, "deepgram"), "deepgram", gw.settings.rate_deepgram, 3.0)

    # Single use: the same token again is refused before the upgrade (the SDK raises on the 401).
    with pytest.raises(Exception, match="401"):
        await asyncio.to_thread(_sync_session, gw, grant.access_token, pcm[:3200])
