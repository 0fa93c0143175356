"""The passthrough data plane's own rules (docs/contract.md#relay), over raw sockets where a client library would not
break them: protocol errors close with 1002, a frame over the limit with 1009 that reaches the client, bytes sent
right behind the upgrade request are not lost, a shut-down closes handed-over sockets with 1012, and a ``wss://``
provider relays byte for byte."""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from sttgate.core.frames import Opcode, close_payload, encode_frame
from sttgate.emulators.app import create_app as create_emulator
from sttgate.gateway.framesocket import FrameSocket
from sttgate.gateway.upstream import FrameKind
from sttgate.gateway.wsclient import accept_key, open_websocket
from sttgate.web.app import bound_port
from tests.gateway.test_relay import last_session, random_frames
from tests.support.emulator import EmulatorServer, emulator_config
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.tls import self_signed_certificate
from tests.support.upgrade import raw_upgrade


def masked(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, mask=os.urandom(4))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert not b1 & 0x80, "a server frame is never masked"
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(length)


async def read_until_close(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[int, bytes]]]:
    """The frames before the gateway's close frame, and its code and reason."""
    before = []
    async with asyncio.timeout(10):
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == Opcode.CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode(), before
            before.append((opcode, payload))


def query(key: str) -> str:
    return f"provider=assemblyai&api_key={key}&emu_echo=1"


BROKEN_FRAMES = {
    "unmasked client frame": encode_frame(Opcode.BINARY, b"\x00" * 10),
    "reserved bit": bytes([0xC2]) + masked(Opcode.BINARY, b"x")[1:],
    "unknown opcode": masked(3, b""),
    "fragmented ping": bytes([0x09]) + masked(Opcode.PING, b"p")[1:],
    "continuation without a message": masked(Opcode.CONTINUATION, b"x"),
    "close 1005": masked(Opcode.CLOSE, close_payload(1005, "")),
    "close 1006": masked(Opcode.CLOSE, close_payload(1006, "")),
    "close 1015": masked(Opcode.CLOSE, close_payload(1015, "")),
    "close 999": masked(Opcode.CLOSE, close_payload(999, "")),
    "close 2000": masked(Opcode.CLOSE, close_payload(2000, "")),
    "close 5000": masked(Opcode.CLOSE, (5000).to_bytes(2, "big")),
    "close 65535": masked(Opcode.CLOSE, (65535).to_bytes(2, "big")),
    "close of one byte": masked(Opcode.CLOSE, b"\x03"),
    "close reason not UTF-8": masked(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"\xff"),
}


@pytest.mark.parametrize("frame", BROKEN_FRAMES.values(), ids=BROKEN_FRAMES.keys())
async def test_a_client_that_breaks_the_protocol_gets_1002(gateway, account, frame):
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    sock = await raw_upgrade(gw.port, query(acct.key))
    assert sock.status == 101 and sock.reader is not None and sock.writer is not None
    try:
        sock.writer.write(masked(Opcode.BINARY, b"\x01" * 320) + frame)
        code, reason, _ = await read_until_close(sock.reader)
        assert (code, reason) == (1002, "")  # at once: nothing follows it
    finally:
        sock.abort()
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1002, "gateway")
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.binary_frames_in == 1  # what came before the broken frame was relayed, nothing of it
    assert rec.client_close_code == 1001  # the provider ended gracefully, told the client is gone


async def test_audio_frames_read_several_at_once_are_metered_and_paid_one_by_one(gateway, account):
    """A client that sends its frames a few per write (the gateway reads them several at a time): exactly the frames
    the balance paid for reach the provider, and the frame that opens the unpaid cycle is not forwarded."""
    gw = await gateway()
    acct = await account(balance_usd="0.000416666")  # exactly two AssemblyAI cycles: 10 s of audio
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    sock = await raw_upgrade(gw.port, f"provider=assemblyai&api_key={acct.key}&sample_rate=16000&emu_rate_check=off")
    assert sock.status == 101 and sock.reader is not None and sock.writer is not None
    frames = [masked(Opcode.BINARY, bytes((i * 7 + j) & 0xFF for j in range(3200))) for i in range(120)]  # 100 ms
    try:
        for i in range(0, 120, 3):
            sock.writer.write(b"".join(frames[i : i + 3]))
            await sock.writer.drain()
        code, reason, _ = await read_until_close(sock.reader)
        assert (code, reason) == (4002, "insufficient balance")
    finally:
        sock.abort()
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.binary_frames_in == 100  # 10 s: the 101st frame opened the third cycle
    session = await last_session(gw, acct.id)
    assert session["close_code"] == 4002


async def test_the_1009_close_reaches_a_client_that_keeps_sending(gateway, account):
    """The client's stream is not read past the oversize header, and the client keeps sending: the close frame is
    followed by the end of the gateway's stream, not by a reset that could destroy it in flight."""
    gw = await gateway(max_frame_bytes=1000)
    acct = await account()
    sock = await raw_upgrade(gw.port, query(acct.key))
    assert sock.reader is not None and sock.writer is not None
    try:
        big = masked(Opcode.BINARY, os.urandom(200_000))
        sock.writer.write(big[:100])
        code, reason, _ = await read_until_close(sock.reader)
        sock.writer.write(big[100:])  # unread by the gateway
        assert (code, reason) == (1009, "message too big")
        async with asyncio.timeout(10):
            assert await sock.reader.read() == b""  # then the end of the stream
    finally:
        sock.abort()
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1009, "gateway")


async def test_frames_sent_right_behind_the_upgrade_request_are_relayed(gateway, account):
    """A client may pipeline its first frames behind the upgrade request; the HTTP layer reads them with the request
    and hands them over with the socket."""
    gw = await gateway()
    acct = await account()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        request = (
            f"GET /ws/v2/audio-stream?{query(acct.key)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
        frames = [masked(Opcode.BINARY, bytes([i]) * (10 + i)) for i in range(5)]
        writer.write(request + b"".join(frames))
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        echoed = []
        async with asyncio.timeout(10):
            while len(echoed) < 5:
                opcode, payload = await read_frame(reader)
                if opcode == Opcode.BINARY:
                    echoed.append(payload)
        assert echoed == [bytes([i]) * (10 + i) for i in range(5)]
    finally:
        writer.close()


async def test_shutting_down_closes_handed_over_sockets_with_1012(emulator, store, account):
    acct = await account()
    async with aiohttp.ClientSession() as http:
        async with running_gateway(gateway_settings(emulator), store) as running:
            ws = await http.ws_connect(f"ws://127.0.0.1:{running.port}/ws/v2/audio-stream?{query(acct.key)}")
            await ws.send_bytes(b"\x00" * 320)
            assert (await ws.receive(timeout=5)).data == b"\x00" * 320
        # The app is shut down: the client got a close frame, not a dropped connection.
        msg = await ws.receive(timeout=5)
        while msg.type is not WSMsgType.CLOSE:
            msg = await ws.receive(timeout=5)
        assert (msg.data, msg.extra) == (1012, "service restart")
        await ws.close()


@pytest.fixture
async def tls_emulator(tmp_path: Path) -> AsyncIterator[tuple[EmulatorServer, Path]]:
    """The provider emulators behind TLS (``wss://``) with a self-signed certificate for localhost."""
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = create_emulator(emulator_config())
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield EmulatorServer(app, bound_port(runner)), cert
    finally:
        await runner.cleanup()


async def test_a_wss_provider_relays_a_thousand_random_frames_byte_exact(tls_emulator, store, account):
    server, cert = tls_emulator
    acct = await account()
    settings = gateway_settings(f"wss://localhost:{server.port}", upstream_ca_file=cert)
    frames = random_frames(random.Random(6455), 1000)
    async with running_gateway(settings, store) as running, aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{running.port}/ws/v2/audio-stream?{query(acct.key)}"
        async with http.ws_connect(url, max_msg_size=0) as ws:

            async def send():
                for frame in frames:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)

            sender = asyncio.create_task(send())
            received = []
            for _ in frames:
                msg = await ws.receive(timeout=10)
                assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
                received.append(msg.data)
            await sender
        assert received == frames
    rec = server.recorder.find(provider="assemblyai")[0]
    await rec.wait_ended()
    sizes = [f.size for f in rec.frames_in[:-1]]
    assert sizes == [len(f) if isinstance(f, bytes) else len(f.encode()) for f in frames]


async def test_an_untrusted_wss_certificate_is_a_502(tls_emulator, store, account):
    server, _ = tls_emulator
    acct = await account()
    settings = gateway_settings(f"wss://localhost:{server.port}")
    async with running_gateway(settings, store) as running:
        sock = await raw_upgrade(running.port, query(acct.key))
    assert (sock.status, sock.body["error"]["code"]) == (502, "upstream_unavailable")


async def test_the_aiohttp_data_plane_kept_for_comparison_still_relays_byte_exact(gateway, account):
    gw = await gateway(data_plane="aiohttp")
    acct = await account()
    frames = random_frames(random.Random(17), 200)
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:

        async def send():
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)

        sender = asyncio.create_task(send())
        received = [(await ws.receive(timeout=10)).data for _ in frames]
        await sender
    assert received == frames
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1000, "client")


async def test_the_providers_first_frame_right_behind_its_101_is_kept():
    """A provider may send its first message in the same read as its 101: the handshake hands it over."""
    heads: list[bytes] = []
    done = asyncio.Event()

    async def provider(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        key = next(
            line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Key")
        )
        answer = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key.decode())}\r\n\r\n"
        )
        writer.write(answer.encode() + encode_frame(Opcode.TEXT, b'{"type":"Begin"}'))
        await done.wait()
        writer.close()

    server = await asyncio.start_server(provider, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await open_websocket(
            f"ws://127.0.0.1:{port}/v3/ws?x=a+b&y=%2C",
            {"Authorization": "operator-key"},
            ssl_context=None,
            socket=lambda: FrameSocket(client_side=True, max_size=1000, close_timeout=1.0),
        )
        assert await sock.receive() == (FrameKind.TEXT, b'{"type":"Begin"}', None)
        assert heads[0].startswith(b"GET /v3/ws?x=a+b&y=%2C HTTP/1.1\r\n")  # the query byte for byte
        assert b"\r\nAuthorization: operator-key\r\n" in heads[0]
        sock.abort()
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_client_that_half_closes_after_its_close_frame_still_gets_the_echo(gateway, account):
    gw = await gateway()
    acct = await account()
    sock = await raw_upgrade(gw.port, query(acct.key))
    assert sock.reader is not None and sock.writer is not None
    try:
        sock.writer.write(masked(Opcode.CLOSE, close_payload(4000, "done")))
        sock.writer.write_eof()  # nothing more from the client: its sending half is closed
        code, reason, _ = await read_until_close(sock.reader)
        assert (code, reason) == (4000, "done")
        async with asyncio.timeout(10):
            assert await sock.reader.read() == b""  # then the gateway closes the connection
    finally:
        sock.abort()
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (4000, "client")
