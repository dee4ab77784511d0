"""Harnesses of the conformance suite: every adapter, with a way to seed it and to break it.

`harness` runs each conformance test against the MockBSSAdapter and against the
RatingServiceBSSAdapter talking to a real server on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from bss.contract import BSSAdapter
from bss.credentials import TokenSource
from bss.grpc_adapter import RatingServiceBSSAdapter
from bss.mock_adapter import MockBSSAdapter
from server.currency import exponent
from server.db.database import Database
from tests.revenue.fixtures import rev_tenant, revenue_db, revenue_server, revenue_stub, seed
from tests.revenue.support import (
    SUSPENDED,
    RevenueServer,
    Seeder,
    make_tenant,
    start_revenue_server,
)

__all__ = ["rev_tenant", "revenue_db", "revenue_server", "revenue_stub", "seed"]


class Harness(abc.ABC):
    """One adapter under test, and the data and faults behind it."""

    adapter: BSSAdapter
    is_estimate: bool
    source: str

    @abc.abstractmethod
    async def priced(self, monthly_fee: str, currency: str = "GBP", plan: str = "") -> uuid.UUID:
        """A customer whose monthly fee is exactly `monthly_fee`."""

    @abc.abstractmethod
    async def unpriced(self) -> uuid.UUID:
        """A known customer without billing data (no active subscription)."""

    @abc.abstractmethod
    async def dispute(
        self, customer_id: uuid.UUID, opened_at: dt.datetime, resolved_at: dt.datetime | None
    ) -> None: ...

    @abc.abstractmethod
    async def other_tenant(self) -> BSSAdapter:
        """An adapter of another tenant over the same BSS."""

    @abc.abstractmethod
    async def stop_bss(self) -> None:
        """The BSS becomes unreachable."""

    def batch_sizes(self) -> list[int] | None:
        """Ids per call the BSS received, when the harness can see them."""
        return None


class MockHarness(Harness):
    is_estimate = True
    source = "mock"

    def __init__(self) -> None:
        self.mock = MockBSSAdapter()
        self.adapter = self.mock

    async def priced(self, monthly_fee: str, currency: str = "GBP", plan: str = "") -> uuid.UUID:
        customer_id = uuid.uuid4()
        self.mock.seed_account(
            customer_id, monthly_fee=monthly_fee, currency=currency, plan_name=plan or None
        )
        return customer_id

    async def unpriced(self) -> uuid.UUID:
        customer_id = uuid.uuid4()
        self.mock.seed_account(customer_id, monthly_fee=None)
        return customer_id

    async def dispute(
        self, customer_id: uuid.UUID, opened_at: dt.datetime, resolved_at: dt.datetime | None
    ) -> None:
        self.mock.seed_dispute(customer_id, opened_at, resolved_at)

    async def other_tenant(self) -> BSSAdapter:
        return MockBSSAdapter()

    async def stop_bss(self) -> None:
        self.mock.available = False


class RatingServiceHarness(Harness):
    is_estimate = False
    source = "isp-rating"

    def __init__(self, db: Database, server: RevenueServer, seeder: Seeder, key: str) -> None:
        self.db, self.server, self.seeder = db, server, seeder
        self.adapters: list[RatingServiceBSSAdapter] = []
        self.adapter = self._adapter(seeder.tenant_id, key)

    def _adapter(self, tenant_id: uuid.UUID, key: str) -> RatingServiceBSSAdapter:
        adapter = RatingServiceBSSAdapter(
            self.server.target,
            tenant_id,
            TokenSource(env_var="TOKEN", environ={"TOKEN": key}),
            insecure=True,
        )
        self.adapters.append(adapter)
        return adapter

    async def priced(self, monthly_fee: str, currency: str = "GBP", plan: str = "") -> uuid.UUID:
        minor = Decimal(monthly_fee).scaleb(exponent(currency) or 0)
        assert minor == minor.to_integral_value()
        return await self.seeder.priced_customer(int(minor), currency, name=plan)

    async def unpriced(self) -> uuid.UUID:
        customer_id = await self.seeder.customer()
        await self.seeder.subscribe(customer_id, await self.seeder.plan(999), status=SUSPENDED)
        return customer_id

    async def dispute(
        self, customer_id: uuid.UUID, opened_at: dt.datetime, resolved_at: dt.datetime | None
    ) -> None:
        await self.seeder.dispute(customer_id, opened_at, resolved_at)

    async def other_tenant(self) -> BSSAdapter:
        other = await make_tenant(self.db)
        return self._adapter(other.tenant_id, other.key)

    async def stop_bss(self) -> None:
        await self.server.stop()

    def batch_sizes(self) -> list[int] | None:
        return self.server.servicer.batch_sizes

    async def close(self) -> None:
        for adapter in self.adapters:
            await adapter.close()
        await self.server.stop()


@pytest.fixture(params=["mock", "isp-rating"])
async def harness(request: pytest.FixtureRequest, revenue_db: Database) -> AsyncIterator[Harness]:
    """Each adapter; the mock runs once per backend too (cheap, and keeps ids simple)."""
    if request.param == "mock":
        yield MockHarness()
        return
    db = revenue_db
    tenant = await make_tenant(db)
    # A server of its own per test, so that a test may stop it.
    server = await start_revenue_server(db)
    running = RatingServiceHarness(db, server, Seeder(db, tenant.tenant_id), tenant.key)
    try:
        yield running
    finally:
        await running.close()
