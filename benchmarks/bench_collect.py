"""`rating collect` end to end: NAS datagrams in, Accounting-Responses out after the commit.

Run: pytest benchmarks/bench_collect.py --benchmark-only -s
A simulated NAS (this process) sends signed Interim-Updates over loopback UDP to a
`rating collect` process, which streams them to a server process on PostgreSQL; each round
sends 60,000 requests for 20,000 sessions from 64 NAS sockets with at most 16,000 requests
unanswered at once (250 identifiers per socket; a request unanswered for 2 s is sent
again, as a NAS does) and reports answered requests/s, the p50/p99 time from first sending
a request to its response, and the retransmits.
Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from benchmarks.conftest import REPO, ServerProcess
from isp_rating.v1 import usage_pb2 as pb
from isp_rating.v1 import usage_pb2_grpc
from tests.usage.support import attr, attr_int, radius_packet

SECRET = "bench-secret"  # noqa: S105 - the simulated NAS's shared secret
REQUESTS = 60_000
SESSIONS = 20_000
WINDOW = 16_000  # unanswered requests at once, over PORTS sockets
PORTS = 64
RETRANSMIT_S = 2.0
T0 = 1_709_287_200  # 2024-03-01T10:00:00Z
_round = itertools.count()


def interim(tag: str, session: int, step: int) -> bytes:
    """The attributes of session `session`'s `step`-th Interim-Update, 300 s apart."""
    seconds = 300 * (step + 1)
    return b"".join(
        (
            attr_int(40, 3),
            attr(44, f"{tag}{session:06d}".encode()),
            attr(1, f"user{session}".encode()),
            attr(32, b"bench-nas"),
            attr_int(42, 1000 * seconds),
            attr_int(43, 5000 * seconds),
            attr_int(46, seconds),
            attr_int(55, T0 + seconds),
            attr_int(41, 0),
        )
    )


class _Port(asyncio.DatagramProtocol):
    """One NAS socket: an identifier names one unanswered request (RFC 2865: 256 per port)."""

    def __init__(self, latencies: list[float]) -> None:
        self.latencies = latencies
        self.sent_at: dict[int, float] = {}
        self.packets: dict[int, tuple[bytes, float]] = {}  # last (re)sent
        self.retransmits = 0
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for identifier in range(WINDOW // PORTS):
            self.free.put_nowait(identifier)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        started = self.sent_at.pop(data[1], None)
        self.packets.pop(data[1], None)
        if started is not None and data[0] == 5:
            self.latencies.append(time.perf_counter() - started)
            self.free.put_nowait(data[1])


@dataclass
class CollectResult:
    answered: int
    seconds: float
    p50_ms: float
    p99_ms: float
    retransmits: int


async def _round_trip(port: int, requests: list[bytes]) -> CollectResult:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    retransmits: list[int] = []

    async def one_port(share: list[bytes]) -> None:
        nas = _Port(latencies)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: nas, remote_addr=("127.0.0.1", port)
        )

        async def retransmit() -> None:
            # As a NAS does: a request unanswered for RETRANSMIT_S is sent again (a datagram
            # the collector's full socket buffer dropped is then delivered).
            while True:
                await asyncio.sleep(RETRANSMIT_S / 4)
                now = time.perf_counter()
                for identifier, (packet, at) in list(nas.packets.items()):
                    if now - at > RETRANSMIT_S:
                        nas.packets[identifier] = (packet, now)
                        nas.retransmits += 1
                        transport.sendto(packet)

        resender = asyncio.create_task(retransmit())
        try:
            for attributes in share:
                identifier = await nas.free.get()
                packet = radius_packet(attributes, SECRET, identifier)
                nas.sent_at[identifier] = time.perf_counter()
                nas.packets[identifier] = (packet, nas.sent_at[identifier])
                transport.sendto(packet)
            for _ in range(WINDOW // PORTS):  # every identifier back: all answered
                await nas.free.get()
        finally:
            resender.cancel()
            transport.close()
            retransmits.append(nas.retransmits)

    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(one_port(requests[p::PORTS]) for p in range(PORTS))), 600
    )
    seconds = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return CollectResult(
        len(ms),
        seconds,
        statistics.median(ms),
        ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        sum(retransmits),
    )


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def collector(pg_server: ServerProcess) -> Iterator[int]:
    async def register() -> None:
        async with grpc.aio.insecure_channel(pg_server.target) as channel:
            await usage_pb2_grpc.UsageServiceStub(channel).UpsertNasClient(
                pb.UpsertNasClientRequest(source_address="127.0.0.1", secret=SECRET),
                metadata=(("authorization", f"Bearer {pg_server.key}"),),
            )

    asyncio.run(register())
    port = _free_udp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "collect", "--listen", f"127.0.0.1:{port}",
         "--target", pg_server.target, "--stats-s", "0", "--batch-size", "5000"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "RATING_API_KEY": pg_server.key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        banner = process.stderr.readline().decode()
        assert "collecting on udp" in banner, banner
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_collect_answers_over_udp_into_postgresql(
    benchmark: pytest.FixtureRequest, collector: int
) -> None:
    results: list[CollectResult] = []

    def one_round() -> None:
        r = next(_round)
        tag = f"c{r}-"
        requests = [interim(tag, i % SESSIONS, i // SESSIONS) for i in range(REQUESTS)]
        result = asyncio.run(_round_trip(collector, requests))
        assert result.answered == REQUESTS
        results.append(result)

    benchmark.pedantic(one_round, rounds=3, iterations=1)  # type: ignore[attr-defined]
    rates = [r.answered / r.seconds for r in results]
    best = results[rates.index(statistics.median(rates))]
    print(
        f"\ncollect over udp into postgresql: {statistics.median(rates):,.0f} requests/s,"
        f" answer p50 {best.p50_ms:.0f} ms, p99 {best.p99_ms:.0f} ms; retransmits"
        f" {[r.retransmits for r in results]}"
    )
