"""ListQuarantinedRecords and PurgeQuarantine over a real channel, and `rating quarantine`."""

from __future__ import annotations

import datetime as dt
import json

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from isp_rating.v1 import usage_pb2 as pb
from server.usage import quarantine
from server.usage.cli import all_pages
from server.validation import encode_page_token
from tests.conftest import RunningServer, TenantCtx, new_tenant
from tests.usage.support import (
    INTERIM,
    SOURCE,
    START,
    Rec,
    Usage,
    at,
    batch,
    decoded,
    entries,
    raw_packet,
    ts,
    utc,
)
from tests.usage.test_api import expect_status
from tests.usage.test_replay import rating, rating_run

# An Accounting-Request whose only attribute claims 9 octets where 3 remain.
BAD_TLV = b"\x04\x01\x00\x17" + bytes(16) + b"\x28\x09\x00"


def no_status(sid: str) -> pb.AccountingEntry:
    """A decoded record without Acct-Status-Type: quarantined."""
    return pb.AccountingEntry(
        decoded=pb.AccountingRecord(acct_session_id=sid, source_address=SOURCE)
    )


def bad_tlv(arrival_s: float = 0) -> pb.AccountingEntry:
    """A raw packet whose attribute runs past its end; the arrival makes its bytes unique."""
    return raw_packet(BAD_TLV, SOURCE, at(arrival_s))


async def quarantine_batch(usage: Usage, batch_id: str, *items: pb.AccountingEntry) -> dt.datetime:
    """Sends a batch of entries that are all quarantined; returns when the server received it
    (as listed)."""
    (ack,) = await usage.stream(batch(items, batch_id))
    assert ack.quarantined == len(items)
    listed = await listing(usage)
    return max(utc(e.received_at) for e in listed if e.batch_id == batch_id)


async def listing(
    usage: Usage, page_size: int = 1000, **window: object
) -> list[pb.QuarantinedEntry]:
    request = pb.ListQuarantinedRecordsRequest(page_size=page_size, **window)  # type: ignore[arg-type]
    return await all_pages(usage.stub.ListQuarantinedRecords, request, usage.metadata, "entries")


async def purge(usage: Usage, before: dt.datetime) -> int:
    reply = await usage.stub.PurgeQuarantine(
        pb.PurgeQuarantineRequest(before=ts(before)), metadata=usage.metadata
    )
    return reply.deleted


def places(entries: list[pb.QuarantinedEntry]) -> list[tuple[str, int]]:
    return [(e.batch_id, e.entry_index) for e in entries]


async def test_quarantined_entries_are_listed_with_reason_and_bytes_when_either_form_is_bad(
    usage: Usage,
) -> None:
    good = decoded(Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    sent = [good, no_status("x"), bad_tlv()]
    before = dt.datetime.now(dt.UTC)
    (ack,) = await usage.stream(batch(sent, "batch-1"))
    after = dt.datetime.now(dt.UTC)
    assert (ack.accepted, ack.quarantined) == (1, 2)
    reasons = {q.index: q.reason for q in ack.quarantined_records}
    listed = await listing(usage)
    # Newest first: within one batch, the higher index first.
    assert places(listed) == [("batch-1", 2), ("batch-1", 1)]
    for entry in listed:
        assert entry.reason == reasons[entry.entry_index]
        assert entry.entry == sent[entry.entry_index].SerializeToString()
        assert entry.source_address == SOURCE
        assert before <= utc(entry.received_at) <= after
    raw_entry, decoded_entry = listed
    assert "radius" in raw_entry.reason
    assert "Status-Type" in decoded_entry.reason
    assert pb.AccountingEntry.FromString(raw_entry.entry).raw.packet == BAD_TLV
    # A resent batch quarantines nothing twice: the first receive time is kept.
    await usage.stream(batch(sent, "batch-1"))
    assert await listing(usage) == listed


async def test_quarantine_source_address_is_empty_when_the_entry_is_not_protobuf(
    usage: Usage, channel: grpc.aio.Channel
) -> None:
    # A batch framed by hand: its one entry is a field tag whose varint is missing.
    framed = b"\x0a\x01b" + b"\x12\x01\x08"
    stream = channel.stream_stream(
        "/isp_rating.v1.UsageService/StreamAccounting",
        request_serializer=None,  # the bytes as they are
        response_deserializer=pb.StreamAccountingResponse.FromString,
    )
    acks = [ack async for ack in stream(iter([framed]), metadata=usage.metadata)]
    assert [ack.quarantined for ack in acks] == [1]
    (listed,) = await listing(usage)
    assert (listed.batch_id, listed.entry, listed.source_address) == ("b", b"\x08", "")
    assert listed.reason.startswith("protobuf")


async def test_a_protobuf_defect_is_quarantined_naming_its_field(
    usage: Usage, channel: grpc.aio.Channel
) -> None:
    """An out-of-range Timestamp is named by its field, in either form, not by a number."""
    (record,), (raw,) = entries("decoded", [Rec(START)]), entries("raw", [Rec(START)])
    record.decoded.event_timestamp.CopyFrom(Timestamp(seconds=1_700_000_000, nanos=-1))
    raw.raw.arrival_time.CopyFrom(Timestamp(seconds=1_700_000_000, nanos=2_000_000_000))
    (ack,) = await usage.stream(batch([record, raw]))
    assert [q.reason for q in ack.quarantined_records] == [
        "event_timestamp out of range (protobuf field 15)",
        "arrival_time out of range (protobuf field 3)",
    ]
    # The batch's own id, not UTF-8: the call is refused, naming batch_id.
    stream = channel.stream_stream(
        "/isp_rating.v1.UsageService/StreamAccounting",
        request_serializer=None,  # the bytes as they are
        response_deserializer=pb.StreamAccountingResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [ack async for ack in stream(iter([b"\x0a\x02\xff\xfe"]), metadata=usage.metadata)]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("batch_id: ")


async def test_quarantine_pages_cover_every_entry_once_when_more_arrive_while_paging(
    usage: Usage,
) -> None:
    for b in range(3):
        await quarantine_batch(usage, f"b{b}", no_status(f"s{b}"), bad_tlv(b))
    first = await usage.stub.ListQuarantinedRecords(
        pb.ListQuarantinedRecordsRequest(page_size=4), metadata=usage.metadata
    )
    assert places(first.entries) == [("b2", 1), ("b2", 0), ("b1", 1), ("b1", 0)]
    assert first.next_page_token
    # Quarantined between pages: newer than the token's place, so not on a later page.
    await quarantine_batch(usage, "b3", no_status("s3"), bad_tlv(3))
    rest = await usage.stub.ListQuarantinedRecords(
        pb.ListQuarantinedRecordsRequest(page_size=4, page_token=first.next_page_token),
        metadata=usage.metadata,
    )
    assert places(rest.entries) == [("b0", 1), ("b0", 0)]
    assert not rest.next_page_token
    # A token goes on only with the window it was issued for.
    windowed = pb.ListQuarantinedRecordsRequest(page_token=first.next_page_token)
    windowed.received_after.FromSeconds(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.stub.ListQuarantinedRecords(windowed, metadata=usage.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("page_token: was issued for other filters")
    everything = await listing(usage, page_size=3)
    assert places(everything)[:2] == [("b3", 1), ("b3", 0)]
    assert len(everything) == len({e.entry for e in everything}) == 8


async def test_quarantine_window_and_purge_take_only_entries_received_before_the_time(
    usage: Usage, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await quarantine_batch(usage, "old", no_status("a"), no_status("b"), bad_tlv(1))
    new = await quarantine_batch(usage, "new", no_status("c"), bad_tlv(2))
    assert old < new
    # [received_after, received_before): the upper bound is what a purge would delete.
    assert {b for b, _ in places(await listing(usage, received_before=ts(new)))} == {"old"}
    assert {b for b, _ in places(await listing(usage, received_after=ts(new)))} == {"new"}
    window = await listing(usage, received_after=ts(old), received_before=ts(new))
    assert len(window) == 3
    assert await listing(usage, received_after=ts(new + dt.timedelta(microseconds=1))) == []
    monkeypatch.setattr(quarantine, "PURGE_CHUNK", 2)  # the old batch takes two chunks
    assert await purge(usage, new) == 3
    assert places(await listing(usage)) == [("new", 1), ("new", 0)]
    assert await purge(usage, new) == 0
    assert await purge(usage, new + dt.timedelta(microseconds=1)) == 2
    assert await listing(usage) == []


async def test_quarantine_is_tenant_scoped_when_another_tenant_lists_and_purges(
    usage: Usage, channel: grpc.aio.Channel, other_tenant: TenantCtx
) -> None:
    await quarantine_batch(usage, "mine", no_status("a"), bad_tlv())
    other = Usage(channel, other_tenant)
    assert await listing(other) == []
    # The same bytes quarantined by the other tenant are a row of its own.
    await quarantine_batch(other, "theirs", no_status("a"))
    assert places(await listing(other)) == [("theirs", 0)]
    assert await purge(other, dt.datetime(9999, 1, 1, tzinfo=dt.UTC)) == 1
    assert await listing(other) == []
    assert places(await listing(usage)) == [("mine", 1), ("mine", 0)]


async def test_purge_needs_the_write_scope_when_listing_needs_only_the_read_scope(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    reader = Usage(channel, await new_tenant(server.db, ["usage:read"]))
    assert await listing(reader) == []
    await expect_status(
        reader.stub.PurgeQuarantine(
            pb.PurgeQuarantineRequest(before=ts(at(0))), metadata=reader.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListQuarantinedRecordsRequest(page_token="nope"), "page_token"),
        (
            pb.ListQuarantinedRecordsRequest(
                page_token=encode_page_token({"r": "2024-01-01T00:00:00", "b": "", "i": 0, "d": ""})
            ),
            "page_token",
        ),
        (
            pb.ListQuarantinedRecordsRequest(
                page_token=encode_page_token(
                    {"r": "2024-01-01T00:00:00+00:00", "b": "", "i": 0, "d": "zz"}
                )
            ),
            "page_token",
        ),
        (pb.ListQuarantinedRecordsRequest(page_size=-1), "page_size"),
        (
            pb.ListQuarantinedRecordsRequest(received_after=ts(at(1)), received_before=ts(at(1))),
            "received_before",
        ),
        (
            pb.ListQuarantinedRecordsRequest(received_after=Timestamp(seconds=2**40)),
            "received_after",
        ),
    ],
    ids=[
        "token-garbage",
        "token-naive-time",
        "token-bad-digest",
        "negative-size",
        "empty-window",
        "time-out-of-range",
    ],
)
async def test_quarantine_listing_names_the_field_when_input_is_bad(
    usage: Usage, request_: pb.ListQuarantinedRecordsRequest, field: str
) -> None:
    await expect_status(
        usage.stub.ListQuarantinedRecords(request_, metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: ",
    )


async def test_purge_names_the_field_when_before_is_missing(usage: Usage) -> None:
    await expect_status(
        usage.stub.PurgeQuarantine(pb.PurgeQuarantineRequest(), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "before: is required",
    )


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def test_quarantine_is_listed_and_purged_when_run_from_the_cli(
    usage: Usage, server: RunningServer
) -> None:
    sent = [no_status("a"), bad_tlv()]
    old = await quarantine_batch(usage, "old", *sent)
    new = await quarantine_batch(usage, "new", no_status("b"))
    target = ("--target", server.target)
    key = usage.tenant.key
    listed = await rating("quarantine", "--json", *target, key=key)
    assert [(r["batch_id"], r["entry_index"]) for r in listed] == [
        ("new", 0),
        ("old", 1),
        ("old", 0),
    ]
    assert listed[1] == {
        "received_at": iso(old),
        "batch_id": "old",
        "entry_index": 1,
        "reason": listed[1]["reason"],
        "source_address": SOURCE,
        "entry_hex": sent[1].SerializeToString().hex(),
    }
    assert listed[1]["reason"].startswith("radius")
    # Without --json: one object per line; --since/--until bound the receive time.
    code, out, err = await rating_run("quarantine", "--since", iso(new), *target, key=key)
    assert code == 0, err
    assert [json.loads(line)["batch_id"] for line in out.splitlines()] == ["new"]
    until = await rating("quarantine", "--until", iso(new), "--json", *target, key=key)
    assert [r["batch_id"] for r in until] == ["old", "old"]
    assert await rating("quarantine", "purge", "--before", iso(new), *target, key=key) == {
        "deleted": 2
    }
    # Options given before the subcommand count too.
    assert await rating("quarantine", *target, "purge", "--before", iso(new), key=key) == {
        "deleted": 0
    }
    assert [r["batch_id"] for r in await rating("quarantine", "--json", *target, key=key)] == [
        "new"
    ]
