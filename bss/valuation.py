"""What every adapter shares: distinct ids, the exact → contract conversion, the degraded result."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from uuid import UUID

from bss.contract import RevenueResult, to_contract_float


def distinct(customer_ids: Iterable[UUID]) -> list[UUID]:
    """Duplicate ids count once; the first occurrence keeps its place."""
    return list(dict.fromkeys(customer_ids))


def revenue_result(
    total: Decimal, priced: int, distinct_count: int, *, source: str, is_estimate: bool
) -> RevenueResult:
    """The contract's result from exact parts: None when nothing is priced."""
    unpriced = distinct_count - priced
    return RevenueResult(
        total_revenue_at_risk=to_contract_float(total) if priced else None,
        is_estimate=is_estimate,
        source=source,
        priced_customer_count=priced,
        unpriced_customer_count=unpriced,
        requires_manual_valuation=unpriced > 0,
    )


def degraded(source: str, distinct_count: int) -> RevenueResult:
    """The contract's answer when the BSS cannot be asked: no figure, everyone unpriced."""
    return RevenueResult(
        total_revenue_at_risk=None,
        is_estimate=True,
        source=source,
        priced_customer_count=0,
        unpriced_customer_count=distinct_count,
        requires_manual_valuation=True,
    )
