"""usage: the open-sessions index holds open sessions only (PostgreSQL)

`ix_usage_sessions_open` indexed every session on (tenant, open, NAS). Closed sessions
accumulate forever, so most of it was dead weight; and since its columns begin like the
primary key's, the planner could probe it (then filter a NAS's sessions row by row) for a
batch's session updates, which name the whole primary key. On a young table with stale
statistics that happened and made a 5,000-row update take 2 s (auto_explain). As a partial
index (`WHERE open`) it serves only queries that ask for open sessions. SQLite keeps the full
index: its planner uses a partial index only for a textually matching term.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_usage_sessions_open"
COLUMNS = ["tenant_id", "open", "nas_key"]


def _replace(where: sa.TextClause | None) -> None:
    op.drop_index(NAME, table_name="usage_sessions")
    op.create_index(NAME, "usage_sessions", COLUMNS, unique=False, postgresql_where=where)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace(sa.text("open"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace(None)
