"""The admin API's bodies as pydantic models: requests are validated with them, and the OpenAPI document's schemas
are generated from them (:mod:`sttgate.web.admin_api.openapi`), so what is checked and what is published cannot
drift apart.

Requests are strict (a number where a string is expected, ``"5"`` for an integer, an unknown field: 400), and
amounts are decimal strings (``"10.00"``) as in every document of the gateway. The response models describe the
documents of :mod:`sttgate.admin.documents`; the tests hold every response to them (schemathesis).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from sttgate.providers import names
from sttgate.store.accounts import (
    MAX_EXTERNAL_ID_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_KEY_LIFETIME_SECONDS,
    MAX_STREAMS,
    MAX_WEBHOOK_URL_CHARS,
    WEBHOOK_URL_PATTERN,
)

# Text may not hold NUL characters: PostgreSQL cannot store them (a NUL would otherwise be a database error).
NO_NUL = r"^[^\x00]*$"


def _integral(value: object) -> object:
    """JSON Schema's ``integer`` includes ``5.0``; strict validation would refuse it, so an integral float becomes
    an int here (``true``, strings and fractions stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A USD amount: digits, optionally a point and at most 9 decimals (the gateway counts nano-dollars); below 10^9 USD.
Usd = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,9}(\.[0-9]{1,9})?$",
        description="A USD amount as a decimal string, at most 9 decimals.",
        examples=["10.00"],
    ),
]


def _not_zero(value: str) -> str:
    if not value.strip("0."):
        raise ValueError("must be more than zero")
    return value


# A credit: a USD amount above zero.
PositiveUsd = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,9}(\.[0-9]{1,9})?$",
        description="A USD amount above zero as a decimal string, at most 9 decimals.",
        examples=["10.00"],
        json_schema_extra={"not": {"pattern": r"^[0.]*$"}},
    ),
    AfterValidator(_not_zero),
]
Name = Annotated[str, Field(min_length=1, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$", description="A label; not blank.")]
ExternalId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_EXTERNAL_ID_CHARS,
        pattern=NO_NUL,
        description="The operator's own id for this customer in its billing system; unique across accounts.",
    ),
]
WebhookUrl = Annotated[
    str,
    Field(
        max_length=MAX_WEBHOOK_URL_CHARS,
        pattern=WEBHOOK_URL_PATTERN,
        description="An absolute http or https URL where the account's events are posted.",
    ),
]
MaxStreams = Annotated[
    int, Field(ge=0, le=MAX_STREAMS, description="Concurrent streams plus pull tasks."), BeforeValidator(_integral)
]


# A registered provider's name (the enumeration follows the registry).
def _registered(value: str) -> str:
    if value not in names():
        raise ValueError(f"unknown provider; valid providers: {', '.join(names())}")
    return value


ProviderName = Annotated[
    str, Field(json_schema_extra={"enum": list(names())}, description="A provider's name."), AfterValidator(_registered)
]

_REQUEST = ConfigDict(extra="forbid", strict=True)
_RESPONSE = ConfigDict(extra="forbid")


# -- requests -------------------------------------------------------------------------------------------------------


class AccountCreate(BaseModel):
    model_config = _REQUEST

    name: Name
    max_streams: MaxStreams = 5
    balance_usd: Usd | None = Field(None, description="The prepaid balance; null or absent: a postpaid account.")
    streaming_enabled: bool = True
    external_id: ExternalId | None = None
    webhook_url: WebhookUrl | None = None
    low_balance_usd: Usd | None = Field(None, description="The balance below which `balance.low` is sent.")
    monthly_budget_usd: Usd | None = Field(None, description="The spending cap per calendar month (UTC).")


class AccountUpdate(BaseModel):
    """Only the fields given change; ``null`` clears an optional field, and a null ``balance_usd`` makes the account
    postpaid."""

    model_config = _REQUEST

    # Not nullable, but optional: absent leaves them as they are (a None default is never validated, so a null in
    # the body is refused while an absent field reads as None; handlers look at ``model_fields_set``).
    name: Name = None  # type: ignore[assignment]
    max_streams: MaxStreams = None  # type: ignore[assignment]
    streaming_enabled: bool = None  # type: ignore[assignment]
    balance_usd: Usd | None = Field(None, description="Set the prepaid balance; null: make the account postpaid.")
    external_id: ExternalId | None = None
    webhook_url: WebhookUrl | None = None
    low_balance_usd: Usd | None = None
    monthly_budget_usd: Usd | None = None


class CreditCreate(BaseModel):
    model_config = _REQUEST

    amount_usd: PositiveUsd
    idempotency_key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            pattern=NO_NUL,
            description="Unique per credit of this account: the same key again credits nothing and answers the "
            "first credit.",
        ),
    ]


class KeyCreate(BaseModel):
    """A key's optional fields (docs/contract.md#keys); the body may be empty or ``{}``."""

    model_config = _REQUEST

    name: Name | None = None
    expires_in_seconds: (
        Annotated[
            int,
            Field(ge=1, le=MAX_KEY_LIFETIME_SECONDS, description="The key expires this long after its creation."),
            BeforeValidator(_integral),
        ]
        | None
    ) = None
    max_streams: MaxStreams | None = Field(None, description="This key's own stream limit, within the account's.")
    providers: list[ProviderName] | None = Field(
        None, min_length=1, description="The providers this key may open; absent or null: every provider."
    )


# -- responses ------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = _RESPONSE

    code: str
    message: str


class Error(BaseModel):
    """Every refusal (docs/contract.md#conventions)."""

    model_config = _RESPONSE

    error: ErrorDetail


class Account(BaseModel):
    model_config = _RESPONSE

    id: str
    name: str
    streaming_enabled: bool
    max_streams: int
    balance_usd: str | None = Field(description="null: postpaid.")
    external_id: str | None
    webhook_url: str | None
    low_balance_usd: str | None
    monthly_budget_usd: str | None
    created_at: str
    updated_at: str


class AccountPage(BaseModel):
    model_config = _RESPONSE

    data: list[Account]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Key(BaseModel):
    model_config = _RESPONSE

    id: str
    prefix: str
    name: str | None
    expires_at: str | None
    max_streams: int | None
    providers: list[str] | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class NewKey(BaseModel):
    model_config = _RESPONSE

    id: str
    key: str = Field(description="The secret `sk-mai-…`: shown only in this response.")
    prefix: str
    account_id: str
    name: str | None
    expires_at: str | None
    max_streams: int | None
    providers: list[str] | None
    created_at: str


class Credit(BaseModel):
    model_config = _RESPONSE

    id: str
    account_id: str
    idempotency_key: str
    amount_usd: str
    balance_usd: str = Field(description="The balance right after this credit.")
    created_at: str


class ProviderTotals(BaseModel):
    model_config = _RESPONSE

    sessions: int
    audio_seconds: float
    billed_seconds: int
    cost_usd: str


class UsageSession(BaseModel):
    model_config = _RESPONSE

    id: str
    kind: str
    provider: str
    api_key_id: str | None
    started_at: str
    ended_at: str | None
    audio_seconds: float
    billed_seconds: int
    cost_usd: str
    close_code: int | None
    closed_by: str | None
    model: str | None
    rate_usd_per_hour: str | None
    basis: str | None
    provider_audio_seconds: float | None
    provider_session_seconds: float | None
    session_seconds: float | None


class Usage(BaseModel):
    """The usage document (docs/contract.md#usage)."""

    model_config = _RESPONSE

    account_id: str
    balance_usd: str | None
    totals: dict[str, ProviderTotals]
    sessions: list[UsageSession]


class Session(UsageSession):
    model_config = _RESPONSE

    account_id: str
    gateway_id: str = Field(description="The gateway process running (or that ran) the session.")
    live: bool
    close_requested_at: str | None


class SessionPage(BaseModel):
    model_config = _RESPONSE

    data: list[Session]
    next_cursor: str | None
