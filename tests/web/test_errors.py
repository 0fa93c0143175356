"""One refusal middleware (sttgate.web.errors): every route answers a refusal alike and counts it once."""

from __future__ import annotations

import re

from sttgate.providers import PROVIDERS


def refusal_count(metrics: str, code: str) -> float:
    match = re.search(rf'sttgate_handshake_refusals_total{{code="{code}"}} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


async def test_every_route_renders_and_counts_a_refusal_the_same_way(gateway) -> None:
    gw = await gateway()
    # Push, drop-in SDK route, usage API, token mints and pull API: each refuses a request without a key.
    requests = [
        ("GET", "/ws/v2/audio-stream?provider=assemblyai"),
        ("GET", "/api/v2/usage"),
        ("POST", "/api/v2/audio-stream/token"),
        ("POST", "/api/v2/audio-stream/start"),
        ("GET", "/api/v2/audio-stream/tasks/nope"),
        *(("GET", p.sdk.stream_path) for p in PROVIDERS.values() if p.sdk is not None),
    ]
    for method, path in requests:
        async with gw.http.request(method, gw.http_url + path) as resp:
            assert resp.status == 401, path
            assert resp.headers["Cache-Control"] == "no-store", path
            assert resp.content_type == "application/json", path
            assert (await resp.json())["error"]["code"] == "missing_api_key", path
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        assert refusal_count(await resp.text(), "missing_api_key") == len(requests)


async def test_a_route_that_is_not_there_is_not_a_refusal(gateway) -> None:
    gw = await gateway()
    async with gw.http.get(f"{gw.http_url}/no/such/route") as resp:
        assert resp.status == 404
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        assert "sttgate_handshake_refusals_total{" not in await resp.text()
