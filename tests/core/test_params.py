from urllib.parse import parse_qsl, quote

from hypothesis import given, settings
from hypothesis import strategies as st

from sttgate.core.params import ClientQuery, query_values, redact_query, split_query, with_defaults


def test_forwarded_is_byte_exact_in_order_with_repeats() -> None:
    raw = "keyterms=a%20b&provider=elevenlabs&keyterms=c+d&format_turns=True&api_key=sk-mai-x&flag=true&x=%5B%22A%22%5D"
    q = split_query(raw)
    assert q == ClientQuery(
        provider="elevenlabs",
        api_key="sk-mai-x",
        token=None,
        forwarded="keyterms=a%20b&keyterms=c+d&format_turns=True&flag=true&x=%5B%22A%22%5D",
    )


def test_empty_pairs_dropped_and_bare_keys_kept() -> None:
    assert split_query("&a=1&&b&c=&provider=assemblyai&").forwarded == "a=1&b&c="


def test_every_encoding_of_the_consumed_keys_is_removed() -> None:
    raw = "api%5Fkey=sk-mai-a&%61pi_key=sk-mai-b&API_KEY=sk-mai-c&Token=t1&token%20=t2&%70rovider=x&ok=1"
    q = split_query(raw)
    assert q.forwarded == "ok=1"
    # Values are read from the exact lower-case key after decoding; the first one wins.
    assert (q.api_key, q.token, q.provider) == ("sk-mai-a", None, "x")


def test_values_are_decoded_form_style() -> None:
    q = split_query("provider=assembly%61i&api_key=sk-mai-a+b%2Bc&token=t%20u")
    assert (q.provider, q.api_key, q.token) == ("assemblyai", "sk-mai-a b+c", "t u")


def test_empty_values_count_as_absent() -> None:
    assert split_query("provider=&api_key=&token") == ClientQuery(None, None, None, "")


def test_first_value_wins_for_consumed_keys() -> None:
    q = split_query("provider=assemblyai&provider=elevenlabs")
    assert q.provider == "assemblyai"
    assert q.forwarded == ""


_key = st.sampled_from(["a", "b", "sample_rate", "provider", "api_key", "token", "api%5Fkey", "TOKEN", "k%20y"])
_value = st.text(alphabet="ab%20+=TrueF[]\"'", max_size=8)


@settings(deadline=None)
@given(st.lists(st.tuples(_key, _value), max_size=8))
def test_split_keeps_exactly_the_other_pairs(pairs: list[tuple[str, str]]) -> None:
    raw = "&".join(f"{k}={v}" for k, v in pairs)
    forwarded = split_query(raw).forwarded
    expected = [f"{k}={v}" for k, v in pairs if k not in {"provider", "api_key", "token", "api%5Fkey", "TOKEN"}]
    assert forwarded == "&".join(expected)


@settings(deadline=None)
@given(st.text(max_size=40))
def test_no_consumed_key_survives_any_query(raw: str) -> None:
    forwarded = split_query(raw).forwarded
    keys = {k.strip().lower() for k, _ in parse_qsl(forwarded, keep_blank_values=True)}
    assert not keys & {"provider", "api_key", "token"}
    assert split_query(forwarded).forwarded == forwarded


def test_query_values_last_wins_and_decodes() -> None:
    assert query_values("a=1&b=x+y&a=2&c&d=%2F") == {"a": "2", "b": "x y", "c": "", "d": "/"}


def test_with_defaults_adds_only_missing() -> None:
    assert with_defaults("", [("model_id", "scribe_v2_realtime")]) == "model_id=scribe_v2_realtime"
    assert with_defaults("a=1", [("sample_rate", "16000")]) == "a=1&sample_rate=16000"
    assert with_defaults("sample_rate=8000&a=1", [("sample_rate", "16000")]) == "sample_rate=8000&a=1"
    assert with_defaults("sample%5Frate=", [("sample_rate", "16000")]) == "sample%5Frate="
    assert with_defaults("", [("k y", "a/b")]) == f"{quote('k y', safe='')}={quote('a/b', safe='')}"


def test_redact_query() -> None:
    raw = "provider=elevenlabs&api_key=sk-mai-secret&token=sttg_abc&xi-api-key=k&keyterms=a&note=sk-mai-zz&sk-mai-bare"
    assert redact_query(raw) == "provider=elevenlabs&api_key=***&token=***&xi-api-key=***&keyterms=a&note=***&***"
    webhook = "webhook_auth_header_value=s3&language_code=en"
    assert redact_query(webhook) == "webhook_auth_header_value=***&language_code=en"


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` with each character in any case and either literal or percent-encoded (either hex case)."""
    out = []
    for ch in name:
        ch = draw(st.sampled_from([ch.lower(), ch.upper()]))
        if draw(st.booleans()):
            code = f"%{ord(ch):02X}"
            ch = draw(st.sampled_from([code, code.lower()]))
        out.append(ch)
    return "".join(out)


@settings(deadline=None)
@given(st.sampled_from(["provider", "api_key", "token"]).flatmap(spelled), st.sampled_from(["sk-mai-zz", ""]))
def test_any_spelling_of_a_consumed_key_is_removed(key: str, value: str) -> None:
    q = split_query(f"a=1&{key}={value}&b=2")
    assert q.forwarded == "a=1&b=2"
