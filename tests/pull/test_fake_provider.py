"""A provider is one module plus one registration line: a throw-away provider registered here, and nowhere else,
streams, pulls, is billed and listed like the built-in ones.

``fakeprov`` speaks binary PCM with a ``Terminate`` end; its upstream is the AssemblyAI emulator's path. It lives in
the pull tests for their FFmpeg, media and webhook fixtures; push, usage, refusals and the drop-in route use the
shared gateway fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal

import pytest

from sttgate.config import Settings
from sttgate.core.metering import UNMETERABLE, AudioFormat, BinaryMeter, Meter
from sttgate.core.money import CYCLE_SECONDS, cycle_price_nanos, format_usd
from sttgate.providers import PROVIDERS, Provider, names, registered
from sttgate.providers.base import SdkShape, bearer_or_raw, json_object
from tests.support.emulator import OPERATOR_KEYS
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

RATE = Decimal("0.60")
TERMINATE = '{"type":"Terminate"}'


def _credential(headers: Mapping[str, str], query_token: str | None) -> tuple[str | None, str | None]:
    return bearer_or_raw(headers.get("Authorization")), query_token


class FakeProv(Provider):
    name = "fakeprov"
    default_url = "ws://127.0.0.1:9/v3/ws"  # the tests point it at the emulator
    default_rate = RATE
    required_defaults = (("sample_rate", "16000"),)
    pull_format = (("sample_rate", "16000"), ("encoding", "pcm_s16le"))
    min_pull_frame_bytes = 1600
    closes_after_end = True
    sdk = SdkShape(stream_path="/fakeprov/v1/listen", credential=_credential)

    def credential_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": api_key}

    def new_meter(self, forwarded: str) -> Meter:
        return BinaryMeter(AudioFormat(2, 16000))

    def audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def end_frames(self, forwarded: str = "") -> list[str]:
        return [TERMINATE]

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        message = json_object(text)
        return message is not None and message.get("type") == "Termination"


@pytest.fixture
def fakeprov() -> Iterator[Provider]:
    with registered(FakeProv()) as provider:
        yield provider
    assert "fakeprov" not in PROVIDERS


async def _fake_gateway(gateway, emulator):
    return await gateway(
        fakeprov_url=emulator.url("assemblyai"), fakeprov_api_key=OPERATOR_KEYS["assemblyai"], pull_allow_private=True
    )


def _cost(cycles: int) -> str:
    return format_usd(cycles * cycle_price_nanos(RATE))


async def _usage(gw, key: str) -> dict:
    async with gw.http.get(f"{gw.http_url}/api/v2/usage", headers={"Authorization": key}) as resp:
        assert resp.status == 200
        return await resp.json()


def test_settings_follow_the_registry(fakeprov, monkeypatch) -> None:
    assert names() == ("elevenlabs", "assemblyai", "deepgram", "fakeprov")
    defaults = Settings().provider("fakeprov")
    assert (defaults.url, defaults.api_key.get_secret_value(), defaults.rate) == (FakeProv.default_url, "", RATE)
    monkeypatch.setenv("STTGATE_FAKEPROV_URL", "ws://env/v3/ws")
    monkeypatch.setenv("FAKEPROV_API_KEY", "env-key")
    monkeypatch.setenv("STTGATE_RATE_FAKEPROV", "1.5")
    from_env = Settings.load().provider("fakeprov")
    assert (from_env.url, from_env.api_key.get_secret_value(), from_env.rate) == ("ws://env/v3/ws", "env-key", 1.5)
    assert Settings.load(fakeprov_url="ws://kw/v3/ws").provider("fakeprov").url == "ws://kw/v3/ws"
    assert "fakeprov_url" in Settings().masked()


async def test_push_streaming_is_billed_and_totalled(fakeprov, gateway, emulator, account) -> None:
    gw = await _fake_gateway(gateway, emulator)
    acct = await account()
    assert (await _usage(gw, acct.key))["totals"]["fakeprov"] == {
        "sessions": 0,
        "audio_seconds": 0.0,
        "billed_seconds": 0,
        "cost_usd": "0",
    }
    mark = emulator.recorder.next_seq
    async with gw.connect("fakeprov", acct.key, "emu_rate_check=off") as ws:
        for _ in range(60):  # 6 s of 16 kHz s16le in 100 ms frames
            await ws.send_bytes(b"\0" * 3200)
        await ws.send_str(TERMINATE)
        async for _ in ws:
            pass
    session = await emulator.recorder.wait_for_session(provider="assemblyai", since=mark)
    await session.wait_ended()
    assert "sample_rate=16000" in session.query_string and session.audio_seconds == pytest.approx(6.0)

    async def ended() -> bool:
        sessions = (await _usage(gw, acct.key))["sessions"]
        return bool(sessions and sessions[0]["ended_at"])

    await wait_for(ended)
    usage = await _usage(gw, acct.key)
    assert usage["sessions"][0]["provider"] == "fakeprov"
    assert usage["totals"]["fakeprov"] == {
        "sessions": 1,
        "audio_seconds": 6.0,
        "billed_seconds": 2 * CYCLE_SECONDS,
        "cost_usd": _cost(2),
    }


async def test_refusals_list_it_and_its_drop_in_route_exists(fakeprov, gateway, emulator, account) -> None:
    gw = await _fake_gateway(gateway, emulator)
    acct = await account()
    for query, code in (
        (f"api_key={acct.key}", "missing_provider"),
        (f"provider=x&api_key={acct.key}", "invalid_provider"),
    ):
        status, body, _ = await handshake(gw.ws_url(query))
        assert (status, body["error"]["code"]) == (400, code)
        assert body["error"]["message"].endswith("valid providers: elevenlabs, assemblyai, deepgram, fakeprov.")
    status, body, headers = await handshake(
        f"{gw.http_url}/fakeprov/v1/listen?emu_echo=1", {"Authorization": f"Bearer {acct.key}"}
    )
    assert status == 101 and headers["X-Session-Id"]
    async with gw.http.ws_connect(
        f"{gw.http_url}/fakeprov/v1/listen?emu_echo=1", headers={"Authorization": acct.key}
    ) as ws:
        await ws.send_bytes(b"\1" * 3200)
        assert (await ws.receive_bytes()) == b"\1" * 3200


async def _pull_until_ended(gw, acct, audio_url: str, hook: str) -> dict:
    """Start a ``fakeprov`` pull task and return its view once it has ended."""
    body = {"audio_url": audio_url, "provider": "fakeprov", "callback_url": hook}
    async with gw.http.post(
        f"{gw.http_url}/api/v2/audio-stream/start", json=body, headers={"Authorization": acct.key}
    ) as resp:
        assert resp.status == 200, await resp.text()
        task_id = (await resp.json())["data"]["task_id"]

    async def view() -> dict:
        async with gw.http.get(
            f"{gw.http_url}/api/v2/audio-stream/tasks/{task_id}", headers={"Authorization": acct.key}
        ) as resp:
            return (await resp.json())["data"]

    await wait_for(lambda: _ended(view), timeout=20.0)
    return await view()


async def test_pull_mode(fakeprov, gateway, emulator, account, media_server, receiver) -> None:
    gw = await _fake_gateway(gateway, emulator)
    acct = await account()
    rec, hook = receiver
    view = await _pull_until_ended(gw, acct, f"{media_server}/tone3.wav", hook)
    assert view["status"] == "source_ended", view
    assert (view["audio_seconds"], view["billed_seconds"]) == (3.0, CYCLE_SECONDS)
    await wait_for(rec.ended)
    accepted = rec.accepted()
    assert {e["provider"] for e in accepted} == {"fakeprov"}
    assert accepted[-1]["data"] == {"status": "source_ended", "reason": "the source ended"}
    assert any("Turn" in json.dumps(e["data"]) for e in accepted[:-1])


async def _ended(view) -> bool:
    return (await view())["ended_at"] is not None


class RefusingMeter(BinaryMeter):
    """Meters 1 s of audio, then finds every frame unmeterable (docs/billing.md#strict-metering)."""

    def binary(self, data: bytes) -> int:
        if self._units + len(data) > 32_000:
            return UNMETERABLE
        return super().binary(data)


class RefusingProv(FakeProv):
    def new_meter(self, forwarded: str) -> Meter:
        return RefusingMeter(AudioFormat(2, 16000))


async def test_a_pull_frame_the_meter_refuses_ends_the_task_cleanly(
    gateway, emulator, account, media_server, receiver
) -> None:
    with registered(RefusingProv()):
        gw = await _fake_gateway(gateway, emulator)
        acct = await account()
        rec, hook = receiver
        mark = emulator.recorder.next_seq
        task = await _pull_until_ended(gw, acct, f"{media_server}/tone3.wav", hook)
        assert (task["status"], task["last_error"]) == ("source_failed", "unmeterable audio")
        assert (task["audio_seconds"], task["billed_seconds"]) == (1.0, CYCLE_SECONDS)
        session = await emulator.recorder.wait_for_session(provider="assemblyai", since=mark)
        await session.wait_ended()
        assert session.audio_seconds == pytest.approx(1.0)  # the refused frame never reached the provider
        assert session.texts_in() == [TERMINATE]  # ended gracefully
        usage = await _usage(gw, acct.key)
        assert (usage["sessions"][0]["close_code"], usage["sessions"][0]["closed_by"]) == (1008, "gateway")
        await wait_for(rec.ended)
        assert rec.accepted()[-1]["data"] == {
            "status": "source_failed",
            "reason": "the gateway could not meter the audio",
        }
