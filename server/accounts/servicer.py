"""AccountService over gRPC: proto ⇄ domain, nothing else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from isp_rating.v1 import accounts_pb2, accounts_pb2_grpc
from server.accounts import mapping, service
from server.accounts import repository as repo
from server.accounts.models import Customer, Dispute, Invoice, Plan, Subscription
from server.auth import principal
from server.db.base import utcnow
from server.db.database import Database
from server.errors import InvalidArgumentError
from server.idempotency import run_once
from server.validation import (
    currency_exponent,
    decode_page_token,
    encode_page_token,
    optional_id,
    page_scope,
    page_size,
    parse_decimal,
    parse_enum,
    parse_id,
    parse_money,
    parse_time_zone,
    require,
    timestamp_or_none,
    token_text,
)

Ctx = grpc.aio.ServicerContext[Any, Any]
Response = TypeVar("Response", bound=Message)

# Hooks run inside the transaction that registers RADIUS identities (usage re-attribution).
IdentityHook = Callable[
    [AsyncSession, uuid.UUID, uuid.UUID, list[tuple[int, str]]], Awaitable[None]
]
identity_hooks: list[IdentityHook] = []


def _after(token: str, scope: str = "") -> uuid.UUID | None:
    """The id a page token resumes after; `scope`: the request's filters (page_scope)."""
    cursor = decode_page_token(token, scope)
    return None if cursor is None else parse_id("page_token", token_text(cursor.get("after", "")))


def _next_token(rows: list[Any], limit: int, scope: str = "") -> str:
    return encode_page_token({"after": str(rows[-1].id)}, scope) if len(rows) == limit else ""


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(self, db: Database) -> None:
        self._db = db

    async def _once(
        self,
        method: str,
        request_id: str,
        response_type: type[Response],
        work: Callable[[AsyncSession, uuid.UUID], Awaitable[Response]],
    ) -> Response:
        tenant_id = principal().tenant_id
        return await run_once(
            self._db, tenant_id, method, request_id, response_type, lambda s: work(s, tenant_id)
        )

    async def _read(
        self, work: Callable[[AsyncSession, uuid.UUID], Awaitable[Response]]
    ) -> Response:
        tenant_id = principal().tenant_id
        async with self._db.read() as session:
            return await work(session, tenant_id)

    # ------------------------------------------------------------ customers

    async def CreateCustomer(
        self, request: accounts_pb2.CreateCustomerRequest, context: Ctx
    ) -> accounts_pb2.Customer:
        columns = mapping.customer_columns(request.customer, "customer")

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Customer:
            row = await service.create_customer(session, tenant_id, columns)
            return mapping.customer_to_proto(row)

        return await self._once("CreateCustomer", request.request_id, accounts_pb2.Customer, work)

    async def GetCustomer(
        self, request: accounts_pb2.GetCustomerRequest, context: Ctx
    ) -> accounts_pb2.Customer:
        ident = parse_id("id", request.id)

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Customer:
            return mapping.customer_to_proto(await service.get_customer(session, tenant_id, ident))

        return await self._read(work)

    async def ListCustomers(
        self, request: accounts_pb2.ListCustomersRequest, context: Ctx
    ) -> accounts_pb2.ListCustomersResponse:
        limit, after = page_size(request.page_size), _after(request.page_token)

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ListCustomersResponse:
            rows = await repo.page(session, Customer, tenant_id, after, limit)
            return accounts_pb2.ListCustomersResponse(
                customers=[mapping.customer_to_proto(r) for r in rows],
                next_page_token=_next_token(rows, limit),
            )

        return await self._read(work)

    async def UpdateCustomer(
        self, request: accounts_pb2.UpdateCustomerRequest, context: Ctx
    ) -> accounts_pb2.Customer:
        ident = parse_id("customer.id", request.customer.id)
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgumentError("update_mask", "name at least one field to change")
        unknown = [p for p in paths if p not in mapping.CUSTOMER_MASK_COLUMNS]
        if unknown:
            raise InvalidArgumentError("update_mask", f"fields that cannot be updated: {unknown}")
        # Validate the whole message only where the mask points: build a message with just
        # the masked fields set on top of a valid placeholder name.
        partial = accounts_pb2.Customer(name=request.customer.name or "-")
        request.update_mask.MergeMessage(
            request.customer, partial, replace_message_field=True, replace_repeated_field=True
        )
        columns = mapping.customer_columns(partial, "customer")
        changes = {
            column: columns[column]
            for path in paths
            for column in mapping.CUSTOMER_MASK_COLUMNS[path]
        }

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Customer:
            row = await service.update_customer(session, tenant_id, ident, changes)
            return mapping.customer_to_proto(row)

        return await self._once("UpdateCustomer", "", accounts_pb2.Customer, work)

    async def ImportCustomers(
        self, request_iterator: AsyncIterator[accounts_pb2.ImportCustomersRequest], context: Ctx
    ) -> accounts_pb2.ImportCustomersResponse:
        batch: list[dict[str, Any]] = []
        async for request in request_iterator:
            base = len(batch)
            batch.extend(
                mapping.customer_columns(customer, f"customers[{base + i}]")
                for i, customer in enumerate(request.customers)
            )

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ImportCustomersResponse:
            ids = await service.import_customers(session, tenant_id, batch)
            return accounts_pb2.ImportCustomersResponse(
                imported=len(ids), customer_ids=[str(i) for i in ids]
            )

        return await self._once("ImportCustomers", "", accounts_pb2.ImportCustomersResponse, work)

    # ------------------------------------------------------------ plans

    async def CreatePlan(
        self, request: accounts_pb2.CreatePlanRequest, context: Ctx
    ) -> accounts_pb2.Plan:
        columns = mapping.plan_columns(request.plan, "plan")

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Plan:
            return mapping.plan_to_proto(await service.create_plan(session, tenant_id, columns))

        return await self._once("CreatePlan", request.request_id, accounts_pb2.Plan, work)

    async def GetPlan(
        self, request: accounts_pb2.GetPlanRequest, context: Ctx
    ) -> accounts_pb2.Plan:
        ident = parse_id("id", request.id)

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Plan:
            return mapping.plan_to_proto(await service.get_plan(session, tenant_id, ident))

        return await self._read(work)

    async def ListPlans(
        self, request: accounts_pb2.ListPlansRequest, context: Ctx
    ) -> accounts_pb2.ListPlansResponse:
        limit, after = page_size(request.page_size), _after(request.page_token)

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ListPlansResponse:
            rows = await repo.page(session, Plan, tenant_id, after, limit)
            return accounts_pb2.ListPlansResponse(
                plans=[mapping.plan_to_proto(r) for r in rows],
                next_page_token=_next_token(rows, limit),
            )

        return await self._read(work)

    # ------------------------------------------------------------ subscriptions

    async def _subscription_proto(
        self, session: AsyncSession, tenant_id: uuid.UUID, rows: list[Subscription]
    ) -> list[accounts_pb2.Subscription]:
        ids = [r.id for r in rows]
        identities = await repo.identities_of(session, tenant_id, ids)
        history = await repo.history_of(session, tenant_id, ids)
        return [mapping.subscription_to_proto(r, identities[r.id], history[r.id]) for r in rows]

    async def CreateSubscription(
        self, request: accounts_pb2.CreateSubscriptionRequest, context: Ctx
    ) -> accounts_pb2.Subscription:
        sub = request.subscription
        customer_id = parse_id("subscription.customer_id", sub.customer_id)
        plan_id = parse_id("subscription.plan_id", sub.plan_id)
        status = parse_enum(
            "subscription.status",
            sub.status,
            accounts_pb2.SubscriptionStatus,
            allow_unspecified=True,
        )
        if sub.billing_anchor_day > 31:
            raise InvalidArgumentError("subscription.billing_anchor_day", "must be 1-31")
        time_zone = parse_time_zone("subscription.time_zone", sub.time_zone or "UTC")
        identities = mapping.radius_identities(sub, "subscription")

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Subscription:
            row = await service.create_subscription(
                session,
                tenant_id,
                customer_id=customer_id,
                plan_id=plan_id,
                status=status,
                anchor_day=sub.billing_anchor_day,
                time_zone=time_zone,
                identities=identities,
            )
            for hook in identity_hooks:
                await hook(session, tenant_id, row.id, identities)
            return (await self._subscription_proto(session, tenant_id, [row]))[0]

        return await self._once(
            "CreateSubscription", request.request_id, accounts_pb2.Subscription, work
        )

    async def GetSubscription(
        self, request: accounts_pb2.GetSubscriptionRequest, context: Ctx
    ) -> accounts_pb2.Subscription:
        ident = parse_id("id", request.id)

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Subscription:
            row = await service.get_subscription(session, tenant_id, ident)
            return (await self._subscription_proto(session, tenant_id, [row]))[0]

        return await self._read(work)

    async def ListSubscriptions(
        self, request: accounts_pb2.ListSubscriptionsRequest, context: Ctx
    ) -> accounts_pb2.ListSubscriptionsResponse:
        customer_id = optional_id("customer_id", request.customer_id)
        filters = [] if customer_id is None else [Subscription.customer_id == customer_id]
        scope = page_scope(customer_id)
        limit, after = page_size(request.page_size), _after(request.page_token, scope)

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ListSubscriptionsResponse:
            rows = await repo.page(session, Subscription, tenant_id, after, limit, *filters)
            return accounts_pb2.ListSubscriptionsResponse(
                subscriptions=await self._subscription_proto(session, tenant_id, rows),
                next_page_token=_next_token(rows, limit, scope),
            )

        return await self._read(work)

    async def UpdateSubscriptionStatus(
        self, request: accounts_pb2.UpdateSubscriptionStatusRequest, context: Ctx
    ) -> accounts_pb2.Subscription:
        ident = parse_id("id", request.id)
        status = parse_enum("status", request.status, accounts_pb2.SubscriptionStatus)
        at = timestamp_or_none(request, "effective_at") or utcnow()

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Subscription:
            row = await service.change_subscription_status(
                session, tenant_id, ident, status, at, request.reason
            )
            return (await self._subscription_proto(session, tenant_id, [row]))[0]

        return await self._once("UpdateSubscriptionStatus", "", accounts_pb2.Subscription, work)

    # ------------------------------------------------------------ invoices

    async def CreateInvoice(
        self, request: accounts_pb2.CreateInvoiceRequest, context: Ctx
    ) -> accounts_pb2.Invoice:
        invoice = request.invoice
        number = require("invoice.number", invoice.number)
        customer_id = parse_id("invoice.customer_id", invoice.customer_id)
        currency = invoice.currency_code.strip().upper()
        exponent = currency_exponent("invoice.currency_code", currency)
        status = (
            parse_enum(
                "invoice.status", invoice.status, accounts_pb2.InvoiceStatus, allow_unspecified=True
            )
            or accounts_pb2.INVOICE_STATUS_OPEN
        )
        if status not in (accounts_pb2.INVOICE_STATUS_DRAFT, accounts_pb2.INVOICE_STATUS_OPEN):
            raise InvalidArgumentError("invoice.status", "an invoice starts as draft or open")
        issued_at = timestamp_or_none(invoice, "issue_time") or utcnow()
        due_at = timestamp_or_none(invoice, "due_time") or issued_at + service.DEFAULT_PAYMENT_TERMS
        if due_at < issued_at:
            raise InvalidArgumentError("invoice.due_time", "is before the issue time")
        if not invoice.lines:
            raise InvalidArgumentError("invoice.lines", "an invoice needs at least one line")
        lines = []
        for i, line in enumerate(invoice.lines):
            where = f"invoice.lines[{i}]"
            quantity = parse_decimal(
                f"{where}.quantity", line.quantity or "1", places=6, integer_digits=14
            )
            line_currency, unit_micro = parse_money(
                f"{where}.unit_price", line.unit_price, unit_price=True, allow_negative=True
            )
            if line_currency != currency:
                raise InvalidArgumentError(
                    f"{where}.unit_price.currency_code", f"must be the invoice's {currency}"
                )
            lines.append(
                {
                    "description": require(f"{where}.description", line.description),
                    "quantity": quantity,
                    "unit_price_micro": unit_micro,
                    "amount_minor": service.line_amount(quantity, unit_micro, exponent),
                    "subscription_id": optional_id(
                        f"{where}.subscription_id", line.subscription_id
                    ),
                }
            )

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Invoice:
            row, rows = await service.create_invoice(
                session,
                tenant_id,
                number=number,
                customer_id=customer_id,
                currency=currency,
                status=status,
                issued_at=issued_at,
                due_at=due_at,
                lines=lines,
            )
            return mapping.invoice_to_proto(row, rows)

        return await self._once("CreateInvoice", request.request_id, accounts_pb2.Invoice, work)

    async def GetInvoice(
        self, request: accounts_pb2.GetInvoiceRequest, context: Ctx
    ) -> accounts_pb2.Invoice:
        ident = parse_id("id", request.id)

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Invoice:
            row = await service.get_invoice(session, tenant_id, ident)
            lines = await repo.lines_of(session, tenant_id, [row.id])
            return mapping.invoice_to_proto(row, lines[row.id])

        return await self._read(work)

    async def ListInvoices(
        self, request: accounts_pb2.ListInvoicesRequest, context: Ctx
    ) -> accounts_pb2.ListInvoicesResponse:
        customer_id = optional_id("customer_id", request.customer_id)
        filters = [] if customer_id is None else [Invoice.customer_id == customer_id]
        scope = page_scope(customer_id)
        limit, after = page_size(request.page_size), _after(request.page_token, scope)

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ListInvoicesResponse:
            rows = await repo.page(session, Invoice, tenant_id, after, limit, *filters)
            lines = await repo.lines_of(session, tenant_id, [r.id for r in rows])
            return accounts_pb2.ListInvoicesResponse(
                invoices=[mapping.invoice_to_proto(r, lines[r.id]) for r in rows],
                next_page_token=_next_token(rows, limit, scope),
            )

        return await self._read(work)

    async def RecordPayment(
        self, request: accounts_pb2.RecordPaymentRequest, context: Ctx
    ) -> accounts_pb2.Payment:
        invoice_id = parse_id("invoice_id", request.invoice_id)
        currency, amount = parse_money("amount", request.amount)
        received_at = timestamp_or_none(request, "received_time") or utcnow()

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Payment:
            row = await service.record_payment(
                session, tenant_id, invoice_id, currency, amount, received_at, request.reference
            )
            return mapping.payment_to_proto(row)

        return await self._once("RecordPayment", request.request_id, accounts_pb2.Payment, work)

    # ------------------------------------------------------------ disputes

    async def OpenDispute(
        self, request: accounts_pb2.OpenDisputeRequest, context: Ctx
    ) -> accounts_pb2.Dispute:
        customer_id = parse_id("customer_id", request.customer_id)
        invoice_id = optional_id("invoice_id", request.invoice_id)
        reason = require("reason", request.reason)
        currency, amount = "", None
        if request.HasField("amount"):
            currency, amount = parse_money("amount", request.amount)
        opened_at = timestamp_or_none(request, "open_time") or utcnow()

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Dispute:
            row = await service.open_dispute(
                session,
                tenant_id,
                customer_id=customer_id,
                invoice_id=invoice_id,
                reason=reason,
                currency=currency,
                amount_minor=amount,
                opened_at=opened_at,
            )
            return mapping.dispute_to_proto(row)

        return await self._once("OpenDispute", request.request_id, accounts_pb2.Dispute, work)

    async def ResolveDispute(
        self, request: accounts_pb2.ResolveDisputeRequest, context: Ctx
    ) -> accounts_pb2.Dispute:
        ident = parse_id("id", request.id)
        resolved_at = timestamp_or_none(request, "resolve_time") or utcnow()

        async def work(session: AsyncSession, tenant_id: uuid.UUID) -> accounts_pb2.Dispute:
            row = await service.resolve_dispute(
                session, tenant_id, ident, request.resolution, resolved_at
            )
            return mapping.dispute_to_proto(row)

        return await self._once("ResolveDispute", "", accounts_pb2.Dispute, work)

    async def ListDisputes(
        self, request: accounts_pb2.ListDisputesRequest, context: Ctx
    ) -> accounts_pb2.ListDisputesResponse:
        filters: list[Any] = []
        customer_id = optional_id("customer_id", request.customer_id)
        if customer_id is not None:
            filters.append(Dispute.customer_id == customer_id)
        if request.open_only:
            filters.append(Dispute.status == accounts_pb2.DISPUTE_STATUS_OPEN)
        scope = page_scope(customer_id, request.open_only)
        limit, after = page_size(request.page_size), _after(request.page_token, scope)

        async def work(
            session: AsyncSession, tenant_id: uuid.UUID
        ) -> accounts_pb2.ListDisputesResponse:
            rows = await repo.page(session, Dispute, tenant_id, after, limit, *filters)
            return accounts_pb2.ListDisputesResponse(
                disputes=[mapping.dispute_to_proto(r) for r in rows],
                next_page_token=_next_token(rows, limit, scope),
            )

        return await self._read(work)


def register(server: grpc.aio.Server, db: Database) -> None:
    accounts_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(db), server)
