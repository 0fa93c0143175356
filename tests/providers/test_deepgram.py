"""The Deepgram provider module: metering (docs/billing.md#what-is-metered), credentials, framing, graceful end."""

from decimal import Decimal
from fractions import Fraction

import pytest

from sttgate.core.metering import AudioFormat, BinaryMeter, FormatError, FormatRefusal
from sttgate.core.refusals import Refusal
from sttgate.providers.base import MintRequest
from sttgate.providers.deepgram import DEEPGRAM, deepgram_format


def test_settings_defaults() -> None:
    assert DEEPGRAM.default_url == "wss://api.deepgram.com/v1/listen"
    assert DEEPGRAM.default_rate == Decimal("0.462")
    assert DEEPGRAM.api_key_env == "DEEPGRAM_API_KEY"
    assert DEEPGRAM.model_param == "model"
    assert DEEPGRAM.credential_headers("dg-key") == {"Authorization": "Token dg-key"}


def test_upstream_url_adds_the_model_only_when_missing() -> None:
    base = "wss://api.deepgram.com/v1/listen"
    assert DEEPGRAM.upstream_url(base, "encoding=linear16&sample_rate=16000") == (
        f"{base}?encoding=linear16&sample_rate=16000&model=nova-3"
    )
    assert DEEPGRAM.upstream_url(base, "model=nova-2&keyterm=a+b") == f"{base}?model=nova-2&keyterm=a+b"


@pytest.mark.parametrize(
    ("query", "fmt", "per_channel"),
    [
        ("encoding=linear16&sample_rate=16000", AudioFormat(2, 16000, 1), False),
        ("encoding=linear16&sample_rate=48000&channels=2", AudioFormat(2, 48000, 2), False),
        ("encoding=linear16&sample_rate=16000&channels=2&multichannel=true", AudioFormat(2, 16000, 2), True),
        ("encoding=linear16&sample_rate=16000&channels=2&multichannel=false", AudioFormat(2, 16000, 2), False),
        ("encoding=linear32&sample_rate=16000", AudioFormat(4, 16000, 1), False),
        ("encoding=mulaw&sample_rate=8000", AudioFormat(1, 8000, 1), False),
        ("encoding=alaw&sample_rate=8000", AudioFormat(1, 8000, 1), False),
    ],
)
def test_raw_formats_are_metered(query: str, fmt: AudioFormat, per_channel: bool) -> None:
    assert deepgram_format(query) == (fmt, per_channel)
    meter = DEEPGRAM.new_meter(query)
    assert isinstance(meter, BinaryMeter)
    assert meter.audio_format == fmt


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", FormatError.UNSUPPORTED),  # container audio: no encoding
        ("sample_rate=16000", FormatError.UNSUPPORTED),
        ("encoding=opus&sample_rate=48000", FormatError.UNSUPPORTED),
        ("encoding=flac", FormatError.UNSUPPORTED),
        ("encoding=ogg-opus", FormatError.UNSUPPORTED),
        ("encoding=linear16", FormatError.INVALID),  # no sample_rate
        ("encoding=linear16&sample_rate=16k", FormatError.INVALID),
        ("encoding=linear16&sample_rate=016000", FormatError.INVALID),
        ("encoding=linear16&sample_rate=16000&channels=0", FormatError.INVALID),
        ("encoding=linear16&sample_rate=16000&multichannel=yes", FormatError.INVALID),
        ("encoding=linear16&sample_rate=16000&multichannel=False", FormatError.INVALID),
        ("encoding=ALAW&sample_rate=8000", FormatError.INVALID),
        ("encoding=linear16&sample_rate=16000&sample_rate=8000", FormatError.INVALID),  # read either way
        ("encoding=linear16&encoding=mulaw&sample_rate=8000", FormatError.INVALID),
        ("encoding=linear16&Sample_Rate=8000&sample_rate=16000", FormatError.INVALID),
    ],
)
def test_unmeterable_declarations(query: str, error: FormatError) -> None:
    refused = deepgram_format(query)
    assert isinstance(refused, FormatRefusal) and refused.error is error
    assert DEEPGRAM.format_refusal(query) == refused
    assert DEEPGRAM.new_meter(query).audio_format is None


def test_stereo_is_one_audio_multichannel_bills_each_channel() -> None:
    second = b"\0" * (2 * 16000 * 2)  # one second of 16 kHz linear16 stereo
    stereo = DEEPGRAM.new_meter("encoding=linear16&sample_rate=16000&channels=2")
    split = DEEPGRAM.new_meter("encoding=linear16&sample_rate=16000&channels=2&multichannel=true")
    for _ in range(6):
        stereo.binary(second)
        split.binary(second)
    assert stereo.audio_exact == Fraction(6) and stereo.cycles == 2
    assert split.audio_exact == Fraction(12) and split.cycles == 3


def test_credentials_where_the_sdk_and_browsers_put_them() -> None:
    credential = DEEPGRAM.sdk.credential if DEEPGRAM.sdk else None
    assert credential is not None
    assert credential({"Authorization": "Token sk-mai-a"}, None) == ("sk-mai-a", None)
    assert credential({"Authorization": "token  sk-mai-a "}, None) == ("sk-mai-a", None)
    assert credential({"Authorization": "bearer sttg_t"}, None) == ("sttg_t", None)
    assert credential({"Authorization": "Bearer sttg_t"}, "sttg_q") == ("sttg_t", None)
    assert credential({"Sec-WebSocket-Protocol": "token, sk-mai-b"}, None) == ("sk-mai-b", None)
    assert credential({"Sec-WebSocket-Protocol": "bearer,sttg_b"}, None) == ("sttg_b", None)
    assert credential({"Sec-WebSocket-Protocol": "chat"}, "sttg_q") == (None, "sttg_q")
    assert credential({}, "sttg_q") == (None, "sttg_q")
    assert credential({}, None) == (None, None)
    assert DEEPGRAM.sdk is not None and DEEPGRAM.sdk.subprotocols == ("token", "bearer")


def _grant(body: dict[str, object], max_seconds: int = 600) -> int:
    assert DEEPGRAM.sdk is not None
    mint = DEEPGRAM.sdk.token_mints[0]
    assert (mint.method, mint.path, mint.reads_body) == ("POST", "/deepgram/v1/auth/grant", True)
    return mint.seconds(MintRequest({}, {}, body, lambda value: int(value), max_seconds))


def test_grant_lifetime() -> None:
    assert _grant({}) == 30
    assert _grant({"ttl_seconds": 120}) == 120
    assert _grant({"ttl_seconds": 3600}) == 600  # capped by the gateway's maximum
    for bad in (0, -1, "60", True, 1.5, None):
        with pytest.raises(Refusal) as refused:
            _grant({"ttl_seconds": bad})
        assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert DEEPGRAM.sdk is not None
    assert DEEPGRAM.sdk.token_mints[0].body("sttg_x", 30) == {"access_token": "sttg_x", "expires_in": 30}


def test_pull_framing_and_graceful_end() -> None:
    pcm = b"\1\2" * 1600
    assert DEEPGRAM.audio_frame(pcm) == pcm
    assert dict(DEEPGRAM.pull_format) == {"encoding": "linear16", "sample_rate": "16000"}
    assert DEEPGRAM.end_frames() == ['{"type":"CloseStream"}']
    assert DEEPGRAM.closes_after_end
    assert DEEPGRAM.is_end_ack('{"type":"Metadata","duration":1.5}')
    assert not DEEPGRAM.is_end_ack('{"type":"Results","is_final":true}')
    assert not DEEPGRAM.is_end_ack("not json")
    assert DEEPGRAM.auth_error_markers == () and DEEPGRAM.secret_prefixes == ()
