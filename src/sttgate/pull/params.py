"""The start request's JSON body → the provider query a pull task forwards (docs/pull.md#start-a-task; forwarding
as in docs/contract.md#forwarding).

Pure: no I/O. A JSON body has no "as the client encoded it", so the gateway encodes each provider parameter once,
in the order of the body: strings percent-encoded (``%20`` for a space), booleans as ``true``/``false``, numbers as
JSON writes them, lists as repeated keys, objects as JSON text. ``null`` leaves the parameter out. A JSON array the
provider wants as one value (e.g. a list of key terms) is passed as a string holding that array.

The audio format is the gateway's in pull mode (FFmpeg decodes to PCM s16le, 16 kHz, mono), so the feeder declares
it with the provider's own query pairs (``Provider.pull_format``) and refuses a body that declares anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sttgate.core.params import query_values, with_defaults
from sttgate.core.refusals import invalid_request
from sttgate.providers import Provider

# Body fields the gateway reads itself; never forwarded (api_key/token: a credential never reaches the provider).
RESERVED = frozenset({"audio_url", "callback_url", "provider", "api_key", "token"})


@dataclass(frozen=True)
class StartBody:
    audio_url: Any
    callback_url: Any
    provider: str | None
    params: list[tuple[str, Any]]


def parse_body(body: Any) -> StartBody:
    """The fields of a start request; 400 ``invalid_request`` when the body is not a JSON object."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object with audio_url, provider and callback_url.")
    provider = body.get("provider")
    return StartBody(
        audio_url=body.get("audio_url"),
        callback_url=body.get("callback_url"),
        provider=provider if isinstance(provider, str) else None if provider is None else str(provider),
        params=[(k, v) for k, v in body.items() if k.strip().lower() not in RESERVED],
    )


def _encode_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value, safe="")
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict):
        return quote(json.dumps(value, separators=(",", ":")), safe="")
    raise invalid_request(f"The provider parameter '{key}' has a value that cannot be sent in a query.")


def encode_params(params: list[tuple[str, Any]]) -> str:
    """The forwarded query for the body's provider parameters, in body order."""
    pairs: list[str] = []
    for key, value in params:
        name = quote(key, safe="")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, list):
                raise invalid_request(f"The provider parameter '{key}' nests lists; send a string instead.")
            if item is not None:
                pairs.append(f"{name}={_encode_value(key, item)}")
    return "&".join(pairs)


def pull_query(provider: Provider, forwarded: str) -> str:
    """Add the pull audio format to the forwarded query; refuse a different format the body declared."""
    declared = query_values(forwarded)
    for key, value in provider.pull_format:
        if key in declared and declared[key].strip().lower() != value:
            raise invalid_request(
                f"In pull mode the gateway sends PCM s16le at 16 kHz mono: {key} must be {value} or absent."
            )
    return with_defaults(forwarded, provider.pull_format)
