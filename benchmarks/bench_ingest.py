"""StreamAccounting end to end: a server process on PostgreSQL (and SQLite), durable acks.

Run: pytest benchmarks/bench_ingest.py --benchmark-only -s
Each round streams 30 pre-serialized batches of 10,000 Interim-Updates (100,000 sessions
on 16 NASes) over loopback with 2 batches in flight; it reports records/s and the p50/p99
ack latency. Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.conftest import ServerProcess, start_server, stop_server
from benchmarks.loadgen import LoadResult, build_batches, run_load

BATCH = 10_000
BATCHES = 30
WINDOW = 2
_round = itertools.count()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("bench-sqlite")
    server = start_server(f"sqlite:///{workdir / 'rating.db'}", workdir)
    try:
        yield server
    finally:
        stop_server(server)


def _ingest(benchmark: pytest.FixtureRequest, server: ServerProcess, window: int) -> None:
    results: list[LoadResult] = []

    def one_round() -> None:
        batches = build_batches(
            100_000, BATCH, BATCHES, tag=f"r{next(_round)}-{uuid.uuid4().hex[:4]}-"
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
        f"\n{server.database_url.split(':')[0]} window={window}: {rate:,.0f} records/s, "
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


def test_stream_accounting_into_sqlite(
    benchmark: pytest.FixtureRequest, sqlite_server: ServerProcess
) -> None:
    _ingest(benchmark, sqlite_server, WINDOW)
