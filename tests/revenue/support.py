"""Test support for revenue and bss: ORM seeding and a revenue-only gRPC server.

Seeding inserts rows directly (not through AccountService), so these tests depend only on
the Foundation tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass

import grpc

from isp_rating.v1 import revenue_pb2, revenue_pb2_grpc
from server.accounts.models import Customer, Dispute, Plan, Subscription
from server.auth import ALL_SCOPES, Authenticator, create_key, create_tenant
from server.db.database import Database
from server.interceptors import ServiceInterceptor
from server.revenue.service import RevenueService
from server.revenue.servicer import Context, RevenueServicer

ACTIVE = 2
SUSPENDED = 3
MONTHLY, QUARTERLY, ANNUAL = 1, 2, 3
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

_numbers = itertools.count(1)


@dataclass
class Tenant:
    tenant_id: uuid.UUID
    key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


async def make_tenant(db: Database, scopes: list[str] | None = None) -> Tenant:
    tenant_id = await create_tenant(db, f"rev-{uuid.uuid4().hex[:8]}")
    return Tenant(tenant_id, await create_key(db, tenant_id, "test", list(scopes or ALL_SCOPES)))


@dataclass
class Seeder:
    """Customers, plans, subscriptions and disputes of one tenant, as ORM rows."""

    db: Database
    tenant_id: uuid.UUID

    async def customer(self) -> uuid.UUID:
        customer_id = uuid.uuid4()
        async with self.db.transaction() as session:
            session.add(
                Customer(
                    tenant_id=self.tenant_id,
                    id=customer_id,
                    account_number=f"A{next(_numbers):08d}",
                    name="Test Customer",
                )
            )
        return customer_id

    async def plan(
        self, price_minor: int, currency: str = "GBP", period: int = MONTHLY, name: str = ""
    ) -> uuid.UUID:
        plan_id = uuid.uuid4()
        code = f"P{next(_numbers)}"
        async with self.db.transaction() as session:
            session.add(
                Plan(
                    tenant_id=self.tenant_id,
                    id=plan_id,
                    code=code,
                    name=name or code,
                    currency=currency,
                    recurring_price_minor=price_minor,
                    billing_period=period,
                )
            )
        return plan_id

    async def subscribe(
        self,
        customer_id: uuid.UUID,
        plan_id: uuid.UUID,
        status: int = ACTIVE,
        created_at: dt.datetime = T0,
    ) -> uuid.UUID:
        sub_id = uuid.uuid4()
        async with self.db.transaction() as session:
            session.add(
                Subscription(
                    tenant_id=self.tenant_id,
                    id=sub_id,
                    customer_id=customer_id,
                    plan_id=plan_id,
                    status=status,
                    billing_anchor_day=1,
                    time_zone="UTC",
                    created_at=created_at,
                )
            )
        return sub_id

    async def priced_customer(
        self, price_minor: int, currency: str = "GBP", period: int = MONTHLY, name: str = ""
    ) -> uuid.UUID:
        customer_id = await self.customer()
        await self.subscribe(customer_id, await self.plan(price_minor, currency, period, name))
        return customer_id

    async def dispute(
        self,
        customer_id: uuid.UUID,
        opened_at: dt.datetime,
        resolved_at: dt.datetime | None = None,
    ) -> uuid.UUID:
        dispute_id = uuid.uuid4()
        async with self.db.transaction() as session:
            session.add(
                Dispute(
                    tenant_id=self.tenant_id,
                    id=dispute_id,
                    customer_id=customer_id,
                    reason="billing",
                    status=1 if resolved_at is None else 2,
                    opened_at=opened_at,
                    resolved_at=resolved_at,
                )
            )
        return dispute_id


class RecordingServicer(RevenueServicer):
    """The real servicer, noting how many ids each GetRevenueAtRisk call carried."""

    def __init__(self, service: RevenueService) -> None:
        super().__init__(service)
        self.batch_sizes: list[int] = []

    async def GetRevenueAtRisk(
        self, request: revenue_pb2.GetRevenueAtRiskRequest, context: Context
    ) -> revenue_pb2.GetRevenueAtRiskResponse:
        self.batch_sizes.append(len(request.customer_ids))
        return await super().GetRevenueAtRisk(request, context)


@dataclass
class RevenueServer:
    """A real grpc.aio server with the real interceptor and only RevenueService on it."""

    server: grpc.aio.Server
    target: str
    servicer: RecordingServicer

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_revenue_server(
    db: Database,
    credentials: grpc.ServerCredentials | None = None,
    listen: str = "127.0.0.1:0",
) -> RevenueServer:
    server = grpc.aio.server(interceptors=[ServiceInterceptor(Authenticator(db))])
    servicer = RecordingServicer(RevenueService(db))
    revenue_pb2_grpc.add_RevenueServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    await server.start()
    return RevenueServer(server, f"{listen.rpartition(':')[0]}:{port}", servicer)
