"""``STTGATE_LOG_FORMAT=json`` (docs/operations.md#logs): one JSON object per line for every logger (aiohttp's
included), events with their fields as keys, and the redaction still applied, to the message and to the fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from pathlib import Path

import aiohttp
from yarl import URL

from sttgate.core.redaction import Redactor
from sttgate.gateway.logevents import EVENT, FIELDS, JsonFormatter
from sttgate.web.access_log import RedactingAccessLogger
from sttgate.web.logfilter import LogHygiene
from tests.support.serve import serve_env, serve_processes
from tests.support.waiting import wait_for

KEY = "sk-mai-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-x"


def _format(record: logging.LogRecord) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LogHygiene(Redactor(), lambda kind: None))
    handler.handle(record)
    text = stream.getvalue()
    assert text.count("\n") == 1
    return json.loads(text)


def test_an_event_is_one_object_with_its_fields_as_keys_redacted() -> None:
    fields = {"session": "s-1", "cycles": 3, "audio_seconds": "12.000", "ok": True, "query": f"x=1&apiKey={KEY}"}
    record = logging.LogRecord("sttgate.gateway", logging.INFO, __file__, 1, "event=session_end …", None, None)
    setattr(record, EVENT, "session_end")
    setattr(record, FIELDS, {**fields, "level": "mine"})
    doc = _format(record)
    assert doc["time"].endswith("Z") and (doc["level"], doc["logger"], doc["event"]) == (
        "INFO",
        "sttgate.gateway",
        "session_end",
    )
    assert (doc["session"], doc["cycles"], doc["audio_seconds"], doc["ok"]) == ("s-1", 3, "12.000", True)
    assert doc["field_level"] == "mine" and "message" not in doc
    assert KEY[7:] not in json.dumps(doc)


def test_any_other_record_is_its_message_and_redacted_traceback() -> None:
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError as exc:
        record = logging.LogRecord(
            "aiohttp.web", logging.ERROR, __file__, 1, "failed %s", ("x",), (ValueError, exc, None)
        )
    doc = _format(record)
    assert doc["message"] == "failed x" and "ValueError" in doc["exc"]
    assert KEY[7:] not in json.dumps(doc)


def test_the_access_log_builds_lines_only_when_its_level_writes_them() -> None:
    """aiohttp asks the access logger once per connection whether it is on: below INFO no line is built."""
    logger = logging.getLogger("sttgate.test.access")
    try:
        logger.setLevel(logging.WARNING)
        assert not RedactingAccessLogger(logger, "").enabled
        logger.setLevel(logging.INFO)
        assert RedactingAccessLogger(logger, "").enabled
    finally:
        logger.setLevel(logging.NOTSET)


async def test_serve_writes_json_lines_only_and_no_secret(emulator, account, tmp_path: Path) -> None:
    acct = await account()
    env = {**serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "json-logs"), "STTGATE_LOG_FORMAT": "json"}
    async with serve_processes() as spawn:
        sp = await spawn(env=env, cwd=tmp_path)
        base = f"http://127.0.0.1:{sp.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz?api_key={acct.key}") as resp:
                assert resp.status == 200
            url = URL(f"{base}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}&emu_echo=1", encoded=True)
            async with http.ws_connect(url) as ws:
                await ws.send_bytes(b"\x00" * 3200)
                assert (await ws.receive(timeout=5)).data == b"\x00" * 3200
        # A request the HTTP parser refuses: aiohttp's own record, demoted and counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", sp.port)
        writer.write(f"GET /ws?api_key={acct.key} HTTP/9.9\r\n\r\n".encode())
        await writer.drain()
        await reader.read()
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: "malformed_request" in sp.log, what="the malformed request's line")
        sp.proc.send_signal(signal.SIGTERM)
        assert await sp.wait() == 0
    docs = [json.loads(line) for line in sp.lines]  # every line is one JSON object
    assert all({"time", "level", "logger"} <= doc.keys() for doc in docs)
    assert acct.key not in sp.log and acct.key[7:] not in sp.log
    by_event = {doc["event"]: doc for doc in docs if "event" in doc}
    assert {"database_used", "gateway_listening", "session_start", "session_end", "gateway_stopped"} <= set(by_event)
    end = by_event["session_end"]
    assert (end["provider"], end["close_code"], end["frames_up"]) == ("assemblyai", 1000, 1)
    assert end["key"] and end["key"] == by_event["session_start"]["key"]
    assert by_event["malformed_request"]["logger"] == "aiohttp.server"
    assert by_event["malformed_request"]["level"] == "WARNING"
    access = [doc for doc in docs if doc["logger"] == "aiohttp.access"]
    health = next(doc for doc in access if doc["path"].startswith("/healthz"))
    assert (health["method"], health["status"]) == ("GET", 200) and "api_key=" in health["path"]
    assert any(doc["logger"].startswith("alembic") for doc in docs)
