"""UsageService over gRPC: proto ⇄ domain only; StreamAccounting hands raw bytes to the engine.

StreamAccounting is registered without a request deserializer: each StreamAccountingRequest
arrives as the exact bytes the client sent and goes to the Rust engine untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from isp_rating.v1 import usage_pb2
from server.auth import principal
from server.db.database import Database
from server.errors import InvalidArgumentError
from server.usage import quarantine, queries, service
from server.usage.models import (
    CUSTOM_TYPE_MAX,
    IDEMPOTENCY_KEY_MAX,
    QUANTITY_PRECISION,
    QUANTITY_SCALE,
    UNIT_MAX,
    QuarantinedEntry,
    UsageSession,
)
from server.usage.repository import POLICY_COLUMNS
from server.validation import (
    at_most_i32,
    format_decimal,
    limit_length,
    nas_key_text,
    optional_id,
    page_size,
    parse_decimal,
    parse_enum,
    parse_ip,
    radius_text,
    require,
    required_timestamp,
    timestamp_or_none,
    to_timestamp,
)

log = logging.getLogger("server.usage")

SERVICE_NAME = "isp_rating.v1.UsageService"
Context = grpc.aio.ServicerContext[Any, Any]

# Seconds between in-process stale-session sweeps (0 disables them).
SWEEP_INTERVAL_ENV = "RATING_SWEEP_INTERVAL_S"
DEFAULT_SWEEP_INTERVAL_S = 300.0
WRITE_SHARDS_ENV = "RATING_WRITE_SHARDS"
MAX_WRITE_SHARDS = 16


def write_shards_setting() -> int:
    """RATING_WRITE_SHARDS: transactions that write one large PostgreSQL batch at once."""
    raw = os.environ.get(WRITE_SHARDS_ENV, "")
    if not raw:
        return service.DEFAULT_WRITE_SHARDS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WRITE_SHARDS:
        raise ValueError(
            f"{WRITE_SHARDS_ENV} must be an integer from 1 to {MAX_WRITE_SHARDS}, got {raw!r}"
        )
    return value


NAS_CLIENT_MASK_FIELDS = frozenset(("secret", "nas_key", *POLICY_COLUMNS))


def _nas_client_mask(request: usage_pb2.UpsertNasClientRequest) -> frozenset[str] | None:
    """The fields an UpsertNasClient writes; None (an empty mask) for all of them."""
    paths = frozenset(request.update_mask.paths)
    unknown = sorted(paths - NAS_CLIENT_MASK_FIELDS)
    if unknown:
        raise InvalidArgumentError("update_mask", f"fields that cannot be written: {unknown}")
    return paths or None


def session_message(row: UsageSession) -> usage_pb2.Session:
    import rating_core as core

    message = usage_pb2.Session(
        id=queries.session_id(row.nas_key, row.acct_session_id, row.generation),
        nas_key=row.nas_key,
        acct_session_id=row.acct_session_id,
        generation=row.generation,
        user_name=row.user_name,
        subscription_id=str(row.subscription_id) if row.subscription_id else "",
        input_bytes=queries.unsigned(row.input_bytes),
        output_bytes=queries.unsigned(row.output_bytes),
        session_time_s=row.session_time_s,
        start_at=to_timestamp(row.start_at),
        last_update_at=to_timestamp(row.last_update_at),
        state=usage_pb2.SESSION_STATE_OPEN if row.open else usage_pb2.SESSION_STATE_CLOSED,
        flags=core.flag_names(row.flags),
        terminate_cause=row.terminate_cause,
        framed_ipv6_prefix=row.framed_ipv6_prefix,
        delegated_ipv6_prefix=row.delegated_ipv6_prefix,
        calling_station_id=row.calling_station_id,
        framed_ip_address=row.framed_ip_address,
    )
    if row.stop_at is not None:
        message.stop_at.FromDatetime(row.stop_at)
    return message


def entry_source(entry: bytes) -> str:
    """The source address a stored AccountingEntry names; empty when it does not parse."""
    try:
        parsed = usage_pb2.AccountingEntry.FromString(entry)
    except DecodeError:
        return ""
    form = parsed.WhichOneof("record")
    return "" if form is None else str(getattr(parsed, form).source_address)


def quarantined_message(row: QuarantinedEntry) -> usage_pb2.QuarantinedEntry:
    return usage_pb2.QuarantinedEntry(
        received_at=to_timestamp(row.received_at),
        batch_id=row.batch_id,
        entry_index=row.entry_index,
        reason=row.reason,
        entry=row.entry_bytes,
        source_address=entry_source(row.entry_bytes),
    )


class UsageServicer:
    """The RPC handlers; every one runs as the interceptor's authenticated principal."""

    def __init__(self, db: Database, usage: service.UsageService, sweeper: Sweeper) -> None:
        self.db = db
        self.usage = usage
        self.sweeper = sweeper

    async def stream_accounting(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[usage_pb2.StreamAccountingResponse]:
        tenant_id = principal().tenant_id
        self.sweeper.ensure_started()
        async for raw in requests:
            ack = await self.usage.ingest(tenant_id, raw)
            yield usage_pb2.StreamAccountingResponse(
                batch_id=ack.batch_id,
                accepted=ack.accepted,
                duplicate=ack.duplicate,
                late=ack.late,
                quarantined=ack.quarantined,
                quarantined_records=[
                    usage_pb2.QuarantinedRecord(index=index, reason=reason)
                    for index, reason in ack.quarantine
                ],
                responses=[
                    usage_pb2.AccountingResponsePacket(index=index, packet=packet)
                    for index, packet in ack.responses
                ],
            )

    async def record_usage(
        self, request: usage_pb2.RecordUsageRequest, context: Context
    ) -> usage_pb2.RecordUsageResponse:
        usage_type = parse_enum("usage_type", request.usage_type, usage_pb2.UsageType)
        custom_type = limit_length("custom_type", request.custom_type.strip(), CUSTOM_TYPE_MAX)
        if usage_type == usage_pb2.USAGE_TYPE_CUSTOM and not custom_type:
            raise InvalidArgumentError("custom_type", "is required when usage_type is CUSTOM")
        if usage_type != usage_pb2.USAGE_TYPE_CUSTOM and custom_type:
            raise InvalidArgumentError("custom_type", "is only for usage_type CUSTOM")
        occurred_at = required_timestamp(request, "occurred_at")
        subject = request.WhichOneof("subject")
        if subject is None:
            raise InvalidArgumentError("subject", "subscription_id or radius_user_name is required")
        source = parse_enum("source", request.source, usage_pb2.UsageSource, allow_unspecified=True)
        # Opaque: compared exactly, white space included (docs/decisions.md).
        key = request.idempotency_key
        if not key:
            raise InvalidArgumentError("idempotency_key", "is required")
        if not request.quantity:
            raise InvalidArgumentError("quantity", "is required")
        quantity = parse_decimal(
            "quantity",
            request.quantity,  # as sent: white space around it is refused
            places=QUANTITY_SCALE,
            integer_digits=QUANTITY_PRECISION - QUANTITY_SCALE,
        )
        user_name = (
            require("radius_user_name", request.radius_user_name)
            if subject == "radius_user_name"
            else ""
        )
        metered = service.MeteredUsage(
            idempotency_key=limit_length("idempotency_key", key, IDEMPOTENCY_KEY_MAX),
            usage_type=usage_type,
            custom_type=custom_type,
            quantity=quantity,
            unit=limit_length("unit", require("unit", request.unit), UNIT_MAX),
            occurred_at=occurred_at,
            occurred_ns=request.occurred_at.nanos % 1000,
            subscription_id=optional_id("subscription_id", request.subscription_id),
            radius_user_name=radius_text("radius_user_name", user_name),
            source=source or usage_pb2.USAGE_SOURCE_API,
        )
        if subject == "subscription_id" and metered.subscription_id is None:
            raise InvalidArgumentError("subscription_id", "is required")
        recorded = await service.record_usage(self.db, principal().tenant_id, metered)
        return usage_pb2.RecordUsageResponse(
            usage_id=str(recorded.usage_id),
            subscription_id=str(recorded.subscription_id) if recorded.subscription_id else "",
            replayed=recorded.replayed,
        )

    async def get_session(
        self, request: usage_pb2.GetSessionRequest, context: Context
    ) -> usage_pb2.Session:
        row = await queries.get_session(self.db, principal().tenant_id, require("id", request.id))
        return session_message(row)

    async def list_sessions(
        self, request: usage_pb2.ListSessionsRequest, context: Context
    ) -> usage_pb2.ListSessionsResponse:
        where = queries.SessionFilter(
            subscription_id=optional_id("subscription_id", request.subscription_id),
            user_name=radius_text("user_name", request.user_name),
            nas_key=nas_key_text(radius_text("nas_key", request.nas_key)),
            open_only=request.open_only,
        )
        rows, token = await queries.list_sessions(
            self.db, principal().tenant_id, where, page_size(request.page_size), request.page_token
        )
        return usage_pb2.ListSessionsResponse(
            sessions=[session_message(row) for row in rows], next_page_token=token
        )

    async def upsert_nas_client(
        self, request: usage_pb2.UpsertNasClientRequest, context: Context
    ) -> usage_pb2.NasClient:
        address = parse_ip("source_address", require("source_address", request.source_address))
        fields = _nas_client_mask(request)
        if fields is not None and "secret" in fields and not request.secret:
            raise InvalidArgumentError("secret", "is named in update_mask but empty")
        keep_secret = not request.secret or (fields is not None and "secret" not in fields)
        client = service.NasClientSpec(
            source_address=address,
            secret=None if keep_secret else request.secret.encode(),
            nas_key=nas_key_text(radius_text("nas_key", request.nas_key.strip()) or address),
            swap_direction=request.swap_direction,
            infer_wrap=request.infer_wrap,
            interim_interval_s=at_most_i32("interim_interval_s", request.interim_interval_s),
            stale_multiplier=at_most_i32("stale_multiplier", request.stale_multiplier),
            grace_s=(
                at_most_i32("grace_s", request.grace_s) if request.HasField("grace_s") else None
            ),
            clock_skew_tolerance_s=at_most_i32(
                "clock_skew_tolerance_s", request.clock_skew_tolerance_s
            ),
            fields=fields,
        )
        saved = await self.usage.upsert_nas_client(principal().tenant_id, client)
        swap, wrap, interval, multiplier, grace, skew = saved.policy
        return usage_pb2.NasClient(
            source_address=saved.source_address,
            swap_direction=swap,
            infer_wrap=wrap,
            interim_interval_s=interval,
            stale_multiplier=multiplier,
            grace_s=grace,
            nas_key=saved.nas_key,
            clock_skew_tolerance_s=skew,
        )

    async def list_unattributed_usage(
        self, request: usage_pb2.ListUnattributedUsageRequest, context: Context
    ) -> usage_pb2.ListUnattributedUsageResponse:
        page = await queries.list_unattributed(
            self.db, principal().tenant_id, page_size(request.page_size), request.page_token
        )
        return usage_pb2.ListUnattributedUsageResponse(
            usage=[
                usage_pb2.UnattributedUsage(
                    user_name=item.user_name,
                    calling_station_id=item.calling_station_id,
                    framed_ip_address=item.framed_ip_address,
                    framed_ipv6_prefix=item.framed_ipv6_prefix,
                    delegated_ipv6_prefix=item.delegated_ipv6_prefix,
                    input_bytes=queries.unsigned(item.input_bytes),
                    output_bytes=queries.unsigned(item.output_bytes),
                    session_count=item.session_count,
                    first_seen_at=to_timestamp(item.first_seen_at),
                    last_seen_at=to_timestamp(item.last_seen_at),
                )
                for item in page.usage
            ],
            metered=[
                usage_pb2.UnattributedMeteredUsage(
                    radius_user_name=item.radius_user_name,
                    usage_type=item.usage_type,  # type: ignore[arg-type]
                    custom_type=item.custom_type,
                    unit=item.unit,
                    quantity=format_decimal(item.quantity),
                    event_count=item.event_count,
                    first_seen_at=to_timestamp(item.first_seen_at),
                    last_seen_at=to_timestamp(item.last_seen_at),
                )
                for item in page.metered
            ],
            next_page_token=page.next_page_token,
        )

    async def list_nas(
        self, request: usage_pb2.ListNasRequest, context: Context
    ) -> usage_pb2.ListNasResponse:
        items, token = await queries.list_nas(
            self.db,
            principal().tenant_id,
            request.flagged_only,
            page_size(request.page_size),
            request.page_token,
        )
        return usage_pb2.ListNasResponse(
            nas=[
                usage_pb2.Nas(
                    nas_key=item.nas.nas_key,
                    flags=item.flags,
                    clock_skew_anomalies=item.clock_skew_anomalies,
                    last_clock_skew_at=to_timestamp(item.last_clock_skew_at),
                    swap_direction=item.nas.swap_direction,
                    infer_wrap=item.nas.infer_wrap,
                    interim_interval_s=item.nas.interim_interval_s,
                    stale_multiplier=item.nas.stale_multiplier,
                    grace_s=item.nas.grace_s,
                    clock_skew_tolerance_s=item.nas.clock_skew_tolerance_s,
                )
                for item in items
            ],
            next_page_token=token,
        )

    async def sweep_stale_sessions(
        self, request: usage_pb2.SweepStaleSessionsRequest, context: Context
    ) -> usage_pb2.SweepStaleSessionsResponse:
        as_of = required_timestamp(request, "as_of")
        closed = await self.usage.sweep(principal().tenant_id, as_of)
        return usage_pb2.SweepStaleSessionsResponse(closed=closed)

    async def list_quarantined_records(
        self, request: usage_pb2.ListQuarantinedRecordsRequest, context: Context
    ) -> usage_pb2.ListQuarantinedRecordsResponse:
        rows, token = await quarantine.list_quarantined(
            self.db,
            principal().tenant_id,
            timestamp_or_none(request, "received_after"),
            timestamp_or_none(request, "received_before"),
            page_size(request.page_size),
            request.page_token,
        )
        return usage_pb2.ListQuarantinedRecordsResponse(
            entries=[quarantined_message(row) for row in rows], next_page_token=token
        )

    async def purge_quarantine(
        self, request: usage_pb2.PurgeQuarantineRequest, context: Context
    ) -> usage_pb2.PurgeQuarantineResponse:
        before = required_timestamp(request, "before")
        deleted = await quarantine.purge_quarantine(self.db, principal().tenant_id, before)
        return usage_pb2.PurgeQuarantineResponse(deleted=deleted)


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _handlers(servicer: UsageServicer) -> dict[str, Handler]:
    def unary(fn: Any, request: Any, response: Any) -> Handler:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    pb = usage_pb2
    return {
        # No request deserializer: the engine decodes the batch bytes itself.
        "StreamAccounting": grpc.stream_stream_rpc_method_handler(
            servicer.stream_accounting,
            request_deserializer=None,
            response_serializer=pb.StreamAccountingResponse.SerializeToString,
        ),
        "RecordUsage": unary(servicer.record_usage, pb.RecordUsageRequest, pb.RecordUsageResponse),
        "GetSession": unary(servicer.get_session, pb.GetSessionRequest, pb.Session),
        "ListSessions": unary(
            servicer.list_sessions, pb.ListSessionsRequest, pb.ListSessionsResponse
        ),
        "UpsertNasClient": unary(
            servicer.upsert_nas_client, pb.UpsertNasClientRequest, pb.NasClient
        ),
        "ListUnattributedUsage": unary(
            servicer.list_unattributed_usage,
            pb.ListUnattributedUsageRequest,
            pb.ListUnattributedUsageResponse,
        ),
        "ListNas": unary(servicer.list_nas, pb.ListNasRequest, pb.ListNasResponse),
        "SweepStaleSessions": unary(
            servicer.sweep_stale_sessions,
            pb.SweepStaleSessionsRequest,
            pb.SweepStaleSessionsResponse,
        ),
        "ListQuarantinedRecords": unary(
            servicer.list_quarantined_records,
            pb.ListQuarantinedRecordsRequest,
            pb.ListQuarantinedRecordsResponse,
        ),
        "PurgeQuarantine": unary(
            servicer.purge_quarantine, pb.PurgeQuarantineRequest, pb.PurgeQuarantineResponse
        ),
    }


class Sweeper:
    """The in-process stale-session sweep: every tenant with open sessions, as of now, every
    `interval_s`. Replicas may overlap safely (the NAS row locks serialize them and the second
    finds nothing stale), so no advisory lock is needed."""

    def __init__(self, db: Database, usage: service.UsageService, interval_s: float) -> None:
        self.db = db
        self.usage = usage
        self.interval_s = interval_s
        self.task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self.task is None and self.interval_s > 0:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                async with self.db.read() as session:
                    query = select(UsageSession.tenant_id).where(UsageSession.open).distinct()
                    tenants = list((await session.execute(query)).scalars())
                for tenant_id in tenants:
                    await self.usage.sweep(tenant_id, dt.datetime.now(dt.UTC))
            except Exception:
                log.exception("stale-session sweep failed")


async def reattribute_hook(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    identities: list[tuple[int, str]],
) -> None:
    """AccountService calls it inside the transaction that registers RADIUS identities."""
    del identities
    await service.reattribute(tenant_id, session, registered=subscription_id)


def register(server: grpc.aio.Server, db: Database, on_stop: list[Callable[[], object]]) -> None:
    """Adds UsageService to the server, and the in-process sweeper (RATING_SWEEP_INTERVAL_S).
    RATING_WRITE_SHARDS sets how many transactions write one large batch."""
    from server.accounts.servicer import identity_hooks

    if reattribute_hook not in identity_hooks:
        identity_hooks.append(reattribute_hook)
    usage = service.UsageService(db, write_shards=write_shards_setting())
    sweeper = Sweeper(
        db, usage, float(os.environ.get(SWEEP_INTERVAL_ENV, DEFAULT_SWEEP_INTERVAL_S))
    )
    handlers = _handlers(UsageServicer(db, usage, sweeper))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Newer grpcio routes registered methods without the generic lookup.
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:
        add_registered(SERVICE_NAME, handlers)
    with contextlib.suppress(RuntimeError):  # no running loop yet: the first stream starts it
        sweeper.ensure_started()
    on_stop.append(sweeper.stop)
