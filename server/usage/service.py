"""Usage rules around the Rust engine: batches in, durable ledger and projections out.

One engine per tenant holds the live sessions. A batch is prepared (decoded) outside any
lock, then applied under the tenant's asyncio.Lock and, across replicas, under row locks of
the NAS rows it touches; its writes commit before the ack. A large batch on PostgreSQL is
written by one transaction per group of its NAS keys, at once, each holding the locks of
its NASes only (taken group after group, in key order), and each commits on its own; the
ack waits for all. Any failure makes the
engine forget the batch's NASes, so the next batch reloads the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

import rating_core as core
from server import priority
from server.accounts.models import RadiusIdentity, Subscription
from server.db.base import utcnow
from server.db.database import Database
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from server.usage import repository as repo
from server.usage import units
from server.usage.models import BATCH_ID_MAX, UsageEvent
from server.usage.writes import (
    ACCEPTED,
    DUPLICATE,
    LATE,
    QUARANTINED,
    BatchPart,
    BatchWrites,
    Projection,
)
from server.validation import format_decimal, limit_length

log = logging.getLogger("server.usage")

# Batches of at least this many records spanning several NASes are written by one
# transaction per group of NAS keys, at once (PostgreSQL; see UsageService._groups).
SHARD_MIN_RECORDS = 2_000
DEFAULT_WRITE_SHARDS = 2
# ... unless a latency-bound read (RevenueService) was served this recently: then one
# transaction, which leaves a core to those reads (server/priority.py).
INTERACTIVE_QUIET_S = 2.0
# A deadlock or serialization failure rolls the whole batch back; it is simply re-run.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})
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
    # (entry index, Accounting-Response) of each raw entry the batch recorded.
    responses: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class TenantEngine:
    """A tenant's engine, the lock that serializes its batches, and what it has loaded."""

    engine: core.Engine
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    policies: dict[str, repo.Policy] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict)
    config_at: float = float("-inf")
    # Bumped whenever a secret or a NAS policy the engine holds changes: a batch prepared
    # under another version is prepared again (prepare reads secrets and skew tolerances).
    config_version: int = 0
    # When a request that no secret authenticated last made the config be read again.
    recheck_at: float = float("-inf")
    # NAS keys whose state this engine loaded (it may hold sessions of them).
    known: set[str] = field(default_factory=set)


# The reasons `prepare` gives a raw request it could not authenticate (rating_core).
UNAUTHENTICATED = ("radius: no shared secret", "radius: bad Request Authenticator")
# At most one config refresh per tenant per this many seconds for such requests (a flood
# of spoofed packets must not turn into a database read per batch).
SECRET_RECHECK_S = 1.0


# How `prepare` names a source address without a secret (rating_core: Rust's {:?} of it).
_NO_SECRET = 'radius: no shared secret for source address "'  # noqa: S105 (a message)
# At most this many such addresses are looked up per batch.
UNKNOWN_SOURCES_MAX = 64


def _unauthenticated(prepared: core.PreparedBatch) -> bool:
    return any(reason.startswith(UNAUTHENTICATED) for _, reason in prepared.quarantine)


def _unknown_sources(prepared: core.PreparedBatch) -> list[str]:
    """The source addresses a batch had no secret for (the first UNKNOWN_SOURCES_MAX)."""
    found = {
        reason[len(_NO_SECRET) : -1]
        for _, reason in prepared.quarantine
        if reason.startswith(_NO_SECRET) and reason.endswith('"')
    }
    return sorted(found)[:UNKNOWN_SOURCES_MAX]


def _merged_responses(
    old: list[tuple[int, bytes]],
    prepared: core.PreparedBatch,
    mapping: npt.NDArray[np.int64],
    excluded: npt.NDArray[np.int64],
) -> list[tuple[int, bytes]]:
    """The Accounting-Responses of a batch prepared again: those of the entries still in it
    (`mapping`: their indices in the whole batch) from the new preparation, those of the
    entries a re-run left out (already in the ledger) as they were."""
    left_out = set(excluded.tolist())
    kept = [(i, packet) for i, packet in old if i in left_out]
    return sorted(kept + [(int(mapping[i]), packet) for i, packet in prepared.responses])


class _Redo(Exception):
    """An accepted record was already in the ledger: re-run the batch without it."""

    def __init__(self, indices: npt.NDArray[np.int64]) -> None:
        super().__init__("accepted records already in the ledger")
        self.indices = indices


async def _call(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size >= THREAD_THRESHOLD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _written(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Runs the groups' writes at once and waits for every one (none is left running on a
    connection about to roll back); raises the first failure other than _Redo. Every group
    that found accepted records in the ledger raises _Redo, and the re-run must leave out
    all of them, not the first group's alone (one group at a time, a batch on many NASes
    ran out of attempts and failed for good)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, _Redo):
            raise result
    redos = [r for r in results if isinstance(r, _Redo)]
    if redos:
        raise _Redo(np.unique(np.concatenate([r.indices for r in redos])))
    return cast(list[T], results)


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, raised by asyncpg or wrapped by SQLAlchemy."""
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


async def write_projections(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    projection: Projection,
    as_of_us: int | None = None,
    *,
    live: bool = False,
    detected_us: int | None = None,
) -> None:
    """Session rows, hourly buckets and anomalies of an engine result (batch, sweep, replay).
    A batch's sessions are attributed as of `as_of_us`, when it was received, live and in a
    rebuild alike (repository.batch_attribution_sql); a sweep's rows carry no identity. A
    `live` batch written after identities were registered since its receipt gives a session
    none of the earlier ones match the first registered (a rebuild replays that
    registration's re-attribution after the batch instead). Anomalies are stamped
    `detected_us`, else `as_of_us`: a batch's receipt or a sweep's as-of time, which a
    rebuild knows too (ListNas reports the latest clock-skew one)."""
    since = (
        live
        and as_of_us is not None
        and len(projection) > 0
        and await repo.registered_since(session, tenant_id, as_of_us)
    )
    if len(projection):
        index = projection.bucket_row
        if repo.is_pg(session):
            # Numpy columns as they are: PostgreSQL takes them as binary arrays.
            await repo.upsert_sessions_and_buckets(
                session,
                tenant_id,
                projection.sessions,
                index,
                projection.bucket_hour_us,
                *projection.bucket_deltas,
                as_of_us=as_of_us,
                registered_since=since,
            )
        else:
            params = [column.tolist() for column in projection.sessions]
            hours = projection.bucket_hour_us.tolist()
            deltas = [values.tolist() for values in projection.bucket_deltas]
            await repo.upsert_sessions(session, tenant_id, params, as_of_us, since)
            sessions = projection.sessions
            nas = sessions[0][index].tolist()
            sid = sessions[1][index].tolist()
            gen = sessions[2][index].tolist()
            await repo.add_buckets(session, tenant_id, params[:3], nas, sid, gen, hours, *deltas)
    if projection.anomalies:
        detected = detected_us if detected_us is not None else as_of_us
        await repo.insert_anomalies(
            session, tenant_id, projection.anomalies, now_us() if detected is None else detected
        )


async def recall_sessions(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    engine: core.Engine,
    prepared: core.PreparedBatch,
) -> None:
    """Gives the engine the stored instances the batch's records may need that it may have
    forgotten (closed long ago), so that it decides as if it had never forgotten any: the
    newest instance of each id it holds none of (generations continue from the stored
    ones, so a reused id never starts at 1 again over a stored instance), then the older
    generations that a late Interim or Stop no held instance takes may belong to."""
    pairs = engine.unknown_sessions(prepared)
    if pairs:
        rows = await repo.newest_sessions(session, tenant_id, pairs)
        if rows:
            engine.add_sessions(core.make_sessions(**repo.session_arrays(rows)))
    wanted = engine.unmatched_sessions(prepared)
    if wanted:
        rows = await repo.sessions_starting_within(session, tenant_id, wanted)
        if rows:
            engine.add_sessions(core.make_sessions(**repo.session_arrays(rows)))


class UsageService:
    """Ingest, sweep and the session queries of every tenant of one process."""

    def __init__(
        self,
        db: Database,
        *,
        retain_closed_s: int = RETAIN_CLOSED_S,
        write_shards: int = DEFAULT_WRITE_SHARDS,
    ) -> None:
        self.db = db
        self.retain_closed_s = retain_closed_s
        self.write_shards = write_shards
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
                te.config_version += 1
        te.secrets = secrets
        for key, policy in policies.items():
            self._set_policy(te, key, policy)
        te.config_at = time.monotonic()

    async def _secrets_changed(
        self, tenant_id: uuid.UUID, te: TenantEngine, prepared: core.PreparedBatch
    ) -> bool:
        """Whether a batch with unauthenticated requests should refresh the config first:
        at most once every SECRET_RECHECK_S for any of them (a changed secret), and
        whenever a source it has no secret for is registered by now (a client added
        through another replica: one indexed query per such batch, so a flood of spoofed
        sources costs a query per batch, not a refresh)."""
        if time.monotonic() - te.recheck_at > SECRET_RECHECK_S:
            te.recheck_at = time.monotonic()
            return True
        unknown = [a for a in _unknown_sources(prepared) if a not in te.secrets]
        if not unknown:
            return False
        async with self.db.read() as session:
            return await repo.has_nas_clients(session, tenant_id, unknown)

    @staticmethod
    def _set_policy(te: TenantEngine, nas_key: str, policy: repo.Policy) -> None:
        if te.policies.get(nas_key, repo.DEFAULT_POLICY) != policy:
            te.engine.set_policy(nas_key, policy_of(policy))
            te.config_version += 1
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
            rows, omitted = await repo.live_session_rows(
                session, tenant_id, key, self.retain_closed_s
            )
            cols = (
                core.make_sessions(**repo.session_arrays(rows)) if rows else core.empty_sessions()
            )
            te.engine.load_sessions(
                key, state.seq, cols, complete=omitted is None, omitted_start_max_us=omitted
            )
            te.engine.recall_onoffs(
                key, await repo.recent_onoffs(session, tenant_id, key, core.ONOFF_MEMORY)
            )
            te.known.add(key)

    def _forget(self, te: TenantEngine, keys: Sequence[str]) -> None:
        if keys:
            te.engine.forget_nas(list(keys))
            te.known.difference_update(keys)

    # ------------------------------------------------------------ ingest

    def _groups(self, keys: list[str], records: int) -> list[list[str]]:
        """The NAS keys of a batch in groups, each written by its own transaction: one
        group unless a PostgreSQL batch is large and spans several NASes, and no
        latency-bound read was served in the last INTERACTIVE_QUIET_S."""
        shards = min(self.write_shards, len(keys))
        if (
            shards < 2
            or records < SHARD_MIN_RECORDS
            or self.db.is_sqlite
            or priority.interactive_within(INTERACTIVE_QUIET_S)
        ):
            return [keys]
        # Keys arrive sorted. Each group is a run of consecutive keys, and the groups take
        # their locks one after another (ingest), so a batch locks its NASes in key order
        # like a sweep or a rebuild does. Groups dealt out round-robin ([a, c], [b, d]),
        # locked at once, let two replicas wait on each other through a group that holds
        # its rows while the batch waits in Python for its sibling: a cycle PostgreSQL's
        # deadlock detector cannot see, and both replicas hung.
        size = -(-len(keys) // shards)
        return [keys[g : g + size] for g in range(0, len(keys), size)]

    async def ingest(
        self, tenant_id: uuid.UUID, batch: bytes, received_us: int | None = None
    ) -> BatchAck:
        """Applies one serialized StreamAccountingRequest; returns after the commit."""
        received = now_us() if received_us is None else received_us
        te = await self.tenant_engine(tenant_id)
        version = te.config_version
        try:
            prepared = await _call(len(batch), te.engine.prepare, batch, received)
        except core.RatingError as error:
            # The engine names a defect of the batch id's own field; anything else is the
            # framing of the entries.
            message = str(error)
            field = "batch_id" if ": batch_id " in message else "entries"
            raise InvalidArgumentError(field, message) from None
        # Every ledger and quarantine row keeps it: refused whole rather than cut.
        limit_length("batch_id", prepared.batch_id, BATCH_ID_MAX)
        if _unauthenticated(prepared) and await self._secrets_changed(tenant_id, te, prepared):
            # A secret set through another replica reaches this one at its config refresh:
            # look again before a request is quarantined as unsigned (prepared again below).
            await self._refresh_config(tenant_id, te)
        total = len(prepared)
        # Indices of the whole batch: a re-run (_Redo) prepares a subset of it.
        responses = prepared.responses
        mapping = np.arange(total, dtype=np.int64)
        excluded = np.empty(0, dtype=np.int64)
        # Outcome of each entry a committed group of this call recorded, by batch position:
        # a group may commit in an attempt that another group's _Redo repeats, and the
        # repeat then finds those entries in the ledger; they are still this call's.
        recorded: dict[int, int] = {}
        batch_id = prepared.batch_id
        async with te.lock:
            for _attempt in range(MAX_ATTEMPTS):
                if te.config_version != version:
                    # Secrets or skew tolerances changed since `prepare` read them: decode
                    # again with the ones the NAS rows hold, as a rebuild will.
                    version = te.config_version
                    prepared = await _call(len(batch), te.engine.prepare, batch, received)
                    responses = _merged_responses(responses, prepared, mapping, excluded)
                keys = prepared.nas_keys
                groups = self._groups(keys, total)
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        # Sessions, not transaction blocks: each group commits on its own.
                        txs = [await stack.enter_async_context(self.db.sessions()) for _ in groups]
                        # In key order across the groups: see _groups.
                        states = [
                            await repo.lock_nas(tx, tenant_id, group)
                            for tx, group in zip(txs, groups, strict=True)
                        ]
                        for tx, state in zip(txs, states, strict=True):
                            await self._sync(tx, tenant_id, te, state)
                        if te.config_version != version:
                            continue  # a locked row's policy is new here: prepare again
                        await recall_sessions(txs[0], tenant_id, te.engine, prepared)
                        result = await _call(len(batch), te.engine.apply, prepared)
                        writes = BatchWrites.of(result, mapping)
                        await self._refuse_copies(txs[0], tenant_id, writes, mapping)
                        found = await _written(
                            self._write_part(
                                tx, tenant_id, part, writes, mapping, batch_id, received, recorded
                            )
                            for tx, part in zip(txs, writes.parts(groups), strict=True)
                        )
                        outcome = self._settle(writes, mapping, found)
                except _Redo as redo:
                    self._forget(te, keys)
                    excluded = np.union1d(excluded, redo.indices)
                    keep = np.setdiff1d(np.arange(total, dtype=np.int64), excluded)
                    entries = repo.object_array(result.entry_bytes)
                    local = np.searchsorted(mapping, keep)
                    batch = wrap_entries(entries[local].tolist(), batch_id)
                    mapping = keep
                    prepared = await _call(len(batch), te.engine.prepare, batch, received)
                    continue
                except BaseException as error:
                    self._forget(te, keys)
                    if _sqlstate(error) in RETRY_SQLSTATES:
                        log.warning("batch %s retried after %s", batch_id, _sqlstate(error))
                        continue
                    raise
                return self._ack(
                    batch_id, outcome, result.quarantine, mapping, excluded, responses, recorded
                )
        raise FailedPreconditionError(
            "batch kept colliding with the ledger or concurrent writes; resend it"
        )

    @staticmethod
    async def _refuse_copies(
        session: AsyncSession,
        tenant_id: uuid.UUID,
        writes: BatchWrites,
        mapping: npt.NDArray[np.int64],
    ) -> None:
        """A record that began an instance (or went to one begun without a Start) but whose
        content the ledger holds for another instance of its id (a copy resent unchanged,
        delivered past the tolerance) is a duplicate: the batch re-runs without it and its
        copies in the batch (_Redo), before anything is written."""
        if not writes.copy_key:
            return
        held = await repo.ledger_holds(session, tenant_id, writes.copy_key)
        if not held:
            return
        copies = writes.copy_entry[[k in held for k in writes.copy_key]]
        keys = writes.content_key
        raise _Redo(mapping[np.flatnonzero(np.isin(keys, keys[copies]))])

    @staticmethod
    def _settle(
        writes: BatchWrites,
        mapping: npt.NDArray[np.int64],
        found: Sequence[npt.NDArray[np.int64]],
    ) -> npt.NDArray[np.uint8]:
        """The ledger is the final dedup authority: a late record it already held is a
        duplicate; an accepted one, or a late one that flagged its session, makes the batch
        re-run without it and without its copies in the batch (_Redo): a repeat changes
        nothing. (Without the copies, each re-run left out one copy, and the next was
        accepted in its place: a batch with four copies never went through.)"""
        outcome = writes.outcome
        existing = np.concatenate(found) if found else np.empty(0, dtype=np.int64)
        if not existing.size:
            return outcome
        local = np.flatnonzero(np.isin(mapping, existing))
        changed = local[(outcome[local] == ACCEPTED) | np.isin(local, writes.late_flagging)]
        if changed.size:
            keys = writes.content_key
            raise _Redo(mapping[np.flatnonzero(np.isin(keys, keys[changed]))])
        outcome = outcome.copy()
        outcome[local] = DUPLICATE
        return outcome

    @staticmethod
    def _ack(
        batch_id: str,
        outcome: npt.NDArray[np.uint8],
        quarantine: list[tuple[int, str]],
        mapping: npt.NDArray[np.int64],
        excluded: npt.NDArray[np.int64],
        responses: list[tuple[int, bytes]],
        recorded: dict[int, int],
    ) -> BatchAck:
        """Counts by final outcome; `excluded` entries (already in the ledger) are
        duplicates, unless a group of this call recorded them (`recorded`: their outcome
        then). A raw entry is answered when it was recorded: accepted, duplicate (a
        retransmit is answered again) or late; never when quarantined."""
        final = np.full(int(max(mapping.max(initial=-1), excluded.max(initial=-1))) + 1, 0)
        final[excluded] = DUPLICATE
        final[mapping] = outcome
        for index, status in recorded.items():
            final[index] = status
        counts = np.bincount(final[final > 0], minlength=5)
        quarantined = [(int(mapping[i]), reason) for i, reason in quarantine]
        unrecorded = {index for index, _ in quarantined}
        return BatchAck(
            batch_id=batch_id,
            accepted=int(counts[ACCEPTED]),
            duplicate=int(counts[DUPLICATE]),
            late=int(counts[LATE]),
            quarantined=int(counts[QUARANTINED]),
            quarantine=quarantined,
            responses=[(i, packet) for i, packet in responses if i not in unrecorded],
        )

    @classmethod
    async def _write_part(
        cls,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        part: BatchPart,
        writes: BatchWrites,
        mapping: npt.NDArray[np.int64],
        batch_id: str,
        received_us: int,
        recorded: dict[int, int],
    ) -> npt.NDArray[np.int64]:
        """One group's writes, committed as soon as they are done: a group never waits for
        another to commit (they may wait on each other's bucket rows). Each group's rows
        are whole on their own (its NASes' ledger rows, sessions, deltas and sequence),
        so a failed group leaves the others valid, and a resend counts each record once.
        Returns the entries whose content key the ledger held; adds the ones it wrote to
        `recorded` once they are committed."""
        existing = await repo.insert_ledger(session, tenant_id, part.ledger, batch_id, received_us)
        cls._settle(writes, mapping, [existing])  # raises _Redo before the commit
        if part.quarantine:
            await repo.insert_quarantine(session, tenant_id, batch_id, part.quarantine, received_us)
        await write_projections(session, tenant_id, part.projection, received_us, live=True)
        await repo.set_nas_seq(session, tenant_id, part.nas_keys, part.nas_seq)
        await session.commit()
        held = set(existing.tolist())
        for index, status in zip(part.ledger.entry_index, part.ledger.status, strict=True):
            if index not in held:
                recorded[index] = status
        return existing

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
                    empty = np.empty(0, dtype=np.int64)
                    await write_projections(
                        session, tenant_id, Projection.of(result, empty), detected_us=as_of_us
                    )
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
        """Registers a client's secret (by source address) and its NAS key's policy.

        `spec.fields` names what to write (None: everything). An unnamed NAS key is the
        client's current one (a new client's is `spec.nas_key`); an unnamed policy field keeps
        the NAS's stored value (a new NAS's default).
        """

        def given(name: str) -> bool:
            return spec.fields is None or name in spec.fields

        asked = spec.policy()
        async with self.db.transaction() as session:
            await repo.begin_write(session)
            # Creates the client (a secret given) pointing at spec.nas_key if missing, and
            # locks it: a concurrent first write waits, then finds this one's client.
            current_key = await repo.lock_nas_client(
                session, tenant_id, spec.source_address, spec.secret, spec.nas_key
            )
            if current_key is None:
                raise InvalidArgumentError("secret", "is required for a new client")
            nas_key = spec.nas_key if given("nas_key") else current_key
            # Creates the NAS row with the default policy if missing, and locks it: a
            # concurrent change of another field waits, then keeps this one's.
            nas = (await repo.lock_nas(session, tenant_id, [nas_key]))[nas_key]
            policy = cast(
                repo.Policy,
                tuple(
                    want if given(name) else have
                    for name, want, have in zip(repo.POLICY_COLUMNS, asked, nas.policy, strict=True)
                ),
            )
            await repo.point_nas_client(session, tenant_id, spec.source_address, nas_key)
            await repo.set_nas_policy(session, tenant_id, nas, policy)
        te = self._tenants.get(tenant_id)
        if te is not None:
            async with te.lock:
                await self._refresh_config(tenant_id, te)
        return NasClient(spec.source_address, nas_key, policy)


@dataclass(frozen=True)
class NasClientSpec:
    source_address: str
    secret: bytes | None  # None: keep the stored one
    nas_key: str
    swap_direction: bool = False
    infer_wrap: bool = False
    interim_interval_s: int = 0  # 0 = default, as for the multiplier and the tolerance
    stale_multiplier: int = 0
    grace_s: int | None = None  # None = default; 0 = no grace
    clock_skew_tolerance_s: int = 0
    # The fields to write ("nas_key" and repo.POLICY_COLUMNS names); None: all of them.
    fields: frozenset[str] | None = None

    def policy(self) -> repo.Policy:
        """The policy asked for, zeros (an absent grace) replaced by the defaults."""
        return (
            self.swap_direction,
            self.infer_wrap,
            self.interim_interval_s or repo.DEFAULT_POLICY[2],
            self.stale_multiplier or repo.DEFAULT_POLICY[3],
            repo.DEFAULT_POLICY[4] if self.grace_s is None else self.grace_s,
            self.clock_skew_tolerance_s or repo.DEFAULT_POLICY[5],
        )


@dataclass(frozen=True)
class NasClient:
    source_address: str
    nas_key: str
    policy: repo.Policy


# ---------------------------------------------------------------- attribution


async def reattribute(
    tenant_id: uuid.UUID, session: AsyncSession, registered: uuid.UUID | None = None
) -> int:
    """Re-attributes a tenant's unattributed usage after a RADIUS identity was registered.

    Call it inside the transaction that creates the identity (AccountService): sessions
    whose identity now matches a subscription take it, and their unattributed hourly
    buckets move to the subscription's; metered events recorded by an unknown
    `radius_user_name` that now matches take it too. Returns the number of sessions and
    metered events attributed. ListUnattributedUsage also runs it first, so a race with
    ingest or RecordUsage is settled lazily.

    It takes the tenant's NAS locks first, as batches do: on PostgreSQL its update of the
    sessions would otherwise deadlock with a batch writing them, and a batch that commits
    while the identity is being registered would be missed. Each session is attributed by
    the identities registered when the first one matching it was (as a rebuild does): a
    session a race left unattributed keeps the subscription it would have had.

    `registered`: the subscription whose identities this transaction creates. They are
    stamped registered now, once the locks are held: registrations racing each other then
    take effect in the order of their timestamps (the order a rebuild replays them in),
    not in the order they were stamped before one waited for the other's locks; and a
    RecordUsage by User-Name, which takes the identity lock shared, is recorded wholly
    before the stamp or after the commit (its replay answers as it first did).
    """
    if registered is not None:
        await repo.lock_identities(session, tenant_id, exclusive=True)
    await repo.lock_tenant_nas(session, tenant_id)
    if registered is not None:
        await session.execute(
            update(RadiusIdentity)
            .where(
                RadiusIdentity.tenant_id == tenant_id,
                RadiusIdentity.subscription_id == registered,
            )
            .values(created_at=utcnow())
        )
    sessions = await repo.reattribute(session, tenant_id)
    events = await repo.attribute_events(session, tenant_id)
    return sessions + events


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
    # occurred_at's nanoseconds past its microsecond: not stored (times are kept to the
    # microsecond), but part of the request an idempotency key stands for.
    occurred_ns: int = 0

    def digest(self) -> bytes:
        return self._digest(format_decimal(self.quantity), self.occurred_ns)

    def digests(self) -> tuple[bytes, ...]:
        """The digest, and any other a first attempt of this request may have stored: a
        negative zero quantity kept its sign ("-0") before quantities were normalised."""
        if self.quantity:
            return (self.digest(),)
        return (self.digest(), self._digest("-0", self.occurred_ns))

    def _digest(self, quantity: str, occurred_ns: int) -> bytes:
        occurred = self.occurred_at.astimezone(dt.UTC).isoformat()
        canonical = "\x1f".join(
            [
                self.idempotency_key,
                str(self.usage_type),
                self.custom_type,
                quantity,
                self.unit,
                occurred + (f"+{occurred_ns}ns" if occurred_ns else ""),
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
    """Stores metered usage exactly once per idempotency key; a replay returns the original.
    The unit must be one its usage type takes (server/usage/units.py)."""
    units.base_quantity(usage.usage_type, usage.unit, usage.quantity)
    digest = usage.digest()
    async with db.transaction() as session:
        await repo.begin_write(session)
        found = await _usage_event(session, tenant_id, usage.idempotency_key)
        if found is not None:
            return await _replay(session, found, usage)
        subscription_id = usage.subscription_id
        if subscription_id is not None:
            if await session.get(Subscription, (tenant_id, subscription_id)) is None:
                raise NotFoundError("subscription", subscription_id)
        elif usage.radius_user_name:
            await repo.lock_identities(session, tenant_id, exclusive=False)
            identity = await _user_name(session, tenant_id, usage.radius_user_name)
            subscription_id = None if identity is None else identity.subscription_id
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
            return await _replay(session, found, usage)
        return RecordedUsage(usage_id, subscription_id, replayed=False)


async def _usage_event(session: AsyncSession, tenant_id: uuid.UUID, key: str) -> UsageEvent | None:
    return (
        await session.execute(
            select(UsageEvent).where(
                UsageEvent.tenant_id == tenant_id, UsageEvent.idempotency_key == key
            )
        )
    ).scalar()


async def _user_name(
    session: AsyncSession, tenant_id: uuid.UUID, user_name: str
) -> RadiusIdentity | None:
    """The User-Name identity a metered event's radius_user_name names, if registered."""
    found = await session.execute(
        select(RadiusIdentity).where(
            RadiusIdentity.tenant_id == tenant_id,
            RadiusIdentity.kind == 1,
            RadiusIdentity.value == user_name,
        )
    )
    return found.scalar()


async def _replay(session: AsyncSession, found: UsageEvent, usage: MeteredUsage) -> RecordedUsage:
    """The original result of a recorded request: an event recorded unattributed and
    attributed since (its User-Name registered later) replays unattributed, as it was
    answered first."""
    if bytes(found.request_digest) not in usage.digests():
        raise FailedPreconditionError("idempotency_key: already used for a different request")
    subscription_id = found.subscription_id
    if usage.subscription_id is None and subscription_id is not None:
        identity = await _user_name(session, found.tenant_id, found.radius_user_name)
        if identity is None or identity.created_at > found.recorded_at:
            subscription_id = None
    return RecordedUsage(found.id, subscription_id, replayed=True)
