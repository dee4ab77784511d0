"""accounts: an index on when RADIUS identities were registered

A batch is attributed by the identities registered when it was received, and, only when
the tenant registered one since (it waited for its locks), by the one registered first.
Whether it did is asked once per batch: this index makes that one probe instead of a scan
of the tenant's identities. The rebuild reads the registration times in order through it
too.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_radius_identities_registered"


def upgrade() -> None:
    op.create_index(NAME, "radius_identities", ["tenant_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(NAME, table_name="radius_identities")
