"""The URL rules of docs/pull.md#url-safety, without FFmpeg: schemes, hosts, addresses, whitelists."""

from __future__ import annotations

import ipaddress

import pytest

from sttgate.core.refusals import Refusal
from sttgate.pull.urlsafety import (
    address_allowed,
    address_problem,
    check_audio_url,
    check_callback_url,
    protocol_whitelist,
)


def fixed(*addresses: str):
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "/etc/passwd",
        "data:audio/wav;base64,AAAA",
        "concat:http://a/x|http://b/y",
        "subfile,,start,0,end,0,,:http://example.com/x",
        "ftp://example.com/a.wav",
        "udp://8.8.8.8:1234",
        "srt://8.8.8.8:1234",
        "pipe:0",
        "http://",
        "http:///path",
        "http://exa mple.com/a",
        "http://example.com:99999/a",
        "",
        None,
        42,
    ],
)
async def test_audio_url_refused_before_anything_is_opened(url: object) -> None:
    with pytest.raises(Refusal) as info:
        await check_audio_url(url, allow_private=True, resolver=fixed("93.184.216.34"))
    assert info.value.status == 400
    assert info.value.code == "invalid_audio_url"
    assert info.value.message.endswith(".")


@pytest.mark.parametrize("scheme", ["rtmp", "rtmps", "rtsp", "http", "https", "HTTPS"])
async def test_audio_url_schemes_allowed(scheme: str) -> None:
    checked = await check_audio_url(f"{scheme}://stream.example/live/x", allow_private=False, resolver=fixed("8.8.8.8"))
    assert checked.addresses == ("8.8.8.8",)
    assert checked.scheme == scheme.lower()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1/a.wav", "loopback"),
        ("http://127.8.9.1:8000/a.wav", "loopback"),
        ("http://[::1]/a.wav", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.wav", "loopback"),
        ("http://0.0.0.0/a", "unspecified"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.5/a", "private"),
        ("http://172.16.1.1/a", "private"),
        ("http://192.168.1.1/a", "private"),
        ("http://[fd00::1]/a", "private"),
        ("http://[fe80::1]/a", "link-local"),
        ("http://224.0.0.1/a", "multicast"),
        ("http://240.0.0.1/a", "reserved"),
        ("http://100.64.0.1/a", "reserved"),
    ],
)
async def test_private_addresses_refused_unless_allowed(url: str, problem: str) -> None:
    with pytest.raises(Refusal) as info:
        await check_audio_url(url, allow_private=False)
    assert info.value.code == "invalid_audio_url"
    assert problem in info.value.message
    assert (await check_audio_url(url, allow_private=True)).url == url


async def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(Refusal) as info:
        await check_audio_url("rtmp://cam.example/live", allow_private=False, resolver=fixed("8.8.8.8", "10.1.2.3"))
    assert "10.1.2.3" in info.value.message


async def test_localhost_by_name_through_the_real_resolver() -> None:
    with pytest.raises(Refusal):
        await check_callback_url("http://localhost:9/hook", allow_private=False)


async def test_unresolvable_host_is_a_clear_refusal() -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(Refusal) as info:
        await check_audio_url("http://nowhere.invalid/a", allow_private=False, resolver=fails)
    assert "cannot be resolved" in info.value.message


@pytest.mark.parametrize("url", ["rtmp://example.com/hook", "ws://example.com/x", "file:///tmp/x", "https://[::1]/x"])
async def test_callback_url_rules(url: str) -> None:
    with pytest.raises(Refusal) as info:
        await check_callback_url(url, allow_private=False, resolver=fixed("8.8.8.8"))
    assert info.value.code == "invalid_callback_url"


def test_address_predicates() -> None:
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None
    assert address_problem(ipaddress.ip_address("2001:4860:4860::8888")) is None
    assert not address_allowed("127.0.0.1", allow_private=False)
    assert address_allowed("127.0.0.1", allow_private=True)
    assert not address_allowed("not an address", allow_private=False)


@pytest.mark.parametrize("scheme", ["http", "https", "rtmp", "rtmps", "rtsp"])
def test_whitelists_never_include_local_protocols(scheme: str) -> None:
    allowed = set(protocol_whitelist(scheme).split(","))
    assert not allowed & {"file", "data", "pipe", "fd", "concat", "concatf", "subfile", "cache", "unix"}
    assert scheme in allowed
