"""FFmpeg as the decoder of a pull task: any source in, PCM s16le 16 kHz mono out, in 100 ms chunks at real time.

FFmpeg runs as a child process writing raw PCM to its stdout. The gateway reads exact 3,200-byte chunks and releases
them no faster than real time (providers refuse audio sent faster; a file or a recorded HLS playlist decodes far
faster). The pacing arithmetic is :class:`Pacer`, pure and tested on its own; the argument list is
:func:`ffmpeg_argv`, also pure. :class:`FFmpegSource` is the thin process shell around them: it keeps FFmpeg's last
stderr lines as the error, tells a source that ended (EOF, exit 0) from one that failed (non-zero exit, or no audio
for the source timeout), and always reaps the process: terminate, kill after a grace period, wait. An RTSP or
RTMP(S) source may come with its :class:`~sttgate.pull.relay.SourceRelay`, which lives exactly as long as FFmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from sttgate.core.outcomes import TaskStatus
from sttgate.pull.relay import SourceRelay
from sttgate.pull.urlsafety import protocol_whitelist

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2
CHUNK_SECONDS = 0.1
CHUNK_BYTES = int(BYTES_PER_SECOND * CHUNK_SECONDS)
# How far ahead of the wall clock the audio may run: two chunks, so that a chunk is never late because of the
# scheduler, while the cumulative rate stays real time (providers tolerate a burst of this size).
PACING_LEAD_SECONDS = 0.2
# After a live source stalls, the backlog it then delivers at once may be sent this far ahead of real time to
# recover latency; anything older than that is sent at real time.
PACING_CATCHUP_SECONDS = 2.0
# FFmpeg holds nothing worth flushing (its output is a pipe): a stop must act within 1 s (docs/pull.md#stop-a-task).
STOP_GRACE_SECONDS = 0.5
EXIT_WAIT_SECONDS = 5.0
STDERR_LINES = 20

SOURCE_ENDED = TaskStatus.SOURCE_ENDED
SOURCE_FAILED = TaskStatus.SOURCE_FAILED

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def default_ffmpeg() -> str:
    """The FFmpeg binary shipped with imageio-ffmpeg (there may be no system ffmpeg)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


class Pacer:
    """When each chunk may be sent so that the audio never runs more than ``lead`` ahead of the wall clock.

    Chunk *k* ends at ``audio_end`` seconds of audio; it may go at ``origin + audio_end - lead``. The origin is the
    wall-clock time of the first chunk. When the source falls behind by more than ``catchup`` (a stall), the origin
    moves forward so that at most ``catchup`` seconds of backlog are sent in one burst.
    """

    def __init__(self, lead: float = PACING_LEAD_SECONDS, catchup: float = PACING_CATCHUP_SECONDS) -> None:
        self.lead = lead
        self.catchup = catchup
        self.origin: float | None = None

    def delay(self, now: float, audio_end: float) -> float:
        """Seconds to wait before sending the chunk that ends at ``audio_end`` seconds of audio."""
        if self.origin is None:
            self.origin = now
        due = self.origin + audio_end - self.lead
        behind = now - due
        if behind > self.catchup:
            self.origin += behind - self.catchup
            due = self.origin + audio_end - self.lead
        return max(0.0, due - now)


def ffmpeg_argv(
    ffmpeg: str, url: str, scheme: str, *, io_timeout_seconds: float, options: Sequence[str] = ()
) -> list[str]:
    """FFmpeg's arguments: decode ``url`` to s16le/16 kHz/mono on stdout, opening nothing but the scheme's stack.

    ``options`` are more input options (the relay's ``-rtmp_tcurl``)."""
    micros = str(max(1, int(io_timeout_seconds * 1_000_000)))
    scheme = scheme.lower()
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    argv += ["-protocol_whitelist", protocol_whitelist(scheme)]
    # FFmpeg refuses an option that nothing consumes: RTSP is opened by its demuxer (its own -timeout), the other
    # schemes by URL protocols (the generic -rw_timeout, which also bounds the TCP connect).
    if scheme != "rtsp":
        argv += ["-rw_timeout", micros]
    if scheme in ("http", "https"):
        # No "-timeout": through the egress guard an HTTPS connection is tls over httpproxy, which has no such option.
        argv += ["-reconnect", "1", "-reconnect_streamed", "1"]
        argv += ["-reconnect_on_network_error", "1", "-reconnect_delay_max", "5"]
    elif scheme == "rtsp":
        # Interleaved over the one TCP connection: no UDP ports opened towards a host nobody checked.
        argv += ["-rtsp_transport", "tcp", "-timeout", micros]
    argv += [*options, "-i", url, "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    argv += ["-acodec", "pcm_s16le", "-f", "s16le", "-flush_packets", "1", "pipe:1"]
    return argv


def ffmpeg_env(proxy: str | None) -> dict[str, str]:
    """The child's environment; with the egress guard, every HTTP(S) connection FFmpeg makes goes through it."""
    env = dict(os.environ)
    if proxy is not None:
        for name in list(env):
            if name.lower() in _PROXY_VARIABLES:
                del env[name]
        env["http_proxy"] = proxy
    return env


def _load_prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: the child, between fork and exec, only makes the call (no dlopen there).
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: FFmpeg gets SIGKILL if the gateway dies, so a crashed gateway leaves no decoder behind."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class SourceOutcome:
    status: TaskStatus
    error: str | None = None


class FFmpegSource:
    """One FFmpeg process and the chunks it decodes; iterate :meth:`chunks`, then read :attr:`outcome`."""

    def __init__(
        self,
        argv: list[str],
        *,
        source_timeout: float,
        pacer: Pacer | None = None,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        relay: SourceRelay | None = None,
    ) -> None:
        self.argv = argv
        self.relay = relay
        self.source_timeout = source_timeout
        self.pacer = pacer
        self.env = env
        self.clock = clock
        self.process: asyncio.subprocess.Process | None = None
        self.outcome: SourceOutcome | None = None
        self.bytes_read = 0
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stderr_tail(self) -> str:
        """FFmpeg's last error lines, after the relay's problems (FFmpeg itself only sees a connection cut)."""
        relayed = [f"source relay: {problem}" for problem in self.relay.problems] if self.relay else []
        return "\n".join([*relayed, *self._stderr])

    async def start(self) -> None:
        """Start FFmpeg (after its relay); a binary that cannot be started is a failed source, not an exception."""
        try:
            if self.relay is not None:
                await self.relay.start()
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        except OSError as exc:
            self.outcome = SourceOutcome(SOURCE_FAILED, f"FFmpeg could not be started: {exc}")
            if self.relay is not None:
                await self.relay.close()
            return
        self._stderr_task = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process and self.process.stderr
        while line := await self.process.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Exact 100 ms chunks (the last one may be shorter), paced to real time; sets :attr:`outcome` at the end."""
        if self.process is None:
            if self.outcome is None:
                await self.start()
            if self.process is None:
                return
        assert self.process.stdout
        loop = asyncio.get_running_loop()
        clock = self.clock or loop.time
        stdout = self.process.stdout
        while True:
            try:
                chunk = await asyncio.wait_for(stdout.readexactly(CHUNK_BYTES), self.source_timeout)
            except asyncio.IncompleteReadError as exc:
                chunk = exc.partial
                if chunk:
                    await self._pace(clock, len(chunk))
                    self.bytes_read += len(chunk)
                    yield chunk
                await self._finish_after_eof()
                return
            except TimeoutError:
                await self.close()
                detail = self.stderr_tail()
                message = f"no audio from the source for {self.source_timeout:g} s"
                self.outcome = SourceOutcome(SOURCE_FAILED, f"{message}: {detail}" if detail else message)
                return
            if self._closing:
                return
            await self._pace(clock, len(chunk))
            self.bytes_read += len(chunk)
            yield chunk

    async def _pace(self, clock: Callable[[], float], size: int) -> None:
        if self.pacer is None:
            return
        wait = self.pacer.delay(clock(), (self.bytes_read + size) / BYTES_PER_SECOND)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _finish_after_eof(self) -> None:
        assert self.process
        code: int | None
        try:
            code = await asyncio.wait_for(self.process.wait(), EXIT_WAIT_SECONDS)
        except TimeoutError:
            await self.close()
            code = self.process.returncode
        await self._drain_stderr()
        if code == 0:
            self.outcome = SourceOutcome(SOURCE_ENDED)
        else:
            detail = self.stderr_tail() or "no error output"
            self.outcome = SourceOutcome(SOURCE_FAILED, f"FFmpeg exited with status {code}: {detail}")

    async def _drain_stderr(self) -> None:
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
            self._stderr_task.cancel()

    async def close(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop FFmpeg (terminate, then kill after ``grace``) and reap it; safe to call at any time, repeatedly.

        The reaping is shielded: a caller cancelled half-way (shutdown) still leaves no process and no zombie.
        """
        if self.process is None:
            if self.relay is not None:
                await self.relay.close()
            return
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(self.process, grace))
        await asyncio.shield(self._close_task)

    async def _close(self, process: asyncio.subprocess.Process, grace: float) -> None:
        # Unread output must be drained: asyncio stops reading a full pipe, and then never sees the process end.
        drain = asyncio.create_task(self._discard_stdout(process))
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()
        await drain
        await self._drain_stderr()
        if self.relay is not None:
            await self.relay.close()

    async def _discard_stdout(self, process: asyncio.subprocess.Process) -> None:
        self._closing = True
        if process.stdout is None:
            return
        # RuntimeError: the iterator is reading at this moment; it then reads to the end itself.
        with contextlib.suppress(RuntimeError, OSError):
            while await process.stdout.read(1 << 16):
                pass
