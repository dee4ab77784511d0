#!/usr/bin/env bash
# Autogenerates a migration against a scratch SQLite database at head: new_migration.sh REV "message"
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1 msg=$2 db=$(mktemp -u /tmp/rating-migration-XXXXXX.db)
export RATING_DATABASE_URL="sqlite:///$db"
.venv/bin/alembic upgrade head
.venv/bin/alembic revision --autogenerate --rev-id "$rev" -m "$msg"
rm -f "$db"
# Autogenerate renders JSONB's text type unqualified; qualify it.
sed -i 's/astext_type=Text()/astext_type=sa.Text()/g' migrations/versions/"$rev"_*.py
.venv/bin/ruff format -q migrations/versions/"$rev"_*.py
