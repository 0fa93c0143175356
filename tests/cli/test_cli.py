"""The real ``sttgate`` console script, run as a subprocess against a fresh SQLite file."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from sttgate.config import DEFAULT_MAX_SESSIONS_PER_PROCESS
from sttgate.store import Store
from sttgate.store.db import head_revision

Run = Callable[..., subprocess.CompletedProcess[str]]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("sttgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sttgate"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


async def _create_database(url: str) -> None:
    store = await Store.connect(url, migrate=True)
    await store.close()


@pytest.fixture
def run(tmp_path: Path, db_url: str) -> Run:
    """Runs the console script on ``db_url``, which exists (as after ``sttgate db upgrade``) unless the first command
    run is ``db …`` itself: admin commands never create a database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STTGATE_", "ELEVENLABS_", "ASSEMBLYAI_"))}
    first = True

    def run(*args: str, extra_env: dict[str, str] | None = None, with_db: bool = True) -> subprocess.CompletedProcess:
        nonlocal first
        if first and with_db and args[:1] != ("db",):
            import asyncio

            asyncio.run(_create_database(db_url))
        first = False
        argv = [*_command(), *args]
        if with_db:
            argv += ["--database-url", db_url]
        return subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp_path, env={**env, **(extra_env or {})}, timeout=60
        )

    return run


def ok_json(result: subprocess.CompletedProcess) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fails(result: subprocess.CompletedProcess, code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip()
    return result.stderr


def test_account_key_lifecycle(run: Run, db_url: str) -> None:
    account = ok_json(run("accounts", "create", "--name", "Acme Radio", "--max-streams", "3", "--json"))
    assert account["name"] == "Acme Radio"
    assert account["max_streams"] == 3
    assert account["balance_usd"] is None
    assert account["streaming_enabled"] is True

    created = ok_json(run("keys", "create", "--account", account["id"], "--json"))
    key = created["key"]
    assert key.startswith("sk-mai-")
    assert len(key) >= 39
    assert created["prefix"] == key[:12]
    assert {"id", "key", "prefix", "account_id", "created_at"} <= set(created)

    listed = run("keys", "list", "--account", account["id"], "--json")
    keys = ok_json(listed)
    assert [k["id"] for k in keys] == [created["id"]]
    assert key not in listed.stdout
    assert "key" not in keys[0]
    human = run("keys", "list", "--account", account["id"])
    assert human.returncode == 0
    assert created["id"] in human.stdout and key not in human.stdout

    async def authenticate() -> object:
        store = await Store.connect(db_url, migrate=False)
        try:
            return await store.authenticate(key)
        finally:
            await store.close()

    import asyncio

    assert asyncio.run(authenticate()).account_id == account["id"]

    revoked = ok_json(run("keys", "revoke", created["id"], "--json"))
    assert revoked["id"] == created["id"] and revoked["revoked_at"]
    assert ok_json(run("keys", "list", "--account", account["id"], "--json"))[0]["revoked_at"] == revoked["revoked_at"]
    assert asyncio.run(authenticate()) is None

    shown = ok_json(run("accounts", "show", account["id"], "--json"))
    assert shown == account
    assert [a["id"] for a in ok_json(run("accounts", "list", "--json"))] == [account["id"]]


def test_key_creation_shows_the_key_in_human_form(run: Run) -> None:
    account = ok_json(run("accounts", "create", "--name", "Acme", "--json"))
    result = run("keys", "create", "--account", account["id"])
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("sk-mai-") and len(first_line) >= 39
    assert "only time" in result.stdout


def test_update_balance_limits_and_streaming(run: Run) -> None:
    account = ok_json(run("accounts", "create", "--name", "Prepaid", "--balance", "1.5", "--no-streaming", "--json"))
    assert account["balance_usd"] == "1.500000000"
    assert account["streaming_enabled"] is False
    aid = account["id"]

    assert ok_json(run("accounts", "update", aid, "--top-up", "0.25", "--json"))["balance_usd"] == "1.750000000"
    assert ok_json(run("accounts", "update", aid, "--top-up", "0.000000001", "--json"))["balance_usd"] == "1.750000001"
    assert ok_json(run("accounts", "update", aid, "--balance", "2", "--json"))["balance_usd"] == "2.000000000"
    updated = ok_json(run("accounts", "update", aid, "--streaming", "--max-streams", "7", "--name", "New", "--json"))
    assert (updated["streaming_enabled"], updated["max_streams"], updated["name"]) == (True, 7, "New")
    assert updated["balance_usd"] == "2.000000000"
    assert ok_json(run("accounts", "update", aid, "--no-streaming", "--json"))["streaming_enabled"] is False
    assert ok_json(run("accounts", "update", aid, "--postpaid", "--json"))["balance_usd"] is None
    assert "postpaid" in fails(run("accounts", "update", aid, "--top-up", "1"))

    human = run("accounts", "show", aid)
    assert human.returncode == 0
    assert "New" in human.stdout and "postpaid" in human.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(human.stdout)


def test_webhook_secret(run: Run) -> None:
    aid = ok_json(run("accounts", "create", "--name", "Hooks", "--json"))["id"]
    first = ok_json(run("accounts", "webhook-secret", aid, "--json"))["webhook_secret"]
    assert len(first) >= 32
    assert ok_json(run("accounts", "webhook-secret", aid, "--json"))["webhook_secret"] == first
    rotated = ok_json(run("accounts", "webhook-secret", aid, "--rotate", "--json"))["webhook_secret"]
    assert rotated != first
    assert run("accounts", "webhook-secret", aid).stdout.strip() == rotated
    # A new secret is already a Standard Webhooks secret: the same string serves both signatures.
    document = ok_json(run("accounts", "webhook-secret", aid, "--json"))
    assert document["standard_webhooks_secret"] == document["webhook_secret"] == rotated
    assert rotated.startswith("whsec_") and len(base64.b64decode(rotated[6:], validate=True)) == 32


def test_usage_document(run: Run) -> None:
    aid = ok_json(run("accounts", "create", "--name", "Usage", "--balance", "0.12", "--json"))["id"]
    doc = ok_json(run("usage", "--account", aid, "--json"))
    assert doc == {
        "account_id": aid,
        "balance_usd": "0.120000000",
        "totals": {
            "elevenlabs": {"sessions": 0, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"},
            "assemblyai": {"sessions": 0, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"},
            "deepgram": {"sessions": 0, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"},
        },
        "sessions": [],
    }
    windowed = run("usage", "--account", aid, "--since", "2026-01-01", "--until", "2026-01-31T12:00:00+02:00")
    assert windowed.returncode == 0, windowed.stderr
    assert "assemblyai" in windowed.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("accounts", "create", "--name", "X", "--balance", "1.0000000001"),
        ("accounts", "create", "--name", "X", "--balance", "-1"),
        ("accounts", "create", "--name", "X", "--balance", "ten"),
        ("accounts", "create", "--name", "  "),
        ("accounts", "create", "--name", "X", "--max-streams", "-2"),
        ("accounts", "show", "no-such-account"),
        ("accounts", "update", "no-such-account", "--name", "Y"),
        ("accounts", "webhook-secret", "no-such-account"),
        ("keys", "create", "--account", "no-such-account"),
        ("keys", "list", "--account", "no-such-account"),
        ("keys", "revoke", "no-such-key"),
        ("usage", "--account", "no-such-account"),
    ],
)
def test_bad_input_is_a_message_and_exit_1(run: Run, args: tuple[str, ...]) -> None:
    stderr = fails(run(*args, "--json"))
    assert stderr.startswith("error: ")
    assert "Traceback" not in stderr


def test_bad_amounts_and_times_on_an_existing_account(run: Run) -> None:
    aid = ok_json(run("accounts", "create", "--name", "X", "--balance", "1", "--json"))["id"]
    assert "9 decimals" in fails(run("accounts", "update", aid, "--top-up", "0.0000000001"))
    assert "negative" in fails(run("accounts", "update", aid, "--top-up", "-0.5"))
    assert "ISO 8601" in fails(run("usage", "--account", aid, "--since", "yesterday"))
    assert "before" in fails(run("usage", "--account", aid, "--since", "2026-02-01", "--until", "2026-01-01"))
    assert ok_json(run("accounts", "show", aid, "--json"))["balance_usd"] == "1.000000000"


@pytest.mark.parametrize(
    "args",
    [
        ("accounts", "create"),
        ("accounts", "update", "x", "--balance", "1", "--top-up", "1"),
        ("accounts", "create", "--name", "X", "--max-streams", "many"),
        ("keys", "list"),
        ("frobnicate",),
        (),
    ],
)
def test_usage_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_database_error_is_a_message(run: Run, tmp_path: Path) -> None:
    result = run(
        "accounts", "list", "--database-url", f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}", with_db=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: database")
    assert "Traceback" not in result.stderr


def test_config_masks_secrets(run: Run, tmp_path: Path) -> None:
    env = {
        "ASSEMBLYAI_API_KEY": "aai-secret-value-1234",
        "ELEVENLABS_API_KEY": "xi-secret-value-5678",
        "DEEPGRAM_API_KEY": "dg-secret-value-9012",
    }
    result = run(
        "config",
        "--json",
        "--database-url",
        "postgresql://gw:hunter2@db.internal/sttgate",
        with_db=False,
        extra_env=env,
    )
    config = ok_json(result)
    assert "aai-secret-value" not in result.stdout and "xi-secret-value" not in result.stdout
    assert "hunter2" not in result.stdout
    assert config["assemblyai_api_key"] == "****1234"
    assert config["elevenlabs_api_key"] == "****5678"
    assert config["deepgram_api_key"] == "****9012" and "dg-secret-value" not in result.stdout
    assert (config["deepgram_url"], config["rate_deepgram"]) == ("wss://api.deepgram.com/v1/listen", "0.462")
    assert config["database_url"] == "postgresql://gw:****@db.internal/sttgate"

    human = run("config", with_db=False, extra_env=env)
    assert human.returncode == 0
    assert "aai-secret-value" not in human.stdout and "assemblyai_api_key = ****1234" in human.stdout


def test_config_file_and_global_options_before_the_command(run: Run, tmp_path: Path, db_url: str) -> None:
    (tmp_path / "gw.toml").write_text("port = 9999\nSTTGATE_DRAIN_SECONDS = 5\n")
    config = ok_json(run("--json", "--config", "gw.toml", "--database-url", db_url, "config", with_db=False))
    assert (config["port"], config["drain_seconds"], config["database_url"]) == (9999, 5.0, db_url)
    assert "not found" in fails(run("--config", "nope.toml", "config", with_db=False))


def test_admission_control_is_on_by_default_and_can_be_turned_off(run: Run) -> None:
    """docs/configuration.md#admission-control: each process admits at most the default number of sessions unless the
    operator says otherwise (0 = no limit)."""
    assert ok_json(run("config", "--json", with_db=False))["max_sessions_per_process"] == 1000
    assert DEFAULT_MAX_SESSIONS_PER_PROCESS == 1000
    off = run("config", "--json", with_db=False, extra_env={"STTGATE_MAX_SESSIONS_PER_PROCESS": "0"})
    assert ok_json(off)["max_sessions_per_process"] == 0


def test_db_upgrade_on_a_fresh_file(run: Run, tmp_path: Path) -> None:
    first = ok_json(run("db", "upgrade", "--json"))
    assert first["revision"] == head_revision()
    assert (tmp_path / "cli.db").exists()
    assert ok_json(run("db", "upgrade", "--json")) == first
    assert head_revision() in run("db", "upgrade").stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen) -> int:
    """Poll until the server answers anything over HTTP (it is starting); fail at once if the process dies."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("command", "path", "stop", "status"),
    [("serve", "/healthz", signal.SIGTERM, 200), ("emulate", "/v3/ws", signal.SIGINT, None)],
)
def test_serve_and_emulate_run_until_signalled(
    tmp_path: Path, db_url: str, command: str, path: str, stop: signal.Signals, status: int | None
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STTGATE_")}
    env["STTGATE_ADMIN_PORT"] = str(_free_port())  # serve's admin listener: not on the shared default 8081
    with subprocess.Popen(
        [*_command(), command, "--port", str(port), "--database-url", db_url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            answered = _wait_until_serving(f"http://127.0.0.1:{port}{path}", proc)
            assert status is None or answered == status
            proc.send_signal(stop)
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- sttgate prices (docs/cli.md#prices) -----------------------------------------------------------------------------


def _shipped_book() -> dict:
    from sttgate.config import DEFAULT_PRICE_BOOK

    return tomllib.loads(DEFAULT_PRICE_BOOK.read_text())


def test_prices_prints_the_shipped_book_in_its_own_shape(run: Run) -> None:
    doc = ok_json(run("prices", "--json", with_db=False))
    shipped = _shipped_book()["prices"]
    for table in shipped.values():  # what the file leaves out, the effective book says
        table.setdefault("basis", "audio")
    assert doc == {"prices": shipped}
    human = run("prices", with_db=False)
    assert human.returncode == 0 and tomllib.loads(human.stdout) == doc


def test_prices_shows_the_book_in_force(run: Run, tmp_path: Path) -> None:
    book = tmp_path / "book.toml"
    book.write_text(
        '[prices.deepgram]\nbasis = "session"\ndefault_model = "nova-3"\nmodels = { "nova-3" = "0.5", x = 2 }\n'
        'addons = { diarize = "0.12" }\ndeny = ["mip_opt_out"]\nsources = { "nova-3" = "our contract" }\n'
    )
    config = tmp_path / "sttgate.toml"
    config.write_text('[prices.elevenlabs]\nrate = "1"\n')
    env = {"STTGATE_PRICE_BOOK": str(book), "STTGATE_RATE_ASSEMBLYAI": "0.2"}
    doc = ok_json(run("prices", "--json", "--config", str(config), with_db=False, extra_env=env))
    assert doc["prices"]["deepgram"] == {
        "basis": "session",
        "default_model": "nova-3",
        "models": {"nova-3": "0.5", "x": "2"},
        "addons": {"diarize": "0.12"},
        "deny": ["mip_opt_out"],
        "sources": {"nova-3": "our contract"},
    }
    assert doc["prices"]["elevenlabs"] == {
        "basis": "audio",
        "rate": "1",
        "models": {},
        "addons": {},
        "deny": [],
        "sources": {},
    }
    assemblyai = doc["prices"]["assemblyai"]
    shipped = _shipped_book()["prices"]["assemblyai"]
    assert assemblyai["models"] == {**shipped["models"], "universal-streaming-english": "0.2"}
    assert assemblyai["sources"]["universal-streaming-english"] == "STTGATE_RATE_ASSEMBLYAI"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[prices.deepgram]\ndefault_model = "nova-3"\nmodels = { "nova-3" = 0.462 }\n', "not the float 0.462"),
        ("[prices.deepgrm]\n", "unknown provider prices.deepgrm"),
        ("[prices.deepgram\n", "not TOML"),
        ("[other]\n", "no [prices.<provider>] tables"),
    ],
)
def test_a_bad_price_book_is_a_one_line_error(run: Run, tmp_path: Path, text: str, message: str) -> None:
    book = tmp_path / "bad.toml"
    book.write_text(text)
    for command in (("prices",), ("serve", "--port", "0")):
        result = run(*command, with_db=False, extra_env={"STTGATE_PRICE_BOOK": str(book)})
        assert result.returncode == 1 and result.stdout == ""
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_keys_create_with_governance_fields(run: Run) -> None:
    aid = ok_json(run("accounts", "create", "--name", "X", "--json"))["id"]
    created = ok_json(
        run(
            "keys",
            "create",
            "--account",
            aid,
            "--name",
            "backend",
            "--expires-in",
            "3600",
            "--max-streams",
            "2",
            "--providers",
            "assemblyai,elevenlabs",
            "--json",
        )
    )
    assert created["name"] == "backend" and created["max_streams"] == 2
    assert created["providers"] == ["assemblyai", "elevenlabs"]
    assert created["expires_at"] > created["created_at"]
    listed = ok_json(run("keys", "list", "--account", aid, "--json"))
    assert [(k["name"], k["max_streams"], k["providers"], k["expires_at"]) for k in listed] == [
        ("backend", 2, ["assemblyai", "elevenlabs"], created["expires_at"])
    ]
    plain = ok_json(run("keys", "create", "--account", aid, "--json"))
    assert (plain["name"], plain["expires_at"], plain["max_streams"], plain["providers"]) == (None, None, None, None)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--providers", "assemblyai,nope", "unknown provider 'nope'"),
        ("--providers", ",", "at least one provider"),
        ("--expires-in", "0", "lifetime"),
        ("--max-streams", "-1", "max streams"),
        ("--name", " ", "name"),
    ],
)
def test_keys_create_refuses_bad_options_in_one_line(run: Run, option: str, value: str, message: str) -> None:
    aid = ok_json(run("accounts", "create", "--name", "X", "--json"))["id"]
    stderr = fails(run("keys", "create", "--account", aid, option, value, "--json"))
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert ok_json(run("keys", "list", "--account", aid, "--json")) == []
