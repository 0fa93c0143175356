"""FFmpeg decoding over real sources on loopback: HTTP files, HLS, failures, stop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiohttp import web

from sttgate.pull.ffmpeg import (
    BYTES_PER_SECOND,
    CHUNK_BYTES,
    PACING_LEAD_SECONDS,
    SOURCE_ENDED,
    SOURCE_FAILED,
    FFmpegSource,
    Pacer,
    ffmpeg_argv,
)
from tests.support.pull import ffmpeg_children
from tests.support.servers import fixed_text, serve_app
from tests.support.waiting import wait_for


def source(ffmpeg: str, url: str, *, timeout: float = 10.0, pace: bool = True) -> FFmpegSource:
    scheme = url.split(":", 1)[0]
    return FFmpegSource(
        ffmpeg_argv(ffmpeg, url, scheme, io_timeout_seconds=timeout),
        source_timeout=timeout,
        pacer=Pacer() if pace else None,
    )


async def collect(src: FFmpegSource) -> tuple[list[bytes], list[float]]:
    loop = asyncio.get_running_loop()
    chunks, times = [], []
    async for chunk in src.chunks():
        chunks.append(chunk)
        times.append(loop.time())
    return chunks, times


def test_pacer_releases_audio_at_real_time_with_a_small_lead() -> None:
    pacer = Pacer(lead=0.2, catchup=2.0)
    assert pacer.delay(100.0, 0.1) == 0.0
    assert pacer.delay(100.0, 0.2) == 0.0
    assert pacer.delay(100.0, 0.3) == pytest.approx(0.1)
    assert pacer.delay(100.5, 1.0) == pytest.approx(0.3)
    assert pacer.delay(101.0, 1.2) == 0.0


def test_pacer_limits_the_burst_after_a_stall() -> None:
    pacer = Pacer(lead=0.2, catchup=2.0)
    pacer.delay(0.0, 0.1)
    # The source stalled for 10 s, then delivers its backlog at once: 2 s may go at once, the rest at real time.
    assert pacer.delay(10.1, 0.2) == 0.0
    assert pacer.delay(10.1, 2.2) == pytest.approx(0.0)
    assert pacer.delay(10.1, 2.3) == pytest.approx(0.1)


def test_argv_whitelists_the_scheme_and_never_file() -> None:
    argv = ffmpeg_argv("ffmpeg", "https://example.com/live.m3u8", "https", io_timeout_seconds=15)
    assert argv[argv.index("-protocol_whitelist") + 1] == "http,https,tcp,tls,crypto,httpproxy"
    assert argv[argv.index("-rw_timeout") + 1] == "15000000"
    assert argv[argv.index("-i") + 1] == "https://example.com/live.m3u8"
    assert argv[-3:] == ["-flush_packets", "1", "pipe:1"]
    rtmp = ffmpeg_argv("ffmpeg", "rtmp://example.com/live/x", "rtmp", io_timeout_seconds=5)
    assert "-timeout" not in rtmp  # for RTMP that option is a listen timeout, in seconds
    rtsp = ffmpeg_argv("ffmpeg", "rtsp://example.com/cam", "rtsp", io_timeout_seconds=5)
    assert rtsp[rtsp.index("-rtsp_transport") + 1] == "tcp"


async def test_http_wav_is_decoded_whole_in_chunks_at_real_time(ffmpeg_exe: str, media_server: str) -> None:
    src = source(ffmpeg_exe, f"{media_server}/tone3.wav")
    chunks, times = await collect(src)
    assert src.outcome is not None and src.outcome.status == SOURCE_ENDED
    assert sum(len(c) for c in chunks) == 3 * BYTES_PER_SECOND
    assert all(len(c) == CHUNK_BYTES for c in chunks)
    sent = 0
    for chunk, at in zip(chunks, times, strict=True):
        sent += len(chunk)
        # Never ahead of the wall clock by more than the lead (10 ms of scheduling tolerance).
        assert sent / BYTES_PER_SECOND <= (at - times[0]) + PACING_LEAD_SECONDS + 0.1 + 0.01


async def test_hls_playlist_over_http(ffmpeg_exe: str, media_server: str) -> None:
    src = source(ffmpeg_exe, f"{media_server}/hls/index.m3u8", pace=False)
    chunks, _ = await collect(src)
    assert src.outcome is not None and src.outcome.status == SOURCE_ENDED, src.outcome
    seconds = sum(len(c) for c in chunks) / BYTES_PER_SECOND
    assert 2.9 <= seconds <= 3.2


async def test_hls_segment_pointing_at_file_is_never_read(ffmpeg_exe: str, media_dir: Path, tmp_path: Path) -> None:
    segment = media_dir / "hls" / "index0.ts"
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\nfile://{segment}\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
    )
    app = web.Application()
    app.router.add_get("/evil.m3u8", fixed_text(playlist, "application/vnd.apple.mpegurl"))
    async with serve_app(app) as base:
        src = source(ffmpeg_exe, f"{base}/evil.m3u8", pace=False)
        chunks, _ = await collect(src)
    assert chunks == []
    assert src.bytes_read == 0
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED
    assert "whitelist" in (src.outcome.error or "")


async def test_unreachable_source_fails_with_ffmpegs_error(ffmpeg_exe: str) -> None:
    app = web.Application()
    async with serve_app(app) as base:
        pass  # the port is closed again: nothing listens there now
    src = source(ffmpeg_exe, f"{base}/gone.wav")
    chunks, _ = await collect(src)
    assert chunks == []
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED
    assert "Connection refused" in (src.outcome.error or "")


async def test_http_404_fails(ffmpeg_exe: str, media_server: str) -> None:
    src = source(ffmpeg_exe, f"{media_server}/missing.wav")
    await collect(src)
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED
    assert "404" in (src.outcome.error or "")


async def test_source_that_hangs_fails_after_the_source_timeout(ffmpeg_exe: str) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await response.prepare(request)
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/hang.wav", hang)
    async with serve_app(app) as base:
        src = source(ffmpeg_exe, f"{base}/hang.wav", timeout=1.0)
        chunks, _ = await collect(src)
        release.set()
    assert chunks == []
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED
    assert src.process is not None and src.process.returncode is not None


async def test_close_stops_a_running_decoder_and_reaps_it(ffmpeg_exe: str, media_server: str) -> None:
    src = source(ffmpeg_exe, f"{media_server}/tone60.wav")
    got = 0
    async for _chunk in src.chunks():
        got += 1
        if got == 3:
            break
    assert [pid for pid, _ in ffmpeg_children()] == [src.pid]
    await src.close()
    await src.close()
    assert src.process is not None and src.process.returncode is not None
    assert ffmpeg_children() == []


async def test_close_survives_cancellation_of_its_caller(ffmpeg_exe: str, media_server: str) -> None:
    src = source(ffmpeg_exe, f"{media_server}/tone60.wav")
    await src.start()
    closing = asyncio.create_task(src.close(grace=5.0))
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await src.close()
    assert src.process is not None and src.process.returncode is not None


async def test_missing_binary_is_a_failed_source() -> None:
    src = FFmpegSource(["/nonexistent/ffmpeg", "-i", "x"], source_timeout=1.0)
    assert [c async for c in src.chunks()] == []
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED


async def test_ffmpeg_dies_with_a_gateway_that_is_killed(ffmpeg_exe: str) -> None:
    """PR_SET_PDEATHSIG: a gateway killed with SIGKILL (no clean-up at all) leaves no decoder behind, even one that
    is blocked on a silent source (so no broken pipe would ever stop it)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    script = (
        "import asyncio, sys\n"
        "from sttgate.pull.ffmpeg import FFmpegSource\n"
        "async def main():\n"
        "    src = FFmpegSource([sys.argv[1], '-nostdin', '-loglevel', 'error', '-i', sys.argv[2],\n"
        "                        '-f', 's16le', 'pipe:1'], source_timeout=60)\n"
        "    await src.start()\n"
        "    print(src.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    pid = 0

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat[stat.rindex(")") + 2] in "ZX"

    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, ffmpeg_exe, f"http://127.0.0.1:{port}/silent", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert gateway.stdout is not None
        pid = int(await asyncio.wait_for(gateway.stdout.readline(), 10))
        await wait_for(lambda: bool(held))  # FFmpeg is connected and waiting for an answer that never comes
        assert not gone()
    finally:
        gateway.kill()
        await gateway.wait()
        try:
            await wait_for(gone)
        finally:
            for writer in held:
                writer.close()
            silent.close()
            await silent.wait_closed()
