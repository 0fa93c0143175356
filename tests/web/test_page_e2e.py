"""The page, end to end: Chromium's fake microphone → AudioWorklet → gateway (token, provider-shaped route) →
emulators → live transcripts on the page, a running cost equal to the gateway's bill, and a screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sttgate.admin import Admin
from sttgate.core.money import format_usd
from sttgate.emulators.transcriber import WORDS
from sttgate.providers import names
from tests.support.browser import PAGE_TIMEOUT, Browser, Page
from tests.support.emulator import EmulatorServer
from tests.support.gateway import AccountGateway

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo-page.png"
STATUS = "document.getElementById('status').dataset.state"


async def _transcribe(page: Page, provider: str) -> bytes:
    """Run a session from the page's own controls; returns a screenshot taken while it was live."""
    await page.evaluate(f"document.getElementById('provider').value = '{provider}'")
    await page.evaluate("document.getElementById('start').click()", user_gesture=True)
    await page.wait_for(f"{STATUS} === 'live' || {STATUS} === 'error'", "the session to start")
    assert await page.evaluate(STATUS) == "live", await page.evaluate("document.getElementById('error').textContent")
    # A final transcript (end of a turn / a VAD commit after the sample's trailing silence), then a live partial
    # of the next one: both kinds are shown while streaming.
    await page.wait_for("document.querySelector('#finals p.final')", "a final transcript")
    await page.wait_for("document.querySelector('#finals p.final ~ p.partial')", "a partial after it")
    live = await page.screenshot()
    await page.evaluate("document.getElementById('stop').click()", user_gesture=True)
    await page.wait_for(f"{STATUS} === 'ended'", "the graceful end")
    return live


async def _ended_session(gw: AccountGateway) -> dict[str, Any]:
    """The page's one session, once the gateway has recorded its end (it does so right after the close)."""
    async with asyncio.timeout(PAGE_TIMEOUT):
        while True:
            sessions = (await Admin(gw.store, names()).usage(gw.account_id))["sessions"]
            if sessions and sessions[0]["ended_at"]:
                return sessions[0]
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("provider", ["assemblyai", "elevenlabs", "deepgram"])
async def test_page_transcribes_the_microphone(
    emulator: EmulatorServer,
    page_gateway: Callable[..., Awaitable[AccountGateway]],
    browser: Browser,
    provider: str,
    tmp_path: Path,
) -> None:
    gw = await page_gateway(upstream=emulator.base, balance_nanos=10**9)
    page = await browser.new_page()
    await page.navigate(f"{gw.url}/demo/")
    live = await _transcribe(page, provider)

    finals = await page.evaluate("[...document.querySelectorAll('#finals p.final')].map(p => p.textContent)")
    words = [w.strip(".,!?").lower() for w in " ".join(finals).split()]
    assert words and words == list(WORDS[: len(words)]), finals
    assert await page.evaluate("document.getElementById('error').hidden"), await page.evaluate(
        "document.getElementById('error').textContent"
    )

    # The running cost the page showed is the bill: same audio, same cycles, same price.
    session = await _ended_session(gw)
    # AssemblyAI closes after Termination and Deepgram after Metadata; with ElevenLabs the page closes once its final
    # commit is answered.
    assert session["provider"] == provider and session["close_code"] == 1000
    assert session["closed_by"] == {"assemblyai": "upstream", "elevenlabs": "client", "deepgram": "upstream"}[provider]
    page_nanos = int(await page.evaluate("document.getElementById('cost').dataset.nanos"))
    assert page_nanos > 0 and format_usd(page_nanos) == session["cost_usd"]
    assert int(await page.evaluate("document.getElementById('cycles').textContent")) * 5 == session["billed_seconds"]

    (tmp_path / f"demo-page-{provider}-ended.png").write_bytes(await page.screenshot())
    shot = tmp_path / f"demo-page-{provider}-live.png"
    shot.write_bytes(live)
    assert live.startswith(b"\x89PNG")
    # The docs' picture is made when missing or asked for, so that test runs leave the work tree clean.
    refresh = not DOCS_SCREENSHOT.exists() or os.environ.get("STTGATE_UPDATE_DOCS_SCREENSHOT") == "1"
    if provider == "assemblyai" and DOCS_SCREENSHOT.parent.is_dir() and refresh:
        shutil.copyfile(shot, DOCS_SCREENSHOT)


async def test_page_shows_a_refusal(page_gateway: Callable[..., Awaitable[AccountGateway]], browser: Browser) -> None:
    """A prepaid demo account without money: the gateway refuses the upgrade (402) and the page says so."""
    gw = await page_gateway(balance_nanos=0)
    page = await browser.new_page()
    await page.navigate(f"{gw.url}/demo/")
    await page.evaluate("document.getElementById('start').click()", user_gesture=True)
    await page.wait_for(f"{STATUS} === 'error'", "the refusal")
    assert "refused" in await page.evaluate("document.getElementById('error').textContent")
    assert not await page.evaluate("document.getElementById('start').disabled")
    assert (await Admin(gw.store, names()).usage(gw.account_id))["sessions"] == []
