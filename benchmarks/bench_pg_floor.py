"""The PostgreSQL floor: the most durable row writes per second this machine's PostgreSQL
takes into this project's own usage tables, to read the ingest benchmark against.

Run: pytest benchmarks/bench_pg_floor.py --benchmark-only -s
A fresh database gets the real schema (`python -m server migrate`) and is dropped after.
Each case times 30 batches of 10,000 rows after 10 warm-up batches, every batch committed
in its own transaction at the server's default synchronous_commit (durable), with 1
connection and with 2 connections writing disjoint halves (by NAS) of each batch at once.
The payloads are binary COPY bytes encoded before the clock starts: the figures are database
work only, with none of the engine, gRPC or the ingest path's conflict handling.

- ledger COPY: usage_ledger rows (random 16-byte content keys, 88-byte entry bytes, 16 NASes)
  appended by binary COPY straight into the table with all its indexes. No conflict
  detection: what ingest's deduplicating insert can at most approach.
- sessions COPY+UPDATE: 100,000 session rows of one tenant (fillfactor 50); per batch, a
  binary COPY of 10,000 changed rows (counters, last update, session time, last key) into a
  temp stage and one UPDATE ... FROM the stage on the primary key (HOT updates).
- batch journal: not this project's schema but the write a per-batch ledger would make
  (docs/decisions.md, "What 500k records/s needs"): one row per batch and connection
  holding all its entries (88 random bytes each, stored uncompressed) in one bytea. Rows/s
  here are the records those rows carry.

Each case empties its table first, prints `pg floor <case>, <n> connection(s): <rows/s>`
(the median of 3 rounds, each with fresh rows) and keeps rows_per_s in extra_info.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import os
import random
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import asyncpg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.conftest import PG_URL, REPO, _admin

BATCH = 10_000
BATCHES = 30
WARMUP = 10
ROUNDS = 3
NAS_COUNT = 16
SESSIONS = 100_000
ENTRY_BYTES = 88

TENANT = uuid.uuid4()
BASE_TIME = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
_rng = random.Random()
_batch_no = itertools.count()

# ---------------------------------------------------------------- binary COPY encoder

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
Kind = Literal["uuid", "bytea", "text", "int2", "int4", "int8", "timestamptz", "bool"]
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
_LENGTH = struct.Struct("!i")
_INT2 = struct.Struct("!ih")
_INT4 = struct.Struct("!ii")
_INT8 = struct.Struct("!iq")
_NULL = _LENGTH.pack(-1)


def pg_us(moment: dt.datetime) -> int:
    """Microseconds since 2000-01-01 UTC: PostgreSQL's binary timestamptz."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return (moment - PG_EPOCH) // dt.timedelta(microseconds=1)


def _varlena(value: bytes) -> bytes:
    return _LENGTH.pack(len(value)) + value


_ENCODERS: dict[Kind, Callable[[Any], bytes]] = {
    "uuid": lambda v: b"\x00\x00\x00\x10" + v.bytes,
    "bytea": _varlena,
    "text": lambda v: _varlena(v.encode()),
    "int2": lambda v: _INT2.pack(2, v),
    "int4": lambda v: _INT4.pack(4, v),
    "int8": lambda v: _INT8.pack(8, v),
    "timestamptz": lambda v: _INT8.pack(8, v),  # the value is pg_us() of an aware datetime
    "bool": lambda v: b"\x00\x00\x00\x01\x01" if v else b"\x00\x00\x00\x01\x00",
}


def copy_bytes(rows: Iterable[Sequence[object]], kinds: Sequence[Kind]) -> bytes:
    """COPY ... (FORMAT binary) input: header, per row an int16 field count and per field an
    int32 length (-1: NULL) and the big-endian value, int16 -1 trailer."""
    encoders = [_ENCODERS[kind] for kind in kinds]
    count = struct.pack("!h", len(kinds))
    parts = [COPY_HEADER]
    for row in rows:
        parts.append(count)
        parts.extend(
            _NULL if value is None else encode(value)
            for encode, value in zip(encoders, row, strict=True)
        )
    parts.append(COPY_TRAILER)
    return b"".join(parts)


# ---------------------------------------------------------------- rows

LEDGER: tuple[tuple[str, Kind], ...] = (
    ("tenant_id", "uuid"),
    ("content_key", "bytea"),
    ("nas_key", "text"),
    ("nas_seq", "int8"),
    ("entry_index", "int4"),
    ("entry_bytes", "bytea"),
    ("status", "int2"),
    ("status_type", "int2"),
    ("event_at", "timestamptz"),
    ("arrival_at", "timestamptz"),
    ("received_at", "timestamptz"),
    ("batch_id", "text"),
)
SESSION: tuple[tuple[str, Kind], ...] = (
    ("tenant_id", "uuid"),
    ("nas_key", "text"),
    ("acct_session_id", "text"),
    ("generation", "int8"),
    ("user_name", "text"),
    ("calling_station_id", "text"),
    ("framed_ip_address", "text"),
    ("subscription_id", "uuid"),
    ("start_at", "timestamptz"),
    ("stop_at", "timestamptz"),
    ("last_update_at", "timestamptz"),
    ("session_time_s", "int8"),
    ("input_bytes", "int8"),
    ("output_bytes", "int8"),
    ("hwm_input", "int8"),
    ("hwm_output", "int8"),
    ("last_key", "bytea"),
    ("flags", "int8"),
    ("terminate_cause", "int8"),
    ("open", "bool"),
)
KEY = ("tenant_id", "nas_key", "acct_session_id", "generation")
CHANGED = (
    "last_update_at",
    "session_time_s",
    "input_bytes",
    "output_bytes",
    "hwm_input",
    "hwm_output",
    "last_key",
)
STAGE = tuple((name, kind) for name, kind in SESSION if name in KEY + CHANGED)
STAGE_SQL_TYPES = {"uuid": "uuid", "text": "text", "int8": "bigint", "timestamptz": "timestamptz"}
STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS floor_session_stage ("
    + ", ".join(f"{name} {STAGE_SQL_TYPES.get(kind, kind)}" for name, kind in STAGE)
    + ") ON COMMIT DELETE ROWS"
)
UPDATE_SQL = (
    "UPDATE usage_sessions AS s SET last_update_at = u.last_update_at,"
    " session_time_s = u.session_time_s, input_bytes = u.input_bytes,"
    " output_bytes = u.output_bytes, hwm_input = u.hwm_input, hwm_output = u.hwm_output,"
    " last_key = u.last_key FROM floor_session_stage AS u WHERE s.tenant_id = u.tenant_id"
    " AND s.nas_key = u.nas_key AND s.acct_session_id = u.acct_session_id"
    " AND s.generation = u.generation"
)
INTERIM_S = 600


def _nas(i: int) -> int:
    return i % NAS_COUNT


def _ledger_rows(seq: int, part: int, parts: int) -> Iterator[tuple[object, ...]]:
    """Interim-Update ledger rows of batch `seq` whose NAS falls to connection `part`."""
    event = pg_us(BASE_TIME + dt.timedelta(seconds=seq))
    received = event + 250_000
    batch_id = f"floor-{seq}-{uuid.uuid4().hex[:8]}"
    for i in range(BATCH):
        if _nas(i) % parts != part:
            continue
        yield (
            TENANT,
            _rng.randbytes(16),
            f"bng-{_nas(i):02}",
            seq,
            i,
            _rng.randbytes(ENTRY_BYTES),
            1,  # accepted
            3,  # Interim-Update
            event,
            event,
            received,
            batch_id,
        )


def _session_id(i: int) -> str:
    # An odd multiplier is a bijection modulo 2**64: distinct, random-looking hex ids.
    return f"{(i * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF:016X}"


def _start_us(i: int) -> int:
    return pg_us(BASE_TIME + dt.timedelta(seconds=i % 3_600))


def _session_rows() -> Iterator[tuple[object, ...]]:
    for i in range(SESSIONS):
        yield (
            TENANT,
            f"bng-{_nas(i):02}",
            _session_id(i),
            1,
            f"user{i}@isp.example",
            f"02-00-{(i >> 24) & 255:02X}-{(i >> 16) & 255:02X}-{(i >> 8) & 255:02X}-{i & 255:02X}",
            f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",
            uuid.UUID(int=(TENANT.int ^ i)),
            _start_us(i),
            None,
            _start_us(i),
            0,
            0,
            0,
            0,
            0,
            b"\x00" * 16,
            0,
            0,
            True,
        )


def _stage_rows(seq: int, part: int, parts: int) -> Iterator[tuple[object, ...]]:
    """The sessions batch `seq` changes (cycling over all sessions, counters growing)."""
    first = seq * BATCH % SESSIONS
    update = seq * BATCH // SESSIONS + 1
    for i in range(first, first + BATCH):
        if _nas(i) % parts != part:
            continue
        counter_in = i * 1_000 + update * 7_000_000
        counter_out = i * 1_000 + update * 90_000_000
        yield (
            TENANT,
            f"bng-{_nas(i):02}",
            _session_id(i),
            1,
            _start_us(i) + update * INTERIM_S * 1_000_000,
            update * INTERIM_S,
            counter_in,
            counter_out,
            counter_in,
            counter_out,
            _rng.randbytes(8) + b"\x00" * 8,
        )


# ---------------------------------------------------------------- database


@pytest.fixture(scope="module")
def floor_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database with the project's migrated schema; dropped afterwards."""
    name = f"rating_bench_floor_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = f"{PG_URL.rpartition('/')[0]}/{name}"
    try:
        subprocess.run(
            [sys.executable, "-m", "server", "migrate", "--database-url", url],
            env={**os.environ, "PYTHONPATH": str(REPO), "RATING_LOG_LEVEL": "WARNING"},
            check=True,
            cwd=tmp_path_factory.mktemp("pg-floor"),
        )
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


Write = Callable[[asyncpg.Connection, bytes], Awaitable[None]]
Batch = list[bytes]  # one payload per connection


async def _write_batch(conns: Sequence[asyncpg.Connection], batch: Batch, write: Write) -> None:
    async def one(conn: asyncpg.Connection, payload: bytes) -> None:
        async with conn.transaction():
            await write(conn, payload)

    await asyncio.gather(*(one(c, p) for c, p in zip(conns, batch, strict=True)))


async def _timed(conns: Sequence[asyncpg.Connection], batches: list[Batch], write: Write) -> float:
    """Rows per second of writing `batches` (each a commit per connection)."""
    started = time.perf_counter()
    for batch in batches:
        await _write_batch(conns, batch, write)
    return BATCH * len(batches) / (time.perf_counter() - started)


def _measure(
    benchmark: BenchmarkFixture,
    url: str,
    connections: int,
    make_batch: Callable[[int, int, int], Iterable[Sequence[object]]],
    kinds: Sequence[Kind],
    write: Write,
    prepare: str | None = None,
) -> float:
    """Times BATCHES batches per round after WARMUP (both encoded before the clock starts);
    returns the median rate of ROUNDS rounds, kept in extra_info with every round's."""
    rates: list[float] = []
    with asyncio.Runner() as runner:
        conns = [runner.run(asyncpg.connect(url)) for _ in range(connections)]
        try:
            if prepare is not None:
                for conn in conns:
                    runner.run(conn.execute(prepare))

            def setup() -> tuple[tuple[list[Batch]], dict[str, Any]]:
                batches = []
                for _ in range(WARMUP + BATCHES):
                    seq = next(_batch_no)
                    batches.append(
                        [
                            copy_bytes(make_batch(seq, c, connections), kinds)
                            for c in range(connections)
                        ]
                    )
                for batch in batches[:WARMUP]:
                    runner.run(_write_batch(conns, batch, write))
                return (batches[WARMUP:],), {}

            def one_round(batches: list[Batch]) -> None:
                rates.append(runner.run(_timed(conns, batches, write)))

            benchmark.pedantic(one_round, setup=setup, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
        finally:
            for conn in conns:
                runner.run(conn.close())
    rate = statistics.median(rates)
    benchmark.extra_info["rows_per_s"] = round(rate)
    benchmark.extra_info["rows_per_s_rounds"] = [round(r) for r in rates]
    return rate


def _report(label: str, connections: int, rate: float, note: str = "") -> None:
    plural = "" if connections == 1 else "s"
    print(f"\npg floor {label}, {connections} connection{plural}: {rate:,.0f} rows/s{note}")


# ---------------------------------------------------------------- cases


async def _copy_ledger(conn: asyncpg.Connection, payload: bytes) -> None:
    await conn.copy_to_table(
        "usage_ledger",
        source=io.BytesIO(payload),
        columns=[name for name, _ in LEDGER],
        format="binary",
    )


async def _update_sessions(conn: asyncpg.Connection, payload: bytes) -> None:
    await conn.copy_to_table(
        "floor_session_stage",
        source=io.BytesIO(payload),
        columns=[name for name, _ in STAGE],
        format="binary",
    )
    status = await conn.execute(UPDATE_SQL)
    assert status != "UPDATE 0", status


async def _query(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.mark.benchmark(group="pg-floor")
@pytest.mark.parametrize("connections", [1, 2])
def test_pg_floor_ledger_copy(benchmark: BenchmarkFixture, floor_db: str, connections: int) -> None:
    asyncio.run(_query(floor_db, "TRUNCATE usage_ledger"))
    kinds = [kind for _, kind in LEDGER]
    rate = _measure(benchmark, floor_db, connections, _ledger_rows, kinds, _copy_ledger)
    _report("ledger COPY", connections, rate)
    written = asyncio.run(_query(floor_db, "SELECT count(*) FROM usage_ledger"))
    assert written == (WARMUP + BATCHES) * BATCH * ROUNDS


async def _load_sessions(url: str) -> tuple[int, int]:
    """Fills usage_sessions afresh; returns its (updates, HOT updates) so far."""
    conn = await asyncpg.connect(url)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE relname = 'usage_sessions'"
        )
        assert "fillfactor=50" in (options or []), options
        await conn.execute("TRUNCATE usage_sessions")
        await conn.copy_to_table(
            "usage_sessions",
            source=io.BytesIO(copy_bytes(_session_rows(), [kind for _, kind in SESSION])),
            columns=[name for name, _ in SESSION],
            format="binary",
        )
        await conn.execute("VACUUM ANALYZE usage_sessions")
        return await _update_counts(conn)
    finally:
        await conn.close()


async def _update_counts(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'usage_sessions'"
    )
    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


async def _updates_since(url: str, before: tuple[int, int], expected: int) -> tuple[int, int]:
    """(updates, HOT updates) since `before`, once the writers' statistics arrived."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(50):
            updates, hot = await _update_counts(conn)
            if updates - before[0] >= expected:
                break
            await asyncio.sleep(0.1)
        return updates - before[0], hot - before[1]
    finally:
        await conn.close()


JOURNAL: tuple[tuple[str, Kind], ...] = (
    ("tenant_id", "uuid"),
    ("batch_seq", "int8"),
    ("entries", "bytea"),
)
JOURNAL_DDL = (
    "CREATE TABLE IF NOT EXISTS floor_batch_journal (tenant_id uuid NOT NULL,"
    " batch_seq bigint NOT NULL, entries bytea NOT NULL, PRIMARY KEY (tenant_id, batch_seq))",
    "ALTER TABLE floor_batch_journal ALTER COLUMN entries SET STORAGE EXTERNAL",
    "TRUNCATE floor_batch_journal",
)


def _journal_rows(seq: int, part: int, parts: int) -> Iterator[tuple[object, ...]]:
    """The one journal row of batch `seq` for connection `part`: its share of the entries."""
    share = sum(1 for i in range(BATCH) if _nas(i) % parts == part)
    yield (TENANT, seq * parts + part, _rng.randbytes(ENTRY_BYTES * share))


async def _copy_journal(conn: asyncpg.Connection, payload: bytes) -> None:
    await conn.copy_to_table(
        "floor_batch_journal",
        source=io.BytesIO(payload),
        columns=[name for name, _ in JOURNAL],
        format="binary",
    )


@pytest.mark.benchmark(group="pg-floor")
@pytest.mark.parametrize("connections", [1, 2])
def test_pg_floor_batch_journal(
    benchmark: BenchmarkFixture, floor_db: str, connections: int
) -> None:
    for statement in JOURNAL_DDL:
        asyncio.run(_query(floor_db, statement))
    kinds = [kind for _, kind in JOURNAL]
    rate = _measure(benchmark, floor_db, connections, _journal_rows, kinds, _copy_journal)
    _report("batch journal (records carried)", connections, rate)
    written = asyncio.run(_query(floor_db, "SELECT sum(length(entries)) FROM floor_batch_journal"))
    assert written == (WARMUP + BATCHES) * BATCH * ROUNDS * ENTRY_BYTES


@pytest.mark.benchmark(group="pg-floor")
@pytest.mark.parametrize("connections", [1, 2])
def test_pg_floor_sessions_update(
    benchmark: BenchmarkFixture, floor_db: str, connections: int
) -> None:
    before = asyncio.run(_load_sessions(floor_db))
    kinds = [kind for _, kind in STAGE]
    rate = _measure(
        benchmark, floor_db, connections, _stage_rows, kinds, _update_sessions, STAGE_DDL
    )
    expected = (WARMUP + BATCHES) * BATCH * ROUNDS
    updates, hot = asyncio.run(_updates_since(floor_db, before, expected))
    benchmark.extra_info["hot_update_share"] = round(hot / max(updates, 1), 4)
    _report("sessions COPY+UPDATE", connections, rate, f" ({hot / max(updates, 1):.1%} HOT)")
    assert updates == expected
