"""Persistence: accounts, keys, tokens, stream slots, the ledger and pull tasks (SQLite or PostgreSQL).

Database only: methods return typed rows (dataclasses with nano-dollar ints and aware UTC datetimes) and enum
outcomes, never HTTP refusals or wire documents (those are built by callers; documents in ``sttgate.admin``).

Split by aggregate, each module one concern:

- ``db``: engines, drivers, migrations; ``database``: the shared handle (engine, read-only reader, the SQLite write
  lock, ``write()``);
- ``auth``: keys (authenticate) and gateway tokens (mint, redeem); ``slots``: stream slots and the ledger (open →
  ``SlotOutcome``, charge, flush, renew, end, reap); ``accounts``: accounts and keys admin, idempotent credits;
  ``usage``: usage rows; ``tasks``: pull task rows; ``admin_tokens``: the admin API's credentials;
  ``operator_sessions``: every gateway's sessions as the operator sees them, and close requests;
  ``outbox``: the usage outbox (one event per charged cycle, written inside the ledger's transactions) and each
  export sink's queue and lease;
- ``sqlite_fast``: SQLite's single-trip implementation of the hot statements (authenticate, open, charge, flush,
  end), equivalence-tested against the portable SQLAlchemy Core ones.

``Store`` (in ``store.py``) composes them. Call sites use its flat names (``store.open_session(...)``,
``store.authenticate(...)``), which are the aggregates' bound methods; pull code uses ``store.tasks``.
"""

from sttgate.store.accounts import KEEP, Account, ApiKey, Credit, Keep, NewKey
from sttgate.store.admin_tokens import AdminToken, AdminTokenCheck, NewAdminToken
from sttgate.store.auth import MintedToken, Principal
from sttgate.store.database import ConflictError, NotFoundError, unavailable
from sttgate.store.operator_sessions import OperatorSession
from sttgate.store.slots import SessionEnd, SessionProgress, SettleRequest, SlotOutcome
from sttgate.store.store import Store
from sttgate.store.usage import Usage, UsageRow

__all__ = [
    "KEEP",
    "Account",
    "AdminToken",
    "AdminTokenCheck",
    "ApiKey",
    "ConflictError",
    "Credit",
    "Keep",
    "MintedToken",
    "NewAdminToken",
    "NewKey",
    "NotFoundError",
    "OperatorSession",
    "Principal",
    "SessionEnd",
    "SessionProgress",
    "SettleRequest",
    "SlotOutcome",
    "Store",
    "Usage",
    "UsageRow",
    "unavailable",
]
