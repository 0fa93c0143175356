"""Pull tasks end to end: REST → FFmpeg on a loopback source → provider emulator → signed webhooks."""

from __future__ import annotations

import json

import pytest

from sttgate.pull.ffmpeg import PACING_LEAD_SECONDS
from sttgate.pull.webhooks import SIGNATURE_HEADER, verify

from .conftest import ffmpeg_children, wait_for


@pytest.mark.parametrize("provider", ["assemblyai", "elevenlabs"])
async def test_http_file_to_webhooks(pull_gateway, account, store, media_server, receiver, provider) -> None:
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    mark = gw.recorder.next_seq
    status, body = await gw.start(
        acct.key, {"audio_url": f"{media_server}/tone3.wav", "provider": provider, "callback_url": hook}
    )
    assert status == 200, body
    assert body["code"] == 200 and body["message"] == "success"
    task_id = body["data"]["task_id"]
    view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "source_ended", view
    assert view["audio_seconds"] == 3.0
    assert view["billed_seconds"] == 5
    await wait_for(lambda: rec.ended())
    secret = await store.webhook_secret(acct.id)
    accepted = rec.accepted()
    assert [e["seq"] for e in accepted] == list(range(1, len(accepted) + 1))
    assert accepted[-1]["data"] == {"status": "source_ended", "reason": "the source ended"}
    for body_bytes, headers, _, _ in rec.posts:
        assert verify(secret, body_bytes, headers[SIGNATURE_HEADER])
    session = await gw.recorder.wait_for_session(provider=provider, since=mark)
    await session.wait_ended()
    # Every provider message reached the webhook verbatim, in order.
    assert [e["data"] for e in accepted[:-1]] == [json.loads(t) for t in session.texts_out()]
    assert session.audio_seconds == pytest.approx(3.0)
    sent = 0.0
    first = session.audio_chunks[0].t
    for chunk in session.audio_chunks:
        sent += chunk.seconds
        assert sent <= (chunk.t - first) + PACING_LEAD_SECONDS + 0.1 + 0.05
    assert ffmpeg_children() == []
