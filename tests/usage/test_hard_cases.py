"""Every hard case of RADIUS.md, through the real gRPC API, in both wire forms."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

import rating_core as rc
from isp_rating.v1 import usage_pb2 as pb
from server.usage.models import UnattributedBucket, UsageAnomaly
from tests.conftest import RunningServer, TenantCtx
from tests.usage.support import (
    INTERIM,
    OFF,
    ON,
    SOURCE,
    START,
    STOP,
    Rec,
    Usage,
    at,
    attr,
    batch,
    counts,
    entries,
    radius_attributes,
    radius_packet,
    raw_packet,
    utc,
)

GB = 1 << 30


async def test_usage_is_sum_of_deltas_when_interims_arrive_in_order(
    usage: Usage, form: str
) -> None:
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=5000),
        Rec(INTERIM, t=1200, session_time=1200, inp=3000, out=9000),
        Rec(STOP, t=1500, session_time=1500, inp=3500, out=9900, cause=1),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (3500, 9900)
    assert session.session_time_s == 1500
    assert session.state == pb.SESSION_STATE_CLOSED
    assert session.start_at.ToDatetime().isoformat() == at(0).replace(tzinfo=None).isoformat()
    assert session.stop_at.ToDatetime().isoformat() == at(1500).replace(tzinfo=None).isoformat()
    assert session.terminate_cause == 1
    assert list(session.flags) == []


async def test_retransmit_is_duplicate_when_delay_time_changes(usage: Usage, form: str) -> None:
    first = Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000)
    await usage.send(form, Rec(START, t=0, session_time=0))
    ack = await usage.send(form, first)
    again = await usage.send(form, first.but(delay=7))
    assert counts(ack) == (1, 0, 0, 0)
    assert counts(again) == (0, 1, 0, 0)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (1000, 2000)


async def test_record_is_counted_once_when_two_collectors_send_it(
    usage: Usage, form: str, channel: grpc.aio.Channel, tenant: TenantCtx
) -> None:
    other = Usage(channel, tenant)
    rec = Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000)
    one = await usage.send(form, rec)
    two = await other.send(form, rec.but(arrival_extra_s=0.25))
    assert counts(one) == (1, 0, 0, 0)
    assert counts(two) == (0, 1, 0, 0)
    assert (await usage.session()).input_bytes == 1000


async def test_repeat_inside_one_batch_is_duplicate_when_sent_twice_in_it(
    usage: Usage, form: str
) -> None:
    rec = Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000)
    ack = await usage.send(form, rec, rec.but(delay=3))
    assert counts(ack) == (1, 1, 0, 0)


async def test_older_interim_changes_nothing_when_it_arrives_late(usage: Usage, form: str) -> None:
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=1200, session_time=1200, inp=5000, out=7000),
        Rec(INTERIM, t=600, session_time=600, inp=2000, out=3000),
    )
    assert counts(acks[2]) == (0, 0, 1, 0)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (5000, 7000)


async def test_late_record_is_duplicate_when_resent_after_it_was_ledgered(
    usage: Usage, form: str
) -> None:
    old = Rec(INTERIM, t=600, session_time=600, inp=2000, out=3000)
    await usage.send_each(form, Rec(INTERIM, t=1200, session_time=1200, inp=5000, out=7000), old)
    again = await usage.send(form, old.but(delay=2))
    assert counts(again) == (0, 1, 0, 0)


async def test_session_is_created_and_flagged_when_start_is_lost(usage: Usage, form: str) -> None:
    ack = await usage.send(form, Rec(INTERIM, t=3600, session_time=1800, inp=4000, out=8000))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert "lost_start" in session.flags
    assert (session.input_bytes, session.output_bytes) == (4000, 8000)
    assert utc(session.start_at) == at(1800)
    assert session.state == pb.SESSION_STATE_OPEN


async def test_stale_session_closes_at_last_update_and_late_stop_applies_when_stop_was_lost(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
    )
    # Default policy: 3 x 600 s + 300 s of silence makes it stale.
    assert await usage.sweep(at(600 + 3 * 600 + 299)) == 0
    assert await usage.sweep(at(600 + 3 * 600 + 301)) == 1
    swept = await usage.session()
    assert swept.state == pb.SESSION_STATE_CLOSED
    assert "stale_closed" in swept.flags
    assert utc(swept.stop_at) == at(600)
    assert swept.session_time_s == 600
    ack = await usage.send(form, Rec(STOP, t=5000, session_time=5000, inp=1500, out=2600, cause=2))
    assert counts(ack) == (1, 0, 0, 0)
    late = await usage.session()
    assert len(await usage.sessions()) == 1
    assert (late.input_bytes, late.output_bytes) == (1500, 2600)
    assert "late_stop" in late.flags
    assert utc(late.stop_at) == at(5000)


@pytest.mark.parametrize("zeros", [True, False], ids=["zeros", "no-counters"])
async def test_high_water_mark_is_kept_when_stop_has_no_or_zero_counters(
    usage: Usage, form: str, zeros: bool
) -> None:
    counters = {"inp": 0, "out": 0} if zeros else {}
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
        Rec(STOP, t=700, session_time=700, cause=2, **counters),  # type: ignore[arg-type]
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (1000, 2000)
    assert session.state == pb.SESSION_STATE_CLOSED
    assert utc(session.stop_at) == at(700)
    assert session.session_time_s == 700
    assert "stop_regression" in session.flags


async def test_stop_with_zeros_is_flagged_when_the_session_had_counted_nothing(
    usage: Usage, form: str
) -> None:
    # RADIUS.md: a Stop "with zeros (some NASes send 0/0 on Lost-Carrier)" is flagged, also
    # when no Interim came before it (the mark it keeps is 0): the operator is told.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=900, session_time=900, inp=0, out=0, cause=2),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes, session.session_time_s) == (0, 0, 900)
    assert session.state == pb.SESSION_STATE_CLOSED
    assert "stop_regression" in session.flags


async def test_stop_counts_from_zero_when_its_lower_counters_follow_a_counter_reset(
    usage: Usage, form: str
) -> None:
    # Lower, non-zero counters with the session time up: a reset, also on a Stop.
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=5000, out=5000),
        Rec(STOP, t=1200, session_time=1200, inp=300, out=200, cause=1),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (5300, 5200)
    assert "counter_reset" in session.flags
    assert "stop_regression" not in session.flags


@pytest.mark.parametrize("stop_first", [False, True], ids=["in_order", "stop_first"])
@pytest.mark.parametrize(
    ("stop_s", "stop_counters", "totals", "flag", "not_flag"),
    [
        # Lower counters after a reset. Delivered first, the Stop is shown to follow a
        # reset by the older Interim's higher counters: the Interim's usage (before the
        # reset) is added to the Stop's (after it), as in order.
        (1200, (300, 200), (5300, 7200), "counter_reset", "stop_regression"),
        # Lost-Carrier's zeros carry no counter: the Interim has the usage, and no reset
        # is inferred from them.
        (1200, (0, 0), (5000, 7000), "stop_regression", "counter_reset"),
        # The same in the Interim's second: an Interim at the session time of a Stop
        # without counters, delivered after it, is not an Interim after Stop.
        (600, (0, 0), (5000, 7000), "stop_regression", "interim_after_stop"),
    ],
    ids=["reset", "zeros", "zeros-in-the-same-second"],
)
async def test_an_interim_and_the_stop_after_it_count_the_same_in_either_order(
    usage: Usage,
    form: str,
    stop_first: bool,
    stop_s: int,
    stop_counters: tuple[int, int],
    totals: tuple[int, int],
    flag: str,
    not_flag: str,
) -> None:
    interim = Rec(INTERIM, t=600, session_time=600, inp=5000, out=7000)
    inp, out = stop_counters
    stop = Rec(STOP, t=stop_s, session_time=stop_s, inp=inp, out=out, cause=1)
    acks = await usage.send_each(
        form, Rec(START, t=0, session_time=0), *((stop, interim) if stop_first else (interim, stop))
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == totals
    assert session.session_time_s == stop_s
    assert session.state == pb.SESSION_STATE_CLOSED
    assert utc(session.stop_at) == at(stop_s)
    assert flag in session.flags
    assert not_flag not in session.flags


async def test_only_the_usage_before_the_reset_is_added_when_an_older_record_shows_it(
    usage: Usage, form: str
) -> None:
    # 100 at 300 s; the reset falls between 600 s (5000) and 1200 s (300 since the reset).
    # The record at 600 s arrives last: 100 of its 5000 were counted already.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=300, session_time=300, inp=100, out=100),
        Rec(INTERIM, t=1200, session_time=1200, inp=300, out=300),
        Rec(INTERIM, t=600, session_time=600, inp=5000, out=200),
    )
    session = await usage.session()
    # Input: 5000 before the reset, 300 after. Output never went down (200 <= 300): no reset.
    assert (session.input_bytes, session.output_bytes) == (5300, 300)
    assert "counter_reset" in session.flags
    assert await usage.unattributed_bytes() == (5300, 300)  # the hourly buckets agree


async def test_wrap_is_inferred_when_the_record_before_it_arrives_after_it(
    usage: Usage, form: str
) -> None:
    await usage.register_nas(nas_key="nas-1", infer_wrap=True)
    await usage.send_each(
        form,
        Rec(INTERIM, t=1200, session_time=1200, inp=50, out=20, gigawords=False),
        Rec(INTERIM, t=600, session_time=600, inp=(1 << 32) - 100, out=10, gigawords=False),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == ((1 << 32) + 50, 20)
    assert "wrap_inferred" in session.flags
    assert "counter_reset" not in session.flags


async def test_interim_after_stop_adds_nothing_when_session_is_closed(
    usage: Usage, form: str
) -> None:
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=600, session_time=600, inp=1000, out=2000, cause=1),
        Rec(INTERIM, t=900, session_time=900, inp=9000, out=9000),
    )
    assert counts(acks[2]) == (0, 0, 1, 0)
    sessions = await usage.sessions()
    assert len(sessions) == 1
    assert (sessions[0].input_bytes, sessions[0].output_bytes) == (1000, 2000)
    assert sessions[0].state == pb.SESSION_STATE_CLOSED
    assert utc(sessions[0].stop_at) == at(600)
    assert "interim_after_stop" in sessions[0].flags


async def test_stop_delivered_after_an_interim_sent_after_it_still_ends_the_session(
    usage: Usage, form: str
) -> None:
    # The NAS sent an Interim-Update after its Stop, and that Interim arrived first: it was
    # counted as the session's newest record. The Stop, older than it, must still end the
    # session (not leave it open until the stale sweep) and record its terminate cause.
    stop = Rec(STOP, t=600, session_time=600, inp=1000, out=2000, cause=1)
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=900, session_time=900, inp=9000, out=9000),
        stop,
        stop.but(delay=5),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3 + [(0, 1, 0, 0)]
    session = await usage.session()
    assert session.state == pb.SESSION_STATE_CLOSED
    assert session.terminate_cause == 1
    # Closed at its last update: the usage counted up to it stays (no history to undo it).
    assert utc(session.stop_at) == at(900)
    assert (session.input_bytes, session.output_bytes) == (9000, 9000)
    assert "interim_after_stop" in session.flags
    assert "stale_closed" not in session.flags
    assert await usage.sessions(open_only=True) == []
    assert await usage.sweep(at(900 + 3 * 600 + 301)) == 0


async def test_stop_older_than_the_last_update_of_a_stale_closed_session_records_the_stop(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=900, session_time=900, inp=9000, out=9000),
    )
    assert await usage.sweep(at(900 + 3 * 600 + 301)) == 1
    ack = await usage.send(form, Rec(STOP, t=600, session_time=600, inp=1000, out=2000, cause=4))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert session.state == pb.SESSION_STATE_CLOSED
    assert session.terminate_cause == 4
    assert utc(session.stop_at) == at(900)
    assert (session.input_bytes, session.output_bytes) == (9000, 9000)
    assert {"stale_closed", "late_stop", "interim_after_stop"} <= set(session.flags)


async def test_retransmitted_interim_after_a_stop_without_session_time_flags_nothing(
    usage: Usage, server: RunningServer, form: str
) -> None:
    # The Stop carries no Acct-Session-Time, so a copy of the last Interim is not older than
    # it: were it new it would be an Interim after Stop, but it is a repeat, which changes
    # nothing.
    interim = Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000)
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        interim,
        Rec(STOP, t=900, session_time=None, inp=1500, out=2500, cause=1),
        interim.but(delay=5),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3 + [(0, 1, 0, 0)]
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (1500, 2500)
    assert "interim_after_stop" not in session.flags
    async with server.db.read() as db:
        mine = UsageAnomaly.tenant_id == usage.tenant.tenant_id
        flags = (await db.scalars(select(UsageAnomaly.flag).where(mine))).all()
    assert "interim_after_stop" not in {name for flag in flags for name in rc.flag_names(flag)}


async def test_interim_after_late_stop_adds_nothing_when_another_replica_loads_the_session(
    usage: Usage, replica: Usage, form: str
) -> None:
    # Closed stale, then stopped by a Stop without Acct-Terminate-Cause: a replica that
    # loads the session from the database must still see a stopped session.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
    )
    assert await usage.sweep(at(600 + 3 * 600 + 301)) == 1
    await usage.send(form, Rec(STOP, t=5000, session_time=5000, inp=1500, out=2600))
    ack = await replica.send(form, Rec(INTERIM, t=5100, session_time=5100, inp=9000, out=9000))
    assert counts(ack) == (0, 0, 1, 0)
    session = await replica.session()
    assert (session.input_bytes, session.output_bytes) == (1500, 2600)
    assert utc(session.stop_at) == at(5000)
    assert {"stale_closed", "late_stop", "interim_after_stop"} <= set(session.flags)


async def test_reboot_closes_sessions_started_before_it_when_accounting_on_arrives(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, sid="old", t=0, session_time=0),
        Rec(INTERIM, sid="old", t=600, session_time=600, inp=100, out=200),
        # A Start that raced ahead of the Accounting-On: it began after the reboot.
        Rec(START, sid="new", t=1001, session_time=0),
        Rec(ON, sid="", t=1000, user=""),
    )
    old = await usage.session("old")
    new = await usage.session("new")
    assert old.state == pb.SESSION_STATE_CLOSED
    assert "nas_reboot_closed" in old.flags
    assert utc(old.stop_at) == at(600)  # its last update
    assert (old.input_bytes, old.output_bytes) == (100, 200)
    assert new.state == pb.SESSION_STATE_OPEN


async def test_accounting_off_closes_open_sessions_when_nas_goes_down(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(OFF, sid="", t=100, user=""),
    )
    assert (await usage.session()).state == pb.SESSION_STATE_CLOSED


async def test_arrival_minus_delay_is_event_time_when_nas_clock_is_skewed(
    usage: Usage, form: str
) -> None:
    ack = await usage.send(
        form, Rec(INTERIM, t=7200, session_time=3600, inp=10, out=20, delay=5, skew_s=86_400)
    )
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert "clock_skew" in session.flags
    # arrival = event + delay; event time = arrival - delay = T0 + 7200 s.
    assert utc(session.last_update_at) == at(7200)


@pytest.mark.parametrize(
    ("skew_s", "late_at", "transit_s"),
    [(-299, 1200, 2.5), (0, 1200, 301), (-300, 0, 1)],
    ids=["clock-near-the-tolerance", "interim-delayed-past-it", "start-set-aside"],
)
async def test_one_session_is_counted_once_when_its_records_are_timed_two_ways(
    usage: Usage, form: str, skew_s: float, late_at: int, transit_s: float
) -> None:
    # One record's Event-Timestamp is set aside (skewed: the NAS clock near the tolerance
    # and the request a little slower, or a correct clock and a request delayed past the
    # tolerance without Acct-Delay-Time saying so), the others' trusted: the two readings
    # imply starts about the tolerance apart. That was "far": a second generation counted
    # the session's cumulative counters again (5 MB up instead of 3).
    def rec(status: int, t: int, up: int | None = None, down: int | None = None) -> Rec:
        extra = transit_s if t == late_at else 0.0
        cause = 1 if status == STOP else None
        return Rec(
            status, t=t, session_time=t, inp=up, out=down, skew_s=skew_s,
            arrival_extra_s=extra, cause=cause,
        )  # fmt: skip

    acks = await usage.send_each(
        form,
        rec(START, 0),
        rec(INTERIM, 600, 1_000_000, 5_000_000),
        rec(INTERIM, 1200, 2_000_000, 9_000_000),
        rec(STOP, 1800, 3_000_000, 12_000_000),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    (session,) = await usage.sessions()
    assert (session.generation, session.state) == (1, pb.SESSION_STATE_CLOSED)
    assert (session.input_bytes, session.output_bytes) == (3_000_000, 12_000_000)
    assert session.session_time_s == 1800
    assert "clock_skew" in session.flags
    assert "lost_start" not in session.flags


async def test_a_stop_read_by_another_clock_than_its_start_never_precedes_it(
    usage: Usage, form: str
) -> None:
    # A NAS clock 299 s behind: the Start, 2.5 s slower in transit, is timed by arrival
    # (T0 + 2.5 s); the Stop ten seconds later by its trusted Event-Timestamp (T0 - 289 s).
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0, skew_s=-299, arrival_extra_s=2.5),
        Rec(STOP, t=10, session_time=10, inp=100, out=200, skew_s=-299, cause=1),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 2
    (session,) = await usage.sessions()
    assert (session.generation, session.input_bytes, session.output_bytes) == (1, 100, 200)
    assert utc(session.start_at) == at(2.5)
    assert utc(session.stop_at) == utc(session.start_at)


async def test_a_stop_timed_by_a_clock_behind_never_precedes_an_update_it_follows(
    usage: Usage, form: str
) -> None:
    # The Stop reaches a collector whose clock is an hour behind: its Event-Timestamp
    # disagrees with arrival - delay, so its event time is half an hour before the start.
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
        Rec(STOP, t=1799, session_time=1800, inp=3000, out=4000, delay=1,
            arrival_extra_s=-3600, cause=1),
    )  # fmt: skip
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3
    (session,) = await usage.sessions()
    assert (session.state, session.input_bytes, session.output_bytes) == (
        pb.SESSION_STATE_CLOSED, 3000, 4000,
    )  # fmt: skip
    assert "clock_skew" in session.flags
    assert utc(session.last_update_at) == at(600)
    assert utc(session.stop_at) == at(600)


async def test_a_start_late_in_its_second_stays_put_when_replicas_load_the_session(
    usage: Usage, replica: Usage, form: str
) -> None:
    # SQLite read a stored time of .9995 s or more a second late (strftime rounded it up):
    # each load moved the start on by a second until a record implied a start "far" from
    # it, and a second generation counted the session again.
    await usage.send(form, Rec(START, t=0.9999, session_time=0, event=False))
    for i, side in enumerate([replica, usage, replica, usage], start=1):
        t, n = 0.9999 + 600 * i, 1000 * i
        rec = Rec(INTERIM, t=t, session_time=600 * i, inp=n, out=n, event=False)
        assert counts(await side.send(form, rec)) == (1, 0, 0, 0)
    (session,) = await usage.sessions()
    assert utc(session.start_at) == at(0.9999)
    assert (session.input_bytes, session.generation) == (4000, 1)


@pytest.mark.parametrize(
    ("skew_s", "reuse_after_stop"),
    [(60, 20), (290, 20), (-310, 3)],
    ids=["clock-60s-ahead", "clock-290s-ahead", "clock-set-aside"],
)
async def test_an_id_reused_soon_after_its_stop_is_a_new_session_whatever_the_nas_clock(
    usage: Usage, form: str, skew_s: int, reuse_after_stop: int
) -> None:
    # The other reading of a record's time (arrival - delay for a trusted Event-Timestamp)
    # is off by the NAS's skew: compared with a start read from an Event-Timestamp it
    # placed the reused id's new session in the old one, whose usage it then was (`late`).
    def rec(status: int, t: int, st: int, up: int | None = None, down: int | None = None) -> Rec:
        cause = 1 if status == STOP else None
        return Rec(status, t=t, session_time=st, inp=up, out=down, skew_s=skew_s, cause=cause)

    again = 200 + reuse_after_stop
    acks = await usage.send_each(
        form,
        rec(START, 0, 0),
        rec(STOP, 200, 200, 1_000_000, 2_000_000),
        rec(START, again, 0),
        rec(STOP, again + 50, 50, 300_000, 400_000),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    gens = by_generation(await usage.sessions())
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes) == (1_000_000, 2_000_000)
    assert (gens[2].input_bytes, gens[2].output_bytes) == (300_000, 400_000)
    assert not {"lost_start", "interim_after_stop"} & {f for g in gens.values() for f in g.flags}


async def test_two_sessions_exist_when_same_session_id_comes_from_two_nases(
    usage: Usage, form: str
) -> None:
    await usage.send(
        form,
        Rec(INTERIM, nas="nas-a", t=600, session_time=600, inp=1, out=2),
        Rec(INTERIM, nas="nas-b", t=600, session_time=600, inp=10, out=20),
    )
    a = await usage.session(nas="nas-a")
    b = await usage.session(nas="nas-b")
    assert (a.input_bytes, b.input_bytes) == (1, 10)


async def test_counters_fold_gigawords_when_usage_exceeds_32_bits(usage: Usage, form: str) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=5 * GB, out=3 * (1 << 32) + 7),
        Rec(INTERIM, t=1200, session_time=1200, inp=9 * (1 << 32) + 1, out=12 * (1 << 32)),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (9 * (1 << 32) + 1, 12 * (1 << 32))


async def test_directions_swap_when_nas_policy_says_so(usage: Usage, form: str) -> None:
    await usage.register_nas(nas_key="nas-1", swap_direction=True)
    await usage.send(form, Rec(INTERIM, t=600, session_time=600, inp=111, out=999))
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (999, 111)


async def test_counter_reset_keeps_old_total_when_counter_goes_down(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=5000, out=5000),
        Rec(INTERIM, t=1200, session_time=1200, inp=100, out=200),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (5100, 5200)
    assert "counter_reset" in session.flags


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (pb.AccountingRecord(acct_session_id="x", source_address="198.51.100.7"), "Status-Type"),
        (
            pb.AccountingRecord(
                status_type=15,  # type: ignore[arg-type]
                acct_session_id="x",
                source_address="198.51.100.7",
            ),
            "Status-Type",
        ),
        *[
            (
                pb.AccountingRecord(
                    status_type=INTERIM,  # type: ignore[arg-type]
                    acct_session_id="x",
                    **{"source_address": "198.51.100.7", field: value},  # type: ignore[arg-type]
                ),
                f"{field}: not",
            )
            for field, value in [
                ("nas_ip_address", "not-an-ip"),
                ("nas_ip_address", "2001:db8::1"),
                ("nas_ipv6_address", "192.0.2.1"),
                ("framed_ip_address", "999.1.1.1"),
                ("source_address", "bogus source"),
            ]
        ],
        *[
            (
                pb.AccountingRecord(
                    status_type=INTERIM,  # type: ignore[arg-type]
                    acct_session_id="x",
                    nas_identifier="nas-1",
                    arrival_time=Timestamp(seconds=seconds),
                ),
                "arrival_time",
            )
            for seconds in (2**40, -(2**40), -1)
        ],
    ],
    ids=[
        "missing-status",
        "unknown-status",
        "nas-ip-not-ipv4",
        "nas-ip-is-ipv6",
        "nas-ipv6-not-ipv6",
        "framed-ip-not-ipv4",
        "source-not-an-address",
        "arrival-past-9999",
        "arrival-far-before-1970",
        "arrival-before-1970",
    ],
)
async def test_record_is_quarantined_with_reason_when_decoded_form_is_malformed(
    usage: Usage, record: pb.AccountingRecord, reason: str
) -> None:
    good = entries("decoded", [Rec(INTERIM, t=600, session_time=600, inp=1, out=1)])
    (ack,) = await usage.stream(batch([good[0], pb.AccountingEntry(decoded=record)]))
    assert counts(ack) == (1, 0, 0, 1)
    assert [q.index for q in ack.quarantined_records] == [1]
    assert reason in ack.quarantined_records[0].reason
    # Nothing of the bad record reached the projections: the tenant's reads still work.
    assert [s.acct_session_id for s in await usage.sessions()] == ["sess-1"]


async def test_raw_packet_is_quarantined_when_its_arrival_time_is_out_of_range(
    usage: Usage,
) -> None:
    good, bad = entries("raw", [Rec(INTERIM, t=600, session_time=600, inp=1, out=1)] * 2)
    bad.raw.arrival_time.seconds = 2**40
    (ack,) = await usage.stream(batch([good, bad]))
    assert counts(ack) == (1, 0, 0, 1)
    assert "arrival_time" in ack.quarantined_records[0].reason
    assert (await usage.session()).input_bytes == 1


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(32_503_680_000, 1_000), (253_402_300_799, 999_999_000)],
    ids=["year-3000-plus-1us", "last-microsecond-of-9999"],
)
async def test_times_at_the_far_end_of_the_range_are_stored_to_the_microsecond(
    usage: Usage, seconds: int, nanos: int
) -> None:
    # Past 2^53 µs (the year 2255) PostgreSQL's interval arithmetic in float8 rounded: the
    # last microsecond of 9999 became the year 10000, which no read could decode after.
    arrival = Timestamp(seconds=seconds, nanos=nanos)
    (start,) = entries("decoded", [Rec(START, event=False)])
    start.decoded.arrival_time.CopyFrom(arrival)
    (ack,) = await usage.stream(batch([start]))
    assert counts(ack) == (1, 0, 0, 0)
    (listed,) = await usage.sessions()
    got = await usage.stub.GetSession(pb.GetSessionRequest(id=listed.id), metadata=usage.metadata)
    for session in (listed, got):
        assert (session.start_at, session.last_update_at) == (arrival, arrival)


async def test_raw_packet_is_quarantined_with_reason_when_counter_has_wrong_length(
    usage: Usage,
) -> None:
    from tests.usage.support import attr, attr_int, radius_packet, raw_packet

    bad = radius_packet(attr_int(40, INTERIM) + attr(44, b"x") + attr(42, b"\x00\x01"))
    wrong_secret = radius_packet(attr_int(40, INTERIM) + attr(44, b"y"), secret="nope")
    (ack,) = await usage.stream(
        batch([raw_packet(bad, SOURCE, at(0)), raw_packet(wrong_secret, SOURCE, at(0))])
    )
    assert counts(ack) == (0, 0, 0, 2)
    reasons = [q.reason for q in ack.quarantined_records]
    assert [q.index for q in ack.quarantined_records] == [0, 1]
    assert all(reasons), reasons


# ---------------------------------------------------------------- generations


def by_generation(sessions: list[pb.Session]) -> dict[int, pb.Session]:
    return {s.generation: s for s in sessions}


def of_id(sessions: list[pb.Session], sid: str) -> list[pb.Session]:
    return [s for s in sessions if s.acct_session_id == sid]


async def test_new_generation_begins_when_id_is_reused_in_the_second_the_old_one_stopped(
    usage: Usage, form: str
) -> None:
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=100, session_time=100, inp=10, out=10, cause=1),
        Rec(START, t=100, session_time=0),
        Rec(INTERIM, t=400, session_time=300, inp=9000, out=9000),
        Rec(STOP, t=700, session_time=600, inp=20000, out=20000, cause=1),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 5
    gens = by_generation(await usage.sessions())
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes) == (10, 10)
    assert utc(gens[1].stop_at) == at(100)
    assert (gens[2].input_bytes, gens[2].output_bytes) == (20000, 20000)
    assert utc(gens[2].start_at) == at(100)
    assert utc(gens[2].stop_at) == at(700)
    assert gens[2].session_time_s == 600


@pytest.mark.parametrize("reuse_at", [1, 2], ids=["in-the-second-of-the-stop", "a-second-later"])
async def test_new_generation_begins_when_id_is_reused_within_2s_of_the_old_start(
    usage: Usage, form: str, reuse_at: int
) -> None:
    # A Start with a trusted Event-Timestamp other than the closed instance's start is not
    # its copy (a copy carries the same one): the 2 s within which a Start is the instance's
    # own are for Starts timed by arrival. It was `late`, and so were the new session's
    # updates: their usage was lost.
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=1, session_time=1, inp=10, out=10, cause=1),
        Rec(START, t=reuse_at, session_time=0),
        Rec(INTERIM, t=reuse_at + 600, session_time=600, inp=1000, out=2000),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    gens = by_generation(await usage.sessions())
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes) == (10, 10)
    assert "interim_after_stop" not in gens[1].flags
    assert (gens[2].input_bytes, gens[2].output_bytes) == (1000, 2000)
    assert utc(gens[2].start_at) == at(reuse_at)
    assert gens[2].state == pb.SESSION_STATE_OPEN


async def test_new_generation_is_created_when_an_update_starts_after_the_old_one_stopped(
    usage: Usage, form: str
) -> None:
    # The reused id's Start was lost: its first Interim began (400 - 250 = 150) after the
    # old instance's Stop at 100, so it cannot be an Interim after that Stop.
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=100, session_time=100, inp=10, out=10, cause=1),
        Rec(INTERIM, t=400, session_time=250, inp=500, out=700),
    )
    assert counts(acks[2]) == (1, 0, 0, 0)
    gens = by_generation(await usage.sessions())
    assert (gens[1].input_bytes, gens[1].output_bytes) == (10, 10)
    assert "interim_after_stop" not in gens[1].flags
    assert (gens[2].input_bytes, gens[2].output_bytes) == (500, 700)
    assert "lost_start" in gens[2].flags
    assert utc(gens[2].start_at) == at(150)
    assert gens[2].state == pb.SESSION_STATE_OPEN


async def test_late_update_of_an_old_generation_changes_nothing_in_the_new_one(
    usage: Usage, form: str
) -> None:
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=60, session_time=60, inp=100, out=100),
        Rec(STOP, t=100, session_time=100, inp=200, out=200, cause=1),
        Rec(START, t=150, session_time=0),
        # Generation 1's Interim at 80 s, delayed: it started at 0, not at 150.
        Rec(INTERIM, t=80, session_time=80, inp=150, out=150),
        Rec(INTERIM, t=210, session_time=60, inp=50, out=60),
    )
    assert counts(acks[4]) == (0, 0, 1, 0)
    assert counts(acks[5]) == (1, 0, 0, 0)
    gens = by_generation(await usage.sessions())
    assert (gens[1].input_bytes, gens[1].output_bytes, gens[1].session_time_s) == (200, 200, 100)
    assert (gens[2].input_bytes, gens[2].output_bytes, gens[2].session_time_s) == (50, 60, 60)


async def test_new_generation_begins_when_start_implies_a_start_far_from_the_open_one(
    usage: Usage, form: str
) -> None:
    # No Stop between them: the NAS rebooted without Accounting-On and reused the id.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=1000),
        Rec(START, t=5000, session_time=0),
        Rec(INTERIM, t=5600, session_time=600, inp=40, out=50),
    )
    gens = by_generation(await usage.sessions())
    assert gens[1].state == pb.SESSION_STATE_CLOSED
    assert utc(gens[1].stop_at) == at(600)
    assert "stale_closed" in gens[1].flags
    assert (gens[1].input_bytes, gens[2].input_bytes, gens[2].output_bytes) == (1000, 40, 50)
    assert "generation_from_start_gap" in gens[2].flags
    assert gens[2].state == pb.SESSION_STATE_OPEN


async def test_stop_of_an_unseen_older_session_creates_it_below_the_open_newer_one(
    usage: Usage, form: str
) -> None:
    # The Stop of a session that ended before the NAS reused its id arrives after the new
    # session's Start; nothing of the old session was seen (its Start was lost).
    acks = await usage.send_each(
        form,
        Rec(START, t=5000, session_time=0),
        Rec(STOP, t=1000, session_time=1000, inp=500, out=700, cause=1),
    )
    assert counts(acks[1]) == (1, 0, 0, 0)
    gens = by_generation(await usage.sessions())
    newer, older = gens[1], gens[2]  # generations count in the order instances were found
    assert (utc(newer.start_at), newer.state, newer.input_bytes) == (
        at(5000),
        pb.SESSION_STATE_OPEN,
        0,
    )
    assert (utc(older.start_at), utc(older.stop_at)) == (at(0), at(1000))
    assert (older.input_bytes, older.output_bytes, older.session_time_s) == (500, 700, 1000)
    assert older.state == pb.SESSION_STATE_CLOSED
    assert "lost_start" in older.flags
    assert await usage.unattributed_bytes() == (500, 700)


async def test_generations_delivered_in_reverse_order_each_keep_their_usage(
    usage: Usage, form: str
) -> None:
    # Generation 2 (started at 1000) reaches the server before all of generation 1
    # (started at 0, stopped at 1000); then generation 2's Stop.
    acks = await usage.send_each(
        form,
        Rec(START, t=1000, session_time=0),
        Rec(INTERIM, t=1600, session_time=600, inp=60, out=6),
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=10, out=1),
        Rec(STOP, t=1000, session_time=1000, inp=20, out=2, cause=1),
        Rec(STOP, t=2000, session_time=1000, inp=80, out=8, cause=1),
        # A retransmit of the older session's Start is its own, not the newer one's.
        Rec(START, t=0, session_time=0, delay=5),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 6 + [(0, 1, 0, 0)]
    sessions = await usage.sessions()
    assert len(sessions) == 2
    by_start = {utc(s.start_at): s for s in sessions}
    first, second = by_start[at(0)], by_start[at(1000)]
    assert (first.input_bytes, first.output_bytes, first.session_time_s) == (20, 2, 1000)
    assert (second.input_bytes, second.output_bytes, second.session_time_s) == (80, 8, 1000)
    assert (utc(first.stop_at), utc(second.stop_at)) == (at(1000), at(2000))
    assert first.state == second.state == pb.SESSION_STATE_CLOSED
    assert await usage.unattributed_bytes() == (100, 10)


DAY = 86_400


async def test_reused_id_without_event_timestamps_counts_each_generation_with_the_same_content(
    usage: Usage, form: str
) -> None:
    # A NAS that sends no Event-Timestamp reuses the id a day later, and the new session's
    # records carry the same session time and counters as the old one's: other records.
    acks = await usage.send_each(
        form,
        Rec(START, t=0, event=False),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000, event=False),
        Rec(STOP, t=700, session_time=700, inp=1000, out=2000, cause=1, event=False),
        Rec(START, t=DAY, event=False),
        Rec(INTERIM, t=DAY + 600, session_time=600, inp=1000, out=2000, event=False),
        Rec(STOP, t=DAY + 700, session_time=700, inp=1000, out=2000, cause=1, event=False),
        # A retransmit of the new session's Stop is still a duplicate.
        Rec(STOP, t=DAY + 700, session_time=700, inp=1000, out=2000, cause=1, event=False, delay=4),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 6 + [(0, 1, 0, 0)]
    gens = by_generation(await usage.sessions())
    for g, start in ((1, 0), (2, DAY)):
        assert (gens[g].input_bytes, gens[g].output_bytes, gens[g].session_time_s) == (
            1000,
            2000,
            700,
        )
        assert (utc(gens[g].start_at), utc(gens[g].stop_at)) == (at(start), at(start + 700))
        assert gens[g].state == pb.SESSION_STATE_CLOSED
    assert await usage.unattributed_bytes() == (2000, 4000)


async def test_retransmitted_start_without_event_timestamp_is_a_duplicate_across_a_second(
    usage: Usage, form: str
) -> None:
    # Timed by arrival - Acct-Delay-Time, the copy lands in the next whole second.
    acks = await usage.send_each(
        form,
        Rec(START, t=10.9, event=False),
        Rec(START, t=10.9, event=False, delay=3, arrival_extra_s=0.2),
        Rec(INTERIM, t=610.9, session_time=600, inp=5, out=6, event=False),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0), (0, 1, 0, 0), (1, 0, 0, 0)]
    session = await usage.session()
    assert (session.generation, session.input_bytes, session.session_time_s) == (1, 5, 600)


# A session from a NAS that sends no Event-Timestamp: each record is timed by its arrival.
UNTIMED_START = Rec(START, t=0, event=False)
UNTIMED_INTERIM = Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000, event=False)
UNTIMED_STOP = Rec(STOP, t=700, session_time=700, inp=1500, out=2500, cause=1, event=False)


@pytest.mark.parametrize("late_s", [400, 3 * DAY])
async def test_copy_resent_unchanged_past_the_tolerance_is_a_duplicate(
    usage: Usage, form: str, late_s: int
) -> None:
    # RFC 5080 lets a NAS resend a request as it was, Acct-Delay-Time not updated. Without
    # Event-Timestamp each copy is timed by its arrival: one delivered past the tolerance
    # (300 s) implies a start that much later, but it is the same record.
    interim, stop = UNTIMED_INTERIM, UNTIMED_STOP
    acks = await usage.send_each(
        form,
        UNTIMED_START,
        interim,
        interim.but(arrival_extra_s=late_s - 100),  # before the Stop when 400 s late
        stop,
        # Past the session's next record (the Interim's copy) and after its Stop.
        interim.but(arrival_extra_s=late_s),
        stop.but(arrival_extra_s=late_s),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 2 + [(0, 1, 0, 0), (1, 0, 0, 0)] + [
        (0, 1, 0, 0)
    ] * 2
    (session,) = await usage.sessions()
    assert (session.generation, session.input_bytes, session.output_bytes) == (1, 1500, 2500)
    assert (session.session_time_s, session.state) == (700, pb.SESSION_STATE_CLOSED)
    assert (utc(session.start_at), utc(session.stop_at)) == (at(0), at(700))
    assert list(session.flags) == []
    assert await usage.unattributed_bytes() == (1500, 2500)


async def test_copy_resent_unchanged_is_a_duplicate_in_the_batch_of_its_original(
    usage: Usage, form: str
) -> None:
    ack = await usage.send(
        form,
        UNTIMED_START,
        UNTIMED_INTERIM,
        Rec(INTERIM, t=1200, session_time=1200, inp=3000, out=4000, event=False),
        UNTIMED_INTERIM.but(arrival_extra_s=1000),
    )
    assert counts(ack) == (3, 1, 0, 0)
    (session,) = await usage.sessions()
    assert (session.generation, session.input_bytes, session.output_bytes) == (1, 3000, 4000)
    assert session.state == pb.SESSION_STATE_OPEN


async def test_copy_resent_unchanged_is_a_duplicate_after_the_engine_forgot_its_session(
    usage: Usage, form: str
) -> None:
    # Two days on, a sweep drops the closed instance from the engine (its row is durable);
    # the id was reused meanwhile, so the copy's own instance is not the newest either.
    await usage.send_each(
        form,
        UNTIMED_START,
        UNTIMED_INTERIM,
        UNTIMED_STOP,
        Rec(START, t=DAY, event=False),
        Rec(STOP, t=DAY + 100, session_time=100, inp=10, out=20, cause=1, event=False),
        Rec(START, sid="other", t=DAY, session_time=0),
    )
    assert await usage.sweep(at(3 * DAY)) == 1
    ack = await usage.send(form, UNTIMED_INTERIM.but(arrival_extra_s=3 * DAY))
    assert counts(ack) == (0, 1, 0, 0)
    gens = by_generation(of_id(await usage.sessions(), "sess-1"))
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes) == (1500, 2500)
    assert (gens[2].input_bytes, gens[2].output_bytes) == (10, 20)


async def test_copies_of_several_records_resent_unchanged_in_one_batch_are_duplicates(
    usage: Usage, form: str
) -> None:
    # A collector catching up delivers copies of a session's older Interims at once: the
    # first would begin an instance, and the others would then go to it.
    interims = [
        Rec(INTERIM, t=300 * k, session_time=300 * k, inp=100 * k, out=200 * k, event=False)
        for k in range(1, 6)
    ]
    await usage.send_each(form, UNTIMED_START, *interims)
    ack = await usage.send(
        form,
        *(r.but(arrival_extra_s=500) for r in interims[:4]),
        Rec(START, sid="other", t=2000, event=False),
    )
    assert counts(ack) == (1, 4, 0, 0)
    session = await usage.session()
    assert (session.generation, session.input_bytes, session.output_bytes) == (1, 500, 1000)
    assert (session.state, list(session.flags)) == (pb.SESSION_STATE_OPEN, [])
    assert sorted(s.acct_session_id for s in await usage.sessions()) == ["other", "sess-1"]


async def test_reused_id_whose_start_was_lost_is_counted_when_its_content_differs(
    usage: Usage, form: str
) -> None:
    # Only the same content is a copy: the reused id's first Interim (its Start lost)
    # starts a generation of its own.
    acks = await usage.send_each(
        form,
        UNTIMED_START,
        UNTIMED_INTERIM,
        UNTIMED_STOP,
        UNTIMED_INTERIM.but(t=DAY + 600, out=2001),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    gens = by_generation(await usage.sessions())
    assert (gens[2].input_bytes, gens[2].output_bytes) == (1000, 2001)
    assert "lost_start" in gens[2].flags


async def test_accounting_on_without_event_timestamp_through_two_collectors_closes_once(
    usage: Usage, form: str
) -> None:
    # The second collector's copy arrives 0.5 s later: timed by arrival, it would close the
    # session that started just after the reboot.
    acks = await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(ON, sid="", t=999.9, user="", event=False),
        Rec(START, sid="new", t=1000, session_time=0),
        Rec(ON, sid="", t=999.9, user="", event=False, arrival_extra_s=0.5),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 3 + [(0, 1, 0, 0)]
    assert (await usage.session()).state == pb.SESSION_STATE_CLOSED
    new = await usage.session("new")
    assert (new.state, list(new.flags)) == (pb.SESSION_STATE_OPEN, [])


async def test_reused_id_continues_the_generations_after_the_engine_forgot_the_old_one(
    usage: Usage, form: str
) -> None:
    # Two days on, a sweep closes "other" and drops both closed instances from the engine
    # (their rows are durable): the id's stored generation 1 must not be started again.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=100, session_time=100, inp=10, out=20, cause=1),
        Rec(START, sid="other", t=100, session_time=0),
    )
    assert await usage.sweep(at(2 * DAY + 200)) == 1
    acks = await usage.send_each(
        form,
        Rec(START, t=3 * DAY, session_time=0),
        Rec(INTERIM, t=3 * DAY + 600, session_time=600, inp=5, out=6),
        # Generation 1's Interim at 50 s, delivered three days late: it changes nothing.
        Rec(INTERIM, t=50, session_time=50, inp=4, out=4, delay=3 * DAY),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0), (1, 0, 0, 0), (0, 0, 1, 0)]
    gens = by_generation(of_id(await usage.sessions(), "sess-1"))
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes) == (10, 20)
    assert (utc(gens[1].start_at), utc(gens[1].stop_at)) == (at(0), at(100))
    assert gens[1].state == pb.SESSION_STATE_CLOSED
    assert (gens[2].input_bytes, gens[2].output_bytes) == (5, 6)
    assert utc(gens[2].start_at) == at(3 * DAY)
    assert gens[2].state == pb.SESSION_STATE_OPEN


async def test_reused_id_continues_the_generations_when_a_replica_loads_only_recent_sessions(
    usage: Usage, replica: Usage, form: str
) -> None:
    # A replica's engine loads open sessions and those closed within 7 days of the NAS's
    # newest update: generation 1, closed 8 days before, is not among them.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(STOP, t=100, session_time=100, inp=10, out=20, cause=1),
        Rec(START, sid="other", t=8 * DAY, session_time=0),
    )
    acks = await replica.send_each(
        form,
        Rec(INTERIM, t=50, session_time=50, inp=4, out=4, delay=8 * DAY),
        Rec(START, t=8 * DAY + 60, session_time=0),
        Rec(STOP, t=8 * DAY + 120, session_time=60, inp=5, out=6, cause=1),
    )
    assert [counts(a) for a in acks] == [(0, 0, 1, 0), (1, 0, 0, 0), (1, 0, 0, 0)]
    gens = by_generation(of_id(await replica.sessions(), "sess-1"))
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes, gens[1].session_time_s) == (10, 20, 100)
    assert utc(gens[1].stop_at) == at(100)
    assert (gens[2].input_bytes, gens[2].output_bytes, gens[2].session_time_s) == (5, 6, 60)
    assert (utc(gens[2].start_at), utc(gens[2].stop_at)) == (at(8 * DAY + 60), at(8 * DAY + 120))


@pytest.mark.parametrize("forgotten", ["older_generation", "every_generation"])
async def test_late_stop_lands_on_its_generation_after_the_engine_forgot_it(
    usage: Usage, form: str, forgotten: str
) -> None:
    # Generation 1 lost its Stop and an Accounting-On closed it at its last update; the id
    # is reused two days on. A sweep then drops generation 1 from the engine (its row is
    # durable), and with "every_generation" generation 2 as well. Generation 1's real Stop,
    # held back by its collector, must still apply its delta to generation 1 and record
    # the real stop: forgetting is the engine's memory bound, not a rule.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=100, out=200),
        Rec(ON, sid="", user="", t=1000),
        Rec(START, t=2 * DAY, session_time=0),
    )
    if forgotten == "every_generation":
        await usage.send_each(
            form,
            Rec(STOP, t=2 * DAY + 60, session_time=60, inp=7, out=8, cause=1),
            # An open session keeps the NAS in the sweep, which forgets both generations.
            Rec(START, sid="other", t=5 * DAY - 100, session_time=0),
        )
        assert await usage.sweep(at(5 * DAY)) == 0
    else:
        assert await usage.sweep(at(2 * DAY + 1000)) == 0
    ack = await usage.send(
        form, Rec(STOP, t=900, session_time=900, inp=300, out=500, cause=1, delay=5 * DAY)
    )
    assert counts(ack) == (1, 0, 0, 0)
    gens = by_generation(of_id(await usage.sessions(), "sess-1"))
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes, gens[1].session_time_s) == (300, 500, 900)
    assert utc(gens[1].stop_at) == at(900)
    assert "late_stop" in gens[1].flags
    assert gens[1].state == pb.SESSION_STATE_CLOSED
    assert utc(gens[2].start_at) == at(2 * DAY)
    # A resend is a duplicate, and generation 2 is untouched.
    again = await usage.send(
        form, Rec(STOP, t=900, session_time=900, inp=300, out=500, cause=1, delay=5 * DAY + 9)
    )
    assert counts(again) == (0, 1, 0, 0)
    expected = (7, 8) if forgotten == "every_generation" else (0, 0)
    gen2 = by_generation(of_id(await usage.sessions(), "sess-1"))[2]
    assert (gen2.input_bytes, gen2.output_bytes) == expected


async def test_late_interim_lands_on_its_generation_when_a_replica_loads_only_recent_sessions(
    usage: Usage, replica: Usage, form: str
) -> None:
    # Generation 1 was closed stale 8 days before the NAS's newest update: a replica loads
    # only generation 2, and must look generation 1 up for its delayed Interim.
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=100, out=200),
    )
    assert await usage.sweep(at(600 + 3 * 600 + 301)) == 1
    await usage.send(form, Rec(START, t=8 * DAY, session_time=0))
    ack = await replica.send(
        form, Rec(INTERIM, t=1200, session_time=1200, inp=150, out=260, delay=8 * DAY)
    )
    assert counts(ack) == (1, 0, 0, 0)
    gens = by_generation(of_id(await replica.sessions(), "sess-1"))
    assert sorted(gens) == [1, 2]
    assert (gens[1].input_bytes, gens[1].output_bytes, gens[1].session_time_s) == (150, 260, 1200)
    assert utc(gens[1].stop_at) == at(1200)
    assert gens[2].state == pb.SESSION_STATE_OPEN
    assert gens[2].input_bytes == 0


async def test_wrap_is_inferred_when_nas_sends_no_gigawords_and_policy_says_so(
    usage: Usage, form: str
) -> None:
    await usage.register_nas(nas_key="nas-1", infer_wrap=True)
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=(1 << 32) - 100, out=10, gigawords=False),
        Rec(INTERIM, t=1200, session_time=1200, inp=50, out=20, gigawords=False),
    )
    session = await usage.session()
    assert session.input_bytes == (1 << 32) + 50
    assert "wrap_inferred" in session.flags
    assert "counter_reset" not in session.flags


async def test_stale_sweep_follows_the_nas_policy_when_it_sets_its_own_interval(
    usage: Usage, form: str
) -> None:
    # 2 x 60 s + 30 s of silence makes a session of this NAS stale.
    await usage.register_nas(nas_key="nas-1", interim_interval_s=60, stale_multiplier=2, grace_s=30)
    await usage.send(form, Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    assert await usage.sweep(at(600 + 150)) == 0
    assert await usage.sweep(at(600 + 151)) == 1
    session = await usage.session()
    assert utc(session.stop_at) == at(600)


async def test_a_nas_without_grace_is_stale_after_exactly_k_intervals(
    usage: Usage, form: str
) -> None:
    # grace_s = 0 is no grace (absent is the default, 300 s): 2 x 60 s of silence.
    client = await usage.register_nas(
        nas_key="nas-1", interim_interval_s=60, stale_multiplier=2, grace_s=0
    )
    assert client.grace_s == 0
    await usage.send(form, Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    assert await usage.sweep(at(600 + 120)) == 0
    assert await usage.sweep(at(600 + 121)) == 1
    assert utc((await usage.session()).stop_at) == at(600)


async def test_stale_sweep_never_closes_a_session_when_the_threshold_is_past_the_range_of_time(
    usage: Usage, form: str
) -> None:
    # (k x interval + grace) in microseconds is past 2^63: it wrapped negative, and every
    # session of the NAS was closed as stale at once.
    top = 2**31 - 1
    await usage.register_nas(
        nas_key="nas-1", interim_interval_s=top, stale_multiplier=top, grace_s=top
    )
    await usage.send(form, Rec(INTERIM, t=600, session_time=600, inp=1, out=1))
    assert await usage.sweep(at(600 + 3_600)) == 0
    assert (await usage.session()).state == pb.SESSION_STATE_OPEN


@pytest.mark.parametrize(
    "field", ["interim_interval_s", "stale_multiplier", "grace_s", "clock_skew_tolerance_s"]
)
async def test_nas_policy_past_the_stored_range_is_invalid_argument_naming_the_field(
    usage: Usage, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.register_nas(nas_key="nas-1", **{field: 2**31})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: must be at most 2147483647")
    # Nothing was written: the NAS keeps the defaults.
    assert "nas-1" not in [n.nas_key for n in await usage.nas_list()]


async def test_accounting_on_with_skewed_clock_flags_its_nas(
    usage: Usage, server: RunningServer, form: str
) -> None:
    ack = await usage.send(form, Rec(ON, sid="", t=1000, user="", skew_s=86_400))
    assert counts(ack) == (1, 0, 0, 0)
    async with server.db.read() as session:
        rows = (
            await session.execute(
                select(UsageAnomaly.nas_key, UsageAnomaly.flag).where(
                    UsageAnomaly.tenant_id == usage.tenant.tenant_id
                )
            )
        ).all()
    assert [(r.nas_key, rc.flag_names(r.flag)) for r in rows] == [("nas-1", ["clock_skew"])]
    assert [(n.nas_key, list(n.flags)) for n in await usage.nas_list(flagged_only=True)] == [
        ("nas-1", ["clock_skew"])
    ]


async def test_a_late_record_with_a_skewed_clock_still_flags_the_nas(
    usage: Usage, form: str
) -> None:
    # Older by session time, it changes no usage; its Event-Timestamp is a day off all the same.
    acks = await usage.send_each(
        form,
        Rec(INTERIM, t=1200, session_time=1200, inp=10, out=10),
        Rec(INTERIM, t=600, session_time=600, inp=5, out=5, skew_s=DAY),
    )
    assert counts(acks[1]) == (0, 0, 1, 0)
    session = await usage.session()
    assert (session.input_bytes, session.session_time_s) == (10, 1200)
    assert "clock_skew" in session.flags
    listed = {n.nas_key: n for n in await usage.nas_list()}
    assert (list(listed["nas-1"].flags), listed["nas-1"].clock_skew_anomalies) == (
        ["clock_skew"],
        1,
    )


async def test_a_nas_whose_event_timestamps_disagree_is_flagged(usage: Usage, form: str) -> None:
    # RADIUS.md: event time falls back to arrival - delay "and the NAS is flagged".
    await usage.send_each(
        form,
        Rec(INTERIM, t=3600, session_time=3600, inp=1, out=1, skew_s=-4000),
        Rec(INTERIM, t=4200, session_time=4200, inp=2, out=2, skew_s=900),
        Rec(INTERIM, sid="sess-9", t=4200, session_time=600, inp=1, out=1, skew_s=-301),
        Rec(INTERIM, sid="sess-2", nas="nas-2", t=4200, session_time=600, inp=1, out=1),
        Rec(INTERIM, sid="sess-3", nas="nas-3", t=4200, session_time=600, inp=1, out=1, skew_s=1),
    )
    listed = {n.nas_key: n for n in await usage.nas_list()}
    assert sorted(listed) == [SOURCE, "nas-1", "nas-2", "nas-3"]  # SOURCE: registered
    assert list(listed["nas-1"].flags) == ["clock_skew"]
    assert listed["nas-1"].clock_skew_anomalies == 2  # one per session, not per record
    assert listed["nas-1"].HasField("last_clock_skew_at")
    for within_tolerance in (SOURCE, "nas-2", "nas-3"):
        assert list(listed[within_tolerance].flags) == []
        assert listed[within_tolerance].clock_skew_anomalies == 0
        assert not listed[within_tolerance].HasField("last_clock_skew_at")
    assert [n.nas_key for n in await usage.nas_list(flagged_only=True)] == ["nas-1"]


# ---------------------------------------------------------------- boundaries


async def test_session_started_at_the_accounting_on_time_stays_open(
    usage: Usage, form: str
) -> None:
    # Only sessions that started *before* the On/Off event time are over.
    await usage.send_each(
        form,
        Rec(START, sid="before", t=999, session_time=0),
        Rec(START, sid="same", t=1000, session_time=0),
        Rec(ON, sid="", t=1000, user=""),
    )
    assert (await usage.session("before")).state == pb.SESSION_STATE_CLOSED
    assert (await usage.session("same")).state == pb.SESSION_STATE_OPEN


@pytest.mark.parametrize(("skew_s", "skewed"), [(300, False), (301, True)])
async def test_event_timestamp_is_trusted_up_to_the_tolerance_and_not_beyond(
    usage: Usage, form: str, skew_s: int, skewed: bool
) -> None:
    await usage.send(form, Rec(INTERIM, t=7200, session_time=3600, inp=1, out=1, skew_s=skew_s))
    session = await usage.session()
    assert ("clock_skew" in session.flags) is skewed
    expected = at(7200) if skewed else at(7200 + skew_s)
    assert utc(session.last_update_at) == expected


async def test_wrap_from_the_largest_32_bit_counter_to_zero_adds_one_byte(
    usage: Usage, form: str
) -> None:
    await usage.register_nas(nas_key="nas-1", infer_wrap=True)
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=(1 << 32) - 1, out=5, gigawords=False),
        Rec(INTERIM, t=1200, session_time=1200, inp=0, out=5, gigawords=False),
    )
    session = await usage.session()
    assert session.input_bytes == 1 << 32
    assert "wrap_inferred" in session.flags


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x04\x01\x00\x13" + bytes(15), "radius"),  # shorter than a header
        (b"\x04\x01\x10\x01" + bytes(16), "radius"),  # Length above 4096
        (b"\x04\x01\x00\x40" + bytes(16), "radius"),  # datagram shorter than Length
        (b"\x04\x01\x00\x17" + bytes(16) + b"\x28\x01\x00", "radius"),  # TLV length < 2
        (b"\x04\x01\x00\x17" + bytes(16) + b"\x28\x09\x00", "radius"),  # TLV past the end
    ],
    ids=["short", "too-long", "truncated", "tlv-too-short", "tlv-past-end"],
)
async def test_raw_packet_is_quarantined_with_reason_when_framing_is_broken(
    usage: Usage, packet: bytes, reason: str
) -> None:
    from tests.usage.support import SOURCE, raw_packet

    good = entries("raw", [Rec(INTERIM, t=600, session_time=600, inp=1, out=1)])
    (ack,) = await usage.stream(batch([raw_packet(packet, SOURCE, at(0)), good[0]]))
    assert counts(ack) == (1, 0, 0, 1)
    assert [q.index for q in ack.quarantined_records] == [0]
    assert reason in ack.quarantined_records[0].reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, "missing Acct-Status-Type"),
        (0, "unknown Acct-Status-Type 0"),
        (6, "unknown Acct-Status-Type 6"),
        (16, "unknown Acct-Status-Type 16"),
        (9, "Acct-Status-Type 9 (Tunnel-Start) is not session accounting"),
        (15, "Acct-Status-Type 15 (Failed) is not session accounting"),
    ],
    ids=["missing-status", "status-0", "unassigned-6", "unknown-16", "tunnel-start", "failed"],
)
async def test_raw_packet_is_quarantined_with_reason_when_status_type_is_missing_or_unknown(
    usage: Usage, status: int | None, reason: str
) -> None:
    from tests.usage.support import SOURCE, attr, attr_int, radius_packet, raw_packet

    status_attr = b"" if status is None else attr_int(40, status)
    packet = radius_packet(status_attr + attr(44, b"x") + attr_int(42, 5))
    (ack,) = await usage.stream(batch([raw_packet(packet, SOURCE, at(0))]))
    assert counts(ack) == (0, 0, 0, 1)
    assert ack.quarantined_records[0].reason == reason
    assert await usage.sessions() == []


async def test_event_timestamp_tolerance_follows_the_nas_policy(usage: Usage, form: str) -> None:
    await usage.register_nas(nas_key="nas-1", clock_skew_tolerance_s=60)
    await usage.send(form, Rec(INTERIM, t=7200, session_time=3600, inp=1, out=1, skew_s=120))
    session = await usage.session()
    assert "clock_skew" in session.flags
    assert utc(session.last_update_at) == at(7200)


async def test_late_interim_after_a_stale_close_moves_the_stop_to_its_update(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
    )
    assert await usage.sweep(at(600 + 3 * 600 + 301)) == 1
    ack = await usage.send(form, Rec(INTERIM, t=1200, session_time=1200, inp=1500, out=2500))
    assert counts(ack) == (1, 0, 0, 0)
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (1500, 2500)
    assert session.state == pb.SESSION_STATE_CLOSED
    assert utc(session.stop_at) == at(1200)
    assert {"stale_closed", "late_stop"} <= set(session.flags)


LATE_STOP = Rec(STOP, t=300, session_time=299, inp=50_000, out=900_000, cause=1)


@pytest.mark.parametrize(
    ("closed_by", "session_time"),
    [
        ("sweep", 299),
        ("accounting_on", 299),
        ("reused_id", 299),
        # The NAS counted session time from 40 s after its Start (300 - 260), within its
        # tolerance. Closed as stale, the session may have gone on, so its Stop is still
        # its own; closed by a reboot, it ended by then, and a start before it is its own.
        ("sweep", 260),
        ("accounting_on", 260),
        ("reused_id", 260),
    ],
)
async def test_late_stop_of_a_start_only_session_lands_on_it_when_it_implies_a_later_start(
    usage: Usage, form: str, closed_by: str, session_time: int
) -> None:
    # At 299 the Stop's implied start (300 - 299) is 1 s after the Start's: whole-second
    # times. The session had only its Start, so closing it without a Stop ended it at its
    # start.
    await usage.send(form, Rec(START, t=0, session_time=0))
    if closed_by == "sweep":
        assert await usage.sweep(at(2101)) == 1
        delay = 1900
    elif closed_by == "accounting_on":
        await usage.send(form, Rec(ON, sid="", t=400, user=""))
        delay = 200
    else:
        await usage.send(form, Rec(START, t=5000, session_time=0))
        delay = 4800
    ack = await usage.send(form, LATE_STOP.but(session_time=session_time, delay=delay))
    assert counts(ack) == (1, 0, 0, 0)
    sessions = await usage.sessions()
    assert [s.generation for s in sessions] == ([2, 1] if closed_by == "reused_id" else [1])
    first = next(s for s in sessions if s.generation == 1)
    assert (first.input_bytes, first.output_bytes) == (50_000, 900_000)
    assert first.session_time_s == session_time
    assert utc(first.start_at) == at(0)
    assert utc(first.stop_at) == at(300)
    assert first.terminate_cause == 1
    assert "late_stop" in first.flags
    assert "lost_start" not in first.flags


async def test_late_stop_of_a_stale_start_only_session_lands_on_it_when_a_replica_loads_it(
    usage: Usage, replica: Usage, form: str
) -> None:
    # As above (session time counted from 40 s after the Start), with the instance closed
    # as stale on one replica and its Stop applied by another that loads it from the
    # database: what was closed as stale is known from the stored row.
    await usage.send(form, Rec(START, t=0, session_time=0))
    assert await usage.sweep(at(2101)) == 1
    ack = await replica.send(form, LATE_STOP.but(session_time=260, delay=1900))
    assert counts(ack) == (1, 0, 0, 0)
    (session,) = await replica.sessions()
    assert (session.generation, session.input_bytes, session.session_time_s) == (1, 50_000, 260)
    assert utc(session.stop_at) == at(300)
    assert {"stale_closed", "late_stop"} <= set(session.flags)


async def test_retransmitted_start_timed_by_arrival_opens_no_generation_after_a_sweep(
    usage: Usage, form: str
) -> None:
    # No Event-Timestamp: event time is arrival - Acct-Delay-Time, 0.9 s then 1.1 s.
    await usage.send(form, Rec(START, t=0.9, session_time=0, event=False))
    assert await usage.sweep(at(2200)) == 1
    ack = await usage.send(form, Rec(START, t=1.1, session_time=0, event=False, delay=3))
    # The same record: keyed by its instance's start, not by its arrival's second.
    assert counts(ack) == (0, 1, 0, 0)
    assert [s.generation for s in await usage.sessions()] == [1]


async def test_late_stop_after_an_accounting_on_records_the_real_stop(
    usage: Usage, form: str
) -> None:
    await usage.send_each(
        form,
        Rec(START, t=0, session_time=0),
        Rec(INTERIM, t=600, session_time=600, inp=1000, out=2000),
        Rec(ON, sid="", t=1000, user=""),
        Rec(STOP, t=900, session_time=900, inp=1200, out=2100, cause=11),
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes) == (1200, 2100)
    assert utc(session.stop_at) == at(900)
    assert session.terminate_cause == 11
    assert {"nas_reboot_closed", "late_stop"} <= set(session.flags)


def raw_with_sid(rec: Rec, sid: bytes) -> pb.AccountingEntry:
    """The raw packet of `rec` with these Acct-Session-Id bytes."""
    attributes = radius_attributes(rec).replace(attr(44, rec.sid.encode()), attr(44, sid), 1)
    return raw_packet(radius_packet(attributes), rec.source, rec.arrival_at)


async def test_session_id_that_is_not_utf8_stays_one_session_when_a_replica_continues_it(
    usage: Usage, replica: Usage
) -> None:
    # A NAS's binary Acct-Session-Id: stored as text with U+FFFD for each invalid sequence,
    # and found again by the engine of a replica that loads it from the database.
    sid = b"\xff\xfe-0001"
    interim = Rec(INTERIM, t=600, session_time=600, inp=100, out=200)
    assert counts(await usage.send_raw(raw_with_sid(Rec(START, t=0, session_time=0), sid))) == (
        1, 0, 0, 0,
    )  # fmt: skip
    acks = await replica.stream(
        batch([raw_with_sid(interim, sid)]),
        batch([raw_with_sid(interim.but(delay=5), sid)]),  # a retransmit
        batch([raw_with_sid(Rec(STOP, t=900, session_time=900, inp=150, out=250, cause=1), sid)]),
    )
    assert [counts(a) for a in acks] == [(1, 0, 0, 0), (0, 1, 0, 0), (1, 0, 0, 0)]
    (session,) = await replica.sessions()
    assert session.acct_session_id == "\ufffd\ufffd-0001"
    assert session.generation == 1
    assert (session.input_bytes, session.output_bytes, session.session_time_s) == (150, 250, 900)
    assert "lost_start" not in session.flags
    assert session.state == pb.SESSION_STATE_CLOSED


async def test_session_record_is_quarantined_when_it_has_no_session_id(
    usage: Usage, form: str
) -> None:
    ack = await usage.send(form, Rec(INTERIM, sid="", t=600, session_time=600, inp=1, out=1))
    assert counts(ack) == (0, 0, 0, 1)
    assert ack.quarantined_records[0].reason == "missing Acct-Session-Id"
    assert await usage.sessions() == []


async def test_text_holding_nul_is_counted_with_nul_stored_as_replacement_character(
    usage: Usage, form: str
) -> None:
    """NUL is a legal octet of a RADIUS string, and PostgreSQL's text cannot hold it."""
    odd = Rec(
        INTERIM, sid="ab\0cd", nas="bng\0", user="ann\0", calling="02-00\0", t=600,
        session_time=600, inp=7, out=9,
    )  # fmt: skip
    good = Rec(INTERIM, sid="plain", t=600, session_time=600, inp=1, out=1)
    ack = await usage.send(form, odd, good, odd.but(delay=3))
    assert counts(ack) == (2, 1, 0, 0)
    (kept,) = await usage.sessions(nas_key="bng\ufffd")
    assert (kept.acct_session_id, kept.user_name, kept.calling_station_id) == (
        "ab\ufffdcd", "ann\ufffd", "02-00\ufffd"
    )  # fmt: skip
    assert (kept.input_bytes, kept.output_bytes) == (7, 9)
    # The next record of the session finds it (also as the database gives it back).
    ack = await usage.send(form, odd.but(t=1200, session_time=1200, inp=70, out=90))
    assert counts(ack) == (1, 0, 0, 0)
    (kept,) = await usage.sessions(nas_key="bng\ufffd")
    assert (kept.generation, kept.input_bytes, kept.output_bytes) == (1, 70, 90)


async def test_decoded_record_is_quarantined_naming_the_field_when_nas_identifier_is_too_long(
    usage: Usage,
) -> None:
    good, bad = entries(
        "decoded",
        [Rec(INTERIM, t=600, session_time=600, inp=1, out=1), Rec(INTERIM, nas="n" * 254)],
    )
    (ack,) = await usage.stream(batch([good, bad]))
    assert counts(ack) == (1, 0, 0, 1)
    assert "NAS identity longer than" in ack.quarantined_records[0].reason
    assert [s.acct_session_id for s in await usage.sessions()] == ["sess-1"]


@pytest.mark.parametrize("field", ["class", "nas_port_id"])
async def test_decoded_record_is_quarantined_when_a_class_or_port_id_is_longer_than_radius_allows(
    usage: Usage, field: str
) -> None:
    """A RADIUS attribute carries at most 253 octets; a decoded record cannot hold more."""
    fits, too_long = entries(
        "decoded",
        [Rec(INTERIM, t=600, session_time=600, inp=1, out=1), Rec(INTERIM, t=600, sid="s2")],
    )
    if field == "class":
        getattr(fits.decoded, "class").extend([b"c" * 253, b"d"])
        getattr(too_long.decoded, "class").extend([b"c" * 254, b"d"])
    else:
        fits.decoded.nas_port_id = "p" * 253
        too_long.decoded.nas_port_id = "p" * 254
    (ack,) = await usage.stream(batch([fits, too_long]))
    assert counts(ack) == (1, 0, 0, 1)
    (refused,) = ack.quarantined_records
    assert refused.index == 1
    assert f"{field} longer than a RADIUS attribute allows (253 bytes" in refused.reason
    assert [s.acct_session_id for s in await usage.sessions()] == ["sess-1"]


async def test_ipv4_peer_of_a_dual_stack_collector_is_the_same_source_and_nas(
    usage: Usage, form: str
) -> None:
    """A collector on `[::]` sees an IPv4 NAS as `::ffff:198.51.100.7`: the same address,
    so the same secret, and (without NAS-Identifier) the same NAS key; copies of a record
    through an IPv4 and a dual-stack collector are one record."""
    rec = Rec(INTERIM, nas="", t=600, session_time=600, inp=1000, out=2000)
    ack = await usage.send(form, rec, rec.but(source=f"::ffff:{SOURCE}", arrival_extra_s=1.5))
    assert counts(ack) == (1, 1, 0, 0)
    assert len(ack.responses) == (2 if form == "raw" else 0)
    (only,) = await usage.sessions()
    assert (only.nas_key, only.input_bytes, only.output_bytes) == (SOURCE, 1000, 2000)
    # A client registered under the mapped form is the IPv4 one.
    client = await usage.register_nas(f"::ffff:{SOURCE}", "other")
    assert client.source_address == SOURCE


CLOSED = pb.SESSION_STATE_CLOSED
STOPPED = pb.SESSION_STATE_CLOSED


def stuck_clock(rec: Rec) -> Rec:
    """The record from a NAS whose clock stands at 1970-01-01T00:00:30Z (rebooted without
    a clock source): every Event-Timestamp it sends is that one."""
    return rec.but(skew_s=30 - rec.event_at.timestamp())


async def test_second_reboot_of_a_nas_with_a_stuck_clock_closes_what_started_since_the_first(
    usage: Usage, form: str
) -> None:
    """A skewed Event-Timestamp is not the event's time: the two Accounting-Ons, hours
    apart, are two reboots, not one record twice."""
    recs = [
        Rec(START, sid="a", t=0), Rec(ON, sid="", t=1000, user=""),
        Rec(START, sid="b", t=2000), Rec(ON, sid="", t=9000, user=""),
    ]  # fmt: skip
    acks = await usage.send_each(form, *map(stuck_clock, recs))
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    by_sid = {s.acct_session_id: s for s in await usage.sessions()}
    assert {sid: s.state for sid, s in by_sid.items()} == {"a": CLOSED, "b": CLOSED}
    assert "nas_reboot_closed" in by_sid["b"].flags
    assert "clock_skew" in by_sid["b"].flags
    # A copy of the second On (another collector, 1.5 s later) is still that On.
    (again,) = await usage.send_each(form, stuck_clock(recs[3].but(arrival_extra_s=1.5)))
    assert counts(again) == (0, 1, 0, 0)


async def test_reused_session_id_of_a_nas_with_a_stuck_clock_starts_a_new_generation(
    usage: Usage, form: str
) -> None:
    recs = [
        Rec(START, t=0), Rec(STOP, t=600, session_time=600, inp=10, out=20, cause=1),
        Rec(START, t=5000), Rec(INTERIM, t=5600, session_time=600, inp=30, out=40),
    ]  # fmt: skip
    acks = await usage.send_each(form, *map(stuck_clock, recs))
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    first, second = sorted(await usage.sessions(), key=lambda s: s.generation)
    assert (first.generation, first.input_bytes, first.state) == (1, 10, CLOSED)
    assert (second.generation, second.input_bytes, second.state) == (2, 30, pb.SESSION_STATE_OPEN)
    assert "lost_start" not in second.flags
    # Retransmits (a new Acct-Delay-Time each) stay copies of their records.
    retransmits = [stuck_clock(r.but(delay=4)) for r in recs]
    ack = await usage.send(form, *retransmits)
    assert counts(ack) == (0, 4, 0, 0)


@pytest.mark.parametrize(
    "late",
    [
        Rec(START, sid="z", t=500, delay=600),
        Rec(INTERIM, sid="z", t=900, session_time=400, inp=70, out=80, delay=300),
    ],
    ids=["start", "lost-start-interim"],
)
async def test_session_begun_before_a_reboot_is_closed_whether_its_record_or_the_on_comes_first(
    usage: Usage, form: str, late: Rec
) -> None:
    """Accounting-On closes every session that started before it: also one whose first
    record the collector delivers only after the On (its Acct-Delay-Time says so)."""
    on = Rec(ON, sid="", user="", t=1000)
    racing = Rec(START, sid="y", t=1001)  # raced ahead of nothing: began after the reboot
    await usage.send_each(form, on, late, racing)
    by_sid = {s.acct_session_id: s for s in await usage.sessions()}
    assert by_sid["y"].state == pb.SESSION_STATE_OPEN
    z = by_sid["z"]
    assert z.state == CLOSED
    assert "nas_reboot_closed" in z.flags
    assert utc(z.stop_at) == late.event_at  # at its last update, as the On would have
    assert (z.input_bytes, z.output_bytes) == (late.inp or 0, late.out or 0)


async def test_session_begun_before_a_reboot_is_closed_when_a_replica_loads_the_nas(
    usage: Usage, replica: Usage, form: str
) -> None:
    """The replica that applies the late record did not apply the On: it recalls the
    NAS's Accounting-On/Offs from the ledger when it loads the NAS."""
    await usage.send(form, Rec(ON, sid="", user="", t=1000))
    ack = await replica.send(form, Rec(START, sid="z", t=500, delay=600))
    assert counts(ack) == (1, 0, 0, 0)
    (z,) = await replica.sessions()
    assert (z.state, list(z.flags)) == (CLOSED, ["nas_reboot_closed"])


def _instances(sessions: list[pb.Session]) -> list[tuple[object, ...]]:
    """Sessions as (start, state, stop, input, output, flags), by start: what must not
    depend on the order records arrive in (generation numbers count instances as found)."""
    return sorted(
        (utc(s.start_at), s.state, utc(s.stop_at) if s.HasField("stop_at") else None,
         s.input_bytes, s.output_bytes, sorted(s.flags))
        for s in sessions
    )  # fmt: skip


@pytest.mark.parametrize("order", ["as_sent", "old_interim_second"])
async def test_an_interim_begun_before_a_reboot_is_not_the_reused_ids_new_session(
    usage: Usage, form: str, order: str
) -> None:
    """An Interim delivered late (Acct-Delay-Time 840) implies a start at 200, before the
    Accounting-On at 300; the id's session that began at 400, after the reboot, is another
    one, though its start is within the NAS's tolerance (300 s) of 200."""
    on = Rec(ON, sid="", user="", t=300)
    start, interim = Rec(START, t=400), Rec(INTERIM, t=1000, session_time=600, inp=10, out=10)
    old = Rec(INTERIM, t=260, session_time=60, inp=7, out=7, delay=840)
    sent = [on, start, interim, old] if order == "as_sent" else [on, old, start, interim]
    acks = await usage.send_each(form, *sent)
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 4
    assert _instances(await usage.sessions()) == [
        (at(200), CLOSED, at(260), 7, 7, ["lost_start", "nas_reboot_closed"]),
        (at(400), pb.SESSION_STATE_OPEN, None, 10, 10, []),
    ]


@pytest.mark.parametrize(
    ("a_start", "b_start", "order"),
    [
        (True, 1150, ("a_start", "a_stop", "b_start", "b_stop")),
        (True, 1150, ("a_start", "b_start", "a_stop", "b_stop")),
        (True, 1150, ("b_start", "a_start", "a_stop", "b_stop")),
        (False, 1101, ("a_stop", "b_start", "b_stop")),
        (False, 1101, ("b_start", "a_stop", "b_stop")),
        (False, 1101, ("b_start", "b_stop", "a_stop")),
    ],
)
async def test_an_id_reused_within_the_tolerance_counts_both_sessions_in_any_order(
    usage: Usage, form: str, a_start: bool, b_start: int, order: tuple[str, ...]
) -> None:
    """Session A (Start 1000 or lost, Stop 1100) and B (Start `b_start`, Stop 1400) of one
    id, every record with a trusted Event-Timestamp: A's start is within the NAS's tolerance
    (300 s) of B's. B's Start is another session's Start (a copy of A's would carry A's
    Event-Timestamp), and A's Stop, sent before B's Start by the NAS's clock, is not B's.
    A's usage was lost into B when B's Start came before A's Stop; with A's Start lost, A's
    Stop delivered after B's Start stopped B, and B's usage was lost."""
    records = {
        "a_start": Rec(START, t=1000),
        "a_stop": Rec(STOP, t=1100, session_time=100, inp=5_000_000, out=7_000_000, cause=1),
        "b_start": Rec(START, t=b_start),
        "b_stop": Rec(
            STOP, t=1400, session_time=1400 - b_start, inp=9_000_000, out=11_000_000, cause=1
        ),
    }
    assert ("a_start" in order) == a_start
    acks = await usage.send_each(form, *(records[name] for name in order))
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * len(order)
    sessions = sorted(await usage.sessions(), key=lambda s: utc(s.start_at))
    assert [(utc(s.start_at), utc(s.stop_at), s.input_bytes, s.output_bytes) for s in sessions] == [
        (at(1000), at(1100), 5_000_000, 7_000_000),
        (at(b_start), at(1400), 9_000_000, 11_000_000),
    ]
    if not a_start:
        assert "lost_start" in sessions[0].flags
        assert "lost_start" not in sessions[1].flags
        assert "interim_after_stop" not in sessions[1].flags


async def test_starts_between_two_reboots_are_three_sessions_in_any_order(
    usage: Usage, form: str
) -> None:
    """Starts of one id at 0, 200 and 400 with Accounting-Ons at 100 and 300 between them
    are three sessions, the first two closed by the reboots, whichever arrives first."""
    records = [
        Rec(START, t=0), Rec(ON, sid="", user="", t=100), Rec(START, t=200),
        Rec(ON, sid="", user="", t=300), Rec(START, t=400),
        Rec(INTERIM, t=1000, session_time=600, inp=10, out=1),
    ]  # fmt: skip
    await usage.send_each(form, *reversed(records))
    expected = [
        (at(0), CLOSED, at(0), 0, 0, ["nas_reboot_closed"]),
        (at(200), CLOSED, at(200), 0, 0, ["nas_reboot_closed"]),
        (at(400), pb.SESSION_STATE_OPEN, None, 10, 1, ["lost_start"]),
    ]
    assert _instances(await usage.sessions()) == expected


async def test_stop_implying_a_start_after_the_reboot_is_a_new_session_of_the_reused_id(
    usage: Usage, form: str
) -> None:
    """Closed by the On at 100, the session ended then: a Stop of the id implying a start
    after the reboot (its Start lost) is another session, though its implied start (150)
    is within the NAS's tolerance (300 s) of the first's."""
    await usage.send(form, Rec(START, t=0, session_time=0))
    await usage.send(form, Rec(ON, sid="", t=100, user=""))
    ack = await usage.send(form, LATE_STOP.but(t=400, session_time=250, delay=10))
    assert counts(ack) == (1, 0, 0, 0)
    first, second = sorted(await usage.sessions(), key=lambda s: s.generation)
    assert (first.input_bytes, "nas_reboot_closed" in first.flags) == (0, True)
    assert (second.input_bytes, utc(second.start_at)) == (50_000, at(150))
    assert "lost_start" in second.flags


async def test_swap_turned_on_and_off_mid_session_moves_later_usage_and_counts_none_twice(
    usage: Usage, replica: Usage, form: str
) -> None:
    """The policy in force when a record is applied decides its deltas' directions; the
    marks are the NAS's own counters, so a change resets nothing (the last record is
    applied by a replica that loads the session's stored marks)."""
    await usage.send_each(
        form, Rec(START, t=0), Rec(INTERIM, t=600, session_time=600, inp=100, out=1000)
    )
    await usage.register_nas(nas_key="nas-1", swap_direction=True)
    await usage.send(form, Rec(INTERIM, t=1200, session_time=1200, inp=200, out=2000))
    session = await usage.session()
    # 100 up / 1000 down before the swap; the NAS's next 100 in / 1000 out swapped.
    assert (session.input_bytes, session.output_bytes) == (1100, 1100)
    await usage.register_nas(nas_key="nas-1", swap_direction=False)
    await replica.send(form, Rec(INTERIM, t=1800, session_time=1800, inp=250, out=2500))
    session = await replica.session()
    assert (session.input_bytes, session.output_bytes) == (1150, 1600)
    assert "counter_reset" not in session.flags
    assert await usage.unattributed_bytes() == (1150, 1600)  # the buckets agree


@pytest.mark.parametrize("on_first", [False, True], ids=["start-first", "on-first"])
async def test_reused_id_start_that_raced_ahead_of_the_accounting_on_stays_open_and_counts(
    usage: Usage, form: str, on_first: bool
) -> None:
    """A NAS reboots 100 s into a session and numbers its sessions from the same counter:
    the new session's Start (110) may reach us before the Accounting-On (100). It begins
    after the reboot, so it stays open, and the old session keeps its usage, whichever of
    the two arrives first."""
    await usage.send_each(
        form, Rec(START, t=0), Rec(INTERIM, t=60, session_time=60, inp=1_000_000, out=900_000)
    )
    on, start = Rec(ON, sid="", user="", t=100, delay=12), Rec(START, t=110)
    acks = await usage.send_each(form, *((on, start) if on_first else (start, on)))
    assert [counts(a) for a in acks] == [(1, 0, 0, 0)] * 2
    old, new = sorted(await usage.sessions(), key=lambda s: s.generation)
    assert (new.state, utc(new.start_at), list(new.flags)) == (pb.SESSION_STATE_OPEN, at(110), [])
    assert (old.state, utc(old.stop_at)) == (CLOSED, at(60))  # at its last update
    await usage.send_each(
        form,
        Rec(INTERIM, t=710, session_time=600, inp=1_200_000, out=1_100_000),
        Rec(STOP, t=800, session_time=690, inp=1_500_000, out=1_400_000, cause=1),
    )
    old, new = sorted(await usage.sessions(), key=lambda s: s.generation)
    assert (old.input_bytes, old.output_bytes) == (1_000_000, 900_000)
    assert (new.input_bytes, new.output_bytes) == (1_500_000, 1_400_000)
    assert (new.state, utc(new.stop_at), "lost_start" in new.flags) == (STOPPED, at(800), False)


async def test_start_of_an_open_session_after_its_interims_is_late_and_changes_nothing(
    usage: Usage, form: str
) -> None:
    """A Start is at session time 0: arriving after an Interim of its session (delayed, or
    resent without Event-Timestamp and timed by its arrival), it is older than what we
    have, so it is late and moves neither the last update nor the stale-sweep clock."""
    await usage.send(form, Rec(INTERIM, t=600, session_time=600, inp=100, out=200))
    acks = await usage.send_each(form, Rec(START, t=0, delay=900), Rec(START, t=1, delay=899))
    assert [counts(a) for a in acks] == [(0, 0, 1, 0)] * 2
    (s,) = await usage.sessions()
    assert (utc(s.start_at), utc(s.last_update_at), s.input_bytes) == (at(0), at(600), 100)


async def test_second_stop_with_a_later_session_time_moves_the_stop_to_it(
    usage: Usage, form: str
) -> None:
    """A Stop resent with more usage (a NAS that reports the final counters again): its
    delta counts, and the session stops at the later Stop, never before its last update."""
    await usage.send_each(
        form,
        Rec(STOP, t=600, session_time=600, inp=150, out=150, cause=1),
        Rec(STOP, t=660, session_time=660, inp=170, out=160, cause=1),
    )
    (s,) = await usage.sessions()
    assert (s.input_bytes, s.output_bytes, s.session_time_s) == (170, 160, 660)
    assert utc(s.stop_at) == utc(s.last_update_at) == at(660)


@pytest.mark.parametrize("one_batch", [True, False], ids=["one-batch", "two-batches"])
async def test_binary_session_ids_whose_text_passes_255_bytes_stay_two_sessions(
    usage: Usage, replica: Usage, one_batch: bool
) -> None:
    """A binary Acct-Session-Id of 91 octets is 91 characters of text (U+FFFD per invalid
    octet), 271 bytes: two ids that differ in their last octet are two sessions, in the
    engine, in the database, after a sweep and on a replica that loads them."""
    a, b = b"\xff" * 90 + b"A", b"\xff" * 90 + b"B"
    first = raw_with_sid(Rec(INTERIM, t=600, session_time=600, inp=1_000_000, out=2), a)
    second = raw_with_sid(Rec(INTERIM, t=600, session_time=600, inp=5_000, out=7), b)
    if one_batch:
        acks = [await usage.send_raw(first, second)]
    else:
        acks = [await usage.send_raw(first), await usage.send_raw(second)]
    assert sum(ack.accepted for ack in acks) == 2
    assert await usage.sweep(at(600 + 3 * 600 + 301)) == 2  # both stale, each closed once
    later = Rec(STOP, t=700, session_time=700, inp=1_000_100, out=3, cause=1)
    assert counts(await replica.send_raw(raw_with_sid(later, a))) == (1, 0, 0, 0)
    by_sid = {s.acct_session_id: s for s in await replica.sessions()}
    text_a, text_b = "\ufffd" * 90 + "A", "\ufffd" * 90 + "B"
    assert set(by_sid) == {text_a, text_b}
    assert (by_sid[text_a].input_bytes, by_sid[text_a].generation) == (1_000_100, 1)
    assert (by_sid[text_b].input_bytes, by_sid[text_b].generation) == (5_000, 1)
    assert "late_stop" in by_sid[text_a].flags


@pytest.mark.parametrize(
    "first",
    [
        # A Start resent unchanged 5 s later by a NAS without Event-Timestamp (RFC 5080 lets a
        # retransmit keep its Acct-Delay-Time), so timed 5 s after the original.
        Rec(START, t=5, event=False),
        # An Interim at session time 0 right at the start, then the Start 3 s later.
        Rec(INTERIM, t=0, session_time=0, inp=0, out=0),
    ],
    ids=["start-resent-timed-by-arrival", "interim-at-session-time-0"],
)
async def test_start_a_few_seconds_off_a_session_with_no_session_time_is_the_same_session(
    usage: Usage, form: str, first: Rec
) -> None:
    """Such a Start may be the session's own: a second generation would split its later
    updates between two instances whose starts are seconds apart, and count them twice."""
    start = Rec(START, t=0, event=False) if first.status == START else Rec(START, t=3)
    await usage.send_each(form, *((start, first) if first.status == START else (first, start)))
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=100, out=100, event=False),
        # 3 s of network delay the NAS did not count in Acct-Delay-Time.
        Rec(INTERIM, t=1203, session_time=1200, inp=300, out=300, event=False),
        Rec(STOP, t=1500, session_time=1500, inp=400, out=400, cause=1, event=False),
    )
    (s,) = await usage.sessions()
    assert (s.input_bytes, s.output_bytes, s.state) == (400, 400, STOPPED)


async def test_a_late_start_still_names_the_user_of_its_session(usage: Usage, form: str) -> None:
    """An Interim without User-Name came first (a lost Start so far); the delayed Start,
    late for usage, names the user: the session is theirs, in either order."""
    await usage.send_each(
        form,
        Rec(INTERIM, t=600, session_time=600, inp=100, out=200, user=""),
        Rec(START, t=0, delay=700),
    )
    (s,) = await usage.sessions()
    assert (s.user_name, s.input_bytes) == ("alice", 100)


async def test_copy_of_an_accounting_on_timed_by_arrival_is_a_repeat_on_a_replica(
    usage: Usage, replica: Usage, form: str
) -> None:
    """A NAS without Event-Timestamp: its On is timed by arrival, and the copy through
    another collector lands 2 s later. The replica that gets the copy did not apply the On:
    it recalls from the ledger that the On was timed by arrival, so the copy is a repeat
    and does not close the session that started in between."""
    on = Rec(ON, sid="", user="", t=100, event=False)
    await usage.send_each(form, on, Rec(START, sid="b", t=101, event=False))
    ack = await replica.send(form, on.but(arrival_extra_s=2))
    assert counts(ack) == (0, 1, 0, 0)
    (b,) = await replica.sessions()
    assert (b.state, list(b.flags)) == (pb.SESSION_STATE_OPEN, [])


async def test_a_batch_with_many_copies_of_a_stored_record_is_applied_once(
    usage: Usage, form: str
) -> None:
    # A record already stored, then a batch with a newer one and four copies of it (a
    # collector's retransmits, each with its own Acct-Delay-Time): each re-run left out one
    # copy and the next was accepted in its place, until the batch was refused for good.
    stored = Rec(INTERIM, t=600, session_time=600, inp=1000, out=1000)
    assert counts(await usage.send(form, stored)) == (1, 0, 0, 0)
    newer = Rec(STOP, t=600, session_time=600, inp=5000, out=5000, cause=1)
    copies = [stored.but(delay=d) for d in range(1, 5)]
    ack = await usage.send(form, newer, *copies)
    assert counts(ack) == (1, 4, 0, 0)
    session = await usage.session()
    assert (session.input_bytes, session.state) == (5000, pb.SESSION_STATE_CLOSED)


async def _unattributed_hours(server: RunningServer, tenant: TenantCtx) -> list[tuple[int, ...]]:
    """(hour after T0, upload, download, seconds) of every unattributed bucket."""
    async with server.db.read() as session:
        rows = (
            await session.execute(
                select(
                    UnattributedBucket.hour,
                    UnattributedBucket.upload_bytes,
                    UnattributedBucket.download_bytes,
                    UnattributedBucket.session_time_s,
                )
                .where(UnattributedBucket.tenant_id == tenant.tenant_id)
                .order_by(UnattributedBucket.hour)
            )
        ).all()
    return [(int((h - at(0)).total_seconds()) // 3600, u, d, s) for h, u, d, s in rows]


# Records after which a session's counters are not what it has: no Octets at all, a Stop's
# zeros (Lost-Carrier), Octets in one direction only. Each case: its records (after a Start
# at 0) and the session's (upload, download, session time).
_NO_NEWER_COUNTERS = {
    "stop-without-counters": (
        [
            Rec(INTERIM, t=3000, session_time=3000, inp=5_000_000_000, out=7_000_000_000),
            Rec(STOP, t=4200, session_time=4200, cause=1),
        ],
        (5_000_000_000, 7_000_000_000, 4200),
    ),
    "stop-with-zeros": (
        [
            Rec(INTERIM, t=3000, session_time=3000, inp=5_000, out=7_000),
            Rec(STOP, t=4200, session_time=4200, inp=0, out=0, cause=2),
        ],
        (5_000, 7_000, 4200),
    ),
    "interims-without-counters": (
        [
            Rec(INTERIM, t=3000, session_time=3000, inp=5_000, out=6_000),
            Rec(INTERIM, t=3600, session_time=3600),
            Rec(STOP, t=4200, session_time=4200, cause=1),
        ],
        (5_000, 6_000, 4200),
    ),
    "one-direction": (
        [
            Rec(INTERIM, t=3000, session_time=3000, inp=1_000, out=673_924),
            Rec(INTERIM, t=4200, session_time=4200, inp=1_942_357),
        ],
        (1_942_357, 673_924, 4200),
    ),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
@pytest.mark.parametrize("case", list(_NO_NEWER_COUNTERS))
async def test_usage_is_the_same_in_any_order_when_newer_records_carry_no_counters(
    usage: Usage, server: RunningServer, form: str, case: str, reverse: bool
) -> None:
    """RADIUS.md: a record without Octets carries no counter information, and a Stop with
    zeros keeps the mark; so an older Interim delivered after them still raises the marks
    its counters are above. It used to be `late`, losing the session's usage."""
    records, (up, down, secs) = _NO_NEWER_COUNTERS[case]
    sent = list(reversed(records)) if reverse else records
    acks = await usage.send_each(form, Rec(START, t=0), *sent)
    assert sum(counts(a)[0] for a in acks) == 1 + len(records) - (
        # Reversed, an older record that raises no mark is late.
        sum(1 for r in records[:-1] if r.inp is None and r.out is None) if reverse else 0
    )
    session = await usage.session()
    assert (session.input_bytes, session.output_bytes, session.session_time_s) == (up, down, secs)
    # Each delta in the hour of its record's event time; the hours sum to the session.
    hours = await _unattributed_hours(server, usage.tenant)
    assert tuple(sum(h[k] for h in hours) for k in (1, 2, 3)) == (up, down, secs)
    # The first Interim's usage is in its own hour (before 11:00), whatever came after it
    # (reversed, a later record's Octets already gave the one-direction case its upload).
    first = records[0]
    expected = (
        (0, 0, first.out) if reverse and case == "one-direction" else (0, first.inp, first.out)
    )
    assert hours[0][:3] == expected
