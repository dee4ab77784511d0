"""Queries of the accounts context; every one is scoped to a tenant; nothing commits here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import String, any_, cast, insert, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from server.accounts.models import (
    Customer,
    Invoice,
    InvoiceLine,
    RadiusIdentity,
    SubscriptionTransition,
)
from server.db.base import Base

Row = TypeVar("Row", bound=Base)


async def get(
    session: AsyncSession,
    model: type[Row],
    tenant_id: uuid.UUID,
    ident: uuid.UUID,
    *,
    lock: bool = False,
) -> Row | None:
    """One row by (tenant, id); `lock` takes a row lock on PostgreSQL (no-op on SQLite)."""
    return await session.get(model, (tenant_id, ident), with_for_update=lock or None)


async def page(
    session: AsyncSession,
    model: type[Row],
    tenant_id: uuid.UUID,
    after: uuid.UUID | None,
    limit: int,
    *filters: Any,
) -> list[Row]:
    """Keyset page ordered by id: stable under concurrent inserts."""
    id_column = model.id  # type: ignore[attr-defined]
    query = select(model).where(model.tenant_id == tenant_id, *filters)  # type: ignore[attr-defined]
    if after is not None:
        query = query.where(id_column > after)
    result = await session.execute(query.order_by(id_column).limit(limit))
    return list(result.scalars())


async def identities_of(
    session: AsyncSession, tenant_id: uuid.UUID, subscription_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[int, str]]]:
    rows = await session.execute(
        select(RadiusIdentity.subscription_id, RadiusIdentity.kind, RadiusIdentity.value)
        .where(
            RadiusIdentity.tenant_id == tenant_id,
            RadiusIdentity.subscription_id.in_(subscription_ids),
        )
        .order_by(RadiusIdentity.kind, RadiusIdentity.value)
    )
    found: dict[uuid.UUID, list[tuple[int, str]]] = {sid: [] for sid in subscription_ids}
    for sid, kind, value in rows:
        found[sid].append((kind, value))
    return found


async def taken_identities(
    session: AsyncSession, tenant_id: uuid.UUID, identities: Sequence[tuple[int, str]]
) -> set[tuple[int, str]]:
    if not identities:
        return set()
    rows = await session.execute(
        select(RadiusIdentity.kind, RadiusIdentity.value).where(
            RadiusIdentity.tenant_id == tenant_id,
            tuple_(RadiusIdentity.kind, RadiusIdentity.value).in_(list(identities)),
        )
    )
    return {(kind, value) for kind, value in rows}


async def history_of(
    session: AsyncSession, tenant_id: uuid.UUID, subscription_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[SubscriptionTransition]]:
    rows = await session.execute(
        select(SubscriptionTransition)
        .where(
            SubscriptionTransition.tenant_id == tenant_id,
            SubscriptionTransition.subscription_id.in_(subscription_ids),
        )
        .order_by(SubscriptionTransition.seq)
    )
    found: dict[uuid.UUID, list[SubscriptionTransition]] = {sid: [] for sid in subscription_ids}
    for transition in rows.scalars():
        found[transition.subscription_id].append(transition)
    return found


async def lines_of(
    session: AsyncSession, tenant_id: uuid.UUID, invoice_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[InvoiceLine]]:
    rows = await session.execute(
        select(InvoiceLine)
        .where(InvoiceLine.tenant_id == tenant_id, InvoiceLine.invoice_id.in_(invoice_ids))
        .order_by(InvoiceLine.line_no)
    )
    found: dict[uuid.UUID, list[InvoiceLine]] = {iid: [] for iid in invoice_ids}
    for line in rows.scalars():
        found[line.invoice_id].append(line)
    return found


async def existing_account_numbers(
    session: AsyncSession, tenant_id: uuid.UUID, numbers: Sequence[str]
) -> set[str]:
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        # One array parameter instead of thousands of bind parameters.
        rows = await session.execute(
            select(Customer.account_number).where(
                Customer.tenant_id == tenant_id,
                Customer.account_number == any_(cast(list(numbers), ARRAY(String))),
            )
        )
        return set(rows.scalars())
    found: set[str] = set()
    for start in range(0, len(numbers), 500):
        chunk = numbers[start : start + 500]
        rows = await session.execute(
            select(Customer.account_number).where(
                Customer.tenant_id == tenant_id, Customer.account_number.in_(chunk)
            )
        )
        found.update(rows.scalars())
    return found


async def invoice_number_taken(session: AsyncSession, tenant_id: uuid.UUID, number: str) -> bool:
    row = await session.execute(
        select(Invoice.id).where(Invoice.tenant_id == tenant_id, Invoice.number == number)
    )
    return row.first() is not None


_CUSTOMER_COLUMNS = [column.name for column in Customer.__table__.columns]


async def bulk_insert_customers(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """COPY on PostgreSQL (binary, through asyncpg), executemany elsewhere."""
    if not rows:
        return
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        import json

        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        records = [
            tuple(
                json.dumps(row[name]) if name in ("address_lines", "devices") else row[name]
                for name in _CUSTOMER_COLUMNS
            )
            for row in rows
        ]
        await driver.copy_records_to_table("customers", records=records, columns=_CUSTOMER_COLUMNS)  # type: ignore[union-attr]
        return
    await session.execute(insert(Customer), rows)
