"""A RADIUS accounting collector: Accounting-Requests from UDP to StreamAccounting, and each
Accounting-Response back to its NAS once the server has made the record durable.

Datagrams are forwarded as raw entries exactly as received (with their source address and
arrival time): the server verifies, decodes and quarantines, and its ack carries the
Accounting-Response of every entry it recorded. Nothing is answered before that ack, so a
NAS whose record was not committed keeps retransmitting. Unacknowledged batches are resent
after the stream breaks; the server counts each record once (a resend is a duplicate and is
answered again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2, usage_pb2_grpc

log = logging.getLogger("server.usage.collector")

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
RECEIVE_BUFFER = 8 << 20
# A batch also ends at this many packet bytes (a datagram may be up to 64 KiB): far below
# the server's 64 MiB message limit, so no batch is ever refused for its size.
MAX_BATCH_BYTES = 8 << 20
COUNTS = ("accepted", "duplicate", "late", "quarantined")
EOF = cast(Any, grpc.aio).EOF  # what read() returns once the server ends the stream


class StreamEndedError(Exception):
    """The server closed the stream while batches were unacknowledged."""


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses) to (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # ":PORT": every address


def _grow_receive_buffer(sock: socket.socket | None) -> None:
    """Asks for RECEIVE_BUFFER bytes of socket buffer (the kernel caps SO_RCVBUF at
    net.core.rmem_max; SO_RCVBUFFORCE passes it with CAP_NET_ADMIN): a NAS rebooting sends
    its whole backlog at once, and a datagram that finds the buffer full is dropped (the NAS
    retransmits it, later)."""
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return


@dataclass
class _Batch:
    request: usage_pb2.StreamAccountingRequest
    addresses: list[Address]


@dataclass
class CollectorStats:
    received: int = 0
    batches: int = 0
    accepted: int = 0
    duplicate: int = 0
    late: int = 0
    quarantined: int = 0
    answered: int = 0
    # Datagrams refused while max_pending were waiting: not answered, so the NAS resends.
    refused: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, collector: UdpCollector) -> None:
        self.collector = collector

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.collector.received(data, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("udp error: %s", exc)


@dataclass
class UdpCollector:
    """Forwards UDP Accounting-Requests in batches of up to `batch_size` requests and
    MAX_BATCH_BYTES (or what arrived within `flush_s` of the first waiting one), with at
    most `max_in_flight` batches awaiting their ack; datagrams beyond `max_pending` waiting
    are refused (unanswered)."""

    stub: usage_pb2_grpc.UsageServiceAsyncStub
    metadata: Sequence[tuple[str, str]]
    batch_size: int = 1000
    flush_s: float = 0.02
    max_in_flight: int = 4
    max_pending: int = 100_000
    stats: CollectorStats = field(default_factory=CollectorStats)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
        self._pending: list[tuple[usage_pb2.AccountingEntry, Address]] = []
        self._pending_bytes = 0
        self._first_at = 0.0
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._in_flight: dict[str, _Batch] = {}
        self._ids = itertools.count()
        self._prefix = f"udp-{uuid.uuid4().hex[:12]}"
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._healthy = False  # an ack arrived since the last failure
        self._closing = False  # close() was called: datagrams are refused, partial batches go

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Binds the UDP socket and starts forwarding; returns the bound address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port)
        )
        _grow_receive_buffer(transport.get_extra_info("socket"))
        self._transport = transport
        self._task = asyncio.create_task(self._run(), name="udp-collector")
        bound = transport.get_extra_info("sockname")
        return str(bound[0]), int(bound[1])

    async def close(self, timeout_s: float = 5.0) -> bool:
        """Stops receiving, sends what is waiting and waits up to `timeout_s` for the acks;
        returns whether everything received was acknowledged."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), deadline - time.monotonic())
        done = not self._pending and not self._in_flight
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()
        return done

    # ------------------------------------------------------------ receiving

    def received(self, data: bytes, addr: Address) -> None:
        if self._closing or len(self._pending) >= self.max_pending:
            self.stats.refused += 1
            return
        now_ns = time.time_ns()
        entry = usage_pb2.AccountingEntry(
            raw=usage_pb2.RawAccountingPacket(
                packet=data,
                source_address=str(addr[0]),
                arrival_time=Timestamp(seconds=now_ns // 10**9, nanos=now_ns % 10**9),
            )
        )
        if not self._pending:
            self._first_at = time.monotonic()
            self._wake.set()
        self._pending.append((entry, addr))
        self._pending_bytes += len(data)
        self.stats.received += 1
        if self._full():
            self._wake.set()

    def _full(self) -> bool:
        return len(self._pending) >= self.batch_size or self._pending_bytes >= MAX_BATCH_BYTES

    async def _next_batch(self) -> _Batch:
        """Waits for a full batch, or for `flush_s` after the first waiting datagram."""
        while True:
            self._wake.clear()
            if self._full():
                break
            if self._pending:
                wait = self._first_at + self.flush_s - time.monotonic()
                if wait <= 0 or self._closing:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            else:
                await self._wake.wait()
        count, size = 0, 0
        for entry, _ in self._pending[: self.batch_size]:
            if count and size + len(entry.raw.packet) > MAX_BATCH_BYTES:
                break
            count, size = count + 1, size + len(entry.raw.packet)
        taken = self._pending[:count]
        del self._pending[:count]
        self._pending_bytes -= size
        self._first_at = time.monotonic()
        request = usage_pb2.StreamAccountingRequest(
            batch_id=f"{self._prefix}-{next(self._ids)}", entries=[e for e, _ in taken]
        )
        return _Batch(request, [a for _, a in taken])

    # ------------------------------------------------------------ streaming

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._stream()
            except Exception as error:  # any broken stream is retried
                self.stats.reconnects += 1
                if self._healthy:
                    failures, self._healthy = 0, False
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                reason = (
                    f"{error.code().name}: {error.details()}"
                    if isinstance(error, grpc.aio.AioRpcError)
                    else repr(error)
                )
                log.warning(
                    "stream to the server failed (%s); %d batches unacknowledged, retrying"
                    " in %.1f s",
                    reason,
                    len(self._in_flight),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _stream(self) -> None:
        # A call without a request iterator: written and read as two tasks.
        call = cast(Any, self.stub).StreamAccounting(metadata=tuple(self.metadata))
        reader = asyncio.create_task(self._read(call))
        writer = asyncio.create_task(self._write(call))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the stream's error
            raise StreamEndedError("the server ended the stream")
        finally:
            for task in (reader, writer):
                task.cancel()
            call.cancel()
            # wait() leaves the tasks' own errors in them and lets a cancellation of this
            # task (close()) through.
            await asyncio.wait({reader, writer})
            for task in (reader, writer):
                if not task.cancelled():
                    task.exception()  # retrieved: the first one was raised above

    async def _write(self, call: Any) -> None:
        # Batches a broken stream left unacknowledged go first, in their order.
        for batch in list(self._in_flight.values()):
            await call.write(batch.request)
        while True:
            while len(self._in_flight) >= self.max_in_flight:
                self._acked.clear()
                await self._acked.wait()
            batch = await self._next_batch()
            self._in_flight[batch.request.batch_id] = batch
            self.stats.batches += 1
            await call.write(batch.request)

    async def _read(self, call: Any) -> None:
        while True:
            ack = await call.read()
            if ack is EOF:
                return
            self._answer(ack)

    def _answer(self, ack: usage_pb2.StreamAccountingResponse) -> None:
        batch = self._in_flight.pop(ack.batch_id, None)
        if batch is None:
            return  # a resent batch acknowledged twice
        self._healthy = True
        for name in COUNTS:
            setattr(self.stats, name, getattr(self.stats, name) + getattr(ack, name))
        transport = self._transport
        for response in ack.responses:
            if transport is not None and 0 <= response.index < len(batch.addresses):
                transport.sendto(response.packet, batch.addresses[response.index])
                self.stats.answered += 1
        for q in ack.quarantined_records:
            if 0 <= q.index < len(batch.addresses):
                log.info("quarantined from %s: %s", batch.addresses[q.index][0], q.reason)
        self._acked.set()
