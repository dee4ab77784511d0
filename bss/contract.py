"""The BSS Integration Contract v1.0: Pedkai's adapter ABC and its models, names verbatim.

Floats live here and only here: the contract demands them. Adapters compute exactly
(integer minor units, Decimal) and convert at this edge with `to_contract_float`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

__all__ = ["BSSAdapter", "BillingAccountInfo", "RevenueResult", "to_contract_float"]


@dataclass(frozen=True)
class BillingAccountInfo:
    """One customer's billing account as Pedkai sees it."""

    customer_id: UUID
    account_id: UUID | None = None
    plan_name: str | None = None
    monthly_fee: float | None = None
    currency: str = "GBP"


@dataclass(frozen=True)
class RevenueResult:
    """Revenue at risk of a batch of customers.

    `total_revenue_at_risk` is None when no customer is priced; `requires_manual_valuation`
    is True when any customer lacks billing data. There is no fallback ARPU.
    """

    total_revenue_at_risk: float | None
    is_estimate: bool
    source: str
    priced_customer_count: int = 0
    unpriced_customer_count: int = 0
    requires_manual_valuation: bool = False


class BSSAdapter(abc.ABC):
    """What Pedkai plugs in. Implementations never raise for unknown customers."""

    @abc.abstractmethod
    async def get_billing_account(self, customer_id: UUID) -> BillingAccountInfo | None:
        """The customer's billing account; None when the customer is unknown."""

    @abc.abstractmethod
    async def get_revenue_at_risk(self, customer_ids: list[UUID]) -> RevenueResult:
        """Monthly revenue of these customers; unpriced customers are counted, not guessed."""

    @abc.abstractmethod
    async def check_disputes(self, customer_ids: list[UUID]) -> list[UUID]:
        """Customers with an active billing dispute in the last 30 days."""


def to_contract_float(amount: Decimal) -> float:
    """The one exact → float conversion, at the contract edge."""
    return float(amount)
