"""Read side of usage: session instances, unattributed usage and NASes, with keyset
pagination."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, TypeVar

from sqlalchemy import Select, func, literal, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.base import UTCDateTime
from server.db.database import Database
from server.errors import InvalidArgumentError, NotFoundError
from server.usage import repository as repo
from server.usage import service
from server.usage.models import (
    CLOCK_SKEW_FLAG,
    UsageAnomaly,
    UsageEvent,
    UsageNas,
    UsageSession,
)
from server.validation import (
    decode_page_token,
    encode_page_token,
    malformed_page_token,
    page_scope,
    token_int,
    token_text,
    token_time,
)

U64 = (1 << 64) - 1
SMALLINT_MAX = 2**15 - 1
Row = TypeVar("Row")


def unsigned(value: int) -> int:
    """A BIGINT counter back to the engine's unsigned 64-bit value."""
    return value & U64


# A session id is base64url of the key's three parts joined by US (0x1f). RADIUS strings
# may hold any character, so within a part ESC (0x1b) and US are escaped as ESC ESC and
# ESC "_": a part then never contains US, and the id of a key without either character is
# the one this codec has always given (ids already handed out keep working).
_SEP, _ESC = "\x1f", "\x1b"
_ESCAPES = {_ESC: _ESC + _ESC, _SEP: _ESC + "_"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_ESCAPED = re.compile("[\x1b\x1f]")
_ESCAPE_SEQUENCE = re.compile("\x1b(.?)", re.DOTALL)


def _escape(part: str) -> str:
    return _ESCAPED.sub(lambda m: _ESCAPES[m.group()], part)


def _unescape(part: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = _UNESCAPES.get(match.group(1))
        if char is None:
            raise ValueError("bad escape")
        return char

    return _ESCAPE_SEQUENCE.sub(replace, part)


def session_id(nas_key: str, acct_session_id: str, generation: int) -> str:
    """The opaque, stable id of a session instance (its key, URL-safe), for any strings."""
    raw = _SEP.join((_escape(nas_key), _escape(acct_session_id), str(generation))).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_session_id(value: str) -> tuple[str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        nas_key, acct_session_id, generation = raw.split(_SEP)
        if not (generation.isascii() and generation.isdigit()) or int(generation) >= 2**63:
            raise ValueError(generation)
        nas_key, acct_session_id = _unescape(nas_key), _unescape(acct_session_id)
        if "\0" in nas_key + acct_session_id:  # stored text never holds NUL
            raise ValueError(nas_key)
        # One instance, one id: another spelling of it (a generation "01", base64 the
        # decoder tolerates, an escape where none is needed) is not an id this server gave.
        if session_id(nas_key, acct_session_id, int(generation)) != value.rstrip("="):
            raise ValueError(value)
        return nas_key, acct_session_id, int(generation)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgumentError("id", f"not a session id: {value!r}") from None


async def get_session(db: Database, tenant_id: uuid.UUID, ident: str) -> UsageSession:
    nas_key, acct_session_id, generation = parse_session_id(ident)
    async with db.read() as session:
        row = await session.get(UsageSession, (tenant_id, nas_key, acct_session_id, generation))
    if row is None:
        raise NotFoundError("session", ident)
    return row


@dataclass(frozen=True)
class SessionFilter:
    subscription_id: uuid.UUID | None = None
    user_name: str = ""
    nas_key: str = ""
    open_only: bool = False


def session_scope(where: SessionFilter) -> str:
    """What ListSessions' page tokens are bound to."""
    return page_scope(where.subscription_id, where.user_name, where.nas_key, where.open_only)


def nas_scope(flagged_only: bool) -> str:
    """What ListNas' page tokens are bound to."""
    return page_scope(flagged_only)


async def list_sessions(
    db: Database, tenant_id: uuid.UUID, where: SessionFilter, limit: int, token: str
) -> tuple[list[UsageSession], str]:
    """Newest first (start, then key, descending); the page token is the last row's key."""
    order = (
        UsageSession.start_at,
        UsageSession.nas_key,
        UsageSession.acct_session_id,
        UsageSession.generation,
    )
    query = select(UsageSession).where(UsageSession.tenant_id == tenant_id)
    if where.subscription_id is not None:
        query = query.where(UsageSession.subscription_id == where.subscription_id)
    if where.user_name:
        query = query.where(UsageSession.user_name == where.user_name)
    if where.nas_key:
        query = query.where(UsageSession.nas_key == where.nas_key)
    if where.open_only:
        query = query.where(UsageSession.open.is_(True))
    scope = session_scope(where)
    cursor = decode_page_token(token, scope)
    if cursor is not None:
        after = (
            token_time(cursor.get("s")),
            token_text(cursor.get("n")),
            token_text(cursor.get("a")),
            token_int(cursor.get("g")),
        )
        query = query.where(
            tuple_(*order)
            < tuple_(
                literal(after[0], UTCDateTime()),
                literal(after[1]),
                literal(after[2]),
                literal(after[3]),
            )
        )
    query = query.order_by(*(c.desc() for c in order))
    return await keyset_page(
        db,
        query,
        limit,
        lambda last: {
            "s": last.start_at.isoformat(),
            "n": last.nas_key,
            "a": last.acct_session_id,
            "g": last.generation,
        },
        scope,
    )


async def keyset_page(
    db: Database,
    query: Select[Row],
    limit: int,
    place: Callable[[Row], dict[str, Any]],
    scope: str,
) -> tuple[list[Row], str]:
    """The first `limit` rows of an ordered query of one entity, and the page token of the
    next page: the last row's `place` (what the query resumes after) bound to the request's
    filters (`scope`), or "" when no row follows."""
    async with db.read() as session:
        rows = list((await session.execute(query.limit(limit + 1))).scalars())
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], encode_page_token(place(rows[limit - 1]), scope)


@dataclass(frozen=True)
class Unattributed:
    user_name: str
    calling_station_id: str
    framed_ip_address: str
    framed_ipv6_prefix: str
    delegated_ipv6_prefix: str
    input_bytes: int
    output_bytes: int
    session_count: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


@dataclass(frozen=True)
class UnattributedMetered:
    radius_user_name: str
    usage_type: int
    custom_type: str
    unit: str
    quantity: Decimal
    event_count: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


@dataclass(frozen=True)
class UnattributedPage:
    usage: list[Unattributed]
    metered: list[UnattributedMetered]
    next_page_token: str


async def list_unattributed(
    db: Database, tenant_id: uuid.UUID, limit: int, token: str
) -> UnattributedPage:
    """Usage no identity attributes, re-attributing first: sessions per RADIUS identity
    (User-Name, Calling-Station-Id, Framed-IP-Address and the IPv6 prefixes), then metered
    events per user name, type and unit, `limit` rows in all. The page token holds the
    last session identity ("u", "c", "f", "p", "d"), or "m": the last metered group (None
    when the metered list starts on the next page)."""
    async with db.transaction() as session:
        await repo.begin_write(session)
        await service.reattribute(tenant_id, session)
    cursor = decode_page_token(token)
    usage: list[Unattributed] = []
    if cursor is None or "m" not in cursor:
        usage = await _unattributed_sessions(db, tenant_id, limit, cursor)
        if len(usage) > limit:
            last = usage[limit - 1]
            token = encode_page_token(
                {
                    "u": last.user_name,
                    "c": last.calling_station_id,
                    "f": last.framed_ip_address,
                    "p": last.framed_ipv6_prefix,
                    "d": last.delegated_ipv6_prefix,
                }
            )
            return UnattributedPage(usage[:limit], [], token)
        after = None
    else:
        after = _metered_cursor(cursor["m"])
    room = limit - len(usage)
    metered = await _unattributed_metered(db, tenant_id, room, after)
    token = ""
    if len(metered) > room:
        metered = metered[:room]
        last_key = _metered_key(metered[-1]) if metered else after
        token = encode_page_token({"m": last_key})
    return UnattributedPage(usage, metered, token)


async def _unattributed_sessions(
    db: Database, tenant_id: uuid.UUID, limit: int, cursor: dict[str, Any] | None
) -> list[Unattributed]:
    """Up to limit + 1 identities of unattributed sessions, after the cursor's. A User-Name
    or Calling-Station-Id is grouped without surrounding white space: as it is registered,
    and as a registration then matches it."""
    key: tuple[Any, ...] = (
        literal_column(repo.trimmed("usage_sessions.user_name")),
        literal_column(repo.trimmed("usage_sessions.calling_station_id")),
        UsageSession.framed_ip_address,
        UsageSession.framed_ipv6_prefix,
        UsageSession.delegated_ipv6_prefix,
    )
    query: Any = (
        select(
            *key,
            # Modulo 2**64, as the counters are stored (SQLite's SUM fails past 2**63).
            literal_column(repo.wrapping_sum("usage_sessions.input_bytes")),
            literal_column(repo.wrapping_sum("usage_sessions.output_bytes")),
            func.count(),
            func.min(UsageSession.start_at),
            func.max(UsageSession.last_update_at),
        )
        .where(UsageSession.tenant_id == tenant_id, UsageSession.subscription_id.is_(None))
        .group_by(*key)
        .order_by(*key)
        .limit(limit + 1)
    )
    if cursor is not None:
        # A token from before the prefixes were listed resumes with empty ones.
        after = (
            *(token_text(cursor.get(k)) for k in ("u", "c", "f")),
            *(token_text(cursor.get(k, "")) for k in ("p", "d")),
        )
        query = query.where(tuple_(*key) > tuple_(*(literal(v) for v in after)))
    async with db.read() as session:
        rows = (await session.execute(query)).all()
    return [
        Unattributed(
            user_name=row[0],
            calling_station_id=row[1],
            framed_ip_address=row[2],
            framed_ipv6_prefix=row[3],
            delegated_ipv6_prefix=row[4],
            input_bytes=int(row[5] or 0),
            output_bytes=int(row[6] or 0),
            session_count=int(row[7]),
            first_seen_at=_aware(row[8]),
            last_seen_at=_aware(row[9]),
        )
        for row in rows
    ]


MeteredKey = tuple[str, int, str, str]


def _metered_key(item: UnattributedMetered) -> MeteredKey:
    return (item.radius_user_name, item.usage_type, item.custom_type, item.unit)


async def _sum_quantities(
    session: AsyncSession, tenant_id: uuid.UUID, key: tuple[Any, ...], groups: Sequence[Any]
) -> dict[tuple[Any, ...], Decimal]:
    """Exact sums of the unattributed quantities of `groups` (consecutive in key order)."""
    first, last = tuple(groups[0][:4]), tuple(groups[-1][:4])
    found = await session.execute(
        select(*key, UsageEvent.quantity).where(
            UsageEvent.tenant_id == tenant_id,
            UsageEvent.subscription_id.is_(None),
            UsageEvent.radius_user_name != "",
            tuple_(*key) >= tuple_(*(literal(v) for v in first)),
            tuple_(*key) <= tuple_(*(literal(v) for v in last)),
        )
    )
    sums: dict[tuple[Any, ...], Decimal] = {}
    with localcontext() as context:
        context.prec = 60  # 30-digit quantities: no sum of them is ever rounded
        for *group, quantity in found:
            sums[tuple(group)] = sums.get(tuple(group), Decimal(0)) + Decimal(quantity)
    return sums


def _metered_cursor(value: Any) -> MeteredKey | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise malformed_page_token()
    user, usage_type, custom_type, unit = value
    return (
        token_text(user),
        token_int(usage_type, high=SMALLINT_MAX),
        token_text(custom_type),
        token_text(unit),
    )


async def _unattributed_metered(
    db: Database, tenant_id: uuid.UUID, room: int, after: MeteredKey | None
) -> list[UnattributedMetered]:
    """Up to room + 1 groups of unattributed metered events, after the given one."""
    key = (
        UsageEvent.radius_user_name,
        UsageEvent.usage_type,
        UsageEvent.custom_type,
        UsageEvent.unit,
    )
    # SQLite's SUM would add the quantities as binary floats: there they are summed here.
    in_python = db.dialect == "sqlite"
    total = literal(0) if in_python else func.sum(UsageEvent.quantity)
    query: Any = (
        select(
            *key,
            total,
            func.count(),
            func.min(UsageEvent.occurred_at),
            func.max(UsageEvent.occurred_at),
        )
        .where(
            UsageEvent.tenant_id == tenant_id,
            UsageEvent.subscription_id.is_(None),
            UsageEvent.radius_user_name != "",
        )
        .group_by(*key)
        .order_by(*key)
        .limit(room + 1)
    )
    if after is not None:
        query = query.where(tuple_(*key) > tuple_(*(literal(v) for v in after)))
    async with db.read() as session:
        rows: list[Any] = list((await session.execute(query)).all())
        if in_python and rows:
            sums = await _sum_quantities(session, tenant_id, key, rows)
            rows = [(*row[:4], sums[tuple(row[:4])], *row[5:]) for row in rows]
    return [
        UnattributedMetered(
            radius_user_name=row[0],
            usage_type=int(row[1]),
            custom_type=row[2],
            unit=row[3],
            quantity=Decimal(row[4] or 0),
            event_count=int(row[5]),
            first_seen_at=_aware(row[6]),
            last_seen_at=_aware(row[7]),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class NasView:
    nas: UsageNas
    clock_skew_anomalies: int
    last_clock_skew_at: dt.datetime | None

    @property
    def flags(self) -> list[str]:
        return ["clock_skew"] if self.clock_skew_anomalies else []


async def list_nas(
    db: Database, tenant_id: uuid.UUID, flagged_only: bool, limit: int, token: str
) -> tuple[list[NasView], str]:
    """NASes by key, with their clock-skew anomalies counted (RADIUS.md: "the NAS is
    flagged"); the page token is the last NAS key."""
    # A literal, not a parameter: the partial index's predicate must be provable.
    skewed: Any = literal_column(str(CLOCK_SKEW_FLAG))
    skew = (
        select(
            UsageAnomaly.nas_key.label("nas_key"),
            func.count().label("anomalies"),
            func.max(UsageAnomaly.detected_at).label("last_at"),
        )
        .where(UsageAnomaly.tenant_id == tenant_id, UsageAnomaly.flag == skewed)
        .group_by(UsageAnomaly.nas_key)
        .subquery()
    )
    query: Any = (
        select(UsageNas, skew.c.anomalies, skew.c.last_at)
        .outerjoin(skew, skew.c.nas_key == UsageNas.nas_key)
        .where(UsageNas.tenant_id == tenant_id)
    )
    if flagged_only:
        query = query.where(skew.c.anomalies > 0)
    scope = nas_scope(flagged_only)
    cursor = decode_page_token(token, scope)
    if cursor is not None:
        query = query.where(UsageNas.nas_key > token_text(cursor.get("k")))
    query = query.order_by(UsageNas.nas_key).limit(limit + 1)
    async with db.read() as session:
        rows = (await session.execute(query)).all()
    items = [
        NasView(
            nas=row[0],
            clock_skew_anomalies=int(row[1] or 0),
            last_clock_skew_at=None if row[2] is None else _aware(row[2]),
        )
        for row in rows
    ]
    next_token = ""
    if len(items) > limit:
        items = items[:limit]
        next_token = encode_page_token({"k": items[-1].nas.nas_key}, scope)
    return items, next_token


def _aware(value: Any) -> dt.datetime:
    """min()/max() of a UTCDateTime lose the type on SQLite (text): parse it back."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC)
