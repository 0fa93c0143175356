"""PostgreSQL only: ``sttgate_open_session``, a stream slot (and its first prepaid hold) in one round trip.

``Slots.open_session`` on PostgreSQL calls this function with one statement instead of running five in a
transaction (docs/architecture.md#key-decisions, "The control plane on PostgreSQL"). Inside a VOLATILE plpgsql
function each statement takes a fresh snapshot under READ COMMITTED, so the live counts read after the account's row
lock see every session committed before it was granted, as the portable transaction's separate statements do.

The function mirrors ``slots.decide_open`` (account limit, key limit, balance, budget) only to decide whether to
insert; it returns the figures it read, and Python checks its decision against ``decide_open`` on them
(``tests/store/test_pg_open.py`` compares both on random figures). It records no account event: a refusal for the
balance is left to the portable transaction, which records ``balance.exhausted``.

``p_hold_nanos`` (0 = none) is debited from a prepaid balance and recorded on the session as its first held cycle
(docs/billing.md#holds). A hold that would take the balance below the account's ``low_balance_nanos`` (from at or
above it: ``core.account_events.crossed_low``) opens nothing here either: that rare opening is left to the portable
transaction too, which records ``balance.low`` with it.

On SQLite this migration does nothing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ARGS = (
    "text, text, text, text, text, bigint, timestamptz, timestamptz, timestamptz, text, text, text, text, integer,"
    " bigint"
)

_CREATE = """
CREATE OR REPLACE FUNCTION sttgate_open_session(
    p_session_id text, p_account_id text, p_kind text, p_provider text, p_gateway_id text, p_min_balance bigint,
    p_now timestamptz, p_expires timestamptz, p_month timestamptz, p_model text, p_rate text, p_basis text,
    p_api_key_id text, p_key_max_streams integer, p_hold_nanos bigint
) RETURNS TABLE (
    o_opened boolean, o_live bigint, o_max_streams integer, o_key_live bigint, o_balance bigint, o_budget bigint,
    o_month_cost bigint, o_low bigint
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    acct record;
    v_live bigint;
    v_key_live bigint := 0;
    v_cost bigint := 0;
    v_hold bigint := 0;
    v_open boolean;
BEGIN
    SELECT a.max_streams, a.balance_nanos, a.monthly_budget_nanos, a.low_balance_nanos INTO acct
        FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- no row: no such account
    END IF;
    SELECT count(*) INTO v_live FROM sessions s
        WHERE s.account_id = p_account_id AND s.ended_at IS NULL AND s.lease_expires_at > p_now;
    IF p_key_max_streams IS NOT NULL AND p_api_key_id IS NOT NULL THEN
        SELECT count(*) INTO v_key_live FROM sessions s
            WHERE s.api_key_id = p_api_key_id AND s.ended_at IS NULL AND s.lease_expires_at > p_now;
    END IF;
    IF acct.monthly_budget_nanos IS NOT NULL THEN
        SELECT coalesce(sum(s.cost_nanos), 0) INTO v_cost FROM sessions s
            WHERE s.account_id = p_account_id AND s.started_at >= p_month;
    END IF;
    -- slots.decide_open, in its order; Python checks this against it on the figures returned.
    v_open := v_live < acct.max_streams
        AND (p_key_max_streams IS NULL OR v_key_live < p_key_max_streams)
        AND (acct.balance_nanos IS NULL OR acct.balance_nanos >= p_min_balance)
        AND NOT (acct.monthly_budget_nanos IS NOT NULL AND v_cost >= acct.monthly_budget_nanos);
    IF v_open AND acct.balance_nanos IS NOT NULL AND p_hold_nanos > 0 THEN
        -- core.account_events.crossed_low: such a hold records balance.low, which the portable transaction does.
        IF acct.low_balance_nanos IS NOT NULL AND acct.balance_nanos - p_hold_nanos < acct.low_balance_nanos
                AND acct.low_balance_nanos <= acct.balance_nanos THEN
            v_open := false;
        ELSE
            v_hold := p_hold_nanos;
            UPDATE accounts SET balance_nanos = balance_nanos - v_hold, balance_exhausted = false
                WHERE id = p_account_id;
        END IF;
    END IF;
    IF v_open THEN
        INSERT INTO sessions (id, account_id, kind, provider, gateway_id, started_at, lease_expires_at, audio_seconds,
                              cycles, cost_nanos, opening, model, rate_usd_per_hour, basis, api_key_id, held_cycles,
                              held_nanos)
            VALUES (p_session_id, p_account_id, p_kind, p_provider, p_gateway_id, p_now, p_expires, 0.0, 0, 0, true,
                    p_model, p_rate, p_basis, p_api_key_id, CASE WHEN v_hold > 0 THEN 1 ELSE 0 END, v_hold);
    END IF;
    RETURN QUERY SELECT v_open, v_live, acct.max_streams, v_key_live, acct.balance_nanos, acct.monthly_budget_nanos,
        v_cost, acct.low_balance_nanos;
END;
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS sttgate_open_session({_ARGS})")
    op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS sttgate_open_session({_ARGS})")
