"""Pull tasks end to end: REST → FFmpeg on a loopback source → provider emulator → signed webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from sttgate.admin import Admin
from sttgate.core import closecodes
from sttgate.providers import names
from sttgate.pull.ffmpeg import PACING_LEAD_SECONDS
from sttgate.pull.tasks import ending_for_gateway_close
from sttgate.pull.webhooks import SIGNATURE_HEADER, Attempt, verify
from sttgate.store.tasks import CRASHED, AttemptLog
from sttgate.web.services import SERVICES
from tests.support.pull import ffmpeg_children, rtmp_publisher
from tests.support.rtsp import RtspServer
from tests.support.servers import serve_app
from tests.support.waiting import wait_for


@pytest.mark.parametrize("provider", ["assemblyai", "elevenlabs", "deepgram"])
@pytest.mark.parametrize("kind", ["http", "hls", "rtmp", "rtsp"])
async def test_source_to_webhooks(
    pull_gateway, account, store, ffmpeg_exe, media_server, receiver, provider, kind
) -> None:
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    mark = gw.recorder.next_seq
    async with contextlib.AsyncExitStack() as stack:
        if kind == "rtmp":
            audio_url = await stack.enter_async_context(rtmp_publisher(ffmpeg_exe, 4))
        elif kind == "rtsp":
            rtsp = RtspServer(seconds=3.0)
            audio_url = await rtsp.start()
            stack.push_async_callback(rtsp.close)
        else:
            audio_url = f"{media_server}/tone3.wav" if kind == "http" else f"{media_server}/hls/index.m3u8"
        status, body = await gw.start(acct.key, {"audio_url": audio_url, "provider": provider, "callback_url": hook})
        assert status == 200, body
        assert body["code"] == 200 and body["message"] == "success"
        task_id = body["data"]["task_id"]
        view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "source_ended", view
    audio = view["audio_seconds"]
    if kind in ("http", "rtsp"):
        assert audio == 3.0
    elif kind == "hls":
        assert 2.9 <= audio <= 3.2
    else:
        assert 2.0 <= audio <= 4.2  # a live source: what was published while the gateway listened
    assert view["billed_seconds"] == 5 * math.ceil(audio / 5)
    await wait_for(lambda: rec.ended())
    secret = await store.webhook_secret(acct.id)
    accepted = rec.accepted()
    assert [e["seq"] for e in accepted] == list(range(1, len(accepted) + 1))
    assert {e["task_id"] for e in accepted} == {task_id} and {e["provider"] for e in accepted} == {provider}
    assert accepted[-1]["data"] == {"status": "source_ended", "reason": "the source ended"}
    for body_bytes, headers, _, _ in rec.posts:
        assert verify(secret, body_bytes, headers[SIGNATURE_HEADER])
        Webhook(secret).verify(body_bytes, headers)  # the account's secret, as shown, in a Standard Webhooks library
    session = await gw.recorder.wait_for_session(provider=provider, since=mark)
    await session.wait_ended()
    # Every provider message reached the webhook verbatim, in order, and there were transcripts among them.
    texts = session.texts_out()
    assert [e["data"] for e in accepted[:-1]] == [json.loads(t) for t in texts]
    for text, (body_bytes, _, _, _) in zip(texts, [p for p in rec.posts if p[2] == 200], strict=False):
        assert text.encode() in body_bytes
    assert any("transcript" in t.lower() for t in texts)
    assert session.audio_seconds == pytest.approx(audio, abs=0.001)
    # Never faster than real time: the audio the emulator had received at any moment is at most the wall time since
    # its session started plus the pacing lead (10 ms of float and clock tolerance). The AssemblyAI emulator also
    # enforces 1.0x real time plus 0.5 s itself (it would have closed the session with 3007).
    sent = 0.0
    for chunk in session.audio_chunks:
        sent += chunk.seconds
        assert sent <= chunk.t + PACING_LEAD_SECONDS + 0.01
    assert ffmpeg_children() == []


async def start_task(gw, acct, hook: str, audio_url: str, provider: str = "assemblyai", **params) -> str:
    status, body = await gw.start(
        acct.key, {"audio_url": audio_url, "provider": provider, "callback_url": hook, **params}
    )
    assert status == 200, body
    return body["data"]["task_id"]


async def audio_flowing(gw, provider: str, since: int, seconds: float = 0.5):
    session = await gw.recorder.wait_for_session(provider=provider, since=since)
    await session.wait_until(lambda s: s.audio_seconds >= seconds, timeout=10)
    return session


async def test_stop_acts_within_a_second(pull_gateway, account, media_server, receiver) -> None:
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone60.wav")
    task = gw.manager.tasks[task_id]
    await audio_flowing(gw, "assemblyai", mark)
    status, body = await gw.stop(acct.key, task_id)
    assert (status, body["data"]["status"]) == (200, "running")
    await asyncio.wait_for(task.source_closed.wait(), 1.0)
    assert task.source.process is not None and task.source.process.returncode is not None
    view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "stopped" and view["stop_requested"] is True
    assert view["last_error"] is None
    await wait_for(lambda: rec.ended())
    assert [e["data"]["status"] for e in rec.ended()] == ["stopped"]
    await wait_for(lambda: not gw.manager.tasks and not gw.manager.deliverers)  # nothing of the task is kept
    # Stopping an ended task is harmless and says how it ended.
    assert (await gw.stop(acct.key, task_id))[1]["data"]["status"] == "stopped"


async def test_stop_received_by_another_gateway(pull_gateway, account, media_server, receiver) -> None:
    runs_it = await pull_gateway()
    other = await pull_gateway()
    acct = await account()
    _, hook = receiver
    mark = runs_it.recorder.next_seq
    task_id = await start_task(runs_it, acct, hook, f"{media_server}/tone60.wav", provider="elevenlabs")
    task = runs_it.manager.tasks[task_id]
    await audio_flowing(runs_it, "elevenlabs", mark)
    assert (await other.stop(acct.key, task_id))[0] == 200
    await asyncio.wait_for(task.source_closed.wait(), 1.0)
    assert (await other.wait_status(acct.key, task_id))["status"] == "stopped"


async def test_unreachable_source_fails(pull_gateway, account, receiver) -> None:
    gw = await pull_gateway(pull_source_timeout_seconds=3)
    acct = await account()
    rec, hook = receiver
    async with serve_app(web.Application()) as gone:
        pass
    task_id = await start_task(gw, acct, hook, f"{gone}/nothing.wav")
    view = await gw.wait_status(acct.key, task_id, timeout=10)
    assert view["status"] == "source_failed"
    assert "Connection refused" in view["last_error"]
    assert view["billed_seconds"] == 0 and view["cost_usd"] == "0"
    await wait_for(lambda: rec.ended())
    assert rec.ended()[0]["data"]["status"] == "source_failed"
    assert "Connection refused" in rec.ended()[0]["data"]["reason"]


async def test_source_that_sends_nothing_fails_after_the_timeout(pull_gateway, account, receiver) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await response.prepare(request)
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/hang.wav", hang)
    gw = await pull_gateway(pull_source_timeout_seconds=1.5)
    acct = await account()
    _, hook = receiver
    async with serve_app(app) as base:
        task_id = await start_task(gw, acct, hook, f"{base}/hang.wav")
        view = await gw.wait_status(acct.key, task_id, timeout=10)
        release.set()
    assert view["status"] == "source_failed"
    assert view["last_error"]


async def test_failing_webhook_is_retried_late_and_audio_never_pauses(
    pull_gateway, account, store, media_server, receiver
) -> None:
    # Backoff 1 s, 2 s, 2 s: the first message cannot be accepted before 5 s, longer than the 3 s source.
    gw = await pull_gateway(webhook_backoff_seconds=1.0, webhook_backoff_max_seconds=2.0)
    acct = await account()
    rec, hook = receiver
    rec.script = [500, 500, 500]
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone3.wav", provider="elevenlabs")
    assert (await gw.wait_status(acct.key, task_id))["status"] == "source_ended"
    await wait_for(lambda: rec.ended(), timeout=20)
    seq_of = [json.loads(body)["seq"] for body, _, _, _ in rec.posts]
    assert seq_of[:4] == [1, 1, 1, 1]
    assert [status for _, _, status, _ in rec.posts[:4]] == [500, 500, 500, 200]
    accepted = rec.accepted()
    assert [e["seq"] for e in accepted] == list(range(1, len(accepted) + 1))  # once each, in order
    # Late: accepted after three failures and their backoff...
    accepted_at = rec.posts[3][3]
    assert accepted_at - rec.posts[0][3] >= 4.5
    # ...while the audio was not held back: all of it had reached the provider before that first message was
    # accepted, at real time, without a pause.
    session = await gw.recorder.wait_for_session(provider="elevenlabs", since=mark)
    assert session.audio_seconds == pytest.approx(3.0)
    assert session.t0 + session.audio_chunks[-1].t < accepted_at
    times = [c.t for c in session.audio_chunks]
    assert max(b - a for a, b in itertools.pairwise(times)) < 1.0
    attempts = []

    async def recorded():
        attempts[:] = await store.tasks.attempts_of(task_id)
        return any(a["seq"] == seq_of[-1] for a in attempts)

    await wait_for(recorded)
    assert [(a["seq"], a["attempt"], a["status_code"]) for a in attempts[:4]] == [
        (1, 1, 500),
        (1, 2, 500),
        (1, 3, 500),
        (1, 4, 200),
    ]


async def test_provider_closing_ends_the_task(pull_gateway, account, media_server, receiver) -> None:
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    task_id = await start_task(
        gw,
        acct,
        hook,
        f"{media_server}/tone60.wav",
        emu_close_after_frames=5,
        emu_close_code=3005,
        emu_close_reason="cancelled",
    )
    view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "provider_closed"
    assert "3005" in view["last_error"] and "cancelled" in view["last_error"]
    await wait_for(lambda: rec.ended())
    assert rec.ended()[0]["data"]["status"] == "provider_closed"


async def test_prepaid_cut_off(pull_gateway, account, store, media_server, receiver) -> None:
    gw = await pull_gateway()
    acct = await account(balance_usd="0.000208333")  # one AssemblyAI cycle
    rec, hook = receiver
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone60.wav")
    view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "insufficient_balance"
    assert (view["billed_seconds"], view["cost_usd"]) == (5, "0.000208333")
    # Exactly 5.0: a ledger flush during the refused chunk's charge attempt does not write that chunk.
    assert view["audio_seconds"] == 5.0
    session = await gw.recorder.wait_for_session(provider="assemblyai", since=mark)
    await session.wait_ended()
    assert session.audio_seconds == pytest.approx(5.0)
    assert (await Admin(store, names()).usage(acct.id))["balance_usd"] == "0"
    await wait_for(lambda: rec.ended())
    assert rec.ended()[0]["data"]["status"] == "insufficient_balance"


async def test_gateway_shutdown_ends_tasks_with_their_callback(pull_gateway, account, media_server, receiver) -> None:
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone60.wav", provider="elevenlabs")
    await audio_flowing(gw, "elevenlabs", mark)
    await gw.shutdown()
    assert [e["data"]["status"] for e in rec.ended()] == ["gateway_shutdown"]
    other = await pull_gateway()
    view = await other.wait_status(acct.key, task_id)
    assert view["status"] == "gateway_shutdown"
    assert ffmpeg_children() == []


async def test_a_dead_gateways_task_gets_one_late_ended_webhook(pull_gateway, account, store, receiver) -> None:
    acct = await account()
    rec, hook = receiver
    # What a gateway that died mid-task leaves: an open pull session, a running task, attempts up to seq 3.
    await store.open_session(
        session_id="crashed-task",
        account_id=acct.id,
        kind="pull",
        provider="elevenlabs",
        gateway_id="dead-gateway",
        min_balance_nanos=0,
        lease_ttl=-1,  # expired: its gateway stopped renewing it
    )
    await store.tasks.insert_task(
        task_id="crashed-task",
        account_id=acct.id,
        audio_url="http://example.com/a.wav",
        callback_url=hook,
        provider="elevenlabs",
        params="audio_format=pcm_16000",
    )
    log = AttemptLog(store.tasks)
    for seq in (1, 2, 3):
        await log.record(Attempt("crashed-task", seq, 1, 200, None))
    await log.flush()
    assert await store.reap_dead_sessions() == ["crashed-task"]
    first, second = await pull_gateway(), await pull_gateway()
    await wait_for(lambda: rec.ended())
    ended = rec.ended()
    assert [(e["task_id"], e["seq"], e["provider"]) for e in ended] == [("crashed-task", 4, "elevenlabs")]
    assert ended[0]["data"] == {"status": "gateway_shutdown", "reason": CRASHED}
    view = await first.wait_status(acct.key, "crashed-task")
    assert (view["status"], view["last_error"]) == ("gateway_shutdown", CRASHED)
    await second.manager.send_crash_endings()
    await first.manager.send_crash_endings()
    assert len(rec.posts) == 1


async def test_sigterm_drain_lets_tasks_run_then_ends_them(pull_gateway, account, media_server, receiver) -> None:
    """What ``serve`` does on SIGTERM: refuse new work, let tasks run through the drain, then 1012 → shutdown."""
    gw = await pull_gateway()
    acct = await account()
    rec, hook = receiver
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone60.wav")
    task = gw.manager.tasks[task_id]
    session = await audio_flowing(gw, "assemblyai", mark)
    drain = asyncio.create_task(gw.app[SERVICES].sessions.drain(1.0))
    await wait_for(lambda: gw.app[SERVICES].sessions.draining)
    status, answer = await gw.start(
        acct.key, {"audio_url": f"{media_server}/tone3.wav", "provider": "assemblyai", "callback_url": hook}
    )
    assert (status, answer["error"]["code"]) == (503, "service_draining")
    during = session.audio_seconds
    await session.wait_until(lambda s: s.audio_seconds >= during + 0.5)  # still running during the drain
    await drain
    await wait_for(lambda: task.ending is not None)
    assert task.ending.status == "gateway_shutdown"
    await wait_for(lambda: rec.ended())
    assert rec.ended()[0]["data"]["status"] == "gateway_shutdown"
    await gw.shutdown()


async def test_a_task_is_priced_like_a_push_session(pull_gateway, account, store, media_server, receiver) -> None:
    """The body's model sets the price (docs/billing.md#the-price-book): one Pro cycle's balance pays 5 s, not more."""
    gw = await pull_gateway()
    acct = await account(balance_usd="0.000625")  # one u3-rt-pro cycle: 0.45 USD/h × 5 s
    _, hook = receiver
    mark = gw.recorder.next_seq
    task_id = await start_task(gw, acct, hook, f"{media_server}/tone60.wav", speech_model="u3-rt-pro")
    view = await gw.wait_status(acct.key, task_id)
    assert view["status"] == "insufficient_balance"
    assert (view["billed_seconds"], view["cost_usd"]) == (5, "0.000625000")
    session = await gw.recorder.wait_for_session(provider="assemblyai", since=mark)
    assert "speech_model=u3-rt-pro" in session.query_string
    usage = await Admin(store, names()).usage(acct.id)
    assert (usage["sessions"][0]["model"], usage["sessions"][0]["rate_usd_per_hour"]) == ("u3-rt-pro", "0.45")
    assert usage["balance_usd"] == "0"


@pytest.mark.parametrize(
    ("close", "status"),
    [
        (closecodes.STREAMING_DISABLED, "stopped"),
        (closecodes.INSUFFICIENT_BALANCE, "insufficient_balance"),  # a session-basis cycle it cannot pay
        (closecodes.BUDGET_EXCEEDED, "budget_exceeded"),  # a session-basis cycle past the monthly budget
        (closecodes.IDLE_TIMEOUT, "source_failed"),
        (closecodes.SERVICE_RESTART, "gateway_shutdown"),
        (closecodes.CLOSED_BY_OPERATOR, "stopped"),  # docs/admin-api.md#close-a-session
    ],
)
def test_how_a_pull_task_ends_when_the_gateway_closes_its_session(close: closecodes.Close, status: str) -> None:
    assert ending_for_gateway_close(*close).status == status
