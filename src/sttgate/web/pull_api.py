"""The REST face of pull mode (docs/pull.md#rest-api): start, stop and look at server-side stream tasks.

``setup(app)`` adds the routes and the start-up/clean-up of the :class:`~sttgate.pull.manager.PullManager` (as
``Services.pull``) to the gateway app; :func:`sttgate.web.app.create_app` calls it.

Start refuses in the order of docs/pull.md#start-a-task, with the same JSON error body: 401 key, 403 streaming, 400
body/provider, 400 ``invalid_audio_url`` then ``invalid_callback_url``, 400 conflicting audio format, then the slot
(429), the balance (402) and the provider's handshake (502/504/4xx) — the provider session is open before the answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.core.refusals import invalid_request, provider_not_allowed, task_not_found
from sttgate.gateway.opening import database_guard, principal_for, resolve_provider
from sttgate.gateway.tracing import handshake
from sttgate.gateway.tracing import span as tracing_span
from sttgate.pull.documents import task_document
from sttgate.pull.manager import PullManager
from sttgate.pull.params import encode_params, parse_body, pull_query
from sttgate.pull.urlsafety import check_callback_url
from sttgate.store import Principal
from sttgate.web.credentials import credential_from_request
from sttgate.web.services import SERVICES

MAX_BODY_BYTES = 64 * 1024


def success(data: dict[str, object]) -> web.Response:
    return web.json_response({"code": 200, "message": "success", "data": data})


async def _principal(request: web.Request) -> Principal:
    svc = request.app[SERVICES]
    key = credential_from_request(request, None)
    return await database_guard(svc.sessions, lambda: principal_for(svc.store, key, None, ""))


async def _json_body(request: web.Request) -> object:
    """The whole body as JSON, however it is segmented on the wire, and never more than ``MAX_BODY_BYTES`` of it.

    ``content.read(n)`` answers with what has arrived so far, so it is called until the end of the body (or one
    byte past the limit): a body that arrives in two TCP segments is read whole, not cut at the first.
    """
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise invalid_request(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    raw = bytearray()
    while len(raw) <= MAX_BODY_BYTES:
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise invalid_request(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("The request body is not valid JSON.") from None


async def start_task(request: web.Request) -> web.Response:
    """``POST /api/v2/audio-stream/start``: open the provider session, start FFmpeg, answer the task id. With tracing
    on, the task's session is one trace from this request to its end (docs/operations.md#tracing)."""
    tracing = request.app[SERVICES].tracing
    with handshake(None if tracing is None else tracing.begin(request.headers, route=request.path)):
        return await _start_task(request)


async def _start_task(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    settings = svc.settings
    with tracing_span("authenticate"):
        principal = await _principal(request)
    body = parse_body(await _json_body(request))
    provider = resolve_provider(body.provider)
    if not principal.allows(provider.name):
        raise provider_not_allowed(provider.name, principal.key_providers or ())
    audio = await svc.pull.check_source(body.audio_url)
    callback = await check_callback_url(body.callback_url, allow_private=settings.pull_allow_private)
    forwarded = pull_query(provider, encode_params(body.params))
    task_id = str(uuid.uuid4())
    live = await svc.open_stream(principal, provider, forwarded, kind=SessionKind.PULL, session_id=task_id)
    try:
        secret = await svc.store.webhook_secret(principal.account_id)
        await svc.store.tasks.insert_task(
            task_id=task_id,
            account_id=principal.account_id,
            audio_url=audio.url,
            callback_url=callback.url,
            provider=provider.name,
            params=forwarded,
        )
        live.accept()
    except BaseException:
        live.record(None, "task could not be recorded", ClosedBy.GATEWAY)
        await live.end()
        raise
    svc.pull.launch(task_id=task_id, live=live, audio=audio, callback_url=callback.url, secret=secret)
    return success({"task_id": task_id})


async def stop_task(request: web.Request) -> web.Response:
    """``POST /api/v2/audio-stream/stop`` ``{"task_id"}``: sets the stop flag; the running gateway acts within 1 s."""
    svc = request.app[SERVICES]
    principal = await _principal(request)
    body = await _json_body(request)
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise invalid_request('The request body must be a JSON object with "task_id".')
    status = await svc.store.tasks.request_stop(task_id, principal.account_id)
    if status is None:
        raise task_not_found()
    svc.pull.stop_local(task_id)
    return success({"task_id": task_id, "status": status})


async def get_task(request: web.Request) -> web.Response:
    """``GET /api/v2/audio-stream/tasks/{task_id}``: status, times, audio, cost, last error (own tasks only)."""
    svc = request.app[SERVICES]
    principal = await _principal(request)
    row = await svc.store.tasks.get(request.match_info["task_id"], principal.account_id)
    if row is None:
        raise task_not_found()
    return success(task_document(row))


def setup(app: web.Application) -> None:
    """Add pull mode to a gateway app: the three routes and the task manager's start-up and clean-up.

    The clean-up runs before the gateway's own (it is registered after it): running tasks end as
    ``gateway_shutdown`` with their ``ended`` webhook while the store and sessions are still there.
    """

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        manager = PullManager(svc.settings, svc.store)
        svc.pull = manager
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/v2/audio-stream/start", start_task)
    app.router.add_post("/api/v2/audio-stream/stop", stop_task)
    app.router.add_get("/api/v2/audio-stream/tasks/{task_id}", get_task)
