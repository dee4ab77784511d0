"""Declarative base with a naming convention, and the column types every table shares."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, LargeBinary, MetaData, Numeric, String, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

# Stable constraint names, so that Alembic migrations name the same things on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC instant on every database; naive values are refused, never guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: time is aware UTC")
        value = value.astimezone(dt.UTC)
        # SQLite stores text; keep it naive-in-UTC there so ordering by text stays correct.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC(precision, scale) on PostgreSQL; decimal text on SQLite, whose NUMERIC is a
    binary float past 15 significant digits. SQL arithmetic on the text would be float
    arithmetic again: sum such a column in Python on SQLite (as
    `server.usage.queries._sum_quantities` does)."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision, scale)
        self.precision = precision
        self.scale = scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            # Digits, a sign and a point: TEXT affinity keeps every digit as written.
            return dialect.type_descriptor(String(self.precision + 2))
        return dialect.type_descriptor(Numeric(self.precision, self.scale))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return format(Decimal(value), "f")

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        # Text on SQLite; a number there only in a row written before it held text.
        return Decimal(str(value))


# JSONB on PostgreSQL, JSON text on SQLite.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        int: BigInteger(),
        bytes: LargeBinary(),
    }


class TenantScoped:
    """Every row carries its tenant, first in its primary key (the distribution column)."""

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, sort_order=-1)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
