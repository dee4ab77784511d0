"""Fixtures shared by tests/revenue and tests/bss: a revenue server on the session backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from isp_rating.v1 import revenue_pb2_grpc
from server.db.database import Database
from tests.revenue.support import RevenueServer, Seeder, Tenant, make_tenant, start_revenue_server


@pytest.fixture(scope="session")
async def revenue_db(backend: object) -> AsyncIterator[Database]:
    db = Database(backend.url)  # type: ignore[attr-defined]
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
async def revenue_server(revenue_db: Database) -> AsyncIterator[RevenueServer]:
    running = await start_revenue_server(revenue_db)
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def revenue_stub(
    revenue_server: RevenueServer,
) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(revenue_server.target) as channel:
        yield revenue_pb2_grpc.RevenueServiceStub(channel)


@pytest.fixture
async def rev_tenant(revenue_db: Database) -> Tenant:
    return await make_tenant(revenue_db)


@pytest.fixture
def seed(revenue_db: Database, rev_tenant: Tenant) -> Seeder:
    return Seeder(revenue_db, rev_tenant.tenant_id)
