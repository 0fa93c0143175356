"""A gateway with the SDK routes, pointed at the in-process emulators, on real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sttgate.admin import Admin
from sttgate.config import Settings
from sttgate.emulators.app import RECORDER, EmulatorConfig
from sttgate.emulators.app import create_app as create_emulator_app
from sttgate.emulators.recorder import Recorder
from sttgate.gateway.app import bound_port, create_app, start_site
from sttgate.providers import names
from sttgate.store import Store

EMULATOR_KEYS = {"elevenlabs": "emulator-elevenlabs-key", "assemblyai": "emulator-assemblyai-key"}


@dataclass
class SdkGateway:
    url: str  # http://127.0.0.1:PORT
    store: Store
    settings: Settings
    recorder: Recorder
    account_id: str
    key: str
    tls_host: str | None = None  # 127.0.0.1:PORT of the same app over TLS, when started with tls=True
    cert_file: Path | None = None  # its self-signed certificate (for SSL_CERT_FILE)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command (skips the test without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = directory / "gw-cert.pem", directory / "gw-key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def sdk_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[SdkGateway]]]:
    """Factory: ``await sdk_gateway(balance_nanos=None, **settings)``: emulators + store + gateway + an account."""
    runners: list[web.AppRunner] = []
    store = await Store.connect(f"sqlite:///{tmp_path / 'gw.db'}")

    async def start(*, balance_nanos: int | None = None, tls: bool = False, **overrides: Any) -> SdkGateway:
        emulator = create_emulator_app(EmulatorConfig())
        emu_runner = web.AppRunner(emulator, handle_signals=False)
        await emu_runner.setup()
        await web.TCPSite(emu_runner, "127.0.0.1", 0).start()
        runners.append(emu_runner)
        emu = f"ws://127.0.0.1:{bound_port(emu_runner)}"
        account = await store.create_account(name="sdk", balance_nanos=balance_nanos)
        key = (await store.create_key(account.id)).key
        values: dict[str, Any] = {
            "elevenlabs_url": f"{emu}/v1/speech-to-text/realtime",
            "assemblyai_url": f"{emu}/v3/ws",
            "elevenlabs_api_key": EMULATOR_KEYS["elevenlabs"],
            "assemblyai_api_key": EMULATOR_KEYS["assemblyai"],
            "gateway_id": "sdk-tests",
            **overrides,
        }
        settings = Settings.model_validate(values)
        app = create_app(settings, store=store)
        runner = await start_site(app, "127.0.0.1", 0)
        runners.insert(0, runner)  # the gateway stops before the emulator it relays to
        gw = SdkGateway(f"http://127.0.0.1:{bound_port(runner)}", store, settings, emulator[RECORDER], account.id, key)
        if tls:
            gw.cert_file, key_file = self_signed_certificate(tmp_path)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(gw.cert_file, key_file)
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
            gw.tls_host = f"127.0.0.1:{runner.addresses[-1][1]}"  # the site just added
        return gw

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()
        await store.close()


async def upgrade(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A WebSocket upgrade request that keeps a refusal's JSON body (aiohttp's ws_connect drops it).

    Returns ``(status, body)``; on 101 the connection is closed at once (the gateway then ends the session).
    """
    upgrade_headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with aiohttp.ClientSession() as http, http.get(url, headers={**upgrade_headers, **(headers or {})}) as resp:
        body = None if resp.status == 101 else await resp.json(content_type=None)
        return resp.status, body


async def ended_usage(gw: SdkGateway, provider: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
    """The account's usage document once the gateway has recorded the end of its sessions (of ``provider``).

    The gateway writes a session's end just after the sockets close, so this polls the database, bounded.
    """
    async with asyncio.timeout(timeout):
        while True:
            usage = await Admin(gw.store, names()).usage(gw.account_id)
            sessions = [s for s in usage["sessions"] if provider in (None, s["provider"])]
            if sessions and all(s["ended_at"] for s in sessions):
                return usage
            await asyncio.sleep(0.02)
