"""ORM tables of the accounts context; every key leads with tenant_id."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, ExactDecimal, JSONDoc, TenantScoped, utcnow


class Customer(TenantScoped, Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("tenant_id", "account_number"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account_number: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    address_lines: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    city: Mapped[str] = mapped_column(String(120), default="")
    state: Mapped[str] = mapped_column(String(120), default="")
    postal_code: Mapped[str] = mapped_column(String(20), default="")
    country_code: Mapped[str] = mapped_column(String(2), default="")
    latitude: Mapped[Decimal | None] = mapped_column(Numeric(9, 6), default=None)
    longitude: Mapped[Decimal | None] = mapped_column(Numeric(9, 6), default=None)
    installation_status: Mapped[int] = mapped_column(SmallInteger, default=0)
    installation_date: Mapped[dt.date | None] = mapped_column(Date, default=None)
    installation_technician: Mapped[str] = mapped_column(String(200), default="")
    installation_notes: Mapped[str] = mapped_column(Text, default="")
    connection_type: Mapped[int] = mapped_column(SmallInteger, default=0)
    last_mile_technology: Mapped[int] = mapped_column(SmallInteger, default=0)
    plan_speed_down_mbps: Mapped[int] = mapped_column(Integer, default=0)
    plan_speed_up_mbps: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)
    bandwidth_profile: Mapped[str] = mapped_column(String(120), default="")
    static_ipv4: Mapped[str] = mapped_column(String(15), default="")
    ipv6_prefix: Mapped[str] = mapped_column(String(43), default="")
    uptime_percent_30d: Mapped[Decimal | None] = mapped_column(Numeric(6, 3), default=None)
    outage_count_30d: Mapped[int] = mapped_column(Integer, default=0)
    last_outage_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Plan(TenantScoped, Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("tenant_id", "code"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    # Price per billing period in the currency's minor units.
    recurring_price_minor: Mapped[int] = mapped_column(BigInteger)
    billing_period: Mapped[int] = mapped_column(SmallInteger)
    # The tariff as a document of components (see server/accounts/tariff.py): it grows
    # with tiers, time bands, add-ons and bundles without new columns.
    tariff: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Subscription(TenantScoped, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"]),
        ForeignKeyConstraint(["tenant_id", "plan_id"], ["plans.tenant_id", "plans.id"]),
        Index("ix_subscriptions_customer", "tenant_id", "customer_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID]
    plan_id: Mapped[uuid.UUID]
    status: Mapped[int] = mapped_column(SmallInteger)
    billing_anchor_day: Mapped[int] = mapped_column(SmallInteger)
    time_zone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Optimistic concurrency: a status change bumps it.
    version: Mapped[int] = mapped_column(Integer, default=1)


class SubscriptionTransition(TenantScoped, Base):
    __tablename__ = "subscription_transitions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]
        ),
    )

    subscription_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_status: Mapped[int] = mapped_column(SmallInteger)
    to_status: Mapped[int] = mapped_column(SmallInteger)
    at: Mapped[dt.datetime]
    reason: Mapped[str] = mapped_column(Text, default="")


class RadiusIdentity(TenantScoped, Base):
    """User-Name, Calling-Station-Id or static IP that attributes usage to a subscription."""

    __tablename__ = "radius_identities"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]
        ),
        Index("ix_radius_identities_subscription", "tenant_id", "subscription_id"),
        # Whether a tenant registered an identity after a batch was received
        # (usage.repository.batch_attribution_sql), and the rebuild's registration times.
        Index("ix_radius_identities_registered", "tenant_id", "created_at"),
    )

    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    value: Mapped[str] = mapped_column(String(253), primary_key=True)
    subscription_id: Mapped[uuid.UUID]
    # When it began to attribute usage: a rebuild attributes each replayed batch by the
    # identities registered when the batch was received (usage's repository.attribution_sql).
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Invoice(TenantScoped, Base):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "number"),
        ForeignKeyConstraint(["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"]),
        Index("ix_invoices_customer", "tenant_id", "customer_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[uuid.UUID]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[int] = mapped_column(SmallInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    issued_at: Mapped[dt.datetime]
    due_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InvoiceLine(TenantScoped, Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "invoice_id"], ["invoices.tenant_id", "invoices.id"]),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal(20, 6))
    unit_price_micro: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


class Payment(TenantScoped, Base):
    __tablename__ = "payments"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "invoice_id"], ["invoices.tenant_id", "invoices.id"]),
        Index("ix_payments_invoice", "tenant_id", "invoice_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    invoice_id: Mapped[uuid.UUID]
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    received_at: Mapped[dt.datetime]
    reference: Mapped[str] = mapped_column(String(200), default="")


class Dispute(TenantScoped, Base):
    __tablename__ = "disputes"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"]),
        Index("ix_disputes_customer", "tenant_id", "customer_id", "opened_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID]
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3), default="")
    amount_minor: Mapped[int | None] = mapped_column(BigInteger, default=None)
    status: Mapped[int] = mapped_column(SmallInteger)
    opened_at: Mapped[dt.datetime]
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolution: Mapped[str] = mapped_column(Text, default="")


class IdempotentResult(TenantScoped, Base):
    """The first response of a mutation carrying a request_id, replayed on retries."""

    __tablename__ = "idempotent_results"

    method: Mapped[str] = mapped_column(String(120), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    response: Mapped[bytes]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
