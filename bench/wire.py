"""What the load generator and the minimal upstream agree on: the frame stamp and the echo message."""

from __future__ import annotations

import struct

# Standard load: 20 frames/s of 50 ms of 16 kHz s16le mono PCM; every 5th frame is echoed as a text frame.
FRAME_BYTES = 1600
FRAMES_PER_SECOND = 20
ECHO_EVERY = 5
# seq (uint32) and the sender's CLOCK_MONOTONIC in ns; echoed back so the sender computes the round trip.
STAMP = struct.Struct("<IQ")
ASSEMBLYAI_PATH = "/v3/ws"

# A Turn-shaped message of about 300 bytes, like a partial transcript; %d placeholders are seq and stamp.
ECHO_TEMPLATE = (
    '{"type":"Turn","seq":%d,"t":%d,"turn_order":0,"end_of_turn":false,"transcript":"'
    + "benchmark " * 18
    + '","words":[]}'
)
BEGIN_MESSAGE = '{"type":"Begin","id":"bench","expires_at":4102444800}'
TERMINATION_MESSAGE = '{"type":"Termination","audio_duration_seconds":0,"session_duration_seconds":0}'
