"""Machinery shared by the provider emulators: handshake faults, the per-session receive loop with
deadlines (one task per session, no extra timer tasks), recording, echo mode, closing and dropping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from .faults import FaultError, Faults, parse_faults
from .recorder import (
    CLOSED_BY_CLIENT,
    CLOSED_BY_DROP,
    CLOSED_BY_EMULATOR,
    CLOSED_BY_LOST,
    CLOSED_BY_SHUTDOWN,
    Recorder,
    SessionRecord,
)
from .tokens import TokenStore

if TYPE_CHECKING:
    from .app import EmulatorConfig

log = logging.getLogger("sttgate.emulators")

Action = Callable[[], Awaitable[None]]


def compact_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def utf8_truncate(text: str, limit: int = 123) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


class BaseSession:
    """One WebSocket session. Subclasses implement :meth:`authenticate`, :meth:`start`,
    :meth:`on_text`, :meth:`on_binary` and :meth:`send_auth_error`."""

    provider: ClassVar[str] = ""
    # Subprotocols the provider selects when a client offers them (browsers carry credentials there).
    protocols: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        request: web.Request,
        config: EmulatorConfig,
        recorder: Recorder,
        tokens: TokenStore,
        live: set[BaseSession],
    ) -> None:
        self.request = request
        self.config = config
        self.recorder = recorder
        self.tokens = tokens
        self.live = live
        raw_path = request.raw_path
        self.raw_query = raw_path.partition("?")[2]
        self.pairs: list[tuple[str, str]] = parse_qsl(self.raw_query, keep_blank_values=True)
        self.params: dict[str, list[str]] = {}
        for k, v in self.pairs:
            self.params.setdefault(k, []).append(v)
        self.faults = Faults()
        self.ws: web.WebSocketResponse | None = None
        self.record: SessionRecord | None = None
        self.closed = False
        self.frames_in = 0
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()  # reset at the 101
        self._deadlines: dict[str, tuple[float, Action]] = {}
        self._next_deadline = float("inf")

    # --- parameters ---------------------------------------------------------------------------------

    def param(self, name: str) -> str | None:
        """The last value of a query parameter (None when absent)."""
        values = self.params.get(name)
        return values[-1] if values else None

    # --- deadlines ----------------------------------------------------------------------------------

    def set_deadline(self, name: str, when: float, action: Action) -> None:
        self._deadlines[name] = (when, action)
        if when < self._next_deadline:
            self._next_deadline = when

    def set_timer(self, name: str, delay: float, action: Action) -> None:
        self.set_deadline(name, self.loop.time() + delay, action)

    def clear_deadline(self, name: str) -> None:
        if self._deadlines.pop(name, None) is not None:
            self._recompute_next()

    def _recompute_next(self) -> None:
        self._next_deadline = min((w for w, _ in self._deadlines.values()), default=float("inf"))

    async def _fire_due(self) -> None:
        while not self.closed and self._deadlines:
            now = self.loop.time()
            due = [(w, name) for name, (w, _) in self._deadlines.items() if w <= now]
            if not due:
                break
            due.sort()
            name = due[0][1]
            _, action = self._deadlines.pop(name)
            self._recompute_next()
            await action()
        self._recompute_next()

    # --- sending ------------------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        if self.closed or self.ws is None:
            return
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            self._lost()
            return
        if self.record is not None:
            self.record.add_frame_out("text", text)

    async def send_bytes(self, data: bytes) -> None:
        if self.closed or self.ws is None:
            return
        try:
            await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            self._lost()
            return
        if self.record is not None:
            self.record.add_frame_out("binary", data)

    async def send_json(self, obj: Any) -> None:
        await self.send_text(compact_json(obj))

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (the emulator ends the session) and wait briefly for the client's reply."""
        if self.closed or self.ws is None:
            return
        self.closed = True
        reason = utf8_truncate(reason)
        if self.record is not None:
            self.record.set_close(code, reason, CLOSED_BY_EMULATOR)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=reason.encode())
        if self.record is not None and self.ws.close_code not in (None, 1006):
            self.record.client_close_code = self.ws.close_code

    def drop(self) -> None:
        """Abort the TCP connection: no close frame."""
        if self.closed:
            return
        self.closed = True
        if self.record is not None:
            self.record.set_close(None, None, CLOSED_BY_DROP)
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            if self.record is not None:
                self.record.set_close(1006, "", CLOSED_BY_LOST)

    async def shutdown(self) -> None:
        """Server shutdown: close with 1001 (going away)."""
        if self.closed or self.ws is None:
            return
        if self.record is not None:
            self.record.set_close(1001, "server shutdown", CLOSED_BY_SHUTDOWN)
        self.closed = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=1001, message=b"server shutdown")

    # --- the session --------------------------------------------------------------------------------

    async def handle(self) -> web.StreamResponse:
        request = self.request
        try:
            self.faults = parse_faults(self.pairs) if self.config.fault_injection else Faults()
        except FaultError as exc:
            return web.json_response({"error": {"code": "invalid_emulator_parameter", "message": str(exc)}}, status=400)
        ws = web.WebSocketResponse(
            autoclose=False,
            autoping=True,
            compress=False,
            max_msg_size=self.config.max_msg_size,
            timeout=self.config.close_timeout_seconds,
            protocols=self.protocols,
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": {"code": "websocket_required", "message": "This endpoint only accepts WebSocket upgrades."}},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.record = rec = self.recorder.new_session(
            provider=self.provider,
            path=request.path,
            query_string=self.raw_query,
            headers=list(request.headers.items()),
            remote=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None,
        )
        f = self.faults
        delay = self.config.handshake_delay_seconds + f.handshake_delay_ms / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)
        if f.handshake_status is not None:
            rec.mark_refused(f.handshake_status)
            return self.refusal_response(f.handshake_status, f.error_message)
        refusal = await self.before_upgrade(ws)
        if refusal is not None:
            rec.mark_refused(refusal.status)
            return refusal
        self.ws = ws
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):  # the client went away during the handshake
            self.closed = True
            rec.finish(None, None, CLOSED_BY_LOST)
            raise
        self.t0 = self.loop.time()
        rec.mark_accepted("echo" if f.echo else "normal")
        self.live.add(self)
        try:
            if f.echo:
                ok = await self.authenticate()
                if not ok:
                    await self.send_auth_error()
            else:
                ok = await self.start()
            if ok and not self.closed:
                self._schedule_faults()
                await self._check_frame_faults()
                await self._loop()
        except asyncio.CancelledError:
            self._lost()
            raise
        except Exception:
            log.exception("%s emulator session failed", self.provider)
            await self.close(1011, "internal emulator error")
        finally:
            self.live.discard(self)
            self.on_end()
            if not self.closed:
                self._lost()
            rec.finish()
        return ws

    def refusal_response(self, status: int, message: str | None) -> web.Response:
        return web.json_response(
            {"error": message or f"Emulated handshake refusal (HTTP {status})"},
            status=status,
        )

    async def before_upgrade(self, ws: web.WebSocketResponse) -> web.Response | None:
        """Hook: checks a provider makes before the 101 (e.g. its credential); a response refuses the upgrade.

        ``ws`` is the response about to be prepared (its headers are the 101's)."""
        return None

    def on_end(self) -> None:
        """Hook: the session is over (release per-session state)."""

    async def authenticate(self) -> bool:
        raise NotImplementedError

    async def send_auth_error(self) -> None:
        raise NotImplementedError

    async def start(self) -> bool:
        """Authenticate, validate, send the start message. False when the session is already over."""
        raise NotImplementedError

    async def on_text(self, data: str) -> None:
        raise NotImplementedError

    async def on_binary(self, data: bytes) -> None:
        raise NotImplementedError

    async def on_echoed_text(self, data: str) -> None:
        """Hook, echo mode: a text frame was echoed. A provider whose end message closes the session closes here
        too, so an echo session still ends the way a gateway's graceful end expects."""

    async def inject_error(self) -> None:
        """Send the ``emu_error`` frame (and close, as the protocol does)."""
        raise NotImplementedError

    def _schedule_faults(self) -> None:
        f = self.faults
        if f.close_after_seconds is not None:
            self.set_deadline("emu_close", self.t0 + f.close_after_seconds, self._fault_close)
        if f.drop_after_seconds is not None:
            self.set_deadline("emu_drop", self.t0 + f.drop_after_seconds, self._fault_drop)
        if f.error is not None and f.error_after_seconds is not None and f.error_after_frames is None:
            self.set_deadline("emu_error", self.t0 + f.error_after_seconds, self.inject_error)

    async def _fault_close(self) -> None:
        f = self.faults
        await self.close(f.close_code if f.close_code is not None else 1000, f.close_reason or "")

    async def _fault_drop(self) -> None:
        self.drop()

    async def _check_frame_faults(self) -> None:
        f = self.faults
        n = self.frames_in
        if f.drop_after_frames is not None and n >= f.drop_after_frames:
            self.drop()
        elif f.close_after_frames is not None and n >= f.close_after_frames:
            await self._fault_close()
        elif f.error is not None and f.error_after_frames is not None and n == f.error_after_frames:
            await self.inject_error()

    async def _loop(self) -> None:
        ws = self.ws
        assert ws is not None and self.record is not None
        rec = self.record
        echo = self.faults.echo
        check_frames = (
            self.faults.drop_after_frames is not None
            or self.faults.close_after_frames is not None
            or (self.faults.error is not None and self.faults.error_after_frames is not None)
        )
        while not self.closed:
            timeout = None
            if self._next_deadline != float("inf"):
                timeout = self._next_deadline - self.loop.time()
                if timeout <= 0:
                    await self._fire_due()
                    continue
            try:
                msg = await ws.receive(timeout)
            except TimeoutError:
                await self._fire_due()
                continue
            kind = msg.type
            if kind is WSMsgType.TEXT:
                self.frames_in += 1
                rec.add_frame_in("text", msg.data)
                if echo:
                    await self.send_text(msg.data)
                    await self.on_echoed_text(msg.data)
                else:
                    await self.on_text(msg.data)
            elif kind is WSMsgType.BINARY:
                self.frames_in += 1
                rec.add_frame_in("binary", msg.data)
                if echo:
                    await self.send_bytes(msg.data)
                else:
                    await self.on_binary(msg.data)
            elif kind is WSMsgType.CLOSE:
                code = msg.data or 1005
                reason = msg.extra or ""
                rec.set_close(code, reason, CLOSED_BY_CLIENT)
                rec.client_close_code, rec.client_close_reason = code, reason
                self.closed = True
                # Echo the client's close frame, as the providers' servers do.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close(code=code if code != 1005 else 1000, message=reason.encode())
                break
            else:  # CLOSING, CLOSED, ERROR: the connection is gone or broken
                exc = msg.data if kind is WSMsgType.ERROR else None
                code = getattr(exc, "code", None)
                if isinstance(code, int) and code != 1006:
                    # aiohttp itself closed the socket (e.g. 1009 message too big, 1002 protocol error).
                    self.closed = True
                    rec.set_close(code, utf8_truncate(str(exc)), CLOSED_BY_EMULATOR)
                else:
                    self._lost()
                break
            if self.closed:
                break
            if check_frames:
                await self._check_frame_faults()
            if self._next_deadline <= self.loop.time():
                await self._fire_due()


# A provider's token endpoint: (request, emulator settings, token store) -> the provider's answer.
TokenHandler = Callable[[web.Request, "EmulatorConfig", TokenStore], Awaitable[web.Response]]


class EmulatorOptions(Protocol):
    """What every emulator's options dataclass has: the operator keys it accepts."""

    api_keys: tuple[str, ...]


OptionsT = TypeVar("OptionsT", bound=EmulatorOptions)


def accepted_keys(keys: str | Iterable[str]) -> tuple[str, ...]:
    """Operator keys as given in an emulator's options (one string or any iterable of them), as a tuple."""
    return (keys,) if isinstance(keys, str) else tuple(keys)


@dataclass(frozen=True)
class Emulator(Generic[OptionsT]):
    """One emulated provider: what :func:`sttgate.emulators.app.create_app` serves for it, and what a gateway
    pointed at it needs (its WebSocket path and accepted keys). One per provider module, registered in ``app``;
    its settings are the module's own ``options`` dataclass (every field defaulted, ``api_keys`` among them)."""

    name: str  # the provider's name in the gateway (``?provider=``)
    session: type[BaseSession]
    ws_paths: tuple[str, ...]  # the first is the one a gateway connects to; each also under any path prefix
    token_method: str
    token_path: str  # also served under any path prefix
    options: Callable[[], OptionsT]  # the module's options dataclass, called for its defaults
    token: TokenHandler

    def api_keys(self, config: EmulatorConfig) -> tuple[str, ...]:
        """The operator keys this emulator accepts under ``config``."""
        return config.options(self).api_keys

    @property
    def ws_path(self) -> str:
        return self.ws_paths[0]
