"""The price book through the gateway and the emulators (docs/billing.md#the-price-book): a session is priced at the
handshake, before any provider is contacted, billed at its own model's and add-ons' rate, and records its price."""

from __future__ import annotations

import json

from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

SECOND = b"\x01\x00" * 16000  # one second of 16 kHz s16le


async def ended_usage(gw, account_id):
    async def ended():
        usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
        return usage if usage["sessions"] and usage["sessions"][0]["ended_at"] else None

    return await wait_for(ended)


async def stream_assemblyai(gw, key: str, params: str, seconds: int) -> None:
    """``seconds`` of audio in 100 ms frames, faster than real time (the emulator's pacing check off), then
    ``Terminate``; until the provider's close."""
    async with gw.connect("assemblyai", key, f"{params}&emu_rate_check=off") as ws:
        for _ in range(seconds * 10):
            await ws.send_bytes(SECOND[:3200])
        await ws.send_str('{"type":"Terminate"}')
        while (await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass


async def test_a_pro_model_is_billed_at_its_own_rate(gateway, account) -> None:
    gw = await gateway()
    acct = await account(balance_usd="1")
    mark = gw.emulator.recorder.next_seq
    await stream_assemblyai(gw, acct.key, "sample_rate=16000&speech_model=u3-rt-pro", 12)
    rec = await gw.emulator.recorder.wait_for_session(provider="assemblyai", since=mark)
    assert rec.query_string == "sample_rate=16000&speech_model=u3-rt-pro&emu_rate_check=off"  # the client's model
    usage = await ended_usage(gw, acct.id)
    session = usage["sessions"][0]
    # 0.45 USD/h × 5 s = 0.000625 USD a cycle, exactly; 12 s = 3 cycles.
    assert (session["billed_seconds"], session["cost_usd"]) == (15, "0.001875000")
    assert (session["model"], session["rate_usd_per_hour"], session["basis"]) == ("u3-rt-pro", "0.45", "audio")
    assert usage["balance_usd"] == "0.998125000"


async def test_an_addon_adds_its_rate(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    await stream_assemblyai(gw, acct.key, "sample_rate=16000&keyterms_prompt=%5B%22sttgate%22%5D", 12)
    session = (await ended_usage(gw, acct.id))["sessions"][0]
    # (0.15 + 0.05) USD/h × 5 s = 0.000277777…, half-up 0.000277778; 3 cycles.
    assert (session["billed_seconds"], session["cost_usd"]) == (15, "0.000833334")
    assert (session["model"], session["rate_usd_per_hour"]) == ("universal-streaming-english", "0.20")


async def test_speech_model_is_defaulted_upstream_when_absent(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "format_turns=true") as ws:
        begin = json.loads((await ws.receive(timeout=10)).data)
        await ws.close()
    assert begin["type"] == "Begin"
    rec = await gw.emulator.recorder.wait_for_session(provider="assemblyai", since=mark)
    assert rec.query_string == "format_turns=true&speech_model=universal-streaming-english&sample_rate=16000"
    session = (await ended_usage(gw, acct.id))["sessions"][0]
    assert (session["model"], session["rate_usd_per_hour"], session["basis"], session["cost_usd"]) == (
        "universal-streaming-english",
        "0.15",
        "audio",
        "0",
    )


async def refused(gw, acct, provider: str, params: str) -> tuple[int, dict]:
    mark = gw.emulator.recorder.next_seq
    status, body, _ = await handshake(gw.ws_url(f"provider={provider}&api_key={acct.key}&{params}"))
    assert gw.emulator.recorder.find(since=mark) == []  # no provider was contacted
    assert (await Admin(gw.app[SERVICES].store, names()).usage(acct.id))["sessions"] == []  # not a session
    return status, body["error"]


async def test_an_unpriced_model_is_refused_before_any_upstream_connection(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    status, error = await refused(gw, acct, "assemblyai", "sample_rate=16000&speech_model=whisper-rt")
    assert (status, error["code"]) == (400, "unpriced_model")
    assert "u3-rt-pro" in error["message"] and "universal-streaming-english" in error["message"]
    status, error = await refused(gw, acct, "deepgram", "encoding=linear16&sample_rate=16000&model=nova-2")
    assert (status, error["code"]) == (400, "unpriced_model")


async def test_denied_parameters_are_refused_by_name(gateway, account) -> None:
    gw = await gateway()
    acct = await account()
    for params in ("llm_gateway=%7B%22model%22%3A%22x%22%7D", "webhook_url=https%3A%2F%2Fexample.com%2Fh"):
        status, error = await refused(gw, acct, "assemblyai", f"sample_rate=16000&{params}")
        assert (status, error["code"]) == (400, "parameter_not_allowed")
        assert params.partition("=")[0] in error["message"]


async def test_the_balance_check_uses_the_sessions_own_price(gateway, account) -> None:
    gw = await gateway()
    acct = await account(balance_usd="0.0005")  # pays a default cycle (0.000208333), not a Pro one (0.000625)
    status, error = await refused(gw, acct, "assemblyai", "sample_rate=16000&speech_model=u3-rt-pro")
    assert (status, error["code"]) == (402, "insufficient_balance")
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000") as ws:
        await ws.close()


async def test_a_custom_book_and_the_operator_rate(gateway, account, tmp_path) -> None:
    book = tmp_path / "prices.toml"
    book.write_text(
        '[prices.assemblyai]\nbasis = "session"\ndefault_model = "universal-streaming-english"\n'
        'models = { "universal-streaming-english" = "0.15", "whisper-rt" = 3 }\ndeny = []\n'
    )
    gw = await gateway(price_book=str(book), rate_assemblyai="0.30")
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&webhook_url=x&speech_model=whisper-rt") as ws:
        await ws.close()
    assert (await gw.emulator.recorder.wait_for_session(provider="assemblyai", since=mark)) is not None
    await stream_assemblyai(gw, acct.key, "sample_rate=16000", 6)  # the default model at STTGATE_RATE_ASSEMBLYAI
    first, second = (await ended_usage(gw, acct.id))["sessions"][:2]
    # Session basis (docs/billing.md#session-basis): one cycle each, charged by the clock when accepted, whatever the
    # audio (6 s sent faster than real time in a session shorter than 5 s; none at all).
    assert (first["rate_usd_per_hour"], first["basis"], first["cost_usd"]) == ("0.30", "session", "0.000416667")
    assert (second["model"], second["rate_usd_per_hour"], second["cost_usd"]) == ("whisper-rt", "3", "0.004166667")


async def test_the_demo_token_reports_the_default_models_cycle_price(gateway, account, tmp_path) -> None:
    book = tmp_path / "prices.toml"
    book.write_text('[prices.elevenlabs]\ndefault_model = "a"\nmodels = { a = "0.72", b = "9" }\n')
    acct = await account(balance_usd="1")
    gw = await gateway(price_book=str(book), demo_page=True, demo_api_key=acct.key)
    async with gw.http.post(f"{gw.http_url}/demo/token", json={"provider": "elevenlabs"}) as resp:
        body = await resp.json()
    assert (body["rate_usd_per_hour"], body["cycle_price_usd"]) == ("0.72", "0.001000000")


SESSION_BOOK = """
[prices.assemblyai]
basis = "session"
default_model = "universal-streaming-english"
models = { "universal-streaming-english" = "0.15" }
deny = ["llm_gateway", "webhook_url"]
"""


async def test_the_session_basis_bills_time_not_audio(gateway, account, tmp_path) -> None:
    """docs/billing.md#session-basis: 12 s of audio sent at once, then ended: one cycle (the clock's first, charged at
    acceptance), not the three the audio would open."""
    (book := tmp_path / "prices.toml").write_text(SESSION_BOOK)
    gw = await gateway(price_book=str(book))
    acct = await account(balance_usd="1")
    await stream_assemblyai(gw, acct.key, "sample_rate=16000", 12)
    session = (await ended_usage(gw, acct.id))["sessions"][0]
    assert (session["basis"], session["audio_seconds"], session["billed_seconds"]) == ("session", 12.0, 5)
    assert session["billed_seconds"] == 5 * max(1, -(-session["session_seconds"] // 5))


async def test_the_session_basis_charges_ahead_and_cuts_off_an_unpaid_cycle(gateway, account, tmp_path) -> None:
    """A balance of one cycle pays the first 5 s of connection, silent or not; the second cycle cannot be paid: 4002
    at once, before any of its time is used, and the balance is exactly 0."""
    (book := tmp_path / "prices.toml").write_text(SESSION_BOOK)
    gw = await gateway(price_book=str(book))
    acct = await account(balance_usd="0.000208333")  # one cycle at 0.15 USD/h
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        store = gw.app[SERVICES].store

        async def charged_ahead() -> bool:
            return (await Admin(store, names()).usage(acct.id))["balance_usd"] == "0"

        await wait_for(charged_ahead, timeout=3.0)  # cycle 1 at acceptance, not after 5 s
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "insufficient balance")
    session = (await ended_usage(gw, acct.id))["sessions"][0]
    assert (session["billed_seconds"], session["cost_usd"], session["closed_by"]) == (5, "0.000208333", "gateway")
    assert 5.0 <= session["session_seconds"] < 7.0
