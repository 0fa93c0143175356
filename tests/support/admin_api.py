"""A gateway app and its admin listener, which serves the admin API (``sttgate.web.admin_api``), on ephemeral loopback
ports, and an admin token to call it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from sttgate.config import Settings
from sttgate.store import Store
from tests.support.gateway import RunningApp, running_gateway


@dataclass
class AdminApi:
    """The admin API of a running gateway app, and a client that sends a valid admin token."""

    running: RunningApp
    token: str
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"{self.running.admin_url}/admin/v1"

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
    """The gateway app of ``settings`` on ``store`` and its admin listener (the admin API), each on a free port."""
    async with running_gateway(settings, store) as running:
        token = (await store.admin_tokens.create("tests")).token
        async with aiohttp.ClientSession() as http:
            yield AdminApi(running, token, http)
