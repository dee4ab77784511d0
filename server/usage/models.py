"""Usage tables: the ledger (the truth) and its projections; every key leads with tenant_id.

Counters are unsigned 64-bit in the engine and stored in signed BIGINT columns bit for bit
(a value above 2**63 - 1 reads back negative and is re-interpreted, never lost).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, ExactDecimal, TenantScoped, utcnow

# Length limits of RADIUS text attributes (253 octets) and of NAS keys built from them.
RADIUS_TEXT = 253
# Column limits of usage_events that RecordUsage checks before writing (migration 0002).
IDEMPOTENCY_KEY_MAX = 200
# StreamAccountingRequest.batch_id, kept with each ledger and quarantine row.
BATCH_ID_MAX = 200
CUSTOM_TYPE_MAX = 120
UNIT_MAX = 64
# quantity is NUMERIC(QUANTITY_PRECISION, QUANTITY_SCALE): 21 digits before the point, 9 after.
QUANTITY_PRECISION = 30
QUANTITY_SCALE = 9
# rating_core.CLOCK_SKEW: the anomaly flag of an Event-Timestamp outside the tolerance.
CLOCK_SKEW_FLAG = 128


class UsageNas(TenantScoped, Base):
    """One NAS as the engine keys it: its sequence (cross-replica lock and sync) and policy."""

    __tablename__ = "usage_nas"

    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    # Sequence of the last batch applied to this NAS; a replica whose engine holds another
    # sequence reloads the NAS's live sessions before applying.
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    swap_direction: Mapped[bool] = mapped_column(Boolean, default=False)
    infer_wrap: Mapped[bool] = mapped_column(Boolean, default=False)
    interim_interval_s: Mapped[int] = mapped_column(Integer, default=600)
    stale_multiplier: Mapped[int] = mapped_column(Integer, default=3)
    grace_s: Mapped[int] = mapped_column(Integer, default=300)
    clock_skew_tolerance_s: Mapped[int] = mapped_column(Integer, default=300)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UsageNasPolicy(TenantScoped, Base):
    """A NAS policy as it was set, in force from the NAS sequence `from_seq` on.

    Setting a policy takes a sequence number of its own, so every ledger batch (written
    at a later sequence) and every sweep (recorded after one) falls on one side of it:
    `rating rebuild` applies each with the policy it was applied with live.
    """

    __tablename__ = "usage_nas_policies"

    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    from_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    swap_direction: Mapped[bool] = mapped_column(Boolean)
    infer_wrap: Mapped[bool] = mapped_column(Boolean)
    interim_interval_s: Mapped[int] = mapped_column(Integer)
    stale_multiplier: Mapped[int] = mapped_column(Integer)
    grace_s: Mapped[int] = mapped_column(Integer)
    clock_skew_tolerance_s: Mapped[int] = mapped_column(Integer)
    set_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UsageNasClient(TenantScoped, Base):
    """A RADIUS client by packet source address: the shared secret that verifies its packets.

    The secret is kept in the clear because RFC 2866 authenticators need it (MD5 over the
    packet and the secret); the table is write-only through the API.
    """

    __tablename__ = "usage_nas_clients"

    source_address: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    # The NAS key whose policy this client set (the source address unless told otherwise).
    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerEntry(TenantScoped, Base):
    """An accepted (or late) accounting record, append-only: the truth projections replay.

    The primary key is the content key, the final dedup authority across replicas and
    collectors. (A time-partitioned PostgreSQL layout needs the time hashed into the key in
    the key: see docs/usage.md.)
    """

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_replay", "tenant_id", "nas_key", "nas_seq", "entry_index"),
        # A NAS's Accounting-On/Offs, which a loading engine recalls (migration 0010); few
        # rows, so the index costs the per-record inserts nothing.
        Index(
            "ix_usage_ledger_onoff",
            "tenant_id",
            "nas_key",
            "nas_seq",
            "entry_index",
            postgresql_where=text("status_type IN (7, 8)"),
            sqlite_where=text("status_type IN (7, 8)"),
        ),
    )

    content_key: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT))
    nas_seq: Mapped[int] = mapped_column(BigInteger)
    entry_index: Mapped[int] = mapped_column(Integer)
    # The exact AccountingEntry wire bytes (decoded record or raw RADIUS packet).
    entry_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    # Engine outcome: 1 accepted, 3 late.
    status: Mapped[int] = mapped_column(SmallInteger)
    status_type: Mapped[int] = mapped_column(SmallInteger)
    event_at: Mapped[dt.datetime]
    arrival_at: Mapped[dt.datetime]
    # When the server received the batch (the default arrival of entries without one).
    received_at: Mapped[dt.datetime]
    batch_id: Mapped[str] = mapped_column(String(BATCH_ID_MAX))


class QuarantinedEntry(TenantScoped, Base):
    """A malformed entry, kept with its reason; never rated, never dropped."""

    __tablename__ = "usage_quarantine"
    __table_args__ = (Index("ix_usage_quarantine_received", "tenant_id", "received_at"),)

    # SHA-256 (first 16 bytes) of the entry bytes: a resent batch quarantines nothing twice.
    entry_digest: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(BATCH_ID_MAX))
    entry_index: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    entry_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime]


class UsageSession(TenantScoped, Base):
    """A session instance (NAS key, Acct-Session-Id, generation): a ledger projection."""

    __tablename__ = "usage_sessions"
    __table_args__ = (
        Index("ix_usage_sessions_subscription", "tenant_id", "subscription_id", "start_at"),
        Index("ix_usage_sessions_user", "tenant_id", "user_name", "start_at"),
        # Open sessions only, on PostgreSQL: closed ones accumulate forever, and a full
        # index on (tenant, nas) let the planner probe it instead of the primary key for
        # a batch's session updates while statistics were stale (2 s batches, measured).
        Index(
            "ix_usage_sessions_open",
            "tenant_id",
            "open",
            "nas_key",
            postgresql_where=text("open"),
        ),
        # Every batch rewrites its sessions' rows: free room per page keeps those updates HOT
        # (no new index entries). 50: at 70, 4 in 10 updates still left the page (measured).
        {"postgresql_with": {"fillfactor": 50}},
    )

    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    acct_session_id: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(RADIUS_TEXT), default="")
    calling_station_id: Mapped[str] = mapped_column(String(RADIUS_TEXT), default="")
    framed_ip_address: Mapped[str] = mapped_column(String(64), default="")
    # Framed-IPv6-Prefix and Delegated-IPv6-Prefix, canonical ("2001:db8:1200::/56"): static
    # IPv6 identities match them. The server default fills the rows of before (0008).
    framed_ipv6_prefix: Mapped[str] = mapped_column(String(64), default="", server_default="")
    delegated_ipv6_prefix: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Attributed through RADIUS identities; NULL while unattributed (see reattribute()).
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    start_at: Mapped[dt.datetime]
    stop_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_update_at: Mapped[dt.datetime]
    session_time_s: Mapped[int] = mapped_column(BigInteger, default=0)
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    hwm_input: Mapped[int] = mapped_column(BigInteger, default=0)
    hwm_output: Mapped[int] = mapped_column(BigInteger, default=0)
    # First 8 bytes of the content key of the last record applied, zero-padded to 16: the
    # engine's repeat check (a full key from before that change reads the same).
    last_key: Mapped[bytes] = mapped_column(LargeBinary(16))
    flags: Mapped[int] = mapped_column(BigInteger, default=0)
    terminate_cause: Mapped[int] = mapped_column(BigInteger, default=0)
    open: Mapped[bool] = mapped_column(Boolean, default=True)


class UsageBucket(TenantScoped, Base):
    """Hourly usage of a subscription (upload = input, download = output): sums of deltas."""

    __tablename__ = "usage_buckets"
    # Batches add to existing rows: room per page keeps those updates HOT (migration 0003).
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)

    subscription_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    upload_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    download_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    session_time_s: Mapped[int] = mapped_column(BigInteger, default=0)


class UnattributedBucket(TenantScoped, Base):
    """Hourly usage of a session instance no subscription owns yet. Kept per instance, not
    per identity: an instance's identity can grow (a later record names its user), and when
    the instance is attributed its own past usage, and only that, moves with it."""

    __tablename__ = "usage_unattributed_buckets"
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)

    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    acct_session_id: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    upload_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    download_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    session_time_s: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageAnomaly(TenantScoped, Base):
    """A flag the engine raised (lost start, counter reset, clock skew, ...), with detail."""

    __tablename__ = "usage_anomalies"
    __table_args__ = (
        Index("ix_usage_anomalies_session", "tenant_id", "nas_key", "acct_session_id"),
        # The NAS-level clock-skew flag (ListNas) without reading every other anomaly.
        Index(
            "ix_usage_anomalies_clock_skew",
            "tenant_id",
            "nas_key",
            "detected_at",
            postgresql_where=text(f"flag = {CLOCK_SKEW_FLAG}"),
            sqlite_where=text(f"flag = {CLOCK_SKEW_FLAG}"),
        ),
    )

    # One id per written batch (or sweep) and the anomaly's position in it.
    batch_uid: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), default="")
    acct_session_id: Mapped[str] = mapped_column(String(RADIUS_TEXT), default="")
    generation: Mapped[int | None] = mapped_column(BigInteger, default=None)
    entry_index: Mapped[int] = mapped_column(Integer)
    flag: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text, default="")
    detected_at: Mapped[dt.datetime]


class UsageSweep(TenantScoped, Base):
    """A stale-session sweep that closed sessions of a NAS: replayed in order by rebuild."""

    __tablename__ = "usage_sweeps"

    nas_key: Mapped[str] = mapped_column(String(RADIUS_TEXT), primary_key=True)
    # The NAS sequence the sweep ran after (ledger entries up to it came first).
    after_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    as_of: Mapped[dt.datetime] = mapped_column(primary_key=True)


class UsageEvent(TenantScoped, Base):
    """Metered usage from RecordUsage, exactly once per idempotency key."""

    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_usage_events_subscription", "tenant_id", "subscription_id", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX))
    # SHA-256 of the canonical request: a key reused for another request is refused.
    request_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    usage_type: Mapped[int] = mapped_column(SmallInteger)
    custom_type: Mapped[str] = mapped_column(String(CUSTOM_TYPE_MAX), default="")
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal(QUANTITY_PRECISION, QUANTITY_SCALE))
    unit: Mapped[str] = mapped_column(String(UNIT_MAX))
    occurred_at: Mapped[dt.datetime]
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    radius_user_name: Mapped[str] = mapped_column(String(RADIUS_TEXT), default="")
    source: Mapped[int] = mapped_column(SmallInteger)
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
