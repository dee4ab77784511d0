"""FreeRADIUS detail files read into decoded accounting records (RADIUS.md, "Raw RADIUS").

A record is a header line (the writing server's local date), tab-indented `Attr = value`
lines and a blank line that closes it. A header is any non-blank line that does not start
with a space or tab, and it always begins a record. A trailing record without its blank
line is still being written: it is reported as incomplete and left for the next read
(`consumed` says where the complete records end). A record that a header interrupts before
its blank line was cut short (the writer died in it and went on after a restart): it will
never be complete, so it is rejected at its line, and the record after it is read as usual.

Time: the header date and text Event-Timestamps are the writing server's local time and are
not trusted. An integer Event-Timestamp is used as is; a text one only when it says its
offset (UTC or GMT, or an ISO 8601 date with one), otherwise, or when it cannot be read, it
is left out and the engine takes arrival - Acct-Delay-Time, as for a NAS that sends none.
Arrival is the `Timestamp = <epoch>` line; a record without one is timed by its trusted
Event-Timestamp (arrival = Event-Timestamp + Acct-Delay-Time), and only a record with
neither by its header date, read in the zone the caller names (UTC unless told).

A record whose usage attributes cannot be read (a counter that is not a 32-bit integer, a
repeated single-valued attribute, an unknown status name) is rejected with its line and the
attribute named, never sent as zero. Attributes the engine does not use are skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2

U32_MAX = (1 << 32) - 1

# RFC 2866 5.1 and RFC 2867 4.1, plus FreeRADIUS's "Alive" for Interim-Update.
STATUS_TYPES = {
    "start": 1,
    "stop": 2,
    "interim-update": 3,
    "alive": 3,
    "accounting-on": 7,
    "accounting-off": 8,
    "tunnel-start": 9,
    "tunnel-stop": 10,
    "tunnel-reject": 11,
    "tunnel-link-start": 12,
    "tunnel-link-stop": 13,
    "tunnel-link-reject": 14,
    "failed": 15,
}

# RFC 2866 5.10 and RFC 3580 3.32.
TERMINATE_CAUSES = {
    name.lower(): number
    for number, name in enumerate(
        [
            "User-Request",
            "Lost-Carrier",
            "Lost-Service",
            "Idle-Timeout",
            "Session-Timeout",
            "Admin-Reset",
            "Admin-Reboot",
            "Port-Error",
            "NAS-Error",
            "NAS-Request",
            "NAS-Reboot",
            "Port-Unneeded",
            "Port-Preempted",
            "Port-Suspended",
            "Service-Unavailable",
            "Callback",
            "User-Error",
            "Host-Request",
            "Supplicant-Restart",
            "Reauthentication-Failure",
            "Port-Reinitialized",
            "Port-Administratively-Disabled",
        ],
        start=1,
    )
} | {
    # FreeRADIUS's dictionary.rfc3580 names 21 and 22 so.
    "port-reinit": 21,
    "port-disabled": 22,
}

# Where the packet came from, most trusted first (FreeRADIUS writes these itself).
SOURCE_ATTRIBUTES = ("packet-src-ip-address", "packet-src-ipv6-address", "client-ip-address")


class DetailValueError(ValueError):
    """A value that cannot be read for its attribute."""


def unquote(value: str) -> bytes:
    """A detail value as bytes: "quoted" with FreeRADIUS escapes, 0x hex, or a bare token."""
    if value.startswith("0x") and len(value) > 2:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            raise DetailValueError("not valid hex") from None
    if not value.startswith('"'):
        return value.encode("utf-8", "surrogateescape")
    if len(value) < 2 or not value.endswith('"'):
        raise DetailValueError("unterminated quoted string")
    body = value[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in ("n", "r", "t"):
            out += {"n": b"\n", "r": b"\r", "t": b"\t"}[nxt]
            i += 2
        elif nxt in ('"', "\\"):
            out += nxt.encode()
            i += 2
        elif len(body) >= i + 4 and all(c in "01234567" for c in body[i + 1 : i + 4]):
            code = int(body[i + 1 : i + 4], 8)
            if code > 0xFF:
                raise DetailValueError("octal escape above \\377")
            out.append(code)
            i += 4
        else:
            raise DetailValueError(f"unknown escape \\{nxt}")
    return bytes(out)


def text(value: str) -> str:
    try:
        return unquote(value).decode()
    except UnicodeDecodeError:
        raise DetailValueError("not UTF-8 text") from None


def radius_text(value: str) -> str:
    """A RADIUS text attribute (octets: FreeRADIUS writes those that are not printable as
    octal escapes): each invalid UTF-8 sequence becomes U+FFFD, as the engine stores the
    same attribute of a raw packet, rather than the record, and its usage, being refused."""
    return unquote(value).decode(errors="replace")


def u32(value: str) -> int:
    token = unquote(value).decode(errors="replace")
    if not token.isascii() or not token.isdigit():
        raise DetailValueError(f"{token!r} is not an unsigned integer")
    number = int(token)
    if number > U32_MAX:
        raise DetailValueError(f"{number} does not fit 32 bits")
    return number


def enum(names: dict[str, int]) -> Callable[[str], int]:
    def read(value: str) -> int:
        token = unquote(value).decode(errors="replace")
        if token.isascii() and token.isdigit():
            return u32(token)
        try:
            return names[token.lower()]
        except KeyError:
            raise DetailValueError(f"unknown value {token!r}") from None

    return read


def terminate_cause(value: str) -> int | None:
    """Acct-Terminate-Cause; a name no dictionary here knows (a server's own dictionary)
    is left out rather than the Stop and its final counters refused: it is not usage."""
    try:
        return enum(TERMINATE_CAUSES)(value)
    except DetailValueError:
        if unquote(value).decode(errors="replace").isdigit():
            raise  # a number that does not fit 32 bits
        return None


def ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text(value)))
    except ipaddress.AddressValueError:
        raise DetailValueError("not an IPv4 address") from None


def ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text(value)))
    except ipaddress.AddressValueError:
        raise DetailValueError("not an IPv6 address") from None


def ip_any(value: str) -> str:
    try:
        return str(ipaddress.ip_address(text(value)))
    except ValueError:
        raise DetailValueError("not an IP address") from None


def ipv6_prefix(value: str) -> str:
    try:
        return str(ipaddress.IPv6Network(text(value), strict=False))
    except ValueError:
        raise DetailValueError("not an IPv6 prefix") from None


def event_timestamp(value: str) -> int | None:
    """Seconds since the epoch (RADIUS carries whole seconds: a fraction is cut); None for
    a date that does not say its offset (a local time, untrusted) or that cannot be read,
    left out as an unknown terminate cause is: it is not usage, and the record's counters
    still count, timed as a NAS's without Event-Timestamp."""
    token = text(value).strip()
    if token.isascii() and token.isdigit():
        return u32(token)
    words = token.split()
    at: dt.datetime | None = None
    if len(words) == 5 and words[-1] in ("UTC", "GMT"):
        # FreeRADIUS writes "Nov 14 2023 22:13:20 UTC", newer versions with microseconds.
        stamp = " ".join(words[:4]) + " +0000"
        try:
            at = dt.datetime.strptime(stamp, "%b %d %Y %H:%M:%S %z")
        except ValueError:
            with contextlib.suppress(ValueError):
                at = dt.datetime.strptime(stamp, "%b %d %Y %H:%M:%S.%f %z")
    elif len(words) == 1 and token[:1].isdigit():
        with contextlib.suppress(ValueError):
            at = dt.datetime.fromisoformat(token)  # ISO 8601
        if at is not None and at.tzinfo is None:
            at = None  # trusted with its offset only
    if at is None or not 0 <= at.timestamp() <= U32_MAX:
        return None
    return int(at.timestamp())


# Attribute (lower case) -> (AccountingRecord field, reader). Class repeats; others not.
FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "acct-status-type": ("status_type", enum(STATUS_TYPES)),
    "acct-session-id": ("acct_session_id", radius_text),
    "user-name": ("user_name", radius_text),
    "nas-ip-address": ("nas_ip_address", ipv4),
    "nas-ipv6-address": ("nas_ipv6_address", ipv6),
    "nas-identifier": ("nas_identifier", radius_text),
    "nas-port": ("nas_port", u32),
    "nas-port-id": ("nas_port_id", radius_text),
    "acct-input-octets": ("input_octets", u32),
    "acct-input-gigawords": ("input_gigawords", u32),
    "acct-output-octets": ("output_octets", u32),
    "acct-output-gigawords": ("output_gigawords", u32),
    "acct-session-time": ("session_time_s", u32),
    "event-timestamp": ("event_timestamp", event_timestamp),
    "acct-delay-time": ("delay_time_s", u32),
    "acct-terminate-cause": ("terminate_cause", terminate_cause),
    "framed-ip-address": ("framed_ip_address", ipv4),
    "framed-ipv6-prefix": ("framed_ipv6_prefix", ipv6_prefix),
    "delegated-ipv6-prefix": ("delegated_ipv6_prefix", ipv6_prefix),
    "calling-station-id": ("calling_station_id", radius_text),
    "timestamp": ("timestamp", u32),
    **dict.fromkeys(SOURCE_ATTRIBUTES, ("source", ip_any)),
}


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str


@dataclass
class DetailFile:
    """What a read of a detail file found."""

    records: list[usage_pb2.AccountingRecord] = field(default_factory=list)
    # First line (1-based) of each record, for messages.
    lines: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # Bytes up to the end of the last complete record: where the next read resumes.
    consumed: int = 0
    # A trailing record without its closing blank line (not complete yet).
    incomplete: bool = False


def _timestamp(seconds: int | float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(round(seconds * 1_000_000_000))
    return out


def _header_time(header: str, zone: dt.tzinfo) -> dt.datetime:
    try:
        # Parsed as if UTC, then re-read as the same wall-clock time in the writer's zone.
        wall = dt.datetime.strptime(" ".join(header.split()) + " +0000", "%a %b %d %H:%M:%S %Y %z")
    except ValueError:
        raise DetailValueError(f"header {header!r} is not a detail-file date") from None
    return wall.replace(tzinfo=zone).astimezone(dt.UTC)


def _record(header: str, body: list[tuple[int, str]], zone: dt.tzinfo) -> Any:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    classes: list[bytes] = []
    for number, line in body:
        name, sep, value = line.strip().partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise DetailValueError(f"line {number}: expected 'Attribute = value'")
        key = name.lower()
        try:
            if key == "class":
                classes.append(unquote(value))
                continue
            spec = FIELDS.get(key)
            if spec is None:
                continue
            target, reader = spec
            read = reader(value)
        except DetailValueError as error:
            raise DetailValueError(f"line {number}: {name}: {error}") from None
        if read is None:  # a value left out (a local-time date, an unknown cause name)
            continue
        if target == "source":
            sources.setdefault(key, read)
            continue
        if target in values:
            raise DetailValueError(f"line {number}: {name}: repeated")
        values[target] = read
    stamp = values.pop("timestamp", None)
    event = values.pop("event_timestamp", None)
    if stamp is not None:
        arrival = _timestamp(stamp)
    elif event is not None:
        # Without `Timestamp`, an Event-Timestamp the reader trusts (an integer, a date with
        # its offset) times the record, as RADIUS.md prefers, not the header's local date:
        # read in a wrong zone, the header would set the Event-Timestamp aside as skewed
        # and give the record another key on each run with another zone.
        arrival = _timestamp(event + values.get("delay_time_s", 0))
    else:
        arrival = _timestamp(_header_time(header, zone).timestamp())
    if event is not None:
        values["event_timestamp"] = _timestamp(event)
    source = next((sources[k] for k in SOURCE_ATTRIBUTES if k in sources), None)
    if source is None:
        source = values.get("nas_ip_address") or values.get("nas_ipv6_address") or ""
    out = usage_pb2.AccountingRecord(**values, source_address=source, arrival_time=arrival)
    getattr(out, "class").extend(classes)  # `class` is a Python keyword
    return out


def parse_detail(data: bytes, zone: dt.tzinfo = dt.UTC) -> DetailFile:
    """Reads every complete record of a detail file's bytes (see the module notes)."""
    out = DetailFile()
    header: tuple[int, str] | None = None
    body: list[tuple[int, str]] = []
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        offset += len(raw)
        line = raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
        if line.strip():
            if line[0] in " \t":
                if header is not None:
                    body.append((number, line))
                    continue
                out.rejected.append(Rejected(number, "attribute line outside a record"))
                out.consumed = offset
                continue
            if header is not None:
                # A header before the blank line: the record it interrupts was cut short.
                reason = f"no closing blank line before the header at line {number}"
                out.rejected.append(Rejected(header[0], reason))
                out.consumed = offset - len(raw)
            header, body = (number, line.strip()), []
            continue
        if header is not None:
            try:
                record = _record(header[1], body, zone)
            except DetailValueError as error:
                out.rejected.append(Rejected(header[0], str(error)))
            else:
                out.records.append(record)
                out.lines.append(header[0])
        header, body = None, []
        out.consumed = offset
    out.incomplete = header is not None
    return out
