"""usage: a partial index of clock-skew anomalies per NAS (ListNas reads the NAS flag)

RADIUS.md flags a NAS whose Event-Timestamps disagree with arrival - Acct-Delay-Time. The
anomaly rows already say so, per record and with the NAS key; ListNas reads their count and
latest time per NAS from this index instead of every anomaly of the tenant.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLOCK_SKEW_FLAG = 128


def upgrade() -> None:
    where = sa.text(f"flag = {CLOCK_SKEW_FLAG}")
    op.create_index(
        "ix_usage_anomalies_clock_skew",
        "usage_anomalies",
        ["tenant_id", "nas_key", "detected_at"],
        unique=False,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_anomalies_clock_skew", table_name="usage_anomalies")
