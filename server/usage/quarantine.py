"""Quarantined entries for operators: listed newest first (keyset pages), purged by age."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, literal, select, tuple_
from sqlalchemy.types import LargeBinary

from server.db.base import UTCDateTime
from server.db.database import Database
from server.errors import InvalidArgumentError
from server.usage.models import QuarantinedEntry
from server.usage.queries import keyset_page
from server.validation import (
    decode_page_token,
    malformed_page_token,
    page_scope,
    token_int,
    token_text,
    token_time,
)

# Rows one purge transaction deletes: a flood's backlog goes in many short transactions,
# so ingest (on SQLite, behind the single writer lock) is never held up for long.
PURGE_CHUNK = 10_000
# entry_index is an INTEGER column.
INT_MAX = 2**31 - 1

# Newest first; the digest (the key) makes the order total, so a page token is a place.
_ORDER = (
    QuarantinedEntry.received_at,
    QuarantinedEntry.batch_id,
    QuarantinedEntry.entry_index,
    QuarantinedEntry.entry_digest,
)


def window_scope(received_after: dt.datetime | None, received_before: dt.datetime | None) -> str:
    """What ListQuarantinedRecords' page tokens are bound to."""
    return page_scope(received_after, received_before)


def _after(token: str, scope: str) -> tuple[Any, ...] | None:
    """The page token's place in `_ORDER` as typed literals, None without a token."""
    cursor = decode_page_token(token, scope)
    if cursor is None:
        return None
    try:
        digest = bytes.fromhex(token_text(cursor.get("d")))
    except ValueError:
        raise malformed_page_token() from None
    return (
        literal(token_time(cursor.get("r")), UTCDateTime()),
        literal(token_text(cursor.get("b"))),
        literal(token_int(cursor.get("i"), high=INT_MAX)),
        literal(digest, LargeBinary()),
    )


async def list_quarantined(
    db: Database,
    tenant_id: uuid.UUID,
    received_after: dt.datetime | None,
    received_before: dt.datetime | None,
    limit: int,
    token: str,
) -> tuple[list[QuarantinedEntry], str]:
    """The tenant's quarantined entries received in [received_after, received_before),
    newest first; the page token is the last row's place in that order."""
    if (
        received_after is not None
        and received_before is not None
        and received_before <= received_after
    ):
        raise InvalidArgumentError("received_before", "must be later than received_after")
    query = select(QuarantinedEntry).where(QuarantinedEntry.tenant_id == tenant_id)
    if received_after is not None:
        query = query.where(QuarantinedEntry.received_at >= received_after)
    if received_before is not None:
        query = query.where(QuarantinedEntry.received_at < received_before)
    scope = window_scope(received_after, received_before)
    after = _after(token, scope)
    if after is not None:
        query = query.where(tuple_(*_ORDER) < tuple_(*after))
    query = query.order_by(*(c.desc() for c in _ORDER))
    return await keyset_page(
        db,
        query,
        limit,
        lambda last: {
            "r": last.received_at.isoformat(),
            "b": last.batch_id,
            "i": last.entry_index,
            "d": last.entry_digest.hex(),
        },
        scope,
    )


async def purge_quarantine(db: Database, tenant_id: uuid.UUID, before: dt.datetime) -> int:
    """Deletes the tenant's entries received strictly before `before`, PURGE_CHUNK rows per
    transaction; returns how many this call deleted. Each chunk commits on its own, so a
    purge that fails part way has deleted some of them and running it again finishes."""
    chunk = (
        select(QuarantinedEntry.entry_digest)
        .where(QuarantinedEntry.tenant_id == tenant_id, QuarantinedEntry.received_at < before)
        .limit(PURGE_CHUNK)
        .scalar_subquery()
    )
    statement = (
        delete(QuarantinedEntry)
        .where(QuarantinedEntry.tenant_id == tenant_id, QuarantinedEntry.entry_digest.in_(chunk))
        .execution_options(synchronize_session=False)  # no ORM objects to update
    )
    deleted = 0
    while True:
        async with db.transaction() as session:
            result: Any = await session.execute(statement)
        # Until a chunk finds nothing: a concurrent purge may take rows from under one.
        if not result.rowcount:
            return deleted
        deleted += result.rowcount
