"""The price book: what one 5-second cycle of a session costs, fixed at the handshake (docs/billing.md#the-price-book).

Per provider, a :class:`ProviderPrices`: a ``basis`` (``audio`` or ``session``), a ``default_model`` (sent upstream in
the provider's model parameter when the client names none), ``models`` (name → USD per hour), ``addons`` (query
parameter → USD per hour while present and not ``false``/``0``/empty), and a ``deny`` list of parameters that would
cost the operator money outside any meter. :func:`price_session` reads the client's forwarded query against it and
returns the session's :class:`Priced`, or raises a :class:`~sttgate.core.refusals.Refusal` (400
``parameter_not_allowed`` / ``unpriced_model``) before any provider is contacted.

Rates are :class:`~decimal.Decimal`, parsed from decimal strings or TOML integers, never from floats: ``0.45`` read as
a float is ``0.450000000000000011…``, which is not the operator's price. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from sttgate.core import refusals
from sttgate.core.money import cycle_price_nanos
from sttgate.core.params import with_defaults

# Values that leave an add-on off (compared case-insensitively, after trimming).
_OFF_VALUES = frozenset({"", "false", "0"})
_TABLE_KEYS = frozenset({"basis", "default_model", "models", "addons", "deny", "rate", "sources"})


class Basis(StrEnum):
    """What a cycle measures: metered audio, or connection time since the provider's 101
    (docs/billing.md#session-basis)."""

    AUDIO = "audio"
    SESSION = "session"


class PriceBookError(ValueError):
    """A price book that cannot be used; the message is one line naming the entry."""


@dataclass(frozen=True)
class ProviderPrices:
    """One provider's table of the book.

    With ``models`` empty every model (and no model) costs ``rate``; otherwise ``default_model`` is one of ``models``
    and a model not in ``models`` is refused. Add-on keys are a parameter name (on while present and not off) or
    ``param=value`` (on while the parameter has that value, e.g. Deepgram ``language=multi``).
    """

    basis: Basis = Basis.AUDIO
    default_model: str | None = None
    models: Mapping[str, Decimal] = field(default_factory=dict)
    addons: Mapping[str, Decimal] = field(default_factory=dict)
    deny: tuple[str, ...] = ()
    rate: Decimal | None = None
    # Where each entry's figure comes from (keyed by model or add-on name, or "basis"), for ``sttgate prices``.
    sources: Mapping[str, str] = field(default_factory=dict)

    def model_rate(self, model: str | None) -> Decimal | None:
        """The rate of ``model`` (``None``: no model named), or ``None`` when the book does not price it."""
        if not self.models:
            return self.rate
        return self.models.get(model) if model is not None else None

    @property
    def default_rate(self) -> Decimal:
        """The rate of a session that names no model (and turns on no add-on)."""
        rate = self.model_rate(self.default_model)
        if rate is None:
            raise PriceBookError("a price table without a models table needs a rate")
        return rate

    def with_default_rate(self, rate: Decimal, source: str) -> ProviderPrices:
        """This table with ``rate`` for its default model (and for every model when it has no models table), from
        ``source``: how ``STTGATE_RATE_<PROVIDER>`` applies."""
        if not self.models:
            return replace(self, rate=rate, sources={**self.sources, "rate": source})
        assert self.default_model is not None
        models = {**self.models, self.default_model: rate}
        return replace(self, models=models, sources={**self.sources, self.default_model: source})

    def document(self) -> dict[str, Any]:
        """The table in the TOML's shape, rates as decimal strings (``sttgate prices --json``)."""
        out: dict[str, Any] = {"basis": self.basis.value}
        if self.default_model is not None:
            out["default_model"] = self.default_model
        if self.rate is not None:
            out["rate"] = str(self.rate)
        out["models"] = {name: str(rate) for name, rate in self.models.items()}
        out["addons"] = {name: str(rate) for name, rate in self.addons.items()}
        out["deny"] = list(self.deny)
        out["sources"] = dict(self.sources)
        return out


@dataclass(frozen=True)
class PriceBook:
    """Every provider's table; a provider without one is priced at its flat rate (see :meth:`for_provider`)."""

    providers: Mapping[str, ProviderPrices]

    def for_provider(self, name: str, fallback_rate: Decimal) -> ProviderPrices:
        """``name``'s table, or a flat ``fallback_rate`` on the audio basis when the book has none."""
        return self.providers.get(name) or ProviderPrices(rate=fallback_rate)

    def merged(self, tables: Mapping[str, ProviderPrices]) -> PriceBook:
        """This book with ``tables`` replacing its tables for the same providers (whole tables, never merged)."""
        return PriceBook({**self.providers, **tables})

    def document(self) -> dict[str, Any]:
        """The book in the TOML's shape: ``{"prices": {provider: table}}``."""
        return {"prices": {name: table.document() for name, table in self.providers.items()}}


@dataclass(frozen=True)
class Priced:
    """A session's price, fixed at the handshake and recorded on the session."""

    model: str | None
    rate_usd_per_hour: Decimal
    basis: Basis
    cycle_price_nanos: int
    # The forwarded query, with the default model appended when the client named none.
    forwarded_with_default_model: str


# -- parsing --------------------------------------------------------------------------------------------------------


def parse_rate(value: Any, where: str) -> Decimal:
    """A rate from a decimal string or a TOML integer: finite, not negative; a float is an error."""
    if isinstance(value, bool | float):
        raise PriceBookError(f'{where}: write the rate as a decimal string (e.g. "0.45"), not the float {value!r}')
    if isinstance(value, Decimal):
        rate = value
    elif isinstance(value, int | str):
        try:
            rate = Decimal(str(value).strip())
        except InvalidOperation:
            raise PriceBookError(f"{where}: not a decimal rate: {value!r}") from None
    else:
        raise PriceBookError(f"{where}: a rate is a decimal string or an integer, not {value!r}")
    if not rate.is_finite() or rate < 0:
        raise PriceBookError(f"{where}: a rate must be a finite, non-negative number, not {value!r}")
    return rate


def _rates(value: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(value, Mapping):
        raise PriceBookError(f'{where} must be a table of name = "USD per hour"')
    return {str(name): parse_rate(rate, f"{where}.{name}") for name, rate in value.items()}


def parse_provider_table(name: str, table: Any) -> ProviderPrices:
    """One ``[prices.<name>]`` table (as ``tomllib`` reads it)."""
    where = f"prices.{name}"
    if not isinstance(table, Mapping):
        raise PriceBookError(f"{where} must be a table")
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise PriceBookError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TABLE_KEYS))})")
    try:
        basis = Basis(table.get("basis", Basis.AUDIO.value))
    except ValueError:
        raise PriceBookError(f'{where}.basis must be "audio" or "session", not {table.get("basis")!r}') from None
    default_model = table.get("default_model")
    if default_model is not None and (not isinstance(default_model, str) or not default_model):
        raise PriceBookError(f"{where}.default_model must be a non-empty string")
    models = _rates(table.get("models", {}), f"{where}.models")
    addons = _rates(table.get("addons", {}), f"{where}.addons")
    deny = table.get("deny", [])
    if not isinstance(deny, list) or not all(isinstance(item, str) and item for item in deny):
        raise PriceBookError(f"{where}.deny must be a list of parameter names")
    rate = parse_rate(table["rate"], f"{where}.rate") if "rate" in table else None
    sources = table.get("sources", {})
    if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
        raise PriceBookError(f'{where}.sources must be a table of name = "source"')
    if models:
        if rate is not None:
            raise PriceBookError(f"{where}: give either rate (every model) or a models table, not both")
        if default_model is None:
            raise PriceBookError(f"{where}: a models table needs a default_model")
        if default_model not in models:
            raise PriceBookError(f"{where}.default_model {default_model!r} is not in its models table")
    return ProviderPrices(
        basis=basis,
        default_model=default_model,
        models=models,
        addons=addons,
        deny=tuple(deny),
        rate=rate,
        sources={str(k): str(v) for k, v in sources.items()},
    )


def parse_tables(data: Any, known: Sequence[str], where: str = "price book") -> dict[str, ProviderPrices]:
    """The ``prices`` table of a TOML document (``{"prices": {...}}`` already unwrapped): provider → table.

    A provider not in ``known`` (the registered providers) is an error: a misspelt name would otherwise price nothing.
    """
    if not isinstance(data, Mapping):
        raise PriceBookError(f"{where}: [prices] must be a table of [prices.<provider>] tables")
    out: dict[str, ProviderPrices] = {}
    for name, table in data.items():
        if name not in known:
            raise PriceBookError(f"{where}: unknown provider prices.{name} (providers: {', '.join(known)})")
        try:
            out[name] = parse_provider_table(name, table)
        except PriceBookError as exc:
            raise PriceBookError(f"{where}: {exc}") from None
    return out


# -- pricing a session ----------------------------------------------------------------------------------------------


def _pairs(forwarded: str) -> list[tuple[str, str]]:
    """Decoded ``(key, value)`` pairs, keys trimmed and case-folded: a provider that reads ``Speech_Model`` must
    not get a model the gateway did not price."""
    out: list[tuple[str, str]] = []
    for pair in forwarded.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            out.append((unquote_plus(key).strip().lower(), unquote_plus(value)))
    return out


def _addon_on(addon: str, pairs: Sequence[tuple[str, str]]) -> bool:
    param, sep, wanted = addon.partition("=")
    param = param.strip().lower()
    values = [value.strip().lower() for key, value in pairs if key == param]
    if sep:
        return wanted.strip().lower() in values
    return any(value not in _OFF_VALUES for value in values)


def price_session(prices: ProviderPrices, model_param: str | None, forwarded: str) -> Priced:
    """The session's price from the client's forwarded query, or a refusal, checked in this order:

    1. a denied parameter (present with any value): 400 ``parameter_not_allowed`` naming it;
    2. the model: the client's ``model_param`` value, else the book's default model (then appended upstream); a model
       the book does not price, or the model parameter given more than once (which one the provider reads is not
       ours to guess), is 400 ``unpriced_model`` listing the priced models;
    3. the add-ons that are on add their rates; cycle price = (model + add-ons) × 5 / 3600, half-up to 1e-9 USD.
    """
    pairs = _pairs(forwarded)
    keys = {key for key, _ in pairs}
    for denied in prices.deny:
        if denied.strip().lower() in keys:
            raise refusals.parameter_not_allowed(denied)
    priced_models = tuple(prices.models)
    model: str | None = None
    with_model = forwarded
    if model_param is None:
        model = prices.default_model
    else:
        given = [value for key, value in pairs if key == model_param.lower()]
        if len(given) > 1:
            raise refusals.unpriced_model(f"{model_param} is given more than once", priced_models)
        if given:
            model = given[0]
        elif prices.default_model is not None:
            model = prices.default_model
            with_model = with_defaults(forwarded, ((model_param, model),))
    rate = prices.model_rate(model)
    if rate is None:
        what = (
            f"{model_param} {model!r} has no price" if model is not None else f"{model_param or 'a model'} is required"
        )
        raise refusals.unpriced_model(what, priced_models)
    total = rate + sum((r for addon, r in prices.addons.items() if _addon_on(addon, pairs)), Decimal(0))
    return Priced(
        model=model,
        rate_usd_per_hour=total,
        basis=prices.basis,
        cycle_price_nanos=cycle_price_nanos(total),
        forwarded_with_default_model=with_model,
    )
