"""Webhook delivery: envelope, signature, order, retries, overflow, exactly one ``ended`` (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from sttgate.pull.webhooks import (
    SIGNATURE_HEADER,
    Attempt,
    WebhookDeliverer,
    WebhookPolicy,
    backoff_delay,
    ended_body,
    message_body,
    sign,
    standard_headers,
    standard_webhooks_secret,
    verify,
    webhook_client,
    webhook_id,
)
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
FAST = WebhookPolicy(timeout=5.0, max_attempts=5, backoff=0.01, backoff_max=0.05, queue_max=1000)


def test_message_envelope_embeds_the_provider_json_byte_for_byte() -> None:
    text = '{"type":"Turn","transcript":"h\\u00e9llo","end_of_turn_confidence":1.0,"words":[{"start":10}]}'
    body = message_body("t-1", 3, "assemblyai", text)
    assert text.encode() in body
    envelope = json.loads(body)
    assert envelope == {
        "task_id": "t-1",
        "seq": 3,
        "provider": "assemblyai",
        "event": "message",
        "data": json.loads(text),
    }
    assert list(envelope) == ["task_id", "seq", "provider", "event", "data"]


def test_message_envelope_quotes_text_that_is_not_json() -> None:
    body = message_body("t", 1, "elevenlabs", 'not json "at" all')
    assert json.loads(body)["data"] == 'not json "at" all'


def test_ended_envelope() -> None:
    envelope = json.loads(ended_body("t", 9, "elevenlabs", "stopped", "stopped by the user"))
    assert envelope["event"] == "ended"
    assert envelope["seq"] == 9
    assert envelope["data"] == {"status": "stopped", "reason": "stopped by the user"}


def test_signature_is_hmac_sha256_hex_of_the_body() -> None:
    body = b'{"x": 1}'
    signature = sign(SECRET, body)
    assert signature == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify(SECRET, body, signature)
    assert not verify(SECRET, body + b" ", signature)
    assert not verify("other", body, signature)


def test_a_standard_secret_is_its_own_library_spelling() -> None:
    assert standard_webhooks_secret(SECRET) == SECRET


def test_an_old_url_safe_secret_is_respelled_for_the_libraries() -> None:
    key = bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])  # encodes with '-' and '_' in the URL-safe alphabet
    old = "whsec_" + base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert "-" in old and "_" in old
    assert standard_webhooks_secret(old) == "whsec_" + base64.b64encode(key).decode()


@given(
    key=st.binary(min_size=1, max_size=64),
    url_safe=st.booleans(),
    seq=st.integers(min_value=1, max_value=10**9),
    text=st.text(max_size=200),
)
def test_the_library_verifies_every_signature_in_either_spelling(
    key: bytes, url_safe: bool, seq: int, text: str
) -> None:
    """Any key, spelled the current or the old way, any body: a Standard Webhooks library given the secret's
    library spelling verifies the headers, and refuses them for another body."""
    encode = base64.urlsafe_b64encode if url_safe else base64.b64encode
    secret = "whsec_" + encode(key).decode().rstrip("=" if url_safe else "")
    library_secret = standard_webhooks_secret(secret)
    body = message_body("t", seq, "deepgram", json.dumps({"transcript": text}, ensure_ascii=False))
    headers = standard_headers(Webhook(library_secret), webhook_id("t", seq), int(time.time()), body)
    assert Webhook(library_secret).verify(body, headers)["seq"] == seq
    with pytest.raises(WebhookVerificationError):
        Webhook(library_secret).verify(body + b" ", headers)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!"])
def test_a_secret_that_is_not_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        standard_webhooks_secret(secret)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 30.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


@dataclass
class Receiver:
    """A webhook endpoint that records every POST and answers from a script (then 200)."""

    script: list[int] = field(default_factory=list)
    posts: list[tuple[bytes, dict[str, str], int]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.gate is not None:
            await self.gate.wait()
        status = self.script.pop(0) if self.script else 200
        self.posts.append((body, dict(request.headers), status))
        self.changed.set()
        return web.Response(status=status, text="ok")

    def accepted(self) -> list[dict]:
        return [json.loads(body) for body, _, status in self.posts if status == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with serve_app(app) as base:
        yield rec, base + "/hook"


@pytest.fixture
async def client():
    session = webhook_client(allow_private=True)
    yield session
    await session.close()


def deliverer(client, url: str, policy: WebhookPolicy = FAST, attempts: list[Attempt] | None = None, **options):
    async def record(attempt: Attempt) -> None:
        if attempts is not None:
            attempts.append(attempt)

    d = WebhookDeliverer(
        task_id="task-1",
        provider="elevenlabs",
        callback_url=url,
        secret=SECRET,
        client=client,
        policy=policy,
        recorder=record,
        **options,
    )
    d.start()
    return d


async def test_messages_arrive_in_order_signed_then_one_ended(receiver, client) -> None:
    rec, url = receiver
    d = deliverer(client, url)
    texts = [json.dumps({"message_type": "partial_transcript", "text": f"w{i}"}) for i in range(20)]
    for text in texts:
        d.message(text)
    d.end("source_ended", "the source ended")
    d.end("stopped", "a second end is ignored")
    assert await d.wait_done(10)
    accepted = rec.accepted()
    assert [e["seq"] for e in accepted] == list(range(1, 22))
    assert [e["data"] for e in accepted[:-1]] == [json.loads(t) for t in texts]
    assert accepted[-1]["event"] == "ended"
    assert accepted[-1]["data"] == {"status": "source_ended", "reason": "the source ended"}
    library = Webhook(SECRET)
    for body, headers, _ in rec.posts:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert library.verify(body, headers) == json.loads(body)
        assert headers["Content-Type"] == "application/json"
    assert len({headers["webhook-id"] for _, headers, _ in rec.posts}) == len(rec.posts)
    assert d.ended_delivered and d.dropped == 0


async def test_a_500_is_retried_with_backoff_and_the_message_accepted_once(receiver, client) -> None:
    rec, url = receiver
    rec.script = [500, 500, 500]
    attempts: list[Attempt] = []
    d = deliverer(client, url, attempts=attempts)
    d.message('{"n": 1}')
    d.message('{"n": 2}')
    d.end("stopped", None)
    assert await d.wait_done(10)
    assert [(p[2], json.loads(p[0])["seq"]) for p in rec.posts] == [
        (500, 1),
        (500, 1),
        (500, 1),
        (200, 1),
        (200, 2),
        (200, 3),
    ]
    assert [e["data"] for e in rec.accepted()[:2]] == [{"n": 1}, {"n": 2}]
    assert [(a.seq, a.attempt, a.status_code) for a in attempts[:4]] == [
        (1, 1, 500),
        (1, 2, 500),
        (1, 3, 500),
        (1, 4, 200),
    ]
    assert attempts[0].error == "HTTP 500" and attempts[3].error is None
    # Every attempt verifies with a Standard Webhooks library; the retries of one event carry its one webhook-id.
    library = Webhook(SECRET)
    for body, headers, _ in rec.posts:
        library.verify(body, headers)
    ids = [headers["webhook-id"] for _, headers, _ in rec.posts]
    assert ids[:4] == [ids[0]] * 4 and len(set(ids)) == 3


async def test_each_attempt_is_stamped_with_its_own_time_under_the_same_id(receiver, client) -> None:
    rec, url = receiver
    rec.script = [503]
    now = iter([1_700_000_000.9, 1_700_000_042.2])
    d = deliverer(client, url, clock=lambda: next(now))
    d.end("stopped", None)
    assert await d.wait_done(10)
    (first_body, first, _), (second_body, second, _) = rec.posts
    assert first_body == second_body
    assert first["webhook-id"] == second["webhook-id"] == "task-1:1"
    assert (first["webhook-timestamp"], second["webhook-timestamp"]) == ("1700000000", "1700000042")
    assert first["webhook-signature"] != second["webhook-signature"]
    # What a receiver does to refuse a replay: an old timestamp fails verification whatever the signature.
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(second_body, second)


async def test_a_final_4xx_is_not_retried(receiver, client) -> None:
    rec, url = receiver
    rec.script = [404]
    attempts: list[Attempt] = []
    d = deliverer(client, url, attempts=attempts)
    d.message('{"n": 1}')
    d.end("stopped", None)
    assert await d.wait_done(10)
    assert [(a.seq, a.attempt, a.status_code) for a in attempts] == [(1, 1, 404), (2, 1, 200)]
    assert d.failed == 1 and d.ended_delivered


async def test_overflow_drops_the_oldest_waiting_messages_never_ended(receiver, client) -> None:
    rec, url = receiver
    rec.gate = asyncio.Event()
    policy = WebhookPolicy(timeout=5.0, max_attempts=3, backoff=0.01, backoff_max=0.05, queue_max=5)
    d = deliverer(client, url, policy)
    d.message('{"n": 1}')
    await wait_for(lambda: d._inflight is not None)  # seq 1 is being posted (the receiver holds it)
    for n in range(2, 13):
        d.message(json.dumps({"n": n}))  # never blocks, whatever the receiver does
    d.end("stopped", None)
    assert d.pending == 1 + 5 + 1  # in flight, the five newest messages, ended
    assert d.dropped == 6
    rec.gate.set()
    assert await d.wait_done(10)
    assert [e["seq"] for e in rec.accepted()] == [1, 8, 9, 10, 11, 12, 13]
    assert rec.accepted()[0]["data"] == {"n": 1}
    assert rec.accepted()[-1]["event"] == "ended"


async def test_a_dead_webhook_degrades_to_one_attempt_per_message(client) -> None:
    async with serve_app(web.Application()) as base:
        pass
    attempts: list[Attempt] = []
    policy = WebhookPolicy(timeout=2.0, max_attempts=3, backoff=0.01, backoff_max=0.02, queue_max=100)
    d = deliverer(client, base + "/hook", policy, attempts)
    for n in range(4):
        d.message(json.dumps({"n": n}))
    d.end("source_failed", "x")
    assert await d.wait_done(10)
    per_seq = {}
    for a in attempts:
        per_seq[a.seq] = a.attempt
        assert a.status_code is None and a.error
    assert per_seq == {1: 3, 2: 1, 3: 1, 4: 1, 5: 3}
    assert not d.ended_delivered


async def test_private_callback_refused_at_connect_time(receiver) -> None:
    rec, url = receiver
    port = url.split(":")[2].split("/")[0]
    session = webhook_client(allow_private=False)
    try:
        attempts: list[Attempt] = []
        policy = WebhookPolicy(timeout=2.0, max_attempts=1, backoff=0.01, backoff_max=0.01)
        d = deliverer(session, f"http://localhost:{port}/hook", policy, attempts)
        d.end("stopped", None)
        assert await d.wait_done(10)
    finally:
        await session.close()
    assert rec.posts == []
    assert attempts[0].status_code is None and "may not reach" in (attempts[0].error or "")
