"""LiveSession, billing and every close path over in-memory links (tests/gateway/fake_link.py): no sockets, no DB."""

from __future__ import annotations

import asyncio
import json

import pytest

from sttgate.core.billing import LedgerWrite
from sttgate.core.outcomes import ClosedBy
from sttgate.gateway.live import ChargeFailed
from sttgate.gateway.relay import relay
from sttgate.gateway.upstream import FrameKind
from sttgate.providers import get_provider
from tests.gateway.fake_link import FakeLink, FakeStore, make_session
from tests.support.waiting import wait_for

PCM = bytes(3200)  # 100 ms of 16 kHz s16le: 50 frames are one 5-second cycle
TERMINATE = get_provider("assemblyai").end_frames()[0].encode()


def ended(store: FakeStore) -> tuple[object, object, object]:
    row = store.ended["s1"]
    return row["close_code"], row["close_reason"], row["closed_by"]


# -- billing ---------------------------------------------------------------------------------------------------------


async def test_prepaid_charges_each_cycle_before_forwarding_and_cuts_off_unpaid_audio():
    store = FakeStore(balance=2)
    live, link, _ = make_session(store)
    sent = 0
    while await live.send_audio(PCM):
        sent += 1
    assert sent == 100 and live.cut_off
    # Cycle 1 charged with the next hold, cycle 2 paid by that hold (docs/billing.md#holds), cycle 3 refused.
    assert store.charges == [1, 1] and store.balance == 0
    assert len(link.audio) == 100  # the refused frame was not sent
    assert (live.cycles, live.audio_seconds) == (2, 10.0)
    await live.end()
    assert store.ended["s1"]["cycles"] == 2 and store.ended["s1"]["audio_seconds"] == 10.0


async def test_a_failed_charge_sends_nothing():
    store = FakeStore(balance=5, fail=True)
    live, link, _ = make_session(store)
    with pytest.raises(ChargeFailed):
        await live.send_audio(PCM)
    assert link.sent == [] and live.cut_off and live.cycles == 0 and live.audio_seconds == 0


async def test_postpaid_counts_cycles_without_the_ledger():
    store = FakeStore(balance=None)
    live, link, _ = make_session(store)
    for _ in range(51):
        assert await live.send_audio(PCM)
    assert (live.cycles, live.cost_nanos, len(link.audio)) == (2, 2 * live.price_nanos, 51)


async def test_a_flush_during_a_charge_leaves_that_frame_out():
    store = FakeStore(balance=1, gate=asyncio.Event())
    store.gate.set()
    live, _, manager = make_session(store)
    for _ in range(50):
        await live.send_audio(PCM)
    assert store.balance == 0  # cycle 1 paid; no hold (the balance refused it)
    store.balance = 5
    store.gate.clear()
    sending = asyncio.create_task(live.send_audio(PCM))  # opens cycle 2: its charge waits
    await asyncio.sleep(0)
    await manager.flush()
    assert store.flushed[-1].audio_seconds == 5.0 and store.flushed[-1].cycles == 1
    store.gate.set()
    assert await sending
    await manager.flush()
    assert (store.flushed[-1].audio_seconds, store.flushed[-1].cycles) == (5.1, 2)


async def test_a_held_cycle_is_forwarded_while_its_ledger_write_waits():
    """docs/billing.md#holds: the frame that opens a cycle a hold paid goes at once; the write (the cycle recorded,
    the next hold) runs in the background, and a flush meanwhile never writes that cycle (the ledger holds it)."""
    store = FakeStore(balance=5, gate=asyncio.Event())
    live, link, manager = make_session(store, holds=1)
    for _ in range(50):  # cycle 1 opens at the first frame
        assert live.admit(PCM, FrameKind.BINARY)  # the frame path: nothing to await, the frame may go
        await live.upstream.send(PCM, FrameKind.BINARY)
    assert len(link.audio) == 50 and live.cycles == 1
    await wait_for(lambda: store.writes, what="the background write")  # it starts, and waits for the database
    assert store.writes == [LedgerWrite(recorded=1, hold=1)]
    await manager.flush()
    assert store.flushed[-1].cycles == 0 and store.flushed[-1].audio_seconds == 5.0
    assert not live.admit(PCM, FrameKind.BINARY)  # cycle 2: no hold until the write in flight returns
    paying = asyncio.create_task(live.pay())  # cycle 2: no hold yet, its frame waits for the write in flight
    await asyncio.sleep(0)
    assert not paying.done()
    store.gate.set()
    assert await paying  # the write's new hold paid cycle 2: forwarded, recorded in the background again
    assert store.charges == [] and live.cycles == 2
    await live.end()
    assert store.writes == [LedgerWrite(recorded=1, hold=1), LedgerWrite(recorded=1, hold=1)]
    assert store.ended["s1"]["cycles"] == 2 and store.balance == 3  # two holds taken; the end refunds one (store)


async def test_a_failed_background_write_loses_nothing():
    store = FakeStore(balance=5, fail=True)
    live, link, manager = make_session(store, holds=1)
    for _ in range(50):
        assert await live.send_audio(PCM)  # cycle 1, paid by the hold: its write fails in the background
    await wait_for(lambda: store.writes and live.billing.write is None, what="the failed background write")
    assert live.billing.unrecorded == 1 and live.billing.holds == 0 and not live.cut_off
    store.fail = False
    assert await live.send_audio(PCM)  # cycle 2: charged at once, with cycle 1 recorded and the next hold
    assert store.writes[-1] == LedgerWrite(recorded=1, charged=1, hold=1)
    await manager.flush()
    assert store.flushed[-1].cycles == 2
    await live.end()
    assert store.ended["s1"]["cycles"] == 2 and len(link.audio) == 51


async def test_the_idle_sweep_asks_to_close_with_1008():
    live, _, manager = make_session(FakeStore(), idle_timeout_seconds=1e-6)  # the smallest valid limit
    await manager.sweep()
    assert live.close_requested.result() == (1008, "idle timeout")


async def test_only_metered_audio_keeps_a_session_from_idling():
    live, _, _manager = make_session(FakeStore(), idle_timeout_seconds=60.0)
    now = live.started
    assert not live.idle.idle(live.audio_activity, now + 59)
    await live.forward(b'{"type":"KeepAlive"}', FrameKind.TEXT)  # forwarded, counted, not metered
    assert live.frames_up == 1 and not live.idle.idle(live.audio_activity, now + 59.5)
    assert live.idle.idle(live.audio_activity, now + 60)
    await live.send_audio(PCM)
    assert not live.idle.idle(live.audio_activity, now + 61)  # audio restarts the clock


async def test_the_session_time_limit_asks_to_close_with_1008():
    live, _, _ = make_session(FakeStore(), max_session_seconds=0.05)
    assert await asyncio.wait_for(live.close_requested, 5) == (1008, "session time limit")


async def test_a_tokens_cap_lowers_the_time_limit():
    live, _, _ = make_session(FakeStore(), max_session_seconds=600, token_cap=1)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(live.close_requested, 5) == (1008, "session time limit")
    assert asyncio.get_running_loop().time() - started >= 0.9


# -- provider messages and the graceful end --------------------------------------------------------------------------


async def test_messages_until_the_provider_closes():
    live, link, _ = make_session(FakeStore())
    link.text('{"type":"Turn"}')
    link.binary(b"\x01")
    link.peer_close(3005, "cancelled")
    assert [m async for m in live.messages()] == ['{"type":"Turn"}', b"\x01"]
    assert link.closed_with == (3005, "cancelled")
    await live.end()
    assert ended(live.manager.store) == (3005, "cancelled", ClosedBy.UPSTREAM)


def mismatches(live) -> float:
    return (
        live.manager.metrics.registry.get_sample_value(
            "sttgate_reconciliation_mismatches_total", {"provider": live.provider_name}
        )
        or 0.0
    )


@pytest.mark.parametrize(("reported", "mismatch"), [(5, False), (6, False), (7, True), (3, True)])
async def test_the_providers_end_figures_are_recorded_and_a_mismatch_counted(reported, mismatch):
    """5 s metered; AssemblyAI's Termination says ``reported`` s: more than 1 s apart is a mismatch."""
    live, link, _ = make_session(FakeStore())
    for _ in range(50):
        assert await live.send_audio(PCM)
    link.text(json.dumps({"type": "Termination", "audio_duration_seconds": reported, "session_duration_seconds": 9}))
    link.peer_close(1000, "Session Ended")
    assert [m async for m in live.messages()][-1].startswith('{"type": "Termination"')
    await live.end()
    assert live.manager.store.figures["s1"] == (float(reported), 9.0)
    assert mismatches(live) == (1.0 if mismatch else 0.0)


async def test_a_provider_that_reports_nothing_records_nothing():
    live, link, _ = make_session(FakeStore(), provider="elevenlabs", forwarded="audio_format=pcm_16000")
    link.text('{"message_type":"committed_transcript","text":"alpha"}')
    link.peer_close(1000)
    assert len([m async for m in live.messages()]) == 1
    await live.end()
    assert live.manager.store.figures == {} and mismatches(live) == 0.0


async def test_finish_self_drains_until_the_provider_closes():
    live, link, _ = make_session(FakeStore(), on_text=None)
    link.on_text = lambda peer, data: peer.peer_close(1000) if data == TERMINATE else None
    await live.finish(code=1000, reason="source ended", closed_by=ClosedBy.CLIENT)
    assert link.sent == [(FrameKind.TEXT, TERMINATE)] and link.closed_with == (1000, "")
    await live.end()
    assert ended(live.manager.store) == (1000, "source ended", ClosedBy.CLIENT)


async def test_finish_waits_for_the_elevenlabs_commit_answer_while_a_reader_reads():
    live, link, _ = make_session(FakeStore(), provider="elevenlabs", forwarded="audio_format=pcm_16000")
    committed = json.dumps({"message_type": "committed_transcript", "text": "hi"})
    link.on_text = lambda peer, data: peer.text(committed)
    messages = live.messages()
    reader = asyncio.create_task(anext(messages))
    await live.finish(code=1000, reason="stopped", closed_by=ClosedBy.CLIENT)
    assert await reader == committed
    assert link.closed_with == (1000, "")


async def test_end_is_idempotent_and_closes_upstream_1001():
    store = FakeStore()
    live, link, manager = make_session(store)
    await live.end()
    await live.end()
    assert link.closed_with == (1001, "client disconnected") and not manager.live
    assert ended(store) == (None, "", ClosedBy.GATEWAY)


async def test_end_ends_a_provider_session_nobody_finished_gracefully():
    """E.g. the client went away before its 101: Terminate, the provider's close, then 1001."""
    live, link, _ = make_session(FakeStore())
    link.on_text = lambda peer, data: peer.peer_close(1000, "Session Ended") if data == TERMINATE else None
    await live.end()
    assert link.sent == [(FrameKind.TEXT, TERMINATE)] and link.closed_with == (1001, "client disconnected")


# -- the relay: every close path --------------------------------------------------------------------------------------


async def run_relay(store: FakeStore, script, **settings) -> tuple[FakeLink, FakeLink, FakeStore]:
    live, upstream, _ = make_session(store, **settings)
    client = FakeLink()
    script(client, upstream, live)
    await asyncio.wait_for(relay(client, live), 5)
    return client, upstream, store


@pytest.mark.parametrize(
    ("code", "reason", "to_upstream", "recorded"),
    [
        (1000, "bye", (1000, "bye"), (1000, "bye")),
        (4000, "app", (4000, "app"), (4000, "app")),
        (1005, "", (1001, "client disconnected"), (1005, "")),
        (1006, "", (1001, "client disconnected"), (1006, "")),
        (1015, "", (1001, "client disconnected"), (1015, "")),
    ],
)
async def test_client_close(code, reason, to_upstream, recorded):
    def script(client, upstream, live):
        client.binary(PCM)
        client.peer_close(code, reason)

    client, upstream, store = await run_relay(FakeStore(), script)
    assert upstream.audio == [PCM]
    assert upstream.closed_with == to_upstream
    assert client.closed_with == (code if code < 1005 or code > 1015 else 1000, reason)
    assert ended(store) == (*recorded, ClosedBy.CLIENT)


@pytest.mark.parametrize(
    ("code", "reason", "to_client"),
    [
        (3005, "cancelled", (3005, "cancelled")),
        (1005, "", (1014, "upstream connection lost")),
        (1006, "", (1014, "upstream connection lost")),
    ],
)
async def test_upstream_close(code, reason, to_client):
    def script(client, upstream, live):
        upstream.text('{"type":"Turn"}')
        upstream.peer_close(code, reason)

    client, _, store = await run_relay(FakeStore(), script)
    assert client.sent == [(FrameKind.TEXT, b'{"type":"Turn"}')]
    assert client.closed_with == to_client
    assert ended(store) == (*to_client, ClosedBy.UPSTREAM)


def terminate_then_close(peer: FakeLink, data: bytes) -> None:
    """AssemblyAI: ``Terminate`` → ``Termination`` → close 1000 "Session Ended"."""
    if data == TERMINATE:
        peer.text('{"type":"Termination"}')
        peer.peer_close(1000, "Session Ended")


async def test_a_client_close_ends_the_provider_gracefully_then_passes_the_code():
    def script(client, upstream, live):
        upstream.on_text = terminate_then_close
        client.binary(PCM)
        client.peer_close(4000, "app")

    client, upstream, store = await run_relay(FakeStore(), script)
    assert upstream.sent == [(FrameKind.BINARY, PCM), (FrameKind.TEXT, TERMINATE)]
    assert upstream.closed_with == (4000, "app")  # the provider's close answered with the client's code
    assert client.sent == [(FrameKind.TEXT, b'{"type":"Termination"}')]  # the closing client still gets it
    assert client.closed_with == (4000, "app")
    assert ended(store) == (4000, "app", ClosedBy.CLIENT)


async def test_a_client_that_sent_the_end_message_gets_no_second_one():
    def script(client, upstream, live):
        client.binary(PCM)
        client.text('{"type": "Terminate"}')
        client.peer_close(1000)
        upstream.on_text = None

    _client, upstream, _ = await run_relay(FakeStore(), script)
    assert upstream.sent == [(FrameKind.BINARY, PCM), (FrameKind.TEXT, b'{"type": "Terminate"}')]


async def test_a_lost_client_still_ends_the_provider_gracefully():
    """Nobody can receive the provider's last messages: the graceful end reads (and drops) them itself."""

    def script(client, upstream, live):
        def answer(peer: FakeLink, data: bytes) -> None:
            if data == TERMINATE:
                peer.text('{"type":"Turn"}')  # relaying it fails: the relay's reader stops
                peer.text('{"type":"Termination"}')
                peer.peer_close(1000, "Session Ended")

        upstream.on_text = answer
        client.broken = True
        client.feed(FrameKind.LOST)

    started = asyncio.get_running_loop().time()
    _client, upstream, store = await run_relay(FakeStore(), script, finish_timeout_seconds=5)
    assert asyncio.get_running_loop().time() - started < 1  # the provider's close, not the finish timeout
    assert upstream.sent == [(FrameKind.TEXT, TERMINATE)] and upstream.closed_with == (1001, "client disconnected")
    assert ended(store) == (1006, "", ClosedBy.CLIENT)


async def test_nothing_more_is_forwarded_or_metered_once_the_end_began():
    def script(client, upstream, live):
        def answer(peer: FakeLink, data: bytes) -> None:
            if data == TERMINATE:
                client.binary(PCM)  # the client keeps talking while the provider ends
                client.text('{"type":"KeepAlive"}')
                asyncio.get_running_loop().call_later(0.05, terminate_then_close, peer, data)

        upstream.on_text = answer
        live.request_close(1008, "idle timeout")

    client, upstream, store = await run_relay(FakeStore(), script, finish_timeout_seconds=5)
    assert upstream.sent == [(FrameKind.TEXT, TERMINATE)] and store.ended["s1"]["audio_seconds"] == 0
    assert client.sent == [(FrameKind.TEXT, b'{"type":"Termination"}')]
    assert client.closed_with == upstream.closed_with == (1008, "idle timeout")


async def test_client_lost_and_upstream_lost():
    client, upstream, store = await run_relay(
        FakeStore(), lambda c, u, live: c.feed(FrameKind.LOST), finish_timeout_seconds=0.05
    )
    assert upstream.closed_with == (1001, "client disconnected") and client.closed_with is None
    assert ended(store) == (1006, "", ClosedBy.CLIENT)
    client, upstream, store = await run_relay(FakeStore(), lambda c, u, live: u.feed(FrameKind.LOST))
    assert client.closed_with == (1014, "upstream connection lost") and upstream.closed_with is None
    assert ended(store) == (1014, "upstream connection lost", ClosedBy.UPSTREAM)


async def test_frame_too_big_either_way_is_1009():
    client, upstream, store = await run_relay(FakeStore(), lambda c, u, live: c.feed(FrameKind.ERROR, code=1009))
    assert client.closed_with == (1009, "message too big") and upstream.closed_with == (1001, "client disconnected")
    assert ended(store) == (1009, "message too big", ClosedBy.GATEWAY)
    client, upstream, store = await run_relay(FakeStore(), lambda c, u, live: u.feed(FrameKind.ERROR, code=1009))
    assert client.closed_with == (1009, "message too big") and upstream.closed_with is None
    assert ended(store) == (1009, "message too big", ClosedBy.GATEWAY)


async def test_cut_off_4002_ends_the_provider_gracefully_and_closes_the_client():
    def script(client, upstream, live):
        upstream.on_text = lambda peer, data: peer.peer_close(1000) if data == TERMINATE else None
        for _ in range(51):
            client.binary(PCM)

    client, upstream, store = await run_relay(FakeStore(balance=1), script)
    assert len(upstream.audio) == 50 and upstream.sent[-1] == (FrameKind.TEXT, TERMINATE)
    assert client.closed_with == (4002, "insufficient balance")
    assert ended(store) == (4002, "insufficient balance", ClosedBy.GATEWAY)


async def test_billing_unavailable_is_1011():
    def script(client, upstream, live):
        client.binary(PCM)

    client, upstream, store = await run_relay(FakeStore(balance=1, fail=True), script, finish_timeout_seconds=0.05)
    assert upstream.audio == [] and client.closed_with == (1011, "billing unavailable")
    assert ended(store) == (1011, "billing unavailable", ClosedBy.GATEWAY)


@pytest.mark.parametrize("close", [(1012, "service restart"), (1008, "idle timeout")])
async def test_gateway_close_goes_to_both_sides(close):
    client, upstream, store = await run_relay(FakeStore(), lambda c, u, live: live.request_close(*close))
    assert client.closed_with == close and upstream.closed_with == close
    assert ended(store) == (*close, ClosedBy.GATEWAY)


async def test_a_failed_send_defers_to_the_other_side():
    def script(client, upstream, live):
        upstream.broken = True
        client.binary(PCM)
        upstream.feed(FrameKind.LOST)

    client, _, store = await run_relay(FakeStore(), script)
    assert client.closed_with == (1014, "upstream connection lost")
    assert ended(store) == (1014, "upstream connection lost", ClosedBy.UPSTREAM)


# -- the aiohttp link ------------------------------------------------------------------------------------------------


def test_aiohttp_messages_pass_through_as_frames_and_their_ends_are_translated():
    from aiohttp import WebSocketError, WSMessage, WSMsgType

    from sttgate.gateway.upstream import DATA, AiohttpLink

    assert WSMsgType.TEXT in DATA and WSMsgType.BINARY in DATA and WSMsgType.CLOSE not in DATA
    assert (FrameKind.TEXT, FrameKind.BINARY) == (WSMsgType.TEXT, WSMsgType.BINARY)
    ended = AiohttpLink.ended
    assert ended(None, WSMessage(WSMsgType.CLOSE, 4000, "app")) == (FrameKind.CLOSE, 4000, "app")
    assert ended(None, WSMessage(WSMsgType.CLOSE, 0, None)) == (FrameKind.CLOSE, 1005, "")  # no status
    assert ended(None, WSMessage(WSMsgType.ERROR, WebSocketError(1009, "big"), None)) == (FrameKind.ERROR, 1009, "")
    assert ended(None, WSMessage(WSMsgType.ERROR, OSError(), None)) == (FrameKind.LOST, 1006, "")
    assert ended(None, WSMessage(WSMsgType.CLOSING, None, None)) == (FrameKind.CLOSING, 0, "")
    assert ended(None, WSMessage(WSMsgType.CLOSED, None, None)) == (FrameKind.LOST, 1006, "")
