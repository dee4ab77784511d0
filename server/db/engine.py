"""Async engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite, WAL)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from server.settings import is_sqlite


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; FULL syncs every commit, because an
    # acknowledgement promises durability.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_connect_args(url: str) -> dict[str, Any]:
    """asyncpg's TLS mode when the URL and PGSSLMODE leave it open: "allow" (plain first,
    TLS if the server demands it) for a loopback host, else asyncpg's own ("prefer": TLS
    first). Encrypting loopback traffic protects nothing from anyone but the host's root,
    and costs PostgreSQL and the server CPU on every row written (docs/decisions.md)."""
    parsed = make_url(url)
    if "ssl" in parsed.query or "sslmode" in parsed.query or os.environ.get("PGSSLMODE"):
        return {}
    return {"ssl": "allow"} if _is_loopback(parsed.host or "") else {}


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """One engine per process; SQLite gets WAL and foreign keys on every connection."""
    if is_sqlite(url):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per request. A connection that died is
        # invalidated with its pool on first use (that call answers UNAVAILABLE) and
        # recycled connections never outlive a server-side idle timeout.
        pool_recycle=1800,
        # Statements are prepared per connection; the cache keeps hot paths parsed once.
        connect_args={"statement_cache_size": 512, **tls_connect_args(url)},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """One session per unit of work; objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)
