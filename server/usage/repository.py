"""Usage queries and bulk writes; never commits (the caller's unit of work does).

Bulk paths bypass the ORM: on PostgreSQL they talk to asyncpg directly (binary COPY into a
staging table, array-based upserts), on SQLite they use the driver's executemany. Times
cross the boundary as integer microseconds and are converted inside SQL, so no Python
loop turns numbers into datetimes. Longer than ~400 lines because every bulk statement
exists in two dialects side by side.
"""
# SQL text is assembled from constants of this module only; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

import rating_core as core
from isp_rating.v1 import usage_pb2
from server.db import pgarrays

US = 1_000_000

# Columns of a NAS policy, in NasPolicy keyword order, with NasPolicy's defaults.
POLICY_COLUMNS = (
    "swap_direction",
    "infer_wrap",
    "interim_interval_s",
    "stale_multiplier",
    "grace_s",
    "clock_skew_tolerance_s",
)
DEFAULT_POLICY: tuple[bool, bool, int, int, int, int] = (False, False, 600, 3, 300, 300)
Policy = tuple[bool, bool, int, int, int, int]

SESSION_COLUMNS = (
    "nas_key",
    "acct_session_id",
    "generation",
    "user_name",
    "calling_station_id",
    "framed_ip_address",
    "start_us",
    "stop_us",
    "last_update_us",
    "session_time_s",
    "input_bytes",
    "output_bytes",
    "hwm_input",
    "hwm_output",
    "last_key",
    "flags",
    "terminate_cause",
    "open",
    # Written, not loaded: the engine holds no identity text (_select_sessions reads the
    # 18 columns above).
    "framed_ipv6_prefix",
    "delegated_ipv6_prefix",
)
# The columns a session row is written with (session_columns, the upserts' parameters).
N_SESSION = len(SESSION_COLUMNS)


@dataclass(frozen=True)
class NasState:
    nas_key: str
    seq: int
    policy: Policy


@dataclass
class LedgerRows:
    """Columns of the ledger rows of one batch (entry_index = position in the sent batch)."""

    content_key: list[bytes]
    nas_key: list[str]
    nas_seq: list[int]
    entry_index: list[int]
    entry_bytes: list[bytes]
    status: list[int]
    status_type: list[int]
    event_us: list[int]
    arrival_us: list[int]

    def __len__(self) -> int:
        return len(self.content_key)


# ---------------------------------------------------------------- dialect helpers


def is_pg(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_pg = is_pg


def tenant_param(session: AsyncSession, tenant_id: uuid.UUID) -> Any:
    """SQLAlchemy's Uuid is a native uuid on PostgreSQL and 32 hex characters on SQLite."""
    return tenant_id if _pg(session) else tenant_id.hex


def ts_sql(pg: bool, expr: str) -> str:
    """SQL turning integer microseconds into the stored form of a UTCDateTime."""
    if pg:
        # interval * bigint multiplies in float8, exact only to 2^53 µs (the year 2255):
        # whole seconds and the microseconds apart are each exact up to 9999-12-31.
        us = f"({expr})::bigint"
        return (
            f"(TIMESTAMPTZ 'epoch' + ({us} / 1000000) * INTERVAL '1 second'"
            f" + ({us} % 1000000) * INTERVAL '1 microsecond')"
        )
    # SQLAlchemy's SQLite DATETIME text, so that ORM reads and text ordering both work.
    # SQLite's / and % truncate toward zero: before 1970 (a lost Start's session time can
    # put a start there) the microseconds are taken up from the second below instead,
    # never written as a negative fraction the ORM cannot read.
    micros = f"((({expr}) % 1000000 + 1000000) % 1000000)"
    return (
        f"(strftime('%Y-%m-%d %H:%M:%S', (({expr}) - {micros}) / 1000000, 'unixepoch')"
        f" || printf('.%06d', {micros}))"
    )


def us_sql(pg: bool, column: str) -> str:
    """SQL turning a UTCDateTime column into integer microseconds."""
    if pg:
        return f"(EXTRACT(EPOCH FROM {column}) * 1000000)::bigint"
    # The seconds of the text's first 19 characters: strftime('%s') of the whole text
    # rounds a fraction of .9995 or more up to the next second (SQLite 3.40), which the
    # microseconds added again made a second late, one more each time a row was loaded.
    return (
        f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
        f" + CAST(substr({column}, 21, 6) AS INTEGER))"
    )


def attribution_sql(
    tenant: str,
    user: str,
    calling: str,
    framed: str,
    framed_prefix: str,
    delegated_prefix: str,
    *,
    as_of: str | None = None,
) -> str:
    """The subscription of a RADIUS identity (SQL expressions, in IDENTITY_COLUMNS order):
    User-Name, then Calling-Station-Id, then static IP: the IPv4 Framed-IP-Address, then
    the Delegated-IPv6-Prefix, then the Framed-IPv6-Prefix. With `as_of` (an SQL
    expression of an instant in the stored form), only identities registered by then
    count (a batch's receipt: batch_attribution_sql; a first registration: reattribute).

    A MAC-like Calling-Station-Id matches as sent and in canonical `aa:bb:cc:dd:ee:ff` form.
    A prefix matches a STATIC_IP identity of the same canonical text; a /128 is its address
    (server.validation.parse_static_ip stores a /128 identity as the address), so an IPv6
    address identity matches a session whose prefix is that address as /128. Every step is
    one equality probe of the radius_identities primary key.
    """
    # (In a CASE: SQLite would otherwise probe ix_radius_identities_registered by the
    # time range instead of the primary key by the value, scanning every identity.)
    registered = (
        "" if as_of is None else f" AND CASE WHEN r.created_at <= {as_of} THEN 1 ELSE 0 END = 1"
    )
    steps = _identity_lookups(
        tenant, "r.subscription_id", registered, user, calling, framed, framed_prefix,
        delegated_prefix,
    )  # fmt: skip
    return f"COALESCE({', '.join(steps)})"


def batch_attribution_sql(
    tenant: str,
    user: str,
    calling: str,
    framed: str,
    framed_prefix: str,
    delegated_prefix: str,
    *,
    received: str | None,
    registered_since: bool = False,
) -> str:
    """The subscription a batch received at `received` (an SQL expression of an instant
    in the stored form) attributes a session to: by attribution_sql's rules among the
    identities registered by then. A live batch may be written after identities were
    registered since it was received (it waited for its locks; `registered_since`, asked
    once per batch: registered_since()): a session none of those registered by the receipt
    matches then takes the identities registered when the first matching one was, which
    is what that registration's re-attribution gives it in a rebuild (which replays the
    registration after the batch, and so passes False). Without `received`,
    attribution_sql's (identities as they are)."""
    identity = (user, calling, framed, framed_prefix, delegated_prefix)
    if received is None:
        return attribution_sql(tenant, *identity)
    by_receipt = attribution_sql(tenant, *identity, as_of=received)
    if not registered_since:
        return by_receipt
    # The matching identity registered first, on a tie the one that ranks first: what
    # attribution_sql as of first_registration_sql gives, in one query (nesting the one in
    # the other overflows SQLite's parser stack).
    steps = _identity_lookups(
        tenant, "r.subscription_id AS s, r.created_at AS c, @rank@ AS k", "", *identity
    )
    union = " UNION ALL ".join(
        f"SELECT * FROM {step.replace('@rank@', str(rank))} q{rank}"
        for rank, step in enumerate(steps)
    )
    return f"COALESCE({by_receipt}, (SELECT x.s FROM ({union}) x ORDER BY x.c, x.k LIMIT 1))"


async def registered_since(session: AsyncSession, tenant_id: uuid.UUID, received_us: int) -> bool:
    """Whether the tenant registered a RADIUS identity after `received_us` (one probe of
    ix_radius_identities_registered)."""
    found = await session.execute(
        text(
            "SELECT 1 FROM radius_identities WHERE tenant_id = :t"
            f" AND created_at > {ts_sql(_pg(session), ':r')} LIMIT 1"
        ),
        {"t": tenant_param(session, tenant_id), "r": received_us},
    )
    return found.first() is not None


def first_registration_sql(
    tenant: str, user: str, calling: str, framed: str, framed_prefix: str, delegated_prefix: str
) -> str:
    """When the first identity that matches a session (attribution_sql's rules, any step)
    was registered, or NULL: the moment an unattributed session was attributed live, by
    the registration's re-attribution."""
    steps = _identity_lookups(
        tenant, "min(r.created_at)", "", user, calling, framed, framed_prefix, delegated_prefix
    )
    union = " UNION ALL ".join(f"SELECT {step} AS t" for step in steps)
    return f"(SELECT min(x.t) FROM ({union}) x)"


# What Python's str.strip() removes of ASCII, as registration strips identities.
_BLANKS = " \t\n\r\x0b\x0c"


def trimmed(column: str) -> str:
    """SQL for a text column without the surrounding white space registration strips (the
    form its identity is registered and matched in)."""
    return f"trim({column}, '{_BLANKS}')"


def _identity_lookups(
    tenant: str,
    what: str,
    condition: str,
    user: str,
    calling: str,
    framed: str,
    framed_prefix: str,
    delegated_prefix: str,
) -> list[str]:
    """attribution_sql's five steps in order, each a subquery selecting `what` from the
    matching radius_identities rows `r` (with the extra `condition`). A User-Name or
    Calling-Station-Id is matched without surrounding white space (identities are
    registered without it: a subscriber who typed a PPPoE user name with a trailing space
    is still theirs)."""
    user, calling = trimmed(user), trimmed(calling)
    bare = f"replace(replace(replace({calling}, '-', ''), ':', ''), '.', '')"
    mac = "lower(" + " || ':' || ".join(f"substr({bare}, {i}, 2)" for i in (1, 3, 5, 7, 9, 11))
    mac += ")"
    calling_forms = f"({calling}, CASE WHEN length({bare}) = 12 THEN {mac} ELSE {calling} END)"

    def lookup(kind: int, value: str, match: str) -> str:
        return (
            f"(SELECT {what} FROM radius_identities r"
            f" WHERE r.tenant_id = {tenant} AND r.kind = {kind} AND {match}"
            f" AND {value} <> ''{condition} LIMIT 1)"
        )

    def host(prefix: str) -> str:
        # Canonical text has one "/": "/128" occurs only as the length of a host prefix.
        return f"replace({prefix}, '/128', '')"

    return [
        lookup(1, user, f"r.value = {user}"),
        lookup(2, calling, f"r.value IN {calling_forms}"),
        lookup(3, framed, f"r.value = {framed}"),
        lookup(3, delegated_prefix, f"r.value = {host(delegated_prefix)}"),
        lookup(3, framed_prefix, f"r.value = {host(framed_prefix)}"),
    ]


async def driver(session: AsyncSession) -> Any:
    """The raw asyncpg / aiosqlite connection under the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


_PG_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS usage_ledger_stage (
    content_key bytea, nas_key text, nas_seq bigint, entry_index integer, entry_bytes bytea,
    status smallint, status_type smallint, event_us bigint, arrival_us bigint
) ON COMMIT DELETE ROWS
"""
_SQLITE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_ledger_stage (content_key BLOB, nas_key TEXT,"
    " nas_seq INTEGER, entry_index INTEGER, entry_bytes BLOB, status INTEGER,"
    " status_type INTEGER, event_us INTEGER, arrival_us INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS usage_bucket_stage (nas_key TEXT, sid TEXT,"
    " gen INTEGER, hour_us INTEGER, ib INTEGER, ob INTEGER, ss INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS usage_touched_stage (nas_key TEXT, sid TEXT, gen INTEGER)",
)
_LEDGER_STAGE_COLUMNS = (
    "content_key",
    "nas_key",
    "nas_seq",
    "entry_index",
    "entry_bytes",
    "status",
    "status_type",
    "event_us",
    "arrival_us",
)


# ---------------------------------------------------------------- NAS rows


async def begin_write(session: AsyncSession) -> None:
    """On SQLite, takes the single writer lock first: a read transaction that upgrades to a
    write after another writer committed fails at once instead of waiting its turn."""
    if not _pg(session):
        await session.execute(text("UPDATE usage_nas SET seq = seq WHERE 1 = 0"))


async def lock_tenant_nas(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """PostgreSQL: locks every NAS row of the tenant, in the key order batches, sweeps and
    rebuilds take them, so a statement over the tenant's sessions (a re-attribution) waits
    for the batches writing them instead of deadlocking with them, and a batch written
    meanwhile is seen by it. (SQLite's writer lock already serializes them.)"""
    if _pg(session):
        await session.execute(
            text(
                "SELECT 1 FROM usage_nas WHERE tenant_id = :t"
                ' ORDER BY nas_key COLLATE "C" FOR UPDATE'
            ),
            {"t": tenant_param(session, tenant_id)},
        )


def _tenant_lock_key(tenant_id: uuid.UUID) -> int:
    """The tenant's advisory lock (PostgreSQL's signed 64-bit key): its id's low bits."""
    key = tenant_id.int & (2**64 - 1)
    return key - 2**64 if key >= 2**63 else key


async def share_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """PostgreSQL: holds the tenant's advisory lock shared until the transaction ends.
    Every write of NAS rows takes it first (lock_nas), so a rebuild, which takes it
    exclusive (own_tenant), never runs beside a batch: it would not see a NAS row the
    batch inserts, delete its committed projections with the tenant's and never replay
    them."""
    if _pg(session):
        await session.execute(
            text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _tenant_lock_key(tenant_id)}
        )


# The second key of the tenant's identity lock (PostgreSQL's two-int4 advisory key space,
# apart from the tenant lock's one bigint key).
_IDENTITY_LOCK = 1


async def lock_identities(session: AsyncSession, tenant_id: uuid.UUID, *, exclusive: bool) -> None:
    """PostgreSQL: the tenant's identity lock until the transaction ends, exclusive for a
    registration of RADIUS identities, shared for RecordUsage by `radius_user_name`. A
    metered event is then recorded either before a registration takes effect (and is
    attributed by it, later stamped) or after it commits (and sees it): its first answer
    and its replay agree. (SQLite's writer lock already serializes them.)"""
    if _pg(session):
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        key = int.from_bytes(tenant_id.bytes[-4:], "big", signed=True)  # its id's low bits
        await session.execute(text(f"SELECT {function}(:k, :i)"), {"k": key, "i": _IDENTITY_LOCK})


async def own_tenant(session: AsyncSession, tenant_id: uuid.UUID, timeout_ms: int) -> bool:
    """PostgreSQL: takes the tenant's advisory lock exclusive, waiting at most
    `timeout_ms`; False when it timed out (the transaction is then aborted: roll it back).
    A bounded wait: a large batch's write groups take the lock one after another, and one
    that waits behind this request while its sibling holds the lock shared is a cycle
    through the application that PostgreSQL cannot see. SQLite's writer lock is exclusive
    already (True)."""
    if not _pg(session):
        return True
    conn = await driver(session)
    await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _tenant_lock_key(tenant_id))
    except Exception as error:
        if getattr(error, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        return False
    await conn.execute("SET LOCAL lock_timeout = 0")
    return True


async def lock_nas(
    session: AsyncSession, tenant_id: uuid.UUID, nas_keys: Sequence[str]
) -> dict[str, NasState]:
    """Creates missing NAS rows and locks them all, in key order (no deadlock between
    replicas); on SQLite the write itself takes the database's single writer lock. Key
    order is code-point order (`COLLATE "C"`, Python's own), so groups that Python splits
    from sorted keys lock in one global order whatever the database's collation."""
    if not nas_keys:
        return {}
    keys = sorted(nas_keys)
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    columns = ", ".join(POLICY_COLUMNS)
    defaults = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in DEFAULT_POLICY)
    if pg:
        await share_tenant(session, tenant_id)
        await session.execute(
            text(
                f"INSERT INTO usage_nas (tenant_id, nas_key, seq, {columns}, updated_at)"
                f" SELECT :t, k, 0, {defaults}, now() FROM unnest(CAST(:keys AS TEXT[])) AS k"
                ' ORDER BY k COLLATE "C" ON CONFLICT DO NOTHING'
            ),
            {"t": tenant, "keys": keys},
        )
        # The batch statements are cheap per row but large: JIT would compile ~100-170
        # functions per statement (tens of ms) to run a 10k-row upsert once. (After the
        # first statement: the transaction block has begun, so SET LOCAL sticks.)
        await (await driver(session)).execute("SET LOCAL jit = off")
        rows = await session.execute(
            text(
                f"SELECT nas_key, seq, {columns} FROM usage_nas WHERE tenant_id = :t"
                ' AND nas_key = ANY(CAST(:keys AS TEXT[])) ORDER BY nas_key COLLATE "C" FOR UPDATE'
            ),
            {"t": tenant, "keys": keys},
        )
        found = rows.all()
    else:
        sqlite_defaults = defaults.replace("false", "0").replace("true", "1")
        await session.execute(
            text(
                f"INSERT INTO usage_nas (tenant_id, nas_key, seq, {columns}, updated_at)"
                f" VALUES (:t, :k, 0, {sqlite_defaults}, :now) ON CONFLICT DO NOTHING"
            ),
            [{"t": tenant, "k": k, "now": _sqlite_now()} for k in keys],
        )
        found = []
        for marks, params in _in_chunks(keys):
            result = await session.execute(
                text(
                    f"SELECT nas_key, seq, {columns} FROM usage_nas"
                    f" WHERE tenant_id = :t AND nas_key IN ({marks}) ORDER BY nas_key"
                ),
                {"t": tenant, **params},
            )
            found.extend(result.all())
    return {row[0]: NasState(row[0], int(row[1]), _policy(row[2:])) for row in found}


def _policy(values: Sequence[Any]) -> Policy:
    return (
        bool(values[0]),
        bool(values[1]),
        int(values[2]),
        int(values[3]),
        int(values[4]),
        int(values[5]),
    )


def _sqlite_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def set_nas_seq(
    session: AsyncSession, tenant_id: uuid.UUID, nas_keys: Sequence[str], seqs: Sequence[int]
) -> None:
    if not nas_keys:
        return
    await session.execute(
        text("UPDATE usage_nas SET seq = :s WHERE tenant_id = :t AND nas_key = :k"),
        [
            {"s": int(s), "t": tenant_param(session, tenant_id), "k": k}
            for k, s in zip(nas_keys, seqs, strict=True)
        ],
    )


async def nas_policies(session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, Policy]:
    rows = await session.execute(
        text(f"SELECT nas_key, {', '.join(POLICY_COLUMNS)} FROM usage_nas WHERE tenant_id = :t"),
        {"t": tenant_param(session, tenant_id)},
    )
    return {row[0]: _policy(row[1:]) for row in rows.all()}


async def nas_secrets(session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, bytes]:
    rows = await session.execute(
        text("SELECT source_address, secret FROM usage_nas_clients WHERE tenant_id = :t"),
        {"t": tenant_param(session, tenant_id)},
    )
    return {row[0]: bytes(row[1]) for row in rows.all()}


async def has_nas_clients(
    session: AsyncSession, tenant_id: uuid.UUID, source_addresses: Sequence[str]
) -> bool:
    """Whether any of these source addresses has a client (a secret) by now."""
    found = await session.execute(
        text(
            "SELECT 1 FROM usage_nas_clients WHERE tenant_id = :t AND source_address IN :a LIMIT 1"
        ).bindparams(bindparam("a", expanding=True)),
        {"t": tenant_param(session, tenant_id), "a": list(source_addresses)},
    )
    return found.first() is not None


async def lock_nas_client(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    source_address: str,
    secret: bytes | None,
    nas_key: str,
) -> str | None:
    """Locks a client's row and returns the NAS key it points at; None: there is no client.

    With a secret, first stores it, inserting the client (pointed at `nas_key`) if missing.
    So of two first writes at once, the second waits for the first's row and then updates
    it, instead of finding no client and overwriting the first's NAS key with its own.
    (On SQLite begin_write has serialized the transaction already.)
    """
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    if secret is not None:
        now = dt.datetime.now(dt.UTC) if pg else _sqlite_now()
        await session.execute(
            text(
                "INSERT INTO usage_nas_clients"
                " (tenant_id, source_address, secret, nas_key, created_at, updated_at)"
                " VALUES (:t, :a, :s, :k, :now, :now) ON CONFLICT (tenant_id, source_address)"
                " DO UPDATE SET secret = excluded.secret, updated_at = excluded.updated_at"
            ),
            {"t": tenant, "a": source_address, "s": secret, "k": nas_key, "now": now},
        )
    lock = " FOR UPDATE" if pg else ""
    row = await session.execute(
        text(
            "SELECT nas_key FROM usage_nas_clients WHERE tenant_id = :t AND source_address = :a"
            + lock
        ),
        {"t": tenant, "a": source_address},
    )
    first = row.first()
    return None if first is None else str(first[0])


async def point_nas_client(
    session: AsyncSession, tenant_id: uuid.UUID, source_address: str, nas_key: str
) -> None:
    """Points a client (locked by lock_nas_client) at a NAS key; the same key writes nothing."""
    now = dt.datetime.now(dt.UTC) if _pg(session) else _sqlite_now()
    await session.execute(
        text(
            "UPDATE usage_nas_clients SET nas_key = :k, updated_at = :now"
            " WHERE tenant_id = :t AND source_address = :a AND nas_key <> :k"
        ),
        {"t": tenant_param(session, tenant_id), "a": source_address, "k": nas_key, "now": now},
    )


async def set_nas_policy(
    session: AsyncSession, tenant_id: uuid.UUID, state: NasState, policy: Policy
) -> None:
    """Sets the policy of a NAS whose row lock_nas locked (`state`). A change takes a NAS
    sequence number of its own (so replicas reload the NAS) and is kept in
    `usage_nas_policies` from that number on: every ledger batch and sweep then lies on one
    side of it, and a rebuild applies each with the policy it was applied with. An
    unchanged policy writes nothing."""
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    now = dt.datetime.now(dt.UTC) if pg else _sqlite_now()
    if state.policy == policy:
        return
    seq = state.seq + 1
    columns = ", ".join(POLICY_COLUMNS)
    params: dict[str, Any] = {f"p{i}": v for i, v in enumerate(policy)}
    params.update({"t": tenant, "k": state.nas_key, "s": seq, "now": now})
    updates = ", ".join(f"{c} = :p{i}" for i, c in enumerate(POLICY_COLUMNS))
    await session.execute(
        text(
            f"UPDATE usage_nas SET {updates}, seq = :s, updated_at = :now"
            " WHERE tenant_id = :t AND nas_key = :k"
        ),
        params,
    )
    values = ", ".join(f":p{i}" for i in range(len(POLICY_COLUMNS)))
    await session.execute(
        text(
            f"INSERT INTO usage_nas_policies (tenant_id, nas_key, from_seq, {columns}, set_at)"
            f" VALUES (:t, :k, :s, {values}, :now)"
        ),
        params,
    )


async def policy_history(
    session: AsyncSession, tenant_id: uuid.UUID, nas_key: str
) -> list[tuple[int, Policy]]:
    """(from_seq, policy) of a NAS in sequence order; before the first, DEFAULT_POLICY."""
    rows = await session.execute(
        text(
            f"SELECT from_seq, {', '.join(POLICY_COLUMNS)} FROM usage_nas_policies"
            " WHERE tenant_id = :t AND nas_key = :k ORDER BY from_seq"
        ),
        {"t": tenant_param(session, tenant_id), "k": nas_key},
    )
    return [(int(row[0]), _policy(row[1:])) for row in rows.all()]


# ---------------------------------------------------------------- sessions of a NAS


def _select_sessions(pg: bool) -> str:
    return (
        "SELECT nas_key, acct_session_id, generation, user_name, calling_station_id,"
        f" framed_ip_address, {us_sql(pg, 'start_at')},"
        f" CASE WHEN stop_at IS NULL THEN -1 ELSE {us_sql(pg, 'stop_at')} END,"
        f" {us_sql(pg, 'last_update_at')}, session_time_s, input_bytes, output_bytes,"
        " hwm_input, hwm_output, last_key, flags, terminate_cause, open"
        " FROM usage_sessions"
    )


def session_arrays(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Database rows (in SESSION_COLUMNS order) to the engine's column arrays."""
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * 18

    def ints(i: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.array(cols[i], dtype=np.int64).astype(dtype)

    return {
        "nas_key": list(cols[0]),
        "acct_session_id": list(cols[1]),
        "generation": ints(2, np.uint32),
        "user_name": list(cols[3]),
        "calling_station_id": list(cols[4]),
        "framed_ip_address": list(cols[5]),
        "start_us": ints(6, np.int64),
        "stop_us": ints(7, np.int64),
        "last_update_us": ints(8, np.int64),
        "session_time_s": ints(9, np.uint32),
        # Stored bit for bit in signed BIGINT: reinterpret, never convert.
        "input_bytes": np.array(cols[10], dtype=np.int64).view(np.uint64),
        "output_bytes": np.array(cols[11], dtype=np.int64).view(np.uint64),
        "hwm_input": np.array(cols[12], dtype=np.int64).view(np.uint64),
        "hwm_output": np.array(cols[13], dtype=np.int64).view(np.uint64),
        "last_key": np.frombuffer(b"".join(bytes(k) for k in cols[14]), dtype="V16").copy(),
        "flags": ints(15, np.uint32),
        "terminate_cause": ints(16, np.uint32),
        "open": np.array([bool(v) for v in cols[17]], dtype=np.bool_),
    }


async def recent_onoffs(
    session: AsyncSession, tenant_id: uuid.UUID, nas_key: str, limit: int
) -> list[tuple[bytes, int, int, bool]]:
    """The NAS's last `limit` accepted Accounting-On/Offs in the order they were applied,
    oldest first: (content key, status type, event time µs, timed by its arrival), for
    Engine.recall_onoffs."""
    pg = _pg(session)
    rows = await session.execute(
        text(
            f"SELECT content_key, status_type, {us_sql(pg, 'event_at')}, entry_bytes"
            " FROM usage_ledger WHERE tenant_id = :t AND nas_key = :k"
            " AND status_type IN (7, 8) AND status = 1"
            " ORDER BY nas_seq DESC, entry_index DESC LIMIT :n"
        ),
        {"t": tenant_param(session, tenant_id), "k": nas_key, "n": limit},
    )
    return [
        (bytes(key), int(status), int(event), timed_by_arrival(bytes(entry), int(event)))
        for key, status, event, entry in reversed(rows.all())
    ]


def timed_by_arrival(entry: bytes, event_us: int) -> bool:
    """Whether a ledger entry's event time was its arrival - Acct-Delay-Time: it had no
    Event-Timestamp, or one the engine did not trust (skewed; the event time then differs
    from it by more than the tolerance). A trusted one is the event time itself."""
    message = usage_pb2.AccountingEntry.FromString(entry)
    if message.HasField("decoded"):
        record = message.decoded
        if not record.HasField("event_timestamp"):
            return True
        ts = record.event_timestamp
        return ts.seconds * 1_000_000 + ts.nanos // 1000 != event_us
    try:
        seconds = core.decode_radius(message.raw.packet, None).get("event_timestamp")
    except (core.RatingError, ValueError):
        return True
    return not isinstance(seconds, int) or seconds * 1_000_000 != event_us


async def live_session_rows(
    session: AsyncSession, tenant_id: uuid.UUID, nas_key: str, retain_closed_s: int
) -> tuple[list[Sequence[Any]], int | None]:
    """Open sessions of a NAS, and closed ones updated within `retain_closed_s` of its newest
    update (late Stops, interims after Stop and repeats must find their instance), and the
    newest generation of every id of those (the engine numbers an id's next instance from
    the newest it holds); and the latest start of an older closed instance left out (None:
    all are there)."""
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    bounds = await session.execute(
        text(
            f"SELECT max({us_sql(pg, 'last_update_at')}),"
            f" {us_sql(pg, 'min(CASE WHEN open THEN NULL ELSE last_update_at END)')}"
            " FROM usage_sessions WHERE tenant_id = :t AND nas_key = :k"
        ),
        {"t": tenant, "k": nas_key},
    )
    top, oldest_closed = bounds.one()
    if top is None:
        return [], None
    cutoff = int(top) - retain_closed_s * US
    params = {"t": tenant, "k": nas_key, "c": cutoff}
    live = f"(open OR last_update_at >= {ts_sql(pg, ':c')})"
    rows = await session.execute(
        text(
            f"{_select_sessions(pg)} WHERE tenant_id = :t AND nas_key = :k AND ({live}"
            " OR (acct_session_id, generation) IN (SELECT acct_session_id, max(generation)"
            " FROM usage_sessions WHERE tenant_id = :t AND nas_key = :k AND acct_session_id IN"
            " (SELECT acct_session_id FROM usage_sessions WHERE tenant_id = :t"
            f" AND nas_key = :k AND {live}) GROUP BY acct_session_id))"
            " ORDER BY acct_session_id, generation"
        ),
        params,
    )
    if oldest_closed is None or int(oldest_closed) >= cutoff:
        return list(rows.all()), None
    omitted = await session.execute(
        text(
            f"SELECT {us_sql(pg, 'max(start_at)')} FROM usage_sessions WHERE tenant_id = :t"
            f" AND nas_key = :k AND NOT open AND last_update_at < {ts_sql(pg, ':c')}"
        ),
        params,
    )
    return list(rows.all()), int(omitted.scalar_one())


NEWEST_CHUNK = 500


async def newest_sessions(
    session: AsyncSession, tenant_id: uuid.UUID, pairs: Sequence[tuple[str, str]]
) -> list[Sequence[Any]]:
    """The newest stored instance of each (NAS key, Acct-Session-Id) that has one: one
    primary-key probe per pair, whatever the table's statistics say."""
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    if pg:
        # A lateral probe per pair: with IN lists the planner may scan the NAS's rows when
        # its statistics are stale (measured: 37 ms per 500 ids on a freshly loaded table).
        rows = await session.execute(
            text(
                "SELECT x.* FROM unnest(CAST(:k AS TEXT[]), CAST(:s AS TEXT[])) AS p(k, s)"
                f" CROSS JOIN LATERAL ({_select_sessions(pg)} WHERE tenant_id = :t"
                " AND nas_key = p.k AND acct_session_id = p.s"
                " ORDER BY generation DESC LIMIT 1) AS x"
            ),
            {"t": tenant, "k": [k for k, _ in pairs], "s": [s for _, s in pairs]},
        )
        return list(rows.all())
    by_nas: dict[str, list[str]] = {}
    for nas_key, sid in pairs:
        by_nas.setdefault(nas_key, []).append(sid)
    found: list[Sequence[Any]] = []
    query = text(
        f"{_select_sessions(pg)} AS s WHERE tenant_id = :t AND nas_key = :k"
        " AND acct_session_id IN :sids AND generation = (SELECT max(m.generation)"
        " FROM usage_sessions AS m WHERE m.tenant_id = s.tenant_id"
        " AND m.nas_key = s.nas_key AND m.acct_session_id = s.acct_session_id)"
    ).bindparams(bindparam("sids", expanding=True))
    for nas_key, sids in by_nas.items():
        for lo in range(0, len(sids), NEWEST_CHUNK):
            rows = await session.execute(
                query, {"t": tenant, "k": nas_key, "sids": sids[lo : lo + NEWEST_CHUNK]}
            )
            found.extend(rows.all())
    return found


async def sessions_starting_within(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    wanted: Sequence[tuple[str, str, int, int]],
) -> list[Sequence[Any]]:
    """The stored instances of each (NAS key, Acct-Session-Id, lo_us, hi_us) whose start
    lies in [lo_us, hi_us]: one primary-key prefix probe per id."""
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    start = us_sql(pg, "start_at")
    if pg:
        rows = await session.execute(
            text(
                "SELECT x.* FROM unnest(CAST(:k AS TEXT[]), CAST(:s AS TEXT[]),"
                " CAST(:lo AS BIGINT[]), CAST(:hi AS BIGINT[])) AS p(k, s, lo, hi)"
                f" CROSS JOIN LATERAL ({_select_sessions(pg)} WHERE tenant_id = :t"
                f" AND nas_key = p.k AND acct_session_id = p.s AND {start} BETWEEN p.lo AND p.hi)"
                " AS x"
            ),
            {
                "t": tenant,
                "k": [w[0] for w in wanted],
                "s": [w[1] for w in wanted],
                "lo": [w[2] for w in wanted],
                "hi": [w[3] for w in wanted],
            },
        )
        return list(rows.all())
    query = text(
        f"{_select_sessions(pg)} WHERE tenant_id = :t AND nas_key = :k AND acct_session_id = :s"
        f" AND {start} BETWEEN :lo AND :hi"
    )
    found: list[Sequence[Any]] = []
    for nas_key, sid, lo, hi in wanted:
        rows = await session.execute(
            query, {"t": tenant, "k": nas_key, "s": sid, "lo": lo, "hi": hi}
        )
        found.extend(rows.all())
    return found


async def open_session_nas_keys(session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        text(
            "SELECT DISTINCT nas_key FROM usage_sessions WHERE tenant_id = :t AND open"
            " ORDER BY nas_key"
        ),
        {"t": tenant_param(session, tenant_id)},
    )
    return [row[0] for row in rows.all()]


# ---------------------------------------------------------------- batch writes


async def insert_ledger(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rows: LedgerRows,
    batch_id: str,
    received_us: int,
) -> npt.NDArray[np.int64]:
    """Appends rows whose content key is new; returns the entry indices that already were
    in the ledger (the primary key is the final dedup authority)."""
    if not len(rows):
        return np.empty(0, dtype=np.int64)
    pg = _pg(session)
    conn = await driver(session)
    columns = [getattr(rows, c) for c in _LEDGER_STAGE_COLUMNS]
    insert = (
        "INSERT INTO usage_ledger (tenant_id, content_key, nas_key, nas_seq, entry_index,"
        " entry_bytes, status, status_type, event_at, arrival_at, received_at, batch_id)"
        " SELECT {t}, content_key, nas_key, nas_seq, entry_index, entry_bytes, status,"
        f" status_type, {ts_sql(pg, 'event_us')}, {ts_sql(pg, 'arrival_us')},"
        " {received}, {batch} FROM usage_ledger_stage WHERE true"
        " ON CONFLICT DO NOTHING"
    )
    if pg:
        await conn.execute(_PG_STAGE)
        await conn.copy_records_to_table(
            "usage_ledger_stage", records=zip(*columns, strict=True), columns=_LEDGER_STAGE_COLUMNS
        )
        sql = insert.format(t="$1", received=ts_sql(True, "$2::bigint"), batch="$3")
        existing = await conn.fetch(
            f"WITH ins AS ({sql} RETURNING entry_index) SELECT s.entry_index"
            " FROM usage_ledger_stage s WHERE NOT EXISTS"
            " (SELECT 1 FROM ins WHERE ins.entry_index = s.entry_index)",
            tenant_id,
            received_us,
            batch_id,
        )
        return np.array([r[0] for r in existing], dtype=np.int64)
    for statement in _SQLITE_STAGE:
        await conn.execute(statement)
    await conn.execute("DELETE FROM temp.usage_ledger_stage")
    await conn.executemany(
        "INSERT INTO temp.usage_ledger_stage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        zip(*columns, strict=True),
    )
    cursor = await conn.execute(
        "SELECT s.entry_index FROM temp.usage_ledger_stage s CROSS JOIN usage_ledger l"
        " ON l.tenant_id = ? AND l.content_key = s.content_key",
        (tenant_id.hex,),
    )
    existing = await cursor.fetchall()
    await conn.execute(
        insert.format(t="?1", received=ts_sql(False, "?2"), batch="?3"),
        (tenant_id.hex, received_us, batch_id),
    )
    await conn.execute("DELETE FROM temp.usage_ledger_stage")
    return np.array([r[0] for r in existing], dtype=np.int64)


async def ledger_holds(
    session: AsyncSession, tenant_id: uuid.UUID, keys: Sequence[bytes]
) -> set[bytes]:
    """Which of these content keys the tenant's ledger holds."""
    tenant = tenant_param(session, tenant_id)
    if _pg(session):
        rows = await session.execute(
            text(
                "SELECT content_key FROM usage_ledger WHERE tenant_id = :t"
                " AND content_key = ANY(CAST(:keys AS BYTEA[]))"
            ),
            {"t": tenant, "keys": list(keys)},
        )
        return {bytes(row[0]) for row in rows}
    found: set[bytes] = set()
    for marks, params in _in_chunks(keys):
        rows = await session.execute(
            text(
                "SELECT content_key FROM usage_ledger"
                f" WHERE tenant_id = :t AND content_key IN ({marks})"
            ),
            {"t": tenant, **params},
        )
        found.update(bytes(row[0]) for row in rows)
    return found


def _in_chunks(values: Sequence[Any], size: int = 500) -> list[tuple[str, dict[str, Any]]]:
    """SQLite `IN (...)` lists of at most `size` values: (placeholders, parameters)."""
    out = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        marks = ", ".join(f":k{i}" for i in range(len(chunk)))
        out.append((marks, {f"k{i}": v for i, v in enumerate(chunk)}))
    return out


async def insert_quarantine(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    batch_id: str,
    entries: Sequence[tuple[int, str, bytes]],
    received_us: int,
) -> None:
    """Quarantined entries (index, reason, bytes); a resent one is kept once."""
    if not entries:
        return
    pg = _pg(session)
    tenant = tenant_param(session, tenant_id)
    await session.execute(
        text(
            "INSERT INTO usage_quarantine (tenant_id, entry_digest, batch_id, entry_index,"
            f" reason, entry_bytes, received_at) VALUES (:t, :d, :b, :i, :r, :e,"
            f" {ts_sql(pg, ':rec')}) ON CONFLICT DO NOTHING"
        ),
        [
            {
                "t": tenant,
                "d": hashlib.sha256(data).digest()[:16],
                "b": batch_id,
                "i": index,
                "r": reason,
                "e": data,
                "rec": received_us,
            }
            for index, reason, data in entries
        ],
    )


def object_array(values: Sequence[Any]) -> npt.NDArray[Any]:
    """A 1-d numpy array of Python objects (text, bytes), selectable by index arrays."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def session_columns(cols: Any) -> list[npt.NDArray[Any]]:
    """SessionColumns as numpy columns in SESSION_COLUMNS order (counters bit for bit as
    BIGINT; text as object arrays)."""

    def signed(values: Any) -> npt.NDArray[np.int64]:
        return np.ascontiguousarray(values, dtype=np.uint64).view(np.int64)

    return [
        object_array(cols.nas_key),
        object_array(cols.acct_session_id),
        np.asarray(cols.generation, dtype=np.int64),
        object_array(cols.user_name),
        object_array(cols.calling_station_id),
        object_array(cols.framed_ip_address),
        np.asarray(cols.start_us, dtype=np.int64),
        np.asarray(cols.stop_us, dtype=np.int64),
        np.asarray(cols.last_update_us, dtype=np.int64),
        np.asarray(cols.session_time_s, dtype=np.int64),
        signed(cols.input_bytes),
        signed(cols.output_bytes),
        signed(cols.hwm_input),
        signed(cols.hwm_output),
        np.asarray(cols.last_key),
        np.asarray(cols.flags, dtype=np.int64),
        np.asarray(cols.terminate_cause, dtype=np.int64),
        np.asarray(cols.open, dtype=np.bool_),
        object_array(cols.framed_ipv6_prefix),
        object_array(cols.delegated_ipv6_prefix),
    ]


_SESSION_TARGET = (
    "nas_key, acct_session_id, generation, user_name, calling_station_id, framed_ip_address,"
    " framed_ipv6_prefix, delegated_ipv6_prefix, subscription_id, start_at, stop_at,"
    " last_update_at, session_time_s, input_bytes, output_bytes, hwm_input, hwm_output,"
    " last_key, flags, terminate_cause, open"
)
# In attribution_sql's argument order.
IDENTITY_COLUMNS = (
    "user_name",
    "calling_station_id",
    "framed_ip_address",
    "framed_ipv6_prefix",
    "delegated_ipv6_prefix",
)
# The parameter (SESSION_COLUMNS position) of each identity column.
_IDENTITY_PARAMS = tuple(SESSION_COLUMNS.index(c) for c in IDENTITY_COLUMNS)


def merged_identity(old: str, new: Sequence[str]) -> list[str]:
    """The IDENTITY_COLUMNS (User-Name, Calling-Station-Id, Framed-IP-Address, the IPv6
    prefixes) after a write of row `old` with the values `new`: the instance keeps the
    first non-empty value it was given (the engine sends only what a batch's records
    carried; a row from a sweep or a NAS reboot carries none)."""
    return [
        f"CASE WHEN {old}.{c} = '' THEN {v} ELSE {old}.{c} END"
        for c, v in zip(IDENTITY_COLUMNS, new, strict=True)
    ]


def kept_attribution(old: str, attribution: str, as_of: str | None) -> str:
    """The subscription of row `old` after a write that attributes it by `attribution`:
    once the instance has usage, the one it had (an attribution with usage sticks: moving
    that usage when an identity is registered later would re-bill it); before, a batch's
    (`as_of` given) as the instance's identity is by now, so a User-Name in its first
    Interim outranks the Calling-Station-Id of a Start before it, however the records
    were split into batches. A sweep (no `as_of`) only attributes an unattributed one."""
    sticky = f"COALESCE({old}.subscription_id, {attribution})"
    if as_of is None:
        return sticky
    unused = f"{old}.input_bytes = 0 AND {old}.output_bytes = 0 AND {old}.session_time_s = 0"
    return (
        f"CASE WHEN {unused} THEN COALESCE({attribution}, {old}.subscription_id) ELSE {sticky} END"
    )


def _session_update(tenant: str, as_of: str | None, since: bool) -> str:
    """ON CONFLICT DO UPDATE of a session row: identity merged, attribution kept or made
    (kept_attribution) on the merged identity; the engine's state overwrites."""
    identity = merged_identity("usage_sessions", [f"excluded.{c}" for c in IDENTITY_COLUMNS])
    attribution = batch_attribution_sql(tenant, *identity, received=as_of, registered_since=since)
    return (
        ", ".join(f"{c} = {v}" for c, v in zip(IDENTITY_COLUMNS, identity, strict=True))
        + f", subscription_id = {kept_attribution('usage_sessions', attribution, as_of)},"
        + _SESSION_STATE_UPDATE
    )


_SESSION_STATE_UPDATE = (
    " start_at = excluded.start_at, stop_at = excluded.stop_at,"
    " last_update_at = excluded.last_update_at, session_time_s = excluded.session_time_s,"
    " input_bytes = excluded.input_bytes, output_bytes = excluded.output_bytes,"
    " hwm_input = excluded.hwm_input, hwm_output = excluded.hwm_output,"
    " last_key = excluded.last_key, flags = excluded.flags,"
    " terminate_cause = excluded.terminate_cause, open = excluded.open"
)


def _session_values(pg: bool, p: list[str], tenant: str, as_of: str | None, since: bool) -> str:
    """The VALUES/SELECT list of a session row from parameter expressions p[0..19]."""
    identity = [p[i] for i in _IDENTITY_PARAMS]
    return (
        f"{tenant}, {p[0]}, {p[1]}, {p[2]}, {p[3]}, {p[4]}, {p[5]}, {p[18]}, {p[19]},"
        f" {batch_attribution_sql(tenant, *identity, received=as_of, registered_since=since)},"
        f" {ts_sql(pg, p[6])}, CASE WHEN {p[7]} < 0 THEN NULL ELSE {ts_sql(pg, p[7])} END,"
        f" {ts_sql(pg, p[8])}, {p[9]}, {p[10]}, {p[11]}, {p[12]}, {p[13]}, {p[14]}, {p[15]},"
        f" {p[16]}, {p[17]}"
    )


_PG_SESSION_TYPES = (
    "text",
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bytea",
    "bigint",
    "bigint",
    "boolean",
    "text",
    "text",
)


def _pg_session_upsert(arrays: Sequence[str], as_of: str | None, since: bool) -> str:
    """CTEs `u` (the batch's session rows, with ordinality `o`), `upd` (existing instances
    updated, without attribution lookups unless unattributed or without usage:
    kept_attribution) and `ins` (new instances inserted with their subscription); `r` maps every
    row's ordinality `o` to its subscription `sub` after the write and its session key
    (`n`, `a`, `g`). $1 is the tenant, `arrays` the SQL expressions of the N_SESSION
    session columns (pgarrays.stage), `as_of` and `since` batch_attribution_sql's
    `received` and `registered_since`."""
    unnest = ", ".join(arrays[:N_SESSION])
    names = [f"u.c{i}" for i in range(N_SESSION)]
    identity = merged_identity("s", [names[i] for i in _IDENTITY_PARAMS])
    attribution = batch_attribution_sql(
        "$1::uuid", *identity, received=as_of, registered_since=since
    )
    updates = ", ".join(
        f"{column} = {value}"
        for column, value in zip(
            _SESSION_TARGET.replace(" ", "").split(",")[3:],
            [
                *identity,
                kept_attribution("s", attribution, as_of),
                ts_sql(True, "u.c6"),
                f"CASE WHEN u.c7 < 0 THEN NULL ELSE {ts_sql(True, 'u.c7')} END",
                ts_sql(True, "u.c8"),
                *[f"u.c{i}" for i in range(9, 18)],
            ],
            strict=True,
        )
    )
    aliases = ", ".join(f"c{i}" for i in range(N_SESSION))
    return (
        f"WITH u AS (SELECT * FROM unnest({unnest}) WITH ORDINALITY AS u({aliases}, o)),"
        f" upd AS (UPDATE usage_sessions s SET {updates} FROM u WHERE s.tenant_id = $1::uuid"
        " AND s.nas_key = u.c0 AND s.acct_session_id = u.c1 AND s.generation = u.c2"
        " RETURNING u.o, s.subscription_id AS sub, s.nas_key AS n, s.acct_session_id AS a,"
        " s.generation AS g),"
        f" ins AS (INSERT INTO usage_sessions (tenant_id, {_SESSION_TARGET})"
        f" SELECT {_session_values(True, names, '$1::uuid', as_of, since)} FROM u"
        " WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.o = u.o)"
        " ON CONFLICT (tenant_id, nas_key, acct_session_id, generation)"
        f" DO UPDATE SET {_session_update('$1::uuid', as_of, since)}"
        " RETURNING nas_key, acct_session_id, generation, subscription_id),"
        " r AS (SELECT o, sub, n, a, g FROM upd UNION ALL SELECT u.o, ins.subscription_id,"
        " ins.nas_key, ins.acct_session_id, ins.generation FROM ins"
        " JOIN u ON u.c0 = ins.nas_key AND u.c1 = ins.acct_session_id"
        " AND u.c2 = ins.generation)"
    )


async def upsert_sessions(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    params: list[list[Any]],
    as_of_us: int | None = None,
    registered_since: bool = False,
) -> None:
    """SQLite: writes the final state of every session instance a batch touched (`params`:
    the SESSION_COLUMNS as lists), attributing new ones to a subscription and keeping or
    making the attribution of others (kept_attribution). With `as_of_us` (when the batch
    was received) and `registered_since`, as batch_attribution_sql; without (a sweep), by
    the identities as they are.
    (PostgreSQL writes sessions with their buckets in one statement:
    upsert_sessions_and_buckets.)"""
    if not params[0]:
        return
    if _pg(session):
        raise TypeError("upsert_sessions is SQLite's path; use upsert_sessions_and_buckets")
    conn = await driver(session)
    marks = [f"?{i + 2}" for i in range(N_SESSION)]
    as_of = None if as_of_us is None else ts_sql(False, f"?{N_SESSION + 2}")
    rows: Any = zip([tenant_id.hex] * len(params[0]), *params, strict=True)
    if as_of_us is not None:
        rows = ((*row, as_of_us) for row in rows)
    await conn.executemany(
        f"INSERT INTO usage_sessions (tenant_id, {_SESSION_TARGET})"
        f" VALUES ({_session_values(False, marks, '?1', as_of, registered_since)})"
        " ON CONFLICT (tenant_id, nas_key, acct_session_id, generation)"
        f" DO UPDATE SET {_session_update('?1', as_of, registered_since)}",
        rows,
    )


async def upsert_sessions_and_buckets(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    params: Sequence[Any],
    bucket_row: npt.NDArray[np.int64],
    hour_us: npt.NDArray[np.int64],
    input_bytes: npt.NDArray[np.int64],
    output_bytes: npt.NDArray[np.int64],
    session_s: npt.NDArray[np.int64],
    as_of_us: int | None = None,
    registered_since: bool = False,
) -> None:
    """PostgreSQL: sessions and their hourly deltas in one statement. The buckets take each
    session's subscription and identity from the upsert itself (RETURNING), not from a
    second join with usage_sessions. `params`: the N_SESSION session columns (numpy arrays
    or lists); `bucket_row` indexes their rows; `as_of_us` and `registered_since` as
    upsert_sessions'."""
    if not len(params[0]):
        return
    conn = await driver(session)
    hour = ts_sql(True, "hour_us")
    arrays = await pgarrays.stage(
        conn,
        "usage_session_bucket_stage",
        (*_PG_SESSION_TYPES, *["bigint"] * 5),
        [*params, bucket_row + 1, hour_us, input_bytes, output_bytes, session_s],
    )
    # `mv`: the past unattributed usage of instances attributed by now (by this write, or by
    # an identity registered since) leaves with them; it and `j`'s attributed deltas are
    # added by one INSERT (two in one statement could not both update a bucket row).
    as_of = None if as_of_us is None else ts_sql(True, "$2::bigint")
    await conn.execute(
        _pg_session_upsert(arrays, as_of, registered_since) + ","
        " mv AS (DELETE FROM usage_unattributed_buckets x USING r WHERE r.sub IS NOT NULL"
        " AND x.tenant_id = $1::uuid AND x.nas_key = r.n AND x.acct_session_id = r.a"
        " AND x.generation = r.g RETURNING r.sub, x.hour, x.upload_bytes AS ib,"
        " x.download_bytes AS ob, x.session_time_s AS ss),"
        " j AS (SELECT r.sub, r.n, r.a, r.g, d.hour_us, d.ib, d.ob, d.ss"
        f" FROM unnest({', '.join(arrays[N_SESSION:])}) AS d(o, hour_us, ib, ob, ss)"
        " JOIN r ON r.o = d.o),"
        f" a AS ({_ATTRIBUTED.format(t='$1::uuid', deltas=_attributed_deltas(hour, 'mv'))}"
        " RETURNING 1)"
        f" {_UNATTRIBUTED.format(t='$1::uuid', hour=hour)}",
        tenant_id,
        *(() if as_of_us is None else (as_of_us,)),
    )


_I64_MAX = "9223372036854775807"


def wrapping_add(a: str, b: str) -> str:
    """a + b of two BIGINT expressions modulo 2**64 (signed, bit for bit the unsigned sum),
    in BIGINT arithmetic only: byte counters are unsigned 64-bit stored bit for bit, and a
    plain + past 2**63 - 1 fails the statement on PostgreSQL (and turns into a float on
    SQLite), which would hold back every batch adding to that bucket. Nested CASEs: SQL
    does not promise to evaluate AND's operands in order, and `max - b` overflows for a
    negative b."""
    return (
        f"CASE WHEN {b} > 0 THEN CASE WHEN {a} > {_I64_MAX} - {b}"
        f" THEN ({a} - {_I64_MAX} - 1) + ({b} - {_I64_MAX} - 1) ELSE {a} + {b} END"
        f" WHEN {b} < 0 THEN CASE WHEN {a} < -{_I64_MAX} - 1 - {b}"
        f" THEN ({a} + {_I64_MAX} + 1) + ({b} + {_I64_MAX} + 1) ELSE {a} + {b} END"
        f" ELSE {a} END"
    )


def wrapping_sum(x: str) -> str:
    """sum(x) of a BIGINT column modulo 2**64, as wrapping_add: the high and low 32 bits
    are summed apart (neither sum can overflow) and joined with a wrapping add."""
    high = f"(CAST(sum({x} >> 32) AS BIGINT) << 32)"
    low = f"CAST(sum({x} & 4294967295) AS BIGINT)"
    return wrapping_add(high, low)


_BUCKET_ADD = (
    "upload_bytes = "
    + wrapping_add("{t}.upload_bytes", "excluded.upload_bytes")
    + ", download_bytes = "
    + wrapping_add("{t}.download_bytes", "excluded.download_bytes")
    + ", session_time_s = {t}.session_time_s + excluded.session_time_s"
)


def _attributed_deltas(hour: str, moved: str | None = None) -> str:
    """(sub, hour, ib, ob, ss) of `j`'s attributed deltas, and of the rows `moved` leaves."""
    deltas = f"SELECT sub, {hour} AS hour, ib, ob, ss FROM j WHERE sub IS NOT NULL"
    if moved is not None:
        deltas += f" UNION ALL SELECT sub, hour, ib, ob, ss FROM {moved}"
    return deltas


# Both statements add in key order: the transactions of one batch's NAS groups may add to
# the same bucket row at once, and taking row locks in one order keeps them deadlock-free.
# `j`: a batch's deltas with their instance's subscription (sub) and key (n, a, g).
_ATTRIBUTED = (
    "INSERT INTO usage_buckets (tenant_id, subscription_id, hour, upload_bytes,"
    " download_bytes, session_time_s) SELECT {t}, sub, hour,"
    f" {wrapping_sum('ib')}, {wrapping_sum('ob')}, sum(ss)"
    " FROM ({deltas}) AS d WHERE true GROUP BY sub, hour ORDER BY sub, hour"
    " ON CONFLICT (tenant_id, subscription_id, hour) DO UPDATE SET "
    + _BUCKET_ADD.format(t="usage_buckets")
)
_UNATTRIBUTED = (
    "INSERT INTO usage_unattributed_buckets (tenant_id, nas_key, acct_session_id, generation,"
    " hour, upload_bytes, download_bytes, session_time_s)"
    " SELECT {t}, n, a, g, {hour},"
    f" {wrapping_sum('ib')}, {wrapping_sum('ob')}, sum(ss) FROM j WHERE sub IS NULL"
    " GROUP BY n, a, g, hour_us ORDER BY n, a, g, hour_us"
    " ON CONFLICT (tenant_id, nas_key, acct_session_id, generation, hour) DO UPDATE SET "
    + _BUCKET_ADD.format(t="usage_unattributed_buckets")
)


async def add_buckets(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    touched: Sequence[list[Any]],
    nas_key: list[str],
    acct_session_id: list[str],
    generation: list[int],
    hour_us: list[int],
    input_bytes: list[int],
    output_bytes: list[int],
    session_s: list[int],
) -> None:
    """SQLite: adds hourly deltas of sessions (already upserted) to their subscription's
    buckets, or to their instance's unattributed buckets, and moves the past unattributed
    usage of the `touched` instances (nas keys, session ids, generations) that are
    attributed by now to their subscription's (PostgreSQL writes all of it with the
    sessions: upsert_sessions_and_buckets)."""
    conn = await driver(session)
    for statement in _SQLITE_STAGE:
        await conn.execute(statement)
    t = (tenant_id.hex,)
    hour = ts_sql(False, "hour_us")
    moved = None
    any_unattributed = await conn.execute(
        "SELECT 1 FROM usage_unattributed_buckets WHERE tenant_id = ?1 LIMIT 1", t
    )
    if touched[0] and await any_unattributed.fetchone() is not None:
        await conn.execute("DELETE FROM temp.usage_touched_stage")
        await conn.executemany(
            "INSERT INTO temp.usage_touched_stage VALUES (?, ?, ?)", zip(*touched, strict=True)
        )
        # CROSS JOIN makes SQLite's planner drive from the (unindexed) stage into the keys.
        moved = (
            "SELECT s.subscription_id AS sub, x.hour, x.upload_bytes AS ib,"
            " x.download_bytes AS ob, x.session_time_s AS ss FROM temp.usage_touched_stage m"
            " CROSS JOIN usage_sessions s ON s.tenant_id = ?1 AND s.nas_key = m.nas_key"
            " AND s.acct_session_id = m.sid AND s.generation = m.gen"
            " CROSS JOIN usage_unattributed_buckets x ON x.tenant_id = ?1"
            " AND x.nas_key = m.nas_key AND x.acct_session_id = m.sid AND x.generation = m.gen"
            " WHERE s.subscription_id IS NOT NULL"
        )
    await conn.execute("DELETE FROM temp.usage_bucket_stage")
    await conn.executemany(
        "INSERT INTO temp.usage_bucket_stage VALUES (?, ?, ?, ?, ?, ?, ?)",
        zip(
            nas_key,
            acct_session_id,
            generation,
            hour_us,
            input_bytes,
            output_bytes,
            session_s,
            strict=True,
        ),
    )
    with_j = (
        "WITH j AS (SELECT s.subscription_id AS sub, s.nas_key AS n, s.acct_session_id AS a,"
        " s.generation AS g, d.hour_us, d.ib, d.ob, d.ss FROM temp.usage_bucket_stage d"
        " CROSS JOIN usage_sessions s ON s.tenant_id = ?1 AND s.nas_key = d.nas_key"
        " AND s.acct_session_id = d.sid AND s.generation = d.gen)"
    )
    with_mv = with_j if moved is None else f"{with_j}, mv AS ({moved})"
    deltas = _attributed_deltas(hour, None if moved is None else "mv")
    await conn.execute(f"{with_mv} {_ATTRIBUTED.format(t='?1', deltas=deltas)}", t)
    await conn.execute(f"{with_j} {_UNATTRIBUTED.format(t='?1', hour=hour)}", t)
    if moved is not None:
        await conn.execute(
            "DELETE FROM usage_unattributed_buckets WHERE tenant_id = ?1"
            " AND (nas_key, acct_session_id, generation) IN (SELECT m.nas_key, m.sid, m.gen"
            " FROM temp.usage_touched_stage m CROSS JOIN usage_sessions s ON s.tenant_id = ?1"
            " AND s.nas_key = m.nas_key AND s.acct_session_id = m.sid AND s.generation = m.gen"
            " WHERE s.subscription_id IS NOT NULL)",
            t,
        )
        await conn.execute("DELETE FROM temp.usage_touched_stage")
    await conn.execute("DELETE FROM temp.usage_bucket_stage")


_PG_ANOMALY_TYPES = ("text", "text", "bigint", "integer", "bigint", "text")


async def insert_anomalies(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rows: Sequence[tuple[str, str, int | None, int, int, str]],
    detected_us: int,
) -> None:
    """(nas_key, acct_session_id, generation, entry_index, flag, detail) of one batch."""
    if not rows:
        return
    pg = _pg(session)
    batch_uid = uuid.uuid4()
    if pg:
        columns = [object_array(c) for c in zip(*rows, strict=True)]
        conn = await driver(session)
        arrays = await pgarrays.stage(conn, "usage_anomaly_stage", _PG_ANOMALY_TYPES, columns)
        await conn.execute(
            "INSERT INTO usage_anomalies (tenant_id, batch_uid, ordinal, nas_key,"
            " acct_session_id, generation, entry_index, flag, detail, detected_at)"
            " SELECT $1::uuid, $2::uuid, o - 1, n, s, g, i, f, d,"
            f" {ts_sql(True, '$3::bigint')} FROM unnest({', '.join(arrays)})"
            " WITH ORDINALITY AS a(n, s, g, i, f, d, o)",
            tenant_id,
            batch_uid,
            detected_us,
        )
        return
    tenant = tenant_param(session, tenant_id)
    await session.execute(
        text(
            "INSERT INTO usage_anomalies (tenant_id, batch_uid, ordinal, nas_key,"
            " acct_session_id, generation, entry_index, flag, detail, detected_at)"
            f" VALUES (:t, :b, :o, :n, :s, :g, :i, :f, :d, {ts_sql(pg, ':at')})"
        ),
        [
            {
                "t": tenant,
                "b": batch_uid.hex,
                "o": ordinal,
                "n": nas,
                "s": sid,
                "g": gen,
                "i": index,
                "f": flag,
                "d": detail,
                "at": detected_us,
            }
            for ordinal, (nas, sid, gen, index, flag, detail) in enumerate(rows)
        ],
    )


async def record_sweep(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    nas_keys: Sequence[str],
    after_seqs: Sequence[int],
    as_of_us: int,
) -> None:
    if not nas_keys:
        return
    pg = _pg(session)
    await session.execute(
        text(
            "INSERT INTO usage_sweeps (tenant_id, nas_key, after_seq, as_of)"
            f" VALUES (:t, :k, :s, {ts_sql(pg, ':a')}) ON CONFLICT DO NOTHING"
        ),
        [
            {"t": tenant_param(session, tenant_id), "k": k, "s": int(s), "a": as_of_us}
            for k, s in zip(nas_keys, after_seqs, strict=True)
        ],
    )


# ---------------------------------------------------------------- attribution


async def reattribute(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    registered_by_us: int | None = None,
    nas_key: str | None = None,
) -> int:
    """Attributes unattributed sessions whose identity now matches a subscription and moves
    their unattributed buckets to the subscription's; returns sessions changed. Each is
    attributed by the identities registered when the first of its matching ones was (what
    that registration's re-attribution did, or would have done had a race not hidden the
    session from it).

    A rebuild replays the registrations' re-attributions with the sessions whose first
    matching identity was registered by `registered_by_us`, on `nas_key` alone."""
    t = ":t"
    params: dict[str, Any] = {"t": tenant_param(session, tenant_id)}
    pg = _pg(session)
    columns = [f"usage_sessions.{c}" for c in IDENTITY_COLUMNS]
    first = first_registration_sql(t, *columns)
    current = attribution_sql(t, *columns, as_of=first)
    where = ""
    if nas_key is not None:
        where += " AND usage_sessions.nas_key = :k"
        params["k"] = nas_key
    if registered_by_us is not None:
        where += f" AND {first} <= {ts_sql(pg, ':by')}"
        params["by"] = registered_by_us
    updated = await session.execute(
        text(
            f"UPDATE usage_sessions SET subscription_id = {current} WHERE tenant_id = {t}"
            f" AND subscription_id IS NULL AND {current} IS NOT NULL{where}"
        ),
        params,
    )

    # Every unattributed bucket of an instance attributed by now moves (those of the
    # instances just attributed, and any an earlier race left behind).
    def on_nas(table: str) -> str:
        return "" if nas_key is None else f" AND {table}.nas_key = :k"

    owner = (
        "FROM usage_sessions s WHERE s.tenant_id = {x}.tenant_id AND s.nas_key = {x}.nas_key"
        " AND s.acct_session_id = {x}.acct_session_id AND s.generation = {x}.generation"
        " AND s.subscription_id IS NOT NULL"
    )
    moved = (
        "INSERT INTO usage_buckets (tenant_id, subscription_id, hour, upload_bytes,"
        " download_bytes, session_time_s) SELECT :t, m.sub, m.hour,"
        f" {wrapping_sum('m.up')}, {wrapping_sum('m.down')}, sum(m.secs)"
        f" FROM (SELECT (SELECT s.subscription_id {owner.format(x='u')}) AS sub,"
        " u.hour, u.upload_bytes AS up, u.download_bytes AS down, u.session_time_s AS secs"
        f" FROM usage_unattributed_buckets u WHERE u.tenant_id = {t}{on_nas('u')}) m"
        " WHERE m.sub IS NOT NULL GROUP BY m.sub, m.hour"
        " ON CONFLICT (tenant_id, subscription_id, hour) DO UPDATE SET "
        + _BUCKET_ADD.format(t="usage_buckets")
    )
    await session.execute(text(moved), params)
    await session.execute(
        text(
            f"DELETE FROM usage_unattributed_buckets WHERE tenant_id = {t}"
            f"{on_nas('usage_unattributed_buckets')}"
            f" AND EXISTS (SELECT 1 {owner.format(x='usage_unattributed_buckets')})"
        ),
        params,
    )
    return int(getattr(updated, "rowcount", 0) or 0)


async def identity_registrations(session: AsyncSession, tenant_id: uuid.UUID) -> list[int]:
    """When each of the tenant's RADIUS identities was registered (µs), in order."""
    rows = await session.execute(
        text(
            f"SELECT {us_sql(_pg(session), 'created_at')} FROM radius_identities"
            " WHERE tenant_id = :t ORDER BY 1"
        ),
        {"t": tenant_param(session, tenant_id)},
    )
    return [int(row[0]) for row in rows.all()]


# ---------------------------------------------------------------- metered attribution


async def attribute_events(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Attributes unattributed metered events (RecordUsage by `radius_user_name`) whose
    identity now matches a subscription, by the sessions' rules (attribution_sql: a metered
    event names a User-Name only); returns the events changed. Kept apart from
    reattribute()'s session statements: it touches usage_events alone."""
    t = ":t"
    current = attribution_sql(t, "usage_events.radius_user_name", "''", "''", "''", "''")
    updated = await session.execute(
        text(
            f"UPDATE usage_events SET subscription_id = {current} WHERE tenant_id = {t}"
            " AND subscription_id IS NULL AND radius_user_name <> ''"
            f" AND {current} IS NOT NULL"
        ),
        {"t": tenant_param(session, tenant_id)},
    )
    return int(getattr(updated, "rowcount", 0) or 0)
