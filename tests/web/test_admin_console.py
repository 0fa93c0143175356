"""The admin console (docs/admin-api.md#console) in a real headless Chromium, against the admin API of a gateway
app on a loopback port: sign in (a wrong token shows the API's refusal), create an account and a key (its secret
shown once), stream with that key through the gateway to the emulator, see the session live and close it from the
console (the client gets 1008 "closed by operator"), see the usage charts, revoke the key; and the page's serving
(its CSP, no inline script or style)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from sqlalchemy import insert
from yarl import URL

from sttgate.config import Settings
from sttgate.providers import get_provider
from sttgate.store import Store
from sttgate.store.database import utcnow
from sttgate.store.tables import sessions
from sttgate.web.admin_console import CONSOLE_CSP, CONSOLE_FILES
from tests.support.accounts import create_account
from tests.support.browser import Browser, Page
from tests.support.emulator import EmulatorServer
from tests.support.gateway import RunningApp, gateway_settings, running_gateway

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin-console.png"
FRAME = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
QUERY = "provider=assemblyai&sample_rate=16000&emu_rate_check=off"
# Run in the page before its own scripts: records what its Content-Security-Policy blocked, if anything.
WATCH_CSP = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
assemblyai = get_provider("assemblyai")
assert assemblyai is not None


@dataclass
class Console:
    running: RunningApp
    token: str

    @property
    def url(self) -> str:
        return f"{self.running.admin_url}/admin/"

    async def call(self, method: str, path: str) -> tuple[int, Any]:
        """``(status, JSON body)`` of one admin API call with the console's token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.running.admin_url}/admin/v1{path}", headers=headers) as response,
        ):
            return response.status, await response.json()


@asynccontextmanager
async def running_console(settings: Settings, store: Store) -> AsyncIterator[Console]:
    """A gateway app and its admin listener, which serves the admin API and the console."""
    async with running_gateway(settings, store) as running:
        yield Console(running, (await store.admin_tokens.create("console")).token)


@pytest.fixture
async def console(store: Store, emulator: EmulatorServer) -> AsyncIterator[Console]:
    async with running_console(gateway_settings(emulator, gateway_id="console-gw"), store) as running:
        yield running


async def fill(page: Page, form: str, values: dict[str, str]) -> None:
    """Type ``values`` into the form's fields by name and submit it as the user would."""
    await page.evaluate(
        f"""(() => {{
          const form = document.getElementById({json.dumps(form)});
          for (const [name, value] of Object.entries({json.dumps(values)})) form.elements[name].value = value;
          form.requestSubmit();
        }})()"""
    )


async def click(page: Page, selector: str) -> None:
    await page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


async def sign_in(page: Page, console: Console, token: str) -> None:
    await page.navigate(console.url)
    await page.wait_for("document.body.dataset.view === 'sign-in'", "the sign-in form")
    await fill(page, "sign-in", {"token": token})


async def stream_until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[Any], aiohttp.WSMessage]:
    """A live client: 100 ms of audio every 100 ms; its text messages and the close frame that ends it."""
    messages: list[Any] = []

    async def audio() -> None:
        while not ws.closed:
            try:
                await ws.send_bytes(FRAME)
            except ConnectionError:
                return
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(audio())
    try:
        while (msg := await ws.receive(timeout=60)).type is WSMsgType.TEXT:
            messages.append(json.loads(msg.data))
        return messages, msg
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def daily(usage: dict[str, Any], series_of: Callable[[dict[str, Any]], str]) -> dict[tuple[str, str], float]:
    """The oracle for a chart by day of cost: ``(series, UTC day) → USD`` summed over the usage document."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for s in usage["sessions"]:
        totals[(series_of(s), s["started_at"][:10])] += float(s["cost_usd"])
    return dict(totals)


async def chart_bars(page: Page, chart: str) -> dict[tuple[str, str], float]:
    """The bars the console drew: ``(series, UTC day of the bucket) → value``."""
    bars = await page.evaluate(
        f"[...document.querySelectorAll('#{chart} rect.bar')]"
        ".map(r => [r.dataset.series, r.dataset.bucket.slice(0, 10), Number(r.dataset.value)])"
    )
    assert len({(series, day) for series, day, _ in bars}) == len(bars), "one segment per series and bucket"
    return {(series, day): value for series, day, value in bars}


async def seed_history(store: Store, account_id: str, key_ids: list[str]) -> None:
    """30 ended sessions over the past 20 days: one to three a day, on each provider and each of ``key_ids``."""
    now = utcnow()
    async with store.database.write() as conn:
        n = 0
        for day in range(1, 21):
            for j in range(day % 3 + 1 if n < 30 else 0):
                n += 1
                cycles = (day + j) % 4 + 1
                started = now - timedelta(days=day, minutes=7 * j)
                await conn.execute(
                    insert(sessions).values(
                        id=str(uuid.uuid4()),
                        account_id=account_id,
                        kind="websocket",
                        provider=("assemblyai", "elevenlabs", "deepgram")[(day + j) % 3],
                        gateway_id="elsewhere",
                        started_at=started,
                        ended_at=started + timedelta(seconds=5 * cycles),
                        lease_expires_at=started + timedelta(seconds=5 * cycles),
                        audio_seconds=5.0 * cycles - 0.5,
                        cycles=cycles,
                        cost_nanos=cycles * 208_333,
                        close_code=1000,
                        closed_by="client",
                        api_key_id=key_ids[(day + j) % len(key_ids)],
                    )
                )
    assert n == 30


async def test_console_end_to_end(console: Console, browser: Browser, store: Store, tmp_path: Path) -> None:
    page = await browser.new_page()
    await page.send("Page.addScriptToEvaluateOnNewDocument", source=WATCH_CSP)

    # A wrong token: the API's refusal, and nothing kept.
    await sign_in(page, console, "sta_not-a-token")
    error = await page.wait_for(
        "!document.getElementById('sign-in-error').hidden && document.getElementById('sign-in-error').textContent",
        "the refusal",
    )
    assert "invalid_admin_token" in error, error
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.evaluate("document.getElementById('console-view').hidden")

    await fill(page, "sign-in", {"token": console.token})
    await page.wait_for("document.body.dataset.view === 'console'", "the console")
    assert await page.evaluate("Object.values(sessionStorage)") == [console.token]

    # An account, created from the console: it opens, and is listed with its balance and budget.
    await fill(page, "create-account", {"name": "Acme Radio", "balance_usd": "10", "monthly_budget_usd": "50"})
    account_id = await page.wait_for("document.getElementById('account-section').dataset.accountId", "the account")
    row = f"#accounts tr[data-account-id='{account_id}']"
    cells = await page.wait_for(
        f'document.querySelector("{row}") && [...document.querySelectorAll("{row} td")].map(td => td.textContent)',
        "the account listed",
    )
    assert cells[:5] == ["Acme Radio", "—", "10", "50", "—"], cells

    # A key: its secret shown once, and working.
    await click(page, "#create-key")
    secret = await page.wait_for("document.getElementById('new-key-secret').textContent", "the new key's secret")
    assert secret.startswith("sk-mai-")
    assert await page.evaluate("!document.getElementById('new-key').hidden")
    await page.wait_for("document.querySelectorAll('#keys tbody tr').length === 1", "the key listed")
    assert await store.authenticate(secret) is not None

    # A history for the charts: sessions of past days on this key and on a second one.
    key_id = await page.evaluate("document.getElementById('new-key').dataset.keyId")
    await seed_history(store, account_id, [key_id, (await store.create_key(account_id)).id])

    # A live session with that key, seen on the console, closed from it.
    url = URL(f"{console.running.http_url}/ws/v2/audio-stream?{QUERY}&api_key={secret}", encoded=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        session_id = ws._response.headers["X-Session-Id"]
        client = asyncio.create_task(stream_until_closed(ws))
        session_row = f"#sessions tr[data-session-id='{session_id}']"
        await page.wait_for(f'document.querySelector("{session_row}")', "the session listed live")
        cells = await page.evaluate(f'[...document.querySelectorAll("{session_row} td")].map(td => td.textContent)')
        # The gateway column: its name and this start's own identity (docs/operations.md#process-identity).
        assert cells[1:3] == ["Acme Radio", "assemblyai"] and cells[3].startswith("console-gw#"), cells
        # The usage chart while it runs (its totals as last written): the picture for the docs.
        await page.wait_for(
            f'Number(document.querySelector("{session_row} td:nth-child(7)").textContent) > 0',
            "the session's first charge",
        )
        await click(page, "#usage-refresh")
        await page.wait_for("document.querySelector('#chart-provider rect.bar')", "a bar while live")
        live = await page.screenshot()
        (tmp_path / "admin-console-live.png").write_bytes(live)

        await click(page, f"{session_row} button.close")
        messages, close = await asyncio.wait_for(client, 30)
        assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1008, "closed by operator")
        # Gracefully: the provider's answer to its end message reached the client before the close.
        assert messages and assemblyai.is_end_ack(json.dumps(messages[-1]), "sample_rate=16000"), messages[-3:]
    await page.wait_for(f'!document.querySelector("{session_row}")', "the session gone from the live list")

    # The usage charts, per provider and per key: each day's bar is the sum of the sessions that started that day.
    await click(page, "#usage-refresh")
    await page.wait_for("document.getElementById('usage-summary').dataset.sessions === '31'", "the usage document")
    status, usage = await console.call("GET", f"/accounts/{account_id}/usage")
    assert status == 200 and len(usage["sessions"]) == 31, usage
    labels = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#keys tbody tr')]"
        ".map(tr => [tr.dataset.keyId, tr.querySelector('code').textContent]))"
    )
    assert await chart_bars(page, "chart-provider") == pytest.approx(daily(usage, lambda s: s["provider"]))
    assert await chart_bars(page, "chart-key") == pytest.approx(daily(usage, lambda s: labels[s["api_key_id"]]))
    await page.evaluate(
        "document.getElementById('usage-measure').value = 'sessions'; "
        "document.getElementById('usage-measure').dispatchEvent(new Event('change'))"
    )
    await page.wait_for(
        "document.querySelector('#chart-key rect.bar title').textContent.includes('sessions')", "the session counts"
    )
    counts = await chart_bars(page, "chart-provider")
    assert sum(counts.values()) == 31
    (tmp_path / "admin-console-usage.png").write_bytes(await page.screenshot())

    # Revoke: two clicks; the key is refused from then on.
    await click(page, "#keys button.revoke")
    await click(page, "#keys button.revoke")
    await page.wait_for("document.querySelector('#keys tbody tr.revoked')", "the key revoked")
    assert await store.authenticate(secret) is None

    # All of it within the page's CSP, without an error.
    assert await page.evaluate("window.cspViolations") == []
    assert not [line for line in page.console if line.startswith(("exception", "console.error"))], page.console

    # Signing out forgets the token and leaves nothing of the console in the page, the key's secret least of all.
    assert await page.evaluate("document.getElementById('new-key-secret').textContent") == secret
    await click(page, "#sign-out")
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.evaluate(
        f"!document.documentElement.outerHTML.includes({json.dumps(secret)}) && "
        "document.querySelectorAll('#sessions tbody tr, #accounts tbody tr, #keys tbody tr').length === 0"
    )

    # The token outlives a reload of the tab, until signing out.
    await fill(page, "sign-in", {"token": console.token})
    await page.wait_for("document.body.dataset.view === 'console'", "the console again")
    await page.navigate(console.url)
    await page.wait_for("document.body.dataset.view === 'console'", "the console after a reload")
    await click(page, "#sign-out")
    await page.navigate(console.url)
    await page.wait_for("document.body.dataset.view === 'sign-in'", "the sign-in form after signing out")

    assert live.startswith(b"\x89PNG")
    # The docs' picture is made when missing or asked for, so that test runs leave the work tree clean.
    if not DOCS_SCREENSHOT.exists() or os.environ.get("STTGATE_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "admin-console-live.png", DOCS_SCREENSHOT)


async def test_accounts_are_paged(console: Console, browser: Browser, store: Store) -> None:
    for n in range(27):
        await create_account(store, name=f"customer {n:02}", balance_nanos=n * 10**9, external_id=f"cus_{n:02}")
    page = await browser.new_page()
    await sign_in(page, console, console.token)
    names = "[...document.querySelectorAll('#accounts tbody tr td:first-child')].map(td => td.textContent)"
    first = await page.wait_for(f"document.querySelectorAll('#accounts tbody tr').length && {names}", "a page")
    assert first == [f"customer {n:02}" for n in range(25)]
    await click(page, "#accounts-next")
    second = await page.wait_for(
        f"document.getElementById('accounts-page').textContent === 'page 2' && {names}", "page 2"
    )
    assert second == ["customer 25", "customer 26"]
    assert await page.evaluate("document.getElementById('accounts-next').disabled")
    page_1 = f"document.getElementById('accounts-page').textContent === 'page 1' && {names}"
    await click(page, "#accounts-previous")
    assert await page.wait_for(page_1, "page 1") == first
    await click(page, "#accounts-next")
    await page.wait_for("document.getElementById('accounts-page').textContent === 'page 2'", "page 2 again")
    await click(page, "#accounts-first")
    assert await page.wait_for(page_1, "page 1 again") == first
    assert await page.evaluate("document.getElementById('accounts-previous').disabled")

    # One customer, by the operator's id for it.
    await fill(page, "find-account", {"external_id": "cus_26"})
    assert await page.wait_for(
        f"document.getElementById('accounts-page').textContent.includes('cus_26') && {names}", "the account found"
    ) == ["customer 26"]
    assert await page.evaluate("document.getElementById('accounts-next').disabled")
    await click(page, "#accounts-all")
    assert await page.wait_for(page_1, "all accounts again") == first


async def test_a_revoked_admin_token_signs_the_console_out(console: Console, browser: Browser, store: Store) -> None:
    made = await store.admin_tokens.create("short-lived")
    page = await browser.new_page()
    await sign_in(page, console, made.token)
    await page.wait_for("document.body.dataset.view === 'console'", "the console")
    await store.admin_tokens.revoke(made.id)
    await click(page, "#accounts-refresh")
    reason = await page.wait_for(
        "document.body.dataset.view === 'sign-in' && document.getElementById('sign-in-error').textContent", "signed out"
    )
    assert "admin_token_revoked" in reason
    assert await page.evaluate("sessionStorage.length") == 0


async def test_the_page_is_served_with_its_csp_and_no_inline_code(console: Console) -> None:
    base = console.running.admin_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/admin", allow_redirects=False) as response:
            assert response.status == 308 and response.headers["Location"] == "admin/"
        async with http.get(f"{base}/admin/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert response.headers["Content-Security-Policy"] == CONSOLE_CSP
            page = await response.text()
        for name in sorted(CONSOLE_FILES):
            async with http.get(f"{base}/admin/static/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == ("text/css" if name.endswith(".css") else "text/javascript")
        for name in ("index.html", "..%2Fdemo.js", "nope.js"):
            async with http.get(f"{base}/admin/static/{name}") as response:
                assert response.status == 404, name
        # The API beside it is untouched: still JSON.
        async with http.get(f"{base}/admin/v1/accounts") as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == "missing_admin_token"

    assert {"api.js", "chart.js", "console.css", "console.js", "format.js", "schema-form.js"} <= CONSOLE_FILES
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)
    assert scripts == [""], "scripts are files of this origin, never inline"
    assert not re.search(r"\sstyle=|\son[a-z]+=", page)
    for name in CONSOLE_FILES:
        text = (resources.files("sttgate.web") / "static" / "admin" / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name
        assert "innerHTML" not in text and "eval(" not in text, name


async def test_sessions_fall_in_the_utc_hour_or_day_they_started(console: Console, browser: Browser) -> None:
    """chart.js's bucketing, in the browser: a window of whole UTC hours (days) ending with the current one, bounds
    included at the start and excluded at the end, like the API's ``[since, until)``; series largest first."""
    page = await browser.new_page()
    await page.navigate(console.url)
    result = await page.evaluate(
        """(async () => {
          const chart = await import("./static/chart.js");
          const sessions = [
            {started_at: "2026-11-27T17:59:59.999Z", provider: "early", cost_usd: "1"},
            {started_at: "2026-11-27T18:00:00Z", provider: "a", cost_usd: "0.5"},
            {started_at: "2026-11-29T17:00:00.000001Z", provider: "a", cost_usd: "0.25"},
            {started_at: "2026-11-29T17:59:59.999Z", provider: "b", cost_usd: "2"},
            {started_at: "2026-11-29T18:00:00Z", provider: "late", cost_usd: "4"},
          ];
          const picture = (name) => {
            const span = chart.buckets(name, new Date("2026-11-29T17:30:00Z"));
            const data = chart.bucketSessions(sessions, span, (s) => s.provider, chart.MEASURES.cost);
            return {
              start: span.start.toISOString(), end: span.end.toISOString(), count: span.count,
              series: data.series.map((s) => [s.name, s.values.flatMap((v, i) => (v ? [[i, v]] : []))]),
            };
          };
          return {hours: picture("hours"), days: picture("days")};
        })()"""
    )
    assert result["hours"] == {
        "start": "2026-11-27T18:00:00.000Z",
        "end": "2026-11-29T18:00:00.000Z",
        "count": 48,
        "series": [["b", [[47, 2]]], ["a", [[0, 0.5], [47, 0.25]]]],
    }
    assert result["days"] == {
        "start": "2026-10-31T00:00:00.000Z",
        "end": "2026-11-30T00:00:00.000Z",
        "count": 30,
        "series": [["late", [[29, 4]]], ["b", [[29, 2]]], ["early", [[27, 1]]], ["a", [[27, 0.5], [29, 0.25]]]],
    }


async def test_the_new_key_form_asks_for_the_options_the_api_documents(console: Console, browser: Browser) -> None:
    """schema-form.js, in the browser: a request body's schema (as openapi.json has it) → inputs → a typed body,
    empty fields left out; what a form cannot express is not asked for."""
    page = await browser.new_page()
    await page.navigate(console.url)
    result = await page.evaluate(
        """(async () => {
          const { fieldsOf, inputsFor, bodyOf } = await import("./static/schema-form.js");
          const schema = {properties: {
            name: {type: "string", title: "Name"},
            expires_in_seconds: {anyOf: [{type: "integer", minimum: 1}, {type: "null"}], title: "Expires In Seconds"},
            max_streams: {anyOf: [{type: "integer"}, {type: "null"}]},
            providers: {anyOf: [{type: "array", items: {type: "string"}}, {type: "null"}]},
            test_mode: {type: "boolean"},
            metadata: {type: "object"},
            either: {anyOf: [{type: "string"}, {type: "integer"}]},
          }};
          const fields = fieldsOf(schema);
          const form = document.createElement("form");
          form.append(...inputsFor(fields));
          const fill = (values) => {
            form.reset();
            for (const [name, value] of Object.entries(values)) {
              if (typeof value === "boolean") form.elements[name].checked = value;
              else form.elements[name].value = value;
            }
            return bodyOf(form, fields);
          };
          return {
            fields: fields.map((f) => [f.name, f.type]),
            full: fill({name: " web ", expires_in_seconds: "3600", max_streams: "1",
                        providers: "assemblyai, deepgram,", test_mode: true}),
            empty: fill({}),
            none: fieldsOf({description: "No fields yet", properties: {}}).length + fieldsOf(undefined).length,
          };
        })()"""
    )
    assert result == {
        "fields": [
            ["name", "string"],
            ["expires_in_seconds", "integer"],
            ["max_streams", "integer"],
            ["providers", "list"],
            ["test_mode", "boolean"],
        ],
        "full": {
            "name": "web",
            "expires_in_seconds": 3600,
            "max_streams": 1,
            "providers": ["assemblyai", "deepgram"],
            "test_mode": True,
        },
        "empty": {},
        "none": 0,
    }
