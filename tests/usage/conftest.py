"""Usage fixtures: the tenant's UsageService client, with the test NAS's secret registered."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from server.app import build_app
from server.settings import Settings
from tests.conftest import RunningServer, TenantCtx
from tests.usage.support import Usage

# The in-process sweeper would close the tests' (old) sessions as of now: tests sweep
# explicitly, with an as_of of their own.
os.environ["RATING_SWEEP_INTERVAL_S"] = "0"


@pytest.fixture
async def usage(channel: grpc.aio.Channel, tenant: TenantCtx) -> Usage:
    client = Usage(channel, tenant)
    await client.register_nas()
    return client


@pytest.fixture(params=["decoded", "raw"])
def form(request: pytest.FixtureRequest) -> str:
    """Every hard case runs with collector-decoded records and with raw RADIUS packets."""
    return str(request.param)


@pytest.fixture
async def replica(server: RunningServer, tenant: TenantCtx, tmp_path: Path) -> AsyncIterator[Usage]:
    """A second server process's worth of state: another app on the same database, whose
    engine knows only what the database holds (as after a restart or on another replica)."""
    settings = Settings(
        database_url=server.app.settings.database_url,
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        grace_s=1.0,
    )
    app = build_app(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as chan:
            yield Usage(chan, tenant)
    finally:
        await app.stop(0.5)
