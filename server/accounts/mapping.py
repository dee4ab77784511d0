"""Proto messages ⇄ rows of the accounts context, validating every field on the way in."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from isp_rating.v1 import accounts_pb2, common_pb2
from server.accounts.models import (
    Customer,
    Dispute,
    Invoice,
    InvoiceLine,
    Payment,
    Plan,
    Subscription,
    SubscriptionTransition,
)
from server.currency import UNIT_PRICE_SCALE
from server.errors import InvalidArgumentError
from server.validation import (
    currency_exponent,
    format_amount,
    parse_date,
    parse_decimal,
    parse_enum,
    parse_ipv4,
    parse_ipv6_prefix,
    parse_mac,
    parse_money,
    parse_static_ip,
    radius_text,
    require,
    to_timestamp,
)

# ------------------------------------------------------------------ customers

# Update-mask paths and the columns each one sets.
CUSTOMER_MASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "account_number": ("account_number",),
    "name": ("name",),
    "email": ("email",),
    "phone": ("phone",),
    "service_address": (
        "address_lines",
        "city",
        "state",
        "postal_code",
        "country_code",
        "latitude",
        "longitude",
    ),
    "installation": (
        "installation_status",
        "installation_date",
        "installation_technician",
        "installation_notes",
    ),
    "connection_type": ("connection_type",),
    "last_mile_technology": ("last_mile_technology",),
    "plan_speed_down_mbps": ("plan_speed_down_mbps",),
    "plan_speed_up_mbps": ("plan_speed_up_mbps",),
    "devices": ("devices",),
    "bandwidth_profile": ("bandwidth_profile",),
    "static_ipv4": ("static_ipv4",),
    "ipv6_prefix": ("ipv6_prefix",),
    "network_stats": ("uptime_percent_30d", "outage_count_30d", "last_outage_at"),
}


def _coordinate(field: str, text: str, limit: int) -> Decimal | None:
    if not text:
        return None
    value = parse_decimal(field, text, places=6, allow_negative=True)
    if abs(value) > limit:
        raise InvalidArgumentError(field, f"must be within ±{limit} degrees")
    return value


def _email(field: str, value: str) -> str:
    value = value.strip()
    if value and ("@" not in value or value.startswith("@") or value.endswith("@")):
        raise InvalidArgumentError(field, f"not an email address: {value!r}")
    return value


def customer_columns(message: accounts_pb2.Customer, field: str) -> dict[str, Any]:
    """Every column of a customer from its message; raises naming the first bad field."""
    address = message.service_address
    country = address.country_code.strip().upper()
    if country and (len(country) != 2 or not country.isalpha()):
        raise InvalidArgumentError(
            f"{field}.service_address.country_code", f"not an ISO 3166-1 alpha-2 code: {country!r}"
        )
    location = address.location
    installation = message.installation
    stats = message.network_stats
    uptime = None
    if stats.uptime_percent_30d:
        uptime = parse_decimal(
            f"{field}.network_stats.uptime_percent_30d", stats.uptime_percent_30d, places=3
        )
        if uptime > 100:
            raise InvalidArgumentError(f"{field}.network_stats.uptime_percent_30d", "exceeds 100")
    devices = []
    for i, device in enumerate(message.devices):
        where = f"{field}.devices[{i}]"
        parse_enum(f"{where}.kind", device.kind, accounts_pb2.DeviceKind)
        if not device.serial.strip() and not device.mac.strip():
            raise InvalidArgumentError(where, "needs a serial or a MAC address")
        devices.append(
            {
                "kind": device.kind,
                "serial": device.serial.strip(),
                "mac": parse_mac(f"{where}.mac", device.mac) if device.mac.strip() else "",
            }
        )
    return {
        "account_number": message.account_number.strip(),
        "name": require(f"{field}.name", message.name),
        "email": _email(f"{field}.email", message.email),
        "phone": message.phone.strip(),
        "address_lines": [line.strip() for line in address.lines if line.strip()],
        "city": address.city.strip(),
        "state": address.state.strip(),
        "postal_code": address.postal_code.strip(),
        "country_code": country,
        "latitude": _coordinate(
            f"{field}.service_address.location.latitude", location.latitude, 90
        ),
        "longitude": _coordinate(
            f"{field}.service_address.location.longitude", location.longitude, 180
        ),
        "installation_status": parse_enum(
            f"{field}.installation.status",
            installation.status,
            accounts_pb2.InstallationStatus,
            allow_unspecified=True,
        ),
        "installation_date": parse_date(f"{field}.installation.date", installation.date)
        if installation.date
        else None,
        "installation_technician": installation.technician.strip(),
        "installation_notes": installation.notes,
        "connection_type": parse_enum(
            f"{field}.connection_type",
            message.connection_type,
            accounts_pb2.ConnectionType,
            allow_unspecified=True,
        ),
        "last_mile_technology": parse_enum(
            f"{field}.last_mile_technology",
            message.last_mile_technology,
            accounts_pb2.LastMileTechnology,
            allow_unspecified=True,
        ),
        "plan_speed_down_mbps": message.plan_speed_down_mbps,
        "plan_speed_up_mbps": message.plan_speed_up_mbps,
        "devices": devices,
        "bandwidth_profile": message.bandwidth_profile.strip(),
        "static_ipv4": parse_ipv4(f"{field}.static_ipv4", message.static_ipv4)
        if message.static_ipv4.strip()
        else "",
        "ipv6_prefix": parse_ipv6_prefix(f"{field}.ipv6_prefix", message.ipv6_prefix)
        if message.ipv6_prefix.strip()
        else "",
        "uptime_percent_30d": uptime,
        "outage_count_30d": stats.outage_count_30d,
        "last_outage_at": stats.last_outage_at.ToDatetime(tzinfo=dt.UTC)
        if stats.HasField("last_outage_at")
        else None,
    }


def default_account_number(customer_id: uuid.UUID) -> str:
    return f"AC-{customer_id.hex[:12].upper()}"


def _decimal_text(value: Decimal | None, places: int) -> str:
    return "" if value is None else f"{value:.{places}f}"


def customer_to_proto(row: Customer) -> accounts_pb2.Customer:
    return accounts_pb2.Customer(
        id=str(row.id),
        account_number=row.account_number,
        name=row.name,
        email=row.email,
        phone=row.phone,
        service_address=accounts_pb2.ServiceAddress(
            lines=row.address_lines,
            city=row.city,
            state=row.state,
            postal_code=row.postal_code,
            country_code=row.country_code,
            location=accounts_pb2.GeoPoint(
                latitude=_decimal_text(row.latitude, 6), longitude=_decimal_text(row.longitude, 6)
            ),
        ),
        installation=accounts_pb2.Installation(
            status=row.installation_status,  # type: ignore[arg-type]
            date=row.installation_date.isoformat() if row.installation_date else "",
            technician=row.installation_technician,
            notes=row.installation_notes,
        ),
        connection_type=row.connection_type,  # type: ignore[arg-type]
        last_mile_technology=row.last_mile_technology,  # type: ignore[arg-type]
        plan_speed_down_mbps=row.plan_speed_down_mbps,
        plan_speed_up_mbps=row.plan_speed_up_mbps,
        devices=[accounts_pb2.Device(**device) for device in row.devices],
        bandwidth_profile=row.bandwidth_profile,
        static_ipv4=row.static_ipv4,
        ipv6_prefix=row.ipv6_prefix,
        network_stats=accounts_pb2.NetworkStats(
            uptime_percent_30d=_decimal_text(row.uptime_percent_30d, 3),
            outage_count_30d=row.outage_count_30d,
            last_outage_at=to_timestamp(row.last_outage_at),
        ),
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )


# ------------------------------------------------------------------ plans


def plan_columns(message: accounts_pb2.Plan, field: str) -> dict[str, Any]:
    currency, price = parse_money(f"{field}.recurring_price", message.recurring_price)
    data = message.tariff.data
    tariff: dict[str, Any] = {"data": {"included_bytes": data.included_bytes}}
    if data.HasField("overage_price"):
        where = f"{field}.tariff.data.overage_price"
        overage_currency, overage_micro = parse_money(where, data.overage_price, unit_price=True)
        if overage_currency != currency:
            raise InvalidArgumentError(
                f"{where}.currency_code", f"must match the plan's currency {currency}"
            )
        if overage_micro > 0 and data.overage_unit_bytes == 0:
            raise InvalidArgumentError(
                f"{field}.tariff.data.overage_unit_bytes", "must be > 0 when overage is priced"
            )
        tariff["data"]["overage_price_micro"] = overage_micro
        tariff["data"]["overage_unit_bytes"] = data.overage_unit_bytes
    return {
        "code": require(f"{field}.code", message.code),
        "name": require(f"{field}.name", message.name),
        "currency": currency,
        "recurring_price_minor": price,
        "billing_period": parse_enum(
            f"{field}.billing_period", message.billing_period, accounts_pb2.BillingPeriod
        ),
        "tariff": tariff,
    }


def money(currency: str, units: int, *, unit_price: bool = False) -> common_pb2.Money:
    scale = UNIT_PRICE_SCALE if unit_price else currency_exponent("currency", currency)
    return common_pb2.Money(currency_code=currency, amount=format_amount(units, scale))


def plan_to_proto(row: Plan) -> accounts_pb2.Plan:
    data = row.tariff.get("data", {})
    allowance = accounts_pb2.DataAllowance(included_bytes=data.get("included_bytes", 0))
    if "overage_price_micro" in data:
        allowance.overage_price.CopyFrom(
            money(row.currency, data["overage_price_micro"], unit_price=True)
        )
        allowance.overage_unit_bytes = data["overage_unit_bytes"]
    return accounts_pb2.Plan(
        id=str(row.id),
        code=row.code,
        name=row.name,
        recurring_price=money(row.currency, row.recurring_price_minor),
        billing_period=row.billing_period,  # type: ignore[arg-type]
        tariff=accounts_pb2.Tariff(data=allowance),
        create_time=to_timestamp(row.created_at),
    )


# ------------------------------------------------------------------ subscriptions

Identity = tuple[int, str]


def radius_identities(message: accounts_pb2.Subscription, field: str) -> list[Identity]:
    seen: set[Identity] = set()
    identities = []
    for i, identity in enumerate(message.radius_identities):
        where = f"{field}.radius_identities[{i}]"
        kind = parse_enum(f"{where}.kind", identity.kind, accounts_pb2.RadiusIdentityKind)
        value = radius_text(f"{where}.value", require(f"{where}.value", identity.value))
        if kind == accounts_pb2.RADIUS_IDENTITY_KIND_STATIC_IP:
            value = parse_static_ip(f"{where}.value", value)
        elif kind == accounts_pb2.RADIUS_IDENTITY_KIND_CALLING_STATION_ID:
            value = _calling_station_id(value)
        if (kind, value) in seen:
            raise InvalidArgumentError(f"{where}.value", f"duplicate RADIUS identity {value!r}")
        seen.add((kind, value))
        identities.append((kind, value))
    return identities


def _calling_station_id(value: str) -> str:
    """MAC-shaped Calling-Station-Ids are stored canonical, so any notation matches."""
    try:
        return parse_mac("value", value)
    except InvalidArgumentError:
        return value


def subscription_to_proto(
    row: Subscription, identities: list[Identity], history: list[SubscriptionTransition]
) -> accounts_pb2.Subscription:
    return accounts_pb2.Subscription(
        id=str(row.id),
        customer_id=str(row.customer_id),
        plan_id=str(row.plan_id),
        status=row.status,  # type: ignore[arg-type]
        billing_anchor_day=row.billing_anchor_day,
        time_zone=row.time_zone,
        radius_identities=[
            accounts_pb2.RadiusIdentity(kind=kind, value=value)  # type: ignore[arg-type]
            for kind, value in identities
        ],
        status_history=[
            accounts_pb2.StatusTransition(
                from_status=t.from_status,  # type: ignore[arg-type]
                to_status=t.to_status,  # type: ignore[arg-type]
                at=to_timestamp(t.at),
                reason=t.reason,
            )
            for t in history
        ],
        create_time=to_timestamp(row.created_at),
    )


# ------------------------------------------------------------------ invoices


def invoice_to_proto(row: Invoice, lines: list[InvoiceLine]) -> accounts_pb2.Invoice:
    return accounts_pb2.Invoice(
        id=str(row.id),
        number=row.number,
        customer_id=str(row.customer_id),
        currency_code=row.currency,
        lines=[
            accounts_pb2.InvoiceLine(
                description=line.description,
                quantity=_quantity_text(line.quantity),
                unit_price=money(row.currency, line.unit_price_micro, unit_price=True),
                amount=money(row.currency, line.amount_minor),
                subscription_id=str(line.subscription_id) if line.subscription_id else "",
            )
            for line in lines
        ],
        total=money(row.currency, row.total_minor),
        amount_paid=money(row.currency, row.amount_paid_minor),
        amount_due=money(row.currency, row.total_minor - row.amount_paid_minor),
        status=row.status,  # type: ignore[arg-type]
        issue_time=to_timestamp(row.issued_at),
        due_time=to_timestamp(row.due_at),
    )


def _quantity_text(value: Decimal) -> str:
    return format(Decimal(value).normalize(), "f")


def payment_to_proto(row: Payment) -> accounts_pb2.Payment:
    return accounts_pb2.Payment(
        id=str(row.id),
        invoice_id=str(row.invoice_id),
        amount=money(row.currency, row.amount_minor),
        received_time=to_timestamp(row.received_at),
        reference=row.reference,
    )


def dispute_to_proto(row: Dispute) -> accounts_pb2.Dispute:
    message = accounts_pb2.Dispute(
        id=str(row.id),
        customer_id=str(row.customer_id),
        invoice_id=str(row.invoice_id) if row.invoice_id else "",
        reason=row.reason,
        status=row.status,  # type: ignore[arg-type]
        open_time=to_timestamp(row.opened_at),
        resolve_time=to_timestamp(row.resolved_at),
        resolution=row.resolution,
    )
    if row.amount_minor is not None:
        message.amount.CopyFrom(money(row.currency, row.amount_minor))
    return message
