"""Business rules of the accounts context: uniqueness, references, transitions, totals."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from isp_rating.v1 import accounts_pb2
from server.accounts import repository as repo
from server.accounts.mapping import default_account_number
from server.accounts.models import (
    Customer,
    Dispute,
    Invoice,
    InvoiceLine,
    Payment,
    Plan,
    RadiusIdentity,
    Subscription,
    SubscriptionTransition,
)
from server.currency import UNIT_PRICE_SCALE
from server.db.base import utcnow
from server.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

S = accounts_pb2.SubscriptionStatus
# Allowed status moves; canceled is final.
TRANSITIONS: dict[int, frozenset[int]] = {
    S.SUBSCRIPTION_STATUS_PENDING: frozenset(
        {S.SUBSCRIPTION_STATUS_ACTIVE, S.SUBSCRIPTION_STATUS_CANCELED}
    ),
    S.SUBSCRIPTION_STATUS_ACTIVE: frozenset(
        {S.SUBSCRIPTION_STATUS_SUSPENDED, S.SUBSCRIPTION_STATUS_CANCELED}
    ),
    S.SUBSCRIPTION_STATUS_SUSPENDED: frozenset(
        {S.SUBSCRIPTION_STATUS_ACTIVE, S.SUBSCRIPTION_STATUS_CANCELED}
    ),
    S.SUBSCRIPTION_STATUS_CANCELED: frozenset(),
}
INITIAL_STATUSES = frozenset({S.SUBSCRIPTION_STATUS_PENDING, S.SUBSCRIPTION_STATUS_ACTIVE})
Inv = accounts_pb2.InvoiceStatus
Dis = accounts_pb2.DisputeStatus
DEFAULT_PAYMENT_TERMS = dt.timedelta(days=30)


def _name(enum: Any, value: int) -> str:
    return str(enum.Name(value))


# ------------------------------------------------------------------ customers


async def create_customer(
    session: AsyncSession, tenant_id: uuid.UUID, columns: dict[str, Any]
) -> Customer:
    customer_id = uuid.uuid4()
    number = columns["account_number"] or default_account_number(customer_id)
    if await repo.existing_account_numbers(session, tenant_id, [number]):
        raise AlreadyExistsError("customer.account_number", f"{number!r} is already in use")
    now = utcnow()
    row = Customer(
        tenant_id=tenant_id,
        id=customer_id,
        **{**columns, "account_number": number},
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def get_customer(session: AsyncSession, tenant_id: uuid.UUID, ident: uuid.UUID) -> Customer:
    row = await repo.get(session, Customer, tenant_id, ident)
    if row is None:
        raise NotFoundError("customer", ident)
    return row


async def update_customer(
    session: AsyncSession, tenant_id: uuid.UUID, ident: uuid.UUID, changes: dict[str, Any]
) -> Customer:
    row = await repo.get(session, Customer, tenant_id, ident, lock=True)
    if row is None:
        raise NotFoundError("customer", ident)
    number = changes.get("account_number")
    if number is not None:
        if not number:
            raise InvalidArgumentError("customer.account_number", "is required")
        if number != row.account_number and await repo.existing_account_numbers(
            session, tenant_id, [number]
        ):
            raise AlreadyExistsError("customer.account_number", f"{number!r} is already in use")
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    await session.flush()
    return row


async def import_customers(
    session: AsyncSession, tenant_id: uuid.UUID, batch: list[dict[str, Any]]
) -> list[uuid.UUID]:
    """All customers or none; account numbers unique within the import and the tenant."""
    now = utcnow()
    ids: list[uuid.UUID] = []
    seen: dict[str, int] = {}
    for index, columns in enumerate(batch):
        customer_id = uuid.uuid4()
        number = columns["account_number"] or default_account_number(customer_id)
        if number in seen:
            raise AlreadyExistsError(
                f"customers[{index}].account_number",
                f"{number!r} repeats customers[{seen[number]}]",
            )
        seen[number] = index
        columns.update(
            tenant_id=tenant_id,
            id=customer_id,
            account_number=number,
            created_at=now,
            updated_at=now,
        )
        ids.append(customer_id)
    taken = await repo.existing_account_numbers(session, tenant_id, list(seen))
    if taken:
        first = min(taken, key=seen.__getitem__)
        raise AlreadyExistsError(
            f"customers[{seen[first]}].account_number", f"{first!r} is already in use"
        )
    await repo.bulk_insert_customers(session, batch)
    return ids


# ------------------------------------------------------------------ plans


async def create_plan(session: AsyncSession, tenant_id: uuid.UUID, columns: dict[str, Any]) -> Plan:
    from sqlalchemy import select

    taken = await session.execute(
        select(Plan.id).where(Plan.tenant_id == tenant_id, Plan.code == columns["code"])
    )
    if taken.first() is not None:
        raise AlreadyExistsError("plan.code", f"{columns['code']!r} is already in use")
    row = Plan(tenant_id=tenant_id, id=uuid.uuid4(), created_at=utcnow(), **columns)
    session.add(row)
    await session.flush()
    return row


async def get_plan(session: AsyncSession, tenant_id: uuid.UUID, ident: uuid.UUID) -> Plan:
    row = await repo.get(session, Plan, tenant_id, ident)
    if row is None:
        raise NotFoundError("plan", ident)
    return row


# ------------------------------------------------------------------ subscriptions


async def create_subscription(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    customer_id: uuid.UUID,
    plan_id: uuid.UUID,
    status: int,
    anchor_day: int,
    time_zone: str,
    identities: list[tuple[int, str]],
) -> Subscription:
    if await repo.get(session, Customer, tenant_id, customer_id) is None:
        raise InvalidArgumentError("subscription.customer_id", f"unknown customer {customer_id}")
    if await repo.get(session, Plan, tenant_id, plan_id) is None:
        raise InvalidArgumentError("subscription.plan_id", f"unknown plan {plan_id}")
    status = status or S.SUBSCRIPTION_STATUS_PENDING
    if status not in INITIAL_STATUSES:
        raise InvalidArgumentError("subscription.status", "a subscription starts pending or active")
    taken = await repo.taken_identities(session, tenant_id, identities)
    for index, identity in enumerate(identities):
        if identity in taken:
            raise InvalidArgumentError(
                f"subscription.radius_identities[{index}].value",
                f"RADIUS identity {identity[1]!r} belongs to another subscription",
            )
    now = utcnow()
    if anchor_day == 0:
        anchor_day = now.astimezone(ZoneInfo(time_zone)).day
    row = Subscription(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        customer_id=customer_id,
        plan_id=plan_id,
        status=status,
        billing_anchor_day=anchor_day,
        time_zone=time_zone,
        created_at=now,
        version=1,
    )
    session.add(row)
    await session.flush()
    session.add(
        SubscriptionTransition(
            tenant_id=tenant_id,
            subscription_id=row.id,
            seq=1,
            from_status=S.SUBSCRIPTION_STATUS_UNSPECIFIED,
            to_status=status,
            at=now,
            reason="created",
        )
    )
    session.add_all(
        RadiusIdentity(tenant_id=tenant_id, kind=kind, value=value, subscription_id=row.id)
        for kind, value in identities
    )
    await session.flush()
    return row


async def get_subscription(
    session: AsyncSession, tenant_id: uuid.UUID, ident: uuid.UUID
) -> Subscription:
    row = await repo.get(session, Subscription, tenant_id, ident)
    if row is None:
        raise NotFoundError("subscription", ident)
    return row


async def change_subscription_status(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    ident: uuid.UUID,
    status: int,
    at: dt.datetime,
    reason: str,
) -> Subscription:
    row = await get_subscription(session, tenant_id, ident)
    if status == row.status:
        raise FailedPreconditionError(f"subscription {ident} is already in that status")
    if status not in TRANSITIONS[row.status]:
        raise FailedPreconditionError(
            f"subscription {ident} cannot move from {_name(S, row.status)} to {_name(S, status)}"
        )
    history = (await repo.history_of(session, tenant_id, [ident]))[ident]
    if history and at < history[-1].at:
        raise InvalidArgumentError("effective_at", "is before the previous status change")
    # Optimistic concurrency: the update only lands on the version we read.
    result = await session.execute(
        update(Subscription)
        .where(
            Subscription.tenant_id == tenant_id,
            Subscription.id == ident,
            Subscription.version == row.version,
        )
        .values(status=status, version=row.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise AbortedError(f"subscription {ident} changed concurrently; retry")
    previous = row.status
    session.add(
        SubscriptionTransition(
            tenant_id=tenant_id,
            subscription_id=ident,
            seq=len(history) + 1,
            from_status=previous,
            to_status=status,
            at=at,
            reason=reason,
        )
    )
    await session.flush()
    await session.refresh(row)
    return row


# ------------------------------------------------------------------ invoices


def line_amount(quantity: Decimal, unit_price_micro: int, exponent: int) -> int:
    """quantity x unit price, rounded half-even once, to the currency's minor units."""
    exact = quantity * Decimal(unit_price_micro) / (Decimal(10) ** (UNIT_PRICE_SCALE - exponent))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


async def create_invoice(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    number: str,
    customer_id: uuid.UUID,
    currency: str,
    status: int,
    issued_at: dt.datetime,
    due_at: dt.datetime,
    lines: list[dict[str, Any]],
) -> tuple[Invoice, list[InvoiceLine]]:
    if await repo.get(session, Customer, tenant_id, customer_id) is None:
        raise InvalidArgumentError("invoice.customer_id", f"unknown customer {customer_id}")
    if await repo.invoice_number_taken(session, tenant_id, number):
        raise AlreadyExistsError("invoice.number", f"{number!r} is already in use")
    for index, line in enumerate(lines):
        subscription_id = line.get("subscription_id")
        if subscription_id is not None:
            sub = await repo.get(session, Subscription, tenant_id, subscription_id)
            if sub is None or sub.customer_id != customer_id:
                raise InvalidArgumentError(
                    f"invoice.lines[{index}].subscription_id",
                    f"no subscription {subscription_id} of this customer",
                )
    total = sum(line["amount_minor"] for line in lines)
    if total < 0:
        raise InvalidArgumentError("invoice.lines", "the invoice total must not be negative")
    invoice = Invoice(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        number=number,
        customer_id=customer_id,
        currency=currency,
        status=status,
        total_minor=total,
        amount_paid_minor=0,
        issued_at=issued_at,
        due_at=due_at,
        created_at=utcnow(),
    )
    session.add(invoice)
    await session.flush()
    rows = [
        InvoiceLine(tenant_id=tenant_id, invoice_id=invoice.id, line_no=i + 1, **line)
        for i, line in enumerate(lines)
    ]
    session.add_all(rows)
    await session.flush()
    return invoice, rows


async def get_invoice(session: AsyncSession, tenant_id: uuid.UUID, ident: uuid.UUID) -> Invoice:
    row = await repo.get(session, Invoice, tenant_id, ident)
    if row is None:
        raise NotFoundError("invoice", ident)
    return row


async def record_payment(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    invoice_id: uuid.UUID,
    currency: str,
    amount_minor: int,
    received_at: dt.datetime,
    reference: str,
) -> Payment:
    invoice = await repo.get(session, Invoice, tenant_id, invoice_id, lock=True)
    if invoice is None:
        raise NotFoundError("invoice", invoice_id)
    if invoice.status != Inv.INVOICE_STATUS_OPEN:
        raise FailedPreconditionError(
            f"invoice {invoice.number} is {_name(Inv, invoice.status)}; "
            "payments need an open invoice"
        )
    if currency != invoice.currency:
        raise InvalidArgumentError(
            "amount.currency_code", f"the invoice is in {invoice.currency}, not {currency}"
        )
    if amount_minor <= 0:
        raise InvalidArgumentError("amount.amount", "must be positive")
    due = invoice.total_minor - invoice.amount_paid_minor
    if amount_minor > due:
        raise InvalidArgumentError("amount.amount", "exceeds the amount due on the invoice")
    invoice.amount_paid_minor += amount_minor
    if invoice.amount_paid_minor == invoice.total_minor:
        invoice.status = Inv.INVOICE_STATUS_PAID
    payment = Payment(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        invoice_id=invoice_id,
        amount_minor=amount_minor,
        currency=currency,
        received_at=received_at,
        reference=reference,
    )
    session.add(payment)
    await session.flush()
    return payment


# ------------------------------------------------------------------ disputes


async def open_dispute(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    customer_id: uuid.UUID,
    invoice_id: uuid.UUID | None,
    reason: str,
    currency: str,
    amount_minor: int | None,
    opened_at: dt.datetime,
) -> Dispute:
    if await repo.get(session, Customer, tenant_id, customer_id) is None:
        raise InvalidArgumentError("customer_id", f"unknown customer {customer_id}")
    if invoice_id is not None:
        invoice = await repo.get(session, Invoice, tenant_id, invoice_id)
        if invoice is None or invoice.customer_id != customer_id:
            raise InvalidArgumentError("invoice_id", f"no invoice {invoice_id} of this customer")
    row = Dispute(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        customer_id=customer_id,
        invoice_id=invoice_id,
        reason=reason,
        currency=currency,
        amount_minor=amount_minor,
        status=Dis.DISPUTE_STATUS_OPEN,
        opened_at=opened_at,
        resolution="",
    )
    session.add(row)
    await session.flush()
    return row


async def resolve_dispute(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    ident: uuid.UUID,
    resolution: str,
    resolved_at: dt.datetime,
) -> Dispute:
    row = await repo.get(session, Dispute, tenant_id, ident, lock=True)
    if row is None:
        raise NotFoundError("dispute", ident)
    if row.status != Dis.DISPUTE_STATUS_OPEN:
        raise FailedPreconditionError(f"dispute {ident} is already resolved")
    if resolved_at < row.opened_at:
        raise InvalidArgumentError("resolve_time", "is before the dispute was opened")
    row.status = Dis.DISPUTE_STATUS_RESOLVED
    row.resolved_at = resolved_at
    row.resolution = resolution
    await session.flush()
    return row
