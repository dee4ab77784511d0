"""Fixtures of the revenue tests (defined in tests.revenue.fixtures, shared with tests/bss)."""

from tests.revenue.fixtures import rev_tenant, revenue_db, revenue_server, revenue_stub, seed

__all__ = ["rev_tenant", "revenue_db", "revenue_server", "revenue_stub", "seed"]
