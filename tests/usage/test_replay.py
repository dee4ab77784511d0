"""The real capture of ../shared/radius (SOURCE.md totals) through the CLI, and the crash test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import rating_core as core
from isp_rating.v1 import usage_pb2 as pb
from server.usage import cli
from server.usage import repository as repo
from tests.conftest import Backend, RunningServer, TenantCtx, new_tenant
from tests.usage.support import (
    INTERIM,
    SECRET,
    START,
    STOP,
    Rec,
    Usage,
    attr,
    batch,
    decoded,
    ipv4_fragments,
    ipv4_udp,
    pcap,
    pcapng,
    radius_attributes,
    radius_packet,
)

ROOT = Path(__file__).resolve().parents[2]
PCAP = ROOT.parent / "shared" / "radius" / "wba_dl_5gb.pcap"
RATING = [sys.executable, "-m", "server"]


async def rating(*args: str, key: str, cwd: Path | None = None) -> Any:
    env = {**os.environ, "RATING_API_KEY": key}
    process = await asyncio.create_subprocess_exec(
        *RATING,
        *args,
        cwd=cwd or ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.mark.skipif(not PCAP.exists(), reason=f"{PCAP} is absent")
async def test_capture_gives_source_totals_when_replayed_through_the_cli(
    server: RunningServer, tenant: TenantCtx
) -> None:
    summary = await rating(
        "replay",
        str(PCAP),
        "--secret",
        "secret",
        "--target",
        server.target,
        "--json",
        key=tenant.key,
    )
    assert summary == {
        "records": 179,
        "accepted": 179,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 0,
    }
    again = await rating(
        "replay",
        str(PCAP),
        "--secret",
        "secret",
        "--target",
        server.target,
        "--json",
        key=tenant.key,
    )
    assert again["duplicate"] == 179
    sessions = await rating("sessions", "--target", server.target, "--json", key=tenant.key)
    assert len(sessions) == 1
    (session,) = sessions
    assert isinstance(session, dict)
    assert session["nas"] == "192.168.123.1"
    assert (session["input_bytes"], session["output_bytes"]) == (147_699_750, 5_682_218_308)
    assert session["session_time_s"] == 1773
    assert session["state"] == "closed"
    assert session["terminate_cause"] == 1
    assert "clock_skew" in session["flags"]
    assert str(session["start_at"]).endswith("Z")


def classic_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(capture time in µs, frame) of a little-endian microsecond classic pcap."""
    frames, pos = [], 24
    while pos < len(data):
        secs, us, caplen, _ = struct.unpack_from("<IIII", data, pos)
        frames.append((secs * 1_000_000 + us, data[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return frames


@pytest.mark.skipif(not PCAP.exists(), reason=f"{PCAP} is absent")
def test_capture_reads_the_same_requests_when_rewritten_as_fragmented_pcapng() -> None:
    """Every IPv4 datagram of the real capture (requests and responses) cut into 16-octet
    fragments, sent last fragment first, in a big-endian pcapng with nanosecond times."""
    data = PCAP.read_bytes()
    frames = []
    for ident, (us, frame) in enumerate(classic_frames(data)):
        ethernet, ip = frame[:14], frame[14:]
        assert ethernet[12:14] == b"\x08\x00"
        (total,) = struct.unpack_from(">H", ip, 2)
        fragments = ipv4_fragments(ip[:total], 16, ident)
        assert len(fragments) > 1
        frames += [(us, ethernet + f) for f in reversed(fragments)]
    expected = core.read_pcap(data)
    packets, sources, times, truncated_at, incomplete = core.read_pcap(
        pcapng(frames, link_type=1, order=">")
    )
    assert len(packets) == 179
    assert packets == expected[0]
    assert sources == expected[1]
    assert times.tolist() == expected[2].tolist()
    assert truncated_at is None
    assert incomplete == {"missing": 0, "conflicting": 0, "evicted": 0, "cut": 0}


def big_request(rec: Rec) -> bytes:
    """The record's Accounting-Request with 18 Class attributes of 200 octets: about 3.8 KB,
    more than a 1500-octet MTU carries."""
    classes = b"".join(attr(25, bytes([n]) * 200) for n in range(18))
    return radius_packet(radius_attributes(rec) + classes, SECRET)


def mtu_fragments(rec: Rec, ident: int) -> list[bytes]:
    """The IPv4 fragments (1480 data octets each, as over Ethernet) of the record's big request."""
    return ipv4_fragments(ipv4_udp(rec.source, big_request(rec)), 1480, ident)


def us_of(rec: Rec) -> int:
    return int(rec.arrival_at.timestamp()) * 1_000_000 + rec.arrival_at.microsecond


FRAGMENTED_SESSION = [
    Rec(START, t=0, session_time=0),
    Rec(INTERIM, t=600, session_time=600, inp=5_000_000_000, out=20),
    Rec(STOP, t=1200, session_time=1200, inp=6_000_000_000, out=40, cause=1),
]


async def test_replay_stores_fragmented_requests_when_the_capture_is_pcapng(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    start, interim, stop = FRAGMENTED_SESSION
    interim_parts = mtu_fragments(interim, 1)
    stop_parts = mtu_fragments(stop, 2)
    assert len(interim_parts) == len(stop_parts) == 3
    frames = [(us_of(start), ipv4_udp(start.source, radius_packet(radius_attributes(start))))]
    # The Interim's fragments out of order, the Stop's in order, microseconds apart.
    frames += [(us_of(interim) + i, f) for i, f in enumerate(reversed(interim_parts))]
    frames += [(us_of(stop) + i, f) for i, f in enumerate(stop_parts)]
    path = tmp_path / "fragmented.pcapng"
    path.write_bytes(pcapng(frames))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "records": 3,
        "accepted": 3,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 0,
    }
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (6_000_000_000, 40)
    assert session.session_time_s == 1200
    assert session.state == pb.SESSION_STATE_CLOSED
    assert session.terminate_cause == 1


async def test_replay_reports_a_request_it_could_not_reassemble_and_exits_1(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    start, interim, stop = FRAGMENTED_SESSION
    stop_parts = mtu_fragments(stop, 2)
    frames = [(us_of(start), ipv4_udp(start.source, radius_packet(radius_attributes(start))))]
    frames += [(us_of(interim), f) for f in mtu_fragments(interim, 1)]
    # The Stop's middle fragment was never captured.
    frames += [(us_of(stop), stop_parts[0]), (us_of(stop) + 1, stop_parts[2])]
    path = tmp_path / "lost-fragment.pcapng"
    path.write_bytes(pcapng(frames))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    # Exit 1: a request of the file was not stored (the operator has to look at it).
    assert code == 1, err
    assert json.loads(out) == {
        "records": 2,
        "accepted": 2,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 1,
    }
    assert (
        "1 fragmented datagram that may hold accounting requests could not be reassembled"
        " (1 missing a fragment): not sent"
    ) in err
    assert "Traceback" not in err
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (5_000_000_000, 20)
    assert session.state == pb.SESSION_STATE_OPEN


def snapped_pcap(frames: list[tuple[int, bytes]], snaplen: int) -> bytes:
    """A raw-IP classic pcap of (capture time in µs, IP packet) taken with this snaplen: each
    record holds at most `snaplen` octets of its packet, and the packet's length."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 101)
    for us, frame in frames:
        kept = frame[:snaplen]
        out += struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(kept), len(frame))
        out += kept
    return out


async def test_replay_reports_requests_cut_by_the_snaplen_and_exits_1(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    start, interim, _ = FRAGMENTED_SESSION
    elsewhere = interim.but(source="192.0.2.77", sid="sess-2")
    frames = [
        (us_of(rec), ipv4_udp(rec.source, radius_packet(radius_attributes(rec))))
        for rec in (start, interim, elsewhere)
    ]
    snaplen = 100  # the Start fits; the Interims (over 100 octets) are cut
    assert len(frames[0][1]) <= snaplen < min(len(frames[1][1]), len(frames[2][1]))
    path = tmp_path / "snapped.pcap"
    path.write_bytes(snapped_pcap(frames, snaplen))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    # Exit 1: requests of the file were not stored, nor will a later run store them.
    assert code == 1, err
    assert json.loads(out) == {
        "records": 1,
        "accepted": 1,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 2,
    }
    assert (
        "2 datagrams that may hold accounting requests were cut short by the capture's"
        " snaplen: not sent"
    ) in err
    assert "Traceback" not in err
    # Nothing was sent from the address only a cut request came from.
    async with server.db.read() as session:
        assert "192.0.2.77" not in await repo.nas_secrets(session, usage.tenant.tenant_id)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (0, 0)
    assert session.state == pb.SESSION_STATE_OPEN


async def test_replay_streams_a_capture_a_batch_at_a_time_when_run_from_the_cli(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    # More requests than a batch, and a fragmented one completed across a batch boundary:
    # the CLI reads the capture a chunk (one batch) at a time, after a scan.
    start, interim, stop = FRAGMENTED_SESSION
    other = [Rec(START, source="192.0.2.79", sid=f"s-{i}", t=600, session_time=0) for i in range(4)]
    frames = [(us_of(start), ipv4_udp(start.source, radius_packet(radius_attributes(start))))]
    parts = mtu_fragments(interim, 1)
    frames += [(us_of(interim), parts[0])]
    frames += [(us_of(r), ipv4_udp(r.source, radius_packet(radius_attributes(r)))) for r in other]
    frames += [(us_of(interim) + i, f) for i, f in enumerate(parts[1:], 1)]
    frames += [(us_of(stop) + i, f) for i, f in enumerate(mtu_fragments(stop, 2))]
    path = tmp_path / "streamed.pcapng"
    path.write_bytes(pcapng(frames))
    reader = core.CaptureReader(path)
    chunks = []
    while chunk := reader.next_chunk(2):
        chunks.append(chunk)
    whole = core.read_pcap(path.read_bytes())
    assert [len(c[0]) for c in chunks] == [2, 2, 2, 1]
    assert [p for c in chunks for p in c[0]] == whole[0]
    assert [s for c in chunks for s in c[1]] == whole[1]
    assert [int(t) for c in chunks for t in c[2]] == whole[2].tolist()
    assert (reader.done, reader.truncated_at, reader.incomplete) == (True, None, whole[4])
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--batch-size", "2",
        "--target", server.target, key=usage.tenant.key,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "records": 7,
        "accepted": 7,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 0,
    }
    batches = [line for line in err.splitlines() if line.startswith("batch ")]
    # Batch ids name the run (UTC time and a random part), so that a ledger or quarantine
    # row can be traced to it.
    run = r"\d{8}T\d{6}Z-[0-9a-f]{6}"
    assert len(batches) == 4
    assert all(
        re.fullmatch(rf"batch {i + 1}/4: replay-{run}-{i}", b) for i, b in enumerate(batches)
    )
    assert len({b.split(": ")[1].rsplit("-", 1)[0] for b in batches}) == 1
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (6_000_000_000, 40)
    assert session.state == pb.SESSION_STATE_CLOSED


async def test_replay_reports_quarantined_requests_by_reason_when_the_secret_is_wrong(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    good = Rec(START, source="192.0.2.80", sid="signed", t=600, session_time=0)
    others = [
        Rec(START, source="192.0.2.80", sid=f"x{i}", t=610 + i, session_time=0) for i in (1, 2)
    ]
    path = tmp_path / "two-secrets.pcap"
    # The second capture's header (24 octets) left out: one file, two secrets.
    path.write_bytes(pcap([good]) + pcap(others, secret="another")[24:])
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    # The quarantined requests are kept by the server (a later run with the right secret
    # stores them), so the exit is 0; stderr says why they were not counted.
    assert code == 0, err
    assert json.loads(out)["quarantined"] == 2
    assert "quarantined 2: radius: bad Request Authenticator; is --secret right?" in err
    assert (await usage.session(sid="signed")).state == pb.SESSION_STATE_OPEN


async def test_replay_refuses_a_secret_that_verifies_none_of_a_sources_requests(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    # Setting it would replace the secret the NAS's live requests are checked with.
    await usage.register_nas("192.0.2.82", secret="another")
    ours = Rec(START, source="192.0.2.81", sid="ours", t=600, session_time=0)
    theirs = [
        Rec(START, source="192.0.2.82", sid=f"theirs-{i}", t=600 + i, session_time=0)
        for i in (1, 2)
    ]
    # A request too short for a header has no authenticator to check: not held against
    # the secret (the server quarantines it as malformed).
    unframed = (us_of(ours) + 5, ipv4_udp("192.0.2.83", b"\x04\x07\x00\x14"))
    frames = [(us_of(ours), ipv4_udp(ours.source, radius_packet(radius_attributes(ours))))]
    frames += [
        (us_of(r), ipv4_udp(r.source, radius_packet(radius_attributes(r), "another")))
        for r in theirs
    ]
    path = tmp_path / "another-secret.pcapng"
    path.write_bytes(pcapng([*frames, unframed]))
    code, err = await rating_fails(
        "replay", str(path), "--secret", SECRET, "--target", server.target, key=usage.tenant.key
    )
    assert (code, err.strip()) == (
        1,
        f"rating replay: {path}: --secret verifies none of the 2 requests from 192.0.2.82"
        " (their Request Authenticators): it is not their secret; no secret was set and"
        " nothing was sent",
    )
    async with server.db.read() as session:
        secrets = await repo.nas_secrets(session, usage.tenant.tenant_id)
    assert (secrets.get("192.0.2.82"), "192.0.2.81" in secrets) == (b"another", False)
    assert await usage.sessions() == []

    path.write_bytes(pcapng([frames[0], unframed]))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    assert code == 0, err  # the server keeps the malformed request, quarantined
    assert (json.loads(out)["accepted"], json.loads(out)["quarantined"]) == (1, 1)
    assert [s.acct_session_id for s in await usage.sessions()] == ["ours"]


async def test_replay_refuses_a_capture_whose_error_follows_requests_before_sending_any(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    # The scan reads the whole file before a secret is set or a request sent.
    start, interim, _ = FRAGMENTED_SESSION
    data = bytearray(pcap([start.but(source="192.0.2.80"), interim]))
    second = 24 + 16 + struct.unpack_from("<I", data, 24 + 8)[0]
    data[second + 4 : second + 8] = struct.pack("<I", 1_000_000)
    path = tmp_path / "late-error.pcap"
    path.write_bytes(data)
    code, err = await rating_fails(
        "replay", str(path), "--secret", SECRET, "--target", server.target, key=usage.tenant.key
    )
    assert (code, err.strip()) == (
        1,
        f"rating replay: {path}: pcap: record at byte {second}: its fraction of a second is"
        " 1000000 microseconds, not under 1000000",
    )
    async with server.db.read() as session:
        assert "192.0.2.80" not in await repo.nas_secrets(session, usage.tenant.tenant_id)
    assert await usage.sessions() == []


async def test_capture_batches_fail_after_the_batches_before_when_the_capture_changed(
    tmp_path: Path,
) -> None:
    start, interim, stop = FRAGMENTED_SESSION
    path = tmp_path / "changed.pcap"
    path.write_bytes(pcap([start, interim, stop]))
    length = path.stat().st_size
    sent = [b async for b in cli.capture_batches(path, length, 2, 3, "r1")]
    assert [(b.batch_id, len(b.entries)) for b in sent] == [("replay-r1-0", 2), ("replay-r1-1", 1)]
    batches = cli.capture_batches(path, length, 2, 2, "r2")  # scanned 2: a third appeared
    assert (await anext(batches)).batch_id == "replay-r2-0"
    with pytest.raises(cli.CaptureChangedError, match="3 requests read again, not 2"):
        await anext(batches)
    path.write_bytes(pcap([start])[:30])  # shorter than when it was scanned
    with pytest.raises(cli.CaptureChangedError, match="0 requests read again, not 3"):
        [b async for b in cli.capture_batches(path, length, 2, 3, "r3")]


async def test_replay_refuses_a_pcap_whose_record_time_has_a_fraction_past_a_second(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    start = FRAGMENTED_SESSION[0]
    data = bytearray(pcap([start, start.but(source="192.0.2.78")]))
    data[24 + 4 : 24 + 8] = struct.pack("<I", 0xFFFFFFFF)  # the first record's microseconds
    path = tmp_path / "fraction.pcap"
    path.write_bytes(data)
    code, err = await rating_fails(
        "replay", str(path), "--secret", SECRET, "--target", server.target, key=usage.tenant.key
    )
    assert (code, err.strip()) == (
        1,
        f"rating replay: {path}: pcap: record at byte 24: its fraction of a second is"
        " 4294967295 microseconds, not under 1000000",
    )
    async with server.db.read() as session:
        assert "192.0.2.78" not in await repo.nas_secrets(session, usage.tenant.tenant_id)
    assert await usage.sessions() == []


async def test_replay_skips_accounting_responses_when_the_nas_port_is_1813(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    """A NAS that sends from port 1813 gets its Accounting-Response sent to port 1813: the
    capture holds both, and only the request is replayed; the accounting server that sent
    the response is not registered as a NAS client."""
    accounting_server = "192.0.2.254"
    frames = []
    for n, rec in enumerate(FRAGMENTED_SESSION[:2]):
        request = radius_packet(radius_attributes(rec))
        response = core.accounting_response(request, SECRET.encode())
        to_server = ipv4_udp(rec.source, request, accounting_server, source_port=1813)
        to_nas = ipv4_udp(accounting_server, response, rec.source, source_port=1813)
        frames += [(us_of(rec), to_server), (us_of(rec) + 1000, to_nas)]
        assert response[0] == 5, n
    path = tmp_path / "responses.pcapng"
    path.write_bytes(pcapng(frames))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "records": 2,
        "accepted": 2,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "truncated": 0,
        "incomplete_datagrams": 0,
    }
    assert accounting_server not in {n.nas_key for n in await usage.nas_list()}
    async with server.db.read() as session:
        assert accounting_server not in await repo.nas_secrets(session, usage.tenant.tenant_id)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (5_000_000_000, 20)


async def test_replay_sets_the_secret_of_every_source_of_a_capture_with_many(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    """A capture of many NASes: every source gets the secret (some at a time, with
    progress on stderr) before its requests are sent, and each NAS's request is stored."""
    sources = [f"198.51.100.{n}" for n in range(1, 41)]
    recs = [
        Rec(INTERIM, sid=f"s{n}", nas="", t=600, session_time=600, inp=n + 1, out=1,
            source=source)
        for n, source in enumerate(sources)
    ]  # fmt: skip
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap(recs))
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["accepted"] == len(sources)
    assert "setting the secret of 40 source addresses" in err
    async with server.db.read() as session:
        assert set(sources) <= set(await repo.nas_secrets(session, usage.tenant.tenant_id))
    inputs = sorted(s.input_bytes for s in await usage.sessions())
    assert inputs == list(range(1, 41))


def workload(
    sessions: int = 40, interims: int = 10, per_batch: int = 20
) -> list[pb.StreamAccountingRequest]:
    recs = []
    for step in range(interims + 2):
        for s in range(sessions):
            sid = f"c{s}"
            if step == 0:
                recs.append(Rec(START, sid=sid, t=s, session_time=0))
            elif step <= interims:
                t = 600 * step
                recs.append(
                    Rec(INTERIM, sid=sid, t=t + s, session_time=t, inp=t * (s + 1), out=t * 3)
                )
            else:
                t = 600 * step
                recs.append(
                    Rec(STOP, sid=sid, t=t + s, session_time=t, inp=t * (s + 1), out=t * 3, cause=1)
                )
    return [
        batch([decoded(r) for r in recs[i : i + per_batch]], f"b{i // per_batch}")
        for i in range(0, len(recs), per_batch)
    ]


def totals(sessions: list[pb.Session]) -> list[tuple[object, ...]]:
    return sorted(
        (
            s.nas_key,
            s.acct_session_id,
            s.generation,
            s.input_bytes,
            s.output_bytes,
            s.session_time_s,
            s.state,
        )
        for s in sessions
    )


class Serve:
    """`python -m server serve` as a real process on the test backend's database."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.target = ""
        self.starts = 0

    def _spawn(self, out: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "RATING_SWEEP_INTERVAL_S": "0", "RATING_LOG_LEVEL": "WARNING"}
        env.pop("RATING_DATABASE_URL", None)
        with out.open("wb") as stdout:
            return subprocess.Popen(
                [
                    *RATING,
                    "serve",
                    "--database-url",
                    self.database_url,
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    str(self.data_dir),
                ],
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=subprocess.DEVNULL,
            )

    async def start(self) -> None:
        self.starts += 1
        out = self.data_dir / f"serve-{self.starts}.out"
        self.process = self._spawn(out)
        for _ in range(300):
            match = re.search(r"serving on (\S+)", out.read_text() if out.exists() else "")
            if match:
                self.target = match.group(1)
                return
            assert self.process.poll() is None, "server exited"
            await asyncio.sleep(0.1)
        raise AssertionError("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def stream_until_killed(
    client: Usage, batches: list[pb.StreamAccountingRequest], served: Serve
) -> tuple[list[str], grpc.StatusCode | None]:
    """Streams every batch and SIGKILLs the server after a third are acknowledged."""
    acked: list[str] = []
    call = client.stub.StreamAccounting(requests(batches), metadata=client.metadata)
    try:
        async for ack in call:
            acked.append(ack.batch_id)
            if len(acked) == len(batches) // 3:
                # Later batches are in flight: some commit, none is acknowledged.
                served.kill()
    except grpc.aio.AioRpcError as error:
        return acked, error.code()
    return acked, None


@pytest.mark.slow
async def test_totals_match_uninterrupted_run_when_server_is_killed_mid_stream(
    usage: Usage, tmp_path: Path, server: RunningServer, backend: Backend
) -> None:
    batches = workload()
    # The uninterrupted run, on the in-process test server.
    for ack in await usage.stream(*batches):
        assert ack.quarantined == 0
    expected = totals(await usage.sessions())

    served = Serve(tmp_path, backend.url)
    await served.start()
    try:
        tenant = await new_tenant(server.db)
        async with grpc.aio.insecure_channel(served.target) as channel:
            client = Usage(channel, tenant)
            acked, code = await stream_until_killed(client, batches, served)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert acked == [b.batch_id for b in batches[: len(acked)]]
        await served.start()
        # The unacknowledged batches, and the last acknowledged one once more (as a collector
        # that lost its ack would): that one must come back as duplicates only.
        resend = batches[len(acked) - 1 :]
        async with grpc.aio.insecure_channel(served.target) as channel:
            client = Usage(channel, tenant)
            acks = await client.stream(*resend)
            assert [a.batch_id for a in acks] == [b.batch_id for b in resend]
            assert acks[0].duplicate == len(resend[0].entries)
            assert acks[0].accepted == 0
            assert totals(await client.sessions()) == expected
    finally:
        served.stop()


async def requests(
    items: list[pb.StreamAccountingRequest],
) -> AsyncIterator[pb.StreamAccountingRequest]:
    for item in items:
        yield item


async def rating_run(*args: str, key: str, **env: str) -> tuple[int, str, str]:
    """Runs `rating` (with `env` added to the environment): its exit status, stdout and
    stderr."""
    process = await asyncio.create_subprocess_exec(
        *RATING,
        *args,
        cwd=ROOT,
        env={**os.environ, "RATING_API_KEY": key, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def rating_fails(*args: str, key: str, **env: str) -> tuple[int, str]:
    code, _, err = await rating_run(*args, key=key, **env)
    assert code != 0
    return code, err


async def test_nas_clients_are_registered_and_listed_from_the_cli(
    server: RunningServer, tenant: TenantCtx
) -> None:
    target = ("--target", server.target)
    client = await rating(
        "nas", "set", "192.0.2.1", "--secret", "testing123", "--interim-interval-s", "60",
        "--infer-wrap", *target, key=tenant.key,
    )  # fmt: skip
    assert client["source_address"] == "192.0.2.1"
    assert (client["interim_interval_s"], client["infer_wrap"]) == (60, True)
    listed = await rating("nas", "list", "--json", *target, key=tenant.key)
    assert [(n["nas"], n["interim_interval_s"], n["infer_wrap"]) for n in listed] == [
        ("192.0.2.1", 60, True)
    ]
    assert listed[0]["flags"] == []
    assert listed[0]["last_clock_skew_at"] is None
    assert await rating("nas", "list", "--flagged", "--json", *target, key=tenant.key) == []
    # A new client needs a secret; a number option must be a whole number.
    _, err = await rating_fails(
        "nas", "set", "192.0.2.9", "--grace-s", "60", *target, key=tenant.key
    )
    assert "INVALID_ARGUMENT: secret: is required for a new client" in err
    code, err = await rating_fails(
        "nas", "set", "192.0.2.1", "--grace-s", "-1", *target, key=tenant.key
    )
    assert code == 2
    assert "--grace-s" in err
    assert "out of range" in err


async def test_nas_set_changes_only_the_options_given_when_run_from_the_cli(
    server: RunningServer, tenant: TenantCtx
) -> None:
    target = ("--target", server.target)

    async def nas_set(*args: str) -> dict[str, Any]:
        # RATING_NAS_SECRET empty: a secret in the caller's environment would be sent too.
        code, out, err = await rating_run(
            "nas", "set", "192.0.2.1", *args, *target, key=tenant.key, RATING_NAS_SECRET=""
        )
        assert code == 0, err
        row: dict[str, Any] = json.loads(out)
        return row

    # A new client with some options: the address as NAS key, the defaults for the rest.
    first = {
        "source_address": "192.0.2.1",
        "nas": "192.0.2.1",
        "swap_direction": False,
        "infer_wrap": False,
        "interim_interval_s": 600,
        "stale_multiplier": 3,
        "grace_s": 90,
        "clock_skew_tolerance_s": 300,
    }
    assert await nas_set("--secret", "s1", "--grace-s", "90") == first
    configured = await nas_set(
        "--nas-key", "bng-1", "--swap-direction", "--infer-wrap", "--interim-interval-s", "60",
        "--stale-multiplier", "4", "--grace-s", "120", "--clock-skew-tolerance-s", "30",
    )  # fmt: skip
    assert configured == {
        "source_address": "192.0.2.1",
        "nas": "bng-1",
        "swap_direction": True,
        "infer_wrap": True,
        "interim_interval_s": 60,
        "stale_multiplier": 4,
        "grace_s": 120,
        "clock_skew_tolerance_s": 30,
    }
    # One option changes that option alone, flags included (--no-...), and 0 is the default
    # but for the grace, where it is none.
    changes: list[tuple[list[str], dict[str, Any]]] = [
        (["--grace-s", "45"], {"grace_s": 45}),
        (["--no-swap-direction"], {"swap_direction": False}),
        (["--stale-multiplier", "0"], {"stale_multiplier": 3}),
        (["--grace-s", "0"], {"grace_s": 0}),
        (["--secret", "s2"], {}),
    ]
    for args, changed in changes:
        configured |= changed
        assert await nas_set(*args) == configured, args
    assert configured["nas"] == "bng-1"
    listed = await rating("nas", "list", "--json", *target, key=tenant.key)
    assert {n["nas"]: n["interim_interval_s"] for n in listed} == {"192.0.2.1": 600, "bng-1": 60}
    async with server.db.read() as session:
        assert (await repo.nas_secrets(session, tenant.tenant_id))["192.0.2.1"] == b"s2"
    # The secret from the environment counts as given; an empty one does not.
    code, out, err = await rating_run(
        "nas", "set", "192.0.2.1", *target, key=tenant.key, RATING_NAS_SECRET="s3"
    )
    assert (code, json.loads(out)) == (0, configured), err
    async with server.db.read() as session:
        assert (await repo.nas_secrets(session, tenant.tenant_id))["192.0.2.1"] == b"s3"
    code, err = await rating_fails(
        "nas", "set", "192.0.2.1", *target, key=tenant.key, RATING_NAS_SECRET=""
    )
    assert (code, err.strip()) == (
        1,
        "rating nas set: nothing to set: give --secret (or RATING_NAS_SECRET), --nas-key or a"
        " policy option (--help lists them)",
    )
    # --nas-key '' points the client back at its address, whose policy is the one set first.
    assert await nas_set("--nas-key", "") == first


@pytest.mark.parametrize("nas_key", ["bng-1", ""], ids=["nas-identifier", "address"])
async def test_replay_keeps_client_and_policy_when_the_nas_was_configured_before(
    usage: Usage, nas_key: str, tmp_path: Path
) -> None:
    source = "192.0.2.1"
    await usage.register_nas(
        source, "old-secret", nas_key=nas_key, swap_direction=True, interim_interval_s=60
    )
    recs = [
        Rec(START, nas=nas_key, source=source, t=0, session_time=0),
        Rec(INTERIM, nas=nas_key, source=source, t=600, session_time=600, inp=10, out=20),
    ]
    path = tmp_path / "configured.pcap"
    path.write_bytes(pcap(recs, "testing123"))
    summary = await cli.replay(usage.stub, usage.metadata, path, "testing123")
    # The new secret was set (the packets verified), nothing else changed.
    assert (summary["accepted"], summary["quarantined"]) == (2, 0)
    nases = {n.nas_key: n for n in await usage.nas_list()}
    key = nas_key or source
    assert (nases[key].swap_direction, nases[key].interim_interval_s) == (True, 60)
    assert nas_key == "" or source not in nases  # the client still points at its NAS key
    session = await usage.session(nas=key)
    assert (session.input_bytes, session.output_bytes) == (20, 10)  # swapped


async def test_replay_sends_the_complete_records_when_the_capture_ends_inside_one(
    usage: Usage, tmp_path: Path, server: RunningServer
) -> None:
    recs = [
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=10, out=20),
        Rec(INTERIM, t=1200, session_time=1200, inp=30, out=40),
    ]
    data = pcap(recs)
    killed = tmp_path / "killed.pcap"
    killed.write_bytes(data[:-5])  # a capture killed while writing its last record
    summary = await cli.replay(usage.stub, usage.metadata, killed, SECRET)
    assert (summary["accepted"], summary["truncated"]) == (2, 1)
    assert (await usage.session()).input_bytes == 10
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: len(data) - 1])
    code, out, err = await rating_run(
        "replay", str(path), "--secret", SECRET, "--json", "--target", server.target,
        key=usage.tenant.key,
    )  # fmt: skip
    # Exit 1: a record of the file was not stored (the operator has to look at it).
    assert code == 1, err
    assert json.loads(out) == {
        "records": 2,
        "accepted": 0,
        "duplicate": 2,
        "late": 0,
        "quarantined": 0,
        "truncated": 1,
        "incomplete_datagrams": 0,
    }
    assert "ends inside the record" in err
    assert "Traceback" not in err


async def test_sweep_closes_stale_sessions_when_run_from_the_cli(
    usage: Usage, server: RunningServer
) -> None:
    await usage.send("decoded", Rec(START, t=0, session_time=0))
    target = ("--target", server.target)
    assert await rating(
        "sweep", "--as-of", "2024-03-01T09:00:00+00:00", *target, key=usage.tenant.key
    ) == {"closed": 0}
    assert await rating(
        "sweep", "--as-of", "2030-01-01T00:00:00Z", *target, key=usage.tenant.key
    ) == {"closed": 1}
