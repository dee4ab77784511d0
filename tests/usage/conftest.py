"""Usage fixtures: the tenant's UsageService client, with the test NAS's secret registered."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer, TenantCtx, running_server
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
    """A second server on the same database, whose engine knows only what the database
    holds (as after a restart or on another replica)."""
    async with (
        running_server(server.app.settings.database_url, tmp_path) as other,
        grpc.aio.insecure_channel(other.target) as chan,
    ):
        yield Usage(chan, tenant)
