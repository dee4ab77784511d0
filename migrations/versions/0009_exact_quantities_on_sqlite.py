"""quantities keep every digit on SQLite

SQLite's NUMERIC column affinity stores a decimal as a binary float once it has more than
15 significant digits, so a metered quantity of 30 digits (NUMERIC(30, 9)) or an invoice
line's of 20 came back rounded. On SQLite both columns become text (TEXT affinity keeps
the digits as written; server.db.base.ExactDecimal reads them back as Decimal). Values
stored before were already rounded when written and are copied as they are. PostgreSQL's
NUMERIC is exact: nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table, column, precision, scale
COLUMNS = (("usage_events", "quantity", 30, 9), ("invoice_lines", "quantity", 20, 6))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, column, precision, scale in COLUMNS:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(
                column,
                existing_type=sa.Numeric(precision=precision, scale=scale),
                type_=sa.String(length=precision + 2),
                existing_nullable=False,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, column, precision, scale in reversed(COLUMNS):
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(
                column,
                existing_type=sa.String(length=precision + 2),
                type_=sa.Numeric(precision=precision, scale=scale),
                existing_nullable=False,
            )
