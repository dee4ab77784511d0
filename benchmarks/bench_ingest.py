"""StreamAccounting end to end: a server process on PostgreSQL (and SQLite), durable acks.

Run: pytest benchmarks/bench_ingest.py --benchmark-only -s
Each round streams 30 pre-serialized batches of 10,000 Interim-Updates (100,000 sessions
on 16 NASes) over loopback with 2 batches in flight; it reports records/s and the p50/p99
ack latency. The load generator's users (user0..user99999) are unknown, so their usage is
unattributed, except in the `attributed` case: its server has 10,000 subscriptions holding
10 of those User-Names each, so every delta goes to a subscription's bucket. The last case
first sweeps every session closed and out of the engine, so each new session id of a round
costs a lookup of its newest stored instance (a NAS the engine no longer holds
completely). Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.conftest import ServerProcess, pg_database_server, start_server, stop_server
from benchmarks.loadgen import LoadResult, build_batches, run_load
from isp_rating.v1 import accounts_pb2, accounts_pb2_grpc, usage_pb2_grpc
from isp_rating.v1 import usage_pb2 as pb
from isp_rating.v1.common_pb2 import Money

BATCH = 10_000
BATCHES = 30
WINDOW = 2
SESSIONS = 100_000
USERS_PER_SUBSCRIPTION = 10
_round = itertools.count()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("bench-sqlite")
    server = start_server(f"sqlite:///{workdir / 'rating.db'}", workdir)
    try:
        yield server
    finally:
        stop_server(server)


def _ingest(
    benchmark: pytest.FixtureRequest, server: ServerProcess, window: int, label: str = ""
) -> None:
    results: list[LoadResult] = []

    def one_round() -> None:
        batches = build_batches(
            SESSIONS, BATCH, BATCHES, tag=f"r{next(_round)}-{uuid.uuid4().hex[:4]}-"
        )
        result = asyncio.run(
            run_load(server.target, server.key, [batches], window, BATCH * BATCHES)
        )
        assert result.accepted == BATCH * BATCHES
        results.append(result)

    benchmark.pedantic(one_round, rounds=3, iterations=1)  # type: ignore[attr-defined]
    rate = statistics.median(r.records_per_s for r in results)
    p50 = statistics.median(r.ack_p50_ms for r in results)
    p99 = statistics.median(r.ack_p99_ms for r in results)
    print(
        f"\n{server.database_url.split(':')[0]}{label} window={window}: {rate:,.0f} records/s, "
        f"ack p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    )


def test_stream_accounting_into_postgresql(
    benchmark: pytest.FixtureRequest, pg_server: ServerProcess
) -> None:
    _ingest(benchmark, pg_server, WINDOW)


def test_ack_latency_of_10k_batches_into_postgresql(
    benchmark: pytest.FixtureRequest, pg_server: ServerProcess
) -> None:
    _ingest(benchmark, pg_server, 1)


async def _subscribe_every_user(server: ServerProcess) -> None:
    """Subscriptions for the load generator's User-Names (see loadgen.build_batches)."""
    metadata = (("authorization", f"Bearer {server.key}"),)
    async with grpc.aio.insecure_channel(server.target) as channel:
        accounts = accounts_pb2_grpc.AccountServiceStub(channel)
        customer = await accounts.CreateCustomer(
            accounts_pb2.CreateCustomerRequest(customer=accounts_pb2.Customer(name="Bench")),
            metadata=metadata,
        )
        plan = await accounts.CreatePlan(
            accounts_pb2.CreatePlanRequest(
                plan=accounts_pb2.Plan(
                    code="bench",
                    name="Bench",
                    recurring_price=Money(currency_code="GBP", amount="30.00"),
                    billing_period=accounts_pb2.BILLING_PERIOD_MONTHLY,
                )
            ),
            metadata=metadata,
        )
        kind = accounts_pb2.RADIUS_IDENTITY_KIND_USER_NAME
        firsts = iter(range(0, SESSIONS, USERS_PER_SUBSCRIPTION))

        async def worker() -> None:
            for first in firsts:
                users = range(first, first + USERS_PER_SUBSCRIPTION)
                subscription = accounts_pb2.Subscription(
                    customer_id=customer.id,
                    plan_id=plan.id,
                    radius_identities=[
                        accounts_pb2.RadiusIdentity(kind=kind, value=f"user{u}") for u in users
                    ],
                )
                await accounts.CreateSubscription(
                    accounts_pb2.CreateSubscriptionRequest(subscription=subscription),
                    metadata=metadata,
                )

        await asyncio.gather(*(worker() for _ in range(8)))


@pytest.fixture(scope="module")
def attributed_pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pg_database_server(tmp_path_factory.mktemp("bench-attributed")) as server:
        asyncio.run(_subscribe_every_user(server))
        yield server


def test_ack_latency_of_10k_attributed_batches_into_postgresql(
    benchmark: pytest.FixtureRequest, attributed_pg_server: ServerProcess
) -> None:
    _ingest(benchmark, attributed_pg_server, 1, label=" (attributed)")


def test_stream_accounting_into_sqlite(
    benchmark: pytest.FixtureRequest, sqlite_server: ServerProcess
) -> None:
    _ingest(benchmark, sqlite_server, WINDOW)


async def _sweep_everything(server: ServerProcess) -> int:
    metadata = (("authorization", f"Bearer {server.key}"),)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        now = Timestamp()
        now.GetCurrentTime()
        reply = await stub.SweepStaleSessions(
            pb.SweepStaleSessionsRequest(as_of=now), metadata=metadata, timeout=600
        )
    return int(reply.closed)


def test_stream_accounting_into_postgresql_after_a_sweep_forgot_old_sessions(
    benchmark: pytest.FixtureRequest, pg_server: ServerProcess
) -> None:
    # Runs last on the module's server: the sweep closes everything the cases before left.
    warm = build_batches(100_000, BATCH, 10, tag=f"warm-{uuid.uuid4().hex[:4]}-")
    asyncio.run(run_load(pg_server.target, pg_server.key, [warm], WINDOW, BATCH * 10))
    assert asyncio.run(_sweep_everything(pg_server)) >= 100_000
    _ingest(benchmark, pg_server, WINDOW, label=" (NASes swept, ids recalled)")
