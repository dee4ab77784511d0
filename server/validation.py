"""Input checks shared by every servicer; each failure names the offending field."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import re
import uuid
from decimal import Decimal, localcontext
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

import rating_core
from server.currency import UNIT_PRICE_SCALE, exponent
from server.errors import InvalidArgumentError

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

_MAC_HEX = re.compile(r"[0-9a-fA-F]{12}")
_MAC_SEPARATORS = re.compile(r"[:\-.]")


def require(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgumentError(field, "is required")
    return value


def parse_id(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgumentError(field, f"not a UUID: {value!r}") from None


def optional_id(field: str, value: str) -> uuid.UUID | None:
    return parse_id(field, value) if value else None


@functools.cache
def _enum_values(enum: Any) -> frozenset[int]:
    return frozenset(enum.values())


def parse_enum(field: str, value: int, enum: Any, *, allow_unspecified: bool = False) -> int:
    """Checks a proto enum value: known, and not *_UNSPECIFIED unless allowed."""
    if value not in _enum_values(enum):
        raise InvalidArgumentError(field, f"unknown value {value}")
    if value == 0 and not allow_unspecified:
        raise InvalidArgumentError(field, "is required")
    return value


def currency_exponent(field: str, code: str) -> int:
    exp = exponent(code)
    if exp is None:
        raise InvalidArgumentError(field, f"not an ISO 4217 currency code: {code!r}")
    return exp


def parse_amount(field: str, amount: str, scale: int, *, allow_negative: bool = False) -> int:
    """A decimal string to integer units of 10^-scale; refuses rounding and negatives."""
    if not amount:
        raise InvalidArgumentError(field, "is required")
    try:
        units = rating_core.parse_units(amount.strip(), scale)
    except rating_core.RatingError as error:
        raise InvalidArgumentError(field, f"{amount!r}: {error}") from None
    if units < 0 and not allow_negative:
        raise InvalidArgumentError(field, "must not be negative")
    return units


def parse_money(
    field: str, money: Any, *, unit_price: bool = False, allow_negative: bool = False
) -> tuple[str, int]:
    """(currency, units): minor units, or micro-units when `unit_price`."""
    code = money.currency_code.strip().upper()
    exp = currency_exponent(f"{field}.currency_code", code)
    scale = UNIT_PRICE_SCALE if unit_price else exp
    return code, parse_amount(f"{field}.amount", money.amount, scale, allow_negative=allow_negative)


def format_amount(units: int, scale: int) -> str:
    return rating_core.format_units(units, scale)


# A decimal as the API writes it: ASCII digits, an optional fraction and exponent. Python's
# Decimal() also takes underscores, non-ASCII digits, "Infinity" and "NaN": refused here.
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE]([+-]?[0-9]+))?")
# Long enough for any value of a NUMERIC(30, 9) column with room for zeros around it; a
# longer text, or a larger exponent, could only be a huge run of zeros to expand.
MAX_DECIMAL_CHARS = 100
MAX_DECIMAL_EXPONENT = 100


def parse_decimal(
    field: str,
    text: str,
    *,
    places: int,
    allow_negative: bool = False,
    integer_digits: int | None = None,
) -> Decimal:
    """An exact decimal with at most `places` fractional digits (trailing zeros aside) and,
    when given, at most `integer_digits` before the point (a NUMERIC(p, s) column holds
    p - s); never rounded. The text is `[+-]digits[.digits][(e|E)[+-]digits]` in ASCII
    (nothing around it, white space neither), at most MAX_DECIMAL_CHARS long, with an exponent of at
    most MAX_DECIMAL_EXPONENT either way; the value comes back normalised: no trailing
    zeros, no exponent, zero unsigned."""
    if len(text) > MAX_DECIMAL_CHARS:
        raise InvalidArgumentError(
            field, f"longer than {MAX_DECIMAL_CHARS} characters ({len(text)})"
        )
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise InvalidArgumentError(
            field, f"not a decimal number ([+-]digits[.digits][e[+-]digits]): {text!r}"
        )
    if match.group(1) is not None and abs(int(match.group(1))) > MAX_DECIMAL_EXPONENT:
        raise InvalidArgumentError(
            field,
            f"exponent out of range (-{MAX_DECIMAL_EXPONENT} to {MAX_DECIMAL_EXPONENT}): {text!r}",
        )
    value = Decimal(match.group())
    _, digits, exp = value.as_tuple()
    # Digit arithmetic, not quantize(): that raises past the context's 28 digits.
    extra = -places - int(exp)
    if extra > 0 and any(digits[-extra:]):
        raise InvalidArgumentError(field, f"more than {places} decimal places: {text!r}")
    if integer_digits is not None and value and value.adjusted() >= integer_digits:
        raise InvalidArgumentError(
            field, f"more than {integer_digits} digits before the decimal point: {text!r}"
        )
    if value < 0 and not allow_negative:
        raise InvalidArgumentError(field, "must not be negative")
    # At most MAX_DECIMAL_CHARS digits and a bounded exponent: the plain text is short.
    return Decimal(format_decimal(value)) if value else Decimal(0)


def format_decimal(value: Decimal) -> str:
    """A decimal as plain text without trailing zeros, every digit kept (normalize() alone
    rounds to the context's 28 digits)."""
    with localcontext() as context:
        context.prec = max(context.prec, len(value.as_tuple().digits))
        return format(value.normalize(), "f")


def limit_length(field: str, value: str, max_chars: int) -> str:
    """Refuses text its column cannot hold: longer than `max_chars` characters, or holding
    NUL, which PostgreSQL text refuses. (RADIUS text of 253 octets is stored in at most 253
    characters, each invalid octet as U+FFFD: a column counts characters.)"""
    if len(value) > max_chars:
        raise InvalidArgumentError(field, f"longer than {max_chars} characters ({len(value)})")
    if "\x00" in value:
        raise InvalidArgumentError(field, "must not contain NUL characters")
    return value


RADIUS_OCTETS = 253  # the most an attribute's value holds


def radius_text(field: str, value: str) -> str:
    """Refuses text no RADIUS attribute can carry: over 253 octets in UTF-8, counting each
    U+FFFD as one (the engine decodes an octet that is not UTF-8 to it), or holding NUL,
    which PostgreSQL text refuses."""
    octets = len(value.encode()) - 2 * value.count("\ufffd")
    if octets > RADIUS_OCTETS:
        raise InvalidArgumentError(
            field, f"longer than a RADIUS attribute allows ({RADIUS_OCTETS} octets): {octets}"
        )
    return limit_length(field, value, RADIUS_OCTETS)


I32_MAX = 2**31 - 1


def at_most_i32(field: str, value: int) -> int:
    """A uint32 the database keeps in an INTEGER column (signed on both databases)."""
    if value > I32_MAX:
        raise InvalidArgumentError(field, f"must be at most {I32_MAX} ({value})")
    return value


def parse_mac(field: str, value: str) -> str:
    """Any common MAC notation to canonical lower-case colon form."""
    digits = _MAC_SEPARATORS.sub("", value.strip())
    if not _MAC_HEX.fullmatch(digits):
        raise InvalidArgumentError(field, f"not a MAC address: {value!r}")
    digits = digits.lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_ipv4(field: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise InvalidArgumentError(field, f"not an IPv4 address: {value!r}") from None


def ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as RFC 5952 writes it, as the core does (Rust's Ipv6Addr): an
    IPv4-mapped IPv6 address in dotted form, which `str()` gives only from Python 3.13 on."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def nas_key_text(text: str) -> str:
    """A NAS key as the core writes it (`record::canonical_address`): an IP address, also
    one given with a port (`192.0.2.1:1813`, `[2001:db8::1]:1813`), in canonical text, an
    IPv4-mapped IPv6 address as its IPv4 address; any other text (a NAS-Identifier) as
    given. A policy or a filter written `2001:DB8:0::1` then names the NAS the core keys
    `2001:db8::1`."""

    def canonical(host: str) -> str | None:
        if "%" in host:  # a zone: no address to the core
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)

    if (found := canonical(text)) is not None:
        return found
    host, sep, port = text.rpartition(":")
    if sep and port.isascii() and port.isdigit() and int(port) <= 65535:
        bracketed = host.startswith("[") and host.endswith("]")
        inner = host[1:-1] if bracketed else host
        if (found := canonical(inner)) is not None and bracketed == (":" in inner):
            return found
    return text


def parse_ip(field: str, value: str) -> str:
    """A packet source's address as the core keys it: an IPv4-mapped IPv6 address (how a
    dual-stack socket reports an IPv4 peer) is the IPv4 address."""
    try:
        address = ipaddress.ip_address(value.strip())
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return ip_text(address)
    except ValueError:
        raise InvalidArgumentError(field, f"not an IP address: {value!r}") from None


def parse_ipv6_prefix(field: str, value: str) -> str:
    try:
        network = ipaddress.IPv6Network(value.strip(), strict=True)
    except ValueError as error:
        raise InvalidArgumentError(field, f"not an IPv6 prefix: {value!r} ({error})") from None
    return f"{ip_text(network.network_address)}/{network.prefixlen}"


def parse_static_ip(field: str, value: str) -> str:
    """A STATIC_IP RADIUS identity as canonical text: an IPv4 address, an IPv6 address, or
    an IPv6 prefix ("2001:db8:1200::/56", no bits set past its length). A /128 is stored as
    its address, so either notation names one identity, and it matches a session whose
    Framed-IPv6-Prefix is that address as /128 (repository.attribution_sql); an
    IPv4-mapped address (`::ffff:192.0.2.1`) is stored as its IPv4 address."""
    text = value.strip()
    expected = "an IPv4 address, an IPv6 address or an IPv6 prefix"
    if "/" in text and "." in text and ":" not in text:
        raise InvalidArgumentError(field, f"not {expected}: {value!r} (an IPv4 prefix)")
    try:
        if "/" in text:
            network = ipaddress.IPv6Network(text, strict=True)
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = network.network_address
            length = network.prefixlen
        else:
            address = ipaddress.ip_address(text)
            length = address.max_prefixlen
    except ValueError as error:
        raise InvalidArgumentError(field, f"not {expected}: {value!r} ({error})") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidArgumentError(field, f"not {expected}: {value!r} (has a scope id)")
    if length == address.max_prefixlen:
        # An IPv4-mapped address is the IPv4 address (a session's Framed-IP-Address).
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return ip_text(address)
    return f"{ip_text(address)}/{length}"


def parse_date(field: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgumentError(field, f"not an ISO 8601 date: {value!r}") from None


def parse_time_zone(field: str, value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(field, f"not an IANA time zone: {value!r}") from None
    return value


def timestamp_or_none(message: Any, field: str) -> dt.datetime | None:
    """An aware UTC datetime from a Timestamp field, None when unset."""
    if not message.HasField(field):
        return None
    ts: Timestamp = getattr(message, field)
    try:
        value = ts.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        value = None
    # The first and last microsecond of the range: asyncpg writes datetime.min and
    # datetime.max as -infinity and infinity, which SQL reports and date_trunc cannot use.
    if value is None or value in _UNSTORABLE:
        raise InvalidArgumentError(
            field,
            f"not a valid timestamp (seconds={ts.seconds}, nanos={ts.nanos}):"
            " after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z,"
            " nanos 0 to 999999999",
        )
    return value


_UNSTORABLE = (
    dt.datetime.min.replace(tzinfo=dt.UTC),
    dt.datetime.max.replace(tzinfo=dt.UTC),
)


def required_timestamp(message: Any, field: str) -> dt.datetime:
    """As timestamp_or_none, for a field that must be set."""
    value = timestamp_or_none(message, field)
    if value is None:
        raise InvalidArgumentError(field, "is required")
    return value


def to_timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgumentError("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_scope(*filters: object) -> str:
    """What a list request's page tokens are bound to: a digest of its filters. A token is
    valid only with the filters of the request it came from (AIP-158); resumed with others
    it would page through one list from a place in another."""
    text = json.dumps([None if f is None else str(f) for f in filters])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(cursor: dict[str, Any], scope: str = "") -> str:
    if scope:
        cursor = {**cursor, "q": scope}
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


# Far longer than any token the server hands out (at most two RADIUS texts of 253 octets,
# each under 1,600 characters once JSON-escaped, then base64): a longer one is not ours.
MAX_PAGE_TOKEN_CHARS = 16384
# Longer than any stored text a token resumes after (RADIUS text, ids, units).
MAX_PAGE_TOKEN_TEXT = 1024
I64_MAX = 2**63 - 1


def malformed_page_token() -> InvalidArgumentError:
    return InvalidArgumentError("page_token", "malformed page token")


def decode_page_token(token: str, scope: str = "") -> dict[str, Any] | None:
    """The fields of a page token, None without one. A token comes back from the client,
    so read its fields with token_text, token_int and token_time: each refuses what the
    server never writes (wrong types, out-of-range numbers, naive times, NUL) as
    INVALID_ARGUMENT naming page_token, before it can reach a query. `scope` is the
    request's page_scope: a token issued with other filters is refused the same way."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise malformed_page_token()
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, RecursionError):
        raise malformed_page_token() from None
    if not isinstance(cursor, dict):
        raise malformed_page_token()
    if cursor.get("q", "") != scope:
        raise InvalidArgumentError(
            "page_token", "was issued for other filters: list again from the first page"
        )
    return cursor


def token_text(value: object) -> str:
    """A text field of a page token: a string a text column could hold (no NUL, no lone
    surrogate), at most MAX_PAGE_TOKEN_TEXT characters."""
    if not isinstance(value, str) or len(value) > MAX_PAGE_TOKEN_TEXT or "\x00" in value:
        raise malformed_page_token()
    try:
        value.encode()
    except UnicodeEncodeError:
        raise malformed_page_token() from None
    return value


def token_int(value: object, *, high: int = I64_MAX) -> int:
    """An integer field of a page token, from 0 to `high` (its column's largest value)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise malformed_page_token()
    return value


def token_time(value: object) -> dt.datetime:
    """A time field of a page token: ISO 8601 with an offset, as an aware UTC datetime."""
    try:
        at = dt.datetime.fromisoformat(token_text(value))
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("naive")
        return at.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise malformed_page_token() from None
