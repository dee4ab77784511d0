"""RevenueService over a real channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from isp_rating.v1 import revenue_pb2
from server.db.database import Database
from server.revenue.repository import MONTH_PARTS, PERIOD_MONTHS, RecurringCharge
from server.revenue.service import monthly_fees, monthly_parts_by_customer, round_half_even
from tests.revenue.support import ANNUAL, QUARTERLY, SUSPENDED, Seeder, Tenant, make_tenant

Stub = Any  # revenue_pb2_grpc.RevenueServiceAsyncStub exists only in the .pyi
AS_OF = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _charge(
    customer_id: uuid.UUID, amount_minor: int, months: int, currency: str = "GBP"
) -> RecurringCharge:
    return RecurringCharge(
        customer_id, uuid.uuid4(), "plan", "p", currency, amount_minor, months, AS_OF
    )


# ---------------------------------------------------------------- the pure rule


def test_monthly_fee_rounds_half_to_even_once_per_customer_when_fraction_is_half() -> None:
    even, odd, split = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fees = monthly_fees(
        [
            _charge(even, 6, 12),  # 0.5 → 0
            _charge(odd, 18, 12),  # 1.5 → 2
            # 1/3 + 1/3 + 1/3 = 1 exactly; rounding each would give 0.
            _charge(split, 1, 3),
            _charge(split, 1, 3),
            _charge(split, 1, 3),
        ]
    )
    assert fees[even].fees_minor == {"GBP": 0}
    assert fees[odd].fees_minor == {"GBP": 2}
    assert fees[split].fees_minor == {"GBP": 1}


def test_monthly_fee_keeps_currencies_apart_when_subscriptions_mix_them() -> None:
    customer = uuid.uuid4()
    fees = monthly_fees([_charge(customer, 1000, 1), _charge(customer, 500, 1, "EUR")])
    assert fees[customer].fees_minor == {"EUR": 500, "GBP": 1000}
    assert list(fees[customer].fees_minor) == ["EUR", "GBP"]


@pytest.mark.parametrize(
    ("numerator", "expected"),
    [(6, 0), (18, 2), (-6, 0), (-18, -2), (7, 1), (5, 0), (-7, -1), (24, 2)],
)
def test_round_half_even_matches_decimal_when_dividing_by_twelve(
    numerator: int, expected: int
) -> None:
    exact = (Decimal(numerator) / 12).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    assert round_half_even(numerator, 12) == expected == int(exact)


def test_every_billing_period_divides_a_year_when_counted_in_twelfths() -> None:
    assert all(MONTH_PARTS % months == 0 for months in PERIOD_MONTHS.values())


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["GBP", "EUR"]),
            st.integers(0, 10**9),
            st.sampled_from([1, 3, 12]),
        ),
        max_size=30,
    )
)
def test_batch_fees_equal_account_fees_when_charges_are_random(
    rows: list[tuple[int, str, int, int]],
) -> None:
    customers = [uuid.UUID(int=i + 1) for i in range(4)]
    charges = [_charge(customers[c], amount, months, code) for c, code, amount, months in rows]
    per_account = monthly_fees(charges)
    batch = monthly_parts_by_customer(charges)
    assert set(batch) == set(per_account)
    for customer_id, parts in batch.items():
        exact = {
            code: (Decimal(p) / 12).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
            for code, p in parts.items()
        }
        assert per_account[customer_id].fees_minor == exact


# ---------------------------------------------------------------- GetBillingAccount


async def test_billing_account_sums_active_subscriptions_when_periods_differ(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    customer = await seed.customer()
    await seed.subscribe(customer, await seed.plan(1000, name="Monthly"))
    await seed.subscribe(customer, await seed.plan(3000, period=QUARTERLY, name="Quarterly"))
    # 12001 / 12 = 1000.0833…: the highest fee, so the main plan; the sum rounds to 3000.
    await seed.subscribe(customer, await seed.plan(12001, period=ANNUAL, name="Annual"))
    await seed.subscribe(customer, await seed.plan(9999, name="Suspended"), status=SUSPENDED)
    reply = await revenue_stub.GetBillingAccount(
        revenue_pb2.GetBillingAccountRequest(customer_id=str(customer)),
        metadata=rev_tenant.metadata,
    )
    assert reply.customer_id == str(customer)
    assert reply.account_id == str(customer)
    assert reply.plan_name == "Annual"
    assert reply.monthly_fee.currency_code == "GBP"
    assert reply.monthly_fee.amount == "30.00"
    assert [(m.currency_code, m.amount) for m in reply.monthly_fees] == [("GBP", "30.00")]
    assert reply.active_subscription_count == 3


async def test_billing_account_has_no_fee_when_no_subscription_is_active(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    customer = await seed.customer()
    await seed.subscribe(customer, await seed.plan(1000), status=SUSPENDED)
    reply = await revenue_stub.GetBillingAccount(
        revenue_pb2.GetBillingAccountRequest(customer_id=str(customer)),
        metadata=rev_tenant.metadata,
    )
    assert not reply.HasField("monthly_fee")
    assert list(reply.monthly_fees) == []
    assert reply.plan_name == ""


async def test_billing_account_lists_each_currency_when_currencies_mix(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    customer = await seed.customer()
    await seed.subscribe(customer, await seed.plan(1000, "GBP"))
    await seed.subscribe(customer, await seed.plan(1500, "JPY"))
    reply = await revenue_stub.GetBillingAccount(
        revenue_pb2.GetBillingAccountRequest(customer_id=str(customer)),
        metadata=rev_tenant.metadata,
    )
    assert not reply.HasField("monthly_fee")
    assert [(m.currency_code, m.amount) for m in reply.monthly_fees] == [
        ("GBP", "10.00"),
        ("JPY", "1500"),
    ]


async def test_billing_account_is_not_found_when_customer_is_unknown(
    revenue_stub: Stub, rev_tenant: Tenant
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetBillingAccount(
            revenue_pb2.GetBillingAccountRequest(customer_id=str(uuid.uuid4())),
            metadata=rev_tenant.metadata,
        )
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


async def test_billing_account_is_not_found_when_customer_belongs_to_another_tenant(
    revenue_stub: Stub, revenue_db: Database, seed: Seeder
) -> None:
    customer = await seed.priced_customer(1000)
    other = await make_tenant(revenue_db)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetBillingAccount(
            revenue_pb2.GetBillingAccountRequest(customer_id=str(customer)),
            metadata=other.metadata,
        )
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


async def test_billing_account_names_the_field_when_id_is_malformed(
    revenue_stub: Stub, rev_tenant: Tenant
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetBillingAccount(
            revenue_pb2.GetBillingAccountRequest(customer_id="nope"),
            metadata=rev_tenant.metadata,
        )
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "customer_id" in (error.value.details() or "")


# ---------------------------------------------------------------- GetRevenueAtRisk


async def test_revenue_at_risk_counts_duplicates_once_when_ids_repeat(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    a = await seed.priced_customer(1000)
    b = await seed.priced_customer(2550)
    unknown = uuid.uuid4()
    ids = [str(x) for x in (a, b, a, unknown, unknown, b)]
    reply = await revenue_stub.GetRevenueAtRisk(
        revenue_pb2.GetRevenueAtRiskRequest(customer_ids=ids), metadata=rev_tenant.metadata
    )
    assert [(t.total.currency_code, t.total.amount, t.customer_count) for t in reply.totals] == [
        ("GBP", "35.50", 2)
    ]
    assert reply.distinct_customer_count == 3
    assert reply.priced_customer_count == 2
    assert reply.unpriced_customer_count == 1
    assert not reply.HasField("in_currency")


async def test_revenue_at_risk_totals_each_currency_when_currencies_mix(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    gbp = await seed.priced_customer(1000, "GBP")
    eur = await seed.priced_customer(700, "EUR")
    mixed = await seed.customer()
    await seed.subscribe(mixed, await seed.plan(200, "GBP"))
    await seed.subscribe(mixed, await seed.plan(300, "EUR"))
    reply = await revenue_stub.GetRevenueAtRisk(
        revenue_pb2.GetRevenueAtRiskRequest(
            customer_ids=[str(gbp), str(eur), str(mixed)], currency_code="gbp"
        ),
        metadata=rev_tenant.metadata,
    )
    assert [(t.total.currency_code, t.total.amount, t.customer_count) for t in reply.totals] == [
        ("EUR", "10.00", 2),
        ("GBP", "12.00", 2),
    ]
    assert reply.priced_customer_count == 3
    assert reply.mixed_currency_customer_count == 1
    # Only the customer priced entirely in GBP is valued in GBP.
    assert reply.in_currency.total.currency_code == "GBP"
    assert reply.in_currency.total.amount == "10.00"
    assert reply.in_currency.customer_count == 1


async def test_revenue_at_risk_counts_unpriced_when_customer_belongs_to_another_tenant(
    revenue_stub: Stub, revenue_db: Database, seed: Seeder
) -> None:
    customer = await seed.priced_customer(1000)
    other = await make_tenant(revenue_db)
    reply = await revenue_stub.GetRevenueAtRisk(
        revenue_pb2.GetRevenueAtRiskRequest(customer_ids=[str(customer)]), metadata=other.metadata
    )
    assert list(reply.totals) == []
    assert (reply.priced_customer_count, reply.unpriced_customer_count) == (0, 1)


async def test_revenue_at_risk_answers_when_batch_has_1000_ids(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    priced = [await seed.priced_customer(100 + i) for i in range(5)]
    ids = [str(x) for x in priced] + [str(uuid.uuid4()) for _ in range(995)]
    reply = await revenue_stub.GetRevenueAtRisk(
        revenue_pb2.GetRevenueAtRiskRequest(customer_ids=ids, currency_code="GBP"),
        metadata=rev_tenant.metadata,
    )
    assert reply.distinct_customer_count == 1000
    assert (reply.priced_customer_count, reply.unpriced_customer_count) == (5, 995)
    assert reply.in_currency.total.amount == "5.10"


async def test_revenue_at_risk_is_empty_when_no_ids_are_given(
    revenue_stub: Stub, rev_tenant: Tenant
) -> None:
    reply = await revenue_stub.GetRevenueAtRisk(
        revenue_pb2.GetRevenueAtRiskRequest(), metadata=rev_tenant.metadata
    )
    assert list(reply.totals) == []
    assert reply.distinct_customer_count == 0


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (revenue_pb2.GetRevenueAtRiskRequest(customer_ids=["x"]), "customer_ids[0]"),
        (
            revenue_pb2.GetRevenueAtRiskRequest(customer_ids=[str(uuid.uuid4())] * 10_001),
            "customer_ids",
        ),
        (revenue_pb2.GetRevenueAtRiskRequest(currency_code="XXQ"), "currency_code"),
    ],
)
async def test_revenue_at_risk_names_the_field_when_input_is_invalid(
    revenue_stub: Stub,
    rev_tenant: Tenant,
    request_: revenue_pb2.GetRevenueAtRiskRequest,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetRevenueAtRisk(request_, metadata=rev_tenant.metadata)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(field)


# ---------------------------------------------------------------- CheckDisputes


async def test_check_disputes_applies_the_window_bounds_when_as_of_is_given(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    start = AS_OF - dt.timedelta(days=30)
    cases = {
        "opened_at_as_of": (AS_OF, None, True),
        "opened_after_as_of": (AS_OF + US, None, False),
        "open_since_long_ago": (AS_OF - dt.timedelta(days=400), None, True),
        "resolved_at_window_start": (start - dt.timedelta(days=5), start, True),
        "resolved_before_window": (start - dt.timedelta(days=5), start - US, False),
        "resolved_after_as_of": (AS_OF - dt.timedelta(days=1), AS_OF + dt.timedelta(days=1), True),
    }
    ids: dict[str, uuid.UUID] = {}
    for name, (opened, resolved, _) in cases.items():
        ids[name] = await seed.customer()
        await seed.dispute(ids[name], opened, resolved)
    quiet = await seed.customer()
    order = [quiet, *reversed(ids.values()), ids["opened_at_as_of"]]
    reply = await revenue_stub.CheckDisputes(
        revenue_pb2.CheckDisputesRequest(customer_ids=[str(i) for i in order], as_of=_ts(AS_OF)),
        metadata=rev_tenant.metadata,
    )
    expected = [str(ids[name]) for name in reversed(cases) if cases[name][2]]
    assert list(reply.customer_ids) == expected


async def test_check_disputes_uses_now_when_as_of_is_unset(
    revenue_stub: Stub, seed: Seeder, rev_tenant: Tenant
) -> None:
    now = dt.datetime.now(dt.UTC)
    recent, old = await seed.customer(), await seed.customer()
    await seed.dispute(recent, now - dt.timedelta(days=40), now - dt.timedelta(days=29))
    await seed.dispute(old, now - dt.timedelta(days=40), now - dt.timedelta(days=31))
    reply = await revenue_stub.CheckDisputes(
        revenue_pb2.CheckDisputesRequest(customer_ids=[str(recent), str(old)]),
        metadata=rev_tenant.metadata,
    )
    assert list(reply.customer_ids) == [str(recent)]


async def test_check_disputes_ignores_other_tenants_when_ids_are_theirs(
    revenue_stub: Stub, revenue_db: Database, seed: Seeder
) -> None:
    customer = await seed.customer()
    await seed.dispute(customer, AS_OF)
    other = await make_tenant(revenue_db)
    reply = await revenue_stub.CheckDisputes(
        revenue_pb2.CheckDisputesRequest(customer_ids=[str(customer)], as_of=_ts(AS_OF)),
        metadata=other.metadata,
    )
    assert list(reply.customer_ids) == []


# ---------------------------------------------------------------- auth and tenant binding


async def test_revenue_is_denied_when_tenant_metadata_names_another_tenant(
    revenue_stub: Stub, rev_tenant: Tenant
) -> None:
    metadata = (*rev_tenant.metadata, ("x-tenant-id", str(uuid.uuid4())))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetRevenueAtRisk(
            revenue_pb2.GetRevenueAtRiskRequest(), metadata=metadata
        )
    assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_revenue_is_denied_when_key_lacks_the_revenue_scope(
    revenue_stub: Stub, revenue_db: Database
) -> None:
    tenant = await make_tenant(revenue_db, scopes=["accounts:read"])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.GetRevenueAtRisk(
            revenue_pb2.GetRevenueAtRiskRequest(), metadata=tenant.metadata
        )
    assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_revenue_is_unauthenticated_when_no_key_is_sent(revenue_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await revenue_stub.CheckDisputes(revenue_pb2.CheckDisputesRequest())
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
