"""The admin listener (docs/operations.md#the-admin-listener): ``/metrics`` there, not on the public listener unless
``STTGATE_PUBLIC_METRICS=1``; ``sttgate serve`` runs it on ``STTGATE_ADMIN_HOST``/``STTGATE_ADMIN_PORT`` (0: off)."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from sttgate.config import Settings
from tests.support.serve import free_port, serve_env, serve_processes
from tests.support.waiting import wait_for


async def test_metrics_are_on_the_admin_listener_only(gateway) -> None:
    gw = await gateway()
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        assert resp.status == 200
        assert "sttgate_sessions_open" in await resp.text()
    async with gw.http.get(f"{gw.http_url}/metrics") as resp:
        assert resp.status == 404
    # The admin listener serves nothing of the public API.
    async with gw.http.get(f"{gw.admin_url}/healthz") as resp:
        assert resp.status == 404


async def test_public_metrics_puts_them_on_the_public_listener_too(gateway) -> None:
    gw = await gateway(public_metrics=True)
    for base in (gw.http_url, gw.admin_url):
        async with gw.http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert "sttgate_sessions_open" in await resp.text()


async def test_the_admin_listener_serves_the_admin_api_and_console(gateway, store) -> None:
    """The admin API and the console are on the admin listener (docs/admin-api.md), never on the public one."""
    gw = await gateway()
    token = (await store.admin_tokens.create("listener-test")).token
    async with gw.http.get(f"{gw.admin_url}/admin/v1/openapi.json") as resp:
        assert resp.status == 200 and (await resp.json())["openapi"].startswith("3.1")
    async with gw.http.get(f"{gw.admin_url}/admin/v1/accounts") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_admin_token"
    headers = {"Authorization": f"Bearer {token}"}
    async with gw.http.post(
        f"{gw.admin_url}/admin/v1/accounts", json={"name": "via listener"}, headers=headers
    ) as resp:
        assert resp.status == 201
        created = await resp.json()
    async with gw.http.get(f"{gw.admin_url}/admin/v1/accounts/{created['id']}", headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["name"] == "via listener"
    async with gw.http.get(f"{gw.admin_url}/admin/") as resp:
        assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    for path in ("/admin/v1/openapi.json", "/admin/v1/accounts", "/admin/"):
        async with gw.http.get(f"{gw.http_url}{path}", headers=headers) as resp:
            assert resp.status == 404, path


def test_the_admin_port_may_not_be_the_public_port() -> None:
    with pytest.raises(ValidationError, match="admin_port must differ from port"):
        Settings(port=9000, admin_port=9000)
    assert Settings(port=9000, admin_port=0).admin_port == 0


async def test_serve_runs_the_admin_listener_on_its_address(emulator, tmp_path: Path) -> None:
    admin_port = free_port()
    env = {
        **serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "admin-listener"),
        "STTGATE_ADMIN_PORT": str(admin_port),
    }
    async with serve_processes() as spawn:
        sp = await spawn(env=env, cwd=tmp_path)
        await wait_for(lambda: sp.admin_ports, what="the admin_listening line")
        assert sp.admin_ports == {admin_port}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sp.admin_url}/metrics") as resp:
                assert resp.status == 200
                assert "sttgate_sessions_open" in await resp.text()
            async with http.get(f"http://127.0.0.1:{sp.port}/metrics") as resp:
                assert resp.status == 404
        sp.proc.send_signal(signal.SIGTERM)
        assert await sp.wait() == 0
        # Port 0: no admin listener at all.
        off = await spawn(env={**env, "STTGATE_ADMIN_PORT": "0"}, cwd=tmp_path)
        off.proc.send_signal(signal.SIGTERM)
        assert await off.wait() == 0
        assert "event=gateway_stopped" in off.log and "event=admin_listening" not in off.log
