"""Secrets out of log text (docs/operations.md#logs): whatever a log line quotes, no key or token survives.

Query strings are redacted where the gateway logs them (:func:`sttgate.core.params.redact_query`), but other code
(aiohttp's parser errors, exception messages, third-party loggers) can quote a request line or header verbatim. A
:class:`Redactor` is applied to the finished text of every log record, so it looks for credentials by their shape:

- a value starting with a gateway prefix (``sk-mai-``, ``sttg_``) or a provider's secret prefix, anywhere;
- the value of a ``name=value`` pair whose name says it is a credential (``api_key``, ``token``, ``…secret``,
  ``…password``, ``…signature``, anything with ``auth``);
- the value of a credential header (``Authorization``, ``xi-api-key``, ``Cookie``…), quoted as ``Name: value``;
- any literal secret the process knows (the operator's provider keys).

It errs on the side of hiding too much: a log line loses a value, never a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

GATEWAY_SECRET_PREFIXES = ("sk-mai-", "sttg_")
REDACTED = "***"

# A secret value runs to the next whitespace, quote or query separator (a backslash escape such as ``\x01`` in a
# ``repr`` of a malformed request line stays inside it, so no tail of the secret is left behind).
_VALUE = r"[^\s&'\"]*"
_NAMED = re.compile(
    r"(?i)((?<![\w.%-])[\w.%-]*(?:key|token|secret|password|signature|auth[\w.%-]*)=)" + _VALUE,
)
_HEADER = re.compile(
    r"(?i)(\b(?:authorization|proxy-authorization|xi-api-key|x-api-key|api-key|cookie|set-cookie)\s*:\s*)"
    r"[^\r\n'\"]*"
)
# Literal secrets shorter than this are not searched for: they would blank unrelated text.
_MIN_LITERAL = 8


class Redactor:
    """Replaces credentials in text with ``***`` (prefixes keep their prefix: ``sk-mai-***``)."""

    def __init__(self, secret_prefixes: Iterable[str] = (), literals: Iterable[str] = ()) -> None:
        prefixes = sorted({*GATEWAY_SECRET_PREFIXES, *(p for p in secret_prefixes if p)}, key=len, reverse=True)
        self._prefixed = re.compile("(?i)(" + "|".join(re.escape(p) for p in prefixes) + ")" + _VALUE)
        words = sorted({s for s in literals if len(s) >= _MIN_LITERAL}, key=len, reverse=True)
        self._literals = re.compile("|".join(re.escape(s) for s in words)) if words else None

    def __call__(self, text: str) -> str:
        if self._literals is not None:
            text = self._literals.sub(REDACTED, text)
        text = self._prefixed.sub(r"\1" + REDACTED, text)
        text = _HEADER.sub(r"\1" + REDACTED, text)
        return _NAMED.sub(r"\1" + REDACTED, text)
