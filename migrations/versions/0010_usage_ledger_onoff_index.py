"""usage: a partial index on the ledger's Accounting-On/Offs

An engine that loads a NAS (a restart, another replica taking it) now recalls the NAS's
latest accepted Accounting-On/Offs from the ledger, so that a record of a session that
started before a reboot, arriving after it, finds that session over on every replica. The
ledger's replay index would scan every record of the NAS to find them; this index holds
the On/Offs alone (status types 7 and 8, a handful per NAS), so per-record inserts do not
maintain it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_usage_ledger_onoff"


def upgrade() -> None:
    where = sa.text("status_type IN (7, 8)")
    op.create_index(
        NAME,
        "usage_ledger",
        ["tenant_id", "nas_key", "nas_seq", "entry_index"],
        unique=False,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index(NAME, table_name="usage_ledger")
