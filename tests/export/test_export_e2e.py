"""Usage export end to end (docs/export.md): a real ``sttgate serve`` with two ``[[export]]`` sinks, a CloudEvents
receiver and a Stripe recorder, across a ``kill -9`` of the gateway mid-stream, a restart, and sinks that answer 500
for a while.

What must hold: each sink ends up with exactly one event id per charged cycle (the ids are exactly
``<session>:<cycle>`` for cycle 1..cycles of every session in usage), re-sends (if any) only repeat ids, a refused
cycle (a prepaid session cut off with 4002) is never exported, and each session's cycles arrive in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from sqlalchemy import update

from sttgate.store import Store
from sttgate.store.tables import accounts
from tests.support.emulator import EmulatorServer
from tests.support.export_sinks import CloudEventsReceiver, StripeRecorder, export_config, export_sinks
from tests.support.postgres import fresh_schema
from tests.support.serve import STTGATE, ServeProcess, serve_env, serve_processes
from tests.support.waiting import wait_for

CYCLE_NANOS = 208_333  # one 5-second AssemblyAI cycle at the default 0.15 USD/h
FRAME = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
FRAMES_PER_CYCLE = 50


async def stream(ws: aiohttp.ClientWebSocketResponse, frames: int, *, end: bool = True) -> int | None:
    """Send ``frames`` frames (then ``Terminate`` when ``end``) and read to the close; the close code."""

    async def send() -> None:
        try:
            for _ in range(frames):
                if ws.closed:
                    return
                await ws.send_bytes(FRAME)
            if end and not ws.closed:
                await ws.send_str('{"type": "Terminate"}')
        except (ConnectionError, RuntimeError):
            pass  # cut off (4002) while sending

    async def receive() -> int | None:
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return ws.close_code if msg.type is not WSMsgType.CLOSE else int(msg.data)

    _, code = await asyncio.gather(send(), receive())
    await ws.close()
    return code


async def _set_external_id(store: Store, account_id: str, external_id: str) -> None:
    async with store.database.write() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == account_id).values(external_id=external_id))


async def _sessions(store: Store, account_ids: list[str]) -> dict[str, tuple[str, int, int | None, str | None]]:
    """Every session in usage: id → (account, cycles, close code, closed by)."""
    out: dict[str, tuple[str, int, int | None, str | None]] = {}
    for account_id in account_ids:
        for s in (await store.usage(account_id)).sessions:
            out[s.id] = (account_id, s.cycles, s.close_code, s.closed_by)
    return out


def _assert_in_order_per_session(ids: list[str]) -> None:
    """Within each session, each cycle first arrives after the cycles before it."""
    last: dict[str, int] = {}
    seen: set[str] = set()
    for event_id in ids:
        if event_id in seen:
            continue
        seen.add(event_id)
        session, cycle = event_id.rsplit(":", 1)
        assert int(cycle) == last.get(session, 0) + 1, (event_id, last.get(session))
        last[session] = int(cycle)


async def _cli_json(*args: str, env: dict[str, str]) -> Any:
    proc = await asyncio.create_subprocess_exec(
        STTGATE,
        *args,
        "--json",
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_every_charged_cycle_reaches_both_sinks_once_across_a_crash_and_an_outage(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'sttgate.db'}"
    store = await Store.connect(url, migrate=True)
    async with export_sinks() as (receiver, recorder), serve_processes() as spawn:
        try:
            await _scenario(store, url, emulator, tmp_path, receiver, recorder, spawn)
        finally:
            await store.close()


async def _scenario(
    store: Store,
    url: str,
    emulator: EmulatorServer,
    tmp_path: Path,
    receiver: CloudEventsReceiver,
    recorder: StripeRecorder,
    spawn: Any,
) -> None:
    prepaid = await store.create_account(name="prepaid", balance_nanos=5 * CYCLE_NANOS, max_streams=5)
    postpaid = await store.create_account(name="postpaid", max_streams=5)
    await _set_external_id(store, prepaid.id, "cus_prepaid")
    await _set_external_id(store, postpaid.id, "cus_postpaid")
    pre_key = (await store.create_key(prepaid.id)).key
    post_key = (await store.create_key(postpaid.id)).key
    config = tmp_path / "sttgate.toml"
    config.write_text(export_config(receiver, recorder))
    # Each start is a new gateway identity (docs/operations.md#process-identity): the restarted gateway takes over the
    # sinks' leases and closes the dead session only once the killed one's leases expire, so they are short here.
    env = {
        **serve_env(emulator, url, "gw-export"),
        "STTGATE_EXPORT_POLL_SECONDS": "0.05",
        "STTGATE_EXPORT_LEASE_SECONDS": "2",
        "STTGATE_LEASE_TTL_SECONDS": "2",
        "STTGATE_LEASE_RENEW_SECONDS": "0.5",
    }

    def query(key: str) -> str:
        return f"provider=assemblyai&api_key={key}&sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"

    async def start() -> ServeProcess:
        process: ServeProcess = await spawn("--config", str(config), env=env, cwd=tmp_path, admin=True)
        return process

    gateway = await start()
    async with aiohttp.ClientSession() as http:
        # A postpaid session of 3 cycles, and a prepaid one that wants 8 but can pay 5: cycle 6 is refused (4002).
        done = await stream(await http.ws_connect(gateway.ws_url(query(post_key))), 3 * FRAMES_PER_CYCLE)
        cut = await stream(await http.ws_connect(gateway.ws_url(query(pre_key))), 8 * FRAMES_PER_CYCLE)
        assert (done, cut) == (1000, 4002)

        # The sinks go down; a postpaid session is mid-stream when the gateway is killed without a word.
        receiver.failing = recorder.failing = True
        ws = await http.ws_connect(gateway.ws_url(query(post_key)))
        for _ in range(3 * FRAMES_PER_CYCLE):
            await ws.send_bytes(FRAME)

        async def flushed() -> bool:
            sessions = await _sessions(store, [postpaid.id])
            return any(cycles >= 2 and by is None for _, cycles, _, by in sessions.values())

        await wait_for(flushed, 15, 0.05, "the live session's cycles written by the ledger")
        await wait_for(lambda: receiver.refused and recorder.refused, 15, 0.05, "both sinks refused a send")
        gateway.proc.send_signal(signal.SIGKILL)
        assert await gateway.wait() == -signal.SIGKILL
        await ws.close()

        # Restarted (it closes its dead session as gateway_crash once that lease expired); the sinks stay down a
        # little longer.
        gateway = await start()
        refused = receiver.refused
        await wait_for(lambda: receiver.refused > refused + 2, 15, 0.05, "the restarted gateway retried the sink")
        later = await stream(await http.ws_connect(gateway.ws_url(query(post_key))), 2 * FRAMES_PER_CYCLE)
        assert later == 1000
        receiver.failing = recorder.failing = False

        async def crashed_session_reaped() -> bool:
            ended = await _sessions(store, [postpaid.id])
            return any(by == "gateway_crash" for *_, by in ended.values())

        # The killed gateway's session is closed once its lease expired (a restart is a new gateway identity).
        await wait_for(crashed_session_reaped, 15, 0.05, "the killed gateway's session closed as gateway_crash")
        sessions = await _sessions(store, [prepaid.id, postpaid.id])
        expected = {f"{sid}:{c}" for sid, (_, cycles, _, _) in sessions.items() for c in range(1, cycles + 1)}
        await wait_for(lambda: set(receiver.ids) == expected, 30, 0.05, "every cycle at the CloudEvents receiver")
        await wait_for(lambda: set(recorder.ids) == expected, 30, 0.05, "every cycle at the Stripe recorder")

        # The restarted gateway's metrics: events accepted, failed sends, and the lag back to 0 once caught up.
        async def metrics() -> dict[str, float]:
            async with http.get(f"{gateway.admin_url}/metrics") as response:
                text = await response.text()
            return {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("sttgate_export_")
            }

        async def caught_up() -> dict[str, float] | None:
            values = await metrics()
            return values if values.get('sttgate_export_lag_seconds{sink="meter"}') == 0.0 else None

        values = await wait_for(caught_up, 10, 0.05, "the lag gauge back to 0")
        assert values['sttgate_export_events_total{sink="meter"}'] >= 1
        assert values['sttgate_export_failures_total{sink="meter"}'] >= 3
        assert values['sttgate_export_failures_total{sink="stripe"}'] >= 1

    gateway.proc.send_signal(signal.SIGTERM)
    assert await gateway.wait(30) == 0

    # Exactly the charged cycles, counted from usage: 3 + 5 + the crashed session's written ones (2 or 3) + 2.
    ends = Counter(by for _, _, _, by in sessions.values())
    assert len(sessions) == 4 and ends["gateway_crash"] == 1, sessions
    assert len(expected) == sum(cycles for _, cycles, _, _ in sessions.values())
    assert 3 + 5 + 2 + 2 <= len(expected) <= 3 + 5 + 3 + 2
    cut_id = next(sid for sid, (acct, _, code, _) in sessions.items() if acct == prepaid.id and code == 4002)
    assert sessions[cut_id][1] == 5 and f"{cut_id}:6" not in receiver.ids  # the refused cycle never left

    for sink in (receiver, recorder):
        assert sink.problems == []
        assert set(sink.ids) == expected  # re-sends (after the crash) repeat only ids already sent
        assert len(sink.ids) >= len(expected)
        _assert_in_order_per_session(sink.ids)

    customers = {prepaid.id: "cus_prepaid", postpaid.id: "cus_postpaid"}
    for event in receiver.events:
        session, _ = str(event["id"]).rsplit(":", 1)
        account_id = sessions[session][0]
        assert (event["type"], event["source"], event["specversion"]) == ("sttgate.cycle", "sttgate-test", "1.0")
        assert event["subject"] == customers[account_id]
        assert datetime.fromisoformat(event["time"]).tzinfo is not None
        data = event.get_data()
        assert data["account"] == account_id and data["session"] == session
        assert (data["provider"], data["basis"], data["seconds"], data["price_usd"]) == (
            "assemblyai",
            "audio",
            5,
            "0.000208333",
        )
        assert data["key"] is not None and data["model"]
    for call in recorder.calls:
        session, _ = call["identifier"].rsplit(":", 1)
        assert call["payload[stripe_customer_id]"] == customers[sessions[session][0]]
        assert (call["event_name"], call["payload[value]"]) == ("stt_seconds", "5")

    status = await _cli_json("export", "status", "--config", str(config), env={"STTGATE_DATABASE_URL": url})
    by_name = {s["name"]: s for s in status["sinks"]}
    assert {n: (s["pending"], s["lag_seconds"]) for n, s in by_name.items()} == {
        "meter": (0, None),
        "stripe": (0, None),
    }
    assert by_name["meter"]["sent_total"] >= len(expected) and by_name["meter"]["last_error"] == "HTTP 500 from " + (
        receiver.url
    )


async def test_two_gateways_on_postgresql_send_each_event_once(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Two gateways on one PostgreSQL database, the same sinks: one holds each sink's lease (FOR UPDATE SKIP
    LOCKED), so every cycle of the sessions on both arrives exactly once, and the holder's shutdown hands over."""
    async with fresh_schema("sttgate_export") as url:
        store = await Store.connect(url, migrate=True)
        try:
            async with export_sinks() as (receiver, recorder), serve_processes() as spawn:
                account = await store.create_account(name="postpaid", max_streams=10)
                await _set_external_id(store, account.id, "cus_both")
                key = (await store.create_key(account.id)).key
                config = tmp_path / "sttgate.toml"
                config.write_text(export_config(receiver, recorder))
                gateways = [
                    await spawn(
                        "--config",
                        str(config),
                        env={**serve_env(emulator, url, f"gw-{name}"), "STTGATE_EXPORT_POLL_SECONDS": "0.05"},
                        cwd=tmp_path,
                        name=name,
                    )
                    for name in ("a", "b")
                ]
                query = f"provider=assemblyai&api_key={key}&sample_rate=16000&encoding=pcm_s16le&emu_rate_check=off"
                async with aiohttp.ClientSession() as http:
                    sockets = [await http.ws_connect(gw.ws_url(query)) for gw in gateways * 2]
                    codes = await asyncio.gather(*(stream(ws, 2 * FRAMES_PER_CYCLE + 5) for ws in sockets))
                assert codes == [1000] * 4

                sessions = await _sessions(store, [account.id])
                expected = {f"{sid}:{c}" for sid, (_, cycles, _, _) in sessions.items() for c in range(1, cycles + 1)}
                assert len(expected) == 4 * 3
                await wait_for(lambda: set(receiver.ids) == expected, 30, 0.05, "every cycle at the receiver")
                await wait_for(lambda: set(recorder.ids) == expected, 30, 0.05, "every cycle at the recorder")
                for gw in gateways:
                    gw.proc.send_signal(signal.SIGTERM)
                    assert await gw.wait(30) == 0
            for sink in (receiver, recorder):
                assert sink.problems == []
                assert sorted(sink.ids) == sorted(expected)  # each exactly once
                _assert_in_order_per_session(sink.ids)
        finally:
            await store.close()
