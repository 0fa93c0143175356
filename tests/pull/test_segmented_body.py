"""A pull start body is read whole however the network segments it (docs/pull.md#start-a-task), and never past the
size limit."""

from __future__ import annotations

import asyncio
import json

from yarl import URL


async def _post_in_segments(base: str, key: str, body: bytes, *, pause: float, pieces: int = 2) -> tuple[int, object]:
    """``POST /api/v2/audio-stream/start`` with the body written in ``pieces`` TCP segments ``pause`` s apart."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            (
                f"POST /api/v2/audio-stream/start HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        step = -(-len(body) // pieces)
        for offset in range(0, len(body), step):
            writer.write(body[offset : offset + step])
            await writer.drain()
            await asyncio.sleep(pause)
        async with asyncio.timeout(15):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


async def test_a_body_in_two_segments_200_ms_apart_starts_the_task(pull_gateway, account, receiver, media_server):
    gw = await pull_gateway()
    acct = await account()
    _, hook = receiver
    body = {"audio_url": f"{media_server}/tone3.wav", "provider": "assemblyai", "callback_url": hook}
    status, answer = await _post_in_segments(gw.base, acct.key, json.dumps(body).encode(), pause=0.2)
    assert status == 200, answer
    task_id = answer["data"]["task_id"]
    assert (await gw.stop(acct.key, task_id))[0] == 200
    await gw.wait_status(acct.key, task_id)


async def test_a_slow_body_over_the_limit_is_refused(pull_gateway, account):
    gw = await pull_gateway()
    acct = await account()
    body = b'{"audio_url": "' + b"a" * (64 * 1024) + b'"}'
    reader, writer = await asyncio.open_connection(URL(gw.base).host, URL(gw.base).port)
    try:
        # No Content-Length: the limit holds on what is read, in pieces, whatever the header said.
        writer.write(
            f"POST /api/v2/audio-stream/start HTTP/1.1\r\nHost: x\r\nAuthorization: {acct.key}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        for offset in range(0, len(body), 16 * 1024):
            piece = body[offset : offset + 16 * 1024]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(15):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert int(head.split(b" ")[1]) == 400
    assert b"larger than 65536 bytes" in payload
