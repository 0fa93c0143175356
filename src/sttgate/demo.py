"""`sttgate demo`: the whole product on one machine, offline.

It starts the provider emulators and a gateway on free loopback ports with a temporary SQLite database, creates a
prepaid demo account and key, streams the bundled speech sample through every registered provider that has an
emulator, at real time (all at once) and in that provider's own framing, prints the transcripts as they arrive, and
ends with the account's usage: what a customer would be billed. Its gateway serves the demo page (off by default
elsewhere) with the demo key, on loopback only, for as long as the demo runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import wave
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from sttgate.config import Settings
from sttgate.core.money import usd_to_nanos
from sttgate.providers import PROVIDERS, Provider, names
from sttgate.providers.base import PULL_SAMPLE_RATE, Caption, json_object

CHUNK_SECONDS = 0.1
DEMO_BALANCE_USD = "1.00"


def load_sample() -> tuple[bytes, int]:
    """The bundled sample: 16 kHz mono s16le speech (espeak-ng)."""
    with resources.as_file(resources.files("sttgate") / "data" / "sample.wav") as path, wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def _chunks(pcm: bytes, rate: int) -> list[bytes]:
    """100 ms chunks; the last one padded with silence, as some providers refuse short chunks."""
    size = int(rate * CHUNK_SECONDS) * 2
    chunks = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if chunks:
        chunks[-1] = chunks[-1].ljust(size, b"\0")
    return chunks


async def _stream(
    http: aiohttp.ClientSession, gateway: str, key: str, provider: Provider, pcm: bytes, rate: int
) -> list[str]:
    """Stream the sample like a customer's app would, pacing audio at real time; return the final transcripts.

    The sample is 16 kHz mono s16le, the pull-mode audio, so the provider's pull framing and format apply as is."""
    name = provider.name
    forwarded = "&".join(f"{k}={v}" for k, v in (*provider.pull_format, *provider.demo_params))
    finals: list[str] = []
    shown: dict[str, str] = {}
    url = f"{gateway}/ws/v2/audio-stream?provider={name}&{forwarded}"
    async with http.ws_connect(url, headers={"Authorization": key}) as ws:
        session_id = ws._response.headers.get("X-Session-Id", "?")
        print(f"[{name}] session {session_id} open")

        async def send() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n, chunk in enumerate(_chunks(pcm, rate)):
                frame = provider.audio_frame(chunk)
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
                await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK_SECONDS - loop.time()))
            for end in provider.end_frames(forwarded):
                await ws.send_str(end)

        sender = asyncio.create_task(send())
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            event = json_object(msg.data)
            caption = None if event is None else provider.caption(event)
            if caption is not None:
                final = _show(name, caption, shown)
                if final is not None:
                    finals.append(final)
            # A provider that does not close after its end frames: close once it acknowledged them.
            if not provider.closes_after_end and sender.done() and provider.is_end_ack(msg.data, forwarded):
                await ws.close(code=1000, message=b"User ended conversation")
        await sender
        print(f"[{name}] closed with {ws.close_code}")
    return finals


def _show(provider: str, caption: Caption, shown: dict[str, str]) -> str | None:
    """Print a caption the way a captioning app would; return the text of a final transcript.

    ``shown`` holds the last partial printed, so that repeated partials are shown once."""
    if caption.kind == "final":
        print(f"[{provider}] final   : {caption.text}")
        return caption.text
    if caption.kind == "partial":
        if shown.get("partial") != caption.text:
            shown["partial"] = caption.text
            print(f"[{provider}] partial : {caption.text}")
        return None
    print(f"[{provider}] {caption.text}")
    return None


async def run(settings: Settings) -> int:
    from sttgate.admin import usage_document
    from sttgate.emulators.app import EMULATORS, EmulatorConfig
    from sttgate.emulators.app import create_app as create_emulator_app
    from sttgate.store import Store
    from sttgate.web.app import create_app as create_gateway_app

    pcm, rate = load_sample()
    if rate != PULL_SAMPLE_RATE:
        raise OSError(f"the bundled sample must be {PULL_SAMPLE_RATE} Hz, not {rate} Hz")
    emulator_config = EmulatorConfig()
    providers = [provider for provider in PROVIDERS.values() if provider.name in EMULATORS]
    with tempfile.TemporaryDirectory(prefix="sttgate-demo-") as tmp:
        emulators, emu_port = await _start(create_emulator_app(emulator_config))
        store = await Store.connect(f"sqlite:///{Path(tmp) / 'demo.db'}")
        gateway: web.AppRunner | None = None
        try:
            account = await store.create_account(name="demo", balance_nanos=usd_to_nanos(DEMO_BALANCE_USD))
            key = (await store.create_key(account.id)).key
            # The gateway: providers at the emulators, and the page on with the demo key (loopback only).
            overrides: dict[str, Any] = {"demo_page": True, "demo_api_key": SecretStr(key)}
            for provider in providers:
                emulator = EMULATORS[provider.name]
                overrides[f"{provider.name}_url"] = f"ws://127.0.0.1:{emu_port}{emulator.ws_path}"
                overrides[f"{provider.name}_api_key"] = SecretStr(emulator.api_keys(emulator_config)[0])
            gateway_settings = type(settings).model_validate({**settings.model_dump(), **overrides})
            gateway, gw_port = await _start(create_gateway_app(gateway_settings, store=store))
            print(f"gateway on 127.0.0.1:{gw_port}, emulators on 127.0.0.1:{emu_port}")
            print(f"demo page http://127.0.0.1:{gw_port}/demo/ (while the demo runs)")
            print(f"demo account {account.id} (prepaid {DEMO_BALANCE_USD} USD), key {key[:12]}…")
            print(f"streaming {len(pcm) / 2 / rate:.2f} s of speech to {len(providers)} providers at real time\n")
            async with aiohttp.ClientSession() as http:
                results = await asyncio.gather(
                    *(_stream(http, f"ws://127.0.0.1:{gw_port}", key, p, pcm, rate) for p in providers)
                )
            await _settle(store, account.id, len(providers))
            usage = usage_document(await store.usage(account.id), names())
        finally:
            if gateway is not None:
                await gateway.cleanup()
            await emulators.cleanup()
            await store.close()
    print("\ntranscripts:")
    for provider, finals in zip(providers, results, strict=True):
        print(f"  {provider.name:10}: {' '.join(t for t in finals if t) or '(none)'}")
    print("\nusage (what the customer is billed):")
    print(json.dumps(usage, indent=2))
    return 0 if all(results) else 1


async def _settle(store: Any, account_id: str, count: int) -> None:
    """Wait until the gateway has written every session's end (it does so right after the sockets close)."""
    for _ in range(100):
        usage = await store.usage(account_id)
        if len(usage.sessions) >= count and all(s.ended_at for s in usage.sessions):
            return
        await asyncio.sleep(0.05)


def main(settings: Settings | None = None) -> int:
    try:
        return asyncio.run(run(settings or Settings()))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
