"""RevenueService over gRPC: proto ⇄ domain only; the rules live in service.py."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from isp_rating.v1 import common_pb2, revenue_pb2, revenue_pb2_grpc
from server import priority
from server.auth import principal
from server.currency import exponent
from server.db.database import Database
from server.errors import InvalidArgumentError, PermissionDeniedError
from server.revenue.service import MAX_BATCH_IDS, CurrencySum, RevenueService
from server.validation import (
    currency_exponent,
    format_amount,
    parse_id,
    timestamp_or_none,
)

# A client bound to one tenant (the bss adapter) names it; a key of another tenant is refused.
TENANT_METADATA = "x-tenant-id"

Context = grpc.aio.ServicerContext[Any, Any]


def _money(code: str, amount_minor: int) -> common_pb2.Money:
    return common_pb2.Money(
        currency_code=code, amount=format_amount(amount_minor, exponent(code) or 0)
    )


def _currency_total(code: str, total: CurrencySum) -> revenue_pb2.CurrencyTotal:
    return revenue_pb2.CurrencyTotal(
        total=_money(code, total.amount_minor), customer_count=total.customer_count
    )


def _ids(field: str, values: Any) -> list[uuid.UUID]:
    if len(values) > MAX_BATCH_IDS:
        raise InvalidArgumentError(field, f"at most {MAX_BATCH_IDS} ids per request")
    return [parse_id(f"{field}[{i}]", value) for i, value in enumerate(values)]


def _tenant(context: Context) -> uuid.UUID:
    """The caller's tenant; checked against the tenant the client says it is bound to."""
    tenant_id = principal().tenant_id
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA:
            claimed = value if isinstance(value, str) else value.decode()
            if parse_id(TENANT_METADATA, claimed) != tenant_id:
                raise PermissionDeniedError("this key belongs to another tenant")
    return tenant_id


class RevenueServicer(revenue_pb2_grpc.RevenueServiceServicer):
    def __init__(self, service: RevenueService) -> None:
        self._service = service

    async def GetBillingAccount(
        self, request: revenue_pb2.GetBillingAccountRequest, context: Context
    ) -> revenue_pb2.BillingAccount:
        priority.note_interactive()
        tenant_id = _tenant(context)
        customer_id = parse_id("customer_id", request.customer_id)
        account = await self._service.billing_account(tenant_id, customer_id)
        fees = account.fee.fees_minor
        reply = revenue_pb2.BillingAccount(
            customer_id=str(account.customer_id),
            account_id=str(account.customer_id),
            account_number=account.account_number,
            plan_name=account.fee.plan_name,
            monthly_fees=[_money(code, amount) for code, amount in fees.items()],
            active_subscription_count=account.fee.subscription_count,
        )
        if len(fees) == 1:
            ((code, amount),) = fees.items()
            reply.monthly_fee.CopyFrom(_money(code, amount))
        return reply

    async def GetRevenueAtRisk(
        self, request: revenue_pb2.GetRevenueAtRiskRequest, context: Context
    ) -> revenue_pb2.GetRevenueAtRiskResponse:
        priority.note_interactive()
        tenant_id = _tenant(context)
        ids = _ids("customer_ids", request.customer_ids)
        currency: str | None = None
        if request.currency_code:
            currency = request.currency_code.strip().upper()
            currency_exponent("currency_code", currency)
        result = await self._service.revenue_at_risk(tenant_id, ids, currency)
        reply = revenue_pb2.GetRevenueAtRiskResponse(
            totals=[_currency_total(code, total) for code, total in result.totals.items()],
            priced_customer_count=result.priced_count,
            unpriced_customer_count=result.unpriced_count,
            distinct_customer_count=result.distinct_count,
            mixed_currency_customer_count=result.mixed_currency_count,
        )
        if currency is not None and result.in_currency is not None:
            reply.in_currency.CopyFrom(_currency_total(currency, result.in_currency))
        return reply

    async def CheckDisputes(
        self, request: revenue_pb2.CheckDisputesRequest, context: Context
    ) -> revenue_pb2.CheckDisputesResponse:
        priority.note_interactive()
        tenant_id = _tenant(context)
        ids = _ids("customer_ids", request.customer_ids)
        as_of = timestamp_or_none(request, "as_of")
        found = await self._service.disputing(tenant_id, ids, as_of)
        return revenue_pb2.CheckDisputesResponse(customer_ids=[str(i) for i in found])


def register(server: grpc.aio.Server, db: Database) -> None:
    revenue_pb2_grpc.add_RevenueServiceServicer_to_server(
        RevenueServicer(RevenueService(db)), server
    )
