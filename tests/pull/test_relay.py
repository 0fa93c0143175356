"""The source relay: RTSP and RTMP(S) reach only the addresses the gateway checked (docs/pull.md#url-safety).

Real FFmpeg and real sockets, on loopback only. The machine has no public address to play with, so each test gives
the gateway's pull manager an address rule in which one loopback address (or one loopback port) plays "public" and
everything else, 127.0.0.1 above all, stays refused: the rule the relay, the start check and the egress guard all
consult. A **canary** (a TCP listener that records any connection) sits where a hostile source would send FFmpeg.

- Redirect: an RTSP server on an allowed port answers DESCRIBE with ``302`` to the canary's port.
- DNS rebinding: the URL names ``localhost``. The gateway's resolver (replaced by the test: no /etc/hosts edits)
  says 127.0.0.2, the allowed address, where the real source listens; the machine's own resolver, which FFmpeg
  would use if it resolved the name itself, says 127.0.0.1, where the canary listens on the same port. That is
  exactly a name that is public when checked and loopback a moment later.

Each threat is first shown real with FFmpeg alone (the "control" tests: FFmpeg does reach the canary), then shown
closed through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sttgate.pull.ffmpeg import FFmpegSource, ffmpeg_argv
from sttgate.pull.relay import SourceRelay, relayed_input, rtmp_app
from sttgate.pull.urlsafety import CheckedUrl
from tests.support.canary import Canary
from tests.support.pull import rtmp_publisher
from tests.support.rtsp import REDIRECTS, RtspServer
from tests.support.tcpproxy import TcpProxy
from tests.support.tls import self_signed_certificate

PUBLIC = "127.0.0.2"  # the address that plays a public one in these tests


def checked(url: str, port: int, *addresses: str, host: str = "cam.example") -> CheckedUrl:
    return CheckedUrl(url=url, scheme=url.split(":", 1)[0], host=host, port=port, addresses=addresses)


@pytest.mark.parametrize(
    ("path", "app"),
    [
        ("/live/stream", "live"),
        ("/live/stream?token=a", "live"),
        ("/live/stream?token=a/b", "live/stream?token=a"),  # FFmpeg looks for "/" in the query too
        ("/app/instance/stream", "app/instance"),
        ("/app/mp4:dir/file", "app"),
        ("/ondemand/clip", "ondemand"),
        ("/vod/x?slist=a/b&c", "vod/x?slist=a/b&c"),
        ("/live", "live"),
        ("", ""),
    ],
)
def test_the_rtmp_application_is_split_as_ffmpeg_splits_it(path: str, app: str) -> None:
    assert rtmp_app(path) == app


async def tcurl_sent(ffmpeg: str, options: tuple[str, ...], url: str) -> str:
    """The ``tcUrl`` FFmpeg puts in its RTMP ``connect``, read by a listener at ``url``'s port that plays the
    handshake (an S1 of version 0, which FFmpeg does not verify) and then reads the AMF command."""
    sent: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(1537)
            writer.write(b"\x03" + bytes(2 * 1536))
            await reader.readexactly(1536)  # C2
            data = b""
            while (value := amf_string(dechunk(data), b"tcUrl")) is None and (chunk := await reader.read(4096)):
                data += chunk
            sent.set_result(value or "")
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", int(url.split(":")[2].split("/")[0]))
    argv = [ffmpeg, "-nostdin", "-loglevel", "quiet", "-rw_timeout", "5000000", *options, "-i", url]
    proc = await asyncio.create_subprocess_exec(*argv, "-f", "null", "-")
    try:
        data = await asyncio.wait_for(sent, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        server.close()
        await server.wait_closed()
    return data


def dechunk(data: bytes, size: int = 128) -> bytes:
    """The payload of FFmpeg's first RTMP message (its ``connect``): a 12-byte header, then chunks of 128 bytes,
    each after the first behind a 1-byte header."""
    payload, at = bytearray(data[12 : 12 + size]), 12 + size
    while at < len(data):
        payload += data[at + 1 : at + 1 + size]
        at += 1 + size
    return bytes(payload)


def amf_string(data: bytes, name: bytes) -> str | None:
    """The AMF0 string property ``name`` in ``data`` once all of it has arrived."""
    at = data.find(name + b"\x02")
    if at < 0 or len(data) < at + len(name) + 3:
        return None
    start = at + len(name) + 3
    end = start + int.from_bytes(data[start - 2 : start], "big")
    return data[start:end].decode() if len(data) >= end else None


@pytest.mark.parametrize(
    "path", ["/live/key", "/app/inst/key", "/live/key?token=a/b", "/vod/x?slist=a/b&c", "/app/" + "i" * 150 + "/key"]
)
async def test_through_the_relay_ffmpeg_sends_the_tcurl_it_would_have_sent(ffmpeg_exe: str, path: str) -> None:
    """The same tcUrl either way: FFmpeg connected to the URL itself, or given the relay's URL and ``-rtmp_tcurl``."""
    listener = Canary()
    port = await listener.start()
    await listener.close()  # a free port, for both runs
    direct = f"rtmp://127.0.0.1:{port}{path}"
    relayed = relayed_input(checked(direct, port, "127.0.0.1"), port)
    assert relayed.url == direct  # the "relay" is the same listener here: only the options differ
    own = await tcurl_sent(ffmpeg_exe, (), direct)
    assert own == await tcurl_sent(ffmpeg_exe, relayed.options, relayed.url)
    assert own == relayed.options[1] == f"rtmp://127.0.0.1:{port}/{rtmp_app(path)}"


def test_what_ffmpeg_is_given_instead_of_the_url() -> None:
    rtsp = relayed_input(checked("rtsp://user:pw@Cam.Example:8554/tone?x=1", 8554, "203.0.113.7"), 4000)
    assert (rtsp.url, rtsp.scheme, rtsp.options) == ("rtsp://user:pw@127.0.0.1:4000/tone?x=1", "rtsp", ())
    rtmp = relayed_input(checked("rtmp://Live.Example/live/key", 1935, "203.0.113.7"), 4000)
    assert (rtmp.url, rtmp.scheme) == ("rtmp://127.0.0.1:4000/live/key", "rtmp")
    assert rtmp.options == ("-rtmp_tcurl", "rtmp://Live.Example:1935/live")
    rtmps = relayed_input(checked("rtmps://[2001:db8::1]:8443/app/inst/key", 8443, "2001:db8::1"), 4000)
    assert (rtmps.url, rtmps.scheme) == ("rtmp://127.0.0.1:4000/app/inst/key", "rtmp")
    assert rtmps.options == ("-rtmp_tcurl", "rtmps://[2001:db8::1]:8443/app/inst")


async def test_the_relay_checks_again_when_ffmpeg_connects() -> None:
    """The rule is applied at each connection, not only at start: an address no longer allowed is not connected."""
    canary = Canary()
    port = await canary.start()
    allowed = {"127.0.0.1"}
    relay = SourceRelay(checked(f"rtsp://127.0.0.1:{port}/x", port, "127.0.0.1"), lambda a, _p: a in allowed)
    allowed.clear()
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await relay.close()
        await canary.close()
    assert relay.connected == [] and canary.connections == []
    assert relay.refused and "no longer allowed" in relay.refused[0]


@contextlib.asynccontextmanager
async def started(*things: RtspServer | Canary) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for thing in things:
            await thing.close()


async def decode_alone(ffmpeg: str, url: str) -> FFmpegSource:
    """FFmpeg on ``url`` with no gateway around it (the controls)."""
    src = FFmpegSource(ffmpeg_argv(ffmpeg, url, url.split(":", 1)[0], io_timeout_seconds=3), source_timeout=3)
    async for _ in src.chunks():
        pass
    await src.close()
    return src


@pytest.mark.parametrize("form", sorted(REDIRECTS))
async def test_control_ffmpeg_alone_follows_an_rtsp_redirect_to_loopback(ffmpeg_exe: str, form: str) -> None:
    canary = Canary()
    canary_port = await canary.start()
    hostile = RtspServer(1.0, redirect_to=f"rtsp://127.0.0.1:{canary_port}/tone", redirect=form)
    url = await hostile.start()
    async with started(hostile, canary):
        await decode_alone(ffmpeg_exe, url)
    assert canary.connections  # the threat is real with this FFmpeg


async def test_control_ffmpeg_alone_resolves_the_name_to_the_canary(ffmpeg_exe: str) -> None:
    source = RtspServer(1.0, host=PUBLIC)
    await source.start()
    canary = Canary()
    await canary.start("127.0.0.1", source.port)
    async with started(source, canary):
        await decode_alone(ffmpeg_exe, f"rtsp://localhost:{source.port}/tone")
    assert canary.connections and source.requests == []


def lying_resolver(address: str) -> Callable[[str, int], object]:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    return resolve


async def guarded_gateway(pull_gateway, allowed: Callable[[str, int], bool], resolver=None):
    """A pull gateway whose sources are held to ``allowed`` (webhooks to the loopback receiver stay allowed)."""
    gw = await pull_gateway()
    gw.manager.source_policy = allowed
    if resolver is not None:
        gw.manager.resolver = resolver
    return gw


async def run_task(gw, account, hook: str, audio_url: str) -> dict:
    acct = await account()
    status, body = await gw.start(acct.key, {"audio_url": audio_url, "provider": "deepgram", "callback_url": hook})
    assert status == 200, body
    return await gw.wait_status(acct.key, body["data"]["task_id"])


@pytest.mark.parametrize("form", sorted(REDIRECTS))
async def test_an_rtsp_redirect_to_loopback_never_connects(pull_gateway, account, receiver, form: str) -> None:
    canary = Canary()
    canary_port = await canary.start()
    hostile = RtspServer(1.0, redirect_to=f"rtsp://127.0.0.1:{canary_port}/tone", redirect=form)
    url = await hostile.start()
    async with started(hostile, canary):
        gw = await guarded_gateway(pull_gateway, lambda a, p: (a, p) == ("127.0.0.1", hostile.port))
        view = await run_task(gw, account, receiver[1], url)
    assert view["status"] == "source_failed", view
    assert "RTSP redirect refused" in view["last_error"]
    assert hostile.requests[:2] == ["OPTIONS", "DESCRIBE"]  # the relay did connect to the checked server
    assert canary.connections == []


@pytest.mark.parametrize("scheme", ["rtsp", "rtmp"])
async def test_a_name_that_turns_into_loopback_after_the_check_never_reaches_it(
    pull_gateway, account, receiver, ffmpeg_exe, scheme
) -> None:
    canary = Canary()
    async with contextlib.AsyncExitStack() as stack:
        if scheme == "rtsp":
            source = RtspServer(2.0, host=PUBLIC)
            await source.start()
            stack.push_async_callback(source.close)
            port = source.port
            await canary.start("127.0.0.1", port)
        else:
            port = await canary.start()  # the canary picks the port; the publisher takes it on the other address
            await stack.enter_async_context(rtmp_publisher(ffmpeg_exe, 3, host=PUBLIC, port=port))
        stack.push_async_callback(canary.close)
        gw = await guarded_gateway(pull_gateway, lambda a, _p: a == PUBLIC, lying_resolver(PUBLIC))
        path = "/tone" if scheme == "rtsp" else "/live/stream"
        view = await run_task(gw, account, receiver[1], f"{scheme}://localhost:{port}{path}")
    # The task read the source at the address that was checked, and never the one the name turned into.
    assert view["status"] == "source_ended", view
    assert view["audio_seconds"] >= 1.0
    assert canary.connections == []


async def test_a_checked_address_that_is_down_fails_without_trying_the_name_again(
    pull_gateway, account, receiver
) -> None:
    canary = Canary()
    port = await canary.start()  # nothing listens on 127.0.0.2 at this port
    async with started(canary):
        gw = await guarded_gateway(pull_gateway, lambda a, _p: a == PUBLIC, lying_resolver(PUBLIC))
        view = await run_task(gw, account, receiver[1], f"rtsp://localhost:{port}/tone")
    assert view["status"] == "source_failed", view
    assert canary.connections == []


async def test_a_refused_audio_url_is_refused_under_the_same_rule(pull_gateway, account, receiver) -> None:
    gw = await guarded_gateway(pull_gateway, lambda a, _p: a == PUBLIC)
    acct = await account()
    status, body = await gw.start(
        acct.key, {"audio_url": "rtsp://127.0.0.1:554/x", "provider": "deepgram", "callback_url": receiver[1]}
    )
    assert status == 400 and body["error"]["code"] == "invalid_audio_url"


@pytest.mark.parametrize("name", ["localhost", "other.example"])
async def test_rtmps_is_tls_from_the_relay_with_the_hosts_name(
    pull_gateway, account, receiver, ffmpeg_exe, tmp_path: Path, monkeypatch, name: str
) -> None:
    """RTMPS: FFmpeg speaks RTMP to the relay, the relay speaks TLS to the checked address, with the URL's host for
    SNI and for verifying the certificate (made for ``localhost``: ``other.example`` must fail)."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the relay trusts the system store; this is the test's
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_tls.sni_callback = lambda _sock, server_name, _ctx: names.append(server_name)
    async with rtmp_publisher(ffmpeg_exe, 3) as plain:
        front = TcpProxy("127.0.0.1", int(plain.rsplit(":", 1)[1].split("/")[0]), tls=server_tls)
        await front.start()
        try:
            gw = await guarded_gateway(
                pull_gateway, lambda a, p: (a, p) == ("127.0.0.1", front.port), lying_resolver("127.0.0.1")
            )
            view = await run_task(gw, account, receiver[1], f"rtmps://{name}:{front.port}/live/stream")
        finally:
            await front.stop()
    assert names == [name]
    if name == "localhost":
        assert view["status"] == "source_ended", view
        assert view["audio_seconds"] >= 1.0
    else:
        assert view["status"] == "source_failed", view
        assert "CERTIFICATE_VERIFY_FAILED" in view["last_error"], view
