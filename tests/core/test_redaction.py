"""Log-text redaction (docs/operations.md#logs) and the forwarded-credential check (docs/contract.md#forwarding)."""

from __future__ import annotations

import pytest

from sttgate.core.params import credential_parameter
from sttgate.core.redaction import Redactor

KEY = "sk-mai-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-x"
TOKEN = "sttg_0123456789abcdefghijABCDEFGHIJ-_xyz"

redact = Redactor(("sutkn_",), ("operator-elevenlabs-secret",))


@pytest.mark.parametrize(
    "text",
    [
        f"b'GET /ws/v2/audio-stream?api_key={KEY}&language_code=fran\\xc3\\xa7ais HTTP/1.1'",
        f"b'GET /ws?x={KEY}\\x01tail HTTP/1.1'",
        f"b'Authorization: {KEY}\\x01'",
        f"b'Authorization: Bearer {TOKEN}'",
        f"xi-api-key: {KEY}é",
        f'query="a=1&token={TOKEN}&b=2"',
        f"apiKey={KEY}",
        f"SK-MAI-{KEY[7:]}",
        "webhook_auth_header_value=hunter2hunter2 next",
        "password=hunter2hunter2",
        "key sutkn_0123456789abcdef in a message",
        "upstream refused operator-elevenlabs-secret",
    ],
)
def test_no_secret_survives(text: str) -> None:
    out = redact(text)
    for secret in (KEY[7:], TOKEN[5:], "hunter2", "0123456789abcdef", "operator-elevenlabs-secret", "\\x01tail"):
        assert secret not in out


def test_ordinary_lines_are_untouched() -> None:
    line = (
        "event=session_end session=s1 account=a1 provider=assemblyai audio_seconds=12.000 cycles=3 "
        'close_code=1000 closed_by=client query="sample_rate=16000&language_code=fr"'
    )
    assert redact(line) == line
    assert redact("event=upstream_auth_error provider=elevenlabs") == "event=upstream_auth_error provider=elevenlabs"


def test_prefixes_are_kept_for_the_reader() -> None:
    assert redact(f"api_key={KEY}") == "api_key=***"
    assert redact(f"found {KEY} here") == "found sk-mai-*** here"
    assert redact("Authorization: Bearer abc def") == "Authorization: ***"


@pytest.mark.parametrize(
    ("forwarded", "name"),
    [
        (f"sample_rate=16000&apiKey={KEY}", "apiKey"),
        (f"a%20b={TOKEN}", "a b"),
        (f"keyterms=%5B%22{KEY}%22%5D", "keyterms"),
        (f"x={KEY.upper()}", "x"),
        (KEY, ""),
        (f"{KEY}=1", ""),
        ("sample_rate=16000&language_code=fr", None),
        ("", None),
        ("sk-mai=1&sttg=2", None),
    ],
)
def test_credential_parameter(forwarded: str, name: str | None) -> None:
    assert credential_parameter(forwarded) == name
