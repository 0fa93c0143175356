"""Operations (docs/operations.md) on a real ``sttgate serve`` process: SIGTERM drain, crash recovery, health,
metrics."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from sttgate.admin import Admin
from sttgate.providers import names
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.serve import ServeProcess, serve_env, serve_processes
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

# The gateway's end message to AssemblyAI; the echo emulator sends it back and then closes, as AssemblyAI does.
TERMINATE = '{"type":"Terminate"}'


def echo_url(port: int, key: str) -> URL:
    """An AssemblyAI echo session through the gateway on ``port``."""
    return URL(f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={key}&emu_echo=1", encoded=True)


@pytest.fixture
async def serve(emulator, tmp_path) -> AsyncIterator:
    """Factory: ``await serve(*cli_args, **env)`` → (ServeProcess, port); every process is killed at the end."""
    async with serve_processes() as spawn:

        async def start(*args: str, **env: str) -> tuple[ServeProcess, int]:
            environment = {**serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "serve-test"), **env}
            sp = await spawn(*args, env=environment, cwd=tmp_path)
            return sp, sp.port

        yield start


async def test_sigterm_drains_then_closes_with_1012_and_exits_zero(serve, account, store, emulator):
    acct = await account()
    sp, port = await serve(STTGATE_DRAIN_SECONDS="1.0")
    base = f"http://127.0.0.1:{port}"
    url = echo_url(port, acct.key)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        ws = await http.ws_connect(url)
        await ws.send_bytes(b"\x00" * 3200)
        assert (await ws.receive(timeout=5)).type is WSMsgType.BINARY

        sp.proc.send_signal(signal.SIGTERM)

        async def draining():
            async with http.get(f"{base}/readyz") as resp:
                return resp.status == 503

        await wait_for(draining, timeout=5)
        status, body, _ = await handshake(url)
        assert (status, body["error"]["code"]) == (503, "service_draining")
        # The live session keeps working during the drain period...
        await ws.send_bytes(b"\x01" * 3200)
        assert (await ws.receive(timeout=5)).data == b"\x01" * 3200
        # ...and is ended once it is over: the provider's answer to its end message (here the echo of Terminate)
        # still reaches the client, then 1012.
        assert (await ws.receive(timeout=10)).data == TERMINATE
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1012, "service restart")
        await ws.close()
    assert await sp.wait() == 0
    session = (await Admin(store, names()).usage(acct.id))["sessions"]
    assert [(s["close_code"], s["closed_by"]) for s in session] == [(1012, "gateway")]
    rec = emulator.recorder.last
    await rec.wait_ended()
    assert rec.client_close_code == 1012
    assert rec.texts_in() == [TERMINATE]  # the provider session was ended gracefully
    assert acct.key not in sp.log
    assert "event=session_end" in sp.log


async def test_restart_after_a_crash_closes_the_dead_sessions_as_gateway_crash(serve, account, store):
    acct = await account(balance_usd="1")
    # A short lease: the killed process's session is dead 2 s after its last renewal.
    short_lease = {"STTGATE_LEASE_TTL_SECONDS": "2", "STTGATE_LEASE_RENEW_SECONDS": "0.5"}
    sp, port = await serve(**short_lease)
    url = URL(
        f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}"
        "&sample_rate=16000&emu_echo=1",
        encoded=True,
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        for _ in range(60):  # 6 s of audio: two charged cycles
            await ws.send_bytes(b"\x00" * 3200)
        for _ in range(60):
            await ws.receive(timeout=5)

        async def charged():
            return (await Admin(store, names()).usage(acct.id))["sessions"][0]["billed_seconds"] == 10

        await wait_for(charged)
        sp.proc.kill()
        await sp.wait()
        await ws.close()
    # The restarted process has an identity of its own: it closes the dead session once its lease expired (at
    # start-up or by its reaper), never sooner (docs/operations.md#process-identity).
    restarted, _ = await serve(**short_lease)

    async def closed():
        session = (await Admin(store, names()).usage(acct.id))["sessions"][0]
        return session if session["ended_at"] is not None else None

    session = await wait_for(closed, timeout=15, interval=0.1, what="the dead session closed")
    usage = await Admin(store, names()).usage(acct.id)
    assert session["closed_by"] == "gateway_crash"
    assert (session["billed_seconds"], session["cost_usd"]) == (10, "0.000416666")
    assert usage["balance_usd"] == "0.999583334"
    restarted.proc.send_signal(signal.SIGTERM)
    assert await restarted.wait() == 0


async def test_health_ready_and_metrics(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.http.get(f"{gw.http_url}/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with gw.http.get(f"{gw.http_url}/readyz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ready"})
    await handshake(gw.ws_url("provider=assemblyai"))
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        for _ in range(60):
            await ws.send_bytes(b"\x00" * 3200)
        async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
            live = await resp.text()
        assert 'sttgate_sessions_open{provider="assemblyai"} 1.0' in live

    async def ended_metrics():
        async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        return text if 'sttgate_sessions_ended_total{closed_by="client",code="1000"} 1.0' in text else None

    text = await wait_for(ended_metrics)
    assert 'sttgate_sessions_open{provider="assemblyai"} 0.0' in text
    assert 'sttgate_handshake_refusals_total{code="missing_api_key"} 1.0' in text
    assert 'sttgate_cycles_billed_total{provider="assemblyai"} 2.0' in text
    assert 'sttgate_frames_total{direction="client_to_provider",provider="assemblyai"} 60.0' in text
    assert 'sttgate_bytes_total{direction="client_to_provider",provider="assemblyai"} 192000.0' in text
    assert 'sttgate_upstream_connect_seconds_count{provider="assemblyai"} 1.0' in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_second_signal_cuts_the_drain_short(serve, account):
    acct = await account()
    sp, port = await serve(STTGATE_DRAIN_SECONDS="600")
    url = URL(
        f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}&emu_echo=1", encoded=True
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        sp.proc.send_signal(signal.SIGTERM)

        async def draining():
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == 503

        await wait_for(draining)
        sp.proc.send_signal(signal.SIGTERM)
        assert (await ws.receive(timeout=10)).data == TERMINATE
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1012)
        await ws.close()
    assert await sp.wait() == 0


async def test_workers_share_one_port_and_drain_together(serve, account, store):
    acct = await account(max_streams=10)
    sp, port = await serve("--workers", "2", "--port", str(free_port()), STTGATE_DRAIN_SECONDS="0.5")
    await wait_for(lambda: sp.log.count("event=gateway_listening") == 2, timeout=30)
    url = URL(
        f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}&emu_echo=1", encoded=True
    )
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(url) for _ in range(6)]
        for i, ws in enumerate(sockets):
            await ws.send_bytes(bytes([i]) * 10)
            assert (await ws.receive(timeout=5)).data == bytes([i]) * 10
        sp.proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            assert (await ws.receive(timeout=10)).data == TERMINATE
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1012)
            await ws.close()
    assert await sp.wait() == 0
    sessions = (await Admin(store, names()).usage(acct.id))["sessions"]
    assert [(s["close_code"], s["closed_by"]) for s in sessions] == [(1012, "gateway")] * 6
    assert sp.log.count("event=gateway_stopped") == 2


async def test_readyz_is_503_when_the_database_does_not_answer(gateway, store, monkeypatch):
    gw = await gateway()

    async def no_answer():
        return False

    monkeypatch.setattr(store, "ping", no_answer)
    async with gw.http.get(f"{gw.http_url}/readyz") as resp:
        assert (resp.status, await resp.json()) == (503, {"status": "database_unavailable"})


async def test_app_opens_and_migrates_its_own_database(emulator, tmp_path):
    settings = gateway_settings(emulator, database_url=f"sqlite:///{tmp_path / 'own.db'}")
    async with (
        running_gateway(settings) as running,
        aiohttp.ClientSession() as http,
        http.get(f"{running.http_url}/readyz") as resp,
    ):
        assert resp.status == 200
    assert (tmp_path / "own.db").exists()
