"""Fixtures for the page tests: a real headless Chromium with a fake microphone (see ``tests.support.browser``), and
a gateway with the page whose provider URLs a test chooses (the emulators, or a scripted stand-in)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from sttgate.store import Store
from tests.support.accounts import create_account
from tests.support.browser import Browser, chromium_path, launch_browser, speech_wav
from tests.support.gateway import AccountGateway, gateway_settings, running_gateway


@pytest.fixture
async def page_gateway(store: Store) -> AsyncIterator[Callable[..., Awaitable[AccountGateway]]]:
    """Factory: ``await page_gateway(upstream="ws://…", balance_nanos=10**9, **settings)``.

    ``upstream`` serves every provider's path (``tests.support.emulator.EMULATOR_PATHS``); the page is on, and the
    demo key is a real key of a fresh prepaid account (1 USD unless ``balance_nanos`` is given; ``None`` makes it
    postpaid) unless ``demo_api_key`` is given.
    """
    async with AsyncExitStack() as stack:

        async def start(
            *, upstream: str = "ws://127.0.0.1:9", balance_nanos: int | None = 10**9, **overrides: Any
        ) -> AccountGateway:
            account = await create_account(store, name="demo", balance_nanos=balance_nanos)
            overrides.setdefault("demo_api_key", account.key)
            overrides.setdefault("demo_page", True)
            settings = gateway_settings(upstream, gateway_id="page-tests", **overrides)
            running = await stack.enter_async_context(running_gateway(settings, store))
            return AccountGateway(running.http_url, store, settings, account.id, account.key)

        yield start


@pytest.fixture
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the page test needs a real browser")
    return path


@pytest.fixture
def fake_microphone(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The WAV Chromium's fake microphone plays: speech, or (parametrized indirectly) a test's own generator."""
    kind = getattr(request, "param", "speech")
    if kind == "speech":
        return speech_wav(tmp_path / "speech.wav")
    return request.module.__dict__[f"_{kind}_wav"](tmp_path / f"{kind}.wav")


@pytest.fixture
def chromium_profile(tmp_path: Path) -> Path:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    return profile


@pytest.fixture
async def browser(chromium: str, fake_microphone: Path, chromium_profile: Path) -> AsyncIterator[Browser]:
    async with launch_browser(chromium, fake_microphone, chromium_profile) as launched:
        yield launched
