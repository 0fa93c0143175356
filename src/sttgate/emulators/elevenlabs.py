"""ElevenLabs Scribe v2 Realtime emulator, faithful to ElevenLabs' published realtime speech-to-text protocol.

Choices where the protocol document leaves a gap (each is a guess, kept in one place here):

- Every close the emulator originates is code 1000 (``ElevenLabsOptions.error_close_code``).
  The reason is ``""`` after ``auth_error`` (observed), and otherwise the error's ``message_type``
  (``"commit_throttled"`` is observed; ``"invalid_request"``, ``"insufficient_audio_activity"``… follow it).
- ``commit_throttled`` is non-fatal by default (``ElevenLabsOptions.close_on_commit_throttled`` or
  ``emu_commit_throttled_close=1`` closes 1000 "commit_throttled" as one observation did).
- ``input_error`` is never fatal. Binary frames and a ``previous_text`` after the first chunk are answered
  with ``input_error``; such a chunk's audio is not transcribed (it is still recorded as received).
- Booleans are accepted case-insensitively (``true``/``false``/``1``/``0``); unknown parameters are
  ignored; ``encoding=pcm_*`` is an alias of ``audio_format`` (older SDKs); the ``sample_rate`` query
  parameter of those SDKs is ignored. A chunk's own ``sample_rate`` overrides the format's rate (as the
  gateway meters it: docs/billing.md#what-is-metered).
- Only ``input_audio_chunk`` frames carrying audio count as activity for the idle timeout (pings and
  commit-only chunks do not).
- Transcript text is the generated words in lower case separated by spaces; partials and the commit
  carry the same text; word timestamps are seconds of the session's audio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .base import BaseSession, Emulator, accepted_keys
from .transcriber import MULAW, PCM16, AudioFormat, SpeechTracker, Word

if TYPE_CHECKING:
    from .app import EmulatorConfig
    from .tokens import TokenStore

AUDIO_FORMATS: dict[str, AudioFormat] = {
    "pcm_8000": AudioFormat(PCM16, 8000),
    "pcm_16000": AudioFormat(PCM16, 16000),
    "pcm_22050": AudioFormat(PCM16, 22050),
    "pcm_24000": AudioFormat(PCM16, 24000),
    "pcm_44100": AudioFormat(PCM16, 44100),
    "pcm_48000": AudioFormat(PCM16, 48000),
    "ulaw_8000": AudioFormat(MULAW, 8000),
}
MODELS = ("scribe_v2_realtime", "scribe_v3_live")
COMMIT_STRATEGIES = ("manual", "vad", "turn_prediction")
TOKEN_TYPES = ("realtime_scribe", "batch_scribe", "tts_websocket")

AUTH_ERROR_TEXT = "You must be authenticated to use this endpoint."
MALFORMED_TEXT = "Message must be a valid protocol message"

ERROR_TEXTS: dict[str, str] = {
    "auth_error": AUTH_ERROR_TEXT,
    "quota_exceeded": "You have exceeded your quota.",
    "unaccepted_terms": "You must accept the Scribe terms of service in the ElevenLabs dashboard to use this endpoint.",
    "rate_limited": "Rate limit exceeded: too many requests in a short period.",
    "queue_overflow": "The processing queue is full. Please try again later.",
    "resource_exhausted": "Server capacity reached. Please try again later.",
    "session_time_limit_exceeded": "Maximum session duration exceeded.",
    "insufficient_audio_activity": "Not enough audio activity to maintain the connection.",
    "commit_throttled": (
        "Commit request ignored: only 0.00s of uncommitted audio. "
        "You need at least 0.3s of uncommitted audio before committing."
    ),
    "input_error": MALFORMED_TEXT,
    "invalid_request": "Invalid request parameters.",
    "chunk_size_exceeded": "Audio chunk size exceeds the maximum allowed.",
    "transcriber_error": "An internal transcription error occurred.",
    "error": "An unexpected server error occurred.",
}
NON_FATAL = frozenset({"input_error", "commit_throttled", "warning"})
# Injected (emu_error) without a trigger, these are sent *instead of* session_started.
BEFORE_START = frozenset({"auth_error", "invalid_request"})

# ISO 639-2/3 → 639-1 for the languages people ask for most; other 3-letter codes are echoed unchanged.
_ISO3_TO_1 = {
    "eng": "en", "spa": "es", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "ita": "it", "por": "pt",
    "nld": "nl", "dut": "nl", "rus": "ru", "jpn": "ja", "zho": "zh", "chi": "zh", "kor": "ko", "ara": "ar",
    "hin": "hi", "pol": "pl", "tur": "tr", "swe": "sv", "dan": "da", "nor": "no", "nob": "nb", "fin": "fi",
    "ukr": "uk", "ces": "cs", "cze": "cs", "ell": "el", "gre": "el", "heb": "he", "hun": "hu", "ron": "ro",
    "rum": "ro", "ind": "id", "vie": "vi", "tha": "th", "cat": "ca", "bul": "bg", "hrv": "hr", "slk": "sk",
    "slo": "sk", "slv": "sl", "srp": "sr", "msa": "ms", "may": "ms", "tam": "ta", "tel": "te", "urd": "ur",
    "ben": "bn", "fas": "fa", "per": "fa", "fil": "tl", "tgl": "tl",
}  # fmt: skip
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


class ParamError(ValueError):
    pass


@dataclass(slots=True)
class Params:
    model_id: str
    audio_format: str = "pcm_16000"
    commit_strategy: str = "manual"
    vad_silence_threshold_secs: float = 1.5
    vad_threshold: float = 0.4
    min_speech_duration_ms: int = 100
    min_silence_duration_ms: int = 100
    language_code: str | None = None
    include_timestamps: bool = False
    include_language_detection: bool = False
    enable_logging: bool = True
    keyterms: list[str] = field(default_factory=list)
    no_verbatim: bool = False
    secondary_languages: list[str] = field(default_factory=list)
    entity_detection: list[str] | None = None
    filter_background_audio: bool = False

    @property
    def fmt(self) -> AudioFormat:
        return AUDIO_FORMATS[self.audio_format]

    @property
    def vad(self) -> bool:
        return self.commit_strategy != "manual"

    def config_echo(self) -> dict[str, Any]:
        """``session_started.config`` in the wire shape of protocol §4.1."""
        return {
            "sample_rate": self.fmt.sample_rate,
            "audio_format": self.audio_format,
            "language_code": self.language_code,
            "secondary_languages": list(self.secondary_languages),
            "timestamps_granularity": "word",
            "vad_commit_strategy": self.commit_strategy == "vad",
            "vad_silence_threshold_secs": self.vad_silence_threshold_secs,
            "vad_threshold": self.vad_threshold,
            "min_speech_duration_ms": self.min_speech_duration_ms,
            "min_silence_duration_ms": self.min_silence_duration_ms,
            "max_tokens_to_recompute": 5,
            "model_id": self.model_id,
            "disable_logging": not self.enable_logging,
            "include_timestamps": self.include_timestamps,
            "include_language_detection": self.include_language_detection,
            "filter_background_audio": self.filter_background_audio,
            "keyterms": list(self.keyterms),
            "no_verbatim": self.no_verbatim,
            "entity_detection": self.entity_detection,
        }


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise ParamError(f"Invalid value for '{name}': {value!r} is not a valid boolean")


def _number(name: str, value: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    try:
        x: float | int = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ParamError(f"Invalid value for '{name}': {value!r} is not {kind}") from None
    if not lo <= x <= hi:
        raise ParamError(f"Invalid value for '{name}': {x} must be between {lo:g} and {hi:g}")
    return x


def normalise_language(value: str) -> str:
    if not _LANG_RE.match(value):
        raise ParamError(f"Invalid value for 'language_code': {value!r} is not a valid ISO-639 language code")
    base = re.split(r"[-_]", value)[0].lower()
    return _ISO3_TO_1.get(base, base)


def parse_params(params: dict[str, list[str]]) -> Params:
    """Query → :class:`Params`; raises :class:`ParamError` (→ ``invalid_request``). Unknown keys are ignored."""

    def last(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    model_id = last("model_id")
    if not model_id:
        raise ParamError("Missing required parameter 'model_id'")
    if model_id not in MODELS:
        raise ParamError(f"Invalid value for 'model_id': {model_id!r}. Valid models: {', '.join(MODELS)}")
    p = Params(model_id=model_id)
    audio_format = last("audio_format")
    if audio_format is None:
        legacy = last("encoding")
        if legacy is not None and legacy in AUDIO_FORMATS:
            audio_format = legacy
    if audio_format is not None:
        if audio_format not in AUDIO_FORMATS:
            raise ParamError(
                f"Invalid value for 'audio_format': {audio_format!r}. Valid formats: {', '.join(AUDIO_FORMATS)}"
            )
        p.audio_format = audio_format
    cs = last("commit_strategy")
    if cs is not None:
        if cs not in COMMIT_STRATEGIES:
            raise ParamError(f"Invalid value for 'commit_strategy': {cs!r}. Valid values: manual, vad")
        p.commit_strategy = cs
    if (v := last("vad_silence_threshold_secs")) is not None:
        p.vad_silence_threshold_secs = _number("vad_silence_threshold_secs", v, 0.3, 3.0)
    if (v := last("vad_threshold")) is not None:
        p.vad_threshold = _number("vad_threshold", v, 0.1, 0.9)
    if (v := last("min_speech_duration_ms")) is not None:
        p.min_speech_duration_ms = _number("min_speech_duration_ms", v, 50, 2000, integer=True)
    if (v := last("min_silence_duration_ms")) is not None:
        p.min_silence_duration_ms = _number("min_silence_duration_ms", v, 50, 2000, integer=True)
    if (v := last("language_code")) is not None and v != "":
        p.language_code = normalise_language(v)
    for name in ("include_timestamps", "include_language_detection", "enable_logging", "no_verbatim",
                 "filter_background_audio"):  # fmt: skip
        if (v := last(name)) is not None:
            setattr(p, name, _bool(name, v))
    p.keyterms = [k for k in params.get("keyterms", []) if k != ""]
    for k in p.keyterms:
        if len(k) > 50:
            raise ParamError(f"Invalid value for 'keyterms': {k[:60]!r} is longer than 50 characters")
    if len(p.keyterms) > 1000:
        raise ParamError("Invalid value for 'keyterms': at most 1000 terms are allowed")
    p.secondary_languages = [normalise_language(v) for v in params.get("secondary_languages", []) if v]
    if "entity_detection" in params:
        items = [x.strip() for v in params["entity_detection"] for x in v.split(",") if x.strip()]
        p.entity_detection = items or None
    if p.filter_background_audio and p.include_timestamps:
        raise ParamError("'filter_background_audio' cannot be combined with 'include_timestamps'")
    return p


@dataclass
class ElevenLabsOptions:
    """This emulator's settings (``EmulatorConfig.providers["elevenlabs"]``). Timeouts in seconds; ``None`` disables."""

    api_keys: tuple[str, ...] = ("emulator-elevenlabs-key",)  # the operator keys accepted (xi-api-key)
    idle_timeout_seconds: float | None = 15.0  # no audio → insufficient_audio_activity + close
    auto_commit_seconds: float = 90.0  # manual mode: uncommitted audio that forces a commit
    min_commit_seconds: float = 0.3  # less uncommitted audio → commit_throttled
    partial_min_audio_seconds: float = 0.0  # hold partials until this much audio (real: ~2 s)
    close_on_commit_throttled: bool = False
    echo_partial_after_commit: bool = False  # the observed "echo" partial after a commit
    error_close_code: int = 1000
    token_ttl_seconds: float = 900.0
    max_session_seconds: float | None = None  # session_time_limit_exceeded

    def __post_init__(self) -> None:
        self.api_keys = accepted_keys(self.api_keys)


class ElevenLabsSession(BaseSession):
    provider = "elevenlabs"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = self.config.options(ELEVENLABS)
        self.p: Params | None = None
        self.tracker: SpeechTracker | None = None
        self.session_id: str | None = None
        self.chunks = 0
        self.seg_audio = 0.0  # uncommitted audio, seconds
        self.seg_voiced = 0.0
        self.seg_words: list[Word] = []
        self.idle_timeout: float | None = None

    # --- start --------------------------------------------------------------------------------------

    async def authenticate(self) -> bool:
        token = self.param("token")
        if token:  # a token takes precedence over the header
            ok = self.tokens.consume("elevenlabs", token, token_type="realtime_scribe") is not None
        else:
            key = self.request.headers.get("xi-api-key")
            ok = key is not None and key in self.options.api_keys
        assert self.record is not None
        self.record.authenticated = ok
        return ok

    async def send_auth_error(self) -> None:
        await self.send_json({"message_type": "auth_error", "error": AUTH_ERROR_TEXT})
        await self.close(self.options.error_close_code, "")

    async def start(self) -> bool:
        if not await self.authenticate():
            await self.send_auth_error()
            return False
        f = self.faults
        immediate_error = f.error is not None and f.error_after_frames is None and f.error_after_seconds is None
        if immediate_error and f.error in BEFORE_START:
            await self.inject_error()
            return False
        try:
            self.p = p = parse_params(self.params)
        except ParamError as exc:
            await self.send_error("invalid_request", str(exc), fatal=True)
            return False
        self.tracker = SpeechTracker(
            p.fmt, threshold=self.config.voice_threshold, word_seconds=self.config.word_seconds
        )
        if f.start_delay_ms:
            await asyncio.sleep(f.start_delay_ms / 1000.0)
        self.session_id = uuid.uuid4().hex
        assert self.record is not None
        self.record.id = self.session_id
        await self.send_json(
            {"message_type": "session_started", "session_id": self.session_id, "config": p.config_echo()}
        )
        idle = f.idle_timeout_seconds if f.idle_timeout_seconds is not None else self.options.idle_timeout_seconds
        self.idle_timeout = idle
        if idle:
            self.set_timer("idle", idle, self._on_idle)
        cap = f.max_session_seconds if f.max_session_seconds is not None else self.options.max_session_seconds
        if cap:
            self.set_deadline("time_limit", self.t0 + cap, self._on_time_limit)
        if immediate_error:
            await self.inject_error()
        return not self.closed

    # --- errors -------------------------------------------------------------------------------------

    async def send_error(
        self, message_type: str, text: str, *, fatal: bool, code: int | None = None, reason: str | None = None
    ) -> None:
        await self.send_json({"message_type": message_type, "error": text})
        if fatal:
            if code is None:
                code = self.options.error_close_code
            if reason is None:
                reason = "" if message_type == "auth_error" else message_type
            await self.close(code, reason)

    async def input_error(self, text: str) -> None:
        await self.send_error("input_error", text, fatal=False)

    async def inject_error(self) -> None:
        f = self.faults
        kind = f.error or "error"
        text = f.error_message or ERROR_TEXTS.get(kind, f"Emulated {kind}.")
        fatal = f.error_close if f.error_close is not None else kind not in NON_FATAL
        await self.send_error(kind, text, fatal=fatal, code=f.close_code, reason=f.close_reason)

    async def _on_idle(self) -> None:
        await self.send_error("insufficient_audio_activity", ERROR_TEXTS["insufficient_audio_activity"], fatal=True)

    async def _on_time_limit(self) -> None:
        await self.send_error("session_time_limit_exceeded", ERROR_TEXTS["session_time_limit_exceeded"], fatal=True)

    # --- frames -------------------------------------------------------------------------------------

    async def on_binary(self, data: bytes) -> None:
        await self.input_error(MALFORMED_TEXT)

    async def on_text(self, data: str) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            await self.input_error(MALFORMED_TEXT)
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("message_type"), str):
            await self.input_error(MALFORMED_TEXT)
            return
        mt = obj["message_type"]
        if mt != "input_audio_chunk":
            await self.input_error(f"Unexpected message type: {mt}")
            return
        audio = obj.get("audio_base_64")
        commit = obj.get("commit", False)
        sample_rate = obj.get("sample_rate")
        previous_text = obj.get("previous_text")
        if (
            not isinstance(audio, str)
            or not isinstance(commit, bool)
            or (sample_rate is not None and (type(sample_rate) is not int or not 0 < sample_rate <= 192000))
            or (previous_text is not None and not isinstance(previous_text, str))
        ):
            await self.input_error(MALFORMED_TEXT)
            return
        try:
            raw = base64.b64decode(audio) if audio else b""
        except (binascii.Error, ValueError):
            await self.input_error(MALFORMED_TEXT)
            return
        assert self.p is not None and self.record is not None
        fmt = self.p.fmt
        if sample_rate is not None and sample_rate != fmt.sample_rate:
            fmt = AudioFormat(fmt.encoding, sample_rate)
        if raw:
            self.record.add_audio(len(raw), fmt.seconds(len(raw)))
        first = self.chunks == 0
        self.chunks += 1
        if previous_text is not None and not first:
            await self.input_error("previous_text is only allowed on the first audio chunk of a session")
            return
        if raw:
            if self.idle_timeout:
                self.set_timer("idle", self.idle_timeout, self._on_idle)
            await self._process(raw, fmt)
        if commit and not self.closed:
            await self._commit(manual=True)

    async def _process(self, raw: bytes, fmt: AudioFormat) -> None:
        tracker, p = self.tracker, self.p
        assert tracker is not None and p is not None
        tracker.set_format(fmt)
        vad = p.vad
        min_speech = p.min_speech_duration_ms / 1000.0
        vad_silence = p.vad_silence_threshold_secs - 1e-9
        auto_commit = (
            self.faults.auto_commit_seconds
            if self.faults.auto_commit_seconds is not None
            else self.options.auto_commit_seconds
        ) - 1e-9
        for blk in tracker.feed(raw):
            self.seg_audio += blk.seconds
            if blk.voiced:
                self.seg_voiced += blk.seconds
            if blk.word is not None:
                self.seg_words.append(blk.word)
                if tracker.audio_seconds >= self.options.partial_min_audio_seconds:
                    await self.send_json({"message_type": "partial_transcript", "text": self._text()})
            if self.closed:
                return
            if vad:
                if self.seg_voiced >= min_speech and not tracker.in_speech and tracker.silence_seconds >= vad_silence:
                    await self._commit(manual=False)
            elif self.seg_audio >= auto_commit:
                await self._commit(manual=False)

    def _text(self) -> str:
        return " ".join(w.text for w in self.seg_words)

    async def _commit(self, *, manual: bool) -> None:
        assert self.tracker is not None and self.p is not None
        if manual and self.seg_audio < self.options.min_commit_seconds - 1e-9:
            text = (
                f"Commit request ignored: only {self.seg_audio:.2f}s of uncommitted audio. "
                f"You need at least {self.options.min_commit_seconds:g}s of uncommitted audio before committing."
            )
            close = self.faults.commit_throttled_close
            if close is None:
                close = self.options.close_on_commit_throttled
            await self.send_error("commit_throttled", text, fatal=close, reason="commit_throttled")
            return
        word = self.tracker.flush()
        if word is not None:
            self.seg_words.append(word)
        text = self._text()
        words = self.seg_words
        self.seg_words = []
        self.seg_audio = 0.0
        self.seg_voiced = 0.0
        await self.send_json({"message_type": "committed_transcript", "text": text})
        if self.p.include_timestamps:
            await self.send_json(
                {
                    "message_type": "committed_transcript_with_timestamps",
                    "text": text,
                    "language_code": self.p.language_code or ("en" if self.p.include_language_detection else None),
                    "words": self._timestamps(words),
                }
            )
        if self.options.echo_partial_after_commit and text:
            await self.send_json({"message_type": "partial_transcript", "text": text})

    @staticmethod
    def _timestamps(words: list[Word]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, w in enumerate(words):
            if i:
                prev = words[i - 1]
                out.append({"text": " ", "start": prev.end, "end": w.start, "type": "spacing"})
            out.append(
                {
                    "text": w.text,
                    "start": w.start,
                    "end": w.end,
                    "type": "word",
                    "logprob": -round(0.01 + (w.index * 7 % 10) / 100, 2),
                    "characters": list(w.text),
                }
            )
        return out


async def _token(request: web.Request, cfg: EmulatorConfig, tokens: TokenStore) -> web.Response:
    """``POST /v1/single-use-token/{token_type}`` (key in ``xi-api-key``)."""
    options = cfg.options(ELEVENLABS)
    key = request.headers.get("xi-api-key")
    if key is None:
        return web.json_response(
            {"detail": {"status": "needs_authorization", "message": "Missing xi-api-key header."}}, status=401
        )
    if key not in options.api_keys:
        return web.json_response({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, status=401)
    token_type = request.match_info["token_type"]
    if token_type not in TOKEN_TYPES:
        return web.json_response(
            {
                "detail": [
                    {
                        "type": "enum",
                        "loc": ["path", "token_type"],
                        "msg": "Input should be " + ", ".join(repr(t) for t in TOKEN_TYPES),
                        "input": token_type,
                    }
                ]
            },
            status=422,
        )
    tok = tokens.mint("elevenlabs", options.token_ttl_seconds, single_use=True, token_type=token_type)
    return web.json_response({"token": tok.value})


ELEVENLABS: Emulator[ElevenLabsOptions] = Emulator(
    name="elevenlabs",
    session=ElevenLabsSession,
    ws_paths=("/v1/speech-to-text/realtime", "/v1/speech-to-text/realtime-beta"),
    token_method="POST",
    token_path="/v1/single-use-token/{token_type}",
    options=ElevenLabsOptions,
    token=_token,
)
