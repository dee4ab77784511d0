"""Binary array columns (server/db/pgarrays.py) read back by PostgreSQL exactly as sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from server.db import pgarrays
from tests.conftest import connect_pg


@pytest.fixture
async def conn() -> AsyncIterator[Any]:
    connection = await connect_pg()
    try:
        yield connection
    finally:
        await connection.close()


async def _round_trip(conn: Any, types: tuple[str, ...], columns: list[Any]) -> list[Any]:
    async with conn.transaction():
        arrays = await pgarrays.stage(conn, "test_stage", types, columns)
        row = await conn.fetchrow(f"SELECT {', '.join(arrays)}")
    return [list(value) for value in row]


async def test_every_type_reads_back_exactly(conn: Any) -> None:
    keys = np.array([bytes(range(i, i + 16)) for i in range(3)], dtype="V16")
    columns: list[Any] = [
        np.array([0, -1, 2**63 - 1], dtype=np.int64),
        np.array([-(2**31), 7, 2**31 - 1], dtype=np.int64),
        np.array([-(2**15), 0, 2**15 - 1], dtype=np.int64),
        np.array([True, False, True]),
        np.array(["", "bng-01", 'ünïcode ✓ "quoted" {braces},commas\\'], dtype=object),
        [b"", b"\x00\xff raw", bytes(300)],
        keys,
    ]
    types = ("bigint", "integer", "smallint", "boolean", "text", "bytea", "bytea")
    got = await _round_trip(conn, types, columns)
    assert got[0] == [0, -1, 2**63 - 1]
    assert got[1] == [-(2**31), 7, 2**31 - 1]
    assert got[2] == [-(2**15), 0, 2**15 - 1]
    assert got[3] == [True, False, True]
    assert got[4] == ["", "bng-01", 'ünïcode ✓ "quoted" {braces},commas\\']
    assert got[5] == [b"", b"\x00\xff raw", bytes(300)]
    assert got[6] == [bytes(range(i, i + 16)) for i in range(3)]


async def test_nulls_empty_arrays_and_a_large_batch(conn: Any) -> None:
    n = 20_000
    names = np.array([f"user{i}@isp.example" for i in range(n)], dtype=object)
    counters = np.arange(n, dtype=np.int64) * 1_000_003 - 5
    generations = [None, 3, None]
    got = await _round_trip(
        conn,
        ("text", "bigint", "bigint", "text"),
        [names, counters, np.array(generations, dtype=object), []],
    )
    assert got[0] == names.tolist()
    assert got[1] == counters.tolist()
    assert got[2] == generations
    assert got[3] == []


async def test_a_second_stage_in_one_transaction_replaces_the_first(conn: Any) -> None:
    async with conn.transaction():
        await pgarrays.stage(conn, "test_stage_twice", ("bigint",), [[1, 2]])
        arrays = await pgarrays.stage(conn, "test_stage_twice", ("bigint",), [[3]])
        assert await conn.fetchval(f"SELECT {arrays[0]}") == [3]


async def test_bad_input_names_what_is_wrong(conn: Any) -> None:
    with pytest.raises(ValueError, match="table: 'stage; drop'"):
        await pgarrays.stage(conn, "stage; drop", ("bigint",), [[1]])
    with pytest.raises(ValueError, match="'money'"):
        await pgarrays.stage(conn, "test_stage", ("money",), [[1]])
    with pytest.raises(ValueError, match="'numeric'"):
        pgarrays.copy_row(("numeric",), [[1]])
    with pytest.raises(ValueError, match="2 columns for 1 types"):
        pgarrays.copy_row(("bigint",), [[1], [2]])
    with pytest.raises(ValueError, match="out of range for 4-byte integers"):
        pgarrays.copy_row(("integer",), [np.array([2**31], dtype=np.int64)])
