"""Imports every context's models so that Base.metadata is complete (Alembic, tests)."""

from server.accounts import models as accounts_models
from server.db.base import Base
from server.tenants import models as tenants_models
from server.usage import models as usage_models

__all__ = ["Base", "accounts_models", "tenants_models", "usage_models"]
