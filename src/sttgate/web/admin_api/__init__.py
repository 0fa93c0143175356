"""The admin API (docs/admin-api.md): ``/admin/v1/…`` for the operator's own systems, with admin tokens.

:func:`add_admin_api_routes` mounts it on an application (the admin listener's): a sub-application with its own
middleware, so every answer under ``/admin/v1`` is JSON, refusals have the error body of docs/contract.md#conventions
whichever app hosts it, and every route but ``openapi.json`` needs ``Authorization: Bearer sta_…``. The hosting app
must hold the gateway's :class:`~sttgate.web.services.Services` under ``SERVICES`` (the API uses its store).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from sttgate.core import refusals
from sttgate.core.refusals import Refusal
from sttgate.store import AdminTokenCheck, unavailable
from sttgate.web.admin_api.openapi import OPERATIONS, PREFIX, Operation
from sttgate.web.admin_api.routes import HANDLERS
from sttgate.web.errors import REFUSAL_HEADERS, refusal_response
from sttgate.web.services import SERVICES

__all__ = ["PREFIX", "add_admin_api_routes"]

_PUBLIC = frozenset(op.url for op in OPERATIONS if op.public)


def add_admin_api_routes(app: web.Application) -> None:
    """Mount the admin API under ``/admin/v1`` on ``app`` (before it starts)."""
    api = web.Application(middlewares=[_answer_json, _require_admin_token])
    for op in OPERATIONS:
        api.router.add_route(op.method, op.path, _parameters_checked(op, HANDLERS[op.operation_id]))
    app.add_subapp(PREFIX, api)


def _parameters_checked(op: Operation, handler: Handler) -> Handler:
    """``handler`` behind the parameter rules every operation shares: only the query parameters the operation
    documents (a misspelt filter must not silently list everything), and no NUL in any parameter (PostgreSQL cannot
    compare text holding one; the OpenAPI document's patterns exclude it)."""
    documented = frozenset(p.name for p in op.params if p.where == "query")

    async def checked(request: web.Request) -> web.StreamResponse:
        unknown = sorted(set(request.query) - documented)
        if unknown:
            raise refusals.invalid_request(f"Unknown query parameter {unknown[0]!r}.")
        if any("\x00" in value for value in (*request.match_info.values(), *request.query.values())):
            raise refusals.invalid_request("Path and query parameters may not contain NUL characters.")
        return await handler(request)

    return checked


@web.middleware
async def _answer_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals, aiohttp's own 404/405 and a database outage as the JSON error body; nothing is cached."""
    try:
        response = await handler(request)
    except Refusal as refusal:
        return refusal_response(refusal)
    except web.HTTPMethodNotAllowed as exc:
        return refusal_response(refusals.admin_method_not_allowed(", ".join(sorted(exc.allowed_methods))))
    except web.HTTPNotFound:
        return refusal_response(refusals.not_found("No such admin API path."))
    except web.HTTPException as exc:  # e.g. 413 for a body beyond aiohttp's client_max_size
        return refusal_response(Refusal(exc.status, "invalid_request", f"{exc.reason}."))
    except Exception as exc:
        if not unavailable(exc):
            raise
        return refusal_response(refusals.database_unavailable())
    response.headers.update(REFUSAL_HEADERS)
    return response


@web.middleware
async def _require_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer sta_…``: 401 without one or with an unknown one, 403 with a revoked one."""
    if request.path in _PUBLIC:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise refusals.missing_admin_token()
    check = await request.config_dict[SERVICES].store.admin_tokens.check(token)
    if check is AdminTokenCheck.REVOKED:
        raise refusals.admin_token_revoked()
    if check is not AdminTokenCheck.VALID:
        raise refusals.invalid_admin_token()
    return await handler(request)
