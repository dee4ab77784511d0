"""Benchmark fixtures: a fresh PostgreSQL database and a real server process on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("RATING_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class ServerProcess:
    target: str
    database_url: str
    key: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_server(database_url: str, workdir: Path) -> ServerProcess:
    """Migrates, creates a tenant with an all-scopes key, and serves on a free port."""
    # No in-process sweeper: its sweep as of now would close the (2024) benchmark sessions
    # mid-run; the case that measures ingest after a sweep runs one itself.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RATING_LOG_LEVEL": "WARNING",
        "RATING_SWEEP_INTERVAL_S": "0",
    }
    rating = [sys.executable, "-m", "server"]
    subprocess.run(
        [*rating, "migrate", "--database-url", database_url], env=env, check=True, cwd=workdir
    )
    created = subprocess.run(
        [*rating, "admin", "create-tenant", "bench", "--with-key", "--database-url", database_url],
        env=env,
        check=True,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    key = created.stdout.split("api_key:")[1].split()[0]
    port = _free_port()
    process = subprocess.Popen(
        [*rating, "serve", "--database-url", database_url, "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert b"serving on" in process.stdout.readline()
    return ServerProcess(f"127.0.0.1:{port}", database_url, key, process)


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    server.process.communicate(timeout=30)


@contextlib.contextmanager
def pg_database_server(workdir: Path) -> Iterator[ServerProcess]:
    """A server on a fresh PostgreSQL database, dropped afterwards."""
    name = f"rating_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = f"{PG_URL.rpartition('/')[0]}/{name}"
    try:
        server = start_server(url, workdir)
        time.sleep(0.2)
        try:
            yield server
        finally:
            stop_server(server)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pg_database_server(tmp_path_factory.mktemp("bench")) as server:
        yield server
