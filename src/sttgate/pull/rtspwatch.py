"""What an RTSP server's bytes mean to FFmpeg, read before FFmpeg reads them (docs/pull.md#url-safety).

FFmpeg's RTSP demuxer follows a ``3xx`` answer to whatever host its ``Location`` names, by opening a new connection
that the gateway never checked. The source relay (:mod:`sttgate.pull.relay`) therefore passes the server's side of
an RTSP connection through :class:`RtspServerStream`, which refuses any message that could redirect FFmpeg before a
byte of it reaches FFmpeg.

Sans-I/O: bytes in, bytes safe to pass out (or :class:`RtspRefused`). The framing copies FFmpeg's own reader
(``ff_rtsp_read_reply``), so that both see the same messages: lines end at ``\\n``, every ``\\r`` is dropped, a line
is a C string (cut at the first NUL, and at 4095 bytes), an empty line ends a head, a ``$`` at the start of a line
is an interleaved frame (``$``, channel, 16-bit length, payload) and is passed as is, and the last
``Content-Length:`` among a head's lines after its first (``strtol``, case-insensitive name) says how many body
bytes follow. To leave no room for a difference between the two readers, every text line is judged, the body's
lines as well as the head's: a head line that is a status line with a 3xx code, or a ``Location:`` header, refuses
the connection, and so does a body line that starts like any status line or like a ``Location:`` header. Legitimate
RTSP bodies (SDP, ``GET_PARAMETER`` text) contain neither. Heads are bounded (a server sending endless header lines
is cut off), and bodies are judged a block at a time, so a hostile server costs the event loop little per byte.
"""

from __future__ import annotations

import enum
import re

# FFmpeg reads a line into a 4096-byte buffer (MAX_URL_SIZE) and drops what does not fit.
LINE_KEEP = 4095
# Longest text line held while waiting for its end, and most head text (empty lines before it included) per message;
# longer means a hostile or broken server.
LINE_LIMIT = 64 * 1024
HEAD_LIMIT = 64 * 1024
HEAD_LINES = 256  # lines per head, empty ones before it included (real heads have a dozen)
# RTSP bodies are SDP or parameter text: kilobytes. Larger is refused rather than passed unjudged.
BODY_LIMIT = 1024 * 1024

_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]*)")
# A body line (``\r`` already dropped) that starts like a status line or a Location header, in any case.
_BODY_DANGER = re.compile(rb"(?:^|\n)[ \t\n\v\f]*(?:RTSP/|location:)", re.IGNORECASE)


class RtspRefused(Exception):
    """The server sent something FFmpeg must not see; the relay closes both sides."""


def _c_string(raw: bytes) -> bytes:
    """A received line as FFmpeg holds it: ``\\r`` dropped, cut at 4095 bytes, then cut at the first NUL."""
    return raw.replace(b"\r", b"")[:LINE_KEEP].split(b"\0", 1)[0]


def _c_int(text: bytes) -> int:
    """C ``(int) strtol(text, NULL, 10)`` (what ``atoi`` is, and what FFmpeg stores in its ``int`` fields): leading
    white space, a sign, digits; clamped to a 64-bit long, then cut to 32 bits. 0 when there is no number."""
    match = _STRTOL.match(text)
    assert match is not None
    sign, digits = match.groups()
    value = int(digits) if digits else 0
    value = max(-(2**63), min(2**63 - 1, -value if sign == b"-" else value))
    return (value + 2**31) % 2**32 - 2**31


def _word(text: bytes) -> tuple[bytes, bytes]:
    """FFmpeg's ``get_word`` into a 1024-byte buffer: skip spaces, tabs and newlines, then up to the next one."""
    text = text.lstrip(b" \t\n")
    end = min((i for i in (text.find(c) for c in (b" ", b"\t", b"\n")) if i >= 0), default=len(text))
    return text[:end][:1023], text[end:]


def status_code(line: bytes) -> int | None:
    """The status of a response line as FFmpeg reads it (first word ``RTSP/…``, then ``atoi`` of the second)."""
    first, rest = _word(line)
    if not first.startswith(b"RTSP/"):
        return None
    return _c_int(_word(rest)[0])


def line_problem(line: bytes) -> str | None:
    """Why this head line of an RTSP server must not reach FFmpeg, or None. ``line`` is as :func:`_c_string` makes
    it."""
    if line[:9].lower() == b"location:":
        return f"RTSP Location header refused ({line[:200].decode('latin-1')!r})"
    if b"RTSP/" not in line:  # FFmpeg skips any run of spaces before the status line's first word
        return None
    code = status_code(line)
    if code is not None and 300 <= code < 400:
        return f"RTSP redirect refused ({line[:200].decode('latin-1')!r})"
    return None


def content_length(line: bytes) -> int | None:
    """The value of a ``Content-Length:`` line as FFmpeg reads it, or None for any other line."""
    if line[:15].lower() != b"content-length:":
        return None
    return _c_int(line[15:])


class _State(enum.Enum):
    LINE_START = enum.auto()  # at the start of a line (of a head, or between messages)
    LINE = enum.auto()  # inside a text line
    FRAME_HEADER = enum.auto()  # inside the 4-byte header of an interleaved frame
    FRAME = enum.auto()  # inside an interleaved frame's payload
    BODY = enum.auto()  # inside a message body (judged line by line too)


class RtspServerStream:
    """The server-to-FFmpeg half of one RTSP connection: feed it what the server sent, forward what it returns."""

    def __init__(self) -> None:
        self._state = _State.LINE_START
        self._pending = bytearray()  # bytes of the current line or frame header not yet judged
        self._remaining = 0  # payload bytes left in the current frame, or body bytes left in the current message
        self._in_head = False  # the current head's first line has been read
        self._head_length = 0  # the current head's Content-Length (its last one)
        self._head_text = 0  # bytes of head text read since the last whole head
        self._head_lines = 0  # and lines

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` that may go to FFmpeg now; a line is held until it is whole and judged.

        Raises :class:`RtspRefused` on a redirect, a ``Location``, an oversized line or body.
        """
        out = bytearray()
        i = 0
        while i < len(data):
            state = self._state
            if state is _State.FRAME:
                n = min(self._remaining, len(data) - i)
                out += data[i : i + n]
                i += n
                self._remaining -= n
                if self._remaining == 0:
                    self._state = _State.LINE_START
            elif state is _State.FRAME_HEADER:
                self._pending.append(data[i])
                i += 1
                if len(self._pending) == 4:
                    out += self._pending
                    self._remaining = int.from_bytes(self._pending[2:4], "big")
                    self._pending.clear()
                    self._state = _State.FRAME if self._remaining else _State.LINE_START
            elif state is _State.LINE_START and data[i] == 0x24:  # "$": a frame, also inside a head
                self._state = _State.FRAME_HEADER
            elif state is _State.BODY:
                i = self._take_body(data, i, out)
            else:
                i = self._take_line(data, i, out)
        return bytes(out)

    def _take_line(self, data: bytes, i: int, out: bytearray) -> int:
        """Read up to the end of a head's text line; judge it once whole. Returns the new index."""
        if not self._pending.strip(b"\r"):
            # FFmpeg drops "\r" as it reads, so a "$" after nothing but "\r" still starts a line: it is a frame.
            j = i
            while j < len(data) and data[j] == 0x0D:
                j += 1
            if j < len(data) and data[j] == 0x24:
                out += self._pending + data[i:j]
                self._pending.clear()
                self._state = _State.FRAME_HEADER
                return j
        newline = data.find(b"\n", i)
        stop = len(data) if newline < 0 else newline + 1
        self._pending += data[i:stop]
        self._head_text += stop - i
        if self._head_text > HEAD_LIMIT:
            raise RtspRefused("RTSP message head longer than the relay accepts")
        if newline < 0:
            self._state = _State.LINE
            return stop
        line = _c_string(bytes(self._pending[:-1]))
        problem = line_problem(line)
        if problem is not None:
            raise RtspRefused(problem)
        self._head_lines += 1
        if self._head_lines > HEAD_LINES:
            raise RtspRefused("RTSP message head longer than the relay accepts")
        out += self._pending
        self._pending.clear()
        self._head_line(line)
        return stop

    def _take_body(self, data: bytes, i: int, out: bytearray) -> int:
        """Read body bytes; pass every whole line (and the body's last bytes) once judged. Returns the new index."""
        end = min(len(data), i + self._remaining)
        self._remaining -= end - i
        if self._remaining == 0:
            cut = end
        else:
            last = data.rfind(b"\n", i, end)
            cut = last + 1 if last >= 0 else i
        if cut == i and self._remaining:
            self._pending += data[i:end]
            block = b""
        else:
            block = bytes(self._pending) + data[i:cut]
            self._pending = bytearray(data[cut:end])
        if len(self._pending) > LINE_LIMIT:
            raise RtspRefused("RTSP line longer than the relay accepts")
        if _BODY_DANGER.search(block.replace(b"\r", b"")):
            raise RtspRefused("RTSP body with a status line or a Location refused")
        out += block
        if self._remaining == 0:
            self._state = _State.LINE_START
        return end

    def _head_line(self, line: bytes) -> None:
        """A whole line outside a body: a head's first, middle or last (empty) line."""
        if not line:
            if self._in_head:
                self._in_head = False
                self._head_text = self._head_lines = 0
                body = self._head_length
                self._head_length = 0
                if body > BODY_LIMIT:
                    raise RtspRefused(f"RTSP body of {body} bytes refused")
                if body > 0:
                    self._remaining = body
                    self._state = _State.BODY
                    return
            self._state = _State.LINE_START
            return
        if self._in_head:  # FFmpeg reads headers from the second line on; the first is only a status or request
            length = content_length(line)
            if length is not None:
                self._head_length = length
        self._in_head = True
        self._state = _State.LINE_START
