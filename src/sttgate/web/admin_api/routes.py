"""The admin API's handlers (docs/admin-api.md), one per operation of :data:`sttgate.web.admin_api.openapi.OPERATIONS`.

Each handler reads and checks its input (bodies against :mod:`sttgate.web.admin_api.schemas`, query parameters by
hand, exactly as the OpenAPI document describes them), calls :class:`sttgate.admin.Admin` (the same operations the
CLI runs) and answers with its document. Store errors become refusals here: not found → 404, a conflict → 409, any
other bad value → 400.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from sttgate.admin import Admin
from sttgate.admin.window import InvalidWindow, window
from sttgate.core import refusals
from sttgate.core.money import usd_to_nanos
from sttgate.providers import names
from sttgate.store import KEEP, ConflictError, Keep, NotFoundError
from sttgate.store.accounts import KeyOptions
from sttgate.web.admin_api import openapi, schemas
from sttgate.web.services import SERVICES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")
_DIGITS = re.compile(r"[0-9]{1,7}")
# A JSON body larger than this is refused unread (the largest valid one is a few kilobytes).
MAX_BODY_BYTES = 64 * 1024


def admin(request: web.Request) -> Admin:
    return Admin(request.config_dict[SERVICES].store, names())


async def call(operation: Awaitable[_T]) -> _T:
    """Run a store operation; its refusals as the API's."""
    try:
        return await operation
    except NotFoundError as exc:
        raise refusals.not_found(_sentence(exc)) from None
    except ConflictError as exc:
        raise refusals.conflict(_sentence(exc)) from None
    except ValueError as exc:
        raise refusals.invalid_request(_sentence(exc)) from None


def _sentence(exc: Exception) -> str:
    text = str(exc).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def answer(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A document as the JSON answer."""
    return web.json_response(document, status=status, headers=headers)


async def body(request: web.Request, model: type[_M], *, required: bool = True) -> _M:
    """The request body read as ``model`` (strict: wrong types and unknown fields are refused with 400)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise refusals.invalid_request(f"The body is larger than {MAX_BODY_BYTES} bytes.")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise refusals.invalid_request(f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        if required:
            raise refusals.invalid_request("A JSON object body is required.")
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise refusals.invalid_request(_invalid(exc)) from None


def _invalid(exc: ValidationError) -> str:
    """The first few problems, one line: ``field: what is wrong``."""
    problems = []
    for error in exc.errors(include_url=False)[:3]:
        if error["type"] == "json_invalid":
            return "The body is not valid JSON."
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "Invalid request body: " + "; ".join(problems) + "."


def _nanos(usd: str | None) -> int | None:
    return None if usd is None else usd_to_nanos(usd)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return 100
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 1000:
        raise refusals.invalid_request("limit must be an integer from 1 to 1000.")
    return int(text)


def _live(request: web.Request) -> bool:
    text = request.query.get("live", "false")
    if text not in ("true", "false"):
        raise refusals.invalid_request("live must be true or false.")
    return text == "true"


# -- accounts -------------------------------------------------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    given = await body(request, schemas.AccountCreate)
    document = await call(
        admin(request).create_account(
            name=given.name,
            max_streams=given.max_streams,
            balance_nanos=_nanos(given.balance_usd),
            streaming_enabled=given.streaming_enabled,
            external_id=given.external_id,
            webhook_url=given.webhook_url,
            low_balance_nanos=_nanos(given.low_balance_usd),
            monthly_budget_nanos=_nanos(given.monthly_budget_usd),
        )
    )
    return answer(document, 201)


async def list_accounts(request: web.Request) -> web.Response:
    document = await call(
        admin(request).accounts_page(
            external_id=request.query.get("external_id"), cursor=request.query.get("cursor"), limit=_limit(request)
        )
    )
    return answer(document)


async def get_account(request: web.Request) -> web.Response:
    account_id = request.match_info["account_id"]
    document = await call(admin(request).get_account(account_id))
    if document is None:
        raise refusals.not_found(f"No account {account_id}.")
    return answer(document)


async def update_account(request: web.Request) -> web.Response:
    given = await body(request, schemas.AccountUpdate)
    fields = given.model_fields_set

    def optional(name: str, value: Any) -> Any | Keep:
        return value if name in fields else KEEP

    balance: dict[str, Any] = {}
    if "balance_usd" in fields:
        balance = {"postpaid": True} if given.balance_usd is None else {"set_balance_nanos": _nanos(given.balance_usd)}
    document = await call(
        admin(request).update_account(
            request.match_info["account_id"],
            name=given.name if "name" in fields else None,
            max_streams=given.max_streams if "max_streams" in fields else None,
            streaming_enabled=given.streaming_enabled if "streaming_enabled" in fields else None,
            external_id=optional("external_id", given.external_id),
            webhook_url=optional("webhook_url", given.webhook_url),
            low_balance_nanos=optional("low_balance_usd", _nanos(given.low_balance_usd)),
            monthly_budget_nanos=optional("monthly_budget_usd", _nanos(given.monthly_budget_usd)),
            **balance,
        )
    )
    return answer(document)


async def create_credit(request: web.Request) -> web.Response:
    given = await body(request, schemas.CreditCreate)
    amount = usd_to_nanos(given.amount_usd)
    document, replayed = await call(
        admin(request).credit(request.match_info["account_id"], amount, given.idempotency_key)
    )
    return answer(document, headers={"Idempotent-Replayed": "true" if replayed else "false"})


# -- keys -----------------------------------------------------------------------------------------------------------


async def create_key(request: web.Request) -> web.Response:
    fields = await body(request, schemas.KeyCreate, required=False)
    options = KeyOptions(
        name=fields.name,
        expires_in_seconds=fields.expires_in_seconds,
        max_streams=fields.max_streams,
        providers=None if fields.providers is None else tuple(fields.providers),
    )
    return answer(await call(admin(request).create_key(request.match_info["account_id"], options)), 201)


async def list_keys(request: web.Request) -> web.Response:
    return answer(await call(admin(request).list_keys(request.match_info["account_id"])))


async def revoke_key(request: web.Request) -> web.Response:
    return answer(await call(admin(request).revoke_key(request.match_info["key_id"])))


# -- usage and sessions ---------------------------------------------------------------------------------------------


async def get_usage(request: web.Request) -> web.Response:
    try:
        since, until = window(request.query.get("since") or None, request.query.get("until") or None)
    except InvalidWindow as exc:
        raise refusals.invalid_request(str(exc)) from None
    document = await call(
        admin(request).usage(
            request.match_info["account_id"], since=since, until=until, key_id=request.query.get("key_id") or None
        )
    )
    return answer(document)


async def list_sessions(request: web.Request) -> web.Response:
    document = await call(
        admin(request).sessions_page(
            live=_live(request),
            account_id=request.query.get("account_id"),
            cursor=request.query.get("cursor"),
            limit=_limit(request),
        )
    )
    return answer(document)


async def get_session(request: web.Request) -> web.Response:
    return answer(await call(admin(request).get_session(request.match_info["session_id"])))


async def close_session(request: web.Request) -> web.Response:
    """Recorded in the database; the gateway running the session polls for it (docs/admin-api.md#close-a-session)."""
    return answer(await call(admin(request).close_session(request.match_info["session_id"])), 202)


async def get_openapi(request: web.Request) -> web.Response:
    return answer(openapi.document())


HANDLERS: dict[str, Handler] = {
    "createAccount": create_account,
    "listAccounts": list_accounts,
    "getAccount": get_account,
    "updateAccount": update_account,
    "createCredit": create_credit,
    "createKey": create_key,
    "listKeys": list_keys,
    "revokeKey": revoke_key,
    "getUsage": get_usage,
    "listSessions": list_sessions,
    "getSession": get_session,
    "closeSession": close_session,
    "getOpenApi": get_openapi,
}
