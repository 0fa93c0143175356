"""Reading a request's query and credential the way every gateway route does (docs/contract.md#credentials)."""

from __future__ import annotations

from aiohttp import web


def raw_query(request: web.Request) -> str:
    """The query exactly as the client sent it. ``request.rel_url`` is normalized by yarl (``%2C`` becomes ``,``),
    so the request line's own bytes are used."""
    return request.raw_path.partition("?")[2]


def credential_from_request(request: web.Request, query_key: str | None) -> str | None:
    """The client's key: the ``api_key`` query value, else the ``Authorization`` header (raw or ``Bearer``)."""
    if query_key:
        return query_key
    header = request.headers.get("Authorization", "").strip()
    if header[:7].lower() == "bearer ":
        header = header[7:].strip()
    return header or None
