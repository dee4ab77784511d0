"""Column arrays for PostgreSQL statements, sent as one binary COPY row.

A batch's columns reach PostgreSQL as arrays that a statement unnests. Sent as statement
parameters, asyncpg encodes them element by element and checks every element against the
`collections.abc` ABCs (~3.5 µs per row of 23 columns: the server's largest cost per batch).
Here they are encoded with numpy into PostgreSQL's binary array format, copied as the one
row of a temporary table whose array columns are stored uncompressed, and the statement
reads them back with `(SELECT aN FROM table)`, which the planner still estimates as a short
array: the plans stay index probes whatever the batch size.
"""

# Statements are built from the checked identifiers of `stage` and constant types only.
# ruff: noqa: S608

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_INT32 = struct.Struct("!i")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Element type: its oid and its big-endian numpy dtype (None: variable length).
TYPES: dict[str, tuple[int, str | None]] = {
    "bigint": (20, ">i8"),
    "integer": (23, ">i4"),
    "smallint": (21, ">i2"),
    "boolean": (16, "u1"),
    "text": (25, None),
    "bytea": (17, None),
}


def _array_header(oid: int, n: int, has_null: bool) -> bytes:
    # ndim, has-null flag, element oid, then (length, lower bound) of the one dimension.
    if not n:
        return struct.pack("!iii", 0, 0, oid)
    return struct.pack("!iiiii", 1, int(has_null), oid, n, 1)


def _fixed(values: Any, dtype: str, oid: int) -> bytes:
    """Fixed-width elements: a (length, value) record per element, built in one pass."""
    array = np.asarray(values)
    if array.dtype == object:
        if any(v is None for v in array.tolist()):
            return _with_nulls(array.tolist(), dtype, oid)
        array = array.astype(np.int64)
    n = array.size
    if n and array.dtype.kind in "iu":
        limits = np.iinfo(np.dtype(dtype))
        if int(array.min()) < limits.min or int(array.max()) > limits.max:
            raise ValueError(
                f"a value is out of range for {np.dtype(dtype).itemsize}-byte integers"
            )
    out = np.empty(n, dtype=[("length", ">i4"), ("value", dtype)])
    out["length"] = np.dtype(dtype).itemsize
    out["value"] = array
    return _array_header(oid, n, False) + out.tobytes()


def _with_nulls(values: list[Any], dtype: str, oid: int) -> bytes:
    """Fixed-width elements of which some are NULL (length -1, no value)."""
    null = _INT32.pack(-1)
    width = np.dtype(dtype).itemsize
    items = [
        null if v is None else _INT32.pack(width) + np.array(v, dtype=dtype).tobytes()
        for v in values
    ]
    return _array_header(oid, len(items), True) + b"".join(items)


def _variable(values: Any, oid: int, text: bool) -> bytes:
    """Text or bytea elements: lengths and bytes interleaved by index arithmetic."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "SV":
        # Fixed-size byte strings (content keys): one record per element, like numbers.
        n, width = values.size, values.dtype.itemsize
        out = np.empty(n, dtype=[("length", ">i4"), ("value", f"V{width}")])
        out["length"] = width
        out["value"] = values.view(f"V{width}")
        return _array_header(oid, n, False) + out.tobytes()
    items = [v.encode() for v in values] if text else [bytes(v) for v in values]
    n = len(items)
    if not n:
        return _array_header(oid, 0, False)
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
    data = np.frombuffer(b"".join(items), dtype=np.uint8)
    # Element i's length prefix starts at starts[i]; its bytes follow the prefix.
    sources = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=sources[1:])
    starts = sources + 4 * np.arange(n, dtype=np.int64)
    out = np.empty(data.size + 4 * n, dtype=np.uint8)
    prefixes = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
    for k in range(4):
        out[starts + k] = prefixes[:, k]
    if data.size:
        shift = np.repeat(starts + 4 - sources, lengths)
        out[shift + np.arange(data.size, dtype=np.int64)] = data
    return _array_header(oid, n, False) + out.tobytes()


def encode_array(pgtype: str, values: Any) -> bytes:
    """One column in PostgreSQL's binary array format (`array_send`)."""
    try:
        oid, dtype = TYPES[pgtype]
    except KeyError:
        raise ValueError(f"no binary array encoding for type {pgtype!r}") from None
    if dtype is None:
        return _variable(values, oid, pgtype == "text")
    return _fixed(values, dtype, oid)


def copy_row(types: Sequence[str], columns: Sequence[Any]) -> bytes:
    """A binary COPY stream of one row whose fields are the columns as arrays."""
    if len(types) != len(columns):
        raise ValueError(f"{len(columns)} columns for {len(types)} types")
    parts = [_HEADER, struct.pack("!h", len(columns))]
    for pgtype, values in zip(types, columns, strict=True):
        body = encode_array(pgtype, values)
        parts.append(_INT32.pack(len(body)))
        parts.append(body)
    parts.append(_TRAILER)
    return b"".join(parts)


def _create(table: str, types: Sequence[str]) -> str:
    columns = ", ".join(f"a{i} {t}[]" for i, t in enumerate(types))
    storage = "; ".join(
        f"ALTER TABLE pg_temp.{table} ALTER COLUMN a{i} SET STORAGE EXTERNAL"
        for i in range(len(types))
    )
    # Created once per connection (and again if the creating transaction rolled back),
    # emptied when a transaction stages twice. EXTERNAL storage: out of line but not
    # compressed (pglz tripled the copy's cost).
    return (
        f"DO $$ BEGIN IF to_regclass('pg_temp.{table}') IS NULL THEN"
        f" CREATE TEMP TABLE {table} ({columns}) ON COMMIT DELETE ROWS; {storage};"
        f" ELSE DELETE FROM pg_temp.{table}; END IF; END $$"
    )


async def stage(conn: Any, table: str, types: Sequence[str], columns: Sequence[Any]) -> list[str]:
    """Copies the columns into the temporary table `table` (asyncpg connection, inside a
    transaction: the row goes at commit) and returns an SQL expression per column that
    reads it back as an array, for `unnest(...)`."""
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"table: {table!r} is not a plain lower-case identifier")
    unknown = sorted(set(types) - TYPES.keys())
    if unknown:
        raise ValueError(f"no binary array encoding for type {unknown[0]!r}")
    await conn.execute(_create(table, types))
    await conn.copy_to_table(table, source=io.BytesIO(copy_row(types, columns)), format="binary")
    return [f"(SELECT a{i} FROM pg_temp.{table})" for i in range(len(types))]
