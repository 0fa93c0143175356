"""A minimal RTSP server for tests: one audio track (L16, 16 kHz, mono), RTP interleaved over TCP, real time.

No RTSP server package could be had from the registries this project uses (mediamtx is a separate binary; the
GStreamer RTSP server is a library), so the tests speak the few requests FFmpeg sends: OPTIONS, DESCRIBE, SETUP
(interleaved only, which is all the gateway asks for), PLAY, GET_PARAMETER, TEARDOWN. With ``redirect_to`` it is a
hostile server instead: it answers DESCRIBE with ``302`` and that ``Location``, in one of the :data:`REDIRECTS` forms
(each of which FFmpeg 9 follows: tests/pull/test_relay.py shows it).
"""

from __future__ import annotations

import asyncio
import math
import struct

# A 302 as FFmpeg's RTSP reader understands it: plainly, and disguised (spaces before the status line, a \v inside
# it; an empty interleaved frame after "\r" at the start of a line, which FFmpeg skips before reading the line; a
# status that FFmpeg's 32-bit int wraps to 302).
REDIRECTS = {
    "plain": "RTSP/1.0 302 Found\r\nCSeq: {cseq}\r\nLocation: {location}\r\n\r\n",
    "spaced": " " * 100 + "RTSP/1.0 \t\v302 Found\r\nCSeq: {cseq}\r\nLocation: {location}\r\n\r\n",
    "framed": "\r$\0\0\0RTSP/1.0 302 Found\r\nCSeq: {cseq}\r\n\r$\0\0\1XLocation: {location}\r\n\r\n",
    "wrapped": "RTSP/1.0 4294967598 Found\r\nCSeq: {cseq}\r\nLocation: {location}\r\n\r\n",  # 2**32 + 302
}

SAMPLE_RATE = 16000
PACKET_SAMPLES = 320  # 20 ms


def tone_packet(start: int) -> bytes:
    samples = (int(8000 * math.sin(2 * math.pi * 440 * (start + i) / SAMPLE_RATE)) for i in range(PACKET_SAMPLES))
    return struct.pack(f">{PACKET_SAMPLES}h", *samples)  # RTP L16 is big-endian


class RtspServer:
    def __init__(
        self, seconds: float, *, host: str = "127.0.0.1", redirect_to: str | None = None, redirect: str = "plain"
    ) -> None:
        self.seconds = seconds
        self.host = host
        self.redirect_to = redirect_to
        self.redirect = REDIRECTS[redirect]
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests: list[str] = []
        self._streams: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"rtsp://{self.host}:{self.port}/tone"

    async def close(self) -> None:
        assert self.server
        self.server.close()
        for t in list(self._streams):
            t.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                self.requests.append(method)
                cseq = headers.get("cseq", "0")
                extra, body = "", b""
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
                elif method == "DESCRIBE" and self.redirect_to is not None:
                    writer.write(self.redirect.format(cseq=cseq, location=self.redirect_to).encode("latin-1"))
                    await writer.drain()
                    continue
                elif method == "DESCRIBE":
                    body = (
                        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tone\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
                        b"m=audio 0 RTP/AVP 96\r\na=rtpmap:96 L16/16000/1\r\na=control:track1\r\n"
                    )
                    extra = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n"
                elif method == "SETUP":
                    if "interleaved" not in headers.get("transport", ""):
                        writer.write(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
                        await writer.drain()
                        continue
                    extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12345678\r\n"
                elif method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
                    extra = "Session: 12345678\r\n"
                writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}\r\n".encode() + body)
                await writer.drain()
                if method == "PLAY":
                    task = asyncio.create_task(self._stream(writer))
                    self._streams.add(task)
                if method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for t in list(self._streams):
                t.cancel()
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        seq, sent = 0, 0
        total = int(self.seconds * SAMPLE_RATE)
        while sent < total:
            rtp = struct.pack(">BBHII", 0x80, 96, seq & 0xFFFF, sent, 0x1234) + tone_packet(sent)
            writer.write(b"$\x00" + struct.pack(">H", len(rtp)) + rtp)
            await writer.drain()
            seq += 1
            sent += PACKET_SAMPLES
            await asyncio.sleep(max(0.0, t0 + sent / SAMPLE_RATE - loop.time()))
        # The end of a live stream: the server hangs up (FFmpeg then ends with EOF and exit status 0).
        writer.close()
