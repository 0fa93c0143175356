"""Every failed provider connection is one WARNING line with its reason, and counted (docs/operations.md#logs):
DNS, refused, TLS, status, timeout."""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl

import pytest

from sttgate.gateway.upstream import ConnectFailure, connect_failure
from tests.support.upgrade import handshake

# reason: (settings overrides, with {closed} and {emulator} ports; extra query; the client's status and code)
CASES = {
    "dns": ({"assemblyai_url": "ws://no-such-host.invalid/v3/ws"}, "", 502, "upstream_unavailable"),
    "refused": ({"assemblyai_url": "ws://127.0.0.1:{closed}/v3/ws"}, "", 502, "upstream_unavailable"),
    # TLS to a port that speaks plain HTTP: the TLS handshake fails.
    "tls": ({"assemblyai_url": "wss://127.0.0.1:{emulator}/v3/ws"}, "", 502, "upstream_unavailable"),
    "status": ({}, "&emu_handshake_status=503", 502, "upstream_unavailable"),
    "timeout": ({"upstream_connect_timeout_seconds": 0.2}, "&emu_handshake_delay_ms=2000", 504, "upstream_timeout"),
}


@pytest.mark.parametrize("reason", CASES)
async def test_a_failed_upstream_connection_is_one_warning_with_its_reason(
    gateway, emulator, account, caplog, unused_tcp_port, reason
):
    overrides, query, status, code = CASES[reason]
    ports = {"closed": unused_tcp_port, "emulator": emulator.port}
    gw = await gateway(**{name: v.format(**ports) if isinstance(v, str) else v for name, v in overrides.items()})
    acct = await account()
    caplog.set_level(logging.WARNING, logger="sttgate.gateway")
    got, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}{query}"))
    assert (got, body["error"]["code"]) == (status, code)
    lines = [r for r in caplog.records if "event=upstream_connect_failed" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    line = lines[0]
    assert line.levelno == logging.WARNING
    message = line.getMessage()
    assert f"reason={reason} " in message and f"refusal={code} " in message and "provider=assemblyai" in message
    assert re.search(r"session=[0-9a-f-]{36} ", message)
    assert acct.key not in message and "emu_handshake" not in message  # no query in the line
    if reason == "status":
        assert "status=503 " in message
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        metrics = await resp.text()
    assert f'sttgate_upstream_connect_failures_total{{provider="assemblyai",reason="{reason}"}} 1.0' in metrics


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), ConnectFailure.DNS),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ConnectFailure.REFUSED),
        (ssl.SSLCertVerificationError("certificate verify failed"), ConnectFailure.TLS),
        (TimeoutError(), ConnectFailure.TIMEOUT),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), ConnectFailure.NETWORK),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), ConnectFailure.NETWORK),
    ],
)
def test_plain_socket_errors_have_their_reason_too(exc: BaseException, reason: ConnectFailure) -> None:
    """What a connect made without aiohttp (``asyncio.open_connection``) raises is classified alike."""
    assert connect_failure(exc) is reason
