"""What a pull task may make the gateway connect to (docs/pull.md#url-safety).

The gateway fetches URLs that a customer chose, from inside the operator's network. Without rules, a customer could
read the gateway's own files (``file:``), its metadata service (169.254.169.254) or any private service next to it.
So before FFmpeg sees a URL: only network schemes, and no loopback, link-local, private, unspecified, multicast or
reserved address for any name the host resolves to, unless the operator allows private addresses. What FFmpeg then
opens by itself (HLS segments, redirects, a second resolution of the name) is held to the same rules by
:func:`protocol_whitelist`, by the egress guard of :mod:`sttgate.pull.egress` (HTTP, HTTPS) and by the source relay
of :mod:`sttgate.pull.relay` (RTSP, RTMP, RTMPS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from sttgate.core.refusals import invalid_url

AUDIO_SCHEMES = ("rtmp", "rtmps", "rtsp", "http", "https")
CALLBACK_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443, "rtmp": 1935, "rtmps": 443, "rtsp": 554}
MAX_URL_LENGTH = 4096

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
# Whether a pull task may connect to this address and port. The gateway's own rule is :func:`public_only`; tests
# substitute one that treats a single loopback address or port as "public".
AddressPolicy = Callable[[str, int], bool]


def address_problem(address: IPAddress) -> str | None:
    """Why an address may not be reached from a pull task, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_problem(address.ipv4_mapped)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """The address rule as a predicate, for the egress guard and the webhook connector."""
    if allow_private:
        return True
    try:
        return address_problem(ipaddress.ip_address(address.split("%", 1)[0])) is None
    except ValueError:
        return False


def public_only(address: str, _port: int) -> bool:
    """The gateway's :data:`AddressPolicy` when private addresses are refused: public unicast addresses, any port."""
    return address_allowed(address, allow_private=False)


@dataclass(frozen=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse_url(url: object, schemes: Iterable[str], code: str, what: str) -> SplitResult:
    """The syntactic half of the rules: a string, an allowed scheme, a host, a valid port."""
    allowed = tuple(schemes)
    listed = ", ".join(allowed)
    if not isinstance(url, str) or not url.strip():
        raise invalid_url(code, f"{what} is required and must be a URL string ({listed}).")
    if len(url) > MAX_URL_LENGTH:
        raise invalid_url(code, f"{what} is longer than {MAX_URL_LENGTH} characters.")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise invalid_url(code, f"{what} must not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid_url(code, f"{what} is not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        shown = f"'{scheme}'" if scheme else "no scheme"
        raise invalid_url(code, f"{what} has {shown}; allowed schemes: {listed}.")
    if not parts.hostname:
        raise invalid_url(code, f"{what} has no host.")
    if port == 0:
        raise invalid_url(code, f"{what} has port 0.")
    return parts


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the host resolves to, through the running loop's getaddrinfo."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_url(
    url: object,
    *,
    schemes: Iterable[str],
    code: str,
    what: str,
    allow_private: bool,
    resolver: Resolver | None = None,
    policy: AddressPolicy | None = None,
) -> CheckedUrl:
    """Apply the scheme rule, then the address rule to every address the host resolves to.

    ``policy``, when given, replaces the rule that ``allow_private`` selects.
    """
    parts = parse_url(url, schemes, code, what)
    assert isinstance(url, str) and parts.hostname
    scheme = parts.scheme.lower()
    host = parts.hostname
    port = parts.port or DEFAULT_PORTS[scheme]
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise invalid_url(code, f"{what}: the host '{host}' cannot be resolved ({exc}).") from None
        if not addresses:
            raise invalid_url(code, f"{what}: the host '{host}' has no address.")
    if policy is not None:
        for address in addresses:
            if not policy(address, port):
                why = address_problem(ipaddress.ip_address(address.split("%", 1)[0])) or "refused"
                raise invalid_url(code, f"{what} points at a {why} address ({address}:{port}).")
    elif not allow_private:
        for address in addresses:
            problem = address_problem(ipaddress.ip_address(address.split("%", 1)[0]))
            if problem:
                raise invalid_url(
                    code,
                    f"{what} points at a {problem} address ({address}); only public addresses are allowed.",
                )
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


async def check_audio_url(
    url: object, *, allow_private: bool, resolver: Resolver | None = None, policy: AddressPolicy | None = None
) -> CheckedUrl:
    """Refuse an ``audio_url`` FFmpeg must not open: 400 ``invalid_audio_url``."""
    return await check_url(
        url,
        schemes=AUDIO_SCHEMES,
        code="invalid_audio_url",
        what="audio_url",
        allow_private=allow_private,
        resolver=resolver,
        policy=policy,
    )


async def check_callback_url(url: object, *, allow_private: bool, resolver: Resolver | None = None) -> CheckedUrl:
    """Refuse a ``callback_url`` the gateway must not post to: 400 ``invalid_callback_url``."""
    return await check_url(
        url,
        schemes=CALLBACK_SCHEMES,
        code="invalid_callback_url",
        what="callback_url",
        allow_private=allow_private,
        resolver=resolver,
    )


# What FFmpeg may open, per source scheme: the scheme's own stack and nothing else. ``file``, ``data``,
# ``concat``, ``subfile``, ``pipe`` and every other local or indirect protocol are absent, and the whitelist is
# inherited by everything the demuxer opens on its own (HLS variants, segments, keys, concat entries). Through the
# source relay, an rtmps source is opened as rtmp (the relay adds the TLS).
_WHITELISTS = {
    "http": "http,https,tcp,tls,crypto,httpproxy",
    "https": "http,https,tcp,tls,crypto,httpproxy",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,tcp,tls",
    "rtsp": "rtsp,tcp",
}


def protocol_whitelist(scheme: str) -> str:
    """FFmpeg's ``-protocol_whitelist`` for a source of this scheme."""
    return _WHITELISTS[scheme.lower()]
