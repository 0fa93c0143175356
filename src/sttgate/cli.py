"""The ``sttgate`` console script: run the gateway, the emulators or the demo, and administer accounts, keys and
admin tokens.

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
    _account_fields(create, clearable=False)
    create.set_defaults(handler=_accounts_create)
    alist = acc.add_parser("list", parents=[admin], help="list accounts")
    alist.add_argument("--external-id", metavar="X", help="only the account with this external id")
    alist.set_defaults(handler=_accounts_list)
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
    _account_fields(upd, clearable=True)
    upd.set_defaults(handler=_accounts_update)
    credit = acc.add_parser("credit", parents=[admin], help="top up a prepaid balance once per idempotency key")
    credit.add_argument("account_id", metavar="ID")
    credit.add_argument("--amount", required=True, metavar="USD", help="the amount to add")
    credit.add_argument(
        "--idempotency-key", required=True, metavar="K", help="the same key again credits nothing (prints the first)"
    )
    credit.set_defaults(handler=_accounts_credit)
    secret = acc.add_parser("webhook-secret", parents=[admin], help="show the key that signs the account's webhooks")
    secret.add_argument("account_id", metavar="ID")
    secret.add_argument("--rotate", action="store_true", help="replace it with a new one")
    secret.set_defaults(handler=_accounts_webhook_secret)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True
    )
    kcreate = keys.add_parser("create", parents=[admin], help="create a key (shown once)")
    kcreate.add_argument("--account", required=True, metavar="ID")
    kcreate.add_argument("--name", metavar="N", help="a label for the key")
    kcreate.add_argument("--expires-in", type=int, metavar="SECONDS", help="the key is refused after this many seconds")
    kcreate.add_argument(
        "--max-streams", type=int, metavar="K", help="open sessions/tasks of this key, within the account's"
    )
    kcreate.add_argument("--providers", metavar="A,B", help="the only providers the key may open (comma-separated)")
    kcreate.set_defaults(handler=_keys_create)
    klist = keys.add_parser("list", parents=[admin], help="list an account's keys")
    klist.add_argument("--account", required=True, metavar="ID")
    klist.set_defaults(handler=_keys_list)
    krevoke = keys.add_parser("revoke", parents=[admin], help="revoke a key")
    krevoke.add_argument("key_id", metavar="KEY_ID")
    krevoke.set_defaults(handler=_keys_revoke)

    tokens = commands.add_parser("admin-tokens", help="manage admin API tokens").add_subparsers(
        dest="admin_tokens_command", metavar="ACTION", required=True
    )
    tcreate = tokens.add_parser("create", parents=[admin], help="create an admin token (shown once)")
    tcreate.add_argument("--name", required=True, help="what or who the token is for")
    tcreate.set_defaults(handler=_admin_tokens_create)
    tokens.add_parser("list", parents=[admin], help="list admin tokens").set_defaults(handler=_admin_tokens_list)
    trevoke = tokens.add_parser("revoke", parents=[admin], help="revoke an admin token")
    trevoke.add_argument("token_id", metavar="ID")
    trevoke.set_defaults(handler=_admin_tokens_revoke)

    usage = commands.add_parser("usage", parents=[admin], help="an account's usage document")
    usage.add_argument("--account", required=True, metavar="ID")
    usage.add_argument("--since", metavar="T", help="sessions started at or after T (ISO 8601, UTC if no offset)")
    usage.add_argument("--until", metavar="T", help="sessions started before T (a date alone: through that UTC day)")
    usage.add_argument("--key-id", metavar="KEY_ID", help="only the sessions opened with this key (or its tokens)")
    usage.set_defaults(handler=_usage)

    exp = commands.add_parser("export", help="usage export to the [[export]] sinks").add_subparsers(
        dest="export_command", metavar="ACTION", required=True
    )
    exp.add_parser(
        "status", parents=[admin], help="each sink's pending events, lag, last success and last error"
    ).set_defaults(handler=_export_status)
    replay = exp.add_parser("replay", parents=[admin], help="send a sink's events again (same ids)")
    replay.add_argument("--sink", required=True, metavar="NAME", help="an [[export]] sink of the config file")
    replay.add_argument("--since", required=True, metavar="T", help="events charged at or after T (ISO 8601)")
    replay.set_defaults(handler=_export_replay)

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


def _account_fields(parser: argparse.ArgumentParser, *, clearable: bool) -> None:
    """The revision-2 account fields (docs/cli.md#accounts); on ``update`` an empty value clears one."""
    clear = " (an empty value clears it)" if clearable else ""
    parser.add_argument("--external-id", metavar="X", help=f"your id for this customer, unique{clear}")
    parser.add_argument("--webhook-url", metavar="URL", help=f"where account events are posted{clear}")
    parser.add_argument("--low-balance", metavar="USD", help=f"threshold of the balance.low event{clear}")
    parser.add_argument("--monthly-budget", metavar="USD", help=f"spending cap per calendar month, UTC{clear}")


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
            ("external id", a["external_id"]),
            ("webhook url", a["webhook_url"]),
            ("low balance", _usd(a["low_balance_usd"])),
            ("monthly budget", _usd(a["monthly_budget_usd"])),
            ("created", a["created_at"]),
            ("updated", a["updated_at"]),
        ]
    )


def _usd(amount: str | None) -> str | None:
    return None if amount is None else f"{amount} USD"


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
        ["ID", "PREFIX", "NAME", "PROVIDERS", "MAX STREAMS", "EXPIRES", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                k["id"],
                k["prefix"] + "…",
                k["name"],
                _providers_text(k["providers"]),
                k["max_streams"],
                k["expires_at"],
                k["created_at"],
                k["last_used_at"],
                k["revoked_at"],
            ]
            for k in items
        ],
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
    low_balance = _nanos(args.low_balance, "--low-balance")
    budget = _nanos(args.monthly_budget, "--monthly-budget")
    account = _run_admin(
        settings,
        lambda s: s.create_account(
            name=args.name,
            max_streams=args.max_streams,
            balance_nanos=balance,
            streaming_enabled=args.streaming,
            external_id=args.external_id,
            webhook_url=args.webhook_url,
            low_balance_nanos=low_balance,
            monthly_budget_nanos=budget,
        ),
    )
    return _emit(args, account, _account_text)


def _accounts_list(args: argparse.Namespace, settings: Settings) -> int:
    return _emit(args, _run_admin(settings, lambda s: s.list_accounts(external_id=args.external_id)), _accounts_text)


def _cleared_text(value: str | None) -> Any:
    """An optional field of ``update``: not given → kept, empty → cleared, else the value."""
    from sttgate.store import KEEP

    if value is None:
        return KEEP
    return value.strip() or None


def _cleared_nanos(value: str | None, what: str) -> Any:
    from sttgate.store import KEEP

    if value is None:
        return KEEP
    return _nanos(value, what) if value.strip() else None


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
            external_id=_cleared_text(args.external_id),
            webhook_url=_cleared_text(args.webhook_url),
            low_balance_nanos=_cleared_nanos(args.low_balance, "--low-balance"),
            monthly_budget_nanos=_cleared_nanos(args.monthly_budget, "--monthly-budget"),
        ),
    )
    return _emit(args, account, _account_text)


def _accounts_credit(args: argparse.Namespace, settings: Settings) -> int:
    amount = _nanos(args.amount, "--amount")
    assert amount is not None
    credit, replayed = _run_admin(settings, lambda s: s.credit(args.account_id, amount, args.idempotency_key))
    return _emit(
        args,
        credit,
        lambda c: (
            ("already credited with this idempotency key; nothing added\n" if replayed else "")
            + _pairs(
                [
                    ("credit", c["id"]),
                    ("account", c["account_id"]),
                    ("amount", f"{c['amount_usd']} USD"),
                    ("balance after", f"{c['balance_usd']} USD"),
                    ("idempotency key", c["idempotency_key"]),
                    ("created", c["created_at"]),
                ]
            )
        ),
    )


def _accounts_webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.pull.webhooks import standard_webhooks_secret

    secret = _run_admin(settings, lambda a: a.store.webhook_secret(args.account_id, rotate=args.rotate))
    document = {"webhook_secret": secret, "standard_webhooks_secret": standard_webhooks_secret(secret)}
    return _emit(args, document, _webhook_secret_text)


def _webhook_secret_text(document: dict[str, str]) -> str:
    """The secret alone; a secret made before Standard Webhooks signing also shows its library spelling."""
    if document["standard_webhooks_secret"] == document["webhook_secret"]:
        return document["webhook_secret"]
    return f"{document['webhook_secret']}\nStandard Webhooks libraries: {document['standard_webhooks_secret']}"


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.store.accounts import KeyOptions

    providers = None if args.providers is None else tuple(p.strip() for p in args.providers.split(",") if p.strip())
    options = KeyOptions(
        name=args.name, expires_in_seconds=args.expires_in, max_streams=args.max_streams, providers=providers
    )
    created = _run_admin(settings, lambda s: s.create_key(args.account, options))
    return _emit(
        args,
        created,
        lambda k: (
            f"{k['key']}\n\nThis is the only time the key is shown; store it now.\n"
            + _pairs(
                [
                    ("id", k["id"]),
                    ("prefix", k["prefix"]),
                    ("account", k["account_id"]),
                    ("name", k["name"]),
                    ("expires", k["expires_at"]),
                    ("max streams", k["max_streams"]),
                    ("providers", _providers_text(k["providers"])),
                    ("created", k["created_at"]),
                ]
            )
        ),
    )


def _providers_text(providers: list[str] | None) -> str:
    return "all" if providers is None else ",".join(providers)


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    return _emit(args, _run_admin(settings, lambda s: s.list_keys(args.account)), _keys_text)


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    key = _run_admin(settings, lambda s: s.revoke_key(args.key_id))
    return _emit(args, key, lambda k: f"key {k['id']} ({k['prefix']}…) revoked at {k['revoked_at']}")


def _admin_tokens_create(args: argparse.Namespace, settings: Settings) -> int:
    created = _run_admin(settings, lambda s: s.create_admin_token(args.name))
    return _emit(
        args,
        created,
        lambda t: (
            f"{t['token']}\n\nThis is the only time the admin token is shown; store it now.\n"
            + _pairs([("id", t["id"]), ("name", t["name"]), ("prefix", t["prefix"]), ("created", t["created_at"])])
        ),
    )


def _admin_tokens_list(args: argparse.Namespace, settings: Settings) -> int:
    def text(items: list[dict[str, Any]]) -> str:
        if not items:
            return "no admin tokens"
        return _table(
            ["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
            [
                [t["id"], t["name"], t["prefix"] + "…", t["created_at"], t["last_used_at"], t["revoked_at"]]
                for t in items
            ],
        )

    return _emit(args, _run_admin(settings, lambda s: s.list_admin_tokens()), text)


def _admin_tokens_revoke(args: argparse.Namespace, settings: Settings) -> int:
    token = _run_admin(settings, lambda s: s.revoke_admin_token(args.token_id))
    return _emit(args, token, lambda t: f"admin token {t['id']} ({t['prefix']}…) revoked at {t['revoked_at']}")


def _usage(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.admin.window import InvalidWindow, window

    try:
        since, until = window(args.since, args.until)
    except InvalidWindow as exc:
        raise CommandError(str(exc)) from None
    doc = _run_admin(settings, lambda s: s.usage(args.account, since=since, until=until, key_id=args.key_id))
    return _emit(args, doc, _usage_text)


def _export_status(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.admin.export import status_document

    configured = {sink.name: sink.type.value for sink in settings.export}
    doc = _run_admin(settings, lambda a: status_document(a.store, configured))
    return _emit(args, doc, _export_status_text)


def _export_status_text(doc: dict[str, Any]) -> str:
    if not doc["sinks"]:
        return "no export sinks (configure [[export]] tables in the --config file)"
    return _table(
        ["SINK", "TYPE", "PENDING", "LAG S", "SENT", "LAST SUCCESS", "LAST ERROR", "HELD BY"],
        [
            [
                s["name"],
                s["type"] or "not configured",
                s["pending"],
                s["lag_seconds"],
                s["sent_total"],
                s["last_success_at"],
                None if s["last_error"] is None else f"{s['last_error_at']} {s['last_error']}",
                s["lease_owner"],
            ]
            for s in doc["sinks"]
        ],
    )


def _export_replay(args: argparse.Namespace, settings: Settings) -> int:
    from sttgate.admin.window import InvalidWindow, moment

    if args.sink not in {sink.name for sink in settings.export}:
        raise CommandError(f"no [[export]] sink named {args.sink!r} in the configuration")
    try:
        since = moment(args.since, end=False)
    except InvalidWindow as exc:
        raise CommandError(f"--since: {exc}") from None
    queued = _run_admin(settings, lambda a: a.store.outbox.replay(args.sink, since))
    doc = {"sink": args.sink, "since": since.isoformat().replace("+00:00", "Z"), "queued": queued}
    return _emit(
        args,
        doc,
        lambda d: (
            f"{d['queued']} events charged since {d['since']} queued again for {d['sink']} "
            "(a running gateway sends them, with their original ids)"
        ),
    )


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
        keys = emulator.api_keys(config)
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
