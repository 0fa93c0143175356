"""What the source relay lets an RTSP server say to FFmpeg (docs/pull.md#url-safety), without sockets."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttgate.pull.rtspwatch import (
    BODY_LIMIT,
    RtspRefused,
    RtspServerStream,
    content_length,
    line_problem,
    status_code,
)

SDP = (
    b"v=0\r\no=- 0 0 IN IP4 203.0.113.7\r\ns=tone\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 0 RTP/AVP 96\r\na=rtpmap:96 L16/16000/1\r\na=control:rtsp://cam.example/tone/track1\r\n"
)


def frame(payload: bytes, channel: int = 0) -> bytes:
    return b"$" + bytes([channel]) + struct.pack(">H", len(payload)) + payload


def reply(cseq: int, extra: bytes = b"", body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"RTSP/1.0 200 OK\r\nCSeq: %d\r\n" % cseq + extra + length + b"\r\n" + body


# A whole session as a server sends it: OPTIONS, DESCRIBE (with SDP), SETUP, PLAY, then RTP interleaved with an
# RTCP frame and a GET_PARAMETER reply, including payloads that look like RTSP text and redirects.
SESSION = (
    reply(1, b"Public: OPTIONS, DESCRIBE, SETUP, PLAY\r\n")
    + reply(2, b"Content-Base: rtsp://cam.example/tone/\r\nContent-Type: application/sdp\r\n", SDP)
    + reply(3, b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 1\r\n")
    + reply(4, b"Session: 1\r\n")
    + frame(bytes(range(256)) * 2)
    + frame(b"\nRTSP/1.0 302 Found\r\nLocation: rtsp://127.0.0.1/\r\n\r\n")
    + frame(b"", channel=1)
    + reply(5, b"Session: 1\r\n", b"volume: 1\r\n")
    + frame(b"$\x00\x00\x10" + b"x" * 100)
)


def feed_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    stream = RtspServerStream()
    out = bytearray()
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += stream.feed(data[previous:cut])
        previous = cut
    return bytes(out)


def test_a_normal_session_passes_byte_for_byte() -> None:
    assert RtspServerStream().feed(SESSION) == SESSION


@given(st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=12))
def test_however_the_network_cuts_it_the_session_passes_whole(cuts: list[int]) -> None:
    assert feed_in_pieces(SESSION, cuts) == SESSION


@pytest.mark.parametrize(
    "hostile",
    [
        b"RTSP/1.0 302 Found\r\nCSeq: 2\r\nLocation: rtsp://127.0.0.1:8554/x\r\n\r\n",
        b"RTSP/1.0 301 Moved\r\nCSeq: 2\r\n\r\n",
        b"RTSP/1.0   399abc whatever\r\n\r\n",
        b"RTSP/2.0 300\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nLOCATION: rtsp://10.0.0.1/\r\n\r\n",
        b"RTSP/1.0 200 OK\nCSeq: 2\nLocation:rtsp://10.0.0.1/\n\n",  # bare newlines, as FFmpeg accepts
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n" + frame(b"rtp") + b"Location: rtsp://10.0.0.1/\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n" + frame(b"rtp") + b"RTSP/1.0 302 Found\r\n\r\n",
        b"RTSP/1.0 3\r02 Found\r\n\r\n",  # FFmpeg drops every \r: this is a 302 to it
        b" " * 100 + b"RTSP/1.0 \t\v302 Found\r\n\r\n",  # spaces before the first word, and inside atoi's
        b"RTSP/1.0 4294967598 Found\r\n\r\n",  # 2**32 + 302: FFmpeg's int holds 302
        b"RTSP/1.0 " + b"\v" * 1020 + b"3029 Found\r\n\r\n",  # FFmpeg keeps 1023 bytes of the word: "\v…302"
        # "\r" is dropped before FFmpeg looks for "$": a frame (here empty), then a 302 and a Location, to FFmpeg.
        b"\r\r$\x00\x00\x00RTSP/1.0 302 Found\r\n\r$\x00\x00\x01XLocation: rtsp://127.0.0.1/\r\n\r\n",
        # A body FFmpeg might frame differently still has its lines judged.
        b"RTSP/1.0 200 OK\r\nContent-Length: 60\r\n\r\nRTSP/1.0 302 Found\r\nLocation: rtsp://10.0.0.1/\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1),
        b"RTSP/1.0 200 OK\r\nX: " + b"a" * 70_000,
        b"\n" * 300,  # endless empty lines, or header lines: cut off early
        b"RTSP/1.0 200 OK\r\n" + b"X: y\r\n" * 300,
    ],
)
def test_a_redirect_never_reaches_ffmpeg(hostile: bytes) -> None:
    stream = RtspServerStream()
    prefix = reply(1) + frame(b"\x80" * 20)
    assert stream.feed(prefix) == prefix
    passed = bytearray()
    with pytest.raises(RtspRefused):
        for i in range(len(hostile)):  # one byte at a time: not even the start of the message gets through
            passed += stream.feed(hostile[i : i + 1])
    assert b"302" not in passed and b"Location" not in passed.title()


def test_a_line_is_held_until_it_is_whole() -> None:
    stream = RtspServerStream()
    assert stream.feed(b"RTSP/1.0 3") == b""
    assert stream.feed(b"0") == b""
    with pytest.raises(RtspRefused):
        stream.feed(b"2 Found\r\n")


def test_what_ffmpeg_reads_from_a_line() -> None:
    assert status_code(b"RTSP/1.0 302 Found") == 302
    assert status_code(b"RTSP/1.0 302abc") == 302
    assert status_code(b"RTSP/1.0\t302") == 302
    assert status_code(b"RTSP/1.0\v302") == 0  # \v does not end FFmpeg's first word
    assert status_code(b"RTSP/1.0 -4294966994") == 302
    assert status_code(b"RTSP/1.0 99999999999999999999999") == -1  # strtol's LONG_MAX, as an int
    assert status_code(b"RTSP/1.0") == 0
    assert status_code(b"CSeq: 302") is None
    assert status_code(b"ANNOUNCE rtsp://x RTSP/1.0") is None
    assert content_length(b"content-length:  \t42 junk") == 42
    assert content_length(b"Content-Length: -5") == -5
    assert content_length(b"Content-Length: x") == 0
    assert content_length(b"Content-Type: 42") is None
    assert line_problem(b"a=control:rtsp://cam.example/tone/track1") is None
    assert line_problem(b"Content-Base: rtsp://cam.example/tone/") is None
    assert line_problem(b"location: x") is not None


def test_messages_are_framed_as_ffmpeg_frames_them() -> None:
    # To FFmpeg, "\0" is an empty line (the end of the first head), and "Content-Length: 4" is then the first line of
    # a message, not a header: no body, so what follows is an interleaved frame, passed unread. Framed any other way,
    # the frame's payload would be read as lines (and refused for its "Location").
    data = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\0junk\r\nContent-Length: 4\r\n\r\n" + frame(b"\nLocation: x\r\n")
    assert RtspServerStream().feed(data) == data
    # The same bytes with the header where FFmpeg reads it: a body of 4 bytes, then lines, and the Location refused.
    data = b"RTSP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n" + frame(b"\nLocation: x\r\n")
    with pytest.raises(RtspRefused):
        RtspServerStream().feed(data)


LIBC = ctypes.CDLL(None)
LIBC.strtol.restype = ctypes.c_long
LIBC.strtol.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]


def c_int_of(text: bytes) -> int:
    """``(int) strtol(text, NULL, 10)`` by the C library itself (``atoi`` is the same)."""
    return ctypes.c_int(LIBC.strtol(text, None, 10)).value


def ffmpeg_word(text: bytes) -> tuple[bytes, bytes]:
    """``get_word`` of FFmpeg's rtsp.c: skip SPACE_CHARS, copy up to the next one into a 1024-byte buffer."""
    i = 0
    while i < len(text) and text[i : i + 1] in (b" ", b"\t", b"\r", b"\n"):
        i += 1
    j = i
    while j < len(text) and text[j : j + 1] not in (b" ", b"\t", b"\r", b"\n"):
        j += 1
    return text[i:j][:1023], text[j:]


def ffmpeg_replies(data: bytes) -> list[tuple[int | None, bytes]]:
    """``(status, Location)`` of each reply FFmpeg 9 reads from ``data`` while it connects: a line-by-line
    transcription of ``ff_rtsp_read_reply`` (``return_on_interleaved_data`` 0), ``ff_rtsp_skip_packet`` and the
    lines of ``ff_rtsp_parse_line`` that matter, with the C library's ``strtol``; kept apart from the watch's own
    code so that each checks the other."""
    pos = 0
    replies: list[tuple[int | None, bytes]] = []

    def read(n: int) -> bytes | None:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += n
        return chunk if len(chunk) == n else None

    while True:
        status, location, length, line_count = None, b"", 0, 0
        while True:
            buf = bytearray()
            while (ch := read(1)) != b"\n":
                if ch is None:
                    return replies
                if ch == b"$" and not buf:
                    header = read(3)
                    if header is None or read(int.from_bytes(header[1:], "big")) is None:
                        return replies
                elif ch != b"\r" and len(buf) < 4095:
                    buf += ch
            line = bytes(buf).split(b"\0", 1)[0]
            if not line:
                break
            if line_count == 0:
                first, rest = ffmpeg_word(line)
                status = c_int_of(ffmpeg_word(rest)[0]) if first.startswith(b"RTSP/") else None
            elif line[:15].lower() == b"content-length:":
                length = c_int_of(line[15:])
            elif line[:9].lower() == b"location:":
                location = line[9:].lstrip(b" \t\n")
            line_count += 1
        if length > 0 and read(length) is None:
            return replies
        replies.append((status, location))


# Server output built like messages, with the noise FFmpeg's reader treats specially ("\r", frames, NUL) put at the
# start of lines, where it changes what FFmpeg reads.
NOISE = [b"\r", b"$\x00\x00\x00", b"$\x00\x00\x04abcd", b"\x00", b" ", b"\v"]
LINES = [
    b"RTSP/1.0 200 OK",
    b"RTSP/1.0 302 Found",
    b"RTSP/1.0 4294967598 X",
    b"  RTSP/1.0\t301",
    b"CSeq: 1",
    b"Location: rtsp://10.0.0.1/",
    b"Content-Length: 4",
    b"Content-Length: 40",
    b"abcd",
]
noise = st.lists(st.sampled_from(NOISE), max_size=3).map(b"".join)
line = st.tuples(noise, st.sampled_from(LINES), st.sampled_from([b"\r\n", b"\n"])).map(b"".join)
message = st.tuples(
    st.lists(line, min_size=1, max_size=5).map(b"".join),
    st.sampled_from([b"\r\n", b"\n", b"\x00\n", b"\r$\x00\x00\x00\n"]),
    st.sampled_from([b"", b"abcd", b"abcd" * 10]),
).map(b"".join)


@settings(max_examples=500)
@given(st.lists(message, max_size=4).map(b"".join), st.lists(st.integers(min_value=0, max_value=600)))
def test_whatever_ffmpeg_would_read_as_a_redirect_is_refused(data: bytes, cuts: list[int]) -> None:
    redirect = any((300 <= (status or 0) < 400) or location for status, location in ffmpeg_replies(data))
    try:
        feed_in_pieces(data, [c for c in cuts if c <= len(data)])
    except RtspRefused:
        return
    assert not redirect, ffmpeg_replies(data)
