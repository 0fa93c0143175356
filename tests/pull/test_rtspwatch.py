"""What the source relay lets an RTSP server say to FFmpeg (docs/pull.md#url-safety), without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
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
