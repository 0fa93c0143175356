"""The egress guard: every HTTP(S) connection FFmpeg makes (playlist, segments, redirects) is checked.

The guard's address rule is replaced by a policy that allows one loopback port (the "public" server) and refuses
every other (the "private" one), so the test can run on loopback alone.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from sttgate.config import Settings
from sttgate.pull.egress import EgressGuard, Refused, parse_target, rewrite_head
from sttgate.pull.ffmpeg import SOURCE_ENDED, SOURCE_FAILED, FFmpegSource, ffmpeg_argv, ffmpeg_env
from sttgate.pull.manager import PullManager
from sttgate.pull.urlsafety import CheckedUrl
from tests.support.servers import fixed_text, serve_app
from tests.support.tls import self_signed_certificate


def test_parse_target() -> None:
    assert parse_target("CONNECT", "example.com:443") == ("example.com", 443, None)
    assert parse_target("CONNECT", "[2001:db8::1]:8443") == ("2001:db8::1", 8443, None)
    assert parse_target("GET", "http://example.com/a/b.ts?x=1") == ("example.com", 80, "/a/b.ts?x=1")
    assert parse_target("GET", "http://example.com:8080") == ("example.com", 8080, "/")
    for method, target in (("GET", "/relative"), ("GET", "file:///etc/passwd"), ("CONNECT", "nohost")):
        with pytest.raises(Refused):
            parse_target(method, target)


def test_rewrite_head_makes_one_origin_form_request() -> None:
    head = (
        b"GET http://example.com/seg1.ts HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive\r\nRange: bytes=0-\r\n\r\n"
    )
    assert rewrite_head(head, "/seg1.ts") == (
        b"GET /seg1.ts HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n"
    )


class Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.paths.append(request.path)
        return await handler(request)


@pytest.fixture
async def private_server(media_dir: Path) -> AsyncIterator[tuple[str, Hits]]:
    """The server the guard must keep FFmpeg away from; it serves real media, so a leak would decode."""
    hits = Hits()
    app = web.Application(middlewares=[hits.middleware])
    app.router.add_static("/media", media_dir)
    async with serve_app(app) as base:
        yield base, hits


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1].split("/")[0])


async def guarded(public_port: int) -> EgressGuard:
    guard = EgressGuard(policy=lambda address, port: address == "127.0.0.1" and port == public_port)
    await guard.start()
    return guard


async def decode_through(guard: EgressGuard, ffmpeg: str, url: str, **env: str) -> FFmpegSource:
    src = FFmpegSource(
        ffmpeg_argv(ffmpeg, url, url.split(":", 1)[0], io_timeout_seconds=5),
        source_timeout=5,
        env={**ffmpeg_env(guard.proxy_url), **env},
    )
    async for _ in src.chunks():
        pass
    return src


async def test_hls_through_the_guard_reaches_every_segment(ffmpeg_exe: str, media_dir: Path) -> None:
    hits = Hits()
    app = web.Application(middlewares=[hits.middleware])
    app.router.add_static("/media", media_dir)
    async with serve_app(app) as base:
        guard = await guarded(port_of(base))
        try:
            src = await decode_through(guard, ffmpeg_exe, f"{base}/media/hls/index.m3u8")
        finally:
            await guard.close()
    assert src.outcome is not None and src.outcome.status == SOURCE_ENDED
    assert src.bytes_read > 2.9 * 32000
    assert len(guard.allowed) == len(hits.paths) >= 4  # the playlist and each segment, each via the guard
    assert guard.refused == []


async def test_hls_segments_on_a_private_host_are_refused(ffmpeg_exe: str, media_dir: Path, private_server) -> None:
    private, private_hits = private_server
    segments = sorted(p.name for p in (media_dir / "hls").glob("*.ts"))
    playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n" + "".join(
        f"#EXTINF:1.0,\n{private}/media/hls/{name}\n" for name in segments
    )
    playlist += "#EXT-X-ENDLIST\n"
    app = web.Application()
    app.router.add_get("/live.m3u8", fixed_text(playlist, "application/vnd.apple.mpegurl"))
    async with serve_app(app) as base:
        guard = await guarded(port_of(base))
        try:
            src = await decode_through(guard, ffmpeg_exe, f"{base}/live.m3u8")
        finally:
            await guard.close()
    assert private_hits.paths == []
    assert src.bytes_read == 0
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED
    assert any(f":{port_of(private)}" in why for why in guard.refused)


async def test_a_redirect_to_a_private_host_is_refused(ffmpeg_exe: str, private_server) -> None:
    private, private_hits = private_server

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"{private}/media/tone3.wav")

    app = web.Application()
    app.router.add_get("/a.wav", redirect)
    async with serve_app(app) as base:
        guard = await guarded(port_of(base))
        try:
            src = await decode_through(guard, ffmpeg_exe, f"{base}/a.wav")
        finally:
            await guard.close()
    assert private_hits.paths == []
    assert src.bytes_read == 0
    assert src.outcome is not None and src.outcome.status == SOURCE_FAILED


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A certificate for ``localhost``; FFmpeg verifies certificates, so it is told to trust this one."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, str(cert)


async def test_https_goes_through_connect_and_is_checked(ffmpeg_exe: str, media_dir: Path, tls_context) -> None:
    app = web.Application()
    app.router.add_static("/media", media_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    context, cert_file = tls_context
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        allowed = await guarded(port)
        try:
            src = await decode_through(
                allowed, ffmpeg_exe, f"https://localhost:{port}/media/tone3.wav", SSL_CERT_FILE=cert_file
            )
        finally:
            await allowed.close()
        assert src.outcome is not None and src.outcome.status == SOURCE_ENDED
        assert src.bytes_read == 3 * 32000 and set(allowed.allowed) == {f"localhost:{port}"}
        refused = await guarded(port + 1)
        try:
            src = await decode_through(
                refused, ffmpeg_exe, f"https://localhost:{port}/media/tone3.wav", SSL_CERT_FILE=cert_file
            )
        finally:
            await refused.close()
        assert src.bytes_read == 0 and src.outcome is not None and src.outcome.status == SOURCE_FAILED
        assert refused.refused
    finally:
        await runner.cleanup()


async def test_the_manager_guards_each_scheme_when_private_is_refused(store) -> None:
    """HTTP(S) through the egress guard; RTSP, RTMP and RTMPS through a relay of their own, pinned to the checked
    address (RTMPS opened as RTMP, the relay adding the TLS); nothing of the sort with private addresses allowed."""

    def checked(url: str) -> CheckedUrl:
        scheme = url.split(":", 1)[0]
        return CheckedUrl(url=url, scheme=scheme, host="example.com", port=1935, addresses=("93.184.216.34",))

    guarded_manager = PullManager(Settings(pull_allow_private=False), store)
    open_manager = PullManager(Settings(pull_allow_private=True), store)
    await guarded_manager.start()
    await open_manager.start()
    sources = []
    try:
        assert guarded_manager.egress is not None
        proxy = guarded_manager.egress.proxy_url
        for url in ("http://example.com/a.m3u8", "https://example.com/a.m3u8"):
            sources.append(src := guarded_manager.source_for(checked(url)))
            env = src.env or {}
            assert env["http_proxy"] == proxy and src.relay is None
            assert not {k for k in env if k.lower() in ("no_proxy", "https_proxy", "all_proxy")}
        for url in ("rtmp://example.com/live/x", "rtmps://example.com/live/x", "rtsp://example.com/cam"):
            sources.append(src := guarded_manager.source_for(checked(url)))
            assert src.relay is not None and (src.env or {}).get("http_proxy") != proxy
            assert "example.com" not in src.argv[src.argv.index("-i") + 1]
            assert f"127.0.0.1:{src.relay.port}" in src.argv[src.argv.index("-i") + 1]
            assert "tls" not in src.argv[src.argv.index("-protocol_whitelist") + 1]
        for url in ("http://example.com/a.wav", "rtsp://example.com/cam", "rtmps://example.com/live/x"):
            sources.append(src := open_manager.source_for(checked(url)))
            assert src.relay is None and (src.env or {}).get("http_proxy") is None
            assert src.argv[src.argv.index("-i") + 1] == url
    finally:
        for src in sources:
            await src.close()
        await guarded_manager.close()
        await open_manager.close()
