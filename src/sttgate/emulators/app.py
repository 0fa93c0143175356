"""Local emulators of ElevenLabs Scribe realtime, AssemblyAI Universal Streaming v3 and Deepgram live streaming
(docs/contract.md#emulators).

One aiohttp application serves every provider on one port, at their real paths:

================================================  ===============================================
``GET  /v1/speech-to-text/realtime``              ElevenLabs WebSocket (also ``…/realtime-beta``,
                                                  and both under any path prefix)
``POST /v1/single-use-token/{token_type}``        ElevenLabs single-use token (``xi-api-key``)
``GET  /v3/ws`` (and any path ending in ``/v3/ws``) AssemblyAI WebSocket
``GET  /v3/token?expires_in_seconds=N``           AssemblyAI temporary token (``Authorization``)
``GET  /v1/listen`` (and under any path prefix)   Deepgram WebSocket (credential checked before the 101)
``POST /v1/auth/grant``                           Deepgram temporary token (``Authorization: Token``)
``GET  /_emulator/sessions``                      every recorded session as JSON (no payloads)
``GET  /_emulator/sessions/{seq}[?payloads=1]``   one session (payloads: text as is, binary hex)
``DELETE /_emulator/sessions``                    forget all recorded sessions
``GET  /_emulator/health``                        ``{"status": "ok"}``
================================================  ===============================================

API keys: ``emulator-elevenlabs-key``, ``emulator-assemblyai-key`` and ``emulator-deepgram-key`` unless
an emulator's options say otherwise (each module's ``…Options``, given in
:attr:`EmulatorConfig.providers`). Each provider's behaviour, and the guesses made where its protocol document
is silent, are described in :mod:`.elevenlabs`, :mod:`.assemblyai` and :mod:`.deepgram`; the word generator in
:mod:`.transcriber` (one word per 0.3 s of voiced audio, NATO alphabet in order: ``alpha bravo charlie …``).

Tokens: ElevenLabs tokens (``sutkn_…``) expire after 15 minutes and are consumed on first use.
AssemblyAI tokens must be used within ``expires_in_seconds``, cap the session at
``max_session_duration_seconds`` (default 10800) and are **single-use** (configurable).

Fault injection
---------------
Query parameters prefixed ``emu_`` steer a session. Real providers ignore unknown parameters, and the
gateway forwards every client parameter, so end-to-end tests through the gateway can use them too. An
``emu_`` parameter the emulator does not know, or a bad value, is refused before the upgrade with
HTTP 400 ``{"error": {"code": "invalid_emulator_parameter", …}}``. Booleans: ``1/0``, ``true/false``,
``on/off``, ``yes/no``. Seconds are counted from the 101; frames are the client's data frames.

``emu_echo=1``
    Pure echo: after the key/token check (a failure still gets the provider's auth error and close),
    no start message, no validation; every data frame is sent back with the same type and identical
    payload. A client close frame is echoed with the same code and reason (as in every mode).
``emu_handshake_delay_ms=N``
    Wait N ms before answering the upgrade (also before a refusal).
``emu_handshake_status=S``
    Refuse the upgrade with HTTP status S and a JSON body (``{"error": "…"}``; ``emu_error_message``
    sets the text; Deepgram: its ``{"err_code", "err_msg", "request_id"}`` body and a ``dg-error`` header).
    The session is recorded with ``closed_by="refused"``.
``emu_start_delay_ms=N``
    Wait N ms after the 101 before ``session_started`` / ``Begin`` (frames received meanwhile are
    processed afterwards). AssemblyAI's default is ``AssemblyAIOptions.begin_delay_seconds``.
``emu_close_after_frames=N`` / ``emu_close_after_seconds=S``
    Close after the N-th data frame has been handled (N=0: right after the start message) or S seconds
    after the 101, with ``emu_close_code`` (default 1000) and ``emu_close_reason`` (default ``""``).
``emu_drop_after_frames=N`` / ``emu_drop_after_seconds=S``
    Abort the TCP connection (no close frame) after N data frames or S seconds.
``emu_error=<type or code>``
    Send the provider's error frame and close the way its protocol does, then nothing more.

    ElevenLabs: any ``message_type`` of the protocol's §4.4 (``quota_exceeded``, ``rate_limited``,
    ``queue_overflow``, ``resource_exhausted``, ``session_time_limit_exceeded``, ``unaccepted_terms``,
    ``transcriber_error``, ``chunk_size_exceeded``, ``error``, ``insufficient_audio_activity``, …).
    ``auth_error`` and ``invalid_request`` replace ``session_started``; the others follow it (e.g.
    ``quota_exceeded`` right after ``session_started``). The close is 1000 with the type as reason
    (``""`` for ``auth_error``); ``input_error`` and ``commit_throttled`` do not close.

    AssemblyAI: a code or a name: ``1008``/``unauthorized``/``invalid_api_key``,
    ``missing_authorization``, ``insufficient_balance``, ``account_disabled`` (1008),
    ``3005``/``session_cancelled``/``server_error``, ``3006``/``invalid_message``,
    ``3007``/``input_duration``/``rate_exceeded``, ``3008``/``session_expired``,
    ``3009``/``too_many_sessions``; any other number is sent as is. 1008 and 3009 replace ``Begin``,
    the others follow it. ``Error`` frame, then close with the same code (legacy mode maps codes).

    Deepgram: ``net0001``/``idle`` and ``net0000`` (``Metadata``, then close 1011 with the NET-0001 sentence /
    ``NET-0000``), ``data0000`` (close 1008 ``DATA-0000``), ``schema`` (an ``Error`` frame, the session stays open),
    any other number (close with it).
``emu_error_message=TEXT``
    The error text instead of the default one.
``emu_error_after_frames=N`` / ``emu_error_after_seconds=S``
    Send ``emu_error`` after the N-th data frame or S seconds after the 101 instead of at the start.
``emu_error_close=0|1``
    Whether the injected error closes the session (defaults: as described above). ``emu_close_code``
    and ``emu_close_reason`` override the close code/reason of an injected error.
``emu_rate_check=off``
    AssemblyAI: skip the faster-than-real-time check (3007), so tests can push audio fast. Deepgram (off by default):
    ``on`` closes 1011 on audio faster than 1.25x real time plus 2 s.
``emu_legacy_codes=1``
    AssemblyAI: pre-2026-02 codes (3006/3007/3008 → 3005, 3009 → 1008).
``emu_idle_timeout_seconds=S``
    ElevenLabs: idle timeout (``insufficient_audio_activity``) for this session. AssemblyAI: an
    inactivity timeout for this session, also below the API's 5 s minimum of ``inactivity_timeout``. Deepgram: the
    no-frame timeout (default 10 s; then ``Metadata`` and close 1011 NET-0001).
``emu_max_session_seconds=S``
    AssemblyAI: session cap (``expires_at``; then ``Termination``, Error 3008, close 3008).
    ElevenLabs: ``session_time_limit_exceeded`` after S seconds.
``emu_auto_commit_seconds=S``
    ElevenLabs manual mode: auto-commit after S seconds of uncommitted audio (default 90).
``emu_commit_throttled_close=0|1``
    ElevenLabs: close 1000 "commit_throttled" after a ``commit_throttled`` error.

The recorder (:mod:`.recorder`) is ``app[RECORDER]`` in process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from .assemblyai import ASSEMBLYAI
from .base import BaseSession, Emulator, OptionsT
from .deepgram import DEEPGRAM
from .elevenlabs import ELEVENLABS
from .recorder import RECORDER, Recorder
from .tokens import TokenStore

__all__ = ["EMULATORS", "RECORDER", "EmulatorConfig", "create_app", "serve"]

log = logging.getLogger("sttgate.emulators")


@dataclass
class EmulatorConfig:
    """Settings of the emulator app. Every timeout is in seconds; ``None`` disables it."""

    # Every emulator.
    fault_injection: bool = True  # honour emu_* query parameters
    handshake_delay_seconds: float = 0.0  # added before every 101 (the real AssemblyAI takes ~0.6 s)
    voice_threshold: float = 0.01  # RMS (fraction of full scale, ~-40 dBFS) above which audio is voiced
    word_seconds: float = 0.3  # voiced audio per generated word
    max_msg_size: int = 16 * 1024 * 1024  # larger frames are closed with 1009 by aiohttp
    close_timeout_seconds: float = 5.0  # wait for the client's close reply
    record_max_frames: int = 5000  # frames (and audio chunks) kept per session and direction
    record_max_payload_bytes: int = 8 * 1024 * 1024  # payload bytes kept per session (both directions)
    record_max_sessions: int = 1000  # older ended sessions are forgotten (and their budget released)
    record_max_total_frames: int = 1_000_000  # frames and audio chunks kept over all sessions
    record_max_total_payload_bytes: int = 256 * 1024 * 1024  # payload bytes kept over all sessions

    # Each emulator's own settings by provider name (its module's options dataclass, e.g.
    # ``DeepgramOptions(max_concurrent=2)``); an emulator not named here runs with its defaults.
    providers: dict[str, Any] = field(default_factory=dict)

    def options(self, emulator: Emulator[OptionsT]) -> OptionsT:
        """``emulator``'s settings: those given in ``providers``, else its defaults (kept, so later reads agree)."""
        found = self.providers.get(emulator.name)
        if found is None:
            found = self.providers[emulator.name] = emulator.options()
        return cast(OptionsT, found)


# The emulated providers, one line each, by the provider's name in the gateway.
EMULATORS: dict[str, Emulator[Any]] = {emulator.name: emulator for emulator in (ELEVENLABS, ASSEMBLYAI, DEEPGRAM)}

CONFIG: web.AppKey[EmulatorConfig] = web.AppKey("sttgate_emulator_config", EmulatorConfig)
TOKENS: web.AppKey[TokenStore] = web.AppKey("sttgate_emulator_tokens", TokenStore)
LIVE: web.AppKey[set[BaseSession]] = web.AppKey("sttgate_emulator_live")


def _session_handler(cls: type[BaseSession]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        return await cls(request, app[CONFIG], app[RECORDER], app[TOKENS], app[LIVE]).handle()

    return handler


def _token_handler(emulator: Emulator[Any]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return await emulator.token(request, request.app[CONFIG], request.app[TOKENS])

    return handler


async def _list_sessions(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECORDER].to_json())


async def _one_session(request: web.Request) -> web.Response:
    try:
        seq = int(request.match_info["seq"])
    except ValueError:
        seq = -1
    rec = request.app[RECORDER].get(seq) or request.app[RECORDER].get(request.match_info["seq"])
    if rec is None:
        return web.json_response({"error": "no such session"}, status=404)
    payloads = request.query.get("payloads", "0").lower() in ("1", "true", "yes", "on")
    return web.json_response(rec.to_json(payloads=payloads))


async def _clear_sessions(request: web.Request) -> web.Response:
    rec = request.app[RECORDER]
    n = len(rec.sessions)
    rec.clear()
    return web.json_response({"deleted": n})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "live_sessions": len(request.app[LIVE])})


async def _on_shutdown(app: web.Application) -> None:
    live: set[BaseSession] = app[LIVE]
    sessions = list(live)
    if sessions:
        await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator application (every provider, token endpoints, recorder endpoints)."""
    config = config or EmulatorConfig()
    app = web.Application()
    app[CONFIG] = config
    app[RECORDER] = Recorder(
        max_frames=config.record_max_frames,
        max_payload_bytes=config.record_max_payload_bytes,
        max_sessions=config.record_max_sessions,
        max_total_frames=config.record_max_total_frames,
        max_total_payload_bytes=config.record_max_total_payload_bytes,
    )
    app[TOKENS] = TokenStore()
    app[LIVE] = set()
    r = app.router
    r.add_get("/_emulator/health", _health)
    r.add_get("/_emulator/sessions", _list_sessions)
    r.add_delete("/_emulator/sessions", _clear_sessions)
    r.add_get("/_emulator/sessions/{seq}", _one_session)
    for emulator in EMULATORS.values():
        session = _session_handler(emulator.session)
        for path in emulator.ws_paths:
            r.add_get(path, session, allow_head=False)
            r.add_get("/{prefix:.+}" + path, session, allow_head=False)
        token = _token_handler(emulator)
        r.add_route(emulator.token_method, emulator.token_path, token)
        r.add_route(emulator.token_method, "/{prefix:.+}" + emulator.token_path, token)
    app.on_shutdown.append(_on_shutdown)
    return app


async def serve(
    host: str = "127.0.0.1",
    port: int = 8090,
    config: EmulatorConfig | None = None,
    *,
    on_ready: Callable[[web.Application, int], Any] | None = None,
) -> None:
    """Serve the emulators until cancelled. ``on_ready(app, port)`` is called once listening (useful
    with ``port=0``)."""
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = port
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            bound = sockets[0].getsockname()[1]
        log.info("provider emulators listening on http://%s:%s", host, bound)
        if on_ready is not None:
            on_ready(app, bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
