"""Projections are a function of the ledger: a rebuild reproduces them exactly."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from server.accounts.models import RadiusIdentity
from server.errors import NotFoundError
from server.usage import repository as repo
from server.usage.models import UnattributedBucket, UsageAnomaly, UsageBucket, UsageSession
from server.usage.rebuild import rebuild
from tests.conftest import RunningServer
from tests.usage.support import INTERIM, ON, START, STOP, Rec, Usage, at, counts
from tests.usage.test_api import subscribe


async def snapshot(server: RunningServer, tenant_id: uuid.UUID) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    async with server.db.read() as session:
        for name, model, skip in (
            ("sessions", UsageSession, ()),
            ("buckets", UsageBucket, ()),
            ("unattributed", UnattributedBucket, ()),
            ("anomalies", UsageAnomaly, ("batch_uid", "ordinal")),
        ):
            columns = [c for c in model.__table__.columns if c.name not in skip]
            rows = (await session.execute(select(*columns).where(columns[0] == tenant_id))).all()
            out[name] = sorted(tuple(row) for row in rows)
    return out


async def test_rebuild_reproduces_sessions_and_buckets_when_ledger_is_replayed(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    await subscribe(channel, usage.tenant, user_name="alice")
    await usage.register_nas(nas_key="nas-2", swap_direction=True)
    await usage.send_each(
        "raw",
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
        Rec(INTERIM, t=4200, session_time=4200, inp=9000, out=7000),
        Rec(INTERIM, t=1200, session_time=1200, inp=3000, out=3000),  # late
        Rec(INTERIM, sid="lost", user="bob", t=5000, session_time=100, inp=5, out=6),
    )
    await usage.send(
        "decoded",
        Rec(INTERIM, sid="reset", nas="nas-2", t=600, session_time=600, inp=5000, out=1),
        Rec(INTERIM, sid="reset", nas="nas-2", t=1200, session_time=1200, inp=10, out=2),
        Rec(START, sid="boot", nas="nas-2", t=0, session_time=0),
        Rec(INTERIM, sid="skew", user="eve", t=900, session_time=900, inp=1, out=1, skew_s=9999),
    )
    assert await usage.sweep(at(4200 + 2200)) >= 1
    await usage.send_each(
        "decoded",
        Rec(STOP, t=9000, session_time=9000, inp=9500, out=7700, cause=1),  # late Stop
        Rec(ON, sid="", nas="nas-2", user="", t=2000),
        Rec(INTERIM, t=9600, session_time=9600, inp=1, out=1),  # interim after Stop
    )
    before = await snapshot(server, usage.tenant.tenant_id)
    assert len(before["sessions"]) == 5
    assert before["buckets"]
    assert before["unattributed"]
    assert before["anomalies"]

    report = await rebuild(server.db, usage.tenant.tenant_id)

    assert report["entries"] >= 10
    assert await snapshot(server, usage.tenant.tenant_id) == before
    # The live engine reloads the rebuilt state and carries on.
    ack = await usage.send(
        "decoded", Rec(INTERIM, sid="lost", user="bob", t=5600, session_time=700, inp=50, out=60)
    )
    assert counts(ack) == (1, 0, 0, 0)
    assert (await usage.session("lost")).input_bytes == 50


async def test_rebuild_continues_a_reused_id_after_a_replayed_sweep_forgot_its_instance(
    usage: Usage, server: RunningServer
) -> None:
    # The replayed sweep drops the closed generation 1 from the rebuilding engine, as it
    # did from the live one: generation 2 must be numbered from the rebuilt rows.
    day = 86_400
    await usage.send_each(
        "raw",
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=100, session_time=100, inp=10, out=20, cause=1),
        Rec(START, sid="other", t=100, session_time=0),
    )
    assert await usage.sweep(at(2 * day + 200)) == 1
    await usage.send_each(
        "raw",
        Rec(START, t=3 * day, session_time=0),
        Rec(INTERIM, t=3 * day + 600, session_time=600, inp=5, out=6),
    )
    before = await snapshot(server, usage.tenant.tenant_id)
    assert sorted((s.acct_session_id, s.generation) for s in await usage.sessions()) == [
        ("other", 1),
        ("sess-1", 1),
        ("sess-1", 2),
    ]

    await rebuild(server.db, usage.tenant.tenant_id)

    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_rebuild_applies_a_late_stop_to_a_generation_a_replayed_sweep_forgot(
    usage: Usage, replica: Usage, server: RunningServer
) -> None:
    # The live replica holds generation 1 (it loads 7 days of closed sessions) while the
    # rebuilding engine has forgotten it at the replayed sweep (48 h): both must land
    # generation 1's late Stop on it.
    day = 86_400
    await usage.send_each(
        "decoded",
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=100, out=200),
        Rec(ON, sid="", user="", t=1000),
        Rec(START, sid="other", t=1500, session_time=0),
        Rec(START, t=2 * day, session_time=0),
    )
    # The sweep closes "other", so it is recorded and replayed.
    assert await usage.sweep(at(2 * day + 1000)) == 1
    ack = await replica.send(
        "decoded", Rec(STOP, t=900, session_time=900, inp=300, out=500, cause=1, delay=2 * day)
    )
    assert counts(ack) == (1, 0, 0, 0)
    before = await snapshot(server, usage.tenant.tenant_id)

    await rebuild(server.db, usage.tenant.tenant_id)

    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_rebuild_keeps_raw_packets_accepted_before_their_secret_changed(
    usage: Usage, server: RunningServer
) -> None:
    await usage.send_each(
        "raw",
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
        Rec(STOP, t=900, session_time=900, inp=1500, out=2500, cause=1),
    )
    before = await snapshot(server, usage.tenant.tenant_id)
    assert [(s.input_bytes, s.output_bytes) for s in await usage.sessions()] == [(1500, 2500)]
    await usage.register_nas(secret="rotated")  # the NAS's secret changes afterwards

    report = await rebuild(server.db, usage.tenant.tenant_id)

    assert report["entries"] == 3
    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_rebuild_applies_each_batch_with_the_nas_policy_it_was_applied_with(
    usage: Usage, server: RunningServer
) -> None:
    await usage.send("decoded", Rec(INTERIM, t=600, session_time=600, inp=100, out=900))
    # The NAS turns out to report directions the other way: later records are swapped.
    await usage.register_nas(nas_key="nas-1", swap_direction=True, interim_interval_s=60)
    await usage.send("decoded", Rec(INTERIM, sid="sw", t=1200, session_time=600, inp=4, out=9))
    # Stale under the new interval (3 x 60 s + 300 s), not under the default one.
    assert await usage.sweep(at(1200 + 600)) == 2
    await usage.register_nas(nas_key="nas-1")  # and back to the defaults
    await usage.send("decoded", Rec(INTERIM, sid="next", t=2000, session_time=10, inp=7, out=3))
    before = await snapshot(server, usage.tenant.tenant_id)
    assert ((await usage.session()).input_bytes, (await usage.session()).output_bytes) == (100, 900)
    assert ((await usage.session("sw")).input_bytes, (await usage.session("sw")).output_bytes) == (
        9,
        4,
    )
    assert (await usage.session("next")).input_bytes == 7

    await rebuild(server.db, usage.tenant.tenant_id)

    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_rebuild_attributes_each_session_as_it_was_attributed_when_identities_came_later(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    """An attribution sticks live; a rebuild makes the same choice, because it looks up
    identities as they were when each batch was written, not as they are now."""
    mac = "02-00-00-00-00-01"
    by_mac = await subscribe(channel, usage.tenant, calling_station_id=mac)
    # Attributed through its Calling-Station-Id: alice has no subscription yet.
    await usage.send("decoded", Rec(INTERIM, sid="s1", user="alice", calling=mac, t=600,
                                    session_time=600, inp=1000, out=2000))  # fmt: skip
    # Unattributed until "bob" or its MAC is registered, then attributed by the first.
    late_mac = "02-00-00-00-00-02"
    await usage.send("decoded", Rec(INTERIM, sid="s2", user="bob", calling=late_mac, t=600,
                                    session_time=600, inp=10, out=20))  # fmt: skip
    # The same, with no record after the registrations.
    idle_mac = "02-00-00-00-00-03"
    await usage.send("decoded", Rec(INTERIM, sid="s4", user="carol", calling=idle_mac, t=600,
                                    session_time=600, inp=7, out=8))  # fmt: skip
    by_late_mac = await subscribe(channel, usage.tenant, calling_station_id=late_mac)
    by_idle_mac = await subscribe(channel, usage.tenant, calling_station_id=idle_mac)
    by_carol = await subscribe(channel, usage.tenant, user_name="carol")
    # The User-Names come later and rank first, but both sessions keep their subscription.
    by_alice = await subscribe(channel, usage.tenant, user_name="alice")
    by_bob = await subscribe(channel, usage.tenant, user_name="bob")
    await usage.send(
        "decoded",
        Rec(INTERIM, sid="s1", user="alice", calling=mac, t=1200, session_time=1200,
            inp=3000, out=4000),
        Rec(INTERIM, sid="s2", user="bob", calling=late_mac, t=1200, session_time=1200,
            inp=30, out=40),
        Rec(INTERIM, sid="s3", user="alice", calling=mac, t=1200, session_time=600,
            inp=5, out=6),
    )  # fmt: skip
    before = await snapshot(server, usage.tenant.tenant_id)
    owner = {row[2]: row[9] for row in before["sessions"]}  # acct_session_id: subscription
    assert owner == {
        "s1": uuid.UUID(by_mac),
        "s2": uuid.UUID(by_late_mac),
        "s3": uuid.UUID(by_alice),  # new since alice was registered
        "s4": uuid.UUID(by_idle_mac),
    }
    assert not {by_bob, by_carol} & {str(v) for v in owner.values()}
    assert not before["unattributed"]

    await rebuild(server.db, usage.tenant.tenant_id)

    assert await snapshot(server, usage.tenant.tenant_id) == before


@pytest.mark.parametrize("competing", [True, False], ids=["outranked-mac", "only-identity"])
async def test_a_batch_written_after_a_registration_it_was_received_before_is_attributed_alike(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer, competing: bool
) -> None:
    """A batch waits for its locks after it is received; an identity registered meanwhile
    is committed when it is written. The rebuild attributes the batch by the identities
    registered when it was received, so the live write must too (emulated here by an
    identity registered "in an hour": after the batch is received, before it is written).
    With an identity registered before (a MAC), that one's subscription, the User-Name's
    outranking it notwithstanding; with none, the User-Name's, which is what its
    registration's re-attribution gives the session."""
    mac = "02-00-00-00-00-0b"
    by_mac = await subscribe(channel, usage.tenant, calling_station_id=mac) if competing else ""
    by_name = await subscribe(channel, usage.tenant)  # its identity comes below
    async with server.db.transaction() as session:
        session.add(RadiusIdentity(
            tenant_id=usage.tenant.tenant_id, kind=1, value="ru",
            subscription_id=uuid.UUID(by_name),
            created_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        ))  # fmt: skip
    await usage.send("decoded", Rec(INTERIM, sid="s1", user="ru", calling=mac, t=600,
                                    session_time=600, inp=5, out=6))  # fmt: skip
    assert (await usage.session("s1")).subscription_id == (by_mac if competing else by_name)
    before = await snapshot(server, usage.tenant.tenant_id)
    assert not before["unattributed"]
    await rebuild(server.db, usage.tenant.tenant_id)
    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_a_session_named_by_a_later_record_goes_to_the_first_identity_it_then_matches(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    """The first batch carries only a MAC, the next the User-Name too; alice is registered
    after both, then the MAC to another subscription. alice's registration attributed the
    session, by its identity then. A rebuild replaying the first batch must not look ahead
    to identities registered after it was written (it gave the session to the MAC's
    subscription, which sticks)."""
    mac = "02-00-00-00-00-21"
    await usage.send("decoded", Rec(INTERIM, sid="s1", user="", calling=mac, t=600,
                                    session_time=600, inp=400, out=800))  # fmt: skip
    await usage.send("decoded", Rec(INTERIM, sid="s1", user="alice", calling=mac, t=1200,
                                    session_time=1200, inp=1000, out=2000))  # fmt: skip
    by_name = await subscribe(channel, usage.tenant, user_name="alice")
    await subscribe(channel, usage.tenant, calling_station_id=mac)
    assert (await usage.session("s1")).subscription_id == by_name
    before = await snapshot(server, usage.tenant.tenant_id)
    await rebuild(server.db, usage.tenant.tenant_id)
    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_a_session_a_registration_race_left_unattributed_keeps_its_first_subscription(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    """On PostgreSQL a batch can commit while an identity matching it is being registered:
    neither sees the other, and the session is left unattributed (emulated here by an
    identity row written without the registration's re-attribution). The next
    re-attribution (the next registration) gives it the subscription of the identity
    registered first, not the one registered since, which outranks it: as a rebuild does."""
    mac = "02-00-00-00-00-07"
    await usage.send("decoded", Rec(INTERIM, sid="s1", user="dora", calling=mac, t=600,
                                    session_time=600, inp=5, out=6))  # fmt: skip
    by_mac = await subscribe(channel, usage.tenant)  # no identity yet
    async with server.db.transaction() as session:
        session.add(RadiusIdentity(
            tenant_id=usage.tenant.tenant_id, kind=2, value="02:00:00:00:00:07",
            subscription_id=uuid.UUID(by_mac), created_at=dt.datetime.now(dt.UTC),
        ))  # fmt: skip
    assert (await usage.session("s1")).subscription_id == ""  # the race
    await subscribe(channel, usage.tenant, user_name="dora")  # outranks the MAC
    assert (await usage.session("s1")).subscription_id == by_mac
    before = await snapshot(server, usage.tenant.tenant_id)
    await rebuild(server.db, usage.tenant.tenant_id)
    assert await snapshot(server, usage.tenant.tenant_id) == before


async def test_rebuild_waits_for_a_batch_in_flight_that_adds_a_nas(
    usage: Usage, server: RunningServer
) -> None:
    # A batch had inserted a NAS row the rebuild did not see (not committed when it listed
    # the NASes) and committed before the rebuild deleted the projections: its sessions and
    # buckets were deleted and never replayed. A rebuild now waits for every batch in flight.
    await usage.send("decoded", Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    tenant = usage.tenant.tenant_id
    before = (await rebuild(server.db, tenant))["nas"]
    async with server.db.transaction() as session:
        await repo.begin_write(session)
        await repo.lock_nas(session, tenant, ["nas-new"])
        rebuilding = asyncio.create_task(rebuild(server.db, tenant))
        await asyncio.sleep(0.5)
        assert not rebuilding.done()
    report = await asyncio.wait_for(rebuilding, 30)
    assert report["nas"] == before + 1


async def test_rebuild_of_a_tenant_that_does_not_exist_is_refused(server: RunningServer) -> None:
    """A mistyped --tenant is an error, not a successful rebuild of nothing."""
    missing = uuid.UUID(int=0)
    with pytest.raises(NotFoundError, match=f"tenant {missing} not found"):
        await rebuild(server.db, missing)


async def test_an_identity_is_registered_when_its_registration_holds_the_nas_locks(
    usage: Usage, channel: grpc.aio.Channel, server: RunningServer
) -> None:
    """A registration waits for the tenant's NAS locks (a batch, or another registration,
    holds them). Its identities were stamped before the wait, so of two registrations racing
    on PostgreSQL the one stamped first could take effect second: live, a session went to
    one subscription, and a rebuild, which replays registrations in stamp order, gave it to
    the other. They are now stamped once the locks are held."""
    await usage.send(
        "decoded", Rec(INTERIM, sid="s1", user="dora", t=600, session_time=600, inp=5, out=6)
    )
    tenant = usage.tenant.tenant_id
    async with server.db.transaction() as session:
        await repo.begin_write(session)
        await repo.lock_nas(session, tenant, ["nas-1"])
        registering = asyncio.create_task(subscribe(channel, usage.tenant, user_name="dora"))
        await asyncio.sleep(0.5)
        assert not registering.done()
        released = dt.datetime.now(dt.UTC)
    sub = await asyncio.wait_for(registering, 30)
    async with server.db.read() as session:
        stamped = (
            await session.execute(
                select(RadiusIdentity.created_at).where(
                    RadiusIdentity.tenant_id == tenant,
                    RadiusIdentity.subscription_id == uuid.UUID(sub),
                )
            )
        ).scalar_one()
    assert stamped >= released
    assert (await usage.session("s1")).subscription_id == sub
    before = await snapshot(server, tenant)
    await rebuild(server.db, tenant)
    assert await snapshot(server, tenant) == before
