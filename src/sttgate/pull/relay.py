"""The source relay: the only way FFmpeg reaches an RTSP, RTMP or RTMPS host (docs/pull.md#url-safety).

Checking ``audio_url`` once is not enough for these schemes. FFmpeg would resolve the host name again when it
connects, and a hostile DNS server can answer a private address the second time (DNS rebinding); and an RTSP server
can answer ``302`` with a ``Location`` on a private host, which FFmpeg follows. They are not HTTP, so the egress
guard's proxy cannot carry them. So, when private addresses are refused, each such task gets its own relay: a
listener on 127.0.0.1 that FFmpeg is pointed at instead of the host (:func:`relayed_input`), which connects only to
the addresses the gateway resolved and checked at start (never resolving again), checks them again against the
rule at the moment of each connection, and:

- RTSP: reads every byte the server sends before FFmpeg does (:class:`~sttgate.pull.rtspwatch.RtspServerStream`)
  and cuts the connection on a redirect or a ``Location``, so FFmpeg never learns where it should go. RTSP is forced
  to interleaved TCP (:func:`sttgate.pull.ffmpeg.ffmpeg_argv`), so all of it rides this one connection.
- RTMP: bytes both ways as they are. FFmpeg's RTMP client follows no redirect; its reconnect (after an
  authentication challenge) opens the same relay address again.
- RTMPS: FFmpeg speaks plain RTMP to the relay and the relay speaks TLS to the host, with the host's name for SNI
  and certificate verification (the system's trust store), so FFmpeg needs no ``tls`` protocol at all.

RTMP's ``tcUrl`` (which some servers use as the virtual host) would name the relay; :func:`relayed_input` gives
FFmpeg ``-rtmp_tcurl`` with the URL's own host. The URL handling is pure; :class:`SourceRelay` is the thin shell.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass

from sttgate.pull.loopback import PIPE_CHUNK, LoopbackServer, close_writer, pipe
from sttgate.pull.rtspwatch import RtspRefused, RtspServerStream
from sttgate.pull.urlsafety import AddressPolicy, CheckedUrl

log = logging.getLogger("sttgate.pull")

RELAYED_SCHEMES = ("rtsp", "rtmp", "rtmps")
CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RelayedInput:
    """What FFmpeg is given instead of the customer's URL: a URL on the relay, its scheme, and extra options."""

    url: str
    scheme: str
    options: tuple[str, ...] = ()


def _split_authority(url: str) -> tuple[str, str, str, str]:
    """``(scheme, userinfo, host as written, the rest)`` of an absolute URL, the way FFmpeg's ``av_url_split`` cuts
    it: the authority ends at the first ``/``, ``?`` or ``#``; the host keeps its case and an IPv6 host its
    brackets."""
    scheme, _, after = url.partition("://")
    cut = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    authority, rest = after[:cut], after[cut:]
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host = hostport[: hostport.find("]") + 1]
    else:
        host = hostport.rpartition(":")[0] if ":" in hostport else hostport
    return scheme.lower(), userinfo + at, host, rest


def rtmp_app(path: str) -> str:
    """The RTMP application FFmpeg takes from a URL's path (``rtmp_open`` in FFmpeg's ``rtmpproto.c``).

    ``/live/stream`` → ``live``; ``/app/instance/stream`` → ``app/instance``; ``/ondemand/x`` → ``ondemand``;
    ``/app/mp4:dir/file`` → ``app``; with ``slist=`` in the query, the whole path. The query counts as path: FFmpeg
    looks for ``/`` in it too (tests/pull/test_relay.py compares with what FFmpeg itself sends).
    """
    qmark = path.find("?")
    if qmark >= 0 and "slist=" in path[qmark:]:
        return path[1:]
    if path.startswith("/ondemand/"):
        return "ondemand"
    rest = path[1:] if path else path
    first = rest.find("/")
    if first < 0:
        return rest
    after = rest[first + 1 :]
    colon, second = after.find(":"), after.find("/")
    if second < 0 or 0 <= colon < second:
        return rest[:first]
    return rest[: first + 1 + second]


def relayed_input(target: CheckedUrl, relay_port: int) -> RelayedInput:
    """FFmpeg's input when it must reach ``target`` through a relay on ``127.0.0.1:relay_port``.

    The path, query and credentials stay as the customer wrote them. RTMPS becomes RTMP (the relay adds the TLS).
    RTMP(S) keeps the original host and port in its ``tcUrl`` (FFmpeg writes the port even when the URL has none;
    the check's default ports are FFmpeg's).
    """
    scheme, userinfo, host, rest = _split_authority(target.url)
    relay = f"{userinfo}127.0.0.1:{relay_port}"
    if scheme == "rtsp":
        return RelayedInput(f"rtsp://{relay}{rest}", "rtsp")
    tcurl = f"{scheme}://{host}:{target.port}/{rtmp_app(rest)}"
    return RelayedInput(f"rtmp://{relay}{rest}", "rtmp", ("-rtmp_tcurl", tcurl))


class SourceRelay(LoopbackServer):
    """One task's relay. The listening socket exists from construction (FFmpeg's arguments need its port);
    :meth:`start` serves it, :meth:`close` ends it and every connection through it."""

    def __init__(self, target: CheckedUrl, policy: AddressPolicy) -> None:
        if target.scheme not in RELAYED_SCHEMES:
            raise ValueError(f"no relay for {target.scheme}")
        super().__init__()
        self.target = target
        self.policy = policy
        # RTMPS: the system's trust store, with host name checks (SSL_CERT_FILE / SSL_CERT_DIR honoured).
        self.tls = ssl.create_default_context() if target.scheme == "rtmps" else None
        self.refused: list[str] = []
        self.connected: list[str] = []
        # What went wrong, for the task's last_error: FFmpeg itself only sees a connection that was cut.
        self.problems: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(8)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._closed = False

    def ffmpeg_input(self) -> RelayedInput:
        return relayed_input(self.target, self.port)

    async def start(self) -> None:
        await self.start_serving(self._sock)

    async def close(self) -> None:
        """Stop listening and cut every relayed connection; safe to call at any time, repeatedly."""
        if self._closed:
            return
        self._closed = True
        if not self.serving:
            self._sock.close()
            return
        await self.stop_serving()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target
        for address in target.addresses:
            if not self.policy(address, target.port):
                self._refuse(f"{target.host}:{target.port} was checked as {address}, which is no longer allowed")
                return
        upstream = await self._connect()
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            watch = RtspServerStream() if target.scheme == "rtsp" else None
            await asyncio.gather(pipe(reader, up_writer), self._pipe_down(up_reader, writer, up_writer, watch))
        finally:
            await close_writer(up_writer)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the first checked address that answers (never a new resolution of the host)."""
        target = self.target
        errors = []
        for address in target.addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    upstream = await asyncio.open_connection(
                        address,
                        target.port,
                        ssl=self.tls,
                        server_hostname=target.host if self.tls is not None else None,
                    )
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                errors.append(f"{address}: {exc or type(exc).__name__}")
                continue
            self.connected.append(f"{address}:{target.port}")
            return upstream
        log.warning("event=pull_relay_connect_failed host=%r errors=%r", target.host, errors)
        self.problems.append(f"cannot connect to {target.host}:{target.port} ({'; '.join(errors)})")
        return None

    async def _pipe_down(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        watch: RtspServerStream | None,
    ) -> None:
        """Server to FFmpeg; for RTSP only what the watch lets through, and nothing more after a refusal."""
        try:
            while data := await reader.read(PIPE_CHUNK):
                if watch is not None:
                    data = watch.feed(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except RtspRefused as exc:
            self._refuse(f"{self.target.host}:{self.target.port}: {exc}")
            writer.transport.abort()
            upstream.transport.abort()
        except (ConnectionError, OSError):
            writer.close()

    def _refuse(self, why: str) -> None:
        self.refused.append(why)
        self.problems.append(f"refused: {why}")
        log.warning("event=pull_relay_refused reason=%r", why)
