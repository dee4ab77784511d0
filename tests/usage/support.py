"""Builders for accounting records in both wire forms, and a streaming client for tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2 as pb
from isp_rating.v1 import usage_pb2_grpc
from tests.conftest import TenantCtx

T0 = dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC)
SECRET = "s3cret"
SOURCE = "198.51.100.7"
START, STOP, INTERIM, ON, OFF = 1, 2, 3, 7, 8
GIGA = 1 << 32

_ids = itertools.count(1)


def ts(at: dt.datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


@dataclass(frozen=True)
class Rec:
    """One accounting record, described once, sent decoded or as a raw RADIUS packet."""

    status: int
    sid: str = "sess-1"
    t: float = 0.0  # event time, seconds after T0
    nas: str = "nas-1"  # NAS-Identifier ("" = none: the source address is the NAS key)
    user: str = "alice"
    session_time: int | None = None
    inp: int | None = None  # 64-bit input bytes (gigawords derived)
    out: int | None = None
    delay: int = 0
    event: bool = True  # send Event-Timestamp
    skew_s: float = 0.0  # NAS clock error added to Event-Timestamp
    arrival_extra_s: float = 0.0  # arrival = event + delay + this
    cause: int | None = None
    calling: str = ""
    framed: str = ""
    framed6: str = ""  # Framed-IPv6-Prefix, "2001:db8::/64"
    delegated6: str = ""  # Delegated-IPv6-Prefix
    source: str = SOURCE
    gigawords: bool = True  # send Gigawords attributes alongside Octets

    @property
    def event_at(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.t)

    @property
    def arrival_at(self) -> dt.datetime:
        return self.event_at + dt.timedelta(seconds=self.delay + self.arrival_extra_s)

    def but(self, **changes: object) -> Rec:
        return replace(self, **changes)  # type: ignore[arg-type]


def _split(total: int | None) -> tuple[int | None, int | None]:
    if total is None:
        return None, None
    return total % GIGA, total // GIGA


def decoded(rec: Rec) -> pb.AccountingEntry:
    record = pb.AccountingRecord(
        status_type=rec.status,  # type: ignore[arg-type]
        acct_session_id=rec.sid,
        user_name=rec.user,
        source_address=rec.source,
        arrival_time=ts(rec.arrival_at),
    )
    if rec.nas:
        record.nas_identifier = rec.nas
    in_oct, in_gw = _split(rec.inp)
    out_oct, out_gw = _split(rec.out)
    if in_oct is not None:
        record.input_octets = in_oct
        if rec.gigawords:
            record.input_gigawords = in_gw or 0
    if out_oct is not None:
        record.output_octets = out_oct
        if rec.gigawords:
            record.output_gigawords = out_gw or 0
    if rec.session_time is not None:
        record.session_time_s = rec.session_time
    if rec.event:
        record.event_timestamp.CopyFrom(
            ts(rec.event_at.replace(microsecond=0) + dt.timedelta(seconds=rec.skew_s))
        )
    record.delay_time_s = rec.delay
    if rec.cause is not None:
        record.terminate_cause = rec.cause
    if rec.calling:
        record.calling_station_id = rec.calling
    if rec.framed:
        record.framed_ip_address = rec.framed
    if rec.framed6:
        record.framed_ipv6_prefix = rec.framed6
    if rec.delegated6:
        record.delegated_ipv6_prefix = rec.delegated6
    return pb.AccountingEntry(decoded=record)


def attr(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def attr_int(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value))


def radius_packet(attributes: bytes, secret: str = SECRET, identifier: int | None = None) -> bytes:
    """An Accounting-Request with a correct Request Authenticator (RFC 2866)."""
    ident = next(_ids) % 256 if identifier is None else identifier
    length = 20 + len(attributes)
    head = bytes([4, ident]) + struct.pack(">H", length)
    auth = hashlib.md5(head + bytes(16) + attributes + secret.encode()).digest()  # noqa: S324
    return head + auth + attributes


def prefix_attr(kind: int, prefix: str, octets: int | None = None) -> bytes:
    """Framed-IPv6-Prefix (97) or Delegated-IPv6-Prefix (123), RFC 3162/4818: a reserved
    octet, the prefix length, then the prefix's first `octets` octets (by default those
    the length needs; up to 16, with whatever bits the address has past the length)."""
    network = ipaddress.IPv6Interface(prefix)
    length = network.network.prefixlen
    count = (length + 7) // 8 if octets is None else octets
    return attr(kind, bytes([0, length]) + network.ip.packed[:count])


def radius_attributes(rec: Rec) -> bytes:
    parts = [attr_int(40, rec.status), attr(44, rec.sid.encode())]
    if rec.user:
        parts.append(attr(1, rec.user.encode()))
    if rec.nas:
        parts.append(attr(32, rec.nas.encode()))
    in_oct, in_gw = _split(rec.inp)
    out_oct, out_gw = _split(rec.out)
    if in_oct is not None:
        parts.append(attr_int(42, in_oct))
        if rec.gigawords:
            parts.append(attr_int(52, in_gw or 0))
    if out_oct is not None:
        parts.append(attr_int(43, out_oct))
        if rec.gigawords:
            parts.append(attr_int(53, out_gw or 0))
    if rec.session_time is not None:
        parts.append(attr_int(46, rec.session_time))
    if rec.event:
        parts.append(attr_int(55, int(rec.event_at.timestamp() + rec.skew_s)))
    parts.append(attr_int(41, rec.delay))
    if rec.cause is not None:
        parts.append(attr_int(49, rec.cause))
    if rec.calling:
        parts.append(attr(31, rec.calling.encode()))
    if rec.framed:
        parts.append(attr(8, ipaddress.IPv4Address(rec.framed).packed))
    if rec.framed6:
        parts.append(prefix_attr(97, rec.framed6))
    if rec.delegated6:
        parts.append(prefix_attr(123, rec.delegated6))
    return b"".join(parts)


def raw(rec: Rec, secret: str = SECRET) -> pb.AccountingEntry:
    return raw_packet(radius_packet(radius_attributes(rec), secret), rec.source, rec.arrival_at)


def raw_packet(packet: bytes, source: str, arrival: dt.datetime) -> pb.AccountingEntry:
    return pb.AccountingEntry(
        raw=pb.RawAccountingPacket(packet=packet, source_address=source, arrival_time=ts(arrival))
    )


FORMS = {"decoded": decoded, "raw": raw}


def entries(form: str, recs: Sequence[Rec]) -> list[pb.AccountingEntry]:
    return [FORMS[form](rec) for rec in recs]


def batch(
    items: Sequence[pb.AccountingEntry], batch_id: str | None = None
) -> pb.StreamAccountingRequest:
    return pb.StreamAccountingRequest(batch_id=batch_id or uuid.uuid4().hex, entries=list(items))


class Usage:
    """The UsageService of the test server, as one tenant."""

    def __init__(self, channel: grpc.aio.Channel, tenant: TenantCtx) -> None:
        self.stub = usage_pb2_grpc.UsageServiceStub(channel)
        self.tenant = tenant
        self.metadata = tenant.metadata

    async def register_nas(
        self, source: str = SOURCE, secret: str = SECRET, **policy: object
    ) -> pb.NasClient:
        return await self.stub.UpsertNasClient(
            pb.UpsertNasClientRequest(source_address=source, secret=secret, **policy),  # type: ignore[arg-type]
            metadata=self.metadata,
        )

    async def stream(
        self, *batches: pb.StreamAccountingRequest
    ) -> list[pb.StreamAccountingResponse]:
        """Sends the batches on one stream; returns the acks."""

        async def requests() -> AsyncIterator[pb.StreamAccountingRequest]:
            for item in batches:
                yield item

        call = self.stub.StreamAccounting(requests(), metadata=self.metadata)
        return [ack async for ack in call]

    async def send(self, form: str, *recs: Rec) -> pb.StreamAccountingResponse:
        """One batch of records in the given form; returns its ack."""
        (ack,) = await self.stream(batch(entries(form, recs)))
        return ack

    async def send_raw(self, *items: pb.AccountingEntry) -> pb.StreamAccountingResponse:
        """One batch of prepared entries; returns its ack."""
        (ack,) = await self.stream(batch(items))
        return ack

    async def send_each(self, form: str, *recs: Rec) -> list[pb.StreamAccountingResponse]:
        """One batch per record, in order, on one stream."""
        return await self.stream(*(batch(entries(form, [rec])) for rec in recs))

    async def sessions(self, **filters: object) -> list[pb.Session]:
        out: list[pb.Session] = []
        request = pb.ListSessionsRequest(page_size=1000, **filters)  # type: ignore[arg-type]
        while True:
            page = await self.stub.ListSessions(request, metadata=self.metadata)
            out.extend(page.sessions)
            if not page.next_page_token:
                return out
            request.page_token = page.next_page_token

    async def unattributed_bytes(self) -> tuple[int, int]:
        """Input and output bytes of every unattributed identity (from the hourly buckets)."""
        page = await self.stub.ListUnattributedUsage(
            pb.ListUnattributedUsageRequest(page_size=1000), metadata=self.metadata
        )
        return (
            sum(u.input_bytes for u in page.usage),
            sum(u.output_bytes for u in page.usage),
        )

    async def session(self, sid: str = "sess-1", nas: str = "nas-1") -> pb.Session:
        found = [s for s in await self.sessions() if s.acct_session_id == sid and s.nas_key == nas]
        assert len(found) == 1, found
        return found[0]

    async def nas_list(self, flagged_only: bool = False, page_size: int = 1000) -> list[pb.Nas]:
        out: list[pb.Nas] = []
        request = pb.ListNasRequest(page_size=page_size, flagged_only=flagged_only)
        while True:
            page = await self.stub.ListNas(request, metadata=self.metadata)
            out.extend(page.nas)
            if not page.next_page_token:
                return out
            request.page_token = page.next_page_token

    async def sweep(self, as_of: dt.datetime) -> int:
        reply = await self.stub.SweepStaleSessions(
            pb.SweepStaleSessionsRequest(as_of=ts(as_of)), metadata=self.metadata
        )
        return reply.closed


def counts(ack: pb.StreamAccountingResponse) -> tuple[int, int, int, int]:
    return ack.accepted, ack.duplicate, ack.late, ack.quarantined


def utc(stamp: Timestamp) -> dt.datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ipv4_udp(
    source: str, payload: bytes, destination: str = "192.0.2.254", source_port: int = 40000
) -> bytes:
    """An IPv4 datagram to UDP port 1813 (no checksums: the pcap reader ignores them)."""
    udp = struct.pack(">HHHH", source_port, 1813, 8 + len(payload), 0) + payload
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address(destination).packed,
    )
    return header + udp


def pcap(recs: Sequence[Rec], secret: str = SECRET) -> bytes:
    """A classic pcap (raw IP link type) of the records' Accounting-Requests, captured at
    their arrival times."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    for rec in recs:
        frame = ipv4_udp(rec.source, radius_packet(radius_attributes(rec), secret))
        arrival = rec.arrival_at
        out += struct.pack(
            "<IIII", int(arrival.timestamp()), arrival.microsecond, len(frame), len(frame)
        )
        out += frame
    return out


def ipv4_fragments(ip: bytes, size: int, ident: int) -> list[bytes]:
    """An IPv4 datagram cut into fragments of `size` data octets (a multiple of 8), each with
    the identification `ident`, in order."""
    ihl = (ip[0] & 0x0F) * 4
    header, data = ip[:ihl], ip[ihl:]
    out = []
    for offset in range(0, len(data), size):
        part = data[offset : offset + size]
        flags = 0x2000 if offset + size < len(data) else 0  # More Fragments
        head = bytearray(header)
        head[2:8] = struct.pack(">HHH", ihl + len(part), ident, flags | offset // 8)
        out.append(bytes(head) + part)
    return out


def _pcapng_block(kind: int, body: bytes, order: str) -> bytes:
    body += bytes(-len(body) % 4)
    length = struct.pack(order + "I", len(body) + 12)
    return struct.pack(order + "I", kind) + length + body + length


def pcapng(frames: Sequence[tuple[int, bytes]], link_type: int = 101, order: str = "<") -> bytes:
    """A pcapng capture (what Wireshark and dumpcap write) of (capture time in µs, frame): one
    section in the byte order `order` ("<" or ">"), one interface with nanosecond times,
    Enhanced Packet Blocks."""
    out = _pcapng_block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)
    tsresol = struct.pack(order + "HHB3x", 9, 1, 9) + bytes(4)  # if_tsresol 10^-9, end
    out += _pcapng_block(1, struct.pack(order + "HHI", link_type, 0, 0) + tsresol, order)
    for us, frame in frames:
        ns = us * 1000
        head = struct.pack(order + "5I", 0, ns >> 32, ns & 0xFFFFFFFF, len(frame), len(frame))
        out += _pcapng_block(6, head + frame, order)
    return out
