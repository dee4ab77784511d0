"""End-to-end load generator for StreamAccounting: pre-serialized batches over loopback.

Run against a server: python -m benchmarks.loadgen --target 127.0.0.1:50051 --key rk_...
The workload is a BNG's interim storm: `sessions` sessions spread over 16 NASes, each batch
of `batch` records carries one Interim-Update per session (cumulative counters growing),
rounds repeat until `batches` batches were sent. Batches are serialized before the clock
starts and sent as raw bytes (no client-side protobuf work while measuring); up to
`window` batches are in flight per stream. Ack latency = send to ack of each batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2 as pb

METHOD = "/isp_rating.v1.UsageService/StreamAccounting"
T0_S = 1_709_287_200  # 2024-03-01T10:00:00Z
NAS_COUNT = 16


@dataclass
class LoadResult:
    records: int
    batches: int
    seconds: float
    records_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    accepted: int
    duplicate: int
    late: int
    quarantined: int


def build_batches(sessions: int, batch: int, batches: int, tag: str = "") -> list[bytes]:
    """Serialized StreamAccountingRequests: round r updates every session to step r + 1."""
    per_round = max(1, sessions // batch)
    out: list[bytes] = []
    for b in range(batches):
        step = b // per_round + 1
        first = (b % per_round) * batch
        entries = []
        for s in range(first, first + batch):
            session_time = step * 600
            event = Timestamp(seconds=T0_S + session_time + s % 600)
            entries.append(
                pb.AccountingEntry(
                    decoded=pb.AccountingRecord(
                        status_type=pb.ACCT_STATUS_TYPE_INTERIM_UPDATE,
                        acct_session_id=f"{tag}{s:08x}",
                        user_name=f"user{s}",
                        nas_identifier=f"bng-{s % NAS_COUNT}",
                        source_address="10.0.0.1",
                        input_octets=(step * 1_000_003 * (s % 97 + 1)) % (1 << 32),
                        input_gigawords=(step * 1_000_003 * (s % 97 + 1)) >> 32,
                        output_octets=(step * 9_000_011 * (s % 89 + 1)) % (1 << 32),
                        output_gigawords=(step * 9_000_011 * (s % 89 + 1)) >> 32,
                        session_time_s=session_time,
                        event_timestamp=event,
                        delay_time_s=0,
                        arrival_time=event,
                    )
                )
            )
        request = pb.StreamAccountingRequest(batch_id=f"{tag}b{b}", entries=entries)
        out.append(request.SerializeToString())
    return out


async def _stream(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    batches: list[bytes],
    window: int,
    latencies: list[float],
    totals: dict[str, int],
) -> None:
    method: Any = channel.stream_stream(
        METHOD,
        request_serializer=None,  # the batches are bytes already
        response_deserializer=pb.StreamAccountingResponse.FromString,
    )
    call = method(metadata=metadata)  # no iterator: written with call.write
    slots = asyncio.Semaphore(window)
    sent: list[float] = []

    async def send() -> None:
        for data in batches:
            await slots.acquire()
            sent.append(time.perf_counter())
            await call.write(data)
        await call.done_writing()

    writer = asyncio.create_task(send())
    for index in range(len(batches)):
        ack = await call.read()
        if ack is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise RuntimeError(f"stream ended after {index} acks")
        latencies.append(time.perf_counter() - sent[index])
        slots.release()
        for name in ("accepted", "duplicate", "late", "quarantined"):
            totals[name] += getattr(ack, name)
    await writer


async def run_load(
    target: str, key: str, streams: list[list[bytes]], window: int, records: int
) -> LoadResult:
    """Sends every stream's batches concurrently; returns throughput and ack latency."""
    metadata = (("authorization", f"Bearer {key}"),)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    latencies: list[float] = []
    totals = dict.fromkeys(("accepted", "duplicate", "late", "quarantined"), 0)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await channel.channel_ready()
        start = time.perf_counter()
        await asyncio.gather(
            *(_stream(channel, metadata, s, window, latencies, totals) for s in streams)
        )
        seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    return LoadResult(
        records=records,
        batches=len(ordered),
        seconds=seconds,
        records_per_s=records / seconds,
        ack_p50_ms=statistics.median(ordered) * 1000,
        ack_p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        **totals,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--key", required=True)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--window", type=int, default=2, help="batches in flight per stream")
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    streams = [
        build_batches(args.sessions, args.batch, args.batches, tag=f"s{i}-")
        for i in range(args.streams)
    ]
    records = args.batch * args.batches * args.streams
    print(f"streaming {records} records", file=sys.stderr, flush=True)
    result = asyncio.run(run_load(args.target, args.key, streams, args.window, records))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
