"""``[[export]]`` in the config file, ``sttgate export status`` and ``sttgate export replay`` (docs/export.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sttgate.cli import main
from sttgate.core.outcomes import SessionKind
from sttgate.store import SessionProgress, Store

CE = """
[[export]]
name = "meter"
type = "cloudevents"
url = "https://collector.example/events"
api_key = "ce-secret-token-0001"
"""
STRIPE = """
[[export]]
name = "billing"
type = "stripe"
api_key = "sk_live_secret_value_9876"
value = "nanos"
"""


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sinks_are_shown_with_their_keys_masked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text(CE + STRIPE)
    code, out, _ = _run(capsys, "--config", str(tmp_path / "gw.toml"), "config", "--json")
    assert code == 0 and "secret" not in out
    meter, billing = json.loads(out)["export"]
    assert meter == {
        "name": "meter",
        "type": "cloudevents",
        "url": "https://collector.example/events",
        "api_key": "****0001",
        "source": "sttgate",
        "batch_size": 100,
        "timeout_seconds": 10.0,
        "backoff_seconds": 1.0,
        "backoff_max_seconds": 60.0,
    }
    assert (billing["api_key"], billing["api_base"], billing["value"]) == (
        "****9876",
        "https://api.stripe.com",
        "nanos",
    )
    code, out, _ = _run(capsys, "--config", str(tmp_path / "gw.toml"), "config")
    assert code == 0 and "secret" not in out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[export]]\nname = "x"\ntype = "cloudevents"\n', "[[export]] table 1: export sink 'x': a cloudevents sink"),
        ('[[export]]\nname = "x"\ntype = "stripe"\n', "a stripe sink needs api_key"),
        ('[[export]]\nname = "x"\ntype = "kafka"\nurl = "http://h"\n', "table 1 type: Input should be"),
        ('[[export]]\nname = "x"\ntype = "cloudevents"\nurl = "ftp://h"\n', "table 1 url: must be an http://"),
        ('[[export]]\nname = "a b"\ntype = "cloudevents"\nurl = "http://h"\n', "table 1 name:"),
        ('[[export]]\nname = "x"\ntype = "cloudevents"\nurl = "http://h"\nretries = 3\n', "table 1 retries: Extra"),
        (CE + CE, "[[export]] sink names must be unique"),
        (
            '[[export]]\nname = "x"\ntype = "cloudevents"\nurl = "http://h"\n'
            'timeout_seconds = 40\napi_key="sekrit-1234"\n',
            "timeout_seconds must be below export_lease_seconds",
        ),
    ],
)
def test_a_bad_sink_is_one_line_at_start_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, message: str
) -> None:
    (tmp_path / "gw.toml").write_text(toml)
    code, out, err = _run(capsys, "--config", str(tmp_path / "gw.toml"), "config")
    assert code == 1 and out == ""
    assert err.startswith("error: invalid configuration: ") and err.count("\n") == 1, err
    assert message in err and "sekrit" not in err and "secret-token" not in err


async def _charged_cycles(url: str) -> list[str]:
    store = await Store.connect(url)
    try:
        await store.outbox.register_sinks(["meter"])
        account = await store.create_account(name="a")
        await store.open_session(
            session_id="s1",
            account_id=account.id,
            kind=SessionKind.WEBSOCKET,
            provider="assemblyai",
            gateway_id="gw",
            min_balance_nanos=0,
            lease_ttl=30.0,
        )
        await store.flush_progress([SessionProgress("s1", 12.0, 3, 3 * 208_333)])
        events = await store.outbox.pending("meter", 10)
        await store.outbox.delivered("meter", [e.seq for e in events])
        return [e.id for e in events]
    finally:
        await store.close()


def test_status_and_replay(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    (tmp_path / "gw.toml").write_text(CE)
    assert asyncio.run(_charged_cycles(url)) == ["s1:1", "s1:2", "s1:3"]
    base = ("--config", str(tmp_path / "gw.toml"), "--database-url", url)

    def status() -> dict[str, object]:
        code, out, _ = _run(capsys, *base, "export", "status", "--json")
        assert code == 0
        [sink] = json.loads(out)["sinks"]
        return dict(sink)

    sent = status()
    assert (sent["name"], sent["type"], sent["pending"], sent["lag_seconds"], sent["sent_total"]) == (
        "meter",
        "cloudevents",
        0,
        None,
        3,
    )
    assert sent["last_success_at"] is not None

    code, out, _ = _run(capsys, *base, "export", "replay", "--sink", "meter", "--since", "2000-01-01", "--json")
    assert code == 0 and json.loads(out) == {"sink": "meter", "since": "2000-01-01T00:00:00Z", "queued": 3}
    again = status()
    assert again["pending"] == 3 and isinstance(again["lag_seconds"], float)
    code, out, _ = _run(capsys, *base, "export", "status")
    assert code == 0 and "meter" in out and "cloudevents" in out

    code, _, err = _run(capsys, *base, "export", "replay", "--sink", "nope", "--since", "2000-01-01")
    assert code == 1 and "no [[export]] sink named 'nope'" in err and err.count("\n") == 1
    code, _, err = _run(capsys, *base, "export", "replay", "--sink", "meter", "--since", "yesterday")
    assert code == 1 and err.startswith("error: --since:") and err.count("\n") == 1


def test_sink_keys_are_among_the_secrets_logs_never_show(tmp_path: Path) -> None:
    from sttgate.config import Settings
    from sttgate.process import _known_secrets

    (tmp_path / "gw.toml").write_text(CE + STRIPE)
    secrets = _known_secrets(Settings.load(tmp_path / "gw.toml"))
    assert {"ce-secret-token-0001", "sk_live_secret_value_9876"} <= set(secrets)
