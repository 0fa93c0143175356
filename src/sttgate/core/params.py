"""The client's raw query string: pick out ``provider``/``api_key``/``token``, forward the rest byte for byte.

SDKs encode differently (``%20`` vs ``+``, ``True`` vs ``true``, JSON arrays as values) and providers parse what
they get, so the gateway never decodes and re-encodes what it forwards: it only drops whole ``key=value`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

# Pairs the gateway consumes and never forwards. Keys are matched after percent-decoding and case-folding, so no
# spelling of them (``api%5Fkey``, ``API_KEY``) carries the client's credential to the provider.
_CONSUMED = frozenset({"provider", "api_key", "token"})

# Query keys whose values never appear in logs: the gateway's own credentials and anything that looks like a secret.
_SECRET_KEY_SUFFIXES = ("key", "token", "secret", "password", "signature")
# Credential prefixes of the gateway's own keys and tokens, redacted under any key; providers add their own.
_SECRET_VALUE_PREFIXES = ("sk-mai-", "sttg_")
REDACTED = "***"


@dataclass(frozen=True)
class ClientQuery:
    """What the gateway reads from the client's query, and what it forwards to the provider.

    ``provider``, ``api_key`` and ``token`` are the decoded values of the first pair with exactly that (decoded,
    lower-case) key, like ``aiohttp``'s ``request.query.get``; an empty value counts as absent (``None``).
    """

    provider: str | None
    api_key: str | None
    token: str | None
    forwarded: str


def _decoded_key(pair: str) -> str:
    return unquote_plus(pair.partition("=")[0])


def split_query(raw_query: str) -> ClientQuery:
    """Split the client's query into the three gateway parameters and the byte-exact remainder.

    Empty pairs (``a=1&&b=2``) are dropped; every other pair that is not consumed is kept as sent, in order.
    """
    values: dict[str, str] = {}
    kept: list[str] = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        decoded = unquote_plus(key)
        if decoded.strip().lower() in _CONSUMED:
            if decoded in _CONSUMED and decoded not in values:
                values[decoded] = unquote_plus(value)
            continue
        kept.append(pair)
    return ClientQuery(
        provider=values.get("provider") or None,
        api_key=values.get("api_key") or None,
        token=values.get("token") or None,
        forwarded="&".join(kept),
    )


def query_values(forwarded: str) -> dict[str, str]:
    """Decoded ``key -> value`` of a query; the last value of a repeated key wins. For reading format parameters."""
    out: dict[str, str] = {}
    for pair in forwarded.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            out[unquote_plus(key)] = unquote_plus(value)
    return out


def _keys(query: str) -> set[str]:
    return {_decoded_key(pair) for pair in query.split("&") if pair}


def with_defaults(forwarded: str, defaults: Sequence[tuple[str, str]]) -> str:
    """Append ``key=value`` for each default the query does not already have (whatever its value), nothing else.

    The provider requires these (e.g. a model parameter); a key the client set, even to an empty value, is the
    client's choice and is left alone.
    """
    present = _keys(forwarded)
    added = [f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in defaults if key not in present]
    return "&".join(part for part in (forwarded, *added) if part)


def format_values(forwarded: str, keys: frozenset[str]) -> dict[str, str] | str:
    """The decoded values of the format parameters ``keys`` in a query, or why they cannot be read for certain.

    Strict, because the provider's query parser is not ours (docs/billing.md#strict-metering): a key given twice
    (whatever its spelling), a key that is one of ``keys`` only after case-folding or trimming (``Sample_Rate``), or
    one hidden behind a ``;`` (which some parsers treat as a separator) could be read another way by the provider, so
    each is refused (the returned ``str`` says which) rather than resolved.
    """
    values: dict[str, str] = {}
    for pair in forwarded.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        decoded = unquote_plus(key)
        for hidden in pair.split(";")[1:]:
            if _near(unquote_plus(hidden.partition("=")[0]), keys):
                return f"a format parameter follows a ';' in {decoded!r}"
        if decoded in keys:
            if decoded in values:
                return f"{decoded} is given twice"
            values[decoded] = unquote_plus(value)
        elif _near(decoded, keys):
            return f"{decoded!r} is not spelled exactly {_near(decoded, keys)}"
    return values


def _near(key: str, keys: frozenset[str]) -> str | None:
    folded = key.strip().lower()
    return folded if folded in keys else None


def canonical_int(text: str, maximum: int) -> int | None:
    """A query value that is a positive integer in canonical form (ASCII digits, no sign, no leading zero, no
    whitespace) up to ``maximum``, else ``None``. Anything else may be read differently by another parser
    (``+8000``, ``08000``, ``8_000`` and `` 8000`` are 8000 to Python's ``int``)."""
    if text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= len(str(maximum)):
        value = int(text)
        return value if value <= maximum else None
    return None


def credential_parameter(forwarded: str) -> str | None:
    """The first forwarded parameter that carries something shaped like a gateway key or token (``sk-mai-…``,
    ``sttg_…``), whatever its name (``apiKey=sk-mai-…``): its decoded name, or ``""`` when the name itself is the
    credential; ``None`` when there is none. Such a pair is refused, never forwarded: the client's credential must
    not reach the provider in any form (docs/contract.md#forwarding)."""
    for pair in forwarded.split("&"):
        key, _, value = pair.partition("=")
        decoded_key = unquote_plus(key)
        if _contains_credential(decoded_key):
            return ""
        if _contains_credential(unquote_plus(value)):
            return decoded_key
    return None


def _contains_credential(text: str) -> bool:
    lowered = text.lower()
    return any(prefix in lowered for prefix in _SECRET_VALUE_PREFIXES)


def _looks_like_credential(text: str, prefixes: tuple[str, ...]) -> bool:
    return text.strip().lower().startswith(prefixes)


def _is_secret_key(key: str) -> bool:
    lowered = key.strip().lower()
    return lowered.endswith(_SECRET_KEY_SUFFIXES) or "auth" in lowered


def redact_query(raw_query: str, secret_prefixes: Sequence[str] = ()) -> str:
    """The query for logs: every credential-like value replaced by ``***``, the rest unchanged.

    Redacts ``api_key``, ``token``, ``xi-api-key`` and any key ending in key/token/secret/password/signature or
    containing ``auth`` (e.g. ``webhook_auth_header_value``), and any value that looks like a gateway key or token, or
    starts with one of ``secret_prefixes`` (the providers' own credentials), whatever its key.
    """
    prefixes = (*_SECRET_VALUE_PREFIXES, *(prefix.lower() for prefix in secret_prefixes))
    out: list[str] = []
    for pair in raw_query.split("&"):
        key, sep, value = pair.partition("=")
        decoded_key = unquote_plus(key)
        if _looks_like_credential(decoded_key, prefixes):
            out.append(REDACTED)
        elif sep and (_is_secret_key(decoded_key) or _looks_like_credential(unquote_plus(value), prefixes)):
            out.append(f"{key}={REDACTED}")
        else:
            out.append(pair)
    return "&".join(out)
