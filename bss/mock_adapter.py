"""A seedable in-memory adapter (is_estimate=True) for Pedkai's tests and demos."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from bss.contract import BillingAccountInfo, BSSAdapter, RevenueResult, to_contract_float
from bss.valuation import degraded, distinct, revenue_result

DISPUTE_WINDOW = dt.timedelta(days=30)


@dataclass
class _Account:
    account_id: UUID | None
    plan_name: str | None
    monthly_fee: Decimal | None
    currency: str


@dataclass
class MockBSSAdapter(BSSAdapter):
    """Same rules as the real adapter over seeded data; `available=False` simulates an outage.

    Customers are priced in `currency` only (the contract's result has one currency):
    a customer seeded in another currency is unpriced in `get_revenue_at_risk`.
    """

    currency: str = "GBP"
    source: str = "mock"
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    available: bool = True
    _accounts: dict[UUID, _Account] = field(default_factory=dict, repr=False)
    _disputes: dict[UUID, list[tuple[dt.datetime, dt.datetime | None]]] = field(
        default_factory=dict, repr=False
    )

    def seed_account(
        self,
        customer_id: UUID,
        *,
        monthly_fee: Decimal | str | None,
        currency: str | None = None,
        plan_name: str | None = None,
        account_id: UUID | None = None,
    ) -> None:
        fee = None if monthly_fee is None else Decimal(monthly_fee)
        self._accounts[customer_id] = _Account(
            account_id or customer_id, plan_name, fee, currency or self.currency
        )

    def seed_dispute(
        self,
        customer_id: UUID,
        opened_at: dt.datetime,
        resolved_at: dt.datetime | None = None,
    ) -> None:
        self._disputes.setdefault(customer_id, []).append((opened_at, resolved_at))

    async def get_billing_account(self, customer_id: UUID) -> BillingAccountInfo | None:
        account = self._accounts.get(customer_id) if self.available else None
        if account is None:
            return None
        return BillingAccountInfo(
            customer_id=customer_id,
            account_id=account.account_id,
            plan_name=account.plan_name,
            monthly_fee=None
            if account.monthly_fee is None
            else to_contract_float(account.monthly_fee),
            currency=account.currency,
        )

    async def get_revenue_at_risk(self, customer_ids: list[UUID]) -> RevenueResult:
        ids = distinct(customer_ids)
        if not self.available:
            return degraded(self.source, len(ids))
        total, priced = Decimal(0), 0
        for customer_id in ids:
            account = self._accounts.get(customer_id)
            if account and account.monthly_fee is not None and account.currency == self.currency:
                total += account.monthly_fee
                priced += 1
        return revenue_result(total, priced, len(ids), source=self.source, is_estimate=True)

    async def check_disputes(self, customer_ids: list[UUID]) -> list[UUID]:
        if not self.available:
            return []
        as_of = self.clock()
        start = as_of - DISPUTE_WINDOW
        return [
            customer_id
            for customer_id in distinct(customer_ids)
            if any(
                opened <= as_of and (resolved is None or resolved >= start)
                for opened, resolved in self._disputes.get(customer_id, ())
            )
        ]
