"""RevenueService through the bss adapter, with 1M customers in PostgreSQL.

    pytest benchmarks/bench_revenue.py --benchmark-only -s

The server is `rating serve` in its own process on its own database (benchmarks/conftest.py
creates and drops it); 1M customers are loaded by COPY; the client is the
RatingServiceBSSAdapter. p50/p95/p99 are printed and kept in extra_info.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from benchmarks.conftest import ServerProcess
from benchmarks.revenue_load import load
from bss.credentials import TokenSource
from bss.grpc_adapter import RatingServiceBSSAdapter
from server.auth import parse_key

ROUNDS = int(os.environ.get("RATING_BENCH_ROUNDS", "2000"))
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Env:
    target: str
    tenant_id: uuid.UUID
    key: str
    customer_ids: list[uuid.UUID]
    dsn: str


async def _load(dsn: str, key: str) -> tuple[uuid.UUID, list[uuid.UUID]]:
    key_id, _ = parse_key(key)
    conn = await asyncpg.connect(dsn)
    try:
        tenant_id = await conn.fetchval("SELECT tenant_id FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()
    started = time.perf_counter()
    data = await load(dsn, tenant_id)
    print(f"\nloaded {len(data.customer_ids)} customers in {time.perf_counter() - started:.1f}s")
    return tenant_id, data.customer_ids


@pytest.fixture(scope="module")
def env(pg_server: ServerProcess) -> Env:
    """The shared server process (`rating serve`) on its own database, plus 1M customers."""
    tenant_id, ids = asyncio.run(_load(pg_server.database_url, pg_server.key))
    # The client keeps a sample only, frozen out of the GC: a million live UUIDs would make
    # the benchmark process's own gen-2 collections show up as the adapter's tail latency.
    sample = random.Random(7).sample(ids, 100_000)
    del ids
    gc.collect()
    gc.freeze()
    return Env(pg_server.target, tenant_id, pg_server.key, sample, pg_server.database_url)


def _percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49] * 1000, 3),
        "p95_ms": round(cuts[94] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
    }


def _measure(
    benchmark: Any,
    env: Env,
    label: str,
    make_call: Callable[[RatingServiceBSSAdapter, int], Coroutine[Any, Any, object]],
) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    adapter = RatingServiceBSSAdapter(
        env.target,
        env.tenant_id,
        TokenSource(env_var="K", environ={"K": env.key}),
        insecure=True,
    )
    samples: list[float] = []
    counter = iter(range(10**9))

    def call() -> None:
        i = next(counter)
        started = time.perf_counter()
        loop.run_until_complete(make_call(adapter, i))
        samples.append(time.perf_counter() - started)

    try:
        for _ in range(200):  # warm the channel, the pool and the statement caches
            call()
        samples.clear()
        benchmark.pedantic(call, rounds=ROUNDS, iterations=1)
    finally:
        loop.run_until_complete(adapter.close())
        loop.close()
    figures = _percentiles(samples)
    benchmark.extra_info.update(figures)
    print(f"\n{label}: {figures} over {len(samples)} calls")
    return figures


def _batches(env: Env, size: int, count: int = 500) -> list[list[uuid.UUID]]:
    rng = random.Random(size)
    # Mostly known customers, a few unknown ids, as an outage's impacted list would be.
    return [
        rng.sample(env.customer_ids, size - size // 20) + [uuid.uuid4() for _ in range(size // 20)]
        for _ in range(count)
    ]


def test_revenue_at_risk_200_ids_idle(benchmark: Any, env: Env) -> None:
    batches = _batches(env, 200)
    figures = _measure(
        benchmark,
        env,
        "GetRevenueAtRisk x200 idle",
        lambda a, i: a.get_revenue_at_risk(batches[i % len(batches)]),
    )
    assert figures["p95_ms"] < 2000  # the contract; the target (5 ms) is reported, not asserted


def test_billing_account_single_idle(benchmark: Any, env: Env) -> None:
    rng = random.Random(1)
    ids = rng.sample(env.customer_ids, 2000)
    figures = _measure(
        benchmark,
        env,
        "GetBillingAccount idle",
        lambda a, i: a.get_billing_account(ids[i % len(ids)]),
    )
    assert figures["p95_ms"] < 500


def test_revenue_at_risk_1000_ids_idle(benchmark: Any, env: Env) -> None:
    batches = _batches(env, 1000, 100)
    _measure(
        benchmark,
        env,
        "GetRevenueAtRisk x1000 idle (5 sub-calls)",
        lambda a, i: a.get_revenue_at_risk(batches[i % len(batches)]),
    )


def test_check_disputes_200_ids_idle(benchmark: Any, env: Env) -> None:
    batches = _batches(env, 200)
    _measure(
        benchmark,
        env,
        "CheckDisputes x200 idle",
        lambda a, i: a.check_disputes(batches[i % len(batches)]),
    )


def test_revenue_at_risk_200_ids_under_ingest(benchmark: Any, env: Env) -> None:
    """Pedkai's call while the real StreamAccounting load generator runs flat out against
    the same server and database (durable acks, 10k-record batches, two in flight)."""
    batches = _batches(env, 200)
    ingest = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.loadgen"),
            *("--target", env.target, "--key", env.key, "--batches", "80", "--window", "2"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert ingest.stderr is not None
        assert "streaming" in ingest.stderr.readline()  # batches are built; load starts
        time.sleep(3)  # let the first batches reach the database
        figures = _measure(
            benchmark,
            env,
            "GetRevenueAtRisk x200 under ingest",
            lambda a, i: a.get_revenue_at_risk(batches[i % len(batches)]),
        )
        assert ingest.poll() is None, "the ingest load ended before the measurement did"
    finally:
        ingest.terminate()
        ingest.communicate(timeout=30)
    assert figures["p95_ms"] < 2000
