"""Deepgram live streaming (``/v1/listen``) emulator, faithful to Deepgram's published v1 streaming protocol.

What it does (the numbers are the observable behaviours an emulator of this protocol must show):

1. ``GET /v1/listen`` upgrades (also under any path prefix); every handshake response, 101 or refusal, carries a
   ``dg-request-id`` header (a UUID, repeated in every ``Results`` and in ``Metadata``).
2. The credential is checked **before** the upgrade: ``Authorization: Token <key>`` / ``Bearer <jwt>`` (scheme in
   any case), or ``Sec-WebSocket-Protocol: token, <key>`` / ``bearer, <jwt>`` (the first offered protocol is then
   echoed). A failure is HTTP 401 with ``dg-error: Invalid credentials.`` and the legacy error body; no upgrade.
3. Handshake refusals: ``emu_handshake_status=402|403|429|…`` with Deepgram's error codes; 429 when the key already
   has ``DeepgramOptions.max_concurrent`` (50) open sessions; 400 for invalid parameters (unknown ``model``,
   ``encoding`` without ``sample_rate``, ``keywords`` with a Nova-3 model, ``diarize_model=v2``, a bad ``language``…).
4. The query: booleans in any case, repeated keys kept, ``endpointing`` an integer or ``false``; defaults
   ``channels=1``, ``endpointing=10``. Unknown keys are ignored.
5. Binary frames are audio: ``linear16``/``linear32``/``mulaw``/``alaw`` timed as bytes ÷ (rate × channels × bytes
   per sample) and transcribed; container audio (no ``encoding``) is decoded when it is a PCM WAV file, closed
   **1008** ``DATA-0000`` when it is no known container; compressed encodings are accepted but count no audio.
   Zero-length frames are ignored (``DeepgramOptions.empty_frame_closes``: treated as ``CloseStream``, the legacy way).
6. Text frames: ``KeepAlive`` (no reply), ``Finalize`` (a final ``Results`` with ``from_finalize: true`` when audio
   is pending), ``CloseStream`` (final ``Results``, ``Metadata``, close 1000), ``Configure`` (``ConfigureSuccess``
   / ``ConfigureFailure``); anything else gets ``Error`` ``SchemaError`` and the session stays open.
7. ``Results``: ``channel_index [channel, total]``, ``start``/``duration`` windows on the audio timeline, absolute
   word times, an interim per new word and at least one per second of audio with ``interim_results=true`` (empty
   in silence), a final with ``speech_final: true`` after ``endpointing`` ms of silence following speech, an empty
   final after 3 s of audio without speech, a plain final when a segment reaches 10 s; ``metadata {request_id,
   model_info, model_uuid}``. With ``multichannel=true`` each channel is transcribed on its own.
8. ``SpeechStarted`` (``vad_events=true``) when speech starts; ``UtteranceEnd`` (``utterance_end_ms`` with
   ``interim_results``) after that much silence following the last finalized word.
9. ``Metadata`` exactly once before the emulator closes: ``transaction_key "deprecated"``, ``request_id``,
   ``sha256 "incomplete"``, ISO ``created``, ``duration`` = seconds of audio received, ``channels``, and
   ``models``/``model_info`` only when audio was processed.
10. No client frame for ``DeepgramOptions.idle_timeout_seconds`` (10 s; ``emu_idle_timeout_seconds``) →
    ``Metadata``, then close **1011** with the live NET-0001 sentence.
11. Pacing: ``DeepgramOptions.pacing`` ``"ignore"`` (default) or ``"close"`` (``emu_rate_check=on``): audio faster than
    1.25× real time plus 2 s closes 1011 ``NET-0000``.
12. ``/v2/listen`` (Flux) is out of scope: not served.
13. ``POST /v1/auth/grant`` (``Authorization: Token <key>``, optional ``{"ttl_seconds": 1..3600}``, default 30) →
    ``{"access_token": "<jwt>", "expires_in": N}``; the JWT authenticates upgrades until it expires (reusable).
14. WebSocket pings are answered (aiohttp's autoping).

``emu_error``: ``net0001``/``idle`` (Metadata, 1011 NET-0001), ``net0000``/``1011`` (Metadata, 1011 NET-0000),
``data0000``/``1008`` (1008 DATA-0000), ``schema`` (an ``Error`` frame, stays open), any other number (close with
it). Choices where the protocol is silent: the close after ``CloseStream`` is 1000 with an empty reason; the
``Metadata.duration`` of a multichannel session is the audio timeline (not multiplied by channels); ``Bearer`` with
an API key and ``Token`` with a JWT are accepted too.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .base import BaseSession, Emulator, accepted_keys
from .transcriber import PCM16, ULAW_TO_LINEAR, AudioFormat, SpeechTracker, Word

if TYPE_CHECKING:
    from .app import EmulatorConfig
    from .tokens import TokenStore

PROVIDER = "deepgram"
MODELS = frozenset(
    {
        *("nova-3", "nova-3-general", "nova-3-medical", "nova-2", "nova-2-general", "nova-2-meeting"),
        *("nova-2-finance", "nova-2-conversationalai", "nova-2-voicemail", "nova-2-video", "nova-2-medical"),
        *("nova-2-drivethru", "nova-2-automotive", "nova", "nova-general", "nova-phonecall", "nova-medical"),
        *("enhanced", "enhanced-general", "enhanced-meeting", "enhanced-phonecall", "enhanced-finance", "base"),
        *("meeting", "phonecall", "finance", "conversationalai", "voicemail", "video", "custom"),
    }
)
# Raw encodings the emulator times and transcribes: bytes per sample.
RAW = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
COMPRESSED = frozenset(("flac", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"))
# Self-describing formats: ``sample_rate`` is not required with them.
SELF_DESCRIBING = frozenset(("flac", "ogg-opus"))
CONTAINER_MAGIC = (b"RIFF", b"OggS", b"\x1a\x45\xdf\xa3", b"ID3", b"\xff\xfb", b"\xff\xf3", b"fLaC", b"#!AMR")
LANGUAGE = re.compile(r"^(multi|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")

NET0001 = "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
INVALID_CREDENTIALS = "Invalid credentials."
# Refusal statuses → (err_code, err_msg).
REFUSALS: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "Bad Request: failed to process the request parameters."),
    401: ("INVALID_AUTH", INVALID_CREDENTIALS),
    402: (
        "ASR_PAYMENT_REQUIRED",
        "Project does not have enough credits for an ASR request and does not have an overage agreement.",
    ),
    403: ("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later"),
}
SILENT_FINAL_SECONDS = 3.0
MAX_SEGMENT_SECONDS = 10.0
INTERIM_SECONDS = 1.0


def _alaw_decode(byte: int) -> int:
    """G.711 A-law byte → linear PCM16 sample."""
    a = byte ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


ALAW_TO_LINEAR: tuple[int, ...] = tuple(_alaw_decode(b) for b in range(256))


def alaw_encode(sample: int) -> int:
    """Linear PCM16 sample → G.711 A-law byte (for tests)."""
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(abs(sample), 32635)
    if magnitude < 256:
        exponent, mantissa = 0, magnitude >> 4
    else:
        exponent = magnitude.bit_length() - 8
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (sign | (exponent << 4) | mantissa) ^ 0x55


class ParamError(ValueError):
    pass


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise ParamError(f"Invalid value for {name}: {value!r}")


def _int(name: str, value: str, lo: int = 1) -> int:
    v = value.strip()
    if not v.isdigit() or int(v) < lo:
        raise ParamError(f"Invalid value for {name}: {value!r}")
    return int(v)


@dataclass(slots=True)
class Params:
    model: str | None = None
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    endpointing: int | None = 10
    utterance_end_ms: int | None = None
    vad_events: bool = False
    punctuate: bool = False
    smart_format: bool = False
    keyterm: list[str] = field(default_factory=list)
    tag: list[str] = field(default_factory=list)

    @property
    def formatted(self) -> bool:
        return self.punctuate or self.smart_format

    @property
    def nova3(self) -> bool:
        return (self.model or "").startswith("nova-3")


def parse_params(params: dict[str, list[str]]) -> Params:
    """Query → :class:`Params`; raises :class:`ParamError` (→ HTTP 400 at the handshake). Unknown keys are ignored."""

    def last(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    p = Params()
    if (v := last("model")) is not None:
        if v not in MODELS:
            raise ParamError(f"Invalid model: {v!r}")
        p.model = v
    if (v := last("encoding")) is not None:
        if v not in RAW and v not in COMPRESSED:
            raise ParamError(f"Invalid encoding: {v!r}")
        p.encoding = v
    if (v := last("sample_rate")) is not None:
        p.sample_rate = _int("sample_rate", v)
    if p.encoding is not None and p.encoding not in SELF_DESCRIBING and p.sample_rate is None:
        raise ParamError(f"sample_rate is required with encoding={p.encoding}")
    if (p.encoding, p.sample_rate) in (("amr-nb", 16000), ("amr-wb", 8000)):
        raise ParamError(f"Invalid sample_rate for {p.encoding}")
    if (v := last("channels")) is not None:
        p.channels = _int("channels", v)
    for name in ("multichannel", "interim_results", "vad_events", "punctuate", "smart_format"):
        if (v := last(name)) is not None:
            setattr(p, name, _bool(name, v))
    if (v := last("endpointing")) is not None:
        p.endpointing = None if v.strip().lower() == "false" else _int("endpointing", v, 0)
    if (v := last("utterance_end_ms")) is not None:
        p.utterance_end_ms = _int("utterance_end_ms", v)
    if last("diarize_model") == "v2":
        raise ParamError("diarize_model=v2 is not supported for streaming")
    if params.get("keywords") and p.nova3:
        raise ParamError("Keywords are not supported for Nova-3; use keyterm")
    if (v := last("language")) is not None and not LANGUAGE.match(v):
        raise ParamError(f"Invalid language: {v!r}")
    p.keyterm = list(params.get("keyterm", []))
    p.tag = list(params.get("tag", []))
    return p


def _scheme_credential(value: str) -> str | None:
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() or None if scheme.lower() in ("token", "bearer") else None


def _wav_format(data: bytes) -> tuple[int, int, int, int] | None:
    """A PCM WAV header: ``(sample_rate, channels, bytes per sample, offset of the data)``, else ``None``."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if chunk == b"fmt " and len(body) >= 16:
            tag, channels = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little")
            rate, bits = int.from_bytes(body[4:8], "little"), int.from_bytes(body[14:16], "little")
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            if fmt is None or fmt[0] != 1 or fmt[3] != 16 or fmt[1] < 1:
                return None
            return fmt[2], fmt[1], 2, pos + 8
        pos += 8 + size + (size & 1)
    return None


def _model_uuid(model: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"deepgram-emulator:{model}"))


@dataclass(slots=True)
class Channel:
    """One transcribed channel: its speech tracker and the segment not yet finalized."""

    index: int
    tracker: SpeechTracker
    segment_start: float = 0.0
    pending: list[Word] = field(default_factory=list)
    last_interim: float = 0.0
    speaking: bool = False
    last_word_end: float | None = None  # end of the last finalized word of an utterance not yet ended


@dataclass
class DeepgramOptions:
    """This emulator's settings (``EmulatorConfig.providers["deepgram"]``). Timeouts in seconds; ``None`` disables."""

    api_keys: tuple[str, ...] = ("emulator-deepgram-key",)  # the operator keys accepted (Authorization: Token)
    idle_timeout_seconds: float | None = 10.0  # no client frame → Metadata + close 1011 NET-0001
    max_concurrent: int = 50  # open sessions per credential; more → HTTP 429
    pacing: str = "ignore"  # "close": audio above 1.25x real time (+2 s) → close 1011
    empty_frame_closes: bool = False  # legacy: a zero-length binary frame is CloseStream

    def __post_init__(self) -> None:
        self.api_keys = accepted_keys(self.api_keys)


class DeepgramSession(BaseSession):
    provider = PROVIDER
    protocols = ("token", "bearer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = self.config.options(DEEPGRAM)
        self.request_id = str(uuid.uuid4())
        self.created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.p = Params()
        self.credential: str | None = None
        self.authenticated = False
        self.channels: list[Channel] = []
        self.width = 2
        self.rate = 16000
        self.stream_channels = 1
        self.container = False
        self.compressed = False
        self.header = b""  # container audio before its format is known
        self.remainder = b""  # bytes of an incomplete sample frame
        self.audio_bytes = 0
        self.metadata_sent = False
        self.ending = False
        self.idle: float | None = None
        self.pacing = False

    # --- handshake ----------------------------------------------------------------------------------

    def _key_sessions(self) -> int:
        return sum(
            1 for s in self.live if isinstance(s, DeepgramSession) and s.credential == self.credential and not s.closed
        )

    async def before_upgrade(self, ws: web.WebSocketResponse) -> web.Response | None:
        ws.headers["dg-request-id"] = self.request_id
        if not await self.authenticate():
            return self.refusal_response(401, None)
        if self._key_sessions() >= self.options.max_concurrent:
            return self.refusal_response(429, None)
        try:
            self.p = parse_params(self.params)
        except ParamError as exc:
            return self.refusal_response(400, str(exc))
        return None

    def refusal_response(self, status: int, message: str | None) -> web.Response:
        code, default = REFUSALS.get(status, ("INTERNAL_SERVER_ERROR", f"Emulated handshake refusal (HTTP {status})"))
        text = message or default
        body = {"err_code": code, "err_msg": text, "request_id": self.request_id}
        headers = {"dg-request-id": self.request_id, "dg-error": text}
        return web.json_response(body, status=status, headers=headers)

    async def authenticate(self) -> bool:
        """The credential from ``Authorization`` or the offered subprotocols; checked once (the result is kept)."""
        if self.credential is not None or self.authenticated:
            return self.authenticated
        header = self.request.headers.get("Authorization")
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if header is not None:
            self.credential = _scheme_credential(header)
        elif len(offered) >= 2 and offered[0].lower() in ("token", "bearer"):
            self.credential = offered[1] or None
        cred = self.credential
        ok = bool(cred) and (cred in self.options.api_keys or self.tokens.consume(PROVIDER, cred) is not None)
        self.authenticated = ok
        assert self.record is not None
        self.record.authenticated = ok
        return ok

    async def send_auth_error(self) -> None:  # pragma: no cover - refused before the upgrade (see authenticate)
        await self.close(1008, INVALID_CREDENTIALS)

    async def start(self) -> bool:
        f, p = self.faults, self.p
        assert self.record is not None
        self.record.id = self.request_id
        model = p.model or "nova-3"
        self.model_info = {"name": f"general-{model}", "version": "2025-01-01.0", "arch": model.rpartition("-")[0]}
        self.model_uuid = _model_uuid(model)
        if p.encoding in RAW:
            self.width = RAW[p.encoding]
            assert p.sample_rate is not None
            self._set_format(p.sample_rate, p.channels)
        elif p.encoding is None:
            self.container = True
        else:
            self.compressed = True
        self.idle = f.idle_timeout_seconds if f.idle_timeout_seconds is not None else self.options.idle_timeout_seconds
        if self.idle:
            self.set_timer("idle", self.idle, self._on_idle)
        self.pacing = f.rate_check if f.rate_check is not None else self.options.pacing == "close"
        immediate = f.error is not None and f.error_after_frames is None and f.error_after_seconds is None
        if immediate:
            await self.inject_error()
        return not self.closed

    def _set_format(self, rate: int, channels: int) -> None:
        self.rate, self.stream_channels = rate, channels
        fmt = AudioFormat(PCM16, rate)
        count = channels if self.p.multichannel else 1
        cfg = self.config
        self.channels = [
            Channel(i, SpeechTracker(fmt, threshold=cfg.voice_threshold, word_seconds=cfg.word_seconds))
            for i in range(count)
        ]

    # --- ending -------------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        duration = self.audio_bytes / (self.rate * self.stream_channels * self.width) if self.channels else 0.0
        message: dict[str, Any] = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "incomplete",
            "created": self.created,
            "duration": round(duration, 6),
            "channels": self.stream_channels,
        }
        if self.audio_bytes:
            message["models"] = [self.model_uuid]
            message["model_info"] = {self.model_uuid: self.model_info}
        return message

    async def send_metadata(self) -> None:
        if not self.metadata_sent:
            self.metadata_sent = True
            await self.send_json(self._metadata())

    async def close_stream(self) -> None:
        """``CloseStream``: the remaining finals, ``Metadata``, close 1000."""
        if self.ending:
            return
        self.ending = True
        await self._flush(from_finalize=False)
        await self.send_metadata()
        await self.close(1000, "")

    async def _on_idle(self) -> None:
        await self.send_metadata()
        await self.close(1011, NET0001)

    async def inject_error(self) -> None:
        f = self.faults
        value = (f.error or "net0000").strip().lower()
        if value == "schema":
            await self._schema_error(f.error_message or "emulated schema error", "")
            return
        if value in ("net0001", "idle"):
            code, reason = 1011, NET0001
        elif value in ("net0000", "1011"):
            code, reason = 1011, "NET-0000"
        elif value in ("data0000", "data", "1008"):
            code, reason = 1008, "DATA-0000"
        elif value.isdigit():
            code, reason = int(value), f.error_message or ""
        else:
            code, reason = 1011, "NET-0000"
        if f.error_close is False:
            return
        if code == 1011:
            await self.send_metadata()
        await self.close(f.close_code or code, f.close_reason if f.close_reason is not None else reason)

    async def _schema_error(self, description: str, message: str) -> None:
        await self.send_json(
            {"type": "Error", "variant": "SchemaError", "description": description, "message": message}
        )

    # --- frames -------------------------------------------------------------------------------------

    def _activity(self) -> None:
        if self.idle:
            self.set_timer("idle", self.idle, self._on_idle)

    async def on_text(self, data: str) -> None:
        self._activity()
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return
        if kind == "CloseStream":
            await self.close_stream()
        elif kind == "Finalize":
            await self._flush(from_finalize=True)
        elif kind == "Configure":
            assert isinstance(message, dict)
            await self._configure(message)
        else:
            await self._schema_error("Could not parse the client message.", data[:1000])

    async def _configure(self, message: dict[str, Any]) -> None:
        keyterms = message.get("keyterms")
        if keyterms is not None and not self.p.nova3:
            await self.send_json(
                {
                    "type": "ConfigureFailure",
                    "request_id": self.request_id,
                    "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                    "description": "Keyterms are only supported with Nova-3 models.",
                }
            )
            return
        if isinstance(keyterms, list):
            self.p.keyterm = [str(term) for term in keyterms]
        await self.send_json({"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": self.p.keyterm})

    async def on_binary(self, data: bytes) -> None:
        self._activity()
        if not data:
            if self.options.empty_frame_closes:
                await self.close_stream()
            return
        if self.ending:
            return
        if self.compressed:
            assert self.record is not None
            self.record.add_audio(len(data), 0.0)
            return
        if self.container and not self.channels:
            data = await self._container(data)
            if not data:
                return
        await self._audio(data)

    async def _container(self, data: bytes) -> bytes:
        """Container audio until its format is known: the samples after a PCM WAV header once it is read.

        Another known container is accepted and not timed; bytes that are no known container close 1008."""
        self.header += data
        head = self.header
        if len(head) >= 4 and not head.startswith(b"RIFF"):
            self.header = b""
            if not head.startswith(CONTAINER_MAGIC):
                await self.close(1008, "DATA-0000")
                return b""
            self.compressed = True
            assert self.record is not None
            self.record.add_audio(len(head), 0.0)
            return b""
        wav = _wav_format(head)
        if wav is None:
            if len(head) > 65536:
                await self.close(1008, "DATA-0000")
            return b""
        rate, channels, width, offset = wav
        self.width = width
        self._set_format(rate, channels)
        self.header = b""
        return head[offset:]

    async def _audio(self, data: bytes) -> None:
        frame = self.width * self.stream_channels
        data = self.remainder + data
        usable = len(data) - len(data) % frame
        self.remainder = data[usable:]
        data = data[:usable]
        if not data:
            return
        self.audio_bytes += len(data)
        seconds = len(data) / (self.rate * frame)
        assert self.record is not None
        self.record.add_audio(len(data), seconds)
        if self.pacing:
            elapsed = self.loop.time() - self.t0
            if self.audio_bytes / (self.rate * frame) > 1.25 * elapsed + 2.0:
                await self.send_metadata()
                await self.close(1011, "NET-0000")
                return
        for channel in self.channels:
            await self._transcribe(channel, self._pcm16(data, channel.index))
            if self.closed:
                return

    def _pcm16(self, data: bytes, index: int) -> bytes:
        """One channel of the received frames as PCM16 mono (for the speech tracker)."""
        n, enc = self.stream_channels, self.p.encoding
        if self.width == 2:
            samples = array("h")
            samples.frombytes(data)
            return samples[index::n].tobytes() if n > 1 else data
        if self.width == 4:
            floats = array("f")
            floats.frombytes(data)
            return array("h", (int(max(-1.0, min(1.0, x)) * 32767) for x in floats[index::n])).tobytes()
        table = ALAW_TO_LINEAR if enc == "alaw" else ULAW_TO_LINEAR
        return array("h", map(table.__getitem__, data[index::n])).tobytes()

    # --- results ------------------------------------------------------------------------------------

    async def _transcribe(self, ch: Channel, pcm: bytes) -> None:
        p = self.p
        tracker = ch.tracker
        for blk in tracker.feed(pcm):
            now = tracker.audio_seconds
            if blk.voiced and not ch.speaking and p.vad_events:
                await self.send_json(
                    {"type": "SpeechStarted", "channel": self._index(ch), "timestamp": round(now - blk.seconds, 3)}
                )
            ch.speaking = blk.voiced
            if blk.word is not None:
                ch.pending.append(blk.word)
            silence_ms = tracker.silence_seconds * 1000.0
            if ch.pending and not blk.voiced and p.endpointing is not None and silence_ms >= p.endpointing:
                await self._final(ch, speech_final=True)
            elif ch.pending and now - ch.segment_start >= MAX_SEGMENT_SECONDS:
                await self._final(ch, speech_final=False)
            elif not ch.pending and not blk.voiced and now - ch.segment_start >= SILENT_FINAL_SECONDS:
                await self._final(ch, speech_final=p.endpointing is not None)
            elif p.interim_results and (blk.word is not None or now - ch.last_interim >= INTERIM_SECONDS):
                await self._send_results(ch, ch.pending, is_final=False, speech_final=False)
                ch.last_interim = now
            if (
                ch.last_word_end is not None
                and p.utterance_end_ms is not None
                and p.interim_results
                and not ch.pending
                and not blk.voiced
                and now - ch.last_word_end >= p.utterance_end_ms / 1000.0
            ):
                await self.send_json(
                    {"type": "UtteranceEnd", "channel": self._index(ch), "last_word_end": ch.last_word_end}
                )
                ch.last_word_end = None
            if self.closed:
                return

    def _index(self, ch: Channel) -> list[int]:
        return [ch.index, len(self.channels)]

    async def _final(self, ch: Channel, *, speech_final: bool, from_finalize: bool = False) -> None:
        words, ch.pending = ch.pending, []
        await self._send_results(ch, words, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        ch.segment_start = ch.last_interim = ch.tracker.audio_seconds
        if words:
            ch.last_word_end = words[-1].end

    async def _flush(self, *, from_finalize: bool) -> None:
        """Finalize every channel's pending audio (``Finalize``, ``CloseStream``)."""
        for ch in self.channels:
            word = ch.tracker.flush()
            if word is not None:
                ch.pending.append(word)
            if ch.pending or ch.tracker.audio_seconds > ch.segment_start:
                await self._final(ch, speech_final=True, from_finalize=from_finalize)

    async def _send_results(
        self, ch: Channel, words: list[Word], *, is_final: bool, speech_final: bool, from_finalize: bool = False
    ) -> None:
        formatted = self.p.formatted
        shown = []
        for i, w in enumerate(words):
            text = w.text
            if formatted and i == 0:
                text = text[0].upper() + text[1:]
            if formatted and is_final and i == len(words) - 1:
                text += "."
            shown.append(text)
        word_json = []
        for w, text in zip(words, shown, strict=True):
            entry: dict[str, Any] = {"word": w.text, "start": w.start, "end": w.end, "confidence": 0.99}
            if formatted:
                entry["punctuated_word"] = text
            word_json.append(entry)
        start = ch.segment_start
        await self.send_json(
            {
                "type": "Results",
                "channel_index": self._index(ch),
                "duration": round(ch.tracker.audio_seconds - start, 6),
                "start": round(start, 6),
                "is_final": is_final,
                "speech_final": speech_final,
                "channel": {
                    "alternatives": [
                        {"transcript": " ".join(shown), "confidence": 0.99 if words else 0.0, "words": word_json}
                    ]
                },
                "metadata": {
                    "request_id": self.request_id,
                    "model_info": self.model_info,
                    "model_uuid": self.model_uuid,
                },
                "from_finalize": from_finalize,
            }
        )


def _legacy_error(status: int, code: str, message: str) -> web.Response:
    body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
    return web.json_response(body, status=status)


async def _grant(request: web.Request, cfg: EmulatorConfig, tokens: TokenStore) -> web.Response:
    """``POST /v1/auth/grant`` (``Authorization: Token <key>``, optional ``{"ttl_seconds": N}``)."""
    options = cfg.options(DEEPGRAM)
    key = _scheme_credential(request.headers.get("Authorization", ""))
    if key is None or key not in options.api_keys:
        return _legacy_error(401, "INVALID_AUTH", INVALID_CREDENTIALS)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _legacy_error(400, "Bad Request", "The body must be a JSON object.")
    ttl = body.get("ttl_seconds", 30)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= 3600:
        return _legacy_error(400, "Bad Request", "ttl_seconds must be between 1 and 3600.")
    token = tokens.mint(PROVIDER, float(ttl), single_use=False, issued=time.time())
    return web.json_response({"access_token": token.value, "expires_in": ttl})


DEEPGRAM: Emulator[DeepgramOptions] = Emulator(
    name=PROVIDER,
    session=DeepgramSession,
    ws_paths=("/v1/listen",),
    token_method="POST",
    token_path="/v1/auth/grant",
    options=DeepgramOptions,
    token=_grant,
)
