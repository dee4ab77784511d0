"""Static IPv6 identities: sessions keep their Framed-/Delegated-IPv6-Prefix and are
attributed by them, after User-Name, Calling-Station-Id and the IPv4 Framed-IP-Address."""

from __future__ import annotations

import uuid

import grpc
import pytest
from sqlalchemy import select

from isp_rating.v1 import accounts_pb2
from isp_rating.v1 import usage_pb2 as pb
from server.usage import cli
from server.usage.models import UnattributedBucket, UsageSession
from server.usage.rebuild import rebuild
from tests.conftest import RunningServer, TenantCtx
from tests.usage.support import (
    INTERIM,
    SOURCE,
    START,
    Rec,
    Usage,
    batch,
    counts,
    decoded,
    prefix_attr,
    radius_attributes,
    radius_packet,
    raw_packet,
)
from tests.usage.test_api import bucket_totals, create_subscription, expect_status, subscribe

PD = "2001:db8:1200::/56"  # a delegated prefix
WAN = "2001:db8:0:7::/64"  # a framed prefix


def usage_of(framed6: str = "", delegated6: str = "", framed: str = "") -> Rec:
    """An Interim of an unknown user carrying only the given IPv6 prefixes (or IPv4
    Framed-IP-Address)."""
    return Rec(
        INTERIM,
        user="nobody",
        t=600,
        session_time=600,
        inp=5,
        out=7,
        framed6=framed6,
        delegated6=delegated6,
        framed=framed,
    )


async def unattributed(usage: Usage) -> list[pb.UnattributedUsage]:
    page = await usage.stub.ListUnattributedUsage(
        pb.ListUnattributedUsageRequest(page_size=1000), metadata=usage.metadata
    )
    return list(page.usage)


@pytest.mark.parametrize(
    ("identity", "sent"),
    [
        (PD, {"delegated6": PD}),
        (WAN, {"framed6": WAN}),
        # An address identity matches the Framed-IPv6-Prefix that is that address as /128.
        ("2001:db8::42", {"framed6": "2001:db8::42/128"}),
        # Any notation of either side matches.
        ("2001:0DB8:1200:0000::/056", {"delegated6": "2001:db8:1200::/56"}),
        ("2001:db8::42/128", {"framed6": "2001:DB8:0:0::42/128"}),
        # An IPv4-mapped address is the IPv4 address a session's Framed-IP-Address carries.
        ("::ffff:100.64.0.9", {"framed": "100.64.0.9"}),
    ],
    ids=[
        "delegated-only",
        "framed-only",
        "address-as-128",
        "identity-notation",
        "sent-notation",
        "ipv4-mapped",
    ],
)
async def test_session_is_attributed_by_static_ipv6_identity_when_it_carries_only_a_prefix(
    usage: Usage,
    channel: grpc.aio.Channel,
    server: RunningServer,
    form: str,
    identity: str,
    sent: dict[str, str],
) -> None:
    sub = await subscribe(channel, usage.tenant, static_ip=identity)
    ack = await usage.send(form, usage_of(**sent))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert session.subscription_id == sub
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (5, 7)
    assert await unattributed(usage) == []


async def test_prefixes_are_stored_canonical_and_shown_when_sessions_are_read(
    usage: Usage, form: str
) -> None:
    sent = {"framed6": "2001:DB8:0:7:0::/64", "delegated6": "2001:db8:1200:0:0::/56"}
    await usage.send(form, usage_of(**sent))
    listed = await usage.session()
    assert (listed.framed_ipv6_prefix, listed.delegated_ipv6_prefix) == (WAN, PD)
    got = await usage.stub.GetSession(pb.GetSessionRequest(id=listed.id), metadata=usage.metadata)
    assert (got.framed_ipv6_prefix, got.delegated_ipv6_prefix) == (WAN, PD)
    row = cli.session_json(got)
    assert (row["framed_ipv6_prefix"], row["delegated_ipv6_prefix"]) == (WAN, PD)
    # A session without prefixes shows none.
    await usage.send(form, Rec(INTERIM, sid="v4", t=600, session_time=600, inp=1, out=1))
    plain = cli.session_json(await usage.session("v4"))
    assert (plain["framed_ipv6_prefix"], plain["delegated_ipv6_prefix"]) == (None, None)
    # Every identity field a session does not have is null, the User-Name too.
    await usage.send(form, Rec(START, sid="nobody", user="", t=700))
    nobody = cli.session_json(await usage.session("nobody"))
    assert [nobody[f] for f in ("user_name", "calling_station_id", "framed_ip_address")] == [
        None
    ] * 3


async def test_raw_prefix_is_stored_as_its_network_when_the_packet_sends_bits_past_its_length(
    usage: Usage, channel: grpc.aio.Channel
) -> None:
    """RFC 3162 lets a NAS send all 16 octets; bits past the length must be zero, and are
    read as zero when they are not."""
    sub = await subscribe(channel, usage.tenant, static_ip=PD)
    rec = usage_of()
    attributes = (
        radius_attributes(rec)
        + prefix_attr(123, "2001:db8:1200:ab::1/56", octets=16)
        + prefix_attr(97, "2001:db8:0:7::/64", octets=16)
    )
    packet = radius_packet(attributes)
    ack = await usage.send_raw(raw_packet(packet, SOURCE, rec.arrival_at))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert (session.delegated_ipv6_prefix, session.framed_ipv6_prefix) == (PD, WAN)
    assert session.subscription_id == sub


async def test_user_name_wins_over_a_matching_prefix_then_ipv4_then_delegated_then_framed(
    usage: Usage, channel: grpc.aio.Channel, form: str
) -> None:
    by_user = await subscribe(channel, usage.tenant, user_name="alice")
    by_station = await subscribe(channel, usage.tenant, calling_station_id="02-00-00-00-00-0a")
    by_ipv4 = await subscribe(channel, usage.tenant, static_ip="100.64.0.9")
    by_pd = await subscribe(channel, usage.tenant, static_ip=PD)
    by_wan = await subscribe(channel, usage.tenant, static_ip=WAN)
    both = usage_of(delegated6=PD, framed6=WAN)
    await usage.send(
        form,
        both.but(sid="s1", user="alice"),
        both.but(sid="s2", calling="02-00-00-00-00-0a"),
        both.but(sid="s3", framed="100.64.0.9"),
        both.but(sid="s4"),
        usage_of(framed6=WAN).but(sid="s5"),
    )
    subs = {s.acct_session_id: s.subscription_id for s in await usage.sessions()}
    assert subs == {"s1": by_user, "s2": by_station, "s3": by_ipv4, "s4": by_pd, "s5": by_wan}


async def test_prefix_from_the_start_is_kept_when_later_records_carry_another_or_none(
    usage: Usage, form: str
) -> None:
    # First non-empty value kept, as for User-Name (some NASes name it in the Start only).
    await usage.send(form, Rec(START, user="", delegated6=PD, session_time=0))
    await usage.send(
        form, Rec(INTERIM, user="", delegated6="2001:db8:9900::/56", t=600, session_time=600)
    )
    await usage.send(form, Rec(INTERIM, user="", framed6=WAN, t=1200, session_time=1200))
    session = await usage.session()
    assert (session.delegated_ipv6_prefix, session.framed_ipv6_prefix) == (PD, WAN)


async def test_identity_registered_after_the_usage_reattributes_it_and_unlists_it(
    usage: Usage, channel: grpc.aio.Channel, form: str
) -> None:
    await usage.send(form, usage_of(delegated6=PD), usage_of(framed6=WAN).but(sid="s2"))
    listed = await unattributed(usage)
    assert sorted(
        (u.delegated_ipv6_prefix, u.framed_ipv6_prefix, u.session_count) for u in listed
    ) == [
        ("", WAN, 1),
        (PD, "", 1),
    ]
    sub = await subscribe(channel, usage.tenant, static_ip="2001:DB8:1200::/56")
    sessions = {s.acct_session_id: s.subscription_id for s in await usage.sessions()}
    assert sessions == {"sess-1": sub, "s2": ""}
    assert [(u.session_count, u.input_bytes) for u in await unattributed(usage)] == [(1, 5)]
    other = await subscribe(channel, usage.tenant, static_ip=WAN)
    assert (await usage.session("s2")).subscription_id == other
    assert await unattributed(usage) == []
    # Later records of the sessions go straight to their subscriptions.
    later = {"t": 1200, "session_time": 1200, "inp": 15, "out": 17}
    await usage.send(form, usage_of(delegated6=PD).but(**later))
    assert (await usage.session()).input_bytes == 15


async def test_hourly_usage_moves_to_the_subscription_when_a_prefix_identity_is_registered(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, form: str
) -> None:
    await usage.send(form, usage_of(delegated6=PD))
    sub = await subscribe(channel, usage.tenant, static_ip=PD)
    assert await bucket_totals(server, usage.tenant.tenant_id, sub) == (5, 7)
    async with server.db.read() as session:
        left = await session.execute(
            select(UnattributedBucket).where(UnattributedBucket.tenant_id == usage.tenant.tenant_id)
        )
        assert left.all() == []


async def test_rebuild_reproduces_prefixes_and_attribution_when_the_ledger_is_replayed(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    sub = await subscribe(channel, usage.tenant, static_ip=PD)
    await usage.send("raw", usage_of(delegated6=PD, framed6=WAN))
    await usage.send("decoded", usage_of(framed6="2001:db8::42/128").but(sid="s2"))

    async def rows() -> list[tuple[object, ...]]:
        async with server.db.read() as session:
            found = await session.execute(
                select(
                    UsageSession.acct_session_id,
                    UsageSession.framed_ipv6_prefix,
                    UsageSession.delegated_ipv6_prefix,
                    UsageSession.subscription_id,
                )
                .where(UsageSession.tenant_id == usage.tenant.tenant_id)
                .order_by(UsageSession.acct_session_id)
            )
            return [tuple(row) for row in found.all()]

    before = await rows()
    assert before == [
        ("s2", "2001:db8::42/128", "", None),
        ("sess-1", WAN, PD, uuid.UUID(sub)),
    ]
    await rebuild(server.db, usage.tenant.tenant_id)
    assert await rows() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("framed_ipv6_prefix", "2001:db8::/129"), ("delegated_ipv6_prefix", "192.0.2.0/24")],
)
async def test_record_is_quarantined_naming_the_field_when_a_decoded_prefix_is_not_one(
    usage: Usage, field: str, value: str
) -> None:
    good = usage_of()
    entries = [decoded(good), decoded(good.but(sid="bad"))]
    setattr(entries[1].decoded, field, value)
    (ack,) = await usage.stream(batch(entries))
    assert counts(ack) == (1, 0, 0, 1)
    assert [q.index for q in ack.quarantined_records] == [1]
    assert ack.quarantined_records[0].reason.startswith(f"{field}: not an IPv6 prefix")
    assert [s.acct_session_id for s in await usage.sessions()] == ["sess-1"]


async def test_raw_packet_is_quarantined_when_its_prefix_attribute_has_a_wrong_length(
    usage: Usage,
) -> None:
    rec = usage_of()
    bad = radius_packet(radius_attributes(rec) + bytes([123, 5, 0, 64, 0x20]))  # /64 in 1 octet
    ack = await usage.send_raw(raw_packet(bad, SOURCE, rec.arrival_at))
    assert counts(ack) == (0, 0, 0, 1)
    assert "123" in ack.quarantined_records[0].reason


async def _create_subscription(
    channel: grpc.aio.Channel, tenant: TenantCtx, *values: str
) -> accounts_pb2.Subscription:
    static = accounts_pb2.RADIUS_IDENTITY_KIND_STATIC_IP
    return await create_subscription(channel, tenant, [(static, v) for v in values])


@pytest.mark.parametrize(
    "value",
    [
        "2001:db8::1/64",  # bits set past the length
        "2001:db8::/129",
        "192.0.2.0/24",  # IPv4 prefixes are not identities
        "fe80::1%eth0",
        "2001:db8::/56/1",
        "not-an-ip",
    ],
)
async def test_static_ip_is_refused_naming_the_field_when_it_is_no_address_or_ipv6_prefix(
    channel: grpc.aio.Channel, tenant: TenantCtx, value: str
) -> None:
    await expect_status(
        _create_subscription(channel, tenant, "192.0.2.7", value),
        grpc.StatusCode.INVALID_ARGUMENT,
        "subscription.radius_identities[1].value",
    )


async def test_static_ip_is_stored_canonical_so_another_notation_is_the_same_identity(
    channel: grpc.aio.Channel, tenant: TenantCtx
) -> None:
    sub = await _create_subscription(
        channel, tenant, "2001:0DB8:1200:0000::/056", "2001:DB8::42/128", " 100.64.0.9 "
    )
    assert {i.value for i in sub.radius_identities} == {PD, "2001:db8::42", "100.64.0.9"}
    await expect_status(
        _create_subscription(channel, tenant, "2001:db8::42", "2001:db8::42/128"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "subscription.radius_identities[1].value",
    )
    await expect_status(
        _create_subscription(channel, tenant, "2001:db8:1200:0::/56"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "belongs to another subscription",
    )
