"""The price book, pure: parsing (never a float), pricing a session (model, default model, add-ons, deny, refusals),
exact nanodollar cycle prices (docs/billing.md#the-price-book)."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.money import cycle_price_nanos
from sttgate.core.prices import (
    Basis,
    PriceBookError,
    ProviderPrices,
    parse_provider_table,
    parse_rate,
    parse_tables,
    price_session,
)
from sttgate.core.refusals import Refusal

SHIPPED = Path(__file__).parents[2] / "src" / "sttgate" / "data" / "prices.toml"
KNOWN = ("elevenlabs", "assemblyai", "deepgram")

AAI = parse_provider_table(
    "assemblyai",
    {
        "basis": "session",
        "default_model": "universal-streaming-english",
        "models": {"universal-streaming-english": "0.15", "u3-rt-pro": "0.45"},
        "addons": {"keyterms_prompt": "0.05", "language=multi": "0.09"},
        "deny": ["llm_gateway", "webhook_url"],
    },
)


def shipped() -> dict[str, ProviderPrices]:
    return parse_tables(tomllib.loads(SHIPPED.read_text())["prices"], KNOWN)


def refusal(prices: ProviderPrices, query: str, param: str | None = "speech_model") -> Refusal:
    with pytest.raises(Refusal) as caught:
        price_session(prices, param, query)
    return caught.value


# -- the shipped book ------------------------------------------------------------------------------------------------


def test_the_shipped_book_keeps_the_seed_rates_and_prices_every_provider() -> None:
    book = shipped()
    assert set(book) == set(KNOWN)
    assert {name: (t.default_model, t.default_rate, t.basis) for name, t in book.items()} == {
        "assemblyai": ("universal-streaming-english", Decimal("0.15"), Basis.AUDIO),
        "elevenlabs": ("scribe_v2_realtime", Decimal("0.39"), Basis.AUDIO),
        "deepgram": ("nova-3", Decimal("0.462"), Basis.AUDIO),
    }
    assert book["assemblyai"].deny == ("llm_gateway", "webhook_url")
    assert book["assemblyai"].models["u3-rt-pro"] == book["assemblyai"].models["universal-3-6-pro"] == Decimal("0.45")
    for table in book.values():  # every priced entry says where its figure comes from
        assert set(table.models) | {a for a in table.addons} <= set(table.sources)


def test_default_cycle_prices_are_the_contracts() -> None:
    book = shipped()
    assert price_session(book["assemblyai"], "speech_model", "").cycle_price_nanos == 208_333
    assert price_session(book["elevenlabs"], "model_id", "").cycle_price_nanos == 541_667
    assert price_session(book["deepgram"], "model", "").cycle_price_nanos == 641_667


# -- parsing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.45, 1.0, True])
def test_a_float_rate_is_an_error_naming_the_entry(value: object) -> None:
    with pytest.raises(PriceBookError, match=r"prices.assemblyai.models.u3-rt-pro"):
        parse_tables({"assemblyai": {"default_model": "u3-rt-pro", "models": {"u3-rt-pro": value}}}, KNOWN)


def test_a_float_from_toml_is_refused_but_strings_and_integers_are_read() -> None:
    text = '[prices.deepgram]\ndefault_model = "nova-3"\nmodels = { "nova-3" = 0.462 }\n'
    with pytest.raises(PriceBookError, match=r"not the float 0\.462"):
        parse_tables(tomllib.loads(text)["prices"], KNOWN)
    text = '[prices.deepgram]\ndefault_model = "nova-3"\nmodels = { "nova-3" = "0.462", big = 2 }\n'
    table = parse_tables(tomllib.loads(text)["prices"], KNOWN)["deepgram"]
    assert table.models == {"nova-3": Decimal("0.462"), "big": Decimal(2)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"models": {"a": "1"}}, "needs a default_model"),
        ({"default_model": "b", "models": {"a": "1"}}, "not in its models table"),
        ({"basis": "wall"}, "basis must be"),
        ({"models": {"a": "-1"}, "default_model": "a"}, "non-negative"),
        ({"models": {"a": "NaN"}, "default_model": "a"}, "finite"),
        ({"models": {"a": "abc"}, "default_model": "a"}, "not a decimal"),
        ({"deny": "llm_gateway"}, "deny must be a list"),
        ({"model": {}}, "unknown key 'model'"),
        ({"rate": "1", "models": {"a": "1"}, "default_model": "a"}, "either rate"),
    ],
)
def test_bad_tables_are_one_line_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(PriceBookError, match=message) as caught:
        parse_tables({"assemblyai": table}, KNOWN)
    assert "\n" not in str(caught.value)


def test_an_unknown_provider_is_an_error() -> None:
    with pytest.raises(PriceBookError, match=r"unknown provider prices\.assembly"):
        parse_tables({"assembly": {}}, KNOWN)


@given(st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False))
def test_parse_rate_reads_decimal_strings_exactly(rate: Decimal) -> None:
    assert parse_rate(str(rate), "x") == rate


# -- pricing a session -----------------------------------------------------------------------------------------------


def test_no_model_named_is_the_default_model_added_upstream() -> None:
    priced = price_session(AAI, "speech_model", "sample_rate=16000")
    assert (priced.model, priced.rate_usd_per_hour, priced.basis) == (
        "universal-streaming-english",
        Decimal("0.15"),
        Basis.SESSION,
    )
    assert priced.forwarded_with_default_model == "sample_rate=16000&speech_model=universal-streaming-english"


def test_the_clients_model_is_priced_at_its_own_rate_and_forwarded_unchanged() -> None:
    priced = price_session(AAI, "speech_model", "speech_model=u3-rt-pro&sample_rate=8000")
    assert (priced.model, priced.cycle_price_nanos) == ("u3-rt-pro", 625_000)  # 0.45 × 5 / 3600
    assert priced.forwarded_with_default_model == "speech_model=u3-rt-pro&sample_rate=8000"


def test_an_unpriced_model_is_refused_listing_the_priced_ones() -> None:
    refused = refusal(AAI, "speech_model=whisper-rt")
    assert (refused.status, refused.code) == (400, "unpriced_model")
    assert "'whisper-rt'" in refused.message and "universal-streaming-english, u3-rt-pro" in refused.message


@pytest.mark.parametrize("query", ["speech_model=u3-rt-pro&speech_model=universal-streaming-english", "Speech_Model=a"])
def test_a_repeated_or_differently_spelt_model_parameter_is_not_guessed(query: str) -> None:
    assert refusal(AAI, query).code == "unpriced_model"


def test_an_empty_model_is_not_the_default() -> None:
    assert refusal(AAI, "speech_model=").code == "unpriced_model"


@pytest.mark.parametrize(
    "query", ["llm_gateway=%7B%7D", "webhook_url=https%3A%2F%2Fx", "WEBHOOK_URL", "a=1&llm%5Fgateway="]
)
def test_a_denied_parameter_is_refused_by_name(query: str) -> None:
    refused = refusal(AAI, query)
    assert (refused.status, refused.code) == (400, "parameter_not_allowed")
    assert "llm_gateway" in refused.message or "webhook_url" in refused.message


def test_deny_comes_before_the_model() -> None:
    assert refusal(AAI, "speech_model=nope&llm_gateway=x").code == "parameter_not_allowed"


@pytest.mark.parametrize(
    ("query", "on"),
    [
        ("keyterms_prompt=%5B%22a%22%5D", True),
        ("keyterms_prompt=true", True),
        ("keyterms_prompt=false", False),
        ("keyterms_prompt=FALSE", False),
        ("keyterms_prompt=0", False),
        ("keyterms_prompt=", False),
        ("keyterms_prompt", False),
        ("keyterms_prompt=&keyterms_prompt=x", True),
        ("other=1", False),
    ],
)
def test_an_addon_adds_its_rate_while_present_and_not_off(query: str, on: bool) -> None:
    priced = price_session(AAI, "speech_model", query)
    assert priced.rate_usd_per_hour == (Decimal("0.20") if on else Decimal("0.15"))


def test_a_valued_addon_counts_only_that_value() -> None:
    assert price_session(AAI, "speech_model", "language=multi").rate_usd_per_hour == Decimal("0.24")
    assert price_session(AAI, "speech_model", "language=en").rate_usd_per_hour == Decimal("0.15")


def test_pro_model_with_an_addon_exact_nanodollars() -> None:
    priced = price_session(AAI, "speech_model", "speech_model=u3-rt-pro&keyterms_prompt=%5B%22x%22%5D")
    assert (priced.rate_usd_per_hour, priced.cycle_price_nanos) == (Decimal("0.50"), 694_444)  # 0.000694444 USD


def test_without_a_models_table_every_model_costs_the_flat_rate() -> None:
    flat = ProviderPrices(rate=Decimal("0.6"))
    for query in ("", "model=anything"):
        priced = price_session(flat, "model", query)
        assert (priced.cycle_price_nanos, priced.forwarded_with_default_model) == (833_333, query)
    assert price_session(flat, None, "").model is None


def test_the_operator_rate_prices_the_default_model_only() -> None:
    table = AAI.with_default_rate(Decimal("0.30"), "STTGATE_RATE_ASSEMBLYAI")
    assert table.models == {"universal-streaming-english": Decimal("0.30"), "u3-rt-pro": Decimal("0.45")}
    assert table.sources["universal-streaming-english"] == "STTGATE_RATE_ASSEMBLYAI"
    assert ProviderPrices(rate=Decimal(1)).with_default_rate(Decimal(2), "x").rate == Decimal(2)


_KEYS = st.sampled_from(["speech_model", "keyterms_prompt", "language", "sample_rate", "format_turns", "x"])
_VALUES = st.sampled_from(["", "0", "false", "true", "multi", "u3-rt-pro", "universal-streaming-english", "a b", "[1]"])


@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=6))
def test_priced_or_refused_and_the_price_is_the_formula(pairs: list[tuple[str, str]]) -> None:
    """Any query is either refused or priced at (model + add-ons) × 5 / 3600, half-up to 1e-9 USD, with the model
    forwarded: the client's own when given once, else the default appended."""
    query = "&".join(f"{k}={quote(v)}" for k, v in pairs)
    models = [v for k, v in pairs if k == "speech_model"]
    try:
        priced = price_session(AAI, "speech_model", query)
    except Refusal as refused:
        assert refused.code == "unpriced_model"
        assert len(models) > 1 or (models and models[0] not in AAI.models)
        return
    assert len(models) <= 1
    model = models[0] if models else "universal-streaming-english"
    rate = AAI.models[model]
    if any(k == "keyterms_prompt" and v not in ("", "0", "false") for k, v in pairs):
        rate += Decimal("0.05")
    if ("language", "multi") in pairs:
        rate += Decimal("0.09")
    assert (priced.model, priced.rate_usd_per_hour) == (model, rate)
    exact = (rate * 5 / 3600).quantize(Decimal("1e-9"), rounding=ROUND_HALF_UP)
    assert priced.cycle_price_nanos == int(exact * 10**9) == cycle_price_nanos(rate)
    expected = query if models else "&".join(p for p in (query, f"speech_model={model}") if p)
    assert priced.forwarded_with_default_model == expected
