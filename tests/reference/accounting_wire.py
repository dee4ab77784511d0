"""StreamAccountingRequest bytes for tests and the pure-Python reference, both ways, and
RADIUS packets (no generated stubs needed).

`decode_batch` is the reference's own reader of the wire bytes the engine reads: plain
Python, independent of the Rust decoder, so the reference starts from the same input.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

US = 1_000_000


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _uint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes(number: int, value: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _timestamp(number: int, us: int) -> bytes:
    seconds, micros = divmod(us, US)
    body = b""
    if seconds:
        body += _uint(1, seconds)
    if micros:
        body += _uint(2, micros * 1000)
    return _bytes(number, body)


@dataclass(frozen=True)
class Rec:
    """One decoded accounting record (the AccountingRecord message)."""

    status: int
    sid: str = ""
    nas_identifier: str | None = None
    nas_ip: str | None = None
    source: str = "198.51.100.1"
    user: str = ""
    input_octets: int | None = None
    input_gigawords: int | None = None
    output_octets: int | None = None
    output_gigawords: int | None = None
    session_time: int | None = None
    event_ts_us: int | None = None
    delay: int | None = None
    terminate_cause: int | None = None
    arrival_us: int | None = None
    calling: str = ""
    framed_ip: str = ""
    classes: tuple[bytes, ...] = field(default=())

    def encode(self) -> bytes:
        """AccountingRecord wire bytes."""
        out = b""
        if self.status:
            out += _uint(1, self.status)
        if self.sid:
            out += _bytes(2, self.sid.encode())
        if self.user:
            out += _bytes(3, self.user.encode())
        if self.nas_ip is not None:
            out += _bytes(4, self.nas_ip.encode())
        if self.nas_identifier is not None:
            out += _bytes(6, self.nas_identifier.encode())
        if self.source:
            out += _bytes(7, self.source.encode())
        for number, value in (
            (10, self.input_octets),
            (11, self.input_gigawords),
            (12, self.output_octets),
            (13, self.output_gigawords),
            (14, self.session_time),
        ):
            if value is not None:
                out += _uint(number, value)
        if self.event_ts_us is not None:
            out += _timestamp(15, self.event_ts_us)
        if self.delay is not None:
            out += _uint(16, self.delay)
        if self.terminate_cause is not None:
            out += _uint(17, self.terminate_cause)
        if self.framed_ip:
            out += _bytes(18, self.framed_ip.encode())
        if self.calling:
            out += _bytes(21, self.calling.encode())
        for octets in self.classes:
            out += _bytes(22, octets)
        if self.arrival_us is not None:
            out += _timestamp(23, self.arrival_us)
        return out


def decoded_entry(rec: Rec) -> bytes:
    """AccountingEntry{decoded}."""
    return _bytes(1, rec.encode())


def raw_entry(packet: bytes, source: str, arrival_us: int | None = None) -> bytes:
    """AccountingEntry{raw}."""
    body = _bytes(1, packet) + _bytes(2, source.encode())
    if arrival_us is not None:
        body += _timestamp(3, arrival_us)
    return _bytes(2, body)


def batch(entries: list[bytes], batch_id: str = "b") -> bytes:
    """StreamAccountingRequest bytes."""
    return _bytes(1, batch_id.encode()) + b"".join(_bytes(2, e) for e in entries)


def radius_attr(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def radius_int(kind: int, value: int) -> bytes:
    return radius_attr(kind, struct.pack("!I", value))


def accounting_request(attributes: bytes, secret: bytes, identifier: int = 1) -> bytes:
    """An Accounting-Request with a correct Request Authenticator."""
    length = 20 + len(attributes)
    header = struct.pack("!BBH", 4, identifier, length)
    auth = hashlib.md5(header + bytes(16) + attributes + secret).digest()  # noqa: S324 - RFC 2866
    return header + auth + attributes


class WireError(ValueError):
    """Malformed protobuf bytes; the message names the field."""


_MASK64 = (1 << 64) - 1
_UINT32_MAX = (1 << 32) - 1

# AccountingRecord fields the reference models: number -> (Rec attribute, kind). The
# others (NAS-IPv6-Address, ports, IPv6 prefixes) are read and skipped.
_ENUM, _UINT32, _STRING, _BYTES, _TIMESTAMP = range(5)
_RECORD_FIELDS: dict[int, tuple[str, int]] = {
    1: ("status", _ENUM),
    2: ("sid", _STRING),
    3: ("user", _STRING),
    4: ("nas_ip", _STRING),
    5: ("nas_ipv6_address", _STRING),
    6: ("nas_identifier", _STRING),
    7: ("source", _STRING),
    8: ("nas_port", _UINT32),
    9: ("nas_port_id", _STRING),
    10: ("input_octets", _UINT32),
    11: ("input_gigawords", _UINT32),
    12: ("output_octets", _UINT32),
    13: ("output_gigawords", _UINT32),
    14: ("session_time", _UINT32),
    15: ("event_ts_us", _TIMESTAMP),
    16: ("delay", _UINT32),
    17: ("terminate_cause", _UINT32),
    18: ("framed_ip", _STRING),
    19: ("framed_ipv6_prefix", _STRING),
    20: ("delegated_ipv6_prefix", _STRING),
    21: ("calling", _STRING),
    22: ("classes", _BYTES),
    23: ("arrival_us", _TIMESTAMP),
}
_NOT_MODELLED = frozenset({"nas_ipv6_address", "nas_port", "nas_port_id",
                           "framed_ipv6_prefix", "delegated_ipv6_prefix"})  # fmt: skip


def _varint_at(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    """The varint at buf[pos:end] and the position after it."""
    value = shift = 0
    while pos < end and shift < 70:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _MASK64, pos
        shift += 7
    raise WireError(f"{where}: truncated or overlong varint")


def _field_at(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int, int | bytes, int]:
    """(field number, wire type, value, next position) of the field at buf[pos:end]."""
    tag = buf[pos]  # one-byte tags (fields 1-15) and values first: the common case
    if tag < 0x80:
        pos += 1
    else:
        tag, pos = _varint_at(buf, pos, end, where)
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise WireError(f"{where}: field number 0")
    if pos < end and buf[pos] < 0x80 and wire in (0, 2):
        value: int = buf[pos]
        pos += 1
    elif wire in (0, 2):
        value, pos = _varint_at(buf, pos, end, where)
    else:
        width = {1: 8, 5: 4}.get(wire)
        if width is None:
            raise WireError(f"{where}: unsupported tag {tag}")
        if width > end - pos:
            raise WireError(f"{where} field {number}: truncated")
        return number, wire, buf[pos : pos + width], pos + width
    if wire == 0:
        return number, wire, value, pos
    if value > end - pos:
        raise WireError(f"{where} field {number}: length {value} runs past the message")
    return number, wire, buf[pos : pos + value], pos + value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _timestamp_us(body: bytes, where: str) -> int:
    """A google.protobuf.Timestamp as microseconds (nanoseconds truncated)."""
    seconds = nanos = 0
    pos, end = 0, len(body)
    while pos < end:
        number, wire, value, pos = _field_at(body, pos, end, where)
        if number in (1, 2):
            if not isinstance(value, int) or wire != 0:
                raise WireError(f"{where}: wrong wire type")
            if number == 1:
                seconds = _signed64(value)
            else:  # int32: the low 32 bits, signed
                nanos = value & _UINT32_MAX
                nanos -= (nanos >> 31) << 32
    if not 0 <= nanos < 1_000_000_000:
        raise WireError(f"{where}: nanos out of range")
    return seconds * US + nanos // 1000


def decode_record(buf: bytes, pos: int = 0, end: int | None = None) -> Rec:
    """The AccountingRecord at buf[pos:end] (the last occurrence of a field wins; Class
    values accumulate in order)."""
    end = len(buf) if end is None else end
    fields: dict[str, object] = {"status": 0, "source": ""}  # absent is 0 or empty
    classes: list[bytes] = []
    while pos < end:
        # The field loop reads varints in line: one call per field would double its time.
        at = pos
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint_at(buf, at, end, "AccountingRecord")
        wire = tag & 7
        if tag < 8:
            raise WireError("AccountingRecord: field number 0")
        if wire == 0 or wire == 2:
            value = shift = 0
            while True:
                if pos >= end or shift >= 70:
                    raise WireError(f"AccountingRecord field {tag >> 3}: truncated varint")
                b = buf[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
        else:
            number, wire, _, pos = _field_at(buf, at, end, "AccountingRecord")
            if number in _RECORD_FIELDS:
                raise WireError(f"AccountingRecord.{_RECORD_FIELDS[number][0]}: wrong wire type")
            continue
        spec = _RECORD_FIELDS.get(tag >> 3)
        if wire == 2:
            if value > end - pos:
                raise WireError(f"AccountingRecord field {tag >> 3}: runs past the message")
            body = buf[pos : pos + value]
            pos += value
            if spec is None:
                continue
            name, kind = spec
            if kind == _STRING:
                try:
                    fields[name] = body.decode()
                except UnicodeDecodeError as e:
                    raise WireError(f"AccountingRecord.{name}: not UTF-8") from e
            elif kind == _TIMESTAMP:
                fields[name] = _timestamp_us(body, f"AccountingRecord.{name}")
            elif kind == _BYTES:
                classes.append(body)
            else:
                raise WireError(f"AccountingRecord.{name}: wrong wire type 2")
            continue
        if spec is None:
            continue
        name, kind = spec
        value &= _MASK64
        if kind == _UINT32 and value <= _UINT32_MAX:
            fields[name] = value
        elif kind == _ENUM:
            fields[name] = _signed64(value)
        elif kind == _UINT32:
            raise WireError(f"AccountingRecord.{name}: {value} does not fit in 32 bits")
        else:
            raise WireError(f"AccountingRecord.{name}: wrong wire type 0")
    if classes:
        fields["classes"] = tuple(classes)
    for name in _NOT_MODELLED & fields.keys():
        del fields[name]
    return Rec(**fields)  # type: ignore[arg-type]


def decode_batch(data: bytes) -> list[Rec]:
    """The decoded records of a StreamAccountingRequest, in order. A raw packet entry is an
    error: the reference models decoded records only."""
    recs: list[Rec] = []
    pos, end = 0, len(data)
    while pos < end:
        number, wire, value, pos = _field_at(data, pos, end, "StreamAccountingRequest")
        if number != 2:
            continue
        where = f"entries[{len(recs)}]"
        if wire != 2:
            raise WireError(f"{where}: wrong wire type {wire}")
        assert isinstance(value, bytes)
        record: Rec | None = None
        at, size = 0, len(value)
        while at < size:
            member, kind, body, at = _field_at(value, at, size, where)
            if member == 2:
                raise WireError(f"{where}: a raw packet; the reference reads decoded records")
            if member == 1:
                if kind != 2:
                    raise WireError(f"{where}.decoded: wrong wire type {kind}")
                assert isinstance(body, bytes)
                record = decode_record(body)
        if record is None:
            raise WireError(f"{where}: no record")
        recs.append(record)
    return recs


def rec_from_message(m: Any) -> Rec:
    """The Rec of an `isp_rating.v1.AccountingRecord` message object (the generated
    classes' C parser read it): what a Python service holding the stubs would build."""

    def opt(name: str) -> Any:
        return getattr(m, name) if m.HasField(name) else None

    def time_us(name: str) -> int | None:
        if not m.HasField(name):
            return None
        t = getattr(m, name)
        return int(t.seconds) * US + int(t.nanos) // 1000

    return Rec(
        status=m.status_type, sid=m.acct_session_id, user=m.user_name,
        nas_ip=opt("nas_ip_address"), nas_identifier=opt("nas_identifier"),
        source=m.source_address, input_octets=opt("input_octets"),
        input_gigawords=opt("input_gigawords"), output_octets=opt("output_octets"),
        output_gigawords=opt("output_gigawords"), session_time=opt("session_time_s"),
        event_ts_us=time_us("event_timestamp"), delay=opt("delay_time_s"),
        terminate_cause=opt("terminate_cause"), arrival_us=time_us("arrival_time"),
        calling=m.calling_station_id, framed_ip=m.framed_ip_address,
        classes=tuple(getattr(m, "class")),
    )  # fmt: skip
