"""Revenue benchmark support: 1M customers loaded by asyncpg COPY, and a write load.

python -m benchmarks.revenue_load ingest DSN SECONDS      # the ingest-like write load
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
import time
import uuid
from dataclasses import dataclass

import asyncpg

CUSTOMERS = 1_000_000
PLANS = 60
SECOND_SUBSCRIPTION_EVERY = 5  # 20% of customers have a second (quarterly/annual) line
SUSPENDED_EVERY = 20  # 5% have only a suspended subscription: unpriced
DISPUTE_EVERY = 50  # 2% have a dispute


@dataclass
class Dataset:
    tenant_id: uuid.UUID
    customer_ids: list[uuid.UUID]


async def load(dsn: str, tenant_id: uuid.UUID, customers: int = CUSTOMERS) -> Dataset:
    """Plans, customers, subscriptions and disputes of one tenant, by binary COPY."""
    rng = random.Random(4)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    conn = await asyncpg.connect(dsn)
    try:
        plans = [
            (
                tenant_id,
                uuid.UUID(int=rng.getrandbits(128)),
                f"P{i}",
                f"Plan {i}",
                "GBP",
                rng.randrange(1500, 9000) * (1, 3, 12)[i % 3],
                i % 3 + 1,
                "{}",
                now,
            )
            for i in range(PLANS)
        ]
        await conn.copy_records_to_table(
            "plans",
            records=plans,
            columns=[
                "tenant_id",
                "id",
                "code",
                "name",
                "currency",
                "recurring_price_minor",
                "billing_period",
                "tariff",
                "created_at",
            ],
        )
        ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(customers)]
        await conn.copy_records_to_table(
            "customers",
            records=(
                (tenant_id, cid, f"A{n:09d}", "Bench Customer", "", "", "[]", "", "", "", "GB",
                 0, "", "", 0, 0, 100, 20, "[]", "", "", "", 0, now, now)
                for n, cid in enumerate(ids)
            ),
            columns=[
                "tenant_id", "id", "account_number", "name", "email", "phone", "address_lines",
                "city", "state", "postal_code", "country_code", "installation_status",
                "installation_technician", "installation_notes", "connection_type",
                "last_mile_technology", "plan_speed_down_mbps", "plan_speed_up_mbps", "devices",
                "bandwidth_profile", "static_ipv4", "ipv6_prefix", "outage_count_30d",
                "created_at", "updated_at",
            ],
        )  # fmt: skip

        def subscriptions() -> object:
            for n, cid in enumerate(ids):
                status = 3 if n % SUSPENDED_EVERY == 0 else 2
                plan = plans[n % PLANS][1]
                yield (tenant_id, uuid.uuid4(), cid, plan, status, 1, "UTC", now, 1)
                if n % SECOND_SUBSCRIPTION_EVERY == 1:
                    extra = plans[(n * 7 + 1) % PLANS][1]
                    yield (tenant_id, uuid.uuid4(), cid, extra, 2, 1, "UTC", now, 1)

        await conn.copy_records_to_table(
            "subscriptions",
            records=subscriptions(),
            columns=[
                "tenant_id", "id", "customer_id", "plan_id", "status", "billing_anchor_day",
                "time_zone", "created_at", "version",
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "disputes",
            records=(
                (tenant_id, uuid.uuid4(), cid, "billing", "", 1, now - dt.timedelta(days=n % 90),
                 None if n % 3 else now - dt.timedelta(days=n % 40), "")
                for n, cid in enumerate(ids[::DISPUTE_EVERY])
            ),
            columns=[
                "tenant_id", "id", "customer_id", "reason", "currency", "status", "opened_at",
                "resolved_at", "resolution",
            ],
        )  # fmt: skip
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return Dataset(tenant_id, ids)


async def ingest(dsn: str, seconds: float, connections: int = 2, batch: int = 5000) -> None:
    """Stand-in for StreamAccounting at full speed: batched COPY + commit, back to back, into
    a ledger-shaped table of the same database (UsageService has not landed yet)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE UNLOGGED TABLE IF NOT EXISTS bench_ledger (tenant_id uuid, subscription_id uuid,"
        " content_key bytea, event_at timestamptz, bytes_in bigint, bytes_out bigint)"
    )
    await conn.close()
    tenant, now = uuid.uuid4(), dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + seconds
    written = 0

    async def writer() -> None:
        nonlocal written
        c = await asyncpg.connect(dsn)
        try:
            while time.monotonic() < deadline:
                rows = [
                    (tenant, uuid.uuid4(), random.randbytes(16), now, i * 1000, i * 300)
                    for i in range(batch)
                ]
                async with c.transaction():
                    await c.copy_records_to_table("bench_ledger", records=rows)
                written += batch
        finally:
            await c.close()

    await asyncio.gather(*(writer() for _ in range(connections)))
    print(f"ingested {written} rows in {seconds:.0f}s", flush=True)


if __name__ == "__main__":
    command, target, arg = sys.argv[1:4]
    if command == "ingest":
        asyncio.run(ingest(target, float(arg)))
    else:
        raise SystemExit(f"unknown command {command}")
