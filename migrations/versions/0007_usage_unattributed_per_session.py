"""usage: unattributed hourly usage is kept per session instance, not per identity

Unattributed buckets were keyed by the identity a session had when its delta was written
(User-Name, Calling-Station-Id, Framed-IP-Address). An instance's identity grows: when a
later record named its user and that user had a subscription, the instance was attributed
but its earlier usage stayed in the bucket of its earlier identity, neither listed nor
moved. Keyed by (NAS key, Acct-Session-Id, generation), an instance's past usage moves
with it when it is attributed, and only its own.

Existing rows go to a session instance whose identity is theirs or grew from it (one with
exactly that identity first, then the lowest key): per identity and hour the totals are
kept; when several instances shared an identity the split between them is not known, and
`rating rebuild` recomputes it exactly from the ledger. A row whose identity no instance
has any more (none should exist) is kept under an empty session key. Rows that now
belong to an attributed instance move to its subscription's buckets.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "usage_unattributed_buckets"
STAGE = "usage_unattributed_buckets_0007"
SUMS = "upload_bytes, download_bytes, session_time_s"
SUMMED = "sum(upload_bytes), sum(download_bytes), sum(session_time_s)"


def _columns(key: list[sa.Column[object]]) -> list[sa.Column[object]]:
    return [
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        *key,
        sa.Column("hour", server.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=False),
        sa.Column("download_bytes", sa.BigInteger(), nullable=False),
        sa.Column("session_time_s", sa.BigInteger(), nullable=False),
    ]


def _session_key() -> list[sa.Column[object]]:
    return [
        sa.Column("nas_key", sa.String(length=253), nullable=False),
        sa.Column("acct_session_id", sa.String(length=253), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
    ]


def _identity() -> list[sa.Column[object]]:
    return [
        sa.Column("user_name", sa.String(length=253), nullable=False),
        sa.Column("calling_station_id", sa.String(length=253), nullable=False),
        sa.Column("framed_ip_address", sa.String(length=64), nullable=False),
    ]


def _create(key: list[sa.Column[object]]) -> None:
    names = [column.name for column in key]
    op.create_table(
        TABLE,
        *_columns(key),
        sa.PrimaryKeyConstraint("tenant_id", *names, "hour", name=op.f(f"pk_{TABLE}")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {TABLE} SET (fillfactor = 50)")  # as 0003


def _candidate(column: str) -> str:
    """The session instance an identity-keyed row `b` came from (see the docstring). Two
    lookups, as SQLite takes no outer reference in a subquery's ORDER BY."""
    names = ("user_name", "calling_station_id", "framed_ip_address")
    exact = " AND ".join(f"s.{c} = b.{c}" for c in names)
    grew = " AND ".join(f"(b.{c} = '' OR s.{c} = b.{c})" for c in names)
    lookups = [
        f"(SELECT s.{column} FROM usage_sessions s WHERE s.tenant_id = b.tenant_id"
        f" AND {condition} ORDER BY s.nas_key, s.acct_session_id, s.generation LIMIT 1)"
        for condition in (exact, grew)
    ]
    return f"COALESCE({', '.join(lookups)})"


def upgrade() -> None:
    op.create_table(STAGE, *_columns(_session_key()))
    op.execute(
        f"INSERT INTO {STAGE} (tenant_id, nas_key, acct_session_id, generation, hour, {SUMS})"
        f" SELECT b.tenant_id, COALESCE({_candidate('nas_key')}, ''),"
        f" COALESCE({_candidate('acct_session_id')}, ''),"
        f" COALESCE({_candidate('generation')}, 0), b.hour, {SUMS} FROM {TABLE} b"
    )
    op.drop_table(TABLE)
    _create(_session_key())
    key = "tenant_id, nas_key, acct_session_id, generation, hour"
    op.execute(
        f"INSERT INTO {TABLE} ({key}, {SUMS}) SELECT {key}, {SUMMED} FROM {STAGE}"
        f" GROUP BY {key}"
    )
    op.drop_table(STAGE)
    # Rows of instances that are attributed by now move to their subscription.
    joined = (
        f"FROM {TABLE} x JOIN usage_sessions s ON s.tenant_id = x.tenant_id"
        " AND s.nas_key = x.nas_key AND s.acct_session_id = x.acct_session_id"
        " AND s.generation = x.generation WHERE s.subscription_id IS NOT NULL"
    )
    op.execute(
        f"INSERT INTO usage_buckets (tenant_id, subscription_id, hour, {SUMS})"
        f" SELECT x.tenant_id, s.subscription_id, x.hour, sum(x.upload_bytes),"
        f" sum(x.download_bytes), sum(x.session_time_s) {joined}"
        " GROUP BY x.tenant_id, s.subscription_id, x.hour"
        " ON CONFLICT (tenant_id, subscription_id, hour) DO UPDATE SET"
        " upload_bytes = usage_buckets.upload_bytes + excluded.upload_bytes,"
        " download_bytes = usage_buckets.download_bytes + excluded.download_bytes,"
        " session_time_s = usage_buckets.session_time_s + excluded.session_time_s"
    )
    op.execute(
        f"DELETE FROM {TABLE} WHERE EXISTS (SELECT 1 FROM usage_sessions s"
        f" WHERE s.tenant_id = {TABLE}.tenant_id AND s.nas_key = {TABLE}.nas_key"
        f" AND s.acct_session_id = {TABLE}.acct_session_id"
        f" AND s.generation = {TABLE}.generation AND s.subscription_id IS NOT NULL)"
    )


def downgrade() -> None:
    op.create_table(STAGE, *_columns(_identity()))
    identity = "user_name, calling_station_id, framed_ip_address"
    op.execute(
        f"INSERT INTO {STAGE} (tenant_id, {identity}, hour, {SUMS})"
        " SELECT x.tenant_id, COALESCE(s.user_name, ''), COALESCE(s.calling_station_id, ''),"
        " COALESCE(s.framed_ip_address, ''), x.hour, x.upload_bytes, x.download_bytes,"
        f" x.session_time_s FROM {TABLE} x LEFT JOIN usage_sessions s"
        " ON s.tenant_id = x.tenant_id AND s.nas_key = x.nas_key"
        " AND s.acct_session_id = x.acct_session_id AND s.generation = x.generation"
    )
    op.drop_table(TABLE)
    _create(_identity())
    key = f"tenant_id, {identity}, hour"
    op.execute(
        f"INSERT INTO {TABLE} ({key}, {SUMS}) SELECT {key}, {SUMMED} FROM {STAGE}"
        f" GROUP BY {key}"
    )
    op.drop_table(STAGE)
