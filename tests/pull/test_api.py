"""The REST refusals of pull mode (docs/pull.md#rest-api, refusals in the push order and body); none of them starts
FFmpeg."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.pull import ffmpeg_children

GOOD_AUDIO = "http://127.0.0.1:9/a.wav"
GOOD_HOOK = "http://127.0.0.1:9/hook"


def body(**fields):
    return {"audio_url": GOOD_AUDIO, "provider": "assemblyai", "callback_url": GOOD_HOOK, **fields}


def error(payload) -> str:
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
    return payload["error"]["code"]


async def test_credentials_are_checked_first(pull_gateway, account) -> None:
    gw = await pull_gateway()
    assert (await gw.start(None, "not even json"))[0] == 401
    status, payload = await gw.start(None, body())
    assert (status, error(payload)) == (401, "missing_api_key")
    status, payload = await gw.start("sk-mai-" + "x" * 43, body())
    assert (status, error(payload)) == (401, "invalid_api_key")
    disabled = await account(streaming_enabled=False)
    status, payload = await gw.start(disabled.key, body())
    assert (status, error(payload)) == (403, "streaming_not_enabled")


async def test_raw_authorization_header_is_accepted(pull_gateway, account) -> None:
    gw = await pull_gateway()
    acct = await account()
    async with gw.http.post(
        gw.base + "/api/v2/audio-stream/start", json=body(provider="nope"), headers={"Authorization": acct.key}
    ) as resp:
        assert resp.status == 400
        assert error(await resp.json()) == "invalid_provider"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ([1, 2], "invalid_request"),
        ("text", "invalid_request"),
        (body(provider=None), "missing_provider"),
        (body(provider="AssemblyAI"), "invalid_provider"),
        (body(audio_url="file:///etc/passwd"), "invalid_audio_url"),
        (body(audio_url="concat:http://a|http://b"), "invalid_audio_url"),
        (body(audio_url=None), "invalid_audio_url"),
        (body(audio_url="file:///etc/passwd", callback_url="ftp://x/"), "invalid_audio_url"),
        (body(callback_url="ftp://example.com/hook"), "invalid_callback_url"),
        (body(callback_url=None), "invalid_callback_url"),
        (body(sample_rate=8000), "invalid_request"),
        (body(provider="elevenlabs", audio_format="ulaw_8000"), "invalid_request"),
        (body(keyterms=[["nested"]]), "invalid_request"),
        # priced like a push session, before the provider (docs/billing.md#the-price-book)
        (body(speech_model="whisper-rt"), "unpriced_model"),
        (body(llm_gateway={"model": "x"}), "parameter_not_allowed"),
    ],
)
async def test_bad_bodies_and_urls_are_400(pull_gateway, account, payload, code) -> None:
    gw = await pull_gateway()
    acct = await account()
    status, answer = await gw.start(acct.key, payload)
    assert (status, error(answer)) == (400, code)
    assert ffmpeg_children() == []


async def test_private_addresses_refused_by_default(pull_gateway, account) -> None:
    gw = await pull_gateway(pull_allow_private=False)
    acct = await account()
    status, answer = await gw.start(acct.key, body(audio_url="http://127.0.0.1:8000/a.wav"))
    assert (status, error(answer)) == (400, "invalid_audio_url")
    assert "loopback" in answer["error"]["message"]
    status, answer = await gw.start(acct.key, body(audio_url="rtmp://169.254.169.254/live/x"))
    assert (status, error(answer)) == (400, "invalid_audio_url")
    status, answer = await gw.start(acct.key, body(audio_url="https://8.8.8.8/a.m3u8", callback_url=GOOD_HOOK))
    assert (status, error(answer)) == (400, "invalid_callback_url")


async def test_slot_and_balance_refusals(pull_gateway, account) -> None:
    gw = await pull_gateway()
    full = await account(max_streams=0)
    status, answer = await gw.start(full.key, body())
    assert (status, error(answer)) == (429, "too_many_streams")
    poor = await account(balance_usd="0.000000001")
    status, answer = await gw.start(poor.key, body())
    assert (status, error(answer)) == (402, "insufficient_balance")


async def test_a_task_belongs_to_its_account(pull_gateway, account, receiver, media_server) -> None:
    gw = await pull_gateway()
    owner, other = await account(), await account(name="other")
    _, hook = receiver
    status, answer = await gw.start(owner.key, body(audio_url=f"{media_server}/tone60.wav", callback_url=hook))
    assert status == 200, answer
    task_id = answer["data"]["task_id"]
    for status, answer in (await gw.task(other.key, task_id), await gw.stop(other.key, task_id)):
        assert (status, error(answer)) == (404, "task_not_found")
    status, answer = await gw.task(owner.key, task_id)
    assert status == 200 and answer["data"]["status"] == "running"
    assert (await gw.task(owner.key, "no-such-task"))[0] == 404
    assert (await gw.stop(owner.key, task_id))[0] == 200
    assert (await gw.wait_status(owner.key, task_id))["status"] == "stopped"


async def test_pull_tasks_and_push_sessions_share_the_admission_limit(
    pull_gateway, account, receiver, media_server
) -> None:
    """docs/configuration.md#admission-control: a running pull task is one of the process's sessions; at the limit the
    next task and the next WebSocket are both 503 ``gateway_overloaded``, and a task is admitted again once it ends."""
    gw = await pull_gateway(max_sessions_per_process=1)
    acct = await account(max_streams=5)
    _, hook = receiver
    task = body(audio_url=f"{media_server}/tone60.wav", callback_url=hook)
    status, answer = await gw.start(acct.key, task)
    assert status == 200, answer
    task_id = answer["data"]["task_id"]
    status, answer = await gw.start(acct.key, task)
    assert (status, error(answer)) == (503, "gateway_overloaded")
    push = gw.base.replace("http://", "ws://") + "/ws/v2/audio-stream?provider=assemblyai"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect(push, headers={"Authorization": acct.key})
    assert refused.value.status == 503
    assert (await gw.stop(acct.key, task_id))[0] == 200
    assert (await gw.wait_status(acct.key, task_id))["status"] == "stopped"
    status, answer = await gw.start(acct.key, task)
    assert status == 200, answer
    assert (await gw.stop(acct.key, answer["data"]["task_id"]))[0] == 200
    assert (await gw.wait_status(acct.key, answer["data"]["task_id"]))["status"] == "stopped"
