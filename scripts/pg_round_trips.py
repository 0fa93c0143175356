"""Count the PostgreSQL round trips of one session's control plane: authenticate, open, accept, end.

A loopback proxy in front of the PostgreSQL at 127.0.0.1:5432 reads what the gateway's store sends and counts each
``Sync`` (the end of an extended-protocol exchange: a prepared statement's run, a prepare) and each simple ``Query``
(BEGIN, COMMIT, a pool's ping): one round trip each. The store runs on a fresh schema, once with the PostgreSQL fast
paths (``fast_path=True``, the default) and once without, after a warm-up (the statements are prepared once per pooled
connection and cached).

    PYTHONPATH=src .venv/bin/python scripts/pg_round_trips.py [--sessions 50] [--url postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import uuid
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import asyncpg

from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import Store

_SPECIAL_STARTUP = {80877103, 80877104}  # SSLRequest, GSSENCRequest: another untyped message follows


class Proxy:
    """TCP proxy to ``upstream`` counting client messages by type (``Q`` and ``S`` are round trips)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.counts: Counter[str] = Counter()

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        startup = True
        buffer = b""
        while data := await reader.read(65536):
            writer.write(data)
            buffer += data
            while True:
                if startup:
                    if len(buffer) < 8:
                        break
                    length, code = struct.unpack("!ii", buffer[:8])
                    if len(buffer) < length:
                        break
                    buffer = buffer[length:]
                    startup = code in _SPECIAL_STARTUP
                    continue
                if len(buffer) < 5:
                    break
                kind = chr(buffer[0])
                (length,) = struct.unpack("!i", buffer[1:5])
                if len(buffer) < 1 + length:
                    break
                self.counts[kind] += 1
                buffer = buffer[1 + length :]
        writer.close()

    async def _server_to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._client_to_server(client_r, server_w),
            self._server_to_client(server_r, client_w),
            return_exceptions=True,
        )

    def trips(self) -> int:
        return self.counts["S"] + self.counts["Q"]


async def measure(url: str, sessions: int, fast_path: bool) -> dict[str, float]:
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    schema = f"sttgate_rt_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    proxied = f"postgresql://{parts.username}@127.0.0.1:{port}{parts.path}?sslmode=disable&options=" + quote(
        f"-csearch_path={schema}"
    )
    store = await Store.connect(proxied, fast_path=fast_path)
    phases: Counter[str] = Counter()
    try:
        account = await store.create_account(name="rt", balance_nanos=10**15, max_streams=1000)
        key = (await store.create_key(account.id)).key

        async def one(count: bool) -> None:
            def mark(phase: str, before: int) -> None:
                if count:
                    phases[phase] += proxy.trips() - before

            before = proxy.trips()
            principal = await store.authenticate(key)
            assert principal is not None
            mark("authenticate", before)
            sid, before = str(uuid.uuid4()), proxy.trips()
            await store.open_session(
                session_id=sid,
                account_id=account.id,
                kind=SessionKind.WEBSOCKET,
                provider="assemblyai",
                gateway_id="rt",
                min_balance_nanos=1000,
                lease_ttl=30,
                api_key_id=principal.key_id,
            )
            mark("open", before)
            before = proxy.trips()
            await store.accept_sessions([(sid, datetime.now(UTC))])
            mark("accept", before)
            before = proxy.trips()
            await store.end_session(
                sid,
                audio_seconds=1.0,
                cycles=0,
                cost_nanos=0,
                close_code=1000,
                close_reason=None,
                closed_by=ClosedBy.CLIENT,
            )
            mark("end", before)

        for _ in range(20):  # warm-up: statements prepared on the pooled connection, the key's last use written
            await one(False)
        await asyncio.sleep(0.2)
        for _ in range(sessions):
            await one(True)
    finally:
        await store.close()
        server.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    result = {phase: n / sessions for phase, n in phases.items()}
    result["total"] = sum(phases.values()) / sessions
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    for fast_path in (False, True):
        figures = await measure(args.url, args.sessions, fast_path)
        label = "fast paths" if fast_path else "portable  "
        print(label, "round trips per session:", ", ".join(f"{k} {v:g}" for k, v in figures.items()))


if __name__ == "__main__":
    asyncio.run(main())
