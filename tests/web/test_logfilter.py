"""The process-wide log filter (docs/operations.md#logs) on plain records: demoted parser errors, redaction, once."""

from __future__ import annotations

import io
import logging

from aiohttp.http_exceptions import BadStatusLine

from sttgate.core.redaction import Redactor
from sttgate.web.logfilter import LogHygiene, parser_reason

KEY = "sk-mai-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-x"


def _record(name: str, level: int, msg: str, args: tuple[object, ...], exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _emit(record: logging.LogRecord, counted: list[str], handlers: int = 1) -> list[str]:
    hygiene = LogHygiene(Redactor(), counted.append)
    outputs = []
    for _ in range(handlers):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        handler.addFilter(hygiene)
        handler.handle(record)
        outputs.append(stream.getvalue())
    return outputs


def test_a_parser_error_is_one_counted_warning_without_the_request_line() -> None:
    exc = _raised(BadStatusLine(f"GET /ws?api_key={KEY} HTTP/9.9", "Invalid HTTP version"))
    record = _record("aiohttp.server", logging.ERROR, "Error handling request from %s", ("10.0.0.1",), exc)
    counted: list[str] = []
    [out] = _emit(record, counted)
    assert out.count("\n") == 1 and out.startswith("WARNING aiohttp.server event=malformed_request remote=10.0.0.1 ")
    assert "error=BadStatusLine" in out and KEY[7:] not in out and "Traceback" not in out
    assert counted == ["malformed"]


def test_a_client_gone_is_one_counted_warning() -> None:
    exc = _raised(ConnectionResetError("Cannot write to closing transport"))
    record = _record("aiohttp.server", logging.ERROR, "Error handling request from %s", ("10.0.0.1",), exc)
    counted: list[str] = []
    [out] = _emit(record, counted)
    assert out == "WARNING aiohttp.server event=client_gone remote=10.0.0.1 error=ConnectionResetError\n"
    assert counted == ["client_gone"]


def test_other_errors_keep_their_traceback_redacted_and_count_once_over_two_handlers() -> None:
    exc = _raised(ValueError(f"bad key {KEY}"))
    record = _record("sttgate.gateway", logging.ERROR, "event=boom query=%s", (f"api_key={KEY}",), exc)
    counted: list[str] = []
    first, second = _emit(record, counted, handlers=2)
    assert first == second
    assert first.startswith("ERROR sttgate.gateway event=boom query=api_key=***\nTraceback")
    assert "ValueError: bad key sk-mai-***" in first and KEY[7:] not in first
    assert counted == []


def test_stack_info_is_redacted_and_bad_format_strings_still_log() -> None:
    record = _record("x", logging.INFO, "%d tokens", ("token=abc",), None)
    record.stack_info = f"Stack (most recent call last):\n  send({KEY!r})"
    [out] = _emit(record, [])
    assert KEY[7:] not in out and "tokens" in out


def test_parser_reason_stops_at_the_quoted_bytes() -> None:
    exc = BadStatusLine(f"GET /?k={KEY} HTTP/1.1", "Expected HTTP/")
    assert KEY[7:] not in parser_reason(exc)
