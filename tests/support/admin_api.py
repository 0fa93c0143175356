"""A gateway app with the admin API mounted (``sttgate.web.admin_api``) on an ephemeral loopback port, and an admin
token to call it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from sttgate.config import Settings
from sttgate.store import Store
from sttgate.web.admin_api import add_admin_api_routes
from sttgate.web.app import create_app, start_site
from tests.support.gateway import RunningApp


@dataclass
class AdminApi:
    """The admin API of a running gateway app, and a client that sends a valid admin token."""

    running: RunningApp
    token: str
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"{self.running.http_url}/admin/v1"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """``(status, JSON body)`` of one authenticated call."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        async with self.http.request(method, self.url(path), headers=headers, **kwargs) as response:
            return response.status, await response.json()


@asynccontextmanager
async def running_admin_api(settings: Settings, store: Store) -> AsyncIterator[AdminApi]:
    """The gateway app of ``settings`` on ``store`` with the admin API mounted, served on a free port."""
    app = create_app(settings, store=store)
    add_admin_api_routes(app)
    runner = await start_site(app, "127.0.0.1", 0)
    token = (await store.admin_tokens.create("tests")).token
    try:
        async with aiohttp.ClientSession() as http:
            yield AdminApi(RunningApp(app, runner, settings), token, http)
    finally:
        await runner.cleanup()
