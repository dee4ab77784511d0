"""Rebuilds the usage projections (sessions, buckets, anomalies) by replaying the ledger.

Per NAS, in nas_seq order, ledger entries are wrapped back into StreamAccountingRequest
bytes (one request per original batch, with that batch's arrival default) and applied to
a fresh engine; recorded stale-session sweeps are replayed at the point they ran. Each
batch and sweep runs with the NAS policy it ran with (usage_nas_policies), and raw packets
are not authenticated again (they were when accepted; the secret may have changed since).
The tenant's advisory lock (exclusive: no batch writes beside it, nor inserts a NAS row
the rebuild would not see) and NAS rows stay locked throughout, and the NAS sequences move
on so every replica's engine reloads afterwards.
"""
# SQL text is assembled from constants of this package only; every value is bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import bisect
import itertools
import uuid
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import rating_core as core
from server.db.database import Database
from server.errors import NotFoundError
from server.tenants.models import Tenant
from server.usage import repository as repo
from server.usage.service import policy_of, recall_sessions, wrap_entries, write_projections
from server.usage.writes import Projection

PAGE = 20_000
# The tenant's lock (repository.own_tenant): each attempt waits this long for the batches
# in flight, then lets them go on for a moment; about five minutes in all.
LOCK_WAIT_MS = 2_000
LOCK_BACKOFF_S = 0.5
LOCK_ATTEMPTS = 120
_PROJECTIONS = ("usage_sessions", "usage_buckets", "usage_unattributed_buckets", "usage_anomalies")


async def rebuild(db: Database, tenant_id: uuid.UUID | None = None) -> dict[str, int]:
    """Replays the ledger of one tenant (or all); returns counts of what was replayed."""
    if tenant_id is None:
        async with db.read() as session:
            rows = await session.execute(text("SELECT DISTINCT tenant_id FROM usage_nas"))
            tenants = [_uuid(row[0]) for row in rows.all()]
    else:
        async with db.read() as session:
            if await session.get(Tenant, tenant_id) is None:
                raise NotFoundError("tenant", tenant_id)
        tenants = [tenant_id]
    report = {"tenants": 0, "nas": 0, "entries": 0, "sweeps": 0}
    for tenant in tenants:
        for attempt in itertools.count(1):
            try:
                async with db.transaction() as session:
                    await repo.begin_write(session)
                    if not await repo.own_tenant(session, tenant, LOCK_WAIT_MS):
                        raise _Busy  # rolls the aborted transaction back
                    await _rebuild_tenant(session, tenant, report)
                break
            except _Busy:
                pass
            if attempt == LOCK_ATTEMPTS:
                raise RuntimeError(
                    f"tenant {tenant}: ingest held it for {attempt} attempts; try again"
                )
            await asyncio.sleep(LOCK_BACKOFF_S)
        report["tenants"] += 1
    return report


class _Busy(Exception):
    """The tenant's lock was not had in time (repository.own_tenant)."""


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(hex=str(value))


async def _rebuild_tenant(
    session: AsyncSession, tenant_id: uuid.UUID, report: dict[str, int]
) -> None:
    tenant = repo.tenant_param(session, tenant_id)
    pg = session.get_bind().dialect.name == "postgresql"
    keys = [
        row[0]
        for row in (
            await session.execute(
                text(
                    # Code-point order, as every NAS lock is taken (repository.lock_nas;
                    # SQLite's own order is the bytes').
                    "SELECT nas_key FROM usage_nas WHERE tenant_id = :t ORDER BY nas_key"
                    + (' COLLATE "C" FOR UPDATE' if pg else "")
                ),
                {"t": tenant},
            )
        ).all()
    ]
    for table in _PROJECTIONS:
        await session.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": tenant})
    registrations = await repo.identity_registrations(session, tenant_id)
    for key in keys:
        # The ledger's raw packets were authenticated when they were accepted; the secret
        # in force now may not be the one they were sent with.
        engine = core.Engine(ledger_replay=True)
        history = await repo.policy_history(session, tenant_id, key)
        timeline = PolicyTimeline(key, history)
        await _replay_nas(session, tenant_id, engine, key, timeline, registrations, report)
        report["nas"] += 1
    # Each batch was attributed by the identities registered when it was received; a
    # session none of them matched was attributed live when the first identity matching it
    # was registered (that registration's re-attribution), by the identities of then.
    await repo.reattribute(session, tenant_id)
    # A new sequence makes every replica's engine reload these NASes from the projections.
    await session.execute(
        text("UPDATE usage_nas SET seq = seq + 1 WHERE tenant_id = :t"), {"t": tenant}
    )


class PolicyTimeline:
    """A NAS's policies by sequence: each batch and sweep is replayed with its own."""

    def __init__(self, nas_key: str, history: list[tuple[int, repo.Policy]]) -> None:
        self.nas_key = nas_key
        self.history = history
        self.current: repo.Policy | None = None

    def apply(self, engine: core.Engine, after_seq: int) -> None:
        """Sets the policy in force once the NAS's sequence was `after_seq`: the last one
        set at or before it (a batch written at sequence s was applied after s - 1)."""
        policy = repo.DEFAULT_POLICY
        for from_seq, set_policy in self.history:
            if from_seq > after_seq:
                break
            policy = set_policy
        if policy != self.current:
            engine.set_policy(self.nas_key, policy_of(policy))
            self.current = policy


async def _replay_nas(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    engine: core.Engine,
    nas_key: str,
    policies: PolicyTimeline,
    registrations: list[int],
    report: dict[str, int],
) -> None:
    pg = session.get_bind().dialect.name == "postgresql"
    tenant = repo.tenant_param(session, tenant_id)
    sweeps = [
        (int(row[0]), int(row[1]))
        for row in (
            await session.execute(
                text(
                    f"SELECT after_seq, {repo.us_sql(pg, 'as_of')} FROM usage_sweeps"
                    " WHERE tenant_id = :t AND nas_key = :k ORDER BY after_seq, as_of"
                ),
                {"t": tenant, "k": nas_key},
            )
        ).all()
    ]
    empty = np.empty(0, dtype=np.int64)

    # When the last batch replayed was received: what a sweep's session writes attribute
    # by (a sweep brings no identity, and a matching one registered since that batch
    # re-attributed the session when it was registered: the final reattribute).
    received = 0  # 1970-01-01: before any identity was registered

    async def sweep_through(seq: int | None) -> None:
        while sweeps and (seq is None or sweeps[0][0] < seq):
            after_seq, as_of_us = sweeps.pop(0)
            policies.apply(engine, after_seq)
            swept = Projection.of(engine.sweep(as_of_us), empty)
            await write_projections(session, tenant_id, swept, received, detected_us=as_of_us)
            report["sweeps"] += 1

    group: list[bytes] = []
    indices: list[int] = []
    group_key: tuple[int, int] | None = None

    async def flush() -> None:
        nonlocal received
        if group and group_key is not None:
            policies.apply(engine, group_key[0] - 1)
            if bisect.bisect_right(registrations, group_key[1]) > bisect.bisect_right(
                registrations, received
            ):
                # Identities registered since the last batch re-attributed this NAS's
                # unattributed sessions when they were registered.
                await repo.reattribute(
                    session, tenant_id, registered_by_us=group_key[1], nas_key=nas_key
                )
            prepared = engine.prepare(wrap_entries(group), group_key[1])
            # The rebuilt rows so far are the stored instances the live engine recalls.
            await recall_sessions(session, tenant_id, engine, prepared)
            result = engine.apply(prepared)
            # Anomalies name the entry's index in the batch it originally came in.
            mapping = np.array(indices, dtype=np.int64)
            # Attributed by the identities registered when the batch was received.
            received = group_key[1]
            await write_projections(session, tenant_id, Projection.of(result, mapping), received)
            report["entries"] += len(group)
            group.clear()
            indices.clear()

    after = (-1, -1)
    while True:
        rows = (
            await session.execute(
                text(
                    f"SELECT nas_seq, entry_index, entry_bytes, {repo.us_sql(pg, 'received_at')}"
                    " FROM usage_ledger WHERE tenant_id = :t AND nas_key = :k"
                    " AND (nas_seq > :s OR (nas_seq = :s AND entry_index > :i))"
                    " ORDER BY nas_seq, entry_index LIMIT :n"
                ),
                {"t": tenant, "k": nas_key, "s": after[0], "i": after[1], "n": PAGE},
            )
        ).all()
        if not rows:
            break
        for seq, index, data, received_us in rows:
            key = (int(seq), int(received_us))
            if key != group_key:
                await flush()
                await sweep_through(key[0])
                group_key = key
            group.append(bytes(data))
            indices.append(int(index))
            after = (int(seq), int(index))
    await flush()
    await sweep_through(None)
