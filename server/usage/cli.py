"""Usage commands of `rating`: replay a pcap, list sessions, sweep, rebuild projections."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2, usage_pb2_grpc
from server.client import add_client_arguments, auth_metadata, client_channel

DEFAULT_BATCH = 1000


def add_commands(subparsers: Any) -> None:
    """Adds replay, sessions, sweep and rebuild to the `rating` parser."""
    replay = subparsers.add_parser(
        "replay", help="stream the RADIUS accounting requests of a pcap into the server"
    )
    add_client_arguments(replay)
    replay.add_argument("pcap", type=Path, help="capture file (UDP 1813/1646)")
    replay.add_argument("--secret", required=True, help="shared secret of every source address")
    replay.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.set_defaults(handler=replay_command)

    sessions = subparsers.add_parser("sessions", help="list session instances")
    add_client_arguments(sessions)
    sessions.add_argument("--user", default="", help="User-Name")
    sessions.add_argument("--nas", default="", help="NAS key")
    sessions.add_argument("--subscription", default="", help="subscription id")
    sessions.add_argument("--open", action="store_true", help="open sessions only")
    sessions.add_argument("--json", action="store_true", help="one JSON array (default: lines)")
    sessions.set_defaults(handler=sessions_command)

    sweep = subparsers.add_parser("sweep", help="close stale sessions as of a time")
    add_client_arguments(sweep)
    sweep.add_argument("--as-of", required=True, help="ISO 8601 instant with offset, e.g. ...Z")
    sweep.set_defaults(handler=sweep_command)

    rebuild = subparsers.add_parser(
        "rebuild", help="rebuild sessions and buckets by replaying the ledger (server side)"
    )
    rebuild.add_argument("--database-url", help="SQLAlchemy URL (env RATING_DATABASE_URL)")
    rebuild.add_argument("--data-dir", help="embedded data directory (env RATING_DATA_DIR)")
    rebuild.add_argument("--tenant", default="", help="one tenant id (default: all)")
    rebuild.set_defaults(handler=rebuild_command)


def _timestamp_us(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def parse_instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise SystemExit(f"--as-of needs an offset or Z (time is aware UTC): {text!r}")
    return value.astimezone(dt.UTC)


def pcap_batches(
    packets: Sequence[bytes], sources: Sequence[str], times_us: Sequence[int], size: int
) -> list[usage_pb2.StreamAccountingRequest]:
    """Raw entries in capture order, capture time as arrival, one batch per `size`."""
    batches = []
    for start in range(0, len(packets), size):
        entries = [
            usage_pb2.AccountingEntry(
                raw=usage_pb2.RawAccountingPacket(
                    packet=packets[i], source_address=sources[i], arrival_time=_timestamp_us(t)
                )
            )
            for i, t in zip(
                range(start, min(start + size, len(packets))),
                times_us[start : start + size],
                strict=True,
            )
        ]
        batches.append(
            usage_pb2.StreamAccountingRequest(batch_id=f"replay-{start // size}", entries=entries)
        )
    return batches


async def replay(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    data: bytes,
    secret: str,
    batch_size: int = DEFAULT_BATCH,
    progress: Any = None,
) -> dict[str, int]:
    """Registers the secret for every source address, then streams the capture."""
    import rating_core as core

    packets, sources, times = core.read_pcap(data)
    for address in sorted(set(sources)):
        await stub.UpsertNasClient(
            usage_pb2.UpsertNasClientRequest(source_address=address, secret=secret),
            metadata=metadata,
        )
    batches = pcap_batches(packets, sources, [int(t) for t in times], max(1, batch_size))
    summary = {"records": len(packets), "accepted": 0, "duplicate": 0, "late": 0}
    summary["quarantined"] = 0

    async def requests() -> AsyncIterator[usage_pb2.StreamAccountingRequest]:
        for batch in batches:
            yield batch

    call = stub.StreamAccounting(requests(), metadata=metadata)
    done = 0
    async for ack in call:
        for name in ("accepted", "duplicate", "late", "quarantined"):
            summary[name] += getattr(ack, name)
        done += 1
        if progress is not None:
            print(f"batch {done}/{len(batches)}: {ack.batch_id}", file=progress)
    return summary


async def replay_command(args: argparse.Namespace) -> int:
    data = await asyncio.to_thread(args.pcap.read_bytes)
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        summary = await replay(
            stub, auth_metadata(args), data, args.secret, args.batch_size, sys.stderr
        )
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _iso(ts: Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def session_json(s: usage_pb2.Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "user_name": s.user_name,
        "nas": s.nas_key,
        "acct_session_id": s.acct_session_id,
        "generation": s.generation,
        "subscription_id": s.subscription_id or None,
        "input_bytes": s.input_bytes,
        "output_bytes": s.output_bytes,
        "session_time_s": s.session_time_s,
        "start_at": _iso(s.start_at, s.HasField("start_at")),
        "stop_at": _iso(s.stop_at, s.HasField("stop_at")),
        "state": "open" if s.state == usage_pb2.SESSION_STATE_OPEN else "closed",
        "flags": list(s.flags),
        "terminate_cause": s.terminate_cause,
    }


async def list_all_sessions(
    stub: usage_pb2_grpc.UsageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    request: usage_pb2.ListSessionsRequest,
) -> list[usage_pb2.Session]:
    out: list[usage_pb2.Session] = []
    while True:
        page = await stub.ListSessions(request, metadata=metadata)
        out.extend(page.sessions)
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


async def sessions_command(args: argparse.Namespace) -> int:
    request = usage_pb2.ListSessionsRequest(
        user_name=args.user,
        nas_key=args.nas,
        subscription_id=args.subscription,
        open_only=args.open,
        page_size=1000,
    )
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        rows = [
            session_json(s) for s in await list_all_sessions(stub, auth_metadata(args), request)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(json.dumps(row))
    return 0


async def sweep_command(args: argparse.Namespace) -> int:
    as_of = parse_instant(args.as_of)
    ts = Timestamp()
    ts.FromDatetime(as_of)
    async with client_channel(args) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        reply = await stub.SweepStaleSessions(
            usage_pb2.SweepStaleSessionsRequest(as_of=ts), metadata=auth_metadata(args)
        )
    print(json.dumps({"closed": reply.closed}))
    return 0


async def rebuild_command(args: argparse.Namespace) -> int:
    from server.db.database import Database
    from server.settings import load_settings
    from server.usage.rebuild import rebuild

    settings = load_settings(database_url=args.database_url, data_dir=args.data_dir)
    db = Database(settings.database_url)
    try:
        report = await rebuild(db, uuid.UUID(args.tenant) if args.tenant else None)
    finally:
        await db.dispose()
    print(json.dumps(report))
    return 0
