"""accounts: when each RADIUS identity was registered

Live ingest attributes a session when it is written, by the identities registered then,
and the attribution sticks; a rebuild used today's identities, so a session whose
higher-ranked identity (a User-Name) was registered after it had been attributed (by its
Calling-Station-Id) moved to another subscription on rebuild. With the registration time a
rebuild attributes each batch as it was attributed live. Identities are registered with
their subscription (CreateSubscription), so existing rows take its creation time.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.db.base

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "radius_identities",
        sa.Column("created_at", server.db.base.UTCDateTime(timezone=True), nullable=True),
    )
    op.execute(
        "UPDATE radius_identities SET created_at = (SELECT s.created_at FROM subscriptions s"
        " WHERE s.tenant_id = radius_identities.tenant_id"
        " AND s.id = radius_identities.subscription_id)"
    )
    with op.batch_alter_table("radius_identities") as batch:
        batch.alter_column(
            "created_at",
            existing_type=server.db.base.UTCDateTime(timezone=True),
            nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("radius_identities") as batch:
        batch.drop_column("created_at")
