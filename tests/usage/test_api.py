"""UsageService RPCs over a real channel: golden packet, acks, queries, metered usage, tenants."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import func, select

import rating_core
from isp_rating.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    revenue_pb2,
    revenue_pb2_grpc,
    usage_pb2_grpc,
)
from isp_rating.v1 import usage_pb2 as pb
from isp_rating.v1.common_pb2 import Money
from server.usage import repository as repo
from server.usage import service, servicer
from server.usage.models import (
    CLOCK_SKEW_FLAG,
    LedgerEntry,
    UnattributedBucket,
    UsageBucket,
    UsageNas,
    UsageNasClient,
)
from tests.conftest import RunningServer, TenantCtx, new_tenant
from tests.usage.support import (
    INTERIM,
    ON,
    SECRET,
    SOURCE,
    START,
    STOP,
    Rec,
    Usage,
    at,
    batch,
    counts,
    decoded,
    radius_attributes,
    radius_packet,
    raw,
    raw_packet,
    ts,
    utc,
)

GOLDEN = bytes.fromhex(
    "042a005bc0468ee46f4d6f5bdd5eb5ca28d854262806000000032c0a30303030303031410107616c6963650406"
    "c00002012e0600000e102a06000003e83406000000012b06ffffffff35060000000237066553ff10290600000000"
)
GOLDEN_AT = dt.datetime.fromtimestamp(1700003600, dt.UTC)


async def expect_status(call: object, code: grpc.StatusCode, text: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    assert text in (caught.value.details() or "")


async def test_golden_packet_decodes_to_64_bit_totals_when_sent_raw(usage: Usage) -> None:
    await usage.register_nas("192.0.2.1", "testing123")
    (ack,) = await usage.stream(batch([raw_packet(GOLDEN, "192.0.2.1", GOLDEN_AT)]))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session("0000001A", "192.0.2.1")
    assert (session.input_bytes, session.output_bytes) == (4_294_968_296, 12_884_901_887)
    assert session.user_name == "alice"
    assert session.session_time_s == 3600
    assert "lost_start" in session.flags


async def test_decoded_copy_is_duplicate_when_golden_packet_was_accepted_raw(usage: Usage) -> None:
    await usage.register_nas("192.0.2.1", "testing123")
    await usage.stream(batch([raw_packet(GOLDEN, "192.0.2.1", GOLDEN_AT)]))
    record = pb.AccountingRecord(
        status_type=pb.ACCT_STATUS_TYPE_INTERIM_UPDATE,
        acct_session_id="0000001A",
        user_name="alice",
        nas_ip_address="192.0.2.1",
        source_address="192.0.2.1",
        input_octets=1000,
        input_gigawords=1,
        output_octets=4294967295,
        output_gigawords=2,
        session_time_s=3600,
        event_timestamp=ts(GOLDEN_AT),
        delay_time_s=4,
        arrival_time=ts(GOLDEN_AT + dt.timedelta(seconds=4)),
    )
    (ack,) = await usage.stream(batch([pb.AccountingEntry(decoded=record)]))
    assert counts(ack) == (0, 1, 0, 0)


async def test_golden_packet_is_answered_in_the_ack_with_its_accounting_response(
    usage: Usage,
) -> None:
    await usage.register_nas("192.0.2.1", "testing123")
    (ack,) = await usage.stream(batch([raw_packet(GOLDEN, "192.0.2.1", GOLDEN_AT)]))
    assert [(r.index, r.packet.hex()) for r in ack.responses] == [
        (0, "052a0014d9e4d3c16591d8cceb1ac30dfbb7658c")  # RADIUS.md
    ]


def _answers(request: bytes, response: bytes, secret: str = SECRET) -> bool:
    """Whether `response` is the Accounting-Response to `request` (RFC 2866 section 3)."""
    header = bytes([5, request[1], 0, 20])
    digest = hashlib.md5(header + request[4:20] + secret.encode()).digest()  # noqa: S324
    return response == header + digest


async def test_each_recorded_raw_entry_is_answered_and_a_quarantined_one_is_not(
    usage: Usage,
) -> None:
    await usage.register_nas()
    newer = Rec(INTERIM, t=1200, session_time=1200, inp=20, out=20)
    older = Rec(INTERIM, t=600, session_time=600, inp=10, out=10)
    sent = [
        (newer, SECRET),  # accepted
        (newer, SECRET),  # a retransmit (a new identifier): duplicate
        (older, SECRET),  # late
        (older, "wrong"),  # bad authenticator
        (Rec(9, t=600), SECRET),  # Tunnel-Start: not session accounting
    ]
    packets = [radius_packet(radius_attributes(rec), secret) for rec, secret in sent]
    items = [decoded(Rec(INTERIM, sid="other", t=600, session_time=600, inp=1, out=1))]
    items += [
        raw_packet(p, SOURCE, rec.arrival_at) for p, (rec, _) in zip(packets, sent, strict=True)
    ]
    ack = await usage.send_raw(*items)
    assert counts(ack) == (2, 1, 1, 2)
    assert [r.index for r in ack.quarantined_records] == [4, 5]
    assert [r.index for r in ack.responses] == [1, 2, 3]
    for r in ack.responses:
        assert _answers(packets[r.index - 1], r.packet)
    # The NAS resends the first request: recorded already, answered again.
    (again,) = await usage.stream(batch([raw_packet(packets[0], SOURCE, newer.arrival_at)]))
    assert counts(again) == (0, 1, 0, 0)
    assert [r.index for r in again.responses] == [0]
    assert _answers(packets[0], again.responses[0].packet)


async def test_a_resent_request_only_the_ledger_remembers_is_a_duplicate_and_answered(
    usage: Usage, replica: Usage
) -> None:
    # A replica's engine does not remember the NAS's Accounting-On: the ledger does, so the
    # batch is re-run without it (a duplicate) and the request is still answered.
    on = Rec(ON, t=100)
    packet = radius_packet(radius_attributes(on))
    first = await usage.send_raw(raw_packet(packet, SOURCE, on.arrival_at))
    assert counts(first) == (1, 0, 0, 0)
    resent = await replica.send_raw(
        decoded(Rec(INTERIM, sid="other", t=120, session_time=20, inp=1, out=1)),
        raw_packet(packet, SOURCE, on.arrival_at + dt.timedelta(seconds=3)),
    )
    assert counts(resent) == (1, 1, 0, 0)
    assert [r.index for r in resent.responses] == [1]
    assert _answers(packet, resent.responses[0].packet)


async def test_skew_tolerance_set_through_one_replica_decides_the_next_record_on_another(
    usage: Usage, replica: Usage
) -> None:
    """The other replica's cached config is older than the NAS row it locks: the batch is
    decoded again with the row's tolerance (as a rebuild decodes it), not the cached one."""
    await replica.send("decoded", Rec(START, sid="s1", t=0))  # caches the default (300 s)
    await usage.register_nas(nas_key="nas-1", clock_skew_tolerance_s=30)
    # The NAS clock is 100 s fast: trusted under 300 s, skewed under 30 s.
    late = Rec(INTERIM, sid="s1", t=3500, session_time=3500, inp=10, out=20, skew_s=100)
    assert counts(await replica.send("decoded", late)) == (1, 0, 0, 0)
    (session,) = await replica.sessions()
    assert (session.generation, session.input_bytes, session.output_bytes) == (1, 10, 20)
    assert "clock_skew" in session.flags
    assert utc(session.start_at) == at(0)


async def test_secret_set_through_one_replica_authenticates_the_next_request_on_another(
    usage: Usage, replica: Usage
) -> None:
    await replica.send("raw", Rec(START, sid="s1", t=0))  # caches the secrets it knows
    await usage.register_nas("192.0.2.77", "fresh-secret")
    rec = Rec(INTERIM, sid="s2", nas="", source="192.0.2.77", t=600, session_time=600, inp=5)
    ack = await replica.send_raw(raw(rec, secret="fresh-secret"))
    assert counts(ack) == (1, 0, 0, 0)
    assert [r.index for r in ack.responses] == [0]
    # Another client at once: within the second in which the replica refreshed for the
    # first (a refresh for a changed secret waits that long), it looks the address up.
    await usage.register_nas("192.0.2.78", "other-secret")
    rec = rec.but(sid="s3", source="192.0.2.78")
    assert counts(await replica.send_raw(raw(rec, secret="other-secret"))) == (1, 0, 0, 0)


def _large_batch(nases: list[str], lap: int, per_nas: int) -> pb.StreamAccountingRequest:
    return batch([
        decoded(Rec(
            INTERIM, sid=f"s{i}", nas=nas, user=f"u{i}", t=600 * lap, session_time=600 * lap,
            inp=1000 * lap, out=2000 * lap,
        ))
        for nas in nases
        for i in range(per_nas)
    ])  # fmt: skip


async def test_large_batches_on_shared_nases_through_two_replicas_are_all_acknowledged(
    usage: Usage, replica: Usage
) -> None:
    """A large batch on PostgreSQL is written by one transaction per group of its NASes.
    Groups that locked their NASes at once, out of key order ([a, c] and [b, d] against
    [b] and [c]), let two replicas wait on each other through a transaction idle in
    Python, a cycle PostgreSQL never detects: both hung. Locks now follow key order."""
    for lap in range(1, 9):
        first, second = await asyncio.wait_for(
            asyncio.gather(
                usage.stream(_large_batch(["a", "b", "c", "d"], lap, 550)),
                replica.stream(_large_batch(["b", "c"], lap + 1000, 1100)),
            ),
            timeout=60,
        )
        assert sum(counts(first[0])) == sum(counts(second[0])) == 2200
    by_nas = {s.nas_key: s for s in await usage.sessions(user_name="u0")}
    assert (by_nas["a"].input_bytes, by_nas["d"].output_bytes) == (8000, 16000)


async def test_decoded_records_get_no_accounting_response(usage: Usage) -> None:
    ack = await usage.send("decoded", Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    assert counts(ack) == (1, 0, 0, 0)
    assert not ack.responses


async def test_raw_packet_is_quarantined_when_its_source_has_no_secret(usage: Usage) -> None:
    (ack,) = await usage.stream(batch([raw_packet(GOLDEN, "192.0.2.99", GOLDEN_AT)]))
    assert counts(ack) == (0, 0, 0, 1)
    assert "secret" in ack.quarantined_records[0].reason


async def test_ack_follows_commit_when_batch_is_acknowledged(
    usage: Usage, server: RunningServer
) -> None:
    recs = [Rec(INTERIM, sid=f"s{i}", t=600, session_time=600, inp=i, out=i) for i in range(50)]
    (ack,) = await usage.stream(batch([decoded(rec) for rec in recs]))
    assert ack.accepted == 50
    # A separate connection sees every acknowledged record: the ack came after the commit.
    async with server.db.read() as session:
        rows = await session.execute(
            select(func.count()).where(LedgerEntry.tenant_id == usage.tenant.tenant_id)
        )
    assert rows.scalar() == 50


async def test_resent_batch_is_applied_once_when_commit_failed_before_ack(
    usage: Usage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await usage.send("decoded", Rec(INTERIM, t=600, session_time=600, inp=100, out=100))
    failing = Rec(INTERIM, t=1200, session_time=1200, inp=300, out=500)

    async def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service, "write_projections", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.send("decoded", failing)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()
    # Nothing of the failed batch is durable, and the engine forgot its half-applied state.
    ack = await usage.send("decoded", failing)
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (300, 500)


@pytest.fixture
def sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch counts as large, and no earlier test's revenue call holds ingest back."""
    monkeypatch.setattr(service, "SHARD_MIN_RECORDS", 1)
    monkeypatch.setattr(service, "INTERACTIVE_QUIET_S", 0.0)


def _four_nas_batch(step: int) -> pb.StreamAccountingRequest:
    """Interim-Updates of 3 sessions on each of 4 NASes, cumulative counters at `step`."""
    recs = [
        Rec(INTERIM, sid=f"s{i}", nas=f"nas-{i % 4}", t=600 * step, session_time=600 * step,
            inp=1000 * step + i, out=5000 * step + i, user=f"u{i}")
        for i in range(12)
    ]  # fmt: skip
    return batch([decoded(rec) for rec in recs], f"four-{step}")


async def _ledger_count(server: RunningServer, usage: Usage) -> int:
    async with server.db.read() as session:
        rows = await session.execute(
            select(func.count()).where(LedgerEntry.tenant_id == usage.tenant.tenant_id)
        )
    return int(rows.scalar_one())


def _lock_groups(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the NAS keys each transaction of a batch locks."""
    groups: list[list[str]] = []
    lock_nas = service.repo.lock_nas

    async def spy(session: object, tenant_id: uuid.UUID, keys: list[str]) -> object:
        groups.append(sorted(keys))
        return await lock_nas(session, tenant_id, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(service.repo, "lock_nas", spy)
    return groups


@pytest.mark.usefixtures("sharded")
async def test_large_batch_is_written_by_one_transaction_per_nas_group_when_on_postgresql(
    usage: Usage, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = _lock_groups(monkeypatch)
    (first,) = await usage.stream(_four_nas_batch(1))
    (second,) = await usage.stream(_four_nas_batch(2))
    (again,) = await usage.stream(_four_nas_batch(2))
    if server.db.is_sqlite:  # one writer: one transaction
        assert groups == [["nas-0", "nas-1", "nas-2", "nas-3"]] * 3
    else:  # the default two groups: runs of the sorted keys, locked in that order
        assert groups == [["nas-0", "nas-1"], ["nas-2", "nas-3"]] * 3
    assert [counts(a) for a in (first, second, again)] == [
        (12, 0, 0, 0),
        (12, 0, 0, 0),
        (0, 12, 0, 0),
    ]
    assert await _ledger_count(server, usage) == 24
    sessions = {(s.nas_key, s.acct_session_id): s for s in await usage.sessions()}
    assert len(sessions) == 12
    for i in range(12):
        s = sessions[(f"nas-{i % 4}", f"s{i}")]
        assert (s.input_bytes, s.output_bytes, s.user_name) == (2000 + i, 10_000 + i, f"u{i}")


async def test_large_batch_takes_one_transaction_when_revenue_calls_are_being_served(
    usage: Usage, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "SHARD_MIN_RECORDS", 1)
    groups = _lock_groups(monkeypatch)
    revenue = revenue_pb2_grpc.RevenueServiceStub(channel)
    await revenue.CheckDisputes(revenue_pb2.CheckDisputesRequest(), metadata=usage.metadata)
    (ack,) = await usage.stream(_four_nas_batch(1))
    assert counts(ack) == (12, 0, 0, 0)
    # Pedkai's reads keep a core: the batch did not fan out over several transactions.
    assert groups == [["nas-0", "nas-1", "nas-2", "nas-3"]]


@pytest.mark.usefixtures("sharded")
async def test_resend_counts_each_record_once_when_one_group_of_a_large_batch_failed(
    usage: Usage, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ack,) = await usage.stream(_four_nas_batch(1))
    assert counts(ack) == (12, 0, 0, 0)
    write = service.write_projections

    async def fails_on_nas_3(
        session: object, tenant_id: uuid.UUID, part: object, *args: Any, **kwargs: Any
    ) -> None:
        if "nas-3" in part.sessions[0].tolist():  # type: ignore[attr-defined]
            raise RuntimeError("disk on fire")
        await write(session, tenant_id, part, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "write_projections", fails_on_nas_3)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.stream(_four_nas_batch(2))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    # The failed group (nas-2, nas-3) left nothing; on PostgreSQL the other group (nas-0,
    # nas-1) committed on its own: its NASes' ledger rows and sessions are whole.
    durable = set() if server.db.is_sqlite else {0, 1}
    assert await _ledger_count(server, usage) == 12 + 3 * len(durable)
    expected = {(f"s{i}", (2000 if i % 4 in durable else 1000) + i) for i in range(12)}
    assert {(s.acct_session_id, s.input_bytes) for s in await usage.sessions()} == expected
    monkeypatch.setattr(service, "write_projections", write)
    (resent,) = await usage.stream(_four_nas_batch(2))
    assert counts(resent) == (12 - 3 * len(durable), 3 * len(durable), 0, 0)
    assert await _ledger_count(server, usage) == 24
    assert {s.input_bytes for s in await usage.sessions()} == {2000 + i for i in range(12)}


@pytest.mark.parametrize("batch_id", ["b" * 201, "with\0nul"])
async def test_batch_is_refused_naming_batch_id_when_no_ledger_row_could_keep_it(
    usage: Usage, batch_id: str
) -> None:
    """The ledger keeps each record's batch id (200 characters, no NUL): on PostgreSQL a
    longer one failed the batch as an internal error."""
    rec = Rec(INTERIM, t=600, session_time=600, inp=1, out=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.stream(batch([decoded(rec)], batch_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("batch_id:")
    assert await usage.sessions() == []
    (ack,) = await usage.stream(batch([decoded(rec)], "b" * 200))
    assert counts(ack) == (1, 0, 0, 0)


def _starts(nases: int, per_nas: int) -> list[Rec]:
    return [
        Rec(START, sid=f"s{n}-{i}", nas=f"nas-{n}", t=0, user=f"u{n}-{i}")
        for n in range(nases)
        for i in range(per_nas)
    ]


@pytest.mark.usefixtures("sharded")
async def test_resent_starts_of_many_nases_are_duplicates_when_every_group_finds_them(
    usage: Usage,
) -> None:
    """Each group that finds accepted records in the ledger asks for a re-run without them;
    one group's at a time, a batch on 8 NASes ran out of attempts on every resend."""
    starts = _starts(8, 3)
    first = batch([decoded(r) for r in starts], "starts")
    assert counts((await usage.stream(first))[0]) == (24, 0, 0, 0)
    # After an Interim each, a Start is no longer its session's last record: only the
    # ledger knows it, in every group.
    interims = [r.but(status=INTERIM, t=600, session_time=600, inp=1, out=1) for r in starts]
    await usage.stream(batch([decoded(r) for r in interims]))
    (again,) = await usage.stream(first)
    assert counts(again) == (0, 24, 0, 0)


@pytest.mark.usefixtures("sharded")
async def test_ack_counts_what_this_batch_recorded_when_another_group_made_it_run_again(
    usage: Usage, server: RunningServer
) -> None:
    """A group commits on its own; when another group's repeat makes the batch run again,
    the rerun finds the first group's records in the ledger, but this batch recorded them:
    they are accepted, not duplicates."""
    old = Rec(START, sid="old", nas="nas-0", t=0)
    await usage.send("decoded", old, old.but(status=INTERIM, t=600, session_time=600, inp=5))
    starts = _starts(8, 3)
    await usage.stream(batch([decoded(r) for r in starts]))
    interims = [r.but(status=INTERIM, t=600, session_time=600, inp=7, out=9) for r in starts]
    (ack,) = await usage.stream(batch([decoded(old)] + [decoded(r) for r in interims]))
    assert counts(ack) == (24, 1, 0, 0)
    sessions = [s for s in await usage.sessions() if s.acct_session_id != "old"]
    assert sorted((s.input_bytes, s.output_bytes) for s in sessions) == [(7, 9)] * 24
    (resent,) = await usage.stream(batch([decoded(old)] + [decoded(r) for r in interims]))
    assert counts(resent) == (0, 25, 0, 0)


async def test_tenants_see_only_their_own_usage_when_both_send_the_same_record(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    other = Usage(channel, await new_tenant(server.db))
    rec = Rec(INTERIM, t=600, session_time=600, inp=1, out=2)
    assert counts(await usage.send("decoded", rec)) == (1, 0, 0, 0)
    assert await other.sessions() == []
    mine = await usage.session()
    await expect_status(
        other.stub.GetSession(pb.GetSessionRequest(id=mine.id), metadata=other.metadata),
        grpc.StatusCode.NOT_FOUND,
    )
    assert counts(await other.send("decoded", rec)) == (1, 0, 0, 0)


async def test_streaming_is_refused_when_key_lacks_usage_write(
    channel: grpc.aio.Channel, server: RunningServer
) -> None:
    reader = Usage(channel, await new_tenant(server.db, ["usage:read"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reader.send("decoded", Rec(INTERIM, t=1, session_time=1, inp=1, out=1))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sessions_filter_and_page_when_many_exist(usage: Usage) -> None:
    await usage.send(
        "decoded",
        *[Rec(START, sid=f"s{i}", t=i, user="ann" if i % 2 else "ben") for i in range(5)],
        Rec(START, sid="x", nas="nas-2", t=9, user="ann"),
        Rec(STOP, sid="s4", t=20, session_time=16, inp=1, out=1),
    )
    first = await usage.stub.ListSessions(
        pb.ListSessionsRequest(page_size=2), metadata=usage.metadata
    )
    assert len(first.sessions) == 2
    assert first.next_page_token
    assert first.sessions[0].acct_session_id == "x"  # newest first
    everything = await usage.sessions()
    assert len(everything) == 6
    assert len({s.id for s in everything}) == 6
    assert {s.acct_session_id for s in await usage.sessions(user_name="ann")} == {"s1", "s3", "x"}
    assert {s.acct_session_id for s in await usage.sessions(nas_key="nas-2")} == {"x"}
    assert "s4" not in {s.acct_session_id for s in await usage.sessions(open_only=True)}
    one = await usage.stub.GetSession(
        pb.GetSessionRequest(id=everything[3].id), metadata=usage.metadata
    )
    assert one == everything[3]


async def test_a_page_token_is_refused_with_filters_other_than_its_own(usage: Usage) -> None:
    await usage.send(
        "decoded",
        *[Rec(START, sid=f"s{i}", t=i, user="ann" if i % 2 else "ben") for i in range(6)],
        Rec(START, sid="x", nas="nas-2", t=9, user="ann"),
    )
    ann = pb.ListSessionsRequest(user_name="ann", page_size=1)
    first = await usage.stub.ListSessions(ann, metadata=usage.metadata)
    assert [s.acct_session_id for s in first.sessions] == ["x"]
    token = first.next_page_token
    # Resumed with another filter, the token would page from ann's place through ben's list.
    for other in (
        pb.ListSessionsRequest(user_name="ben"),
        pb.ListSessionsRequest(),
        pb.ListSessionsRequest(user_name="ann", nas_key="nas-1"),
        pb.ListSessionsRequest(user_name="ann", open_only=True),
    ):
        other.page_token = token
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await usage.stub.ListSessions(other, metadata=usage.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            "page_token: was issued for other filters: list again from the first page"
        )
    # The same filters, however the page size changes, go on from the token's place.
    ann.page_token, ann.page_size = token, 10
    rest = await usage.stub.ListSessions(ann, metadata=usage.metadata)
    assert [s.acct_session_id for s in rest.sessions] == ["s5", "s3", "s1"]

    nas = await usage.stub.ListNas(pb.ListNasRequest(page_size=1), metadata=usage.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.stub.ListNas(
            pb.ListNasRequest(page_token=nas.next_page_token, flagged_only=True),
            metadata=usage.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_address_keyed_nas_is_named_however_a_filter_or_policy_writes_it(
    usage: Usage,
) -> None:
    # The core keys a NAS by RFC 5952 text (its source address, NAS-IPv6-Address, or a
    # NAS-Identifier that is an address); a filter or a policy may write it another way.
    await usage.send("decoded", Rec(START, sid="v6", nas="", source="2001:db8::7", t=0))
    await usage.send("decoded", Rec(START, sid="name", nas="2001:DB8:0:0:0:0:0:7", t=1))
    for written in ("2001:DB8:0:0:0:0:0:7", "[2001:db8::7]:1813", "2001:db8::7"):
        found = await usage.sessions(nas_key=written)
        assert {(s.nas_key, s.acct_session_id) for s in found} == {
            ("2001:db8::7", "v6"),
            ("2001:db8::7", "name"),
        }
    client = await usage.register_nas(
        source="2001:db8::7", nas_key="2001:DB8::7", interim_interval_s=60, stale_multiplier=1,
        grace_s=1,
    )  # fmt: skip
    assert client.nas_key == "2001:db8::7"
    # The policy is the NAS's: 61 s of silence make its sessions stale.
    assert await usage.sweep(at(1 + 62)) == 2


async def test_get_session_finds_the_instance_when_its_key_holds_separator_bytes(
    usage: Usage, form: str
) -> None:
    # RADIUS strings may hold any byte: 0x1f (the id's separator) and 0x1b (its escape).
    await usage.send(
        form,
        Rec(START, sid="a\x1fb", nas="bng\x1f1", t=1),
        Rec(START, sid="a", nas="bng", t=2),
        Rec(START, sid="x\x1b_\x1b", nas="bng\x1b", t=3),
    )
    listed = await usage.sessions()
    assert len({s.id for s in listed}) == 3
    for listed_session in listed:
        got = await usage.stub.GetSession(
            pb.GetSessionRequest(id=listed_session.id), metadata=usage.metadata
        )
        assert got == listed_session
    assert {(s.nas_key, s.acct_session_id) for s in listed} == {
        ("bng\x1f1", "a\x1fb"),
        ("bng", "a"),
        ("bng\x1b", "x\x1b_\x1b"),
    }
    # An ordinary key's id is what it always was (ids already handed out keep working).
    plain = next(s for s in listed if s.acct_session_id == "a")
    assert plain.id == base64.urlsafe_b64encode(b"bng\x1fa\x1f1").decode().rstrip("=")


async def test_get_session_names_the_field_when_id_is_malformed(usage: Usage) -> None:
    await expect_status(
        usage.stub.GetSession(pb.GetSessionRequest(id="!!"), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id",
    )
    await expect_status(
        usage.stub.ListSessions(pb.ListSessionsRequest(page_token="nope"), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )


async def test_get_session_refuses_another_spelling_of_an_instances_id(
    usage: Usage, form: str
) -> None:
    await usage.send(form, Rec(START, t=1))
    (listed,) = await usage.sessions()
    own = base64.urlsafe_b64encode(b"nas-1\x1fsess-1\x1f1").decode().rstrip("=")
    assert listed.id == own
    # One instance, one id: a generation written "01", or characters the base64 decoder
    # skips, spell the same key, but are not an id the server gave.
    for other in (
        base64.urlsafe_b64encode(b"nas-1\x1fsess-1\x1f01").decode(),
        own[:4] + "." + own[4:],
    ):
        await expect_status(
            usage.stub.GetSession(pb.GetSessionRequest(id=other), metadata=usage.metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        )
    padded = await usage.stub.GetSession(
        pb.GetSessionRequest(id=own + "=" * (-len(own) % 4)), metadata=usage.metadata
    )
    assert padded == listed


async def test_nas_client_is_refused_with_field_when_input_is_bad(usage: Usage) -> None:
    await expect_status(
        usage.stub.UpsertNasClient(
            pb.UpsertNasClientRequest(source_address="not-an-ip", secret="x"),
            metadata=usage.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source_address",
    )
    await expect_status(
        usage.stub.UpsertNasClient(
            pb.UpsertNasClientRequest(source_address="203.0.113.9"), metadata=usage.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "secret",
    )
    for nas_key in ("bng\0", "n" * 254):
        await expect_status(
            usage.stub.UpsertNasClient(
                pb.UpsertNasClientRequest(
                    source_address="203.0.113.9", secret="x", nas_key=nas_key
                ),
                metadata=usage.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nas_key:",
        )
    client = await usage.register_nas("203.0.113.9", "k", grace_s=60)
    assert (client.nas_key, client.grace_s, client.interim_interval_s) == ("203.0.113.9", 60, 600)


@pytest.mark.parametrize("field", ["user_name", "nas_key"])
@pytest.mark.parametrize("value", ["a\0b", "x" * 254])
async def test_session_listing_is_refused_naming_the_filter_when_no_text_could_match_it(
    usage: Usage, field: str, value: str
) -> None:
    await expect_status(
        usage.stub.ListSessions(pb.ListSessionsRequest(**{field: value}), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}:",
    )


async def test_session_is_invalid_argument_when_its_id_holds_nul(usage: Usage) -> None:
    ident = base64.urlsafe_b64encode(b"nas\x00\x1fsid\x1f1").decode().rstrip("=")
    await expect_status(
        usage.stub.GetSession(pb.GetSessionRequest(id=ident), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id:",
    )


async def test_nas_client_writes_only_the_masked_fields_when_update_mask_names_some(
    usage: Usage,
) -> None:
    def upsert(**fields: Any) -> Any:
        return usage.stub.UpsertNasClient(
            pb.UpsertNasClientRequest(source_address="203.0.113.9", **fields),
            metadata=usage.metadata,
        )

    await usage.register_nas("203.0.113.9", "k", nas_key="bng-b", grace_s=60, infer_wrap=True)
    client = await upsert(grace_s=90, swap_direction=True, update_mask=FieldMask(paths=["grace_s"]))
    assert (client.nas_key, client.grace_s, client.infer_wrap) == ("bng-b", 90, True)
    assert not client.swap_direction  # not named: the stored value stays
    # A named grace left absent is the default; a present 0 is no grace.
    client = await upsert(update_mask=FieldMask(paths=["grace_s"]))
    assert client.grace_s == 300
    client = await upsert(grace_s=0, update_mask=FieldMask(paths=["grace_s"]))
    assert client.grace_s == 0
    client = await upsert(grace_s=90, update_mask=FieldMask(paths=["grace_s"]))
    client = await upsert(secret="k2", update_mask=FieldMask(paths=["secret"]))
    assert (client.nas_key, client.grace_s, client.infer_wrap) == ("bng-b", 90, True)
    # Naming nas_key points the client at another NAS, whose policy is its own.
    client = await upsert(nas_key="bng-c", update_mask=FieldMask(paths=["nas_key"]))
    assert (client.nas_key, client.grace_s, client.infer_wrap) == ("bng-c", 300, False)
    policies = {n.nas_key: (n.grace_s, n.infer_wrap) for n in await usage.nas_list()}
    assert policies["bng-b"] == (90, True)
    assert policies["bng-c"] == (300, False)
    # A new client named by its secret alone gets its address as NAS key, default policy.
    new = await usage.stub.UpsertNasClient(
        pb.UpsertNasClientRequest(
            source_address="203.0.113.10", secret="k", update_mask=FieldMask(paths=["secret"])
        ),
        metadata=usage.metadata,
    )
    assert (new.nas_key, new.grace_s, new.swap_direction) == ("203.0.113.10", 300, False)
    await expect_status(
        upsert(update_mask=FieldMask(paths=["secret"])), grpc.StatusCode.INVALID_ARGUMENT, "secret"
    )
    await expect_status(
        upsert(secret="k", update_mask=FieldMask(paths=["source_address"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "update_mask",
    )


def _upsert(address: str, paths: list[str], **fields: Any) -> pb.UpsertNasClientRequest:
    return pb.UpsertNasClientRequest(
        source_address=address, update_mask=FieldMask(paths=paths), **fields
    )


async def test_racing_first_writes_keep_each_others_fields_when_their_masks_differ(
    server: RunningServer, tenant: TenantCtx
) -> None:
    """Two UpsertNasClient calls for a client and NAS that do not exist yet, sent at once over
    two channels with different masks: whichever commits first, the other keeps its fields."""
    expected = (True, True, 600, 3, 300, 300)  # both flags set, the rest the defaults
    async with (
        grpc.aio.insecure_channel(server.target) as one,
        grpc.aio.insecure_channel(server.target) as two,
    ):
        stubs = (usage_pb2_grpc.UsageServiceStub(one), usage_pb2_grpc.UsageServiceStub(two))

        async def at_once(*requests: pb.UpsertNasClientRequest) -> None:
            await asyncio.gather(
                *(
                    stub.UpsertNasClient(request, metadata=tenant.metadata)
                    for stub, request in zip(stubs, requests, strict=True)
                )
            )

        for n in range(5):
            # One names the NAS key, the other only the secret: the client is not repointed.
            await at_once(
                _upsert(f"198.51.100.{n}", ["secret", "nas_key"], secret="a", nas_key=f"bng-{n}"),
                _upsert(f"198.51.100.{n}", ["secret"], secret="b"),
            )
            # Each sets another flag of the new client's own NAS.
            await at_once(
                _upsert(f"198.51.100.{n + 10}", ["secret", "swap_direction"], secret="a",
                        swap_direction=True),
                _upsert(f"198.51.100.{n + 10}", ["secret", "infer_wrap"], secret="b",
                        infer_wrap=True),
            )  # fmt: skip
            # Two new clients point at one new NAS, each setting another flag.
            await at_once(
                _upsert(f"198.51.100.{n + 20}", ["secret", "nas_key", "swap_direction"],
                        secret="a", nas_key=f"shared-{n}", swap_direction=True),
                _upsert(f"198.51.100.{n + 30}", ["secret", "nas_key", "infer_wrap"],
                        secret="b", nas_key=f"shared-{n}", infer_wrap=True),
            )  # fmt: skip

    tenant_id = tenant.tenant_id
    async with server.db.read() as session:
        client_rows = await session.execute(
            select(UsageNasClient.source_address, UsageNasClient.nas_key).where(
                UsageNasClient.tenant_id == tenant_id
            )
        )
        clients = dict(client_rows.all())
        nas_rows = await session.execute(
            select(UsageNas.nas_key, UsageNas.seq).where(UsageNas.tenant_id == tenant_id)
        )
        seqs = dict(nas_rows.all())
        policies = await repo.nas_policies(session, tenant_id)
        secrets = await repo.nas_secrets(session, tenant_id)
        histories = {
            key: await repo.policy_history(session, tenant_id, key)
            for key in (
                *(f"198.51.100.{n + 10}" for n in range(5)),
                *(f"shared-{n}" for n in range(5)),
            )
        }
    for n in range(5):
        assert clients[f"198.51.100.{n}"] == f"bng-{n}"
        assert policies[f"bng-{n}"] == repo.DEFAULT_POLICY
        assert clients[f"198.51.100.{n + 20}"] == clients[f"198.51.100.{n + 30}"] == f"shared-{n}"
    assert set(secrets.values()) <= {b"a", b"b"}
    for key, history in histories.items():
        assert policies[key] == expected, key
        # Each change took a NAS sequence number of its own and was recorded: the first
        # with one flag, the second with both (rebuild replays batches with these).
        assert [seq for seq, _ in history] == [1, 2], key
        assert sorted(sum(policy[:2]) for _, policy in history) == [1, 2], key
        assert history[-1][1] == expected, key
        assert seqs[key] == 2, key


async def test_nas_list_pages_by_key_with_policy_when_several_nases_exist(usage: Usage) -> None:
    await usage.register_nas("203.0.113.9", "k", nas_key="bng-b", grace_s=60, infer_wrap=True)
    await usage.send(
        "decoded", Rec(START, nas="bng-c", t=1), Rec(START, nas="bng-a", sid="s2", t=2)
    )
    # The fixture registered its source address (a NAS key of its own) first.
    first = await usage.stub.ListNas(pb.ListNasRequest(page_size=2), metadata=usage.metadata)
    assert [n.nas_key for n in first.nas] == [SOURCE, "bng-a"]
    assert first.next_page_token
    rest = await usage.stub.ListNas(
        pb.ListNasRequest(page_size=2, page_token=first.next_page_token), metadata=usage.metadata
    )
    assert [n.nas_key for n in rest.nas] == ["bng-b", "bng-c"]
    assert not rest.next_page_token
    configured = rest.nas[0]
    assert (configured.grace_s, configured.infer_wrap, configured.interim_interval_s) == (
        60,
        True,
        600,
    )
    assert await usage.nas_list(flagged_only=True) == []
    await expect_status(
        usage.stub.ListNas(pb.ListNasRequest(page_token="nope"), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )


def test_clock_skew_flag_of_the_nas_index_is_the_engine_bit() -> None:
    assert rating_core.flag_names(CLOCK_SKEW_FLAG) == ["clock_skew"]


async def test_sweep_names_the_field_when_as_of_is_missing(usage: Usage) -> None:
    await expect_status(
        usage.stub.SweepStaleSessions(pb.SweepStaleSessionsRequest(), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "as_of",
    )


def metered(key: str, **changes: object) -> pb.RecordUsageRequest:
    request = pb.RecordUsageRequest(
        idempotency_key=key,
        usage_type=pb.USAGE_TYPE_VOICE,
        quantity="12.5",
        unit="minutes",
        occurred_at=ts(at(0)),
        radius_user_name="nobody",
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


async def test_metered_usage_is_recorded_once_when_key_is_replayed(usage: Usage) -> None:
    first = await usage.stub.RecordUsage(metered("k1"), metadata=usage.metadata)
    again = await usage.stub.RecordUsage(metered("k1"), metadata=usage.metadata)
    assert not first.replayed
    assert again.replayed
    assert again.usage_id == first.usage_id
    assert first.subscription_id == ""
    await expect_status(
        usage.stub.RecordUsage(metered("k1", quantity="13"), metadata=usage.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
        "idempotency_key",
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"quantity": "-1"}, "quantity"),
        ({"quantity": "ten"}, "quantity"),
        ({"unit": ""}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_CUSTOM}, "custom_type"),
        ({"usage_type": 0}, "usage_type"),
        ({"subscription_id": "nope"}, "subscription_id"),
    ],
)
async def test_metered_usage_names_the_field_when_input_is_bad(
    usage: Usage, changes: dict[str, object], field: str
) -> None:
    await expect_status(
        usage.stub.RecordUsage(metered(uuid.uuid4().hex, **changes), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )


async def test_metered_usage_is_refused_when_subscription_is_unknown(usage: Usage) -> None:
    await expect_status(
        usage.stub.RecordUsage(
            metered("k2", subscription_id=str(uuid.uuid4())), metadata=usage.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def create_subscription(
    channel: grpc.aio.Channel, tenant: TenantCtx, identities: list[tuple[int, str]]
) -> accounts_pb2.Subscription:
    """A subscription (on a new customer and plan) holding the (kind, value) identities."""
    accounts = accounts_pb2_grpc.AccountServiceStub(channel)
    customer = await accounts.CreateCustomer(
        accounts_pb2.CreateCustomerRequest(customer=accounts_pb2.Customer(name="Ada")),
        metadata=tenant.metadata,
    )
    plan = await accounts.CreatePlan(
        accounts_pb2.CreatePlanRequest(
            plan=accounts_pb2.Plan(
                code=uuid.uuid4().hex[:8],
                name="Fibre",
                recurring_price=Money(currency_code="GBP", amount="30.00"),
                billing_period=accounts_pb2.BILLING_PERIOD_MONTHLY,
            )
        ),
        metadata=tenant.metadata,
    )
    return await accounts.CreateSubscription(
        accounts_pb2.CreateSubscriptionRequest(
            subscription=accounts_pb2.Subscription(
                customer_id=customer.id,
                plan_id=plan.id,
                radius_identities=[
                    accounts_pb2.RadiusIdentity(kind=kind, value=value)  # type: ignore[arg-type]
                    for kind, value in identities
                ],
            )
        ),
        metadata=tenant.metadata,
    )


async def subscribe(channel: grpc.aio.Channel, tenant: TenantCtx, **identities: str) -> str:
    kinds = {
        "user_name": accounts_pb2.RADIUS_IDENTITY_KIND_USER_NAME,
        "calling_station_id": accounts_pb2.RADIUS_IDENTITY_KIND_CALLING_STATION_ID,
        "static_ip": accounts_pb2.RADIUS_IDENTITY_KIND_STATIC_IP,
    }
    pairs = [(kinds[k], v) for k, v in identities.items()]
    return (await create_subscription(channel, tenant, pairs)).id


async def bucket_totals(server: RunningServer, tenant_id: uuid.UUID, sub: str) -> tuple[int, int]:
    async with server.db.read() as session:
        row = (
            await session.execute(
                select(
                    func.sum(UsageBucket.upload_bytes), func.sum(UsageBucket.download_bytes)
                ).where(
                    UsageBucket.tenant_id == tenant_id,
                    UsageBucket.subscription_id == uuid.UUID(sub),
                )
            )
        ).one()
    return int(row[0] or 0), int(row[1] or 0)


@pytest.mark.usefixtures("sharded")
async def test_groups_of_a_large_batch_add_to_one_bucket_when_a_subscription_uses_them_all(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    sub = await subscribe(channel, usage.tenant, user_name="shared")
    for step in (1, 2):
        recs = [
            Rec(INTERIM, sid=f"s{i}", nas=f"nas-{i}", user="shared", t=600 * step,
                session_time=600 * step, inp=10 * step * (i + 1), out=100 * step * (i + 1))
            for i in range(4)
        ]  # fmt: skip
        (ack,) = await usage.stream(batch([decoded(rec) for rec in recs]))
        assert counts(ack) == (4, 0, 0, 0)
    # Every group added its NASes' deltas to the same hourly row of the one subscription.
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (200, 2000)


async def test_usage_is_attributed_by_calling_station_when_user_name_is_unknown(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    sub = await subscribe(channel, usage.tenant, calling_station_id="AA-BB-CC-00-11-22")
    await usage.send(
        "raw",
        Rec(
            INTERIM, user="who", calling="aa-bb-cc-00-11-22", t=600, session_time=600, inp=7, out=9
        ),
    )
    assert (await usage.session()).subscription_id == sub
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (7, 9)


async def test_a_session_implied_to_begin_before_1970_is_stored_and_read_exactly(
    usage: Usage, form: str
) -> None:
    # No Event-Timestamp and the longest session time: the start, arrival - session time,
    # falls 136 years back, before 1970, with the arrival's fraction of a second.
    rec = Rec(INTERIM, event=False, t=0.25, session_time=2**32 - 1, inp=1, out=2)
    assert counts(await usage.send(form, rec)) == (1, 0, 0, 0)
    (session,) = await usage.sessions(user_name="alice")
    expected = rec.arrival_at - dt.timedelta(seconds=2**32 - 1)
    assert (expected.year < 1970, expected.microsecond) == (True, 250_000)
    assert utc(session.start_at) == expected
    again = await usage.stub.GetSession(
        pb.GetSessionRequest(id=session.id), metadata=usage.metadata
    )
    assert utc(again.start_at) == expected
    # Loaded again into an engine (a Stop after a restart reads the row back): no second
    # instance, and the session ends with its own start.
    stop = rec.but(status=STOP, t=60.25, session_time=2**32 - 1, inp=5, out=6, cause=1)
    await usage.send(form, stop)
    (closed,) = await usage.sessions()
    assert (closed.input_bytes, closed.output_bytes, utc(closed.start_at)) == (5, 6, expected)


async def test_identities_match_user_names_and_stations_sent_with_surrounding_spaces(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    """Subscribers type PPPoE user names with a trailing space; identities are registered
    without surrounding whitespace, so a session matches on its text without it: at once,
    and when the identity is registered later."""
    bob = await subscribe(channel, usage.tenant, user_name="bob")
    await usage.send(
        form,
        Rec(INTERIM, sid="s1", user="bob ", t=600, session_time=600, inp=1, out=10),
        Rec(INTERIM, sid="s2", user="  who", calling=" aa-bb-cc-00-11-22 ", t=600,
            session_time=600, inp=2, out=20),
    )  # fmt: skip
    station = await subscribe(channel, usage.tenant, calling_station_id="AA-BB-CC-00-11-22")
    sessions = {s.acct_session_id: s for s in await usage.sessions()}
    assert {k: s.subscription_id for k, s in sessions.items()} == {"s1": bob, "s2": station}
    assert sessions["s1"].user_name == "bob "  # stored as sent
    # A tab, as a space: what registration strips, matching ignores.
    await usage.send(form, Rec(INTERIM, sid="s3", user="bob\t", t=600, session_time=600,
                               inp=4, out=40))  # fmt: skip
    assert (await usage.session("s3")).subscription_id == bob
    tenant = usage.tenant.tenant_id
    assert await bucket_totals(server, tenant, bob) == (5, 50)
    assert await bucket_totals(server, tenant, station) == (2, 20)


async def test_a_user_name_of_white_space_only_leaves_the_name_to_a_later_record(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    """A Start whose User-Name is only spaces names nobody: the Interim that names the user
    (in the same batch or a later one) attributes the session."""
    carol = await subscribe(channel, usage.tenant, user_name="carol")
    await usage.send(
        form,
        Rec(START, sid="s1", user="   ", t=0),
        Rec(INTERIM, sid="s1", user="carol", t=600, session_time=600, inp=1, out=2),
    )
    await usage.send(form, Rec(START, sid="s2", user="  ", t=0))
    await usage.send(form, Rec(INTERIM, sid="s2", user="carol", t=600, session_time=600,
                               inp=3, out=4))  # fmt: skip
    sessions = {s.acct_session_id: s for s in await usage.sessions()}
    assert {k: (s.user_name, s.subscription_id) for k, s in sessions.items()} == {
        "s1": ("carol", carol), "s2": ("carol", carol)
    }  # fmt: skip
    assert await bucket_totals(server, usage.tenant.tenant_id, carol) == (4, 6)


async def test_user_name_wins_then_calling_station_then_static_ip_when_several_match(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    by_user = await subscribe(channel, usage.tenant, user_name="alice")
    by_station = await subscribe(channel, usage.tenant, calling_station_id="AA-BB-CC-00-11-22")
    by_ip = await subscribe(channel, usage.tenant, static_ip="100.64.0.9")
    both = {"calling": "AA-BB-CC-00-11-22", "framed": "100.64.0.9"}
    await usage.send(
        form,
        Rec(INTERIM, sid="s1", user="alice", t=600, session_time=600, inp=1, out=10, **both),
        Rec(INTERIM, sid="s2", user="nobody", t=600, session_time=600, inp=2, out=20, **both),
        Rec(INTERIM, sid="s3", user="nobody", framed="100.64.0.9", t=600, session_time=600,
            inp=3, out=30),
    )  # fmt: skip
    sessions = {s.acct_session_id: s for s in await usage.sessions()}
    assert {k: s.subscription_id for k, s in sessions.items()} == {
        "s1": by_user,
        "s2": by_station,
        "s3": by_ip,
    }
    # The identity each was attributed by is on the session.
    assert (sessions["s2"].calling_station_id, sessions["s2"].framed_ip_address) == (
        "AA-BB-CC-00-11-22",
        "100.64.0.9",
    )
    assert (sessions["s3"].calling_station_id, sessions["s3"].framed_ip_address) == (
        "",
        "100.64.0.9",
    )
    tenant = usage.tenant.tenant_id
    assert await bucket_totals(server, tenant, by_user) == (1, 10)
    assert await bucket_totals(server, tenant, by_station) == (2, 20)
    assert await bucket_totals(server, tenant, by_ip) == (3, 30)


async def test_a_user_name_after_a_start_outranks_its_calling_station_however_batches_split(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    """A Start (no usage) that carries only a Calling-Station-Id, then an Interim that names
    the user: the User-Name's subscription, in one batch or two (a session was attributed by
    the batch that first matched anything, and that stuck)."""
    by_user = await subscribe(channel, usage.tenant, user_name="alice")
    by_station = await subscribe(channel, usage.tenant, calling_station_id="AA-BB-CC-00-11-22")
    by_ip = await subscribe(channel, usage.tenant, static_ip="100.64.0.9")
    station = "aa-bb-cc-00-11-22"

    def records(sid: str, first: dict[str, str], then: dict[str, str]) -> tuple[Rec, Rec]:
        return (
            Rec(START, sid=sid, t=0, session_time=0, **{"user": "", **first}),
            Rec(INTERIM, sid=sid, t=600, session_time=600, inp=5, out=50,
                **{"user": "", **first, **then}),
        )  # fmt: skip

    await usage.send(form, *records("one", {"calling": station}, {"user": "alice"}))
    for rec in records("two", {"calling": station}, {"user": "alice"}):
        await usage.send(form, rec)
    for rec in records("ip", {"framed": "100.64.0.9"}, {"calling": station}):
        await usage.send(form, rec)
    # With usage counted, an attribution stays: its usage is not moved to the user.
    await usage.send(form, Rec(INTERIM, sid="used", user="", calling=station, t=600,
                               session_time=600, inp=7, out=70))  # fmt: skip
    await usage.send(form, Rec(INTERIM, sid="used", user="alice", calling=station, t=1200,
                               session_time=1200, inp=9, out=90))  # fmt: skip
    sessions = {s.acct_session_id: s.subscription_id for s in await usage.sessions()}
    assert sessions == {"one": by_user, "two": by_user, "ip": by_station, "used": by_station}
    tenant = usage.tenant.tenant_id
    assert await bucket_totals(server, tenant, by_user) == (10, 100)
    assert await bucket_totals(server, tenant, by_station) == (14, 140)
    assert await bucket_totals(server, tenant, by_ip) == (0, 0)


async def test_unattributed_usage_is_kept_then_moved_when_identity_is_registered(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    await usage.send_each(
        "decoded",
        Rec(INTERIM, user="carol", t=600, session_time=600, inp=100, out=200),
        Rec(INTERIM, user="carol", t=4200, session_time=4200, inp=150, out=260),
    )
    listed = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    assert [
        (u.user_name, u.input_bytes, u.output_bytes, u.session_count) for u in listed.usage
    ] == [("carol", 150, 260, 1)]
    sub = await subscribe(channel, usage.tenant, user_name="carol")
    assert (await usage.session()).subscription_id == sub
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (150, 260)
    empty = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    assert list(empty.usage) == []
    # Later deltas go straight to the subscription.
    await usage.send(
        "decoded", Rec(INTERIM, user="carol", t=7800, session_time=7800, inp=400, out=300)
    )
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (400, 300)


async def test_unattributed_usage_is_listed_once_per_identity_whatever_white_space_surrounds_it(
    usage: Usage, channel: grpc.aio.Channel, form: str
) -> None:
    # Registration strips an identity, and then matches each of these: one row to register.
    await usage.send(
        form,
        Rec(INTERIM, sid="s1", user="gx", t=600, session_time=600, inp=1, out=10),
        Rec(INTERIM, sid="s2", user=" gx ", t=600, session_time=600, inp=2, out=20),
        Rec(INTERIM, sid="s3", user="gx\t", t=600, session_time=600, inp=4, out=40),
        Rec(INTERIM, sid="s4", user="", calling=" aa-bb-cc-00-11-22", t=600, session_time=600,
            inp=8, out=80),
        Rec(INTERIM, sid="s5", user="", calling="aa-bb-cc-00-11-22 ", t=600, session_time=600,
            inp=16, out=160),
    )  # fmt: skip
    listed = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    rows = [
        (u.user_name, u.calling_station_id, u.input_bytes, u.output_bytes, u.session_count)
        for u in listed.usage
    ]
    assert rows == [("", "aa-bb-cc-00-11-22", 24, 240, 2), ("gx", "", 7, 70, 3)]
    # Paged one identity at a time, the same rows.
    request = pb.ListUnattributedUsageRequest(page_size=1)
    first = await usage.stub.ListUnattributedUsage(request, metadata=usage.metadata)
    request.page_token = first.next_page_token
    second = await usage.stub.ListUnattributedUsage(request, metadata=usage.metadata)
    assert [u.user_name for u in (*first.usage, *second.usage)] == ["", "gx"]
    assert not second.next_page_token
    await subscribe(channel, usage.tenant, user_name="gx")
    await subscribe(channel, usage.tenant, calling_station_id="AA-BB-CC-00-11-22")
    empty = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    assert list(empty.usage) == []


async def test_hourly_buckets_sum_to_session_total_when_session_spans_hours(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    sub = await subscribe(channel, usage.tenant, user_name="dora")
    await usage.send_each(
        "decoded",
        *[
            Rec(INTERIM, user="dora", t=600 * i, session_time=600 * i, inp=1000 * i, out=10 * i * i)
            for i in range(1, 13)
        ],
    )
    async with server.db.read() as session:
        rows = (
            await session.execute(
                select(UsageBucket.hour, UsageBucket.upload_bytes)
                .where(UsageBucket.tenant_id == usage.tenant.tenant_id)
                .order_by(UsageBucket.hour)
            )
        ).all()
    assert len(rows) == 3  # T0 + 10 min .. T0 + 2 h
    assert all(row[0].minute == 0 and row[0].tzinfo is not None for row in rows)
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (12_000, 1440)


async def test_identity_from_the_start_is_kept_when_later_records_omit_it(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    # Some NASes send User-Name and Calling-Station-Id only in the Start.
    await usage.send(form, Rec(START, user="erin", calling="02-00-00-00-00-0e", session_time=0))
    await usage.send(form, Rec(INTERIM, user="", t=600, session_time=600, inp=10, out=20))
    assert (await usage.session()).user_name == "erin"
    listed = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    assert [(u.user_name, u.calling_station_id, u.input_bytes) for u in listed.usage] == [
        ("erin", "02-00-00-00-00-0e", 10)
    ]
    # Registering the calling station attributes the session and moves its usage.
    sub = await subscribe(channel, usage.tenant, calling_station_id="02:00:00:00:00:0e")
    await usage.send(form, Rec(INTERIM, user="", t=1200, session_time=1200, inp=30, out=50))
    assert (await usage.session()).subscription_id == sub
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (30, 50)
    # A sweep closes the session without touching its identity.
    assert await usage.sweep(at(100_000)) == 1
    closed = await usage.session()
    assert (closed.user_name, closed.calling_station_id) == ("erin", "02-00-00-00-00-0e")
    assert closed.state == pb.SESSION_STATE_CLOSED
    assert closed.subscription_id == sub


async def test_usage_before_a_session_names_its_user_moves_with_the_session_when_it_does(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    # The first records carry only a Calling-Station-Id nobody registered; a later one
    # names the user, whose subscription then owns the whole session, its past included.
    sub = await subscribe(channel, usage.tenant, user_name="frank")
    station = "02-00-00-00-00-0f"
    first = {"user": "", "calling": station}
    await usage.send(form, Rec(INTERIM, **first, t=600, session_time=600, inp=10, out=20))
    await usage.send(form, Rec(INTERIM, **first, t=4200, session_time=4200, inp=30, out=60))
    assert await usage.unattributed_bytes() == (30, 60)
    await usage.send(
        form,
        Rec(INTERIM, user="frank", calling=station, t=7800, session_time=7800, inp=70, out=90),
    )
    assert (await usage.session()).subscription_id == sub
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (70, 90)
    assert await usage.unattributed_bytes() == (0, 0)
    async with server.db.read() as session:
        left = await session.scalar(
            select(func.count())
            .select_from(UnattributedBucket)
            .where(UnattributedBucket.tenant_id == usage.tenant.tenant_id)
        )
    assert left == 0


async def test_registering_a_user_moves_only_the_usage_of_the_sessions_it_attributes(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    # Two sessions share a Calling-Station-Id nobody registered; one of them names a user
    # that is registered later: that session's usage moves, the other's stays unattributed.
    station = "02-00-00-00-00-10"
    await usage.send(
        form,
        Rec(INTERIM, sid="s1", user="", calling=station, t=600, session_time=600, inp=1, out=2),
        Rec(INTERIM, sid="s2", user="", calling=station, t=600, session_time=600, inp=100, out=200),
    )
    await usage.send(
        form, Rec(INTERIM, sid="s1", user="gina", calling=station, t=1200, session_time=1200,
                  inp=5, out=6),
    )  # fmt: skip
    assert await usage.unattributed_bytes() == (105, 206)
    sub = await subscribe(channel, usage.tenant, user_name="gina")
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (5, 6)
    listed = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(), metadata=usage.metadata
    )
    assert [(u.user_name, u.input_bytes, u.output_bytes) for u in listed.usage] == [("", 100, 200)]
    subs = {s.acct_session_id: s.subscription_id for s in await usage.sessions()}
    assert subs == {"s1": sub, "s2": ""}


@pytest.mark.parametrize("raw", ["0", "17", "two", "1.5"])
def test_write_shards_setting_names_the_variable_when_value_is_bad(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(servicer.WRITE_SHARDS_ENV, raw)
    with pytest.raises(ValueError, match="RATING_WRITE_SHARDS must be an integer from 1 to 16"):
        servicer.write_shards_setting()


def test_write_shards_setting_is_read_when_set_and_defaults_to_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(servicer.WRITE_SHARDS_ENV, raising=False)
    assert servicer.write_shards_setting() == 2
    monkeypatch.setenv(servicer.WRITE_SHARDS_ENV, "4")
    assert servicer.write_shards_setting() == 4


async def test_buckets_add_modulo_2_64_when_counters_pass_2_63(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    """Counters are unsigned 64-bit; a bucket whose total passes 2**63 - 1 bytes (a NAS
    reporting Gigawords past 2**31, even as garbage) used to fail every batch adding to it
    on PostgreSQL (`bigint out of range`), so the collector resent it for ever. Totals add
    modulo 2**64, as the counters themselves are kept."""
    top = 1 << 63
    sub = await subscribe(channel, usage.tenant, user_name="alice")
    acks = await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=top - 1, out=1),
        Rec(INTERIM, t=1200, session_time=1200, inp=top + 5, out=2),  # same hour
        Rec(INTERIM, sid="s2", t=1200, session_time=1200, inp=top, out=3),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3
    # Both sessions' counts in one batch, and in one unattributed identity.
    ack = await usage.send(
        form,
        Rec(INTERIM, sid="u1", user="who", t=600, session_time=600, inp=top + 1, out=top),
        Rec(INTERIM, sid="u2", user="who", t=600, session_time=600, inp=top + 2, out=top),
    )
    assert counts(ack) == (2, 0, 0, 0)
    assert (await usage.session()).input_bytes == top + 5
    up, down = await bucket_totals(server, usage.tenant.tenant_id, sub)
    assert (up % (1 << 64), down) == ((top + 5 + top) % (1 << 64), 5)
    assert await usage.unattributed_bytes() == (3, 0)  # (2**64 + 3, 2**64) modulo 2**64
