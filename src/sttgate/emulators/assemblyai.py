"""AssemblyAI Universal Streaming v3 emulator, faithful to AssemblyAI's published v3 streaming protocol.

Choices where the protocol document leaves a gap (each is a guess, kept in one place here):

- **Temporary tokens are single-use** (the docs say so; a live probe saw reuse accepted). A gateway must
  not rely on reuse. ``AssemblyAIOptions(single_use_tokens=False)`` allows reuse until expiry.
- Auth: the ``Authorization`` header (raw API key or temporary token) wins over ``?token=``; ``?token=``
  takes only temporary tokens; ``Bearer`` is not stripped (``accept_bearer`` enables it).
- Close reasons: 1008 closes with ``"See Error message for details"`` (observed); 3005–3009 close with
  the Error text itself (the docs' "Reason" column; ``detailed_close_reasons=False`` uses the
  generic text for those too).
- Legacy mode (``AssemblyAIOptions.legacy_codes`` / ``emu_legacy_codes=1``): 3006/3007/3008 become 3005 and 3009 becomes
  1008, in both the ``error_code`` and the close code, as before 2026-02.
- ``inactivity_timeout`` (no data frame of any kind for N s; KeepAlive counts): the turn is flushed,
  ``Termination`` is sent, and the socket closes 1000 "Session Ended".
- Session cap (``expires_at``): ``Termination``, then ``Error`` 3008, then close 3008.
- ``ForceEndpoint`` with no active turn sends nothing. Audio after ``Terminate`` is ignored.
- Echo mode (``emu_echo=1``): every frame is echoed, and an echoed ``Terminate`` then closes 1000 "Session Ended" as
  in a normal session (without ``Termination``: echo mode sends nothing of its own).
- Encodings other than ``pcm_s16le``/``pcm_mulaw`` (opus, aac…) are refused with 3006: the emulator
  cannot time them.
- ``Termination`` durations are rounded half-up to whole seconds.
- Turn ends: trailing silence ≥ ``max_turn_silence``, or ≥ ``min_turn_silence`` with a confidence
  ``silence / max_turn_silence`` ≥ ``end_of_turn_confidence_threshold``. ``utterance`` is filled on the
  (unformatted) end-of-turn Turn only. With a U3-Pro model (``u3-*``, ``universal-3*``) the end-of-turn
  Turn is itself formatted, as documented for that family, and no extra formatted Turn follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .base import BaseSession, Emulator, accepted_keys
from .transcriber import MULAW, PCM16, AudioFormat, SpeechTracker, Word

if TYPE_CHECKING:
    from .app import EmulatorConfig
    from .tokens import TokenStore

ENCODINGS = {"pcm_s16le": PCM16, "pcm_mulaw": MULAW}
MODELS = (
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "whisper-rt",
    "u3-rt-pro",
    "u3-rt-pro-beta-1",
    "universal-3-5-pro",
    "universal-3-6",
    "universal-3-6-pro",
    "u3-pro",
)
DEFAULT_MODEL = "universal-streaming-english"
API_VERSION = "2025-05-12"
GENERIC_REASON = "See Error message for details"
SESSION_ENDED = "Session Ended"

# emu_error values → (error_code, Error text)
_INVALID_KEY = (1008, "Unauthorized Connection: Invalid API key")
_CANCELLED = (3005, "Session Cancelled: An error occurred")
_TOO_MANY = (3009, "Unauthorized Connection: Too many concurrent sessions")
_EXPIRED = (3008, "Session Expired: Maximum session duration exceeded")
_DURATION = (3007, "Input Duration Error: Input Duration Violation: 25.0 ms. Expected between 50 and 1000 ms")
INJECTABLE: dict[str, tuple[int, str]] = {
    "1008": _INVALID_KEY,
    "unauthorized": _INVALID_KEY,
    "invalid_api_key": _INVALID_KEY,
    "missing_authorization": (1008, "Unauthorized Connection: Missing Authorization header"),
    "insufficient_balance": (1008, "Unauthorized Connection: Insufficient balance"),
    "account_disabled": (1008, "Unauthorized Connection: Account disabled"),
    "3005": _CANCELLED,
    "session_cancelled": _CANCELLED,
    "server_error": _CANCELLED,
    "3006": (3006, "User Input Validation Error: emulated invalid input"),
    "invalid_message": (3006, "Invalid Message: emulated"),
    "3007": _DURATION,
    "input_duration": _DURATION,
    "rate_exceeded": (3007, "Audio Transmission Rate Exceeded: Received 10.00 sec. audio in 1.00 sec"),
    "3008": _EXPIRED,
    "session_expired": _EXPIRED,
    "3009": _TOO_MANY,
    "too_many_sessions": _TOO_MANY,
    "too_many_concurrent_sessions": _TOO_MANY,
}
# Injected without a trigger, these come instead of Begin (they are connection-time refusals).
BEFORE_BEGIN_CODES = frozenset({1008, 3009})


def legacy_code(code: int) -> int:
    if code in (3006, 3007, 3008):
        return 3005
    if code == 3009:
        return 1008
    return code


class ParamError(ValueError):
    pass


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise ParamError(f"Invalid value for {name}: {value!r} is not a boolean")


def _num(name: str, value: str, lo: float | None, hi: float | None, *, integer: bool = False) -> Any:
    try:
        x: float | int = int(value) if integer else float(value)
    except ValueError:
        raise ParamError(f"Invalid value for {name}: {value!r}") from None
    if (lo is not None and x < lo) or (hi is not None and x > hi) or x != x:
        bounds = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        raise ParamError(f"Invalid value for {name}: {value!r} must be {bounds}")
    return x


def _keyterms(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ParamError("keyterms_prompt must be a JSON array of strings")
    if len(value) > 100:
        raise ParamError("keyterms_prompt accepts at most 100 terms")
    for t in value:
        if len(t) > 50:
            raise ParamError(f"keyterms_prompt term {t[:60]!r} is longer than 50 characters")
    return value


def is_u3(model: str | None) -> bool:
    return bool(model) and (model.startswith("u3") or model.startswith("universal-3"))  # type: ignore[union-attr]


@dataclass(slots=True)
class Params:
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    speech_model: str | None = None
    format_turns: bool = False
    end_of_turn_confidence_threshold: float = 0.4
    min_turn_silence: int = 400
    max_turn_silence: int = 1280
    vad_threshold: float = 0.4
    keyterms_prompt: list[str] = field(default_factory=list)
    language_detection: bool = False
    inactivity_timeout: int | None = None
    speaker_labels: bool = False
    max_speakers: int | None = None
    filter_profanity: bool = False
    redact_pii: bool = False
    domain: str | None = None
    voice_focus: str | None = None
    mode: str | None = None

    @property
    def fmt(self) -> AudioFormat:
        return AudioFormat(ENCODINGS[self.encoding], self.sample_rate)

    @property
    def u3(self) -> bool:
        return is_u3(self.speech_model)

    def begin_configuration(self, api_version: str) -> dict[str, Any]:
        return {
            "model": self.speech_model or DEFAULT_MODEL,
            "mode": self.mode,
            "api_version": api_version,
            "speaker_labels": self.speaker_labels,
            "redact_pii": self.redact_pii,
            "filter_profanity": self.filter_profanity,
            "domain": self.domain,
            "voice_focus": self.voice_focus,
        }


def parse_params(params: dict[str, list[str]]) -> Params:
    """Query → :class:`Params`; raises :class:`ParamError` (→ Error 3006). Unknown keys are ignored."""

    def last(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    p = Params()
    if (v := last("speech_model")) is not None:
        if v not in MODELS:
            raise ParamError(f"Invalid speech_model: {v!r}")
        p.speech_model = v
    if p.u3:
        p.min_turn_silence, p.max_turn_silence, p.vad_threshold = 100, 1000, 0.3
    if (v := last("encoding")) is not None:
        if v not in ENCODINGS:
            raise ParamError(f"Unsupported encoding: {v!r} (the emulator supports pcm_s16le and pcm_mulaw)")
        p.encoding = v
    if (v := last("sample_rate")) is not None:
        p.sample_rate = _num("sample_rate", v, 1, 192000, integer=True)
    for name in ("format_turns", "language_detection", "speaker_labels", "filter_profanity", "redact_pii"):
        if (v := last(name)) is not None:
            setattr(p, name, _bool(name, v))
    if (v := last("end_of_turn_confidence_threshold")) is not None:
        p.end_of_turn_confidence_threshold = _num("end_of_turn_confidence_threshold", v, 0.0, 1.0)
    old = last("min_end_of_turn_silence_when_confident")
    new = last("min_turn_silence")
    if (v := new if new is not None else old) is not None:
        p.min_turn_silence = _num("min_turn_silence", v, 0, 60000, integer=True)
    if (v := last("max_turn_silence")) is not None:
        p.max_turn_silence = _num("max_turn_silence", v, 0, 60000, integer=True)
    if (v := last("vad_threshold")) is not None:
        p.vad_threshold = _num("vad_threshold", v, 0.0, 1.0)
    if (v := last("keyterms_prompt")) is not None:
        try:
            terms = json.loads(v)
        except ValueError:
            raise ParamError("keyterms_prompt must be a JSON array of strings") from None
        p.keyterms_prompt = _keyterms(terms)
    if (v := last("inactivity_timeout")) is not None:
        p.inactivity_timeout = _num("inactivity_timeout", v, 5, 3600, integer=True)
    if (v := last("max_speakers")) is not None:
        p.max_speakers = _num("max_speakers", v, 1, 10, integer=True)
    p.domain = last("domain")
    p.voice_focus = last("voice_focus")
    p.mode = last("mode")
    return p


def _formatted(text: str) -> str:
    if not text:
        return text
    return text[0].upper() + text[1:] + "."


@dataclass
class AssemblyAIOptions:
    """This emulator's settings (``EmulatorConfig.providers["assemblyai"]``). Timeouts in seconds; ``None`` disables."""

    api_keys: tuple[str, ...] = ("emulator-assemblyai-key",)  # the operator keys accepted (Authorization)
    begin_delay_seconds: float = 0.0  # the real service sends Begin ~0.66 s after the 101
    rate_check: bool = True  # 3007 when audio arrives faster than real time
    rate_tolerance: float = 1.25  # audio allowed per second of wall time...
    rate_burst_seconds: float = 2.0  # ...plus this much slack
    min_chunk_ms: float = 50.0
    max_chunk_ms: float = 1000.0
    max_session_seconds: float = 10800.0  # 3 h cap (a token may lower it)
    single_use_tokens: bool = True
    detailed_close_reasons: bool = True  # 300x closes carry the Error text as reason
    accept_bearer: bool = False  # accept "Authorization: Bearer <key>" too
    inactivity_timeout_seconds: float | None = None  # when the client sets none (real: none)
    legacy_codes: bool = False  # pre-2026-02 close codes (see emu_legacy_codes)

    def __post_init__(self) -> None:
        self.api_keys = accepted_keys(self.api_keys)


class AssemblyAISession(BaseSession):
    provider = "assemblyai"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = self.config.options(ASSEMBLYAI)
        self.p: Params | None = None
        self.tracker: SpeechTracker | None = None
        self.auth_problem = "Invalid API key"
        self.token_cap: float | None = None
        self.terminating = False
        self.audio_seconds = 0.0
        self.turn_order = 0
        self.turn_words: list[Word] = []
        self.inactivity: float | None = None
        self.rate_check = True
        self.legacy = False

    # --- errors -------------------------------------------------------------------------------------

    def _code(self, code: int) -> int:
        return legacy_code(code) if self.legacy else code

    async def fatal(self, code: int, text: str, *, close_code: int | None = None, reason: str | None = None) -> None:
        """An ``Error`` frame, then a close (normally with the same code)."""
        code = self._code(code)
        await self.send_json({"type": "Error", "error_code": code, "error": text})
        if close_code is None:
            close_code = code
        if reason is None:
            detailed = self.options.detailed_close_reasons and close_code != 1008
            reason = text if detailed else GENERIC_REASON
        await self.close(close_code, reason)

    async def send_auth_error(self) -> None:
        await self.fatal(1008, f"Unauthorized Connection: {self.auth_problem}")

    async def inject_error(self) -> None:
        f = self.faults
        value = (f.error or "3005").strip().lower()
        code, text = self._injectable(value)
        await self.fatal(code, f.error_message or text, close_code=f.close_code, reason=f.close_reason)

    @staticmethod
    def _injectable(value: str) -> tuple[int, str]:
        if value in INJECTABLE:
            return INJECTABLE[value]
        if value.isdigit():
            return int(value), "Emulated error"
        return _CANCELLED

    # --- start --------------------------------------------------------------------------------------

    async def authenticate(self) -> bool:
        header = self.request.headers.get("Authorization")
        token = self.param("token")
        ok = False
        if header is None and not token:
            self.auth_problem = "Missing Authorization header"
        elif header is not None:
            cred = header.strip()
            if self.options.accept_bearer and cred[:7].lower() == "bearer ":
                cred = cred[7:].strip()
            if cred and cred in self.options.api_keys:
                ok = True
            else:
                tok = self.tokens.consume("assemblyai", cred)
                if tok is not None:
                    ok = True
                    self.token_cap = tok.attrs.get("max_session_duration_seconds")
        else:
            tok = self.tokens.consume("assemblyai", token)
            if tok is not None:
                ok = True
                self.token_cap = tok.attrs.get("max_session_duration_seconds")
        assert self.record is not None
        self.record.authenticated = ok
        return ok

    async def start(self) -> bool:
        cfg, f = self.config, self.faults
        self.legacy = f.legacy_codes if f.legacy_codes is not None else self.options.legacy_codes
        self.rate_check = f.rate_check if f.rate_check is not None else self.options.rate_check
        if not await self.authenticate():
            await self.send_auth_error()
            return False
        immediate_error = f.error is not None and f.error_after_frames is None and f.error_after_seconds is None
        if immediate_error and self._injectable(f.error.strip().lower())[0] in BEFORE_BEGIN_CODES:  # type: ignore[union-attr]
            await self.inject_error()
            return False
        try:
            self.p = p = parse_params(self.params)
        except ParamError as exc:
            await self.fatal(3006, f"User Input Validation Error: {exc}")
            return False
        self.tracker = SpeechTracker(p.fmt, threshold=cfg.voice_threshold, word_seconds=cfg.word_seconds)
        delay = f.start_delay_ms / 1000.0 if f.start_delay_ms is not None else self.options.begin_delay_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        cap = float(self.options.max_session_seconds)
        if self.token_cap is not None:
            cap = min(cap, float(self.token_cap))
        if f.max_session_seconds is not None:
            cap = f.max_session_seconds
        session_id = str(uuid.uuid4())
        assert self.record is not None
        self.record.id = session_id
        api_version = self.request.headers.get("AssemblyAI-Version") or API_VERSION
        await self.send_json(
            {
                "type": "Begin",
                "id": session_id,
                "expires_at": int(time.time() + cap + 0.999),
                "configuration": p.begin_configuration(api_version),
            }
        )
        self.set_deadline("expires", self.t0 + cap, self._on_expired)
        if f.idle_timeout_seconds is not None:
            self.inactivity = f.idle_timeout_seconds
        elif p.inactivity_timeout is not None:
            self.inactivity = float(p.inactivity_timeout)
        else:
            self.inactivity = self.options.inactivity_timeout_seconds
        if self.inactivity:
            self.set_timer("inactivity", self.inactivity, self._on_inactive)
        if immediate_error:
            await self.inject_error()
        return not self.closed

    # --- timers -------------------------------------------------------------------------------------

    def _termination(self) -> dict[str, Any]:
        return {
            "type": "Termination",
            "audio_duration_seconds": int(self.audio_seconds + 0.5),
            "session_duration_seconds": int(self.loop.time() - self.t0 + 0.5),
        }

    async def _on_expired(self) -> None:
        await self.end_turn(1.0)
        await self.send_json(self._termination())
        await self.fatal(3008, _EXPIRED[1])

    async def _on_inactive(self) -> None:
        await self.end_turn(1.0)
        await self.send_json(self._termination())
        await self.close(1000, SESSION_ENDED)

    # --- frames -------------------------------------------------------------------------------------

    async def on_binary(self, data: bytes) -> None:
        if self.inactivity:
            self.set_timer("inactivity", self.inactivity, self._on_inactive)
        if self.terminating:
            return
        p = self.p
        assert p is not None and self.record is not None
        fmt = p.fmt
        seconds = fmt.seconds(len(data))
        self.record.add_audio(len(data), seconds)
        ms = seconds * 1000.0
        if ms < self.options.min_chunk_ms - 1e-6 or ms > self.options.max_chunk_ms + 1e-6:
            await self.fatal(
                3007,
                f"Input Duration Error: Input Duration Violation: {ms:.1f} ms. "
                f"Expected between {self.options.min_chunk_ms:g} and {self.options.max_chunk_ms:g} ms",
            )
            return
        self.audio_seconds += seconds
        if self.rate_check:
            elapsed = self.loop.time() - self.t0
            if self.audio_seconds > self.options.rate_tolerance * elapsed + self.options.rate_burst_seconds:
                received = f"{self.audio_seconds:.2f}"
                await self.fatal(
                    3007, f"Audio Transmission Rate Exceeded: Received {received} sec. audio in {elapsed:.2f} sec"
                )
                return
        await self._process(data)

    async def on_text(self, data: str) -> None:
        if self.inactivity:
            self.set_timer("inactivity", self.inactivity, self._on_inactive)
        shown = data if len(data) <= 200 else data[:200] + "..."
        try:
            obj = json.loads(data)
        except ValueError:
            await self.fatal(3006, f"Invalid JSON: {shown}")
            return
        if not isinstance(obj, dict):
            await self.fatal(3006, f"Invalid Message: {shown}")
            return
        kind = obj.get("type")
        if kind == "Terminate":
            await self.terminate()
        elif kind == "ForceEndpoint":
            if not self.terminating:
                await self.end_turn(1.0)
        elif kind == "UpdateConfiguration":
            try:
                self._update(obj)
            except ParamError as exc:
                await self.fatal(3006, f"Invalid Message: {exc}")
        elif kind == "KeepAlive":
            pass
        elif isinstance(kind, str):
            await self.fatal(3006, f"Invalid Message Type: {kind}")
        else:
            await self.fatal(3006, f"Invalid Message: {shown}")

    async def on_echoed_text(self, data: str) -> None:
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and message.get("type") == "Terminate":
                await self.close(1000, SESSION_ENDED)

    def _update(self, obj: dict[str, Any]) -> None:
        p = self.p
        assert p is not None

        def num(name: str, lo: float, hi: float, integer: bool = False) -> Any:
            v = obj[name]
            ok = isinstance(v, int) if integer else isinstance(v, int | float)
            if isinstance(v, bool) or not ok or not lo <= v <= hi:
                raise ParamError(f"{name} must be a number between {lo:g} and {hi:g}")
            return v

        updates: dict[str, Any] = {}
        if "end_of_turn_confidence_threshold" in obj:
            updates["end_of_turn_confidence_threshold"] = float(num("end_of_turn_confidence_threshold", 0, 1))
        for old_or_new in ("min_end_of_turn_silence_when_confident", "min_turn_silence"):
            if old_or_new in obj:
                updates["min_turn_silence"] = num(old_or_new, 0, 60000, integer=True)
        if "max_turn_silence" in obj:
            updates["max_turn_silence"] = num("max_turn_silence", 0, 60000, integer=True)
        if "vad_threshold" in obj:
            updates["vad_threshold"] = float(num("vad_threshold", 0, 1))
        if "keyterms_prompt" in obj:
            updates["keyterms_prompt"] = _keyterms(obj["keyterms_prompt"])
        for name in ("format_turns", "filter_profanity"):
            if name in obj:
                if not isinstance(obj[name], bool):
                    raise ParamError(f"{name} must be a boolean")
                updates[name] = obj[name]
        for name, value in updates.items():
            setattr(p, name, value)

    async def terminate(self) -> None:
        if self.terminating:
            return
        self.terminating = True
        await self.end_turn(1.0)
        await self.send_json(self._termination())
        await self.close(1000, SESSION_ENDED)

    # --- turns --------------------------------------------------------------------------------------

    async def _process(self, data: bytes) -> None:
        tracker, p = self.tracker, self.p
        assert tracker is not None and p is not None
        for blk in tracker.feed(data):
            if blk.word is not None:
                self.turn_words.append(blk.word)
            if blk.speech_ended:
                if self.turn_words:
                    await self._send_turn(final_last=True)
            elif blk.word is not None:
                await self._send_turn(final_last=False)
            if not blk.voiced and self.turn_words:
                silence_ms = tracker.silence_seconds * 1000.0
                conf = self._confidence(silence_ms)
                if silence_ms >= p.max_turn_silence - 1e-6 or (
                    silence_ms >= p.min_turn_silence - 1e-6 and conf >= p.end_of_turn_confidence_threshold
                ):
                    await self.end_turn(conf)
            if self.closed:
                return

    def _confidence(self, silence_ms: float) -> float:
        assert self.p is not None
        if self.p.max_turn_silence <= 0:
            return 1.0
        return round(min(1.0, silence_ms / self.p.max_turn_silence), 6)

    @staticmethod
    def _word_json(w: Word, final: bool, text: str | None = None) -> dict[str, Any]:
        return {
            "start": round(w.start * 1000),
            "end": round(w.end * 1000),
            "text": text if text is not None else w.text,
            "confidence": round(0.8 + (w.index * 37 % 20) / 100, 6),
            "word_is_final": final,
        }

    def _turn(
        self,
        *,
        transcript: str,
        words: list[dict[str, Any]],
        end_of_turn: bool,
        formatted: bool,
        confidence: float,
        utterance: str = "",
    ) -> dict[str, Any]:
        p = self.p
        assert p is not None
        msg: dict[str, Any] = {
            "turn_order": self.turn_order,
            "turn_is_formatted": formatted,
            "end_of_turn": end_of_turn,
            "transcript": transcript,
            "end_of_turn_confidence": confidence,
            "words": words,
            "utterance": utterance,
        }
        if end_of_turn and p.language_detection:
            msg["language_code"] = "en"
            msg["language_confidence"] = 0.99
        if p.speaker_labels:
            duration = (self.turn_words[-1].end - self.turn_words[0].start) if self.turn_words else 0.0
            msg["speaker_label"] = "A" if duration >= 1.0 else "UNKNOWN"
        msg["type"] = "Turn"
        return msg

    async def _send_turn(self, *, final_last: bool) -> None:
        words = self.turn_words
        final = words if final_last else words[:-1]
        wj = [self._word_json(w, True) for w in final]
        if not final_last:
            wj.append(self._word_json(words[-1], False))
        assert self.tracker is not None
        conf = self._confidence(self.tracker.silence_seconds * 1000.0)
        await self.send_json(
            self._turn(
                transcript=" ".join(w.text for w in final),
                words=wj,
                end_of_turn=False,
                formatted=False,
                confidence=conf,
            )
        )

    async def end_turn(self, confidence: float) -> None:
        """Finish the current turn (end-of-turn Turn, plus the formatted one with ``format_turns``)."""
        tracker, p = self.tracker, self.p
        if tracker is None or p is None:
            return
        word = tracker.flush()
        if word is not None:
            self.turn_words.append(word)
        if not self.turn_words:
            return
        text = " ".join(w.text for w in self.turn_words)
        if p.u3:
            ftext = _formatted(text)
            await self.send_json(
                self._turn(
                    transcript=ftext,
                    words=self._formatted_words(),
                    end_of_turn=True,
                    formatted=True,
                    confidence=confidence,
                    utterance=ftext,
                )
            )
        else:
            await self.send_json(
                self._turn(
                    transcript=text,
                    words=[self._word_json(w, True) for w in self.turn_words],
                    end_of_turn=True,
                    formatted=False,
                    confidence=confidence,
                    utterance=text,
                )
            )
            if p.format_turns:
                await self.send_json(
                    self._turn(
                        transcript=_formatted(text),
                        words=self._formatted_words(),
                        end_of_turn=True,
                        formatted=True,
                        confidence=confidence,
                    )
                )
        self.turn_order += 1
        self.turn_words = []

    def _formatted_words(self) -> list[dict[str, Any]]:
        words = self.turn_words
        out = []
        for i, w in enumerate(words):
            text = w.text
            if i == 0:
                text = text[0].upper() + text[1:]
            if i == len(words) - 1:
                text += "."
            out.append(self._word_json(w, True, text))
        return out


async def _token(request: web.Request, cfg: EmulatorConfig, tokens: TokenStore) -> web.Response:
    """``GET /v3/token?expires_in_seconds=N`` (key in ``Authorization``)."""
    options = cfg.options(ASSEMBLYAI)
    key = request.headers.get("Authorization")
    if key is not None and options.accept_bearer and key[:7].lower() == "bearer ":
        key = key[7:]
    if key is None:
        return web.json_response({"error": "Missing Authorization header"}, status=401)
    if key.strip() not in options.api_keys:
        return web.json_response({"error": "Invalid API key"}, status=401)

    def int_param(name: str, lo: int, hi: int, default: int | None) -> int | str:
        raw = request.query.get(name)
        if raw is None:
            if default is None:
                return f"{name} is required"
            return default
        try:
            value = int(raw)
        except ValueError:
            return f"{name} must be an integer"
        if not lo <= value <= hi:
            return f"{name} must be between {lo} and {hi}"
        return value

    expires = int_param("expires_in_seconds", 1, 600, None)
    if isinstance(expires, str):
        return web.json_response({"error": expires}, status=400)
    cap = int_param("max_session_duration_seconds", 60, 10800, 10800)
    if isinstance(cap, str):
        return web.json_response({"error": cap}, status=400)
    tok = tokens.mint("assemblyai", expires, single_use=options.single_use_tokens, max_session_duration_seconds=cap)
    return web.json_response({"token": tok.value, "expires_in_seconds": expires})


ASSEMBLYAI: Emulator[AssemblyAIOptions] = Emulator(
    name="assemblyai",
    session=AssemblyAISession,
    ws_paths=("/v3/ws",),
    token_method="GET",
    token_path="/v3/token",
    options=AssemblyAIOptions,
    token=_token,
)
