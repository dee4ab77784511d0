"""Usage rules around the Rust engine: batches in, durable ledger and projections out.

One engine per tenant holds the live sessions. A batch is prepared (decoded) outside any
lock, then applied under the tenant's asyncio.Lock and, across replicas, under row locks of
the NAS rows it touches; the transaction commits before the ack. Any failure before the
commit makes the engine forget those NASes, so the next batch reloads the truth.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

import rating_core as core
from server.accounts.models import RadiusIdentity, Subscription
from server.db.database import Database
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from server.usage import repository as repo
from server.usage.models import UsageEvent

log = logging.getLogger("server.usage")

# Outcome codes of the engine contract (docs/accounting-engine.md).
ACCEPTED, DUPLICATE, LATE, QUARANTINED = 1, 2, 3, 4
US = 1_000_000
# Batches larger than this run in a worker thread (the engine releases the GIL).
THREAD_THRESHOLD_BYTES = 32 * 1024
# Closed sessions younger than this (relative to the NAS's newest update) are reloaded into
# an engine with the open ones: late Stops and repeats must find their instance.
RETAIN_CLOSED_S = 7 * 86_400
# How often an engine re-reads secrets and policies another replica may have changed.
CONFIG_TTL_S = 5.0
# An accepted record already in the ledger (state older than the reload window) makes the
# batch re-run without it; this bounds the re-runs.
MAX_ATTEMPTS = 4

T = TypeVar("T")


def now_us() -> int:
    return time.time_ns() // 1000


def from_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def to_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime refused: time is aware UTC")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def policy_of(policy: repo.Policy) -> core.NasPolicy:
    swap, wrap, interval, multiplier, grace, skew = policy
    return core.NasPolicy(
        swap_direction=swap,
        infer_wrap=wrap,
        interim_interval_s=interval,
        stale_multiplier=multiplier,
        grace_s=grace,
        clock_skew_tolerance_s=skew,
    )


def _as_int64(values: Any) -> list[int]:
    """Unsigned 64-bit counters as signed BIGINT values, bit for bit."""
    return list(np.ascontiguousarray(values, dtype=np.uint64).view(np.int64).tolist())


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def wrap_entries(entries: Sequence[bytes], batch_id: str = "") -> bytes:
    """AccountingEntry bytes back into StreamAccountingRequest bytes (field 1, field 2)."""
    parts = []
    if batch_id:
        raw = batch_id.encode()
        parts.append(b"\x0a" + _varint(len(raw)) + raw)
    parts.extend(b"\x12" + _varint(len(entry)) + entry for entry in entries)
    return b"".join(parts)


@dataclass(frozen=True)
class BatchAck:
    batch_id: str
    accepted: int
    duplicate: int
    late: int
    quarantined: int
    quarantine: list[tuple[int, str]]


@dataclass
class TenantEngine:
    """A tenant's engine, the lock that serializes its batches, and what it has loaded."""

    engine: core.Engine
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    policies: dict[str, repo.Policy] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict)
    config_at: float = float("-inf")
    # NAS keys whose state this engine loaded (it may hold sessions of them).
    known: set[str] = field(default_factory=set)


class _Redo(Exception):
    """An accepted record was already in the ledger: re-run the batch without it."""

    def __init__(self, indices: npt.NDArray[np.int64]) -> None:
        super().__init__("accepted records already in the ledger")
        self.indices = indices


async def _call(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size >= THREAD_THRESHOLD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _object_array(values: Sequence[Any]) -> npt.NDArray[Any]:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


async def write_projections(
    session: AsyncSession, tenant_id: uuid.UUID, result: Any, mapping: npt.NDArray[np.int64]
) -> None:
    """Sessions, hourly buckets and anomalies of an ApplyResult (batch, sweep or replay)."""
    sessions = result.sessions
    index = np.asarray(result.bucket_session_index, dtype=np.int64)
    hours = np.asarray(result.bucket_hour_us, dtype=np.int64).tolist()
    deltas = [
        np.ascontiguousarray(values, dtype=np.uint64).view(np.int64).tolist()
        for values in (
            result.bucket_input_bytes,
            result.bucket_output_bytes,
            result.bucket_session_s,
        )
    ]
    if repo.is_pg(session):
        await repo.upsert_sessions_and_buckets(session, tenant_id, sessions, index, hours, *deltas)
    else:
        await repo.upsert_sessions(session, tenant_id, sessions)
        if index.size:
            nas = _object_array(sessions.nas_key)[index].tolist()
            sid = _object_array(sessions.acct_session_id)[index].tolist()
            gen = np.asarray(sessions.generation, dtype=np.int64)[index].tolist()
            await repo.add_buckets(session, tenant_id, nas, sid, gen, hours, *deltas)
    anomalies = result.anomalies
    if anomalies:
        # Every attribute read of an engine result copies its column: read each once.
        nas_keys = sessions.nas_key
        session_ids = sessions.acct_session_id
        generations = np.asarray(sessions.generation, dtype=np.int64).tolist()
        rows: list[tuple[str, str, int | None, int, int, str]] = []
        for entry, row, flag, detail in anomalies:
            original = int(mapping[entry]) if entry >= 0 else -1
            if row >= 0:
                rows.append(
                    (nas_keys[row], session_ids[row], generations[row], original, int(flag), detail)
                )
            else:
                rows.append(("", "", None, original, int(flag), detail))
        await repo.insert_anomalies(session, tenant_id, rows, now_us())


class UsageService:
    """Ingest, sweep and the session queries of every tenant of one process."""

    def __init__(self, db: Database, *, retain_closed_s: int = RETAIN_CLOSED_S) -> None:
        self.db = db
        self.retain_closed_s = retain_closed_s
        self._tenants: dict[uuid.UUID, TenantEngine] = {}

    # ------------------------------------------------------------ engines

    async def tenant_engine(self, tenant_id: uuid.UUID) -> TenantEngine:
        te = self._tenants.get(tenant_id)
        if te is None:
            te = self._tenants.setdefault(tenant_id, TenantEngine(core.Engine()))
        if time.monotonic() - te.config_at > CONFIG_TTL_S:
            await self._refresh_config(tenant_id, te)
        return te

    async def _refresh_config(self, tenant_id: uuid.UUID, te: TenantEngine) -> None:
        async with self.db.read() as session:
            secrets = await repo.nas_secrets(session, tenant_id)
            policies = await repo.nas_policies(session, tenant_id)
        for address, secret in secrets.items():
            if te.secrets.get(address) != secret:
                te.engine.set_secret(address, secret)
        te.secrets = secrets
        for key, policy in policies.items():
            self._set_policy(te, key, policy)
        te.config_at = time.monotonic()

    @staticmethod
    def _set_policy(te: TenantEngine, nas_key: str, policy: repo.Policy) -> None:
        if te.policies.get(nas_key, repo.DEFAULT_POLICY) != policy:
            te.engine.set_policy(nas_key, policy_of(policy))
        te.policies[nas_key] = policy

    async def _sync(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        te: TenantEngine,
        states: dict[str, repo.NasState],
    ) -> None:
        """Makes the engine hold the database's state of every locked NAS."""
        for key, state in states.items():
            self._set_policy(te, key, state.policy)
            if te.engine.nas_seq(key) == state.seq:
                continue
            rows = await repo.live_session_rows(session, tenant_id, key, self.retain_closed_s)
            cols = (
                core.make_sessions(**repo.session_arrays(rows)) if rows else core.empty_sessions()
            )
            te.engine.load_sessions(key, state.seq, cols)
            te.known.add(key)

    def _forget(self, te: TenantEngine, keys: Sequence[str]) -> None:
        if keys:
            te.engine.forget_nas(list(keys))
            te.known.difference_update(keys)

    # ------------------------------------------------------------ ingest

    async def ingest(
        self, tenant_id: uuid.UUID, batch: bytes, received_us: int | None = None
    ) -> BatchAck:
        """Applies one serialized StreamAccountingRequest; returns after the commit."""
        received = now_us() if received_us is None else received_us
        te = await self.tenant_engine(tenant_id)
        try:
            prepared = await _call(len(batch), te.engine.prepare, batch, received)
        except core.RatingError as error:
            raise InvalidArgumentError("entries", str(error)) from None
        total = len(prepared)
        mapping = np.arange(total, dtype=np.int64)
        excluded = np.empty(0, dtype=np.int64)
        batch_id = prepared.batch_id
        async with te.lock:
            for _attempt in range(MAX_ATTEMPTS):
                keys = prepared.nas_keys
                try:
                    async with self.db.transaction() as session:
                        states = await repo.lock_nas(session, tenant_id, keys)
                        await self._sync(session, tenant_id, te, states)
                        result = await _call(len(batch), te.engine.apply, prepared)
                        outcome = await self._write_batch(
                            session, tenant_id, result, mapping, batch_id, received
                        )
                except _Redo as redo:
                    self._forget(te, keys)
                    excluded = np.union1d(excluded, redo.indices)
                    keep = np.setdiff1d(np.arange(total, dtype=np.int64), excluded)
                    entries = _object_array(result.entry_bytes)
                    local = np.searchsorted(mapping, keep)
                    batch = wrap_entries(entries[local].tolist(), batch_id)
                    mapping = keep
                    prepared = await _call(len(batch), te.engine.prepare, batch, received)
                    continue
                except BaseException:
                    self._forget(te, keys)
                    raise
                return self._ack(batch_id, outcome, result.quarantine, mapping, excluded.size)
        raise FailedPreconditionError("batch kept colliding with the ledger; resend it")

    @staticmethod
    def _ack(
        batch_id: str,
        outcome: npt.NDArray[np.uint8],
        quarantine: list[tuple[int, str]],
        mapping: npt.NDArray[np.int64],
        excluded: int,
    ) -> BatchAck:
        counts = np.bincount(outcome, minlength=5)
        return BatchAck(
            batch_id=batch_id,
            accepted=int(counts[ACCEPTED]),
            duplicate=int(counts[DUPLICATE]) + excluded,
            late=int(counts[LATE]),
            quarantined=int(counts[QUARANTINED]),
            quarantine=[(int(mapping[i]), reason) for i, reason in quarantine],
        )

    async def _write_batch(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        result: Any,
        mapping: npt.NDArray[np.int64],
        batch_id: str,
        received_us: int,
    ) -> npt.NDArray[np.uint8]:
        outcome = np.asarray(result.outcome, dtype=np.uint8)
        rows = np.flatnonzero((outcome == ACCEPTED) | (outcome == LATE))
        if rows.size:
            nas_index = np.asarray(result.nas_index, dtype=np.int64)[rows]
            ledger = repo.LedgerRows(
                content_key=np.asarray(result.content_key)[rows].tolist(),
                nas_key=_object_array(result.nas_keys)[nas_index].tolist(),
                nas_seq=np.asarray(result.nas_seq, dtype=np.int64)[nas_index].tolist(),
                entry_index=mapping[rows].tolist(),
                entry_bytes=_object_array(result.entry_bytes)[rows].tolist(),
                status=outcome[rows].astype(np.int64).tolist(),
                status_type=np.asarray(result.status_type, dtype=np.int64)[rows].tolist(),
                event_us=np.asarray(result.event_us, dtype=np.int64)[rows].tolist(),
                arrival_us=np.asarray(result.arrival_us, dtype=np.int64)[rows].tolist(),
            )
            existing = await repo.insert_ledger(session, tenant_id, ledger, batch_id, received_us)
            if existing.size:
                local = np.flatnonzero(np.isin(mapping, existing))
                accepted = local[outcome[local] == ACCEPTED]
                if accepted.size:
                    raise _Redo(mapping[accepted])
                outcome = outcome.copy()
                outcome[local] = DUPLICATE
        quarantine = result.quarantine
        if quarantine:
            entry_bytes = result.entry_bytes
            await repo.insert_quarantine(
                session,
                tenant_id,
                batch_id,
                [(int(mapping[i]), reason, entry_bytes[i]) for i, reason in quarantine],
                received_us,
            )
        await write_projections(session, tenant_id, result, mapping)
        await repo.set_nas_seq(
            session, tenant_id, result.nas_keys, np.asarray(result.nas_seq).tolist()
        )
        return outcome

    # ------------------------------------------------------------ sweep

    async def sweep(self, tenant_id: uuid.UUID, as_of: dt.datetime) -> int:
        """Closes the tenant's stale sessions as of `as_of`; returns how many."""
        as_of_us = to_us(as_of)
        te = await self.tenant_engine(tenant_id)
        async with te.lock:
            keys: list[str] = []
            try:
                async with self.db.transaction() as session:
                    await repo.begin_write(session)
                    keys = await repo.open_session_nas_keys(session, tenant_id)
                    # The engine must not close what another replica already settled.
                    self._forget(te, sorted(te.known - set(keys)))
                    if not keys:
                        return 0
                    states = await repo.lock_nas(session, tenant_id, keys)
                    await self._sync(session, tenant_id, te, states)
                    result = te.engine.sweep(as_of_us)
                    sessions = result.sessions
                    await write_projections(session, tenant_id, result, np.empty(0, dtype=np.int64))
                    touched = sorted(set(sessions.nas_key))
                    await repo.record_sweep(
                        session,
                        tenant_id,
                        touched,
                        [states[k].seq for k in touched],
                        as_of_us,
                    )
                    if result.nas_keys:
                        await repo.set_nas_seq(
                            session, tenant_id, result.nas_keys, np.asarray(result.nas_seq).tolist()
                        )
                    return int(np.count_nonzero(~np.asarray(sessions.open, dtype=np.bool_)))
            except BaseException:
                self._forget(te, keys)
                raise

    def forget_tenant(self, tenant_id: uuid.UUID) -> None:
        """Drops a tenant's engine (after a rebuild); the next batch starts afresh."""
        self._tenants.pop(tenant_id, None)

    async def upsert_nas_client(self, tenant_id: uuid.UUID, spec: NasClientSpec) -> NasClient:
        """Registers a client's secret (by source address) and its NAS key's policy."""
        policy: repo.Policy = (
            spec.swap_direction,
            spec.infer_wrap,
            spec.interim_interval_s or repo.DEFAULT_POLICY[2],
            spec.stale_multiplier or repo.DEFAULT_POLICY[3],
            spec.grace_s or repo.DEFAULT_POLICY[4],
            spec.clock_skew_tolerance_s or repo.DEFAULT_POLICY[5],
        )
        async with self.db.transaction() as session:
            await repo.begin_write(session)
            if spec.secret is None and not await repo.nas_client_exists(
                session, tenant_id, spec.source_address
            ):
                raise InvalidArgumentError("secret", "is required for a new client")
            await repo.upsert_nas_client(
                session, tenant_id, spec.source_address, spec.secret, spec.nas_key, policy
            )
        te = self._tenants.get(tenant_id)
        if te is not None:
            async with te.lock:
                await self._refresh_config(tenant_id, te)
        return NasClient(spec.source_address, spec.nas_key, policy)


@dataclass(frozen=True)
class NasClientSpec:
    source_address: str
    secret: bytes | None
    nas_key: str
    swap_direction: bool = False
    infer_wrap: bool = False
    interim_interval_s: int = 0
    stale_multiplier: int = 0
    grace_s: int = 0
    clock_skew_tolerance_s: int = 0


@dataclass(frozen=True)
class NasClient:
    source_address: str
    nas_key: str
    policy: repo.Policy


# ---------------------------------------------------------------- attribution


async def reattribute(tenant_id: uuid.UUID, session: AsyncSession) -> int:
    """Re-attributes a tenant's unattributed usage after a RADIUS identity was registered.

    Call it inside the transaction that creates the identity (AccountService): sessions
    whose identity now matches a subscription take it, and their identity's unattributed
    hourly buckets move to the subscription's. Returns the number of sessions attributed.
    ListUnattributedUsage also runs it first, so a race with ingest is settled lazily.
    """
    return await repo.reattribute(session, tenant_id)


# ---------------------------------------------------------------- metered usage


@dataclass(frozen=True)
class MeteredUsage:
    idempotency_key: str
    usage_type: int
    custom_type: str
    quantity: Decimal
    unit: str
    occurred_at: dt.datetime
    subscription_id: uuid.UUID | None
    radius_user_name: str
    source: int

    def digest(self) -> bytes:
        canonical = "\x1f".join(
            [
                self.idempotency_key,
                str(self.usage_type),
                self.custom_type,
                format(self.quantity.normalize(), "f"),
                self.unit,
                self.occurred_at.astimezone(dt.UTC).isoformat(),
                str(self.subscription_id or ""),
                self.radius_user_name,
                str(self.source),
            ]
        )
        return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True)
class RecordedUsage:
    usage_id: uuid.UUID
    subscription_id: uuid.UUID | None
    replayed: bool


async def record_usage(db: Database, tenant_id: uuid.UUID, usage: MeteredUsage) -> RecordedUsage:
    """Stores metered usage exactly once per idempotency key; a replay returns the original."""
    digest = usage.digest()
    async with db.transaction() as session:
        await repo.begin_write(session)
        found = await _usage_event(session, tenant_id, usage.idempotency_key)
        if found is not None:
            return _replay(found, digest)
        subscription_id = usage.subscription_id
        if subscription_id is not None:
            if await session.get(Subscription, (tenant_id, subscription_id)) is None:
                raise NotFoundError("subscription", subscription_id)
        elif usage.radius_user_name:
            subscription_id = (
                await session.execute(
                    select(RadiusIdentity.subscription_id).where(
                        RadiusIdentity.tenant_id == tenant_id,
                        RadiusIdentity.kind == 1,
                        RadiusIdentity.value == usage.radius_user_name,
                    )
                )
            ).scalar()
        usage_id = uuid.uuid4()
        values = {
            "tenant_id": tenant_id,
            "id": usage_id,
            "idempotency_key": usage.idempotency_key,
            "request_digest": digest,
            "usage_type": usage.usage_type,
            "custom_type": usage.custom_type,
            "quantity": usage.quantity,
            "unit": usage.unit,
            "occurred_at": usage.occurred_at,
            "subscription_id": subscription_id,
            "radius_user_name": usage.radius_user_name,
            "source": usage.source,
            "recorded_at": dt.datetime.now(dt.UTC),
        }
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(UsageEvent).values(**values)
        stmt = stmt.on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        done = await session.execute(stmt)
        if not getattr(done, "rowcount", 1):
            found = await _usage_event(session, tenant_id, usage.idempotency_key)
            if found is None:  # pragma: no cover - the conflicting row is committed
                raise FailedPreconditionError("idempotency_key: concurrent request; retry")
            return _replay(found, digest)
        return RecordedUsage(usage_id, subscription_id, replayed=False)


async def _usage_event(session: AsyncSession, tenant_id: uuid.UUID, key: str) -> UsageEvent | None:
    return (
        await session.execute(
            select(UsageEvent).where(
                UsageEvent.tenant_id == tenant_id, UsageEvent.idempotency_key == key
            )
        )
    ).scalar()


def _replay(found: UsageEvent, digest: bytes) -> RecordedUsage:
    if bytes(found.request_digest) != digest:
        raise FailedPreconditionError("idempotency_key: already used for a different request")
    return RecordedUsage(found.id, found.subscription_id, replayed=True)
