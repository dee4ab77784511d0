"""Runs the server until SIGTERM/SIGINT: migrate and bootstrap on the embedded default,
serve, then shut down gracefully (NOT_SERVING, drain, stop with grace)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from sqlalchemy import select

from server.app import build_app
from server.auth import ALL_SCOPES, create_key, create_tenant
from server.db.database import Database
from server.db.migrate import upgrade
from server.settings import Settings
from server.tenants.models import Tenant

log = logging.getLogger("server")

DEFAULT_TENANT_NAME = "default"


async def bootstrap_embedded(settings: Settings, db: Database) -> None:
    """First start on the embedded default: a default tenant and an all-scopes key file."""
    key_file = settings.key_file
    async with db.read() as session:
        has_tenant = (await session.execute(select(Tenant.tenant_id).limit(1))).first()
    if has_tenant is not None and key_file.exists():
        return
    if has_tenant is not None:
        log.warning("tenants exist but %s is missing; creating a new key there", key_file)
        async with db.read() as session:
            tenant_id = (
                await session.execute(select(Tenant.tenant_id).order_by(Tenant.created_at).limit(1))
            ).scalar_one()
    else:
        tenant_id = await create_tenant(db, DEFAULT_TENANT_NAME)
    key = await create_key(db, tenant_id, "embedded default", list(ALL_SCOPES))
    key_file.parent.mkdir(parents=True, exist_ok=True)
    # Written owner-only: the key grants every scope of the tenant.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.info("created the default tenant and wrote its API key", extra={"key_file": str(key_file)})


async def serve(settings: Settings) -> None:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade(settings.database_url)
    db = Database(settings.database_url)
    if settings.embedded:
        await bootstrap_embedded(settings, db)
    app = build_app(settings, db)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"rating: serving on {settings.listen.rsplit(':', 1)[0]}:{app.port}", flush=True)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.grace_s})
    await app.stop()
