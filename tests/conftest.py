"""Shared fixtures: both databases, a real server on 127.0.0.1:0, a fresh tenant per test.

Every test that takes `backend` (directly or through `server`/`tenant`) runs once on SQLite
and once on PostgreSQL. PostgreSQL comes from RATING_TEST_PG_URL (default: the local
server); when it is unreachable the PostgreSQL variants are skipped, except under CI=true,
where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from server.app import App, build_app
from server.auth import ALL_SCOPES, create_key, create_tenant
from server.db.database import Database
from server.db.migrate import upgrade
from server.settings import Settings

PG_URL = os.environ.get("RATING_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI") == "true"


@dataclass
class Backend:
    name: str
    url: str


async def connect_pg() -> asyncpg.Connection:
    """A connection to the PostgreSQL server; skips the test when it is unreachable (fails
    it under CI)."""
    try:
        return await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is required under CI: {error}")
        pytest.skip(f"PostgreSQL unavailable at {PG_URL}: {error}")


async def _fresh_pg_database() -> str:
    """A new, empty database on the PostgreSQL server (dropped at the end of the session)."""
    name = f"rating_test_{uuid.uuid4().hex[:12]}"
    conn = await connect_pg()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{name}"


async def _drop_pg_database(url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    """A migrated, empty database of each kind, shared by the session."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "rating.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade(url)
        yield Backend("sqlite", url)
        return
    raw = await _fresh_pg_database()
    url = raw.replace("postgresql://", "postgresql+asyncpg://", 1)
    await upgrade(url)
    try:
        yield Backend("postgresql", url)
    finally:
        await _drop_pg_database(raw)


@dataclass
class RunningServer:
    app: App
    target: str

    @property
    def db(self) -> Database:
        return self.app.db


@contextlib.asynccontextmanager
async def running_server(database_url: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    """A real grpc.aio server on an ephemeral loopback port, stopped on exit."""
    settings = Settings(
        database_url=database_url, listen="127.0.0.1:0", data_dir=data_dir, grace_s=1.0
    )
    app = build_app(settings)
    await app.start()
    try:
        yield RunningServer(app, f"127.0.0.1:{app.port}")
    finally:
        await app.stop(0.5)


@pytest.fixture(scope="session")
async def server(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """A real server on the session's backend."""
    async with running_server(backend.url, tmp_path_factory.mktemp("data")) as running:
        yield running


@pytest.fixture(scope="session")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as chan:
        yield chan


@dataclass
class TenantCtx:
    """A tenant of its own for one test: isolation without truncating tables."""

    tenant_id: uuid.UUID
    key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


async def new_tenant(db: Database, scopes: list[str] | None = None) -> TenantCtx:
    tenant_id = await create_tenant(db, f"test-{uuid.uuid4().hex[:8]}")
    key = await create_key(db, tenant_id, "test", list(scopes or ALL_SCOPES))
    return TenantCtx(tenant_id, key)


@pytest.fixture
async def tenant(server: RunningServer) -> TenantCtx:
    return await new_tenant(server.db)


@pytest.fixture
async def other_tenant(server: RunningServer) -> TenantCtx:
    return await new_tenant(server.db)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
