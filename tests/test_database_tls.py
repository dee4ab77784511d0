"""How the server's PostgreSQL connections negotiate TLS (server/db/engine.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from server.db.engine import create_engine, tls_connect_args
from server.settings import normalise_database_url
from tests.conftest import PG_URL, connect_pg


@pytest.fixture(autouse=True)
def _no_pgsslmode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL decides, unless a test sets PGSSLMODE itself."""
    monkeypatch.delenv("PGSSLMODE", raising=False)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://rating@127.0.0.1:5432/rating",
        "postgresql+asyncpg://rating@127.0.0.2/rating",
        "postgresql+asyncpg://rating@[::1]:5432/rating",
        "postgresql+asyncpg://rating@localhost/rating",
    ],
)
def test_a_loopback_host_connects_in_plain_text_first(url: str) -> None:
    assert tls_connect_args(url) == {"ssl": "allow"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://rating@db.example.net/rating",
        "postgresql+asyncpg://rating@192.0.2.10:5432/rating",
        "postgresql+asyncpg://rating@[2001:db8::1]/rating",
        # A Unix socket: no TLS either way.
        "postgresql+asyncpg://rating@/rating?host=/var/run/postgresql",
        # The URL's own choice stands.
        "postgresql+asyncpg://rating@127.0.0.1/rating?ssl=require",
        "postgresql+asyncpg://rating@127.0.0.1/rating?sslmode=verify-full",
    ],
)
def test_other_hosts_and_explicit_modes_keep_the_driver_default(url: str) -> None:
    assert tls_connect_args(url) == {}


def test_pgsslmode_in_the_environment_keeps_the_driver_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGSSLMODE", "require")
    assert tls_connect_args("postgresql+asyncpg://rating@127.0.0.1/rating") == {}


async def _uses_tls(url: str) -> bool:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
            return bool(result.scalar_one())
    finally:
        await engine.dispose()


async def test_the_server_reaches_a_loopback_postgresql_without_tls_unless_asked() -> None:
    conn = await connect_pg()
    try:
        server_tls = await conn.fetchval("SHOW ssl") == "on"
    finally:
        await conn.close()
    url = normalise_database_url(PG_URL)
    if tls_connect_args(url) != {"ssl": "allow"}:
        pytest.skip(f"{make_url(url).host} is not a loopback host")
    assert not await _uses_tls(url)
    if not server_tls:
        pytest.skip("the PostgreSQL server has no TLS configured")
    # A URL that asks for TLS gets it.
    assert await _uses_tls(f"{url}{'&' if '?' in url else '?'}ssl=require")
