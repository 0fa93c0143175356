"""``GET /admin/v1/openapi.json``: the OpenAPI 3.1 description of the admin API (docs/admin-api.md).

Built once, as data, from the table of operations below and the pydantic models of
:mod:`sttgate.web.admin_api.schemas` (whose JSON Schema is the 2020-12 dialect OpenAPI 3.1 uses). The routes are
registered from the same table (:mod:`sttgate.web.admin_api.routes`), so every path and method described exists and
nothing else does; the tests run schemathesis against the served document.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sttgate import __version__
from sttgate.web.admin_api import schemas
from sttgate.web.admin_api.schemas import NO_NUL

PREFIX = "/admin/v1"
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One route: what it answers with and which refusals it may give (besides 401/403/503, which every
    authenticated route may give)."""

    method: str
    path: str  # below PREFIX
    operation_id: str
    summary: str
    status: int
    response: type[BaseModel] | None  # None: see ``response_schema``
    errors: tuple[int, ...]
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    response_list: bool = False  # a JSON array of ``response``
    response_headers: dict[str, Any] = field(default_factory=dict)
    public: bool = False  # no admin token needed

    @property
    def url(self) -> str:
        return PREFIX + self.path


_ID = {"type": "string", "minLength": 1, "pattern": NO_NUL}
_LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Items per page.")


def _path(name: str, what: str) -> Param:
    return Param(name, "path", _ID, f"The {what}'s id.", required=True)


def _query(name: str, description: str) -> Param:
    return Param(name, "query", {"type": "string", "pattern": NO_NUL}, description)


ACCOUNT_ID = _path("account_id", "account")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/accounts",
        "createAccount",
        "Create an account",
        201,
        schemas.Account,
        (400, 409),
        body=schemas.AccountCreate,
    ),
    Operation(
        "GET",
        "/accounts",
        "listAccounts",
        "List accounts, oldest first, a page at a time",
        200,
        schemas.AccountPage,
        (400,),
        params=(
            _query("external_id", "Only the account with this external id."),
            _query("cursor", "The `next_cursor` of the previous page (400 if it names no account)."),
            _LIMIT,
        ),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}",
        "getAccount",
        "Show an account",
        200,
        schemas.Account,
        (404,),
        params=(ACCOUNT_ID,),
    ),
    Operation(
        "PATCH",
        "/accounts/{account_id}",
        "updateAccount",
        "Change an account's fields",
        200,
        schemas.Account,
        (400, 404, 409),
        body=schemas.AccountUpdate,
        params=(ACCOUNT_ID,),
    ),
    Operation(
        "POST",
        "/accounts/{account_id}/credits",
        "createCredit",
        "Top up a prepaid balance, once per idempotency key",
        200,
        schemas.Credit,
        (400, 404, 409),
        body=schemas.CreditCreate,
        params=(ACCOUNT_ID,),
        response_headers={
            "Idempotent-Replayed": {
                "description": "`true` when this post repeated an earlier one's key: nothing was credited and the "
                "body is the earlier credit.",
                "schema": {"type": "string", "enum": ["true", "false"]},
            }
        },
    ),
    Operation(
        "POST",
        "/accounts/{account_id}/keys",
        "createKey",
        "Create an API key (its secret is shown only here)",
        201,
        schemas.NewKey,
        (400, 404),
        body=schemas.KeyCreate,
        body_required=False,
        params=(ACCOUNT_ID,),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}/keys",
        "listKeys",
        "List an account's keys",
        200,
        schemas.Key,
        (404,),
        params=(ACCOUNT_ID,),
        response_list=True,
    ),
    Operation(
        "DELETE",
        "/keys/{key_id}",
        "revokeKey",
        "Revoke a key",
        200,
        schemas.Key,
        (404,),
        params=(_path("key_id", "key"),),
    ),
    Operation(
        "GET",
        "/accounts/{account_id}/usage",
        "getUsage",
        "The account's usage document",
        200,
        schemas.Usage,
        (400, 404),
        params=(
            ACCOUNT_ID,
            _query("since", "Sessions started at or after this ISO 8601 time (a date alone: its 00:00 UTC)."),
            _query(
                "until",
                "Sessions started before this ISO 8601 time (a date alone: through that UTC day); after `since` "
                "(400 otherwise, or when either cannot be read).",
            ),
            _query("key_id", "Only the sessions opened with this key (or tokens it minted)."),
        ),
    ),
    Operation(
        "GET",
        "/sessions",
        "listSessions",
        "Sessions of every gateway, newest first, a page at a time",
        200,
        schemas.SessionPage,
        (400,),
        params=(
            Param(
                "live",
                "query",
                {"type": "string", "enum": ["true", "false"], "default": "false"},
                "`true`: only the sessions running now, on any gateway.",
            ),
            _query("account_id", "Only this account's sessions."),
            _query("cursor", "The `next_cursor` of the previous page (400 if it names no session)."),
            _LIMIT,
        ),
    ),
    Operation(
        "GET",
        "/sessions/{session_id}",
        "getSession",
        "Show a session",
        200,
        schemas.Session,
        (404,),
        params=(_path("session_id", "session"),),
    ),
    Operation(
        "POST",
        "/sessions/{session_id}/close",
        "closeSession",
        "End a live session (1008 `closed by operator`) on whichever gateway runs it",
        202,
        schemas.Session,
        (404, 409),
        params=(_path("session_id", "session"),),
    ),
    Operation("GET", "/openapi.json", "getOpenApi", "This document", 200, None, (), public=True),
)

_ERRORS = {
    400: "The request is not valid: a body or parameter of the wrong type or form, an unknown field.",
    401: "No admin token, or an unknown one.",
    403: "The admin token has been revoked.",
    404: "No such account, key or session.",
    409: "The current state refuses the change.",
    503: "The database is unavailable; try again.",
}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once)."""
    models: list[type[BaseModel]] = [schemas.Error]
    for op in OPERATIONS:
        models += [m for m in (op.body, op.response) if m is not None]
    _, defs = models_json_schema([(m, "validation") for m in dict.fromkeys(models)], ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sttgate admin API",
            "version": __version__,
            "description": "Accounts, credits, keys, usage and live sessions of an sttgate deployment, for the "
            "operator's own systems. Every route but this document needs an admin token "
            "(`Authorization: Bearer sta_…`, made with `sttgate admin-tokens create`). See docs/admin-api.md.",
        },
        "paths": _paths(),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "bearerFormat": "sta_…"}},
        },
        "security": [{"adminToken": []}],
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.url, {})[op.method.lower()] = _operation(op)
    return paths


def _operation(op: Operation) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.params:
        spec["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
            }
            for p in op.params
        ]
    if op.body is not None:
        spec["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    if op.response is None:
        content_schema: dict[str, Any] = {"type": "object"}
    elif op.response_list:
        content_schema = {"type": "array", "items": _ref(op.response)}
    else:
        content_schema = _ref(op.response)
    ok: dict[str, Any] = {"description": op.summary, "content": {"application/json": {"schema": content_schema}}}
    if op.response_headers:
        ok["headers"] = op.response_headers
    responses: dict[str, Any] = {str(op.status): ok}
    errors = op.errors if op.public else (*op.errors, 401, 403, 503)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": _ref(schemas.Error)}},
        }
    spec["responses"] = responses
    if op.public:
        spec["security"] = []
    return spec


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}
