"""The ``sttgate`` console script: run the gateway, the emulators or the demo, and administer accounts and keys.

Admin commands print a readable form, or with ``--json`` exactly one JSON document on stdout, and say on stderr which
database they used (``sttgate: database sqlite:///./sttgate.db``). Every error is one line on stderr (``error: …``)
and exit code 1 (usage errors: 2), never a traceback (docs/cli.md#conventions). Admin commands never create a SQLite
file: ``serve``, ``db upgrade`` and ``demo`` do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from sttgate import __version__
from sttgate.config import Settings
from sttgate.providers import names

EXIT_OK = 0
EXIT_ERROR = 1


class CommandError(Exception):
    """A user-facing failure: printed as ``error: …`` and exit code 1."""


# --- parsing ------------------------------------------------------------------------------------------------------


def _common(*, json_flag: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command (SUPPRESS keeps a later default from hiding an earlier value)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="database URL (default: STTGATE_DATABASE_URL)"
    )
    parent.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="TOML file with settings (environment wins)"
    )
    if json_flag:
        parent.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout"
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    admin = _common(json_flag=True)
    plain = _common(json_flag=False)
    parser = argparse.ArgumentParser(
        prog="sttgate",
        description="A metered gateway for real-time speech-to-text.",
        parents=[_common(json_flag=True)],  # its own copy: set_defaults below rewrites the actions' defaults
    )
    parser.set_defaults(database_url=None, config=None, json=False)
    parser.add_argument("--version", action="version", version=f"sttgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", parents=[plain], help="run the gateway (creates/migrates the database)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080; 0 = any free port)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    serve.set_defaults(handler=_serve)

    acc = commands.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="accounts_command", metavar="ACTION", required=True
    )
    create = acc.add_parser("create", parents=[admin], help="create an account")
    create.add_argument("--name", required=True)
    create.add_argument("--max-streams", type=int, default=5, help="concurrent streams and pull tasks (default 5)")
    create.add_argument("--balance", metavar="USD", help="prepaid balance in USD; omit for a postpaid account")
    create.add_argument("--no-streaming", dest="streaming", action="store_false", help="create it unable to stream")
    create.set_defaults(handler=_accounts_create)
    acc.add_parser("list", parents=[admin], help="list accounts").set_defaults(handler=_accounts_list)
    show = acc.add_parser("show", parents=[admin], help="show one account")
    show.add_argument("account_id", metavar="ID")
    show.set_defaults(handler=_accounts_show)
    upd = acc.add_parser("update", parents=[admin], help="change an account's name, limits, permission or balance")
    upd.add_argument("account_id", metavar="ID")
    upd.add_argument("--name")
    upd.add_argument("--max-streams", type=int)
    upd.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None, help="allow streaming")
    money = upd.add_mutually_exclusive_group()
    money.add_argument("--balance", metavar="USD", help="set the prepaid balance (makes the account prepaid)")
    money.add_argument("--top-up", metavar="USD", help="add to the prepaid balance (atomic)")
    money.add_argument("--postpaid", action="store_true", help="make the account postpaid (no balance)")
    upd.set_defaults(handler=_accounts_update)
    secret = acc.add_parser("webhook-secret", parents=[admin], help="show the key that signs the account's webhooks")
    secret.add_argument("account_id", metavar="ID")
    secret.add_argument("--rotate", action="store_true", help="replace it with a new one")
    secret.set_defaults(handler=_accounts_webhook_secret)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True
    )
    kcreate = keys.add_parser("create", parents=[admin], help="create a key (shown once)")
    kcreate.add_argument("--account", required=True, metavar="ID")
    kcreate.set_defaults(handler=_keys_create)
    klist = keys.add_parser("list", parents=[admin], help="list an account's keys")
    klist.add_argument("--account", required=True, metavar="ID")
    klist.set_defaults(handler=_keys_list)
    krevoke = keys.add_parser("revoke", parents=[admin], help="revoke a key")
    krevoke.add_argument("key_id", metavar="KEY_ID")
    krevoke.set_defaults(handler=_keys_revoke)

    usage = commands.add_parser("usage", parents=[admin], help="an account's usage document")
    usage.add_argument("--account", required=True, metavar="ID")
    usage.add_argument("--since", metavar="T", help="sessions started at or after T (ISO 8601, UTC if no offset)")
    usage.add_argument("--until", metavar="T", help="sessions started before T (a date alone: through that UTC day)")
    usage.add_argument("--key-id", metavar="KEY_ID", help="only the sessions opened with this key (or its tokens)")
    usage.set_defaults(handler=_usage)

    dbp = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", metavar="ACTION", required=True
    )
    dbp.add_parser("upgrade", parents=[admin], help="create or migrate the database").set_defaults(handler=_db_upgrade)

    commands.add_parser("config", parents=[admin], help="print the effective settings (secrets masked)").set_defaults(
        handler=_config
    )
    commands.add_parser(
        "prices", parents=[admin], help="print the effective price book (TOML; --json: the same shape) with sources"
    ).set_defaults(handler=_prices)

    emulate = commands.add_parser("emulate", parents=[plain], help="serve local emulators of every provider")
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=8090, help="listen port (default 8090; 0 = any free port)")
    emulate.set_defaults(handler=_emulate)

    commands.add_parser("demo", parents=[plain], help="gateway + emulators + a demo account, offline").set_defaults(
        handler=_demo
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    # Admin commands say which database they used: after their output, or in their error line.
    admin = args.handler not in (_serve, _emulate, _demo, _config)
    try:
        settings = _settings(args)
        code = int(args.handler(args, settings))
        if admin:
            print(f"sttgate: {_used(settings)}", file=sys.stderr)
        return code
    except CommandError as exc:
        message = str(exc)
        if admin and settings is not None and not message.startswith("database "):
            message += f" ({_used(settings)})"
        _error(message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (``sttgate accounts list | head``): nothing left to say, and nobody to say it to.
        # stdout is pointed at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # a bug or an unforeseen environment: still one line, never a traceback
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR


def _error(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    line = " ".join(message.split()) or "failed"
    print(f"error: {line}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    from sttgate.config import describe_invalid
    from sttgate.core.prices import PriceBookError

    overrides: dict[str, Any] = {"database_url": args.database_url} if args.database_url else {}
    if args.handler is _serve:  # serve's options are settings too, checked like the environment's
        given = {name: getattr(args, name) for name in ("host", "port", "workers")}
        overrides |= {name: value for name, value in given.items() if value is not None}
    try:
        settings = Settings.load(args.config, **overrides)
    except FileNotFoundError as exc:
        raise CommandError(f"config file not found: {exc.filename}") from exc
    except ValidationError as exc:
        raise CommandError(f"invalid configuration: {describe_invalid(exc)}") from exc
    except Exception as exc:
        raise CommandError(f"invalid configuration: {exc}") from exc
    try:  # a bad price book is found at start-up, as one line (docs/billing.md#the-price-book)
        settings.prices_in_force()
    except PriceBookError as exc:
        raise CommandError(str(exc)) from exc
    return settings


# --- running against the store ------------------------------------------------------------------------------------


def _run(settings: Settings, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run one coroutine; store and database errors become CommandError."""
    from sqlalchemy.exc import SQLAlchemyError

    from sttgate.store import NotFoundError

    try:
        return asyncio.run(make())
    except (NotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise CommandError(f"database {_masked_url(settings)}: {reason}") from exc


def _run_admin(settings: Settings, operation: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open (and migrate) an existing store, run one operation (which answers with documents) on it, close it.

    A SQLite file that does not exist is an error, not a new empty database: an admin command run from another
    directory would otherwise create ``./sttgate.db`` and answer from it as if the accounts had vanished.
    """
    from sttgate.admin import Admin
    from sttgate.store import Store
    from sttgate.store.db import sqlite_file

    path = sqlite_file(settings.database_url)
    if path is not None and not os.path.exists(path):
        raise CommandError(
            f"database {_masked_url(settings)} does not exist (create it with `sttgate db upgrade` or `sttgate serve`, "
            "or name another with --database-url or STTGATE_DATABASE_URL)"
        )

    async def run() -> Any:
        store = await Store.connect(settings.database_url)
        try:
            return await operation(Admin(store, names()))
        finally:
            await store.close()

    return _run(settings, run)


def _used(settings: Settings) -> str:
    return f"database {_masked_url(settings)}"


def _masked_url(settings: Settings) -> str:
    return str(settings.masked()["database_url"])


def _nanos(text: str | None, what: str) -> int | None:
    from sttgate.core.money import usd_to_nanos

    if text is None:
        return None
    try:
        nanos = usd_to_nanos(text.strip())
    except ValueError as exc:
        raise CommandError(f"{what}: {exc}") from exc
    if nanos < 0:
        raise CommandError(f"{what}: must not be negative: {text!r}")
    return nanos


# --- output -------------------------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, document: Any, human: Callable[[Any], str]) -> int:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(human(document))
    return EXIT_OK


def _pairs(rows: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str("-" if c is None else c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _balance(account: dict[str, Any]) -> str:
    return "postpaid" if account["balance_usd"] is None else f"{account['balance_usd']} USD"


def _account_text(a: dict[str, Any]) -> str:
    return _pairs(
        [
            ("id", a["id"]),
            ("name", a["name"]),
            ("streaming", _yes_no(a["streaming_enabled"])),
            ("max streams", a["max_streams"]),
            ("balance", _balance(a)),
            ("created", a["created_at"]),
            ("updated", a["updated_at"]),
        ]
    )


def _accounts_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no accounts"
    return _table(
        ["ID", "NAME", "STREAMING", "MAX STREAMS", "BALANCE", "CREATED"],
        [
            [a["id"], a["name"], _yes_no(a["streaming_enabled"]), a["max_streams"], _balance(a), a["created_at"]]
            for a in items
        ],
    )


def _keys_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no keys"
    return _table(
        ["ID", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
        [[k["id"], k["prefix"] + "…", k["created_at"], k["last_used_at"], k["revoked_at"]] for k in items],
    )


def _usage_text(doc: dict[str, Any]) -> str:
    balance = "postpaid" if doc["balance_usd"] is None else f"{doc['balance_usd']} USD"
    parts = [
        _pairs([("account", doc["account_id"]), ("balance", balance)]),
        "",
        _table(
            ["PROVIDER", "SESSIONS", "AUDIO S", "BILLED S", "COST USD"],
            [
                [p, t["sessions"], t["audio_seconds"], t["billed_seconds"], t["cost_usd"]]
                for p, t in doc["totals"].items()
            ],
        ),
        "",
    ]
    if doc["sessions"]:
        parts.append(
            _table(
                [
                    "SESSION",
                    "KIND",
                    "PROVIDER",
                    "STARTED",
                    "ENDED",
                    "SESSION S",
                    "AUDIO S",
                    "BILLED S",
                    "COST USD",
                    "CODE",
                    "BY",
                ],
                [
                    [
                        s["id"],
                        s["kind"],
                        s["provider"],
                        s["started_at"],
                        s["ended_at"] or "open",
                        s["session_seconds"],
                        s["audio_seconds"],
                        s["billed_seconds"],
                        s["cost_usd"],
                        s["close_code"],
                        s["closed_by"],
                    ]
                    for s in doc["sessions"]
                ],
            )
        )
    else:
        parts.append("no sessions")
    return "\n".join(parts)


# --- commands -----------------------------------------------------------------------------------------------------


def _accounts_create(args: argparse.Namespace, settings: Settings) -> int:
    balance = _nanos(args.balance, "--balance")
    account = _run_admin(
        settings,
        lambda s: s.create_account(
            name=args.name, max_streams=args.max_streams, balance_nanos=balance, streaming_enabled=args.streaming
        ),
    )
    return _emit(args, account, _account_text)


def _accounts_list(args: argparse.Namespace, settings: Settings) -> int:
    return _emit(args, _run_admin(settings, lambda s: s.list_accounts()), _accounts_text)


def _accounts_show(args: argparse.Namespace, settings: Settings) -> int:
    account = _run_admin(settings, lambda s: s.get_account(args.account_id))
    if account is None:
        raise CommandError(f"no account {args.account_id}")
    return _emit(args, account, _account_text)


def _accounts_update(args: argparse.Namespace, settings: Settings) -> int:
    balance = _nanos(args.balance, "--balance")
    top_up = _nanos(args.top_up, "--top-up")
    account = _run_admin(
        settings,
        lambda s: s.update_account(
            args.account_id,
            name=args.name,
            max_streams=args.max_streams,
            streaming_enabled=args.streaming,
            set_balance_nanos=balance,
            top_up_nanos=top_up,
            postpaid=args.postpaid,
        ),
    )
    return _emit(args, account, _account_text)


def _accounts_webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    secret = _run_admin(settings, lambda a: a.store.webhook_secret(args.account_id, rotate=args.rotate))
    return _emit(args, {"webhook_secret": secret}, lambda d: d["webhook_secret"])


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    created = _run_admin(settings, lambda s: s.create_key(args.account))
    return _emit(
        args,
        created,
        lambda k: (
            f"{k['key']}\n\nThis is the only time the key is shown; store it now.\n"
            + _pairs(
                [("id", k["id"]), ("prefix", k["prefix"]), ("account", k["account_id"]), ("created", k["created_at"])]
            )
        ),
    )


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    return _emit(args, _run_admin(settings, lambda s: s.list_keys(args.account)), _keys_text)


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    key = _run_admin(settings, lambda s: s.revoke_key(args.key_id))
    return _emit(args, key, lambda k: f"key {k['id']} ({k['prefix']}…) revoked at {k['revoked_at']}")


def _usage(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.admin.window import InvalidWindow, window

    try:
        since, until = window(args.since, args.until)
    except InvalidWindow as exc:
        raise CommandError(str(exc)) from None
    doc = _run_admin(settings, lambda s: s.usage(args.account, since=since, until=until, key_id=args.key_id))
    return _emit(args, doc, _usage_text)


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.store.db import current_revision, upgrade

    async def migrate() -> str | None:
        await upgrade(settings.database_url)
        return await current_revision(settings.database_url)

    revision = _run(settings, migrate)
    doc = {"database_url": _masked_url(settings), "revision": revision}
    return _emit(args, doc, lambda d: f"database {d['database_url']} is at revision {d['revision']}")


def _config(args: argparse.Namespace, settings: Settings) -> int:
    masked = settings.masked()
    return _emit(args, masked, lambda d: "\n".join(f"{k} = {'' if v is None else v}" for k, v in d.items()))


def _prices(args: argparse.Namespace, settings: Settings) -> int:
    return _emit(args, settings.prices_in_force().document(), _toml)


def _toml(document: dict[str, Any]) -> str:
    """The price book document as the TOML it is read from (strings, lists and inline tables of strings)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }" if v else "{}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    out: list[str] = []
    for name, table in document["prices"].items():
        out.append(f"[prices.{name}]")
        out.extend(f"{key} = {value(v)}" for key, v in table.items() if key != "sources")
        out.append(f"\n[prices.{name}.sources]")
        out.extend(f"{json.dumps(key)} = {json.dumps(v)}" for key, v in table["sources"].items())
        out.append("")
    return "\n".join(out).rstrip("\n")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.gateway.logevents import log_event
    from sttgate.gateway.tracing import check_available as check_tracing
    from sttgate.process import check_listen, configure_logging, serve
    from sttgate.store.db import upgrade

    # Fail early with a readable message when the address cannot be listened on, or the database cannot be opened
    # or migrated (idempotent).
    where = f"{settings.host}:{settings.port}"
    listeners = [(settings.host, settings.port, where)]
    if settings.admin_port:  # the admin listener (docs/operations.md#the-admin-listener)
        admin = f"{settings.admin_host}:{settings.admin_port} (the admin listener; STTGATE_ADMIN_PORT=0 turns it off)"
        listeners.append((settings.admin_host, settings.admin_port, admin))
    for host, port, what in listeners:
        try:
            check_listen(host, port, reuse_port=settings.workers > 1)
        except OSError as exc:
            raise CommandError(f"cannot listen on {what}: {exc.strerror or exc}") from exc
    try:
        check_tracing()  # OTEL_EXPORTER_OTLP_ENDPOINT without the otel extra (docs/operations.md#tracing)
    except RuntimeError as exc:
        raise CommandError(str(exc)) from exc
    _run(settings, lambda: upgrade(settings.database_url))
    configure_logging(settings)
    if settings.log_format == "json":  # stderr is then JSON lines only (docs/operations.md#logs)
        log_event("database_used", database=_masked_url(settings))
    else:
        print(f"sttgate: {_used(settings)}", file=sys.stderr)
    try:
        return int(serve(settings, host=settings.host, port=settings.port, workers=settings.workers))
    except OSError as exc:
        raise CommandError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


def _emulate(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.emulators.app import EmulatorConfig, serve
    from sttgate.process import check_listen

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0..65535 (0 = any free port), not {args.port}")
    try:
        check_listen(args.host, args.port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    config = EmulatorConfig()

    def ready(_app: Any, port: int) -> None:
        print(_emulator_banner(config, args.host, port), flush=True)

    asyncio.run(serve(args.host, args.port, config, on_ready=ready))
    return EXIT_OK


def _emulator_banner(config: Any, host: str, port: int) -> str:
    """What ``sttgate emulate`` prints once listening: each provider's URL and the operator keys it accepts, and the
    environment that points a gateway at them (docs/cli.md, Running)."""
    from sttgate.emulators.app import EMULATORS
    from sttgate.providers import PROVIDERS

    lines = [f"provider emulators listening on http://{host}:{port}"]
    env: list[str] = []
    for name, emulator in EMULATORS.items():
        url = f"ws://{host}:{port}{emulator.ws_path}"
        keys = tuple(getattr(config, f"{name}_api_keys", ()))
        lines.append(f"  {name}: {url}  operator key: {', '.join(keys) or '(any)'}")
        if name in PROVIDERS:
            env.append(f"STTGATE_{name.upper()}_URL={url}")
            if keys:
                env.append(f"{PROVIDERS[name].api_key_env}={keys[0]}")
    lines += ["point a gateway at them with:", "  " + " \\\n  ".join([*env, "sttgate serve"])]
    return "\n".join(lines)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.demo import main as demo_main

    return int(demo_main(settings))
