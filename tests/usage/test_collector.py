"""The UDP collector: real RADIUS datagrams in, Accounting-Responses out after the commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from isp_rating.v1 import usage_pb2_grpc
from server.app import build_app
from server.settings import Settings
from server.usage import collector as collector_module
from server.usage.collector import UdpCollector, parse_listen
from tests.conftest import RunningServer, TenantCtx
from tests.usage.support import (
    INTERIM,
    SECRET,
    Rec,
    Usage,
    radius_attributes,
    radius_packet,
)
from tests.usage.test_api import GOLDEN, _answers
from tests.usage.test_replay import RATING, ROOT

LOCAL = "127.0.0.1"


class _Nas(asyncio.DatagramProtocol):
    """A NAS's socket: sends Accounting-Requests, queues what comes back."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(data)

    def send(self, packet: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(packet)

    async def answer(self, timeout_s: float = 10.0) -> bytes:
        return await asyncio.wait_for(self.answers.get(), timeout_s)

    async def silence(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answers.get(), seconds)
            return False
        return True


@contextlib.asynccontextmanager
async def collecting(
    stub: usage_pb2_grpc.UsageServiceAsyncStub, tenant: TenantCtx
) -> AsyncIterator[tuple[UdpCollector, _Nas]]:
    collector = UdpCollector(stub, tenant.metadata, flush_s=0.005)
    host, port = await collector.start(LOCAL, 0)
    loop = asyncio.get_running_loop()
    transport, nas = await loop.create_datagram_endpoint(_Nas, remote_addr=(host, port))
    try:
        yield collector, nas
    finally:
        transport.close()
        await collector.close(timeout_s=2.0)


def interim(inp: int, identifier: int, secret: str = SECRET) -> bytes:
    attributes = radius_attributes(Rec(INTERIM, t=600, session_time=600, inp=inp, out=2 * inp))
    return radius_packet(attributes, secret, identifier)


async def test_golden_packet_over_udp_is_answered_with_its_accounting_response(
    usage: Usage,
) -> None:
    await usage.register_nas(LOCAL, "testing123")
    async with collecting(usage.stub, usage.tenant) as (collector, nas):
        nas.send(GOLDEN)
        assert (await nas.answer()).hex() == "052a0014d9e4d3c16591d8cceb1ac30dfbb7658c"
    assert (collector.stats.accepted, collector.stats.answered) == (1, 1)
    session = await usage.session("0000001A", nas="192.0.2.1")
    assert (session.input_bytes, session.output_bytes) == (4_294_968_296, 12_884_901_887)


async def test_collector_answers_recorded_requests_again_and_never_a_bad_authenticator(
    usage: Usage,
) -> None:
    await usage.register_nas(LOCAL)
    async with collecting(usage.stub, usage.tenant) as (collector, nas):
        first = interim(1000, identifier=7)
        nas.send(first)
        assert _answers(first, await nas.answer())
        assert (await usage.session()).input_bytes == 1000
        # The NAS did not hear the answer and resends with a new identifier: a duplicate,
        # answered again so that it stops resending.
        resent = interim(1000, identifier=8)
        nas.send(resent)
        assert _answers(resent, await nas.answer())
        # Signed with another secret: quarantined by the server and left unanswered.
        nas.send(interim(5000, identifier=9, secret="wrong"))
        assert await nas.silence(1.0)
    assert collector.stats.as_dict() | {"received": 3} == collector.stats.as_dict()
    assert (collector.stats.accepted, collector.stats.duplicate) == (1, 1)
    assert (collector.stats.quarantined, collector.stats.answered) == (1, 2)
    assert (await usage.session()).input_bytes == 1000


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


async def test_collector_resends_what_was_not_acknowledged_when_the_server_comes_back(
    server: RunningServer, usage: Usage, tmp_path: Path
) -> None:
    # The collector's server is down when the NAS sends: nothing is answered (the record
    # is not durable) until a server listens again, and then it is counted once.
    await usage.register_nas(LOCAL)
    target = f"{LOCAL}:{_free_port()}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        async with collecting(stub, usage.tenant) as (collector, nas):
            packet = interim(3000, identifier=11)
            nas.send(packet)
            assert await nas.silence(0.8)
            assert collector.stats.reconnects >= 1
            settings = Settings(
                database_url=server.app.settings.database_url,
                listen=target,
                data_dir=tmp_path,
                grace_s=1.0,
            )
            app = build_app(settings)
            await app.start()
            try:
                assert _answers(packet, await nas.answer(timeout_s=15.0))
            finally:
                await app.stop(0.5)
    assert (collector.stats.accepted, collector.stats.answered) == (1, 1)
    assert (await usage.session()).input_bytes == 3000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1813", ("127.0.0.1", 1813)),
        ("[::1]:1646", ("::1", 1646)),
        (":1813", ("0.0.0.0", 1813)),
    ],
)
def test_listen_address_is_parsed_when_it_names_a_port(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["1813", "host:", "host:99999", "host:port"])
def test_listen_address_is_refused_naming_the_field_when_it_has_no_valid_port(text: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        parse_listen(text)


async def test_collect_command_answers_the_nas_and_drains_on_sigterm(
    server: RunningServer, usage: Usage
) -> None:
    await usage.register_nas(LOCAL, "testing123")
    port = _free_port(socket.SOCK_DGRAM)
    process = await asyncio.create_subprocess_exec(
        *RATING,
        "collect",
        "--listen",
        f"{LOCAL}:{port}",
        "--target",
        server.target,
        "--stats-s",
        "0",
        cwd=ROOT,
        env={**os.environ, "RATING_API_KEY": usage.tenant.key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        banner = await asyncio.wait_for(process.stderr.readline(), 30)
        assert f"collecting on udp {LOCAL}:{port}" in banner.decode()
        loop = asyncio.get_running_loop()
        transport, nas = await loop.create_datagram_endpoint(_Nas, remote_addr=(LOCAL, port))
        try:
            nas.send(GOLDEN)
            assert (await nas.answer()).hex() == "052a0014d9e4d3c16591d8cceb1ac30dfbb7658c"
        finally:
            transport.close()
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    assert (summary["received"], summary["accepted"], summary["answered"]) == (1, 1, 1)
    assert summary["drained"] is True


async def test_collector_ends_a_batch_at_its_byte_cap_and_forwards_every_datagram(
    usage: Usage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large datagrams (RADIUS padding past Length, up to the UDP limit) fill a batch by
    # bytes before its count: each batch stays under the cap, and every request is answered.
    monkeypatch.setattr(collector_module, "MAX_BATCH_BYTES", 100_000)
    await usage.register_nas(LOCAL)
    async with collecting(usage.stub, usage.tenant) as (collector, nas):
        sent = [
            radius_packet(
                radius_attributes(Rec(INTERIM, sid=f"big-{i}", t=60, session_time=60, inp=i)),
                identifier=i,
            )
            + bytes(30_000)
            for i in range(8)
        ]
        for packet in sent:
            nas.send(packet)
        answers = [await nas.answer() for _ in sent]
    assert sorted(a[1] for a in answers) == list(range(8))
    assert all(any(_answers(p, a) for a in answers) for p in sent)
    assert collector.stats.batches >= 3  # 8 x 30 kB in batches of at most 100 kB
    assert (collector.stats.accepted, collector.stats.answered) == (8, 8)
