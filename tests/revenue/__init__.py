"""Tests of RevenueService (a package, so that tests/bss can import tests.revenue.support)."""
