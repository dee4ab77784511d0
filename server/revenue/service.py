"""Revenue rules: monthly fees from recurring charges, exact; totals per currency; disputes."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from server.db.database import Database
from server.errors import InvalidArgumentError, NotFoundError
from server.revenue import repository
from server.revenue.repository import MONTH_PARTS, RecurringCharge

# The contract's "active billing dispute in the last 30 days": an exact duration in UTC.
DISPUTE_WINDOW = dt.timedelta(days=30)

# Batches larger than this are refused (Pedkai's adapter splits at 200).
MAX_BATCH_IDS = 10_000


@dataclass(frozen=True, slots=True)
class CustomerFee:
    """The monthly fee of one customer: minor units per currency, rounded once each."""

    customer_id: uuid.UUID
    fees_minor: dict[str, int]
    plan_name: str
    subscription_count: int

    @property
    def priced(self) -> bool:
        return bool(self.fees_minor)


@dataclass(frozen=True, slots=True)
class BillingAccount:
    customer_id: uuid.UUID
    account_number: str
    fee: CustomerFee


@dataclass(slots=True)
class CurrencySum:
    amount_minor: int = 0
    customer_count: int = 0


@dataclass(slots=True)
class RevenueAtRisk:
    distinct_count: int
    totals: dict[str, CurrencySum] = field(default_factory=dict)
    priced_count: int = 0
    mixed_currency_count: int = 0
    in_currency: CurrencySum | None = None

    @property
    def unpriced_count(self) -> int:
        return self.distinct_count - self.priced_count


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half to even, in integers (exact, no Decimal context)."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def monthly_fees(charges: Iterable[RecurringCharge]) -> dict[uuid.UUID, CustomerFee]:
    """Per customer and currency: the exact sum of the monthly charges, rounded once.

    Every charge is counted in twelfths of a minor unit per month (a quarterly price is 4
    twelfths of itself, an annual one 1), so sums are exact integers; only the customer's
    total per currency is rounded half-to-even to minor units, and the fee never depends
    on how many subscriptions make it up.
    """
    parts: dict[uuid.UUID, dict[str, int]] = {}
    main: dict[uuid.UUID, tuple[int, dt.datetime, uuid.UUID, str]] = {}
    subscriptions: dict[uuid.UUID, set[uuid.UUID]] = {}
    for charge in charges:
        monthly = charge.monthly_parts
        per_currency = parts.get(charge.customer_id)
        if per_currency is None:
            per_currency = parts[charge.customer_id] = {}
            subscriptions[charge.customer_id] = set()
        per_currency[charge.currency] = per_currency.get(charge.currency, 0) + monthly
        subscriptions[charge.customer_id].add(charge.subscription_id)
        if charge.kind == "plan":
            # The main plan: the highest monthly fee, then the oldest, then the lowest id.
            rank = (-monthly, charge.started_at, charge.subscription_id, charge.label)
            current = main.get(charge.customer_id)
            if current is None or rank < current:
                main[charge.customer_id] = rank
    return {
        customer_id: CustomerFee(
            customer_id=customer_id,
            fees_minor={
                code: round_half_even(per_currency[code], MONTH_PARTS)
                for code in sorted(per_currency)
            },
            plan_name=main[customer_id][3] if customer_id in main else "",
            subscription_count=len(subscriptions[customer_id]),
        )
        for customer_id, per_currency in parts.items()
    }


def monthly_parts_by_customer(
    charges: Iterable[RecurringCharge],
) -> dict[uuid.UUID, dict[str, int]]:
    """The hot path of a batch: exact monthly twelfths per customer and currency, unrounded."""
    parts: dict[uuid.UUID, dict[str, int]] = {}
    for charge in charges:
        per_currency = parts.get(charge.customer_id)
        if per_currency is None:
            parts[charge.customer_id] = {charge.currency: charge.monthly_parts}
        else:
            per_currency[charge.currency] = (
                per_currency.get(charge.currency, 0) + charge.monthly_parts
            )
    return parts


def distinct_ids(ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Duplicates count once; the first occurrence keeps its place."""
    if len(ids) > MAX_BATCH_IDS:
        raise InvalidArgumentError("customer_ids", f"at most {MAX_BATCH_IDS} ids per request")
    return list(dict.fromkeys(ids))


class RevenueService:
    """Pedkai's three questions, answered for the caller's tenant only."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def billing_account(self, tenant_id: uuid.UUID, customer_id: uuid.UUID) -> BillingAccount:
        async with self._db.read() as session:
            found = await repository.billing_account(session, tenant_id, customer_id)
        if found is None:
            raise NotFoundError("customer", customer_id)
        account_number, charges = found
        fee = monthly_fees(charges).get(customer_id) or CustomerFee(customer_id, {}, "", 0)
        return BillingAccount(customer_id, account_number, fee)

    async def revenue_at_risk(
        self,
        tenant_id: uuid.UUID,
        customer_ids: Sequence[uuid.UUID],
        currency: str | None = None,
    ) -> RevenueAtRisk:
        ids = distinct_ids(customer_ids)
        result = RevenueAtRisk(distinct_count=len(ids))
        if currency is not None:
            result.in_currency = CurrencySum()
        if not ids:
            return result
        async with self._db.read() as session:
            charges = await repository.recurring_charges(session, tenant_id, ids)
        totals = result.totals
        in_currency = result.in_currency
        for per_currency in monthly_parts_by_customer(charges).values():
            result.priced_count += 1
            if len(per_currency) > 1:
                result.mixed_currency_count += 1
            for code, parts in per_currency.items():
                fee_minor = round_half_even(parts, MONTH_PARTS)
                total = totals.get(code)
                if total is None:
                    total = totals[code] = CurrencySum()
                total.amount_minor += fee_minor
                total.customer_count += 1
                if in_currency is not None and code == currency and len(per_currency) == 1:
                    in_currency.amount_minor += fee_minor
                    in_currency.customer_count += 1
        result.totals = {code: result.totals[code] for code in sorted(result.totals)}
        return result

    async def disputing(
        self,
        tenant_id: uuid.UUID,
        customer_ids: Sequence[uuid.UUID],
        as_of: dt.datetime | None = None,
    ) -> list[uuid.UUID]:
        """Customers with a dispute open at any instant of [as_of - 30 days, as_of].

        That is: opened_at <= as_of and (resolved_at is null or resolved_at >= as_of - 30d),
        both ends inclusive; the status column is not consulted, so an as_of in the past
        gives the answer that was true then.
        """
        ids = distinct_ids(customer_ids)
        as_of = as_of or dt.datetime.now(dt.UTC)
        if not ids:
            return []
        async with self._db.read() as session:
            found = await repository.disputing_customers(
                session, tenant_id, ids, as_of - DISPUTE_WINDOW, as_of
            )
        return [customer_id for customer_id in ids if customer_id in found]
