"""usage: the history of NAS policies, so that a rebuild applies the policy of the time

`rating rebuild` replayed the whole ledger with the policies in force at rebuild time: after
a NAS's direction swap, wrap inference, interim interval or clock-skew tolerance changed,
the rebuilt sessions and buckets differed from the ones ingest had written. Each policy
now takes a NAS sequence number when it is set and is kept with it. Existing NASes get
their current policy from sequence 0 (the best that is known of their past).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = (
    "swap_direction, infer_wrap, interim_interval_s, stale_multiplier, grace_s,"
    " clock_skew_tolerance_s"
)


def upgrade() -> None:
    op.create_table(
        "usage_nas_policies",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("nas_key", sa.String(length=253), nullable=False),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("swap_direction", sa.Boolean(), nullable=False),
        sa.Column("infer_wrap", sa.Boolean(), nullable=False),
        sa.Column("interim_interval_s", sa.Integer(), nullable=False),
        sa.Column("stale_multiplier", sa.Integer(), nullable=False),
        sa.Column("grace_s", sa.Integer(), nullable=False),
        sa.Column("clock_skew_tolerance_s", sa.Integer(), nullable=False),
        sa.Column("set_at", server.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "nas_key", "from_seq", name=op.f("pk_usage_nas_policies")
        ),
    )
    op.execute(
        f"INSERT INTO usage_nas_policies (tenant_id, nas_key, from_seq, {POLICY}, set_at)"
        f" SELECT tenant_id, nas_key, 0, {POLICY}, updated_at FROM usage_nas"
    )


def downgrade() -> None:
    op.drop_table("usage_nas_policies")
