"""The conformance suite: what any BSSAdapter must do, run against every harness."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from decimal import Decimal

import pytest

from bss.contract import BillingAccountInfo, BSSAdapter, RevenueResult
from tests.bss.conftest import Harness

DAY = dt.timedelta(days=1)


async def test_adapter_subclasses_the_contract_when_built(harness: Harness) -> None:
    assert isinstance(harness.adapter, BSSAdapter)
    assert harness.adapter.source == harness.source  # type: ignore[attr-defined]


async def test_billing_account_is_none_when_customer_is_unknown(harness: Harness) -> None:
    assert await harness.adapter.get_billing_account(uuid.uuid4()) is None


async def test_billing_account_carries_the_fee_when_customer_is_priced(harness: Harness) -> None:
    customer = await harness.priced("12.34", plan="Fibre 500")
    info = await harness.adapter.get_billing_account(customer)
    assert isinstance(info, BillingAccountInfo)
    assert info.customer_id == customer
    assert info.monthly_fee == 12.34
    assert info.currency == "GBP"
    assert info.plan_name == "Fibre 500"
    assert info.account_id is not None


async def test_billing_account_has_no_fee_when_customer_has_no_billing_data(
    harness: Harness,
) -> None:
    customer = await harness.unpriced()
    info = await harness.adapter.get_billing_account(customer)
    assert info is not None
    assert info.monthly_fee is None


async def test_billing_account_is_none_when_customer_belongs_to_another_tenant(
    harness: Harness,
) -> None:
    customer = await harness.priced("10.00")
    other = await harness.other_tenant()
    assert await other.get_billing_account(customer) is None
    result = await other.get_revenue_at_risk([customer])
    assert (result.priced_customer_count, result.unpriced_customer_count) == (0, 1)


async def test_revenue_sums_and_counts_when_batch_mixes_priced_and_unpriced(
    harness: Harness,
) -> None:
    a = await harness.priced("12.34")
    b = await harness.priced("5.01")
    no_data = await harness.unpriced()
    unknown = uuid.uuid4()
    result = await harness.adapter.get_revenue_at_risk([a, b, no_data, unknown, a, b, unknown])
    assert result == RevenueResult(
        total_revenue_at_risk=float(Decimal("17.35")),
        is_estimate=harness.is_estimate,
        source=harness.source,
        priced_customer_count=2,
        unpriced_customer_count=2,
        requires_manual_valuation=True,
    )


async def test_revenue_needs_no_manual_valuation_when_every_customer_is_priced(
    harness: Harness,
) -> None:
    ids = [await harness.priced(fee) for fee in ("0.10", "0.20")]
    result = await harness.adapter.get_revenue_at_risk(ids)
    assert result.total_revenue_at_risk == float(Decimal("0.30"))
    assert result.requires_manual_valuation is False
    assert (result.priced_customer_count, result.unpriced_customer_count) == (2, 0)


async def test_revenue_total_is_none_when_nothing_is_priced(harness: Harness) -> None:
    result = await harness.adapter.get_revenue_at_risk([await harness.unpriced(), uuid.uuid4()])
    assert result.total_revenue_at_risk is None
    assert result.requires_manual_valuation is True
    assert (result.priced_customer_count, result.unpriced_customer_count) == (0, 2)
    assert result.is_estimate is harness.is_estimate


async def test_revenue_total_is_none_when_batch_is_empty(harness: Harness) -> None:
    result = await harness.adapter.get_revenue_at_risk([])
    assert result.total_revenue_at_risk is None
    assert (result.priced_customer_count, result.unpriced_customer_count) == (0, 0)
    assert result.requires_manual_valuation is False


async def test_revenue_counts_unpriced_when_customer_is_priced_in_another_currency(
    harness: Harness,
) -> None:
    gbp = await harness.priced("10.00")
    eur = await harness.priced("99.00", currency="EUR")
    result = await harness.adapter.get_revenue_at_risk([gbp, eur])
    assert result.total_revenue_at_risk == 10.0
    assert (result.priced_customer_count, result.unpriced_customer_count) == (1, 1)
    assert result.requires_manual_valuation is True
    info = await harness.adapter.get_billing_account(eur)
    assert info is not None
    assert (info.monthly_fee, info.currency) == (99.0, "EUR")


async def test_revenue_is_merged_when_batch_exceeds_200_ids(harness: Harness) -> None:
    priced = [await harness.priced(f"{i}.01") for i in range(1, 6)]
    unknown = [uuid.uuid4() for _ in range(445)]
    ids = unknown[:150] + priced + unknown[150:]
    result = await harness.adapter.get_revenue_at_risk(ids)
    assert result.total_revenue_at_risk == float(sum(Decimal(f"{i}.01") for i in range(1, 6)))
    assert (result.priced_customer_count, result.unpriced_customer_count) == (5, 445)
    sizes = harness.batch_sizes()
    if sizes is not None:
        assert sorted(sizes) == [50, 200, 200]
    disputing = await harness.adapter.check_disputes(ids)
    assert disputing == []


async def test_disputes_are_found_when_active_within_30_days(harness: Harness) -> None:
    now = dt.datetime.now(dt.UTC)
    still_open = await harness.priced("1.00")
    resolved_recently = await harness.priced("1.00")
    resolved_long_ago = await harness.priced("1.00")
    quiet = await harness.priced("1.00")
    await harness.dispute(still_open, now - 90 * DAY, None)
    await harness.dispute(resolved_recently, now - 60 * DAY, now - 29 * DAY)
    await harness.dispute(resolved_long_ago, now - 60 * DAY, now - 31 * DAY)
    ids = [quiet, resolved_long_ago, resolved_recently, still_open, still_open]
    found = await harness.adapter.check_disputes(ids)
    assert found == [resolved_recently, still_open]


async def test_disputes_are_empty_when_customers_are_unknown(harness: Harness) -> None:
    assert await harness.adapter.check_disputes([uuid.uuid4()]) == []


async def test_results_degrade_when_the_bss_stops_mid_test(harness: Harness) -> None:
    customer = await harness.priced("10.00")
    before = await harness.adapter.get_revenue_at_risk([customer])
    assert before.total_revenue_at_risk == 10.0
    await harness.stop_bss()
    ids = [customer, uuid.uuid4(), customer]
    after = await harness.adapter.get_revenue_at_risk(ids)
    assert after.total_revenue_at_risk is None
    assert after.is_estimate is True
    assert after.requires_manual_valuation is True
    assert after.priced_customer_count == 0
    assert after.unpriced_customer_count == 2
    assert after.source == harness.source
    assert await harness.adapter.get_billing_account(customer) is None
    assert await harness.adapter.check_disputes(ids) == []


async def test_logs_carry_no_fee_when_info_logs_are_captured(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fees = ("731.59", "268.41")  # sums to 1000.00
    ids = [await harness.priced(fee) for fee in fees]
    await harness.adapter.get_billing_account(ids[0])
    await harness.adapter.get_revenue_at_risk([*ids, uuid.uuid4()])
    await harness.adapter.check_disputes(ids)
    await harness.stop_bss()
    await harness.adapter.get_revenue_at_risk(ids)
    forbidden = {*fees, "731.59", "73159", "26841", "1000.0", "1000.00", "100000"}
    # The record's own bookkeeping (timestamps, thread and process ids, line numbers) is
    # not message content and could contain these digits by chance.
    standard = set(vars(logging.makeLogRecord({})))
    for record in caplog.records:
        if record.levelno < logging.INFO:
            continue
        extras = (str(v) for k, v in vars(record).items() if k not in standard and v is not None)
        text = " ".join([record.getMessage(), *extras])
        leaked = [value for value in forbidden if value in text]
        assert not leaked, f"{record.name}: {record.getMessage()!r} leaks {leaked}"
