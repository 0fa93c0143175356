"""The ``Store`` facade: one object per process that owns the database handle and composes the aggregates."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from sttgate.store import db
from sttgate.store.accounts import Accounts
from sttgate.store.admin_tokens import AdminTokens
from sttgate.store.auth import Auth
from sttgate.store.database import Database
from sttgate.store.events import AccountEvents
from sttgate.store.operator_sessions import OperatorSessions
from sttgate.store.outbox import Outbox
from sttgate.store.pg_fast import PgFastPath
from sttgate.store.slots import Slots
from sttgate.store.sqlite_fast import SqliteFastPath
from sttgate.store.tasks import Tasks
from sttgate.store.usage import UsageQueries


class Store:
    """Async access to the database; one instance per process, shared by all sessions.

    The aggregates are attributes (``auth``, ``slots``, ``accounts``, ``usage_queries``, ``tasks``, ``events``,
    ``admin_tokens``, ``operator_sessions``, ``outbox``); their
    operations are also exposed flat (``store.open_session(...)``, ``store.create_account(...)``) as the
    aggregates' own bound methods, so call sites stay short. ``fast_path=False`` turns the SQLite single-trip path
    and PostgreSQL's driver-level handshake statements off (the equivalence tests compare both).
    """

    def __init__(self, engine: AsyncEngine, *, fast_path: bool = True) -> None:
        self.database = Database(engine)
        self.engine = engine
        self.outbox = Outbox(self.database)
        self._fast = SqliteFastPath.for_database(self.database, self.outbox) if fast_path else None
        self._pg_fast = PgFastPath.for_database(self.database, self.outbox) if fast_path else None
        self.auth = Auth(self.database, self._fast or self._pg_fast)
        self.slots = Slots(self.database, self._fast, self.outbox, self._pg_fast)
        self.accounts = Accounts(self.database)
        self.usage_queries = UsageQueries(self.database)
        self.tasks = Tasks(self.database)
        self.events = AccountEvents(self.database)
        self.admin_tokens = AdminTokens(self.database)
        self.operator_sessions = OperatorSessions(self.database)

        self.authenticate = self.auth.authenticate
        self.mint_token = self.auth.mint_token
        self.redeem_token = self.auth.redeem_token

        self.open_session = self.slots.open_session
        self.accept_sessions = self.slots.accept_sessions
        self.charge_cycles = self.slots.charge_cycles
        self.settle_cycles = self.slots.settle_cycles
        self.settle_cycles_batch = self.slots.settle_cycles_batch
        self.flush_progress = self.slots.flush_progress
        self.renew_leases = self.slots.renew_leases
        self.end_session = self.slots.end_session
        self.end_sessions = self.slots.end_sessions
        self.record_provider_figures = self.slots.record_provider_figures
        self.record_provider_figures_batch = self.slots.record_provider_figures_batch
        self.reap_dead_sessions = self.slots.reap_dead_sessions

        self.create_account = self.accounts.create_account
        self.list_accounts = self.accounts.list_accounts
        self.get_account = self.accounts.get_account
        self.account_states = self.accounts.account_states
        self.update_account = self.accounts.update_account
        self.webhook_secret = self.accounts.webhook_secret
        self.create_key = self.accounts.create_key
        self.list_keys = self.accounts.list_keys
        self.revoke_key = self.accounts.revoke_key
        self.credit = self.accounts.credit

        self.usage = self.usage_queries.usage

    @classmethod
    async def connect(cls, url: str, *, migrate: bool = True, fast_path: bool = True) -> Store:
        if migrate:
            await db.upgrade(url)
        return cls(db.make_engine(url), fast_path=fast_path)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def ping(self, timeout: float = 5.0) -> bool:
        """True when the database answers within ``timeout`` (for /readyz); never raises."""
        return await self.database.ping(timeout)

    async def probe_write(self) -> None:
        """Raise when the database does not take a write transaction now (see :meth:`Database.probe_write`)."""
        await self.database.probe_write()

    async def close(self) -> None:
        """Wait for background writes, then close the fast path's connections and the engine's pool."""
        await self.auth.close()
        if self._fast is not None:
            await self._fast.close()
        await self.database.close()
