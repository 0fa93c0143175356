"""No credential and no ERROR traceback in a real ``sttgate serve`` log, whatever clients send (docs/operations.md).

Hundreds of malformed requests carrying a real key and a real token (raw spaces and accented letters in the query, a
control character, a bad HTTP version, bad characters in ``Authorization``/``xi-api-key``, an oversized header),
clients that leave before their 101, and sessions whose frames carry the key and token: the captured stderr holds
neither, no traceback, the parser refusals are counted, and the gateway still serves.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import signal
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType
from yarl import URL

from tests.support.serve import serve_env, serve_processes
from tests.support.waiting import wait_for

REQUESTS = 1000
DEPARTURES = 20


def _upgrade_head(path: str, extra: str = "") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
    )


def malformed_requests(key: str, token: str) -> list[bytes]:
    """Requests aiohttp's parser refuses, each quoting a credential in the part it refuses."""
    heads = []
    for cred in (key, token):
        q = f"/ws/v2/audio-stream?provider=assemblyai&api_key={cred}"
        heads += [
            _upgrade_head(q + "&language_code=français").encode(),
            _upgrade_head(q + "&prompt=two words").encode(),
            _upgrade_head(q + "\x01").encode(),
            _upgrade_head(q).replace("HTTP/1.1", "HTTP/9.9").encode(),
            _upgrade_head(q.replace("api_key", "token")).replace("HTTP/1.1", "HTTP/1.1 extra").encode(),
            _upgrade_head("/ws/v2/audio-stream?provider=assemblyai", f"Authorization: Bearer {cred}\x01\r\n").encode(),
            _upgrade_head("/elevenlabs/v1/speech-to-text/realtime", f"xi-api-key: {cred}\x7f\r\n").encode(),
            _upgrade_head("/assemblyai/v3/ws", f"Authorization: {cred}\x00\r\n").encode(),
            _upgrade_head(q, f"X-Filler: {'a' * 9000} {cred}\r\n").encode(),
            f"POST /api/v2/audio-stream/start?api_key={cred} HTTP/1.1\r\nAuthorization: {cred}é\r\n\r\n".encode(),
        ]
    return heads


async def _send_raw(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            await reader.read(65536)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()


async def _leave_before_101(port: int, key: str) -> None:
    """An upgrade the provider answers slowly; the client hangs up while the gateway waits for it."""
    path = f"/ws/v2/audio-stream?provider=assemblyai&api_key={key}&emu_handshake_delay_ms=300&emu_echo=1"
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_upgrade_head(path).encode())
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()


async def _frames_with_secrets(port: int, key: str, token: str) -> None:
    """A session whose frames carry the key and token, then a close with an invalid code."""
    url = URL(f"http://127.0.0.1:{port}/ws/v2/audio-stream?provider=assemblyai&api_key={key}&emu_echo=1", encoded=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_bytes(f"{key} {token}".encode() * 100)
        await ws.send_str(f'{{"api_key": "{key}", "token": "{token}"}}')
        await ws.send_bytes(b"\x00" * 3200)
        with_secret = await ws.receive(timeout=10)
        assert with_secret.type in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CLOSE, WSMsgType.CLOSED)


async def test_fuzzing_leaves_no_secret_and_no_traceback_in_the_log(emulator, account, tmp_path: Path) -> None:
    acct = await account(max_streams=1000)
    env = serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "log-hygiene")
    async with serve_processes() as spawn:
        sp = await spawn(env=env, cwd=tmp_path, admin=True)
        base = f"http://127.0.0.1:{sp.port}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/v2/audio-stream/token",
                json={"expires_in_seconds": 600},
                headers={"Authorization": acct.key},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["token"]

        malformed = malformed_requests(acct.key, token)
        rng = random.Random(13)
        jobs = [_send_raw(sp.port, rng.choice(malformed)) for _ in range(REQUESTS)]
        jobs += [_leave_before_101(sp.port, acct.key) for _ in range(DEPARTURES)]
        jobs += [_frames_with_secrets(sp.port, acct.key, token) for _ in range(5)]
        rng.shuffle(jobs)
        semaphore = asyncio.Semaphore(50)

        async def bounded(job):
            async with semaphore:
                await job

        await asyncio.gather(*(bounded(job) for job in jobs))

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200

            async def all_departures_counted() -> bool:
                async with http.get(f"{sp.admin_url}/metrics") as resp:
                    text = await resp.text()
                return f'sttgate_bad_requests_total{{kind="client_gone"}} {DEPARTURES}.0' in text

            await wait_for(all_departures_counted, timeout=10)
            async with http.get(f"{sp.admin_url}/metrics") as resp:
                metrics = await resp.text()
            url = URL(f"{base}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}&emu_echo=1", encoded=True)
            async with http.ws_connect(url) as ws:
                await ws.send_bytes(b"\x01" * 3200)
                assert (await ws.receive(timeout=10)).data == b"\x01" * 3200
        malformed_count = re.search(r'sttgate_bad_requests_total\{kind="malformed"\} (\d+)', metrics)
        assert malformed_count and int(malformed_count.group(1)) >= REQUESTS * 0.9

        sp.proc.send_signal(signal.SIGTERM)
        assert await sp.wait(timeout=30) == 0

    log = sp.log
    for secret in (acct.key, acct.key[7:], token, token[5:]):
        assert secret not in log
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert log.count("event=malformed_request") >= REQUESTS * 0.9
    assert log.count("event=client_gone") == DEPARTURES
