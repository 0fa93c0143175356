"""A sans-I/O WebSocket frame scanner for a relay that forwards frames without re-framing them.

A relay does not need to decode what it only passes on: a client's frames arrive masked and are already valid
client-to-server frames; a provider's frames are unmasked server frames. :class:`FrameScanner` reads one direction
of a connection incrementally (bytes in, events out) and says, per frame, which bytes to forward unchanged, while it
checks every frame header before any of that frame's bytes are released (RFC 6455 §5):

- ``(Event.HEADER, FrameHeader, None)``: a data frame's header was read and validated (binary audio is metered from
  its ``length`` alone);
- ``(Event.DATA, chunk, done)``: bytes of that frame, header included, to forward unchanged; ``done`` on its last
  bytes, so the caller knows where a frame boundary is (its own frames, pong and close, go in only there);
- ``(Event.CONTROL, opcode, payload)``: a whole ping or pong, unmasked (answered per hop, never forwarded);
- ``(Event.CLOSE, code, reason)``: a whole close frame, unmasked and checked (1005 when it carried no status);
- ``(Event.TEXT, payload, raw)``: with ``surface_text``, a whole text message, unmasked, with the raw bytes of its
  frames to forward once the caller has read it (a meter that reads text, e.g. ElevenLabs ``input_audio_chunk``);
- ``(Event.ERROR, code, reason)``: the stream broke the rules; the scanner stops. ``1009`` for a frame or a
  fragmented message above ``max_size`` payload bytes, ``1002`` for everything else: a reserved bit set (no
  extension is ever negotiated), an unknown opcode, a fragmented or oversized (> 125 bytes) control frame, a
  continuation without a message or a new message inside one, a client frame without a mask or a server frame with
  one, a non-minimal or out-of-range length, a close frame of one byte, with a code that may not be sent or a reason
  that is not UTF-8.

After a close frame the scanner ignores whatever follows (nothing may follow it). Text payloads are never checked as
UTF-8 on the way through: the relay forwards bytes, and the endpoints judge them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final, NamedTuple

from sttgate.core import closecodes

# Unmask (or mask: XOR is its own inverse) ``data`` in place with the 4-byte ``key``. The shell may pass a faster
# implementation with this signature (aiohttp's C helper has it).
Unmask = Callable[[bytes, bytearray], None]


def xor_unmask(key: bytes, data: bytearray) -> None:
    """The pure-Python fallback for :data:`Unmask`: one big-integer XOR over the whole payload."""
    size = len(data)
    if size:
        keystream = (key * (size // 4 + 1))[:size]
        data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(keystream, "little")).to_bytes(size, "little")


class Opcode(IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class Event(IntEnum):
    HEADER = 0
    DATA = 1
    CONTROL = 2
    CLOSE = 3
    TEXT = 4
    ERROR = 5


# Every event is a 3-tuple ``(Event, a, b)``; see the module docstring for what ``a`` and ``b`` are per kind.
ScanEvent = tuple[Event, Any, Any]

PROTOCOL_ERROR: Final = 1002
MESSAGE_TOO_BIG: Final = closecodes.MESSAGE_TOO_BIG.code
MAX_CONTROL_PAYLOAD: Final = 125

_OPCODES: Final = frozenset(int(op) for op in Opcode)
_HEADER, _PASS, _HOLD_CONTROL, _HOLD_TEXT = range(4)  # what the scanner is reading
_BROKEN, _HELD, _PASSED = range(3)  # how a header was taken
_DATA = Event.DATA
_HEADER_EVENT = Event.HEADER


class FrameHeader(NamedTuple):
    """One frame's header as it was on the wire (``raw``), validated (a tuple: built once per frame)."""

    opcode: int  # the frame's own opcode (0 for a continuation)
    fin: bool
    rsv: int  # the three reserved bits (always 0 once validated)
    mask: bytes | None  # the 4-byte masking key of a client frame
    length: int  # payload bytes
    raw: bytes

    @property
    def masked(self) -> bool:
        return self.mask is not None


class FrameScanner:
    """Scans one direction: ``masked`` for client-to-server frames (which must be masked), else server-to-client
    (which must not be). ``max_size`` caps each frame's payload and each fragmented message's total payload."""

    __slots__ = (
        "_done",
        "_head",
        "_held",
        "_hold_fin",
        "_hold_mask",
        "_hold_opcode",
        "_masked",
        "_max_size",
        "_message",
        "_message_size",
        "_message_text",
        "_mode",
        "_raw",
        "_remaining",
        "_surface_text",
        "_unmask",
        "between",
        "whole",
    )

    def __init__(self, *, masked: bool, max_size: int, surface_text: bool = False, unmask: Unmask = xor_unmask):
        self._masked = masked
        self._max_size = max_size
        self._surface_text = surface_text
        self._unmask = unmask
        self._mode = _HEADER
        self._head = bytearray()  # a header split across reads (at most 14 bytes)
        self._remaining = 0  # payload bytes of the current frame still to come
        self._hold_opcode = 0
        self._hold_fin = True
        self._hold_mask: bytes | None = None
        self._held = bytearray()  # a control frame's or a surfaced text frame's payload, still masked
        self._raw = bytearray()  # a surfaced text message's frames, as they were on the wire
        self._message = bytearray()  # a surfaced text message's payload so far, unmasked
        self._message_size = -1  # payload bytes of the fragmented message in progress; -1: none in progress
        self._message_text = False
        self._done = False
        # Between frames, with no header begun, no fragmented message in progress and the scan not done: the state
        # in which :attr:`whole` and :meth:`run` may take a read as it is. Kept by :meth:`feed` (the only mutator), a
        # plain attribute because the relay reads it for every frame.
        self.between = True
        # The header size of ``data`` when it is exactly one whole, valid, unfragmented frame the caller may take
        # without :meth:`feed` (a relay's usual read: one audio frame up, one transcript down); else 0. Only binary
        # frames qualify, and unmasked text frames when text is surfaced (a text frame's payload is then
        # ``data[header:]``); the payload's length is ``len(data) - header``. The scanner's state is not changed: a
        # whole frame read between frames leaves it between frames, and a caller that declines one passes it to
        # :meth:`feed` instead. Every rule :meth:`feed` checks on such a frame holds when this returns non-zero.
        # One specialised function per direction, chosen here: it runs for every relayed frame.
        self.whole: Callable[[bytes], int] = self._whole_client if masked else self._whole_server

    @property
    def at_boundary(self) -> bool:
        """Between frames of the forwarded stream: a frame of the relay's own may go in now. A header, a surfaced
        text message or a control frame in progress is not forwarded as it arrives, so it does not count."""
        return self._mode != _PASS

    @property
    def in_message(self) -> bool:
        """A fragmented data message is in progress (its next frame must be a continuation)."""
        return self._message_size >= 0

    @property
    def done(self) -> bool:
        """A close frame or an error ended the scan: further bytes are ignored."""
        return self._done

    def _whole_client(self, data: bytes) -> int:
        """:attr:`whole` of a client-to-server scanner: a masked binary frame (a masked text frame is not taken: a
        text meter must read it unmasked, through :meth:`feed`)."""
        if not self.between:
            return 0
        end = len(data)
        if end < 6 or data[0] != 0x82:
            return 0
        length = data[1] ^ 0x80  # the mask bit must be set: a frame without it comes out >= 128 and is not taken
        if length < 126:
            size = 6
        elif length == 126 and end >= 8:
            length = (data[2] << 8) | data[3]
            if length < 126:
                return 0
            size = 8
        else:
            return 0
        if size + length != end or length > self._max_size:
            return 0
        return size

    def _whole_server(self, data: bytes) -> int:
        """:attr:`whole` of a server-to-client scanner: an unmasked binary frame, or text when text is surfaced."""
        if not self.between:
            return 0
        end = len(data)
        if end < 2:
            return 0
        b0 = data[0]
        if b0 != 0x82 and (b0 != 0x81 or not self._surface_text):
            return 0
        length = data[1]  # the mask bit must be clear: a masked frame comes out >= 128 and is not taken
        if length < 126:
            size = 2
        elif length == 126 and end >= 4:
            length = (data[2] << 8) | data[3]
            if length < 126:
                return 0
            size = 4
        else:
            return 0
        if size + length != end or length > self._max_size:
            return 0
        return size

    def run(self, data: bytes) -> list[tuple[int, int]]:
        """:meth:`whole` for a read of several whole frames (a relay that fell behind reads a few audio frames at
        once): per frame, where its payload starts and where it ends, when ``data`` is exactly a run of frames each
        of which :meth:`whole` would take; else ``[]``. The scanner's state is not changed either."""
        frames: list[tuple[int, int]] = []
        if not self.between:
            return frames
        masked = self._masked
        text = not masked and self._surface_text
        end = len(data)
        pos = 0
        while pos < end:
            if end - pos < 2:
                return []
            b0 = data[pos]
            b1 = data[pos + 1]
            if (b0 != 0x82 and (b0 != 0x81 or not text)) or (b1 >= 0x80) != masked:
                return []
            length = b1 & 0x7F
            start = pos + (6 if masked else 2)
            if length == 126:
                if end - pos < 4:
                    return []
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    return []
                start += 2
            elif length == 127:
                return []
            pos = start + length
            if pos > end or length > self._max_size:
                return []
            frames.append((start, pos))
        return frames

    def feed(self, data: bytes) -> list[ScanEvent]:
        """Scan the next bytes of the stream; the events they complete, in order."""
        events = self._feed(data)
        self.between = self._mode == _HEADER and not self._head and self._message_size < 0 and not self._done
        return events

    def _feed(self, data: bytes) -> list[ScanEvent]:
        events: list[ScanEvent] = []
        if self._done:
            return events
        if self._mode == _HEADER and not self._head and self._message_size < 0:
            # The usual read: exactly one whole, unfragmented binary frame (audio). Same rules, fewer steps.
            end = len(data)
            if end > 6 and data[0] == 0x82:
                b1 = data[1]
                length = b1 & 0x7F
                masked = b1 >= 0x80
                if length < 126 and masked == self._masked:
                    size = 6 if masked else 2
                    if size + length == end and length <= self._max_size:
                        mask = data[2:6] if masked else None
                        events.append((_HEADER_EVENT, FrameHeader(2, True, 0, mask, length, data[:size]), None))
                        events.append((_DATA, data, True))
                        return events
                elif length == 126 and masked == self._masked:
                    size = 8 if masked else 4
                    length = (data[2] << 8) | data[3]
                    if size + length == end and 126 <= length <= self._max_size:
                        mask = data[4:8] if masked else None
                        events.append((_HEADER_EVENT, FrameHeader(2, True, 0, mask, length, data[:size]), None))
                        events.append((_DATA, data, True))
                        return events
        view = memoryview(data)
        pos = 0
        end = len(data)
        start = -1  # where the frame being passed began in this read (its header too), -1: before this read
        while pos < end:
            mode = self._mode
            if mode == _PASS:
                remaining = self._remaining
                if remaining <= end - pos:  # the frame ends in this read
                    stop = pos + remaining
                    self._remaining = 0
                    self._mode = _HEADER
                    last = True
                else:
                    stop = end
                    self._remaining = remaining - (end - pos)
                    last = False
                if start <= 0 and stop == end and (start == 0 or pos == 0):
                    events.append((_DATA, data, last))  # the whole read is this frame's: no slice
                else:
                    events.append((_DATA, view[pos if start < 0 else start : stop], last))
                pos = stop
                start = -1
                continue
            if mode != _HEADER:
                take = min(self._remaining, end - pos)
                chunk = view[pos : pos + take]
                self._held += chunk
                if mode == _HOLD_TEXT:
                    self._raw += chunk
                self._remaining -= take
                pos += take
                if self._remaining == 0 and not self._held_complete(events, mode):
                    return events
                continue
            # A header: whole in this read (the usual case), or gathered across reads.
            head = self._head
            if head:
                need = _header_size(head[0], head[1]) if len(head) >= 2 else 2
                while len(head) < need and pos < end:
                    take = min(need - len(head), end - pos)
                    head += view[pos : pos + take]
                    pos += take
                    if len(head) == 2:
                        need = _header_size(head[0], head[1])
                if len(head) < need:
                    return events
                raw = bytes(head)
                head.clear()
                start = -1
            else:
                if end - pos < 2:
                    head += view[pos:end]
                    return events
                need = _header_size(data[pos], data[pos + 1])
                if end - pos < need:
                    head += view[pos:end]
                    return events
                raw = bytes(view[pos : pos + need])
                start = pos
                pos += need
            taken = self._header(raw, events)
            if taken == _BROKEN:
                self._done = True
                return events
            if taken == _PASSED:
                if self._mode == _HEADER:  # an empty data frame: its header is the whole frame
                    events.append((Event.DATA, raw, True))
                elif start < 0 or pos == end:  # the payload starts in a later read: forward the header now
                    events.append((Event.DATA, raw, False))
            elif self._done:
                return events
        return events

    def _header(self, raw: bytes, events: list[ScanEvent]) -> int:
        """Validate one header and enter the mode of its payload: ``_PASSED`` for a data frame passed through (its
        HEADER event added), ``_HELD`` for a frame held here, ``_BROKEN`` (an ERROR event added) if it breaks a rule."""
        b0 = raw[0]
        b1 = raw[1]
        fin = bool(b0 & 0x80)
        rsv = (b0 >> 4) & 0x7
        opcode = b0 & 0x0F
        masked = bool(b1 & 0x80)
        length = b1 & 0x7F
        offset = 2
        if length == 126:
            length = int.from_bytes(raw[2:4], "big")
            offset = 4
            if length < 126:
                return _error(events, PROTOCOL_ERROR, "non-minimal frame length")
        elif length == 127:
            length = int.from_bytes(raw[2:10], "big")
            offset = 10
            if length >> 63:
                return _error(events, PROTOCOL_ERROR, "frame length out of range")
            if length < 0x10000:
                return _error(events, PROTOCOL_ERROR, "non-minimal frame length")
        if rsv:
            return _error(events, PROTOCOL_ERROR, "reserved bits set")
        if opcode not in _OPCODES:
            return _error(events, PROTOCOL_ERROR, "unknown opcode")
        if masked != self._masked:
            return _error(events, PROTOCOL_ERROR, "client frame not masked" if self._masked else "server frame masked")
        mask = raw[offset : offset + 4] if masked else None
        if opcode >= 8:
            if not fin:
                return _error(events, PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                return _error(events, PROTOCOL_ERROR, "control frame too long")
            self._hold(_HOLD_CONTROL, opcode, fin, mask, length)
            if length == 0:
                self._held_complete(events, _HOLD_CONTROL)  # may end the scan (a close frame)
            return _HELD
        if opcode == Opcode.CONTINUATION:
            if self._message_size < 0:
                return _error(events, PROTOCOL_ERROR, "continuation without a message")
            size = self._message_size + length
            text = self._message_text
        else:
            if self._message_size >= 0:
                return _error(events, PROTOCOL_ERROR, "new message inside a fragmented message")
            size = length
            text = opcode == Opcode.TEXT
        if size > self._max_size:
            return _error(events, MESSAGE_TOO_BIG, closecodes.MESSAGE_TOO_BIG.reason)
        self._message_size = -1 if fin else size
        self._message_text = text
        if text and self._surface_text:
            self._raw += raw
            self._hold(_HOLD_TEXT, opcode, fin, mask, length)
            if length == 0:
                self._held_complete(events, _HOLD_TEXT)
            return _HELD
        events.append((Event.HEADER, FrameHeader(opcode, fin, rsv, mask, length, raw), None))
        if length:
            self._mode = _PASS
            self._remaining = length
        return _PASSED

    def _hold(self, mode: int, opcode: int, fin: bool, mask: bytes | None, length: int) -> None:
        self._mode = mode
        self._hold_opcode = opcode
        self._hold_fin = fin
        self._hold_mask = mask
        self._remaining = length
        self._held.clear()

    def _held_complete(self, events: list[ScanEvent], mode: int) -> bool:
        """A held frame's payload is all here: surface it; False (the scan is over) after a close or an error."""
        self._mode = _HEADER
        payload = self._held
        if self._hold_mask is not None:
            self._unmask(self._hold_mask, payload)
        if mode == _HOLD_TEXT:
            self._message += payload
            payload.clear()
            if self._hold_fin:
                events.append((Event.TEXT, bytes(self._message), bytes(self._raw)))
                self._message.clear()
                self._raw.clear()
            return True
        opcode = self._hold_opcode
        data = bytes(payload)
        payload.clear()
        if opcode != Opcode.CLOSE:
            events.append((Event.CONTROL, opcode, data))
            return True
        self._done = True
        close = parse_close(data)
        if close is None:
            _error(events, PROTOCOL_ERROR, "invalid close frame")
        else:
            events.append((Event.CLOSE, close[0], close[1]))
        return False


def _error(events: list[ScanEvent], code: int, reason: str) -> int:
    events.append((Event.ERROR, code, reason))
    return _BROKEN


def _header_size(b0: int, b1: int) -> int:
    """The size of a header from its first two bytes: 2, plus the extended length, plus the masking key."""
    length = b1 & 0x7F
    size = 2 if length < 126 else 4 if length == 126 else 10
    return size + 4 if b1 & 0x80 else size


def parse_close(payload: bytes) -> tuple[int, str] | None:
    """A close frame's code and reason (1005 and "" when it has no status); ``None`` when it may not be accepted: one
    byte long, a code that may not be sent (RFC 6455 §7.4), or a reason that is not UTF-8."""
    if not payload:
        return closecodes.NO_STATUS, ""
    if len(payload) == 1:
        return None
    code = int.from_bytes(payload[:2], "big")
    if not closecodes.may_send(code):
        return None
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return code, reason


def encode_frame(opcode: int, payload: bytes, *, mask: bytes | None = None, unmask: Unmask = xor_unmask) -> bytes:
    """One whole (``fin``) frame: a server frame, or with a 4-byte ``mask`` a client frame (payload masked)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, size | (0x80 if mask else 0)))
    elif size < 0x10000:
        head = bytes((0x80 | opcode, 126 | (0x80 if mask else 0))) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127 | (0x80 if mask else 0))) + size.to_bytes(8, "big")
    if mask is None:
        return head + payload
    body = bytearray(payload)
    unmask(mask, body)
    return head + mask + body


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload: the code, then the reason cut to what a control frame can carry."""
    return code.to_bytes(2, "big") + closecodes.clip_reason(reason).encode("utf-8")
