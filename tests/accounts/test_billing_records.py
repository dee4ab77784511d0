"""Plans, subscriptions, invoices, payments and disputes over a real channel."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import accounts_pb2 as pb
from isp_rating.v1 import accounts_pb2_grpc
from isp_rating.v1.common_pb2 import Money
from tests.conftest import TenantCtx

Stub = accounts_pb2_grpc.AccountServiceStub


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> Stub:
    return accounts_pb2_grpc.AccountServiceStub(channel)


def fibre_plan(code: str = "fibre-500", price: str = "35.00", currency: str = "GBP") -> pb.Plan:
    return pb.Plan(
        code=code,
        name="Fibre 500",
        recurring_price=Money(currency_code=currency, amount=price),
        billing_period=pb.BILLING_PERIOD_MONTHLY,
        tariff=pb.Tariff(
            data=pb.DataAllowance(
                included_bytes=500 * 10**9,
                overage_price=Money(currency_code=currency, amount="0.001250"),
                overage_unit_bytes=10**9,
            )
        ),
    )


async def expect_invalid(call: object, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in (caught.value.details() or "")


async def make_customer(accounts: Stub, tenant: TenantCtx, name: str = "Grace") -> str:
    customer = await accounts.CreateCustomer(
        pb.CreateCustomerRequest(customer=pb.Customer(name=name)), metadata=tenant.metadata
    )
    return customer.id


async def test_plan_keeps_exact_prices_when_created(accounts: Stub, tenant: TenantCtx) -> None:
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    fetched = await accounts.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.metadata)
    assert fetched == plan
    assert plan.recurring_price.amount == "35.00"
    assert plan.tariff.data.overage_price.amount == "0.001250"
    assert plan.tariff.data.included_bytes == 500 * 10**9


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        (fibre_plan(price="-1.00"), "plan.recurring_price.amount"),
        (fibre_plan(price="35.001"), "plan.recurring_price.amount"),
        (fibre_plan(price="3.5e1"), "plan.recurring_price.amount"),
        (fibre_plan(currency="XYZ"), "plan.recurring_price.currency_code"),
        (fibre_plan(price="100.5", currency="JPY"), "plan.recurring_price.amount"),
        (
            pb.Plan(code="x", name="x", recurring_price=Money(currency_code="GBP", amount="1.00")),
            "plan.billing_period",
        ),
    ],
)
async def test_create_plan_names_the_field_when_money_or_enum_is_bad(
    accounts: Stub, tenant: TenantCtx, plan: pb.Plan, field: str
) -> None:
    await expect_invalid(
        accounts.CreatePlan(pb.CreatePlanRequest(plan=plan), metadata=tenant.metadata), field
    )


async def test_subscription_records_identities_and_dated_transitions(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customer_id = await make_customer(accounts, tenant)
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    sub = await accounts.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                customer_id=customer_id,
                plan_id=plan.id,
                billing_anchor_day=31,
                time_zone="Europe/London",
                radius_identities=[
                    pb.RadiusIdentity(kind=pb.RADIUS_IDENTITY_KIND_USER_NAME, value="grace@isp"),
                    pb.RadiusIdentity(
                        kind=pb.RADIUS_IDENTITY_KIND_CALLING_STATION_ID, value="AA-BB-CC-DD-EE-FF"
                    ),
                ],
            )
        ),
        metadata=tenant.metadata,
    )
    assert sub.status == pb.SUBSCRIPTION_STATUS_PENDING
    # Sorted by kind (user name first); the MAC is stored canonical.
    assert [i.value for i in sub.radius_identities] == ["grace@isp", "aa:bb:cc:dd:ee:ff"]

    at = Timestamp()
    at.FromDatetime(dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1))
    active = await accounts.UpdateSubscriptionStatus(
        pb.UpdateSubscriptionStatusRequest(
            id=sub.id, status=pb.SUBSCRIPTION_STATUS_ACTIVE, effective_at=at, reason="installed"
        ),
        metadata=tenant.metadata,
    )
    assert active.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert [(t.from_status, t.to_status) for t in active.status_history] == [
        (pb.SUBSCRIPTION_STATUS_UNSPECIFIED, pb.SUBSCRIPTION_STATUS_PENDING),
        (pb.SUBSCRIPTION_STATUS_PENDING, pb.SUBSCRIPTION_STATUS_ACTIVE),
    ]
    assert active.status_history[1].at == at


async def test_status_change_is_refused_when_transition_is_not_allowed(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customer_id = await make_customer(accounts, tenant)
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    sub = await accounts.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(customer_id=customer_id, plan_id=plan.id)
        ),
        metadata=tenant.metadata,
    )
    await accounts.UpdateSubscriptionStatus(
        pb.UpdateSubscriptionStatusRequest(id=sub.id, status=pb.SUBSCRIPTION_STATUS_CANCELED),
        metadata=tenant.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.UpdateSubscriptionStatus(
            pb.UpdateSubscriptionStatusRequest(id=sub.id, status=pb.SUBSCRIPTION_STATUS_ACTIVE),
            metadata=tenant.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_subscription_is_refused_and_nothing_written_when_identity_is_taken(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customer_id = await make_customer(accounts, tenant)
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    identity = pb.RadiusIdentity(kind=pb.RADIUS_IDENTITY_KIND_USER_NAME, value="shared@isp")
    await accounts.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                customer_id=customer_id, plan_id=plan.id, radius_identities=[identity]
            )
        ),
        metadata=tenant.metadata,
    )
    await expect_invalid(
        accounts.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    customer_id=customer_id, plan_id=plan.id, radius_identities=[identity]
                )
            ),
            metadata=tenant.metadata,
        ),
        "subscription.radius_identities[0].value",
    )
    listed = await accounts.ListSubscriptions(
        pb.ListSubscriptionsRequest(customer_id=customer_id), metadata=tenant.metadata
    )
    assert len(listed.subscriptions) == 1


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (pb.RADIUS_IDENTITY_KIND_USER_NAME, "\u00e9" * 127),  # 254 octets of UTF-8
        (pb.RADIUS_IDENTITY_KIND_CALLING_STATION_ID, "c" * 254),
        (pb.RADIUS_IDENTITY_KIND_USER_NAME, "nul\x00inside"),
    ],
    ids=["user-name-254-octets", "calling-station-254", "nul"],
)
async def test_subscription_is_refused_naming_the_identity_no_radius_attribute_can_carry(
    accounts: Stub, tenant: TenantCtx, kind: int, value: str
) -> None:
    customer_id = await make_customer(accounts, tenant)
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    identities = [
        pb.RadiusIdentity(kind=pb.RADIUS_IDENTITY_KIND_USER_NAME, value="fits@isp"),
        pb.RadiusIdentity(kind=kind, value=value),  # type: ignore[arg-type]
    ]
    await expect_invalid(
        accounts.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    customer_id=customer_id, plan_id=plan.id, radius_identities=identities
                )
            ),
            metadata=tenant.metadata,
        ),
        "subscription.radius_identities[1].value",
    )
    listed = await accounts.ListSubscriptions(
        pb.ListSubscriptionsRequest(customer_id=customer_id), metadata=tenant.metadata
    )
    assert len(listed.subscriptions) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": "00000000-0000-4000-8000-000000000000"}, "subscription.customer_id"),
        ({"plan_id": "not-a-uuid"}, "subscription.plan_id"),
        ({"time_zone": "Mars/Olympus"}, "subscription.time_zone"),
        ({"status": 9}, "subscription.status"),
    ],
)
async def test_create_subscription_names_the_field_when_reference_is_bad(
    accounts: Stub, tenant: TenantCtx, change: dict[str, object], field: str
) -> None:
    customer_id = await make_customer(accounts, tenant)
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan()), metadata=tenant.metadata
    )
    sub = pb.Subscription(customer_id=customer_id, plan_id=plan.id)
    for name, value in change.items():
        setattr(sub, name, value)
    await expect_invalid(
        accounts.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=sub), metadata=tenant.metadata
        ),
        field,
    )


async def test_invoice_is_paid_when_partial_payments_reach_the_total(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customer_id = await make_customer(accounts, tenant)
    invoice = await accounts.CreateInvoice(
        pb.CreateInvoiceRequest(
            invoice=pb.Invoice(
                number="INV-0001",
                customer_id=customer_id,
                currency_code="GBP",
                lines=[
                    pb.InvoiceLine(
                        description="Fibre 500, November",
                        quantity="1",
                        unit_price=Money(currency_code="GBP", amount="35.00"),
                    ),
                    pb.InvoiceLine(
                        description="Overage 12.5 GB",
                        quantity="12.5",
                        unit_price=Money(currency_code="GBP", amount="1.25"),
                    ),
                ],
            )
        ),
        metadata=tenant.metadata,
    )
    # 12.5 x 1.25 = 15.625 -> 15.62 (half-even); total 50.62
    assert [line.amount.amount for line in invoice.lines] == ["35.00", "15.62"]
    assert invoice.total.amount == "50.62"
    assert invoice.status == pb.INVOICE_STATUS_OPEN

    pay = pb.RecordPaymentRequest(
        invoice_id=invoice.id, amount=Money(currency_code="GBP", amount="20.00"), request_id="p1"
    )
    await accounts.RecordPayment(pay, metadata=tenant.metadata)
    await accounts.RecordPayment(pay, metadata=tenant.metadata)  # a retry, not a second payment
    partial = await accounts.GetInvoice(
        pb.GetInvoiceRequest(id=invoice.id), metadata=tenant.metadata
    )
    assert partial.amount_paid.amount == "20.00"
    assert partial.amount_due.amount == "30.62"
    assert partial.status == pb.INVOICE_STATUS_OPEN

    await expect_invalid(
        accounts.RecordPayment(
            pb.RecordPaymentRequest(
                invoice_id=invoice.id, amount=Money(currency_code="GBP", amount="30.63")
            ),
            metadata=tenant.metadata,
        ),
        "amount.amount",
    )
    await accounts.RecordPayment(
        pb.RecordPaymentRequest(
            invoice_id=invoice.id, amount=Money(currency_code="GBP", amount="30.62")
        ),
        metadata=tenant.metadata,
    )
    paid = await accounts.GetInvoice(pb.GetInvoiceRequest(id=invoice.id), metadata=tenant.metadata)
    assert paid.status == pb.INVOICE_STATUS_PAID
    assert paid.amount_due.amount == "0.00"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.RecordPayment(
            pb.RecordPaymentRequest(
                invoice_id=invoice.id, amount=Money(currency_code="GBP", amount="1.00")
            ),
            metadata=tenant.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_dispute_is_listed_open_until_resolved(accounts: Stub, tenant: TenantCtx) -> None:
    customer_id = await make_customer(accounts, tenant)
    dispute = await accounts.OpenDispute(
        pb.OpenDisputeRequest(
            customer_id=customer_id,
            reason="double charge",
            amount=Money(currency_code="GBP", amount="35.00"),
        ),
        metadata=tenant.metadata,
    )
    assert dispute.status == pb.DISPUTE_STATUS_OPEN
    open_now = await accounts.ListDisputes(
        pb.ListDisputesRequest(customer_id=customer_id, open_only=True), metadata=tenant.metadata
    )
    assert [d.id for d in open_now.disputes] == [dispute.id]
    resolved = await accounts.ResolveDispute(
        pb.ResolveDisputeRequest(id=dispute.id, resolution="refunded"), metadata=tenant.metadata
    )
    assert resolved.status == pb.DISPUTE_STATUS_RESOLVED
    assert resolved.resolve_time.seconds >= dispute.open_time.seconds
    still_open = await accounts.ListDisputes(
        pb.ListDisputesRequest(customer_id=customer_id, open_only=True), metadata=tenant.metadata
    )
    assert list(still_open.disputes) == []


async def test_a_disputes_page_token_is_refused_with_other_filters(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customers = [await make_customer(accounts, tenant) for _ in range(2)]
    for customer_id in customers:
        for _ in range(2):
            await accounts.OpenDispute(
                pb.OpenDisputeRequest(
                    customer_id=customer_id,
                    reason="double charge",
                    amount=Money(currency_code="GBP", amount="35.00"),
                ),
                metadata=tenant.metadata,
            )
    first = await accounts.ListDisputes(
        pb.ListDisputesRequest(customer_id=customers[0], page_size=1), metadata=tenant.metadata
    )
    assert first.next_page_token
    # Resumed with the same filters, it pages on; with others it would page through another
    # list from this one's place (AIP-158).
    rest = await accounts.ListDisputes(
        pb.ListDisputesRequest(
            customer_id=customers[0], page_size=10, page_token=first.next_page_token
        ),
        metadata=tenant.metadata,
    )
    assert len(rest.disputes) == 1
    assert {d.customer_id for d in [*first.disputes, *rest.disputes]} == {customers[0]}
    for other in (
        pb.ListDisputesRequest(customer_id=customers[1]),
        pb.ListDisputesRequest(customer_id=customers[0], open_only=True),
        pb.ListDisputesRequest(),
    ):
        other.page_token = first.next_page_token
        await expect_invalid(accounts.ListDisputes(other, metadata=tenant.metadata), "page_token")


async def test_a_subscriptions_page_token_is_refused_for_another_customer(
    accounts: Stub, tenant: TenantCtx
) -> None:
    customers = [await make_customer(accounts, tenant) for _ in range(2)]
    plan = await accounts.CreatePlan(
        pb.CreatePlanRequest(plan=fibre_plan("paged")), metadata=tenant.metadata
    )
    for customer_id in customers:
        for _ in range(2):
            await accounts.CreateSubscription(
                pb.CreateSubscriptionRequest(
                    subscription=pb.Subscription(customer_id=customer_id, plan_id=plan.id)
                ),
                metadata=tenant.metadata,
            )
    first = await accounts.ListSubscriptions(
        pb.ListSubscriptionsRequest(customer_id=customers[0], page_size=1),
        metadata=tenant.metadata,
    )
    assert first.next_page_token
    await expect_invalid(
        accounts.ListSubscriptions(
            pb.ListSubscriptionsRequest(customer_id=customers[1], page_token=first.next_page_token),
            metadata=tenant.metadata,
        ),
        "page_token",
    )


@pytest.mark.parametrize("quantity", ["1e25", "1000000000000000", "-1.5e15"])
async def test_invoice_line_quantity_too_large_for_its_column_is_invalid(
    accounts: Stub, tenant: TenantCtx, quantity: str
) -> None:
    """A line quantity is NUMERIC(20, 6): at most 14 digits before the point."""
    customer_id = await make_customer(accounts, tenant)
    line = pb.InvoiceLine(
        description="Overage",
        quantity=quantity,
        unit_price=Money(currency_code="GBP", amount="1.00"),
    )
    invoice = pb.Invoice(number="INV-9", customer_id=customer_id, currency_code="GBP", lines=[line])
    await expect_invalid(
        accounts.CreateInvoice(pb.CreateInvoiceRequest(invoice=invoice), metadata=tenant.metadata),
        "invoice.lines[0].quantity",
    )
