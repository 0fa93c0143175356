"""Every CLI error is one line on stderr and a non-zero exit, never a traceback; admin commands say which database
they used and never create one; ``sttgate emulate`` says where it listens and which operator keys it accepts, and the
recipe of docs/cli.md works as written."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from sttgate.store import Store
from tests.support.accounts import create_account
from tests.support.serve import serve_processes

STTGATE = str(Path(sys.executable).with_name("sttgate"))
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("STTGATE_", "ELEVENLABS_", "ASSEMBLYAI_"))}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def existing_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    async def create() -> None:
        await (await Store.connect(url, migrate=True)).close()

    asyncio.run(create())
    return url


CASES = {
    "port in use": (["serve", "--port", "{busy}"], {}, "Address already in use"),
    "admin port in use": (["serve", "--port", "0"], {"STTGATE_ADMIN_PORT": "{busy}"}, "(the admin listener;"),
    "admin port is the port": (["serve", "--port", "9000"], {"STTGATE_ADMIN_PORT": "9000"}, "admin_port must differ"),
    "log format": (["serve", "--port", "0"], {"STTGATE_LOG_FORMAT": "xml"}, "STTGATE_LOG_FORMAT"),
    "bad host": (["serve", "--host", "999.1.1.1", "--port", "0"], {}, "cannot listen on 999.1.1.1"),
    "host not local": (["serve", "--host", "192.0.2.1", "--port", "0"], {}, "cannot listen on 192.0.2.1"),
    "port out of range": (["serve", "--port", "70000"], {}, "STTGATE_PORT"),
    "no workers": (["serve", "--workers", "0"], {}, "STTGATE_WORKERS"),
    "log level": (["serve", "--port", "0"], {"STTGATE_LOG_LEVEL": "LOUD"}, "STTGATE_LOG_LEVEL"),
    "negative timeout": (["config"], {"STTGATE_IDLE_TIMEOUT_SECONDS": "-1"}, "STTGATE_IDLE_TIMEOUT_SECONDS"),
    "rate": (["config"], {"STTGATE_RATE_ELEVENLABS": "1e9"}, "rate_elevenlabs"),
    "lease": (["config"], {"STTGATE_LEASE_TTL_SECONDS": "5"}, "lease_ttl_seconds"),
    "huge balance": (["accounts", "create", "--name", "X", "--balance", "1e19"], {}, "--balance"),
    "huge max streams": (["accounts", "create", "--name", "X", "--max-streams", "9" * 20], {}, "max streams"),
    "emulator port": (["emulate", "--port", "70000"], {}, "--port"),
    "emulator port in use": (["emulate", "--port", "{busy}"], {}, "Address already in use"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_error_is_one_line_and_a_non_zero_exit(case: str, busy_port: int, existing_db: str, tmp_path: Path):
    args, env, needle = CASES[case]
    argv = [STTGATE, *(a.format(busy=busy_port) for a in args), "--database-url", existing_db]
    env = {name: value.format(busy=busy_port) for name, value in env.items()}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env={**CLEAN_ENV, **env}, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    assert result.stdout == ""


def test_output_to_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """``sttgate config | head -0``: the reader is gone before anything is written."""
    with subprocess.Popen(
        [STTGATE, "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=CLEAN_ENV
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) != 0
    assert stderr == ""


def test_admin_commands_never_create_a_database_and_say_which_they_used(tmp_path: Path, existing_db: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = subprocess.run(
        [STTGATE, "accounts", "list"], capture_output=True, text=True, cwd=elsewhere, env=CLEAN_ENV, timeout=60
    )
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [missing.stderr.strip()]
    assert "database sqlite:///./sttgate.db does not exist" in missing.stderr
    assert list(elsewhere.iterdir()) == []

    used = subprocess.run(
        [STTGATE, "accounts", "list", "--json", "--database-url", existing_db],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=CLEAN_ENV,
        timeout=60,
    )
    assert (used.returncode, used.stdout.strip(), used.stderr) == (0, "[]", f"sttgate: database {existing_db}\n")
    unknown = subprocess.run(
        [STTGATE, "accounts", "show", "nope", "--database-url", existing_db],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert unknown.stderr == f"error: no account nope (database {existing_db})\n"


async def test_the_emulator_recipe_of_the_docs_works_as_written(tmp_path: Path) -> None:
    """``sttgate emulate`` prints its URLs, keys and the environment of a gateway; a gateway started with exactly that
    environment streams through the emulators."""
    emulate = await asyncio.create_subprocess_exec(
        STTGATE, "emulate", "--port", "0", stdout=asyncio.subprocess.PIPE, env=CLEAN_ENV, cwd=tmp_path
    )
    try:
        assert emulate.stdout is not None
        banner: list[str] = []
        async with asyncio.timeout(30):
            while not banner or banner[-1].strip() != "sttgate serve":
                banner.append((await emulate.stdout.readline()).decode())
        text = "".join(banner)
        assert re.search(r"elevenlabs: ws://\S+/v1/speech-to-text/realtime .*emulator-elevenlabs-key", text)
        assert re.search(r"assemblyai: ws://127\.0\.0\.1:\d+/v3/ws .*emulator-assemblyai-key", text)
        env = dict(re.findall(r"^\s+([A-Z_]+)=(\S+) \\$", text, re.MULTILINE))
        assert set(env) >= {"STTGATE_ASSEMBLYAI_URL", "ASSEMBLYAI_API_KEY", "ELEVENLABS_API_KEY"}

        database = f"sqlite:///{tmp_path / 'sttgate.db'}"
        async with serve_processes() as spawn:
            gateway = await spawn(env={**env, "STTGATE_DATABASE_URL": database}, cwd=tmp_path)
            store = await Store.connect(database, migrate=False)
            try:
                acct = await create_account(store)
            finally:
                await store.close()
            url = URL(
                f"http://127.0.0.1:{gateway.port}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}"
                "&sample_rate=16000",
                encoded=True,
            )
            async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
                begin = await ws.receive_json(timeout=10)
                assert begin["type"] == "Begin"
    finally:
        emulate.send_signal(signal.SIGINT)
        await emulate.wait()
