"""The frame scanner (sttgate.core.frames) against a reference parser: websockets' sans-I/O protocol.

Random frame sequences (fragmented messages, control frames between fragments, a close at the end) are encoded, cut at
random byte boundaries and fed to the scanner; the same bytes go to ``websockets.protocol.Protocol`` in one piece. The
frames, their payloads and the error (close code) must be the same, and the bytes the scanner says to forward must be
exactly the data frames' bytes as they were on the wire.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import CLIENT, SERVER, Protocol

from sttgate.core.frames import (
    Event,
    FrameScanner,
    Opcode,
    close_payload,
    encode_frame,
    parse_close,
    xor_unmask,
)

MAX_SIZE = 1000


@dataclass(frozen=True)
class Wire:
    """One frame to put on the wire, any bits allowed."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bytes | None = None

    def encode(self) -> bytes:
        size = len(self.payload)
        b0 = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        m = 0x80 if self.mask is not None else 0
        if size < 126:
            head = bytes((b0, m | size))
        elif size < 0x10000:
            head = bytes((b0, m | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((b0, m | 127)) + size.to_bytes(8, "big")
        if self.mask is None:
            return head + self.payload
        body = bytearray(self.payload)
        xor_unmask(self.mask, body)
        return head + self.mask + body

    @property
    def control(self) -> bool:
        return self.opcode >= 8


masks = st.binary(min_size=4, max_size=4)
controls = st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=10).map(lambda b: b * 12))


@st.composite
def messages(draw: st.DrawFn, masked: bool) -> list[Wire]:
    """One data message in 1–4 fragments, maybe with pings/pongs between its fragments, as frames."""
    text = draw(st.booleans())
    if text:
        payload = (draw(st.text(max_size=20)) * draw(st.integers(1, 15))).encode()
    else:
        payload = draw(st.randoms()).randbytes(draw(st.integers(0, 400)))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[Wire] = []
    for i, part in enumerate(parts):
        if i:
            for op, data in draw(st.lists(controls, max_size=2)):
                frames.append(Wire(op, data, mask=draw(masks) if masked else None))
        opcode = (Opcode.TEXT if text else Opcode.BINARY) if i == 0 else Opcode.CONTINUATION
        frames.append(Wire(opcode, part, fin=i == len(parts) - 1, mask=draw(masks) if masked else None))
    return frames


@st.composite
def streams(draw: st.DrawFn, masked: bool) -> list[Wire]:
    frames: list[Wire] = []
    for message in draw(st.lists(messages(masked), max_size=6)):
        frames += message
        for op, data in draw(st.lists(controls, max_size=1)):
            frames.append(Wire(op, data, mask=draw(masks) if masked else None))
    if draw(st.booleans()):
        code = draw(st.sampled_from([1000, 1001, 1003, 1008, 1011, 1014, 3000, 4002, 4999]))
        reason = draw(st.text(max_size=30))
        frames.append(Wire(Opcode.CLOSE, close_payload(code, reason), mask=draw(masks) if masked else None))
    return frames


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def scan(
    chunks: list[bytes], *, masked: bool, surface_text: bool = False, take_whole: bool = False
) -> tuple[list[tuple], bytes]:
    """Feed the scanner; the frames it reports as ``(opcode, payload, fin)`` (a surfaced text message as one frame),
    the error as ``("error", code)``, and the bytes it says to forward. With ``take_whole``, as the relay does: a read
    that :meth:`FrameScanner.whole` or :meth:`FrameScanner.run` says is whole frames is taken as it is, without
    ``feed``."""
    scanner = FrameScanner(masked=masked, max_size=MAX_SIZE, surface_text=surface_text)
    out: list[tuple] = []
    forwarded = bytearray()
    frame = bytearray()
    header = None
    for chunk in chunks:
        size = scanner.whole(chunk) if take_whole else 0
        frames = [(size, len(chunk))] if size else scanner.run(chunk) if take_whole else []
        if frames:
            done = 0
            for start, end in frames:
                payload = bytearray(chunk[start:end])
                if masked:
                    xor_unmask(chunk[start - 4 : start], payload)
                kind = "text" if chunk[done] == 0x81 else Opcode.BINARY
                out.append((kind, bytes(payload), True))
                done = end
            forwarded += chunk
            continue
        for kind, a, b in scanner.feed(chunk):
            if kind is Event.HEADER:
                assert header is None
                header = a
                assert header.raw and not header.rsv and header.masked == masked
            elif kind is Event.DATA:
                assert header is not None
                frame += a
                forwarded += a
                if b:
                    raw = bytes(frame)
                    assert raw.startswith(header.raw) and len(raw) == len(header.raw) + header.length
                    payload = bytearray(raw[len(header.raw) :])
                    if header.mask is not None:
                        xor_unmask(header.mask, payload)
                    out.append((header.opcode, bytes(payload), header.fin))
                    frame.clear()
                    header = None
            elif kind is Event.CONTROL:
                out.append((a, b, True))
            elif kind is Event.CLOSE:
                out.append((Opcode.CLOSE, (a, b), True))
            elif kind is Event.TEXT:
                out.append(("text", a, True))
                forwarded += b
            else:
                out.append(("error", a))
    return out, bytes(forwarded)


def grouped(draw: st.DataObject, frames: list[Wire]) -> list[bytes]:
    """Reads at frame boundaries, of one to three whole frames each (a relay that fell behind reads a few at once)."""
    encoded = [f.encode() for f in frames]
    sizes = draw.draw(st.lists(st.integers(1, 3), min_size=len(encoded), max_size=len(encoded)))
    chunks = []
    i = 0
    for n in sizes:
        if i < len(encoded):
            chunks.append(b"".join(encoded[i : i + n]))
        i += n
    return chunks


def reference(data: bytes, *, masked: bool) -> list[tuple]:
    """websockets' reading of the same bytes, in the scanner's terms (1007 for a close reason that is not UTF-8 is
    reported as 1002: the gateway treats every malformed close frame as a protocol error)."""
    conn = Protocol(SERVER if masked else CLIENT, max_size=MAX_SIZE)
    conn.receive_data(data)
    out: list[tuple] = []
    for frame in conn.events_received():
        if frame.opcode is WsOpcode.CLOSE:
            out.append((Opcode.CLOSE, parse_close(frame.data), True))
        else:
            out.append((int(frame.opcode), bytes(frame.data), frame.fin))
    if conn.parser_exc is not None:
        assert conn.close_sent is not None
        code = conn.close_sent.code
        out.append(("error", 1002 if code == 1007 else code))
    return out


def data_bytes(frames: list[Wire]) -> bytes:
    return b"".join(f.encode() for f in frames if not f.control)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data())
def test_valid_streams_match_the_reference_cut_anywhere(masked, data):
    frames = data.draw(streams(masked))
    wire = b"".join(f.encode() for f in frames)
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=20))
    got, forwarded = scan(split(wire, cuts), masked=masked, take_whole=data.draw(st.booleans()))
    assert got == reference(wire, masked=masked)
    assert forwarded == data_bytes(frames)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data())
def test_surfaced_text_messages_come_whole_and_unmasked(masked, data):
    frames = data.draw(streams(masked))
    wire = b"".join(f.encode() for f in frames)
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=20))
    chunks = grouped(data, frames) if data.draw(st.booleans()) else split(wire, cuts)
    got, forwarded = scan(chunks, masked=masked, surface_text=True, take_whole=data.draw(st.booleans()))
    expected: list[tuple] = []
    text: bytes | None = None
    for opcode, payload, fin in reference(wire, masked=masked):
        if opcode == Opcode.TEXT or (opcode == Opcode.CONTINUATION and text is not None):
            text = (text or b"") + payload
            if fin:
                expected.append(("text", text, True))
                text = None
        else:
            expected.append((opcode, payload, fin))
    assert got == expected
    # Surfaced messages are forwarded once read, so a text message's bytes may move after the control frames between
    # its fragments; the data frames' bytes themselves are unchanged.
    assert sorted(forwarded) == sorted(data_bytes(frames))


def violations(masked: bool) -> st.SearchStrategy[tuple[list[Wire], int]]:
    """A frame (or two) that breaks one rule, and the close code the scanner must report."""
    key = b"\x01\x02\x03\x04" if masked else None
    return st.sampled_from(
        [
            ([Wire(Opcode.BINARY, b"x", rsv=4, mask=key)], 1002),
            ([Wire(Opcode.TEXT, b"x", rsv=1, mask=key)], 1002),
            ([Wire(3, b"", mask=key)], 1002),
            ([Wire(11, b"ab", mask=key)], 1002),
            ([Wire(Opcode.PING, b"p", fin=False, mask=key)], 1002),
            ([Wire(Opcode.PONG, b"p" * 126, mask=key)], 1002),
            ([Wire(Opcode.CONTINUATION, b"x", mask=key)], 1002),
            ([Wire(Opcode.BINARY, b"a", fin=False, mask=key), Wire(Opcode.TEXT, b"b", mask=key)], 1002),
            ([Wire(Opcode.BINARY, b"x", mask=None if masked else b"abcd")], 1002),
            ([Wire(Opcode.BINARY, b"x" * (MAX_SIZE + 1), mask=key)], 1009),
            (
                [
                    Wire(Opcode.BINARY, b"x" * 600, fin=False, mask=key),
                    Wire(Opcode.PING, b"", mask=key),
                    Wire(Opcode.CONTINUATION, b"y" * 401, mask=key),
                ],
                1009,
            ),
            ([Wire(Opcode.CLOSE, b"\x03", mask=key)], 1002),
            ([Wire(Opcode.CLOSE, close_payload(1005, ""), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, close_payload(1006, "x"), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, close_payload(1015, ""), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, close_payload(999, ""), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, close_payload(2999, ""), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, (5000).to_bytes(2, "big"), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, (65535).to_bytes(2, "big"), mask=key)], 1002),
            ([Wire(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"\xff\xfe", mask=key)], 1002),
        ]
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.booleans(), st.data())
def test_each_broken_rule_ends_the_scan_with_the_reference_code(masked, surface_text, data):
    before = data.draw(streams(masked).map(lambda fs: [f for f in fs if f.opcode != Opcode.CLOSE]))
    bad, code = data.draw(violations(masked))
    after = data.draw(messages(masked))
    wire = b"".join(f.encode() for f in [*before, *bad, *after])
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=20))
    chunks = grouped(data, [*before, *bad, *after]) if data.draw(st.booleans()) else split(wire, cuts)
    got, forwarded = scan(chunks, masked=masked, surface_text=surface_text, take_whole=data.draw(st.booleans()))
    assert got[-1] == ("error", code)
    ref = reference(wire, masked=masked)
    assert ref[-1] == ("error", code)
    if not surface_text:
        assert got == ref
        # Nothing of the broken frame was released: the forwarded bytes are at most the valid frames before it.
        assert data_bytes(before + bad[:-1]).startswith(forwarded)
        assert len(forwarded) >= len(data_bytes(before))


def test_header_checked_before_any_byte_is_released():
    scanner = FrameScanner(masked=True, max_size=10)
    head = Wire(Opcode.BINARY, b"x" * 11, mask=b"abcd").encode()
    # One byte at a time: the oversize header is refused before anything of it is handed out.
    events = [event for byte in head for event in scanner.feed(bytes([byte]))]
    assert events == [(Event.ERROR, 1009, "message too big")]
    assert scanner.done and scanner.feed(b"\x82\x80abcd") == []


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (bytes((0x82, 0x80 | 126)) + (125).to_bytes(2, "big") + b"abcd", "non-minimal frame length"),
        (bytes((0x82, 0x80 | 127)) + (0xFFFF).to_bytes(8, "big") + b"abcd", "non-minimal frame length"),
        (bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"abcd", "frame length out of range"),
    ],
)
def test_lengths_must_be_minimal_and_in_range(head, reason):
    assert FrameScanner(masked=True, max_size=1 << 40).feed(head) == [(Event.ERROR, 1002, reason)]


def test_at_boundary_only_between_forwarded_frames():
    scanner = FrameScanner(masked=False, max_size=100, surface_text=True)
    frame = encode_frame(Opcode.BINARY, b"abcdef")
    assert scanner.at_boundary
    scanner.feed(frame[:4])
    assert not scanner.at_boundary
    scanner.feed(frame[4:])
    assert scanner.at_boundary
    scanner.feed(encode_frame(Opcode.TEXT, b"held")[:3])  # a surfaced text frame is not forwarded yet
    assert scanner.at_boundary


def test_nothing_after_a_close_frame():
    scanner = FrameScanner(masked=False, max_size=100)
    events = scanner.feed(encode_frame(Opcode.CLOSE, close_payload(1000, "bye")) + b"\x82\x01x")
    assert events == [(Event.CLOSE, 1000, "bye")]
    assert scanner.done


def test_close_without_status_is_1005():
    assert FrameScanner(masked=False, max_size=10).feed(b"\x88\x00") == [(Event.CLOSE, 1005, "")]


@pytest.mark.parametrize("size", [0, 125, 126, 0xFFFF, 0x10000])
@pytest.mark.parametrize("masked", [True, False])
def test_encode_frame_reads_back_in_the_reference(size, masked):
    payload = os.urandom(size)
    frame = encode_frame(Opcode.BINARY, payload, mask=os.urandom(4) if masked else None)
    conn = Protocol(SERVER if masked else CLIENT, max_size=None)
    conn.receive_data(frame)
    [received] = conn.events_received()
    assert (received.opcode, received.data, received.fin) == (WsOpcode.BINARY, payload, True)


def test_the_fallback_unmask_is_its_own_inverse():
    data = bytearray(os.urandom(4401))
    original = bytes(data)
    xor_unmask(b"\x00\xff\x10\x01", data)
    assert data != original
    xor_unmask(b"\x00\xff\x10\x01", data)
    assert data == original


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.booleans(), st.data())
def test_frame_aligned_reads_match_the_reference(masked, broken, data):
    """Reads at frame boundaries: one frame each (the usual case on the audio path, which the scanner takes a shorter
    way) or a few."""
    frames = data.draw(streams(masked))
    code = None
    if broken:
        bad, code = data.draw(violations(masked))
        frames = [f for f in frames if f.opcode != Opcode.CLOSE] + bad
    chunks = grouped(data, frames) if data.draw(st.booleans()) else [f.encode() for f in frames]
    got, forwarded = scan(chunks, masked=masked, take_whole=data.draw(st.booleans()))
    wire = b"".join(f.encode() for f in frames)
    assert got == reference(wire, masked=masked)
    if code is None:
        assert forwarded == data_bytes(frames)
    else:
        assert got[-1] == ("error", code)


def test_whole_takes_only_one_whole_unfragmented_data_frame():
    client = FrameScanner(masked=True, max_size=MAX_SIZE, surface_text=True)
    audio = encode_frame(Opcode.BINARY, b"a" * 300, mask=b"abcd")
    assert client.whole(audio) == 8
    assert client.whole(encode_frame(Opcode.BINARY, b"", mask=b"abcd")) == 6
    assert client.whole(encode_frame(Opcode.TEXT, b"t", mask=b"abcd")) == 0  # masked text must be unmasked: feed
    assert client.whole(audio[:-1]) == client.whole(audio + audio[:2]) == 0  # not exactly one frame
    assert client.whole(encode_frame(Opcode.BINARY, b"a")) == 0  # not masked
    assert client.whole(encode_frame(Opcode.BINARY, b"a" * (MAX_SIZE + 1), mask=b"abcd")) == 0
    assert client.whole(encode_frame(Opcode.PING, b"", mask=b"abcd")) == 0
    client.feed(Wire(Opcode.BINARY, b"a", fin=False, mask=b"abcd").encode())  # a fragmented message in progress
    assert client.whole(audio) == 0
    server = FrameScanner(masked=False, max_size=MAX_SIZE, surface_text=True)
    assert server.whole(encode_frame(Opcode.TEXT, b"{}")) == 2
    assert FrameScanner(masked=False, max_size=MAX_SIZE).whole(encode_frame(Opcode.TEXT, b"{}")) == 0
    server.feed(encode_frame(Opcode.BINARY, b"a" * 10)[:5])  # inside a frame: only feed knows where it ends
    assert server.whole(encode_frame(Opcode.BINARY, b"x")) == 0
    server = FrameScanner(masked=False, max_size=MAX_SIZE)
    server.feed(b"\x88\x00")  # the close frame ends the scan
    assert server.whole(encode_frame(Opcode.BINARY, b"x")) == 0


def test_run_takes_only_reads_of_whole_unfragmented_data_frames():
    client = FrameScanner(masked=True, max_size=MAX_SIZE, surface_text=True)
    a = encode_frame(Opcode.BINARY, b"a" * 300, mask=b"abcd")
    b = encode_frame(Opcode.BINARY, b"b" * 3, mask=b"abcd")
    assert client.run(a + b) == [(8, 308), (314, 317)]
    assert client.run(a + b[:-1]) == client.run(a + encode_frame(Opcode.TEXT, b"t", mask=b"abcd")) == []
    assert client.run(a + Wire(Opcode.BINARY, b"a", fin=False, mask=b"abcd").encode()) == []
    server = FrameScanner(masked=False, max_size=MAX_SIZE, surface_text=True)
    text = encode_frame(Opcode.TEXT, b"{}")
    assert server.run(text + encode_frame(Opcode.BINARY, b"xy")) == [(2, 4), (6, 8)]
    assert server.run(text + encode_frame(Opcode.PONG, b"")) == []


def test_whole_refuses_a_read_while_a_header_is_split():
    """A read that looks like a whole frame is not one when a header began in the previous read: the scanner is not
    between frames, so whole() and run() leave it to feed()."""
    client = FrameScanner(masked=True, max_size=MAX_SIZE)
    audio = encode_frame(Opcode.BINARY, b"a" * 200, mask=b"abcd")
    assert client.feed(audio[:1]) == []
    assert not client.between
    assert client.whole(audio) == 0 and client.run(audio + audio) == []
    client.feed(audio[1:])
    assert client.between and client.whole(audio) == 8
