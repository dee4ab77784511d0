"""ImportCustomers: 100k customers streamed into the server on PostgreSQL (target ≥ 20k/s)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from benchmarks.conftest import ServerProcess
from benchmarks.loadgen_customers import customers, import_customers

COUNT = 100_000
_round = itertools.count()


def test_import_100k_customers_into_postgresql(
    benchmark: pytest.FixtureRequest, pg_server: ServerProcess
) -> None:
    rates: list[float] = []

    def one_import() -> None:
        batch = customers(COUNT, f"B{next(_round)}")
        imported, seconds = asyncio.run(import_customers(pg_server.target, pg_server.key, batch))
        assert imported == COUNT
        rates.append(imported / seconds)

    benchmark.pedantic(one_import, rounds=3, iterations=1)  # type: ignore[attr-defined]
    rates.sort()
    benchmark.extra_info["customers_per_s_median"] = round(rates[len(rates) // 2])  # type: ignore[attr-defined]
    median = rates[len(rates) // 2]
    print(f"\nImportCustomers into PostgreSQL: median {median:,.0f} customers/s")
    print(f"runs: {[round(r) for r in rates]}")
