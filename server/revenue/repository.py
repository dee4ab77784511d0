"""Queries of the revenue context: one round trip per batch, never a commit.

On PostgreSQL the hot queries go to asyncpg directly (one `= ANY($2::uuid[])` parameter,
a prepared statement per connection): SQLAlchemy's row processing cost more than the
query itself. SQLite runs the same queries through SQLAlchemy Core.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.accounts.models import Customer, Dispute, Plan, Subscription

SUBSCRIPTION_ACTIVE = 2

# SQLite caps bound parameters per statement; PostgreSQL gets one array parameter instead.
_SQLITE_CHUNK = 500

# Monthly amounts are counted in twelfths of a minor unit: exact for every period that
# divides a year (1, 2, 3, 4, 6, 12 months).
MONTH_PARTS = 12
# Months in each Plan.billing_period (1 monthly, 2 quarterly, 3 annual).
PERIOD_MONTHS: dict[int, int] = {1: 1, 2: 3, 3: 12}


class RecurringCharge(NamedTuple):
    """One recurring charge of an active subscription, priced per billing period.

    Today every charge is a plan fee; recurring add-ons (positive) and bundle discounts
    (negative) become more rows of the same shape, with their own `kind`. (A NamedTuple:
    a batch builds hundreds of them per call.)
    """

    customer_id: uuid.UUID
    subscription_id: uuid.UUID
    kind: str
    label: str
    currency: str
    amount_minor: int
    period_months: int
    started_at: dt.datetime

    @property
    def monthly_parts(self) -> int:
        """The monthly amount in twelfths of a minor unit (exact: the period divides 12)."""
        return self.amount_minor * (MONTH_PARTS // self.period_months)


_PG_CHARGES = """
SELECT s.customer_id, s.id, s.created_at, p.name, p.currency, p.recurring_price_minor,
       p.billing_period
FROM subscriptions s
JOIN plans p ON p.tenant_id = s.tenant_id AND p.id = s.plan_id
WHERE s.tenant_id = $1 AND s.status = 2 AND s.customer_id = ANY($2::uuid[])
"""

_PG_ACCOUNT = """
SELECT c.account_number, s.id, s.created_at, p.name, p.currency, p.recurring_price_minor,
       p.billing_period
FROM customers c
LEFT JOIN subscriptions s
  ON s.tenant_id = c.tenant_id AND s.customer_id = c.id AND s.status = 2
LEFT JOIN plans p ON p.tenant_id = s.tenant_id AND p.id = s.plan_id
WHERE c.tenant_id = $1 AND c.id = $2
"""

_PG_DISPUTES = """
SELECT DISTINCT customer_id FROM disputes
WHERE tenant_id = $1 AND customer_id = ANY($2::uuid[])
  AND opened_at <= $3 AND (resolved_at IS NULL OR resolved_at >= $4)
"""


async def _asyncpg(session: AsyncSession) -> Any | None:
    """The session's asyncpg connection on PostgreSQL, None elsewhere."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


def _chunks(ids: Sequence[uuid.UUID]) -> list[Sequence[uuid.UUID]]:
    return [ids[i : i + _SQLITE_CHUNK] for i in range(0, len(ids), _SQLITE_CHUNK)]


def _charges(rows: Iterable[Sequence[Any]]) -> list[RecurringCharge]:
    """(customer_id, subscription_id, created_at, name, currency, price, period) rows."""
    return [
        RecurringCharge(
            customer_id, sub_id, "plan", name, currency, price, PERIOD_MONTHS[period], started_at
        )
        for customer_id, sub_id, started_at, name, currency, price, period in rows
    ]


def _charges_query(tenant_id: uuid.UUID, customer_ids: Sequence[uuid.UUID]) -> Any:
    return (
        select(
            Subscription.customer_id,
            Subscription.id,
            Subscription.created_at,
            Plan.name,
            Plan.currency,
            Plan.recurring_price_minor,
            Plan.billing_period,
        )
        .join(Plan, and_(Plan.tenant_id == Subscription.tenant_id, Plan.id == Subscription.plan_id))
        .where(
            Subscription.tenant_id == tenant_id,
            Subscription.status == SUBSCRIPTION_ACTIVE,
            Subscription.customer_id.in_(list(customer_ids)),
        )
    )


async def recurring_charges(
    session: AsyncSession, tenant_id: uuid.UUID, customer_ids: Sequence[uuid.UUID]
) -> list[RecurringCharge]:
    """Every recurring charge of the active subscriptions of these customers (one query)."""
    pg = await _asyncpg(session)
    if pg is not None:
        return _charges(await pg.fetch(_PG_CHARGES, tenant_id, list(customer_ids)))
    charges: list[RecurringCharge] = []
    for chunk in _chunks(customer_ids):
        charges.extend(_charges(await session.execute(_charges_query(tenant_id, chunk))))
    return charges


async def billing_account(
    session: AsyncSession, tenant_id: uuid.UUID, customer_id: uuid.UUID
) -> tuple[str, list[RecurringCharge]] | None:
    """The customer's account number and recurring charges; None when unknown."""
    pg = await _asyncpg(session)
    if pg is not None:
        rows = await pg.fetch(_PG_ACCOUNT, tenant_id, customer_id)
        if not rows:
            return None
        charged = [(customer_id, *row[1:]) for row in rows if row[1] is not None]
        return rows[0][0], _charges(charged)
    account_number = (
        await session.execute(
            select(Customer.account_number).where(
                Customer.tenant_id == tenant_id, Customer.id == customer_id
            )
        )
    ).scalar()
    if account_number is None:
        return None
    rows_ = await session.execute(_charges_query(tenant_id, [customer_id]))
    return account_number, _charges(rows_)


async def disputing_customers(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    customer_ids: Sequence[uuid.UUID],
    window_start: dt.datetime,
    as_of: dt.datetime,
) -> set[uuid.UUID]:
    """Customers with a dispute open at some instant of [window_start, as_of]."""
    pg = await _asyncpg(session)
    if pg is not None:
        rows = await pg.fetch(_PG_DISPUTES, tenant_id, list(customer_ids), as_of, window_start)
        return {row[0] for row in rows}
    found: set[uuid.UUID] = set()
    for chunk in _chunks(customer_ids):
        query = (
            select(Dispute.customer_id)
            .distinct()
            .where(
                Dispute.tenant_id == tenant_id,
                Dispute.customer_id.in_(list(chunk)),
                Dispute.opened_at <= as_of,
                or_(Dispute.resolved_at.is_(None), Dispute.resolved_at >= window_start),
            )
        )
        found.update((await session.execute(query)).scalars())
    return found
