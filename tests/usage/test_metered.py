"""RecordUsage over a real channel: every bad input named, units per usage type, and metered
usage of an unknown identity listed as unattributed, then attributed when it is registered."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import String, select, type_coerce, update

from isp_rating.v1 import usage_pb2 as pb
from server.usage import repository as repo
from server.usage.models import UsageEvent
from server.validation import format_decimal
from tests.conftest import RunningServer
from tests.usage.support import INTERIM, Rec, Usage, at, ts, utc
from tests.usage.test_api import expect_status, metered, subscribe

BAD_TIMESTAMPS = [
    Timestamp(seconds=2**40),
    Timestamp(seconds=-(2**40)),
    Timestamp(seconds=0, nanos=2_000_000_000),
    Timestamp(seconds=0, nanos=-1),
    # The range's first and last microsecond: PostgreSQL would store -infinity / infinity.
    Timestamp(seconds=-62135596800),
    Timestamp(seconds=253402300799, nanos=999_999_000),
]


def request(**changes: Any) -> pb.RecordUsageRequest:
    """test_api's metered() request with a fresh key; Timestamps are copied in."""
    times = {k: changes.pop(k) for k in list(changes) if isinstance(changes[k], Timestamp)}
    out = metered(uuid.uuid4().hex, **changes)
    for name, value in times.items():
        getattr(out, name).CopyFrom(value)
    return out


def custom(**changes: Any) -> dict[str, Any]:
    return {"usage_type": pb.USAGE_TYPE_CUSTOM, "custom_type": "api-calls", **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": "k" * 201}, "idempotency_key"),
        ({"idempotency_key": "k\x00"}, "idempotency_key"),
        (custom(unit="u" * 65), "unit"),
        (custom(custom_type="c" * 121), "custom_type"),
        ({"custom_type": "api-calls"}, "custom_type"),
        ({"radius_user_name": "u" * 254}, "radius_user_name"),
        ({"radius_user_name": "é" * 254}, "radius_user_name"),  # 254 characters
        ({"radius_user_name": "u" * 256}, "radius_user_name"),
        ({"quantity": "1" + "0" * 25}, "quantity"),
        ({"quantity": "1e25"}, "quantity"),
        ({"quantity": "1000000000000000000000"}, "quantity"),  # 10^21: 22 integer digits
        ({"quantity": "0.0000000001"}, "quantity"),
        ({"quantity": "12.5000000001"}, "quantity"),
        ({"quantity": "12345678901234567890.1234567891"}, "quantity"),  # past 28 digits
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": "Infinity"}, "quantity"),
        # Only ASCII [+-]digits[.digits][e[+-]digits]: Python's Decimal() takes all of these.
        ({"quantity": "1_000"}, "quantity"),
        ({"quantity": "\u0661\u0662\u0663"}, "quantity"),  # Arabic-Indic digits
        ({"quantity": "\uff11\uff12"}, "quantity"),  # fullwidth digits
        ({"quantity": ".5"}, "quantity"),
        ({"quantity": "5."}, "quantity"),
        ({"quantity": "sNaN"}, "quantity"),
        ({"quantity": "1 000"}, "quantity"),
        # Nothing around the number either (Decimal() strips any Unicode white space).
        ({"quantity": " 5"}, "quantity"),
        ({"quantity": "5 "}, "quantity"),
        ({"quantity": "\t5\n"}, "quantity"),
        ({"quantity": "\u20035"}, "quantity"),  # em space
        ({"quantity": "5\xa0"}, "quantity"),  # no-break space
        # 254 octets of UTF-8: more than a RADIUS attribute (and so a session) can carry.
        ({"radius_user_name": "\u00e9" * 127}, "radius_user_name"),
        # Bounded before anything is built: they were zeros to expand into huge texts.
        ({"quantity": "1." + "0" * 16384}, "quantity"),
        ({"quantity": "0e-16384"}, "quantity"),
        ({"quantity": "0E-1000000"}, "quantity"),
        ({"quantity": "0e-999999999999999999"}, "quantity"),
        ({"quantity": "0E+101"}, "quantity"),
        ({"occurred_at": BAD_TIMESTAMPS[0]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[1]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[2]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[3]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[4]}, "occurred_at"),
        ({"occurred_at": BAD_TIMESTAMPS[5]}, "occurred_at"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "messages"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "gb"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "Gb"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_VOICE, "unit": "bytes"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_SMS, "unit": "minutes"}, "unit"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "bytes", "quantity": "0.5"}, "quantity"),
        ({"usage_type": pb.USAGE_TYPE_DATA, "unit": "kB", "quantity": "0.0005"}, "quantity"),
        ({"usage_type": pb.USAGE_TYPE_SMS, "unit": "messages", "quantity": "1.5"}, "quantity"),
    ],
)
async def test_record_usage_is_invalid_argument_naming_the_field_when_it_does_not_fit(
    usage: Usage, changes: dict[str, Any], field: str
) -> None:
    await expect_status(
        usage.stub.RecordUsage(request(**changes), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}:",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"idempotency_key": "k" * 200},
        {"radius_user_name": "u" * 253},
        # A User-Name of 253 octets that are not UTF-8, as a session stores it (each one
        # U+FFFD), and 253 octets of UTF-8.
        {"radius_user_name": "\ufffd" * 253},
        {"radius_user_name": "\u00e9" * 126 + "u"},
        custom(unit="u" * 64, custom_type="c" * 120),
        custom(unit="requests", quantity="0.000000001"),
        {"quantity": "999999999999999999999.999999999"},
        {"quantity": "12.500000000000"},  # trailing zeros are not precision
        {"quantity": "1." + "0" * 98},  # 100 characters
        {"quantity": "0e-100"},
        {"quantity": "+12.5"},
        {"usage_type": pb.USAGE_TYPE_VOICE, "unit": "seconds", "quantity": "0.25"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "GB", "quantity": "1.5"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "KiB", "quantity": "0.5"},
        {"usage_type": pb.USAGE_TYPE_DATA, "unit": "TiB", "quantity": "999999999999999999999"},
        {"usage_type": pb.USAGE_TYPE_SMS, "unit": "sms", "quantity": "3"},
    ],
)
async def test_record_usage_is_accepted_when_input_is_at_the_limits(
    usage: Usage, changes: dict[str, Any]
) -> None:
    reply = await usage.stub.RecordUsage(request(**changes), metadata=usage.metadata)
    assert reply.usage_id
    assert not reply.replayed


async def test_reused_key_is_failed_precondition_when_quantity_differs_in_its_last_digit(
    usage: Usage,
) -> None:
    first = request(quantity="999999999999999999999.999999999")
    await usage.stub.RecordUsage(first, metadata=usage.metadata)
    again = pb.RecordUsageRequest()
    again.CopyFrom(first)
    again.quantity = "999999999999999999999.999999998"
    await expect_status(
        usage.stub.RecordUsage(again, metadata=usage.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
        "idempotency_key",
    )


async def test_reused_key_is_failed_precondition_when_occurred_at_differs_below_a_microsecond(
    usage: Usage,
) -> None:
    # Times are stored to the microsecond; the request a key stands for is compared whole.
    first = request(occurred_at=Timestamp(seconds=1_700_000_000, nanos=123_456_100))
    recorded = await usage.stub.RecordUsage(first, metadata=usage.metadata)
    same = await usage.stub.RecordUsage(first, metadata=usage.metadata)
    assert (same.usage_id, same.replayed) == (recorded.usage_id, True)
    again = pb.RecordUsageRequest()
    again.CopyFrom(first)
    again.occurred_at.nanos = 123_456_900
    await expect_status(
        usage.stub.RecordUsage(again, metadata=usage.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
        "idempotency_key",
    )


async def stored_quantity(server: RunningServer, usage: Usage, key: str) -> Any:
    """The quantity of an event as its column holds it: text on SQLite, NUMERIC on
    PostgreSQL."""
    async with server.db.read() as session:
        found = await session.execute(
            select(type_coerce(UsageEvent.quantity, String())).where(
                UsageEvent.tenant_id == usage.tenant.tenant_id, UsageEvent.idempotency_key == key
            )
        )
        return found.scalar_one()


@pytest.mark.parametrize(
    ("quantity", "normalised"),
    [
        ("100.000", "100"),
        ("1E+2", "100"),
        ("-0", "0"),
        ("-0.000", "0"),
        ("0e-50", "0"),
        ("1." + "0" * 98, "1"),
        ("+0012.50", "12.5"),
        ("1.5E-8", "0.000000015"),
    ],
)
async def test_quantity_is_stored_normalised_when_written_with_zeros_a_sign_or_an_exponent(
    usage: Usage, server: RunningServer, quantity: str, normalised: str
) -> None:
    key = uuid.uuid4().hex
    await usage.stub.RecordUsage(
        request(idempotency_key=key, quantity=quantity), metadata=usage.metadata
    )
    stored = await stored_quantity(server, usage, key)
    if server.db.dialect == "sqlite":
        assert stored == normalised  # the text itself
    else:
        assert stored == Decimal(normalised)


def legacy_digest(req: pb.RecordUsageRequest, quantity: str) -> bytes:
    """RecordUsage's request digest as servers have always stored it (changing it would
    make every retry of an earlier request a conflict)."""
    canonical = "\x1f".join(
        [
            req.idempotency_key,
            str(req.usage_type),
            req.custom_type,
            quantity,
            req.unit,
            utc(req.occurred_at).isoformat(),
            req.subscription_id,
            req.radius_user_name,
            str(req.source or pb.USAGE_SOURCE_API),
        ]
    )
    return hashlib.sha256(canonical.encode()).digest()


async def stored_digest(server: RunningServer, usage: Usage, key: str) -> bytes:
    async with server.db.read() as session:
        found = await session.execute(
            select(UsageEvent.request_digest).where(
                UsageEvent.tenant_id == usage.tenant.tenant_id, UsageEvent.idempotency_key == key
            )
        )
        return bytes(found.scalar_one())


async def test_request_digest_is_unchanged_when_quantity_is_written_another_way(
    usage: Usage, server: RunningServer
) -> None:
    first = request(quantity="100.000")
    recorded = await usage.stub.RecordUsage(first, metadata=usage.metadata)
    assert await stored_digest(server, usage, first.idempotency_key) == legacy_digest(first, "100")
    for spelling in ("1E+2", "100", "0100.0", "10e1"):
        again = pb.RecordUsageRequest()
        again.CopyFrom(first)
        again.quantity = spelling
        replay = await usage.stub.RecordUsage(again, metadata=usage.metadata)
        assert (replay.usage_id, replay.replayed) == (recorded.usage_id, True)


async def test_negative_zero_is_replayed_when_it_was_stored_with_its_sign(
    usage: Usage, server: RunningServer
) -> None:
    first = request(quantity="-0")
    recorded = await usage.stub.RecordUsage(first, metadata=usage.metadata)
    # As a server that kept the sign stored it: quantity "-0" and its digest.
    async with server.db.transaction() as session:
        await session.execute(
            update(UsageEvent)
            .where(
                UsageEvent.tenant_id == usage.tenant.tenant_id,
                UsageEvent.idempotency_key == first.idempotency_key,
            )
            .values(request_digest=legacy_digest(first, "-0"), quantity=Decimal("-0"))
        )
    for spelling in ("-0", "0", "0.000"):
        again = pb.RecordUsageRequest()
        again.CopyFrom(first)
        again.quantity = spelling
        replay = await usage.stub.RecordUsage(again, metadata=usage.metadata)
        assert (replay.usage_id, replay.replayed) == (recorded.usage_id, True)
    again.quantity = "1"
    await expect_status(
        usage.stub.RecordUsage(again, metadata=usage.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
        "idempotency_key",
    )


async def test_idempotency_key_is_compared_exactly_when_it_has_surrounding_white_space(
    usage: Usage, server: RunningServer
) -> None:
    plain = await usage.stub.RecordUsage(request(idempotency_key="k"), metadata=usage.metadata)
    # A key stored as it came is found by it, as before.
    replay = await usage.stub.RecordUsage(request(idempotency_key="k"), metadata=usage.metadata)
    assert (replay.usage_id, replay.replayed) == (plain.usage_id, True)
    # Keys are opaque: " k " is another key, with a request of its own.
    padded = await usage.stub.RecordUsage(
        request(idempotency_key=" k ", quantity="13"), metadata=usage.metadata
    )
    assert not padded.replayed
    assert padded.usage_id != plain.usage_id
    again = await usage.stub.RecordUsage(
        request(idempotency_key=" k ", quantity="13"), metadata=usage.metadata
    )
    assert (again.usage_id, again.replayed) == (padded.usage_id, True)
    blank = await usage.stub.RecordUsage(request(idempotency_key="  "), metadata=usage.metadata)
    assert not blank.replayed
    assert sorted(await event_subscriptions(server, usage)) == ["  ", " k ", "k"]
    await expect_status(
        usage.stub.RecordUsage(request(idempotency_key=""), metadata=usage.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key:",
    )


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS)
async def test_sweep_is_invalid_argument_naming_as_of_when_it_is_out_of_range(
    usage: Usage, bad: Timestamp
) -> None:
    await expect_status(
        usage.stub.SweepStaleSessions(
            pb.SweepStaleSessionsRequest(as_of=bad), metadata=usage.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "as_of:",
    )


async def record(usage: Usage, user: str, **changes: Any) -> pb.RecordUsageResponse:
    return await usage.stub.RecordUsage(
        request(radius_user_name=user, **changes), metadata=usage.metadata
    )


async def unattributed(usage: Usage, page_size: int = 0) -> list[pb.ListUnattributedUsageResponse]:
    """Every page of ListUnattributedUsage."""
    pages = []
    listing = pb.ListUnattributedUsageRequest(page_size=page_size)
    while True:
        page = await usage.stub.ListUnattributedUsage(listing, metadata=usage.metadata)
        pages.append(page)
        if not page.next_page_token:
            return pages
        listing.page_token = page.next_page_token


def metered_rows(
    pages: list[pb.ListUnattributedUsageResponse],
) -> list[tuple[str, int, str, str, str, int]]:
    return [
        (m.radius_user_name, m.usage_type, m.custom_type, m.unit, m.quantity, m.event_count)
        for page in pages
        for m in page.metered
    ]


async def event_subscriptions(server: RunningServer, usage: Usage) -> dict[str, str]:
    async with server.db.read() as session:
        rows = (
            await session.execute(
                select(UsageEvent.idempotency_key, UsageEvent.subscription_id).where(
                    UsageEvent.tenant_id == usage.tenant.tenant_id
                )
            )
        ).all()
    return {key: str(sub) if sub else "" for key, sub in rows}


async def test_metered_usage_is_listed_then_attributed_when_identity_is_registered(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    first_request = request(radius_user_name="erin", quantity="12.5", occurred_at=ts(at(60)))
    first = await usage.stub.RecordUsage(first_request, metadata=usage.metadata)
    await record(usage, "erin", quantity="2.5", occurred_at=ts(at(7200)))
    await record(usage, "erin", usage_type=pb.USAGE_TYPE_DATA, unit="GB", quantity="1.5")
    await record(usage, "frank", usage_type=pb.USAGE_TYPE_SMS, unit="messages", quantity="3")
    assert first.subscription_id == ""

    (page,) = await unattributed(usage)
    assert list(page.usage) == []
    assert metered_rows([page]) == [
        ("erin", pb.USAGE_TYPE_DATA, "", "GB", "1.5", 1),
        ("erin", pb.USAGE_TYPE_VOICE, "", "minutes", "15", 2),
        ("frank", pb.USAGE_TYPE_SMS, "", "messages", "3", 1),
    ]
    voice = page.metered[1]
    assert (utc(voice.first_seen_at), utc(voice.last_seen_at)) == (at(60), at(7200))

    sub = await subscribe(channel, usage.tenant, user_name="erin")
    # Registering the identity attributed the pending events in its own transaction.
    subs = await event_subscriptions(server, usage)
    assert sorted(subs.values()) == ["", sub, sub, sub]
    (page,) = await unattributed(usage)
    assert metered_rows([page]) == [("frank", pb.USAGE_TYPE_SMS, "", "messages", "3", 1)]
    # Later usage of the identity is attributed when recorded.
    later_request = request(radius_user_name="erin")
    later = await usage.stub.RecordUsage(later_request, metadata=usage.metadata)
    assert later.subscription_id == sub
    # A replay returns the original result: unattributed for what was recorded before the
    # registration (stored attributed now), the subscription for what came after.
    for sent, answered in ((first_request, first), (later_request, later)):
        replay = await usage.stub.RecordUsage(sent, metadata=usage.metadata)
        assert (replay.replayed, replay.usage_id) == (True, answered.usage_id)
        assert replay.subscription_id == answered.subscription_id


async def test_unattributed_pages_cover_sessions_then_metered_when_page_size_is_small(
    usage: Usage,
) -> None:
    await usage.send(
        "decoded",
        Rec(INTERIM, sid="s1", user="gina", t=600, session_time=600, inp=1, out=2),
        Rec(INTERIM, sid="s2", user="hank", t=600, session_time=600, inp=3, out=4),
    )
    for user in ("ivan", "judy", "kim"):
        await record(usage, user)
    full = await unattributed(usage)
    assert len(full) == 1
    expected_sessions = [u.user_name for u in full[0].usage]
    expected_metered = metered_rows(full)
    assert expected_sessions == ["gina", "hank"]
    assert [row[0] for row in expected_metered] == ["ivan", "judy", "kim"]
    for size in (1, 2, 3, 5):
        pages = await unattributed(usage, size)
        assert all(len(p.usage) + len(p.metered) <= size for p in pages)
        assert [u.user_name for p in pages for u in p.usage] == expected_sessions
        assert metered_rows(pages) == expected_metered


async def test_unattributed_metered_quantities_sum_exactly_at_full_precision(
    usage: Usage, server: RunningServer
) -> None:
    # 30 significant digits each (the column's precision): a binary float keeps ~16.
    quantities = ["123456789012345678901.123456789", "0.000000001", "0.1", "0.2"]
    for n, quantity in enumerate(quantities):
        await record(usage, "lena", quantity=quantity, idempotency_key=f"exact-{n}")
    (page,) = await unattributed(usage)
    assert metered_rows([page]) == [
        ("lena", pb.USAGE_TYPE_VOICE, "", "minutes", "123456789012345678901.42345679", 4)
    ]
    async with server.db.read() as session:
        stored = (
            await session.execute(
                select(UsageEvent.quantity)
                .where(UsageEvent.tenant_id == usage.tenant.tenant_id)
                .order_by(UsageEvent.idempotency_key)
            )
        ).scalars()
        assert [format_decimal(q) for q in stored] == [
            "123456789012345678901.123456789", "0.000000001", "0.1", "0.2"
        ]  # fmt: skip


async def test_a_replay_answers_as_first_when_the_user_name_was_being_registered(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    """A registration waits for the NAS locks a batch holds. Metered usage of its User-Name
    recorded meanwhile was answered unattributed, then attributed by the registration, and
    its replay (the identity stamped before the wait) gave the subscription. Now the event
    is recorded before the registration takes effect or after it commits, and its replay
    answers as it first did."""
    await usage.send("decoded", Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    tenant = usage.tenant.tenant_id
    async with server.db.transaction() as session:  # a batch holding the NAS row
        await repo.begin_write(session)
        await repo.lock_nas(session, tenant, ["nas-1"])
        registering = asyncio.create_task(subscribe(channel, usage.tenant, user_name="gail"))
        await asyncio.sleep(0.5)
        sent = request(radius_user_name="gail")
        recording = asyncio.ensure_future(usage.stub.RecordUsage(sent, metadata=usage.metadata))
        await asyncio.sleep(0.3)
    sub = await asyncio.wait_for(registering, 30)
    first = await asyncio.wait_for(recording, 30)
    assert (await event_subscriptions(server, usage))[sent.idempotency_key] == sub
    replay = await usage.stub.RecordUsage(sent, metadata=usage.metadata)
    assert (replay.replayed, replay.usage_id) == (True, first.usage_id)
    assert replay.subscription_id == first.subscription_id
