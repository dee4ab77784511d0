"""usage: sessions keep their Framed-IPv6-Prefix and Delegated-IPv6-Prefix

Static IP identities matched only the IPv4 Framed-IP-Address, so a subscriber with a
static IPv6 assignment (dual-stack or IPv6-only) was never attributed. Sessions now store
both prefixes as canonical text ("2001:db8:1200::/56"); attribution compares them with
STATIC_IP identities. Rows of before get '' (nothing was stored): their records are in
the ledger, and `rating rebuild` fills the prefixes in.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("framed_ipv6_prefix", "delegated_ipv6_prefix")


def upgrade() -> None:
    # A constant default: PostgreSQL adds the columns without rewriting the table, and
    # SQLite adds them in place.
    with op.batch_alter_table("usage_sessions") as batch:
        for name in COLUMNS:
            batch.add_column(
                sa.Column(name, sa.String(length=64), server_default="", nullable=False)
            )


def downgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
