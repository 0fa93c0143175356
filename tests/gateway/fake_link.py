"""An in-memory :class:`~sttgate.gateway.upstream.Link` and a store stub: sessions and the relay without sockets."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sttgate.config import Settings
from sttgate.core.billing import LedgerWrite, Settlement
from sttgate.gateway.live import LiveSession
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.upstream import End, Frame, FrameKind
from sttgate.providers import get_provider
from sttgate.store import Principal, SessionEnd, SessionProgress, SettleRequest


class FakeLink:
    """One hop: frames fed by the test come out of ``receive``; what is sent is kept in ``sent``."""

    def __init__(self, on_text: Callable[[FakeLink, bytes], None] | None = None) -> None:
        self.inbox: asyncio.Queue[Frame] = asyncio.Queue()
        self.sent: list[tuple[FrameKind, bytes]] = []
        self.closed_with: tuple[int, str] | None = None
        self.on_text = on_text
        self.broken = False
        self.gone = False  # the connection ended (lost, or a protocol error): closed without a close of ours

    # what the peer does
    def feed(self, kind: FrameKind, data: bytes = b"", code: int = 0, reason: str = "") -> None:
        """A data frame is (kind, payload, None); an end is (kind, code, reason)."""
        self.inbox.put_nowait(
            (kind, data, None) if kind in (FrameKind.TEXT, FrameKind.BINARY) else (kind, code, reason)
        )

    def text(self, data: str) -> None:
        self.feed(FrameKind.TEXT, data.encode())

    def binary(self, data: bytes) -> None:
        self.feed(FrameKind.BINARY, data)

    def peer_close(self, code: int, reason: str = "") -> None:
        self.feed(FrameKind.CLOSE, b"", code, reason)

    # the Link protocol
    async def send(self, data: bytes, kind: int) -> None:
        self._check()
        self.sent.append((FrameKind(kind), data))
        if kind == FrameKind.TEXT and self.on_text is not None:
            self.on_text(self, data)

    async def receive(self) -> Frame:
        frame = await self.inbox.get()
        if frame[0] is FrameKind.LOST or frame[0] is FrameKind.ERROR:
            self.gone = True  # as aiohttp: the socket is closed after either
        return frame

    def ended(self, frame: Frame) -> End:
        return FrameKind(frame[0]), frame[1], frame[2]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)
            self.feed(FrameKind.CLOSING)  # like aiohttp: a pending receive learns the socket is closing

    @property
    def closed(self) -> bool:
        return self.closed_with is not None or self.gone

    def _check(self) -> None:
        if self.broken or self.closed:
            raise ConnectionResetError("gone")

    @property
    def audio(self) -> list[bytes]:
        return [data for kind, data in self.sent if kind is FrameKind.BINARY]


@dataclass
class FakeStore:
    """The ledger calls a live session makes; ``balance`` counts cycles (None: postpaid, never charged)."""

    balance: int | None = None
    fail: bool = False
    gate: asyncio.Event | None = None  # when set, a ledger write waits for it (a write in flight)
    charges: list[int] = field(default_factory=list)  # the cycles each synchronous charge asked for
    writes: list[LedgerWrite] = field(default_factory=list)  # every write asked for, in flight or done
    flushed: list[SessionProgress] = field(default_factory=list)
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    async def settle_cycles(self, session_id: str, account_id: str, price_nanos: int, write: LedgerWrite) -> Settlement:
        """``Slots.settle_cycles`` in cycles: the charge all or nothing, then the hold if the balance has it."""
        self.writes.append(write)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("database unavailable")
        assert self.balance is not None, "a postpaid session is never charged"
        if write.charged:
            self.charges.append(write.charged)
            if self.balance < write.charged:
                return Settlement(False)
            self.balance -= write.charged
        held = 0 < write.hold <= self.balance
        if held:
            self.balance -= write.hold
        return Settlement(True, held)

    async def settle_cycles_batch(self, requests: list[SettleRequest]) -> list[Settlement | BaseException]:
        outcomes = []
        for r in requests:
            try:
                outcomes.append(await self.settle_cycles(r.session_id, r.account_id, r.price_nanos, r.write))
            except OSError as exc:
                outcomes.append(exc)
        return outcomes

    async def flush_progress(self, updates: list[SessionProgress]) -> None:
        self.flushed.extend(updates)

    async def end_sessions(self, ends: list[SessionEnd]) -> set[str]:
        for end in ends:
            row = dataclasses.asdict(end)
            self.ended[row.pop("session_id")] = row
        return set()

    async def record_provider_figures_batch(self, rows: list[tuple[str, float | None, float | None]]) -> None:
        for session_id, audio_seconds, session_seconds in rows:
            self.figures[session_id] = (audio_seconds, session_seconds)


def make_session(
    store: FakeStore,
    provider: str = "assemblyai",
    forwarded: str = "sample_rate=16000",
    token_cap: int | None = None,
    holds: int = 0,
    **settings: Any,
) -> tuple[LiveSession, FakeLink, SessionManager]:
    """A session on a fake link and store; ``holds``: the cycles its slot held ahead (docs/billing.md#holds)."""
    values: dict[str, Any] = {"database_url": "sqlite:///unused.db", "finish_timeout_seconds": 0.5, **settings}
    manager = SessionManager(Settings.model_validate(values), store, GatewayMetrics(), "test")  # type: ignore[arg-type]
    link = FakeLink()
    balance = None if store.balance is None else store.balance * 1000
    principal = Principal("acct", None, True, 1, balance, max_session_seconds=token_cap)
    live = LiveSession(
        manager,
        session_id="s1",
        principal=principal,
        provider=get_provider(provider),
        kind="websocket",
        forwarded=forwarded,
        upstream=link,
        holds=holds,
    )
    manager.register(live)
    return live, link, manager
