"""The hard cases of RADIUS.md, one behaviour per test, through the compiled engine."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest

import rating_core as rc
from tests.reference.accounting_wire import Rec, batch, decoded_entry

US = 1_000_000
T0 = 1_700_000_000 * US  # 2023-11-14T22:13:20Z
HOUR = 3600 * US
GW = 1 << 32
A, D, L = rc.OUTCOME_ACCEPTED, rc.OUTCOME_DUPLICATE, rc.OUTCOME_LATE


def rec(
    status: int, t: int | None = None, inp: int | None = None, out: int | None = None, **kw: Any
) -> Rec:
    """A record of session s1 on NAS nas1 whose event is T0 + t seconds (or `at`)."""
    at = kw.pop("at", t if t is not None else 0)
    fields: dict[str, Any] = {
        "sid": "s1",
        "nas_identifier": "nas1",
        "user": "alice",
        "session_time": t,
        "event_ts_us": T0 + at * US,
        "arrival_us": T0 + at * US,
    }
    if inp is not None:
        fields["input_octets"] = inp % GW
        if inp >= GW:
            fields["input_gigawords"] = inp // GW
    if out is not None:
        fields["output_octets"] = out % GW
        if out >= GW:
            fields["output_gigawords"] = out // GW
    fields.update(kw)
    return Rec(status=status, **fields)


def run(engine: rc.Engine, *recs: Rec) -> rc.ApplyResult:
    return engine.apply(engine.prepare(batch([decoded_entry(r) for r in recs]), T0))


def session(result: rc.ApplyResult, row: int = 0) -> dict[str, Any]:
    s = result.sessions
    return {
        "sid": s.acct_session_id[row],
        "nas": s.nas_key[row],
        "gen": int(s.generation[row]),
        "in": int(s.input_bytes[row]),
        "out": int(s.output_bytes[row]),
        "time": int(s.session_time_s[row]),
        "start": int(s.start_us[row]),
        "stop": int(s.stop_us[row]),
        "last": int(s.last_update_us[row]),
        "open": bool(s.open[row]),
        "flags": set(rc.flag_names(int(s.flags[row]))),
        "cause": int(s.terminate_cause[row]),
    }


def test_usage_is_final_counter_when_start_interims_stop_arrive_in_order() -> None:
    e = rc.Engine()
    r = run(
        e,
        rec(1, 0),
        rec(3, 600, 1000, 5000),
        rec(3, 1200, 3000, 9000),
        rec(2, 1500, 4000, 10_000, terminate_cause=1),
    )
    assert r.outcome.tolist() == [A, A, A, A]
    s = session(r)
    assert (s["in"], s["out"], s["time"], s["open"], s["cause"], s["flags"]) == (
        4000,
        10_000,
        1500,
        False,
        1,
        set(),
    )
    assert s["stop"] == T0 + 1500 * US
    assert int(r.bucket_input_bytes.sum()) == 4000
    assert int(r.bucket_session_s.sum()) == 1500


def test_gigawords_fold_into_64_bit_counters_when_present() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, 5 * GW + 7, 3))
    assert session(r)["in"] == 5 * GW + 7


def test_missing_gigawords_count_as_zero_when_octets_present() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, inp=None, out=None, input_octets=10, output_octets=20))
    assert (session(r)["in"], session(r)["out"]) == (10, 20)


def test_record_without_octets_carries_no_counter_info_when_interim() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, 100, 200), rec(3, 120), rec(3, 180, 150, 250))
    s = session(r)
    assert (s["in"], s["out"], s["time"]) == (150, 250, 180)
    assert s["flags"] == {"lost_start"}


def test_duplicate_is_detected_when_retransmit_has_new_delay() -> None:
    e = rc.Engine()
    first = rec(3, 600, 1000, 2000)
    retransmit = rec(3, 600, 1000, 2000, delay=5, arrival_us=T0 + 605 * US)
    r = run(e, rec(1, 0), first, retransmit)
    assert r.outcome.tolist() == [A, A, D]
    assert r.content_key[1].tobytes() == r.content_key[2].tobytes()
    r2 = run(e, retransmit)
    assert r2.outcome.tolist() == [D]
    assert session(r2)["in"] == 1000


def test_same_record_twice_in_one_batch_counts_once_when_it_is_older() -> None:
    e = rc.Engine()
    old = rec(3, 300, 10, 10)
    r = run(e, rec(3, 600, 100, 100), old, old)
    assert r.outcome.tolist() == [A, L, D]
    assert session(r)["in"] == 100


def test_older_interim_changes_nothing_when_it_arrives_after_newer() -> None:
    e = rc.Engine()
    r = run(e, rec(1, 0), rec(3, 1200, 3000, 3000), rec(3, 600, 1000, 1000))
    assert r.outcome.tolist() == [A, A, L]
    s = session(r)
    assert (s["in"], s["time"], s["last"]) == (3000, 1200, T0 + 1200 * US)


def test_lost_start_creates_session_from_first_record_when_interim_arrives_first() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 1000, 2000))
    s = session(r)
    assert s["flags"] == {"lost_start"}
    assert s["start"] == T0
    assert (s["in"], s["out"], s["time"]) == (1000, 2000, 600)
    assert any(a[2] == 1 for a in r.anomalies)


def test_start_after_interim_is_late_when_start_was_delayed() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 10, 10), rec(1, 0))
    assert r.outcome.tolist() == [A, L]
    assert len(r.sessions) == 1


def test_lost_stop_is_closed_at_last_update_when_swept() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(3, 600, 10, 10))
    not_yet = e.sweep(T0 + (600 + 3 * 600 + 300) * US)
    assert len(not_yet.sessions) == 0
    swept = e.sweep(T0 + (600 + 3 * 600 + 301) * US)
    s = session(swept)
    assert s["open"] is False
    assert s["stop"] == T0 + 600 * US
    assert s["flags"] == {"stale_closed"}
    assert swept.nas_keys == ["nas1"]
    assert len(swept.outcome) == 0


def test_late_stop_applies_delta_to_same_instance_when_session_was_swept() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(3, 600, 10, 10))
    e.sweep(T0 + 10 * HOUR)
    r = run(e, rec(2, 900, 50, 70, terminate_cause=2, at=900))
    s = session(r)
    assert r.outcome.tolist() == [A]
    assert (s["gen"], s["in"], s["out"], s["time"], s["cause"]) == (1, 50, 70, 900, 2)
    assert s["stop"] == T0 + 900 * US
    assert {"stale_closed", "late_stop"} <= s["flags"]
    assert int(r.bucket_input_bytes.sum()) == 40


def test_stop_with_zero_counters_keeps_high_water_mark_when_lost_carrier() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 1000, 2000), rec(2, 700, 0, 0, terminate_cause=2))
    s = session(r)
    assert (s["in"], s["out"], s["open"]) == (1000, 2000, False)
    assert "stop_regression" in s["flags"]


def test_stop_without_counters_keeps_high_water_mark_when_flagged() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 1000, 2000), rec(2, 700))
    s = session(r)
    assert (s["in"], s["out"], s["time"], s["open"]) == (1000, 2000, 700, False)
    assert "stop_regression" in s["flags"]


def test_interim_after_stop_neither_reopens_nor_counts_when_session_stopped() -> None:
    e = rc.Engine()
    r = run(e, rec(1, 0), rec(2, 600, 100, 100), rec(3, 900, 500, 500))
    assert r.outcome.tolist() == [A, A, L]
    assert len(r.sessions) == 1
    s = session(r)
    assert (s["in"], s["open"]) == (100, False)
    assert "interim_after_stop" in s["flags"]


def test_counter_reset_counts_new_value_from_zero_when_session_time_rises() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 1000, 1000), rec(3, 1200, 300, 2000))
    s = session(r)
    assert (s["in"], s["out"]) == (1300, 2000)
    assert "counter_reset" in s["flags"]
    assert int(r.sessions.hwm_input[0]) == 300
    assert r.bucket_input_bytes.dtype == np.uint64


def test_wrap_is_inferred_when_nas_policy_says_no_gigawords() -> None:
    e = rc.Engine()
    e.set_policy("nas1", rc.NasPolicy(infer_wrap=True))
    r = run(e, rec(3, 600, GW - 100, 0), rec(3, 1200, 50, 0))
    s = session(r)
    assert s["in"] == GW + 50
    assert "wrap_inferred" in s["flags"]


def test_directions_swap_when_nas_reports_the_other_way() -> None:
    e = rc.Engine()
    e.set_policy("nas1", rc.NasPolicy(swap_direction=True))
    r = run(e, rec(3, 600, 1, 2))
    assert (session(r)["in"], session(r)["out"]) == (2, 1)


def test_accounting_on_closes_sessions_started_before_it_when_nas_reboots() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(3, 600, 10, 10), rec(1, 0, sid="s2", at=100))
    on = Rec(status=7, nas_identifier="nas1", event_ts_us=T0 + 700 * US, arrival_us=T0 + 700 * US)
    raced = rec(1, 0, sid="s3", at=800)
    r = run(e, raced, on)
    closed = [session(r, i) for i in range(len(r.sessions)) if not r.sessions.open[i]]
    assert sorted(c["sid"] for c in closed) == ["s1", "s2"]
    assert all("nas_reboot_closed" in c["flags"] for c in closed)
    assert [c["stop"] for c in closed if c["sid"] == "s1"] == [T0 + 600 * US]
    still = [session(r, i) for i in range(len(r.sessions)) if r.sessions.open[i]]
    assert [s["sid"] for s in still] == ["s3"]
    assert r.session_index.tolist()[1] == -1


def test_start_after_close_begins_new_generation_when_session_id_is_reused() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(2, 600, 10, 10))
    r = run(e, rec(1, 0, at=5000), rec(3, 600, 7, 7, at=5600))
    assert len(r.sessions) == 1
    s = session(r)
    assert (s["gen"], s["in"], s["start"]) == (2, 7, T0 + 5000 * US)


def test_far_implied_start_begins_new_generation_when_instance_is_open() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(3, 600, 10, 10))
    r = run(e, rec(3, 60, 5, 5, at=9000))
    by_gen = {session(r, i)["gen"]: session(r, i) for i in range(len(r.sessions))}
    assert by_gen[1]["open"] is False
    assert "stale_closed" in by_gen[1]["flags"]
    assert by_gen[2]["in"] == 5
    assert {"lost_start", "generation_from_start_gap"} <= by_gen[2]["flags"]


def test_clock_skew_uses_arrival_minus_delay_when_event_timestamp_disagrees() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 600, 10, 10, event_ts_us=T0 + 600 * US + 10 * HOUR, delay=2))
    assert int(r.event_us[0]) == T0 + 598 * US
    assert "clock_skew" in session(r)["flags"]
    r = run(e, rec(3, 1200, 20, 20, event_ts_us=T0 + 1190 * US))
    assert int(r.event_us[0]) == T0 + 1190 * US


def test_same_session_id_is_two_sessions_when_nases_differ() -> None:
    e = rc.Engine()
    r = run(
        e,
        rec(3, 600, 10, 10, nas_identifier=None, nas_ip="10.0.0.1", source="192.0.2.200"),
        rec(3, 600, 20, 20, nas_identifier=None, nas_ip="10.0.0.2", source="192.0.2.200"),
    )
    assert sorted(r.sessions.nas_key) == ["10.0.0.1", "10.0.0.2"]
    assert r.nas_keys == ["10.0.0.1", "10.0.0.2"]
    assert sorted(r.nas_index.tolist()) == [0, 1]


def test_nas_key_falls_back_to_source_address_when_no_nas_attribute() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, 1, 1, nas_identifier=None, source="192.168.123.1"))
    assert r.sessions.nas_key == ["192.168.123.1"]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Rec(status=0, sid="x", nas_identifier="n"), "missing Acct-Status-Type"),
        (Rec(status=5, sid="x", nas_identifier="n"), "unknown Acct-Status-Type 5"),
        (Rec(status=3, sid="", nas_identifier="n"), "missing Acct-Session-Id"),
    ],
)
def test_malformed_record_is_quarantined_when_decoded_form_is_invalid(
    bad: Rec, reason: str
) -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, 1, 1), bad)
    assert r.outcome.tolist() == [A, rc.OUTCOME_QUARANTINED]
    assert r.quarantine == [(1, reason)]
    assert r.session_index.tolist()[1] == -1


def test_entry_is_quarantined_when_protobuf_is_truncated() -> None:
    e = rc.Engine()
    raw = batch([decoded_entry(rec(3, 60, 1, 1))[:-3]])
    r = e.apply(e.prepare(raw, 0))
    assert r.outcome.tolist() == [rc.OUTCOME_QUARANTINED] or len(r.outcome) == 0


def test_deltas_land_in_the_hour_of_each_update_when_session_spans_hours() -> None:
    e = rc.Engine()
    r = run(e, rec(1, 0), rec(3, 1000, 100, 0), rec(3, 4000, 250, 0), rec(2, 7300, 400, 0))
    hours = dict(zip(r.bucket_hour_us.tolist(), r.bucket_input_bytes.tolist(), strict=True))
    expected: dict[int, int] = {}
    for at, delta in ((1000, 100), (4000, 150), (7300, 150)):
        hour = (T0 + at * US) // HOUR * HOUR
        expected[hour] = expected.get(hour, 0) + delta
    assert hours == expected
    assert len(expected) == 3
    secs = dict(zip(r.bucket_hour_us.tolist(), r.bucket_session_s.tolist(), strict=True))
    assert sum(secs.values()) == 7300


def test_outputs_have_contract_dtypes_when_batch_is_applied() -> None:
    e = rc.Engine()
    prepared = e.prepare(batch([decoded_entry(rec(3, 60, 1, 1))], "batch-7"), T0)
    assert prepared.batch_id == "batch-7"
    assert prepared.nas_keys == ["nas1"]
    assert len(prepared) == 1
    r = e.apply(prepared)
    assert r.outcome.dtype == np.uint8
    assert r.content_key.dtype == np.dtype("V16")
    assert r.nas_index.dtype == np.int32
    assert r.session_index.dtype == np.int32
    assert r.event_us.dtype == np.int64
    assert r.status_type.dtype == np.uint8
    assert r.nas_seq.tolist() == [1]
    assert e.nas_seq("nas1") == 1
    assert e.nas_seq("other") is None
    assert r.entry_bytes == [decoded_entry(rec(3, 60, 1, 1))]
    s = r.sessions
    assert s.generation.dtype == np.uint32
    assert s.flags.dtype == np.uint32
    assert s.last_key.dtype == np.dtype("V16")
    assert s.open.dtype == np.bool_
    # The engine keeps the first 64 bits of the last content key (repeat detection).
    assert s.last_key[0].tobytes() == r.content_key[0].tobytes()[:8] + bytes(8)


def test_loaded_sessions_continue_when_another_replica_wrote_the_nas() -> None:
    writer = rc.Engine()
    r = run(writer, rec(1, 0), rec(3, 600, 100, 100))
    s = r.sessions
    reader = rc.Engine()
    reader.load_sessions(
        "nas1",
        int(r.nas_seq[0]),
        rc.make_sessions(
            s.nas_key, s.acct_session_id, s.generation, s.user_name, s.calling_station_id,
            s.framed_ip_address, s.start_us, s.stop_us, s.last_update_us, s.session_time_s,
            s.input_bytes, s.output_bytes, s.hwm_input, s.hwm_output, s.last_key, s.flags,
            s.terminate_cause, s.open,
        ),
    )  # fmt: skip
    assert reader.nas_seq("nas1") == 1
    assert reader.session_count() == 1
    again = run(reader, rec(3, 600, 100, 100))
    assert again.outcome.tolist() == [D]
    more = run(reader, rec(3, 1200, 300, 100))
    assert session(more)["in"] == 300
    assert int(more.bucket_input_bytes.sum()) == 200
    reader.forget_nas(["nas1"])
    assert reader.nas_seq("nas1") is None
    assert reader.session_count() == 0


def columns(r: rc.ApplyResult, rows: list[int]) -> rc.SessionColumns:
    """Rows of a result's sessions as load_sessions/add_sessions input (as stored)."""
    s = r.sessions
    pick = np.array(rows, dtype=np.int64)
    text = [
        [col[i] for i in rows]
        for col in (s.nas_key, s.acct_session_id, s.user_name, s.calling_station_id,
                    s.framed_ip_address)
    ]  # fmt: skip
    return rc.make_sessions(
        text[0], text[1], s.generation[pick], text[2], text[3], text[4], s.start_us[pick],
        s.stop_us[pick], s.last_update_us[pick], s.session_time_s[pick], s.input_bytes[pick],
        s.output_bytes[pick], s.hwm_input[pick], s.hwm_output[pick], s.last_key[pick],
        s.flags[pick], s.terminate_cause[pick], s.open[pick],
    )  # fmt: skip


def test_unknown_sessions_names_forgotten_ids_once_and_add_sessions_continues_them() -> None:
    e = rc.Engine()
    first = run(e, rec(1, 0), rec(2, 100, 10, 20, terminate_cause=1), rec(1, 0, sid="s2"))
    stored = columns(first, [0])
    reuse = e.prepare(batch([decoded_entry(rec(1, 0, at=3 * 24 * 3600)), decoded_entry(
        rec(3, 60, 5, 6, at=3 * 24 * 3600 + 60))]), T0)  # fmt: skip
    # Nothing forgotten yet: the engine holds every instance of the NAS.
    assert e.unknown_sessions(reuse) == []
    # Two days on, the sweep closes s2 and drops both closed instances.
    assert int((~e.sweep(T0 + 49 * HOUR).sessions.open).sum()) == 1
    assert e.session_count() == 0
    assert e.unknown_sessions(reuse) == [("nas1", "s1")]
    e.add_sessions(stored)
    assert e.unknown_sessions(reuse) == []
    e.add_sessions(stored)  # held ids are skipped: no second copy
    assert e.session_count() == 1
    r = e.apply(reuse)
    assert r.outcome.tolist() == [A, A]
    assert [session(r, i)["gen"] for i in range(len(r.sessions))] == [2]
    assert (session(r)["in"], session(r)["out"]) == (5, 6)


def test_unmatched_sessions_names_a_late_record_of_a_forgotten_generation_until_it_is_added() -> (
    None
):
    e = rc.Engine()
    day = 24 * 3600
    # Generation 1 opens at T0; the id is reused two days on (generation 1 is superseded).
    first = run(e, rec(1, 0), rec(3, 600, 100, 200), rec(1, 0, at=2 * day))
    assert [session(first, i)["gen"] for i in range(len(first.sessions))] == [1, 2]
    late = e.prepare(batch([decoded_entry(rec(2, 900, 300, 500, terminate_cause=1))]), T0)
    # Held: generation 1 takes it, nothing is asked for.
    assert e.unmatched_sessions(late) == []
    e.sweep(T0 + (2 * day + 1000) * US)  # forgets generation 1, keeps the open generation 2
    assert e.session_count() == 1
    assert e.unknown_sessions(late) == []  # the id is held (generation 2)
    # No held instance starts within the NAS's tolerance (300 s) of T0; a forgotten one
    # may, and none started after generation 1, the latest forgotten.
    assert e.unmatched_sessions(late) == [("nas1", "s1", T0 - 300 * US, T0)]
    e.add_sessions(columns(first, [0]))
    e.add_sessions(columns(first, [0, 1]))  # held generations are skipped
    assert e.session_count() == 2
    assert e.unmatched_sessions(late) == []
    r = e.apply(late)
    assert r.outcome.tolist() == [A]
    assert (session(r)["gen"], session(r)["in"], session(r)["out"]) == (1, 300, 500)
    # Generation 1 went in below generation 2, which still takes the id's new records.
    more = run(e, rec(3, 60, 5, 6, at=2 * day + 60))
    assert (session(more)["gen"], session(more)["in"], session(more)["out"]) == (2, 5, 6)


def test_loaded_nas_asks_for_unknown_ids_unless_its_rows_were_complete() -> None:
    writer = rc.Engine()
    r = run(writer, rec(1, 0), rec(2, 100, 10, 20, terminate_cause=1))
    for complete, expected in ((True, []), (False, [("nas1", "s9")])):
        reader = rc.Engine()
        reader.load_sessions("nas1", 1, columns(r, [0]), complete=complete)
        prepared = reader.prepare(
            batch([decoded_entry(rec(1, 500, sid="s9")), decoded_entry(rec(1, 500))]), T0
        )
        # s1 is held either way; s9 may have instances the rows left out.
        assert reader.unknown_sessions(prepared) == expected
        reader.forget_nas(["nas1"])
        # Forgotten: any id may have stored instances.
        assert reader.unknown_sessions(prepared) == [("nas1", "s9"), ("nas1", "s1")]
    # A NAS the engine has never held has nothing to recall.
    assert rc.Engine().unknown_sessions(prepared) == []


def test_load_sessions_refuses_rows_of_another_nas_when_keys_differ() -> None:
    r = run(rc.Engine(), rec(3, 60, 1, 1))
    s = r.sessions
    cols = rc.make_sessions(
        s.nas_key, s.acct_session_id, s.generation, s.user_name, s.calling_station_id,
        s.framed_ip_address, s.start_us, s.stop_us, s.last_update_us, s.session_time_s,
        s.input_bytes, s.output_bytes, s.hwm_input, s.hwm_output, s.last_key, s.flags,
        s.terminate_cause, s.open,
    )  # fmt: skip
    with pytest.raises(rc.RatingError):
        rc.Engine().load_sessions("other", 1, cols)
    assert len(rc.empty_sessions()) == 0


def test_flag_names_list_every_bit_when_all_are_set() -> None:
    assert rc.flag_names(1023) == [
        "lost_start", "counter_reset", "wrap_inferred", "stop_regression", "stale_closed",
        "late_stop", "nas_reboot_closed", "clock_skew", "interim_after_stop",
        "generation_from_start_gap",
    ]  # fmt: skip


def test_prepare_raises_rating_error_when_batch_is_not_protobuf() -> None:
    with pytest.raises(rc.RatingError):
        rc.Engine().prepare(b"\xff\xff\xff", 0)


def test_known_entries_are_duplicates_and_change_nothing_when_ledger_has_them() -> None:
    e = rc.Engine()
    stop = rec(2, 0)
    interim = rec(3, 7814, 4_469_879_911, 0)
    start = rec(1, 0, at=5)  # the id reused: a new generation
    first = run(e, stop, interim, start)
    assert first.outcome.tolist() == [A, L, A]
    prepared = e.prepare(batch([decoded_entry(r) for r in (stop, interim, start)]), T0)
    assert prepared.content_key.dtype == np.dtype("V16")
    assert [k.tobytes() for k in prepared.content_key] == [k.tobytes() for k in first.content_key]
    replay = e.apply(prepared, np.ones(3, dtype=np.bool_))
    assert replay.outcome.tolist() == [D, D, D]
    assert len(replay.sessions) == 0
    assert len(replay.bucket_hour_us) == 0


def test_apply_refuses_known_flags_when_length_differs_from_batch() -> None:
    e = rc.Engine()
    prepared = e.prepare(batch([decoded_entry(rec(3, 60, 1, 1))]), T0)
    with pytest.raises(rc.RatingError, match="one flag per entry"):
        e.apply(prepared, np.zeros(2, dtype=np.bool_))


def test_generated_stubs_and_core_agree_on_the_wire_when_record_is_built_with_protobuf() -> None:
    usage_pb2 = pytest.importorskip("isp_rating.v1.usage_pb2")
    request = usage_pb2.StreamAccountingRequest(batch_id="pb")
    entry = request.entries.add()
    r = entry.decoded
    r.status_type = usage_pb2.ACCT_STATUS_TYPE_INTERIM_UPDATE
    r.acct_session_id = "pb-1"
    r.user_name = "carol"
    r.nas_identifier = "nas-pb"
    r.input_octets = 5
    r.input_gigawords = 1
    r.output_octets = 7
    r.session_time_s = 90
    r.delay_time_s = 0
    r.event_timestamp.FromMicroseconds(T0 + 90 * US)
    r.arrival_time.FromMicroseconds(T0 + 90 * US)
    r.calling_station_id = "02-00-00-00-00-01"
    r.framed_ip_address = "100.64.0.9"
    raw = request.entries.add().raw
    raw.packet = b"\x04"
    raw.source_address = "192.0.2.1"
    e = rc.Engine()
    result = e.apply(e.prepare(request.SerializeToString(), 0))
    assert result.outcome.tolist() == [A, rc.OUTCOME_QUARANTINED]
    s = session(result)
    assert (s["nas"], s["sid"], s["in"], s["out"], s["time"]) == ("nas-pb", "pb-1", GW + 5, 7, 90)
    assert result.sessions.framed_ip_address == ["100.64.0.9"]
    assert result.sessions.calling_station_id == ["02-00-00-00-00-01"]
    assert int(result.event_us[0]) == T0 + 90 * US


def _prefix_attribute(kind: int, prefix: str, octets: int | None = None) -> bytes:
    """RFC 3162/4818: reserved, prefix length, then the prefix's first `octets` octets
    (those the length needs when None)."""
    network = ipaddress.IPv6Network(prefix, strict=False)
    length = network.prefixlen
    value = bytes([0, length]) + network.network_address.packed[: octets or (length + 7) // 8]
    return bytes([kind, len(value) + 2]) + value


def test_ipv6_prefixes_come_out_canonical_when_sent_in_either_form() -> None:
    usage_pb2 = pytest.importorskip("isp_rating.v1.usage_pb2")
    request = usage_pb2.StreamAccountingRequest(batch_id="v6")
    for sid, framed, delegated in [
        ("d1", "2001:0DB8:0:1::/64", "2001:db8:1200:0::/56"),
        ("d2", "2001:db8::1", ""),
        ("bad", "2001:db8::/129", ""),
        ("bad2", "", "192.0.2.0/24"),
    ]:
        r = request.entries.add().decoded
        r.status_type = usage_pb2.ACCT_STATUS_TYPE_INTERIM_UPDATE
        r.acct_session_id = sid
        r.nas_identifier = "nas-v6"
        r.session_time_s = 60
        r.event_timestamp.FromMicroseconds(T0 + 60 * US)
        r.arrival_time.FromMicroseconds(T0 + 60 * US)
        if framed:
            r.framed_ipv6_prefix = framed
        if delegated:
            r.delegated_ipv6_prefix = delegated
    # A raw packet whose Framed-IPv6-Prefix carries all 16 octets with bits past /64 set.
    full = bytearray(_prefix_attribute(97, "2001:db8:0:2::/64", 16))
    full[-1] = 1
    attributes = (
        bytes([40, 6, 0, 0, 0, 3, 44, 4]) + b"r1" + bytes([32, 8]) + b"nas-v6"
        + bytes([46, 6, 0, 0, 0, 60]) + bytes(full)
        + _prefix_attribute(123, "2001:db8:3400::/56")
    )  # fmt: skip
    head = bytes([4, 1]) + (20 + len(attributes)).to_bytes(2, "big")
    raw = request.entries.add().raw
    raw.packet = head + bytes(16) + attributes
    raw.source_address = "192.0.2.1"
    raw.arrival_time.FromMicroseconds(T0 + 60 * US)
    e = rc.Engine(ledger_replay=True)  # the raw packet is decoded without its secret
    result = e.apply(e.prepare(request.SerializeToString(), 0))
    assert result.outcome.tolist() == [A, A, rc.OUTCOME_QUARANTINED, rc.OUTCOME_QUARANTINED, A]
    assert [reason.split(":")[0] for _, reason in result.quarantine] == [
        "framed_ipv6_prefix",
        "delegated_ipv6_prefix",
    ]
    s = result.sessions
    rows = {
        sid: (s.framed_ipv6_prefix[i], s.delegated_ipv6_prefix[i])
        for i, sid in enumerate(s.acct_session_id)
    }
    assert rows == {
        "d1": ("2001:db8:0:1::/64", "2001:db8:1200::/56"),
        "d2": ("2001:db8::1/128", ""),
        "r1": ("2001:db8:0:2::/64", "2001:db8:3400::/56"),
    }


def test_start_without_session_time_begins_new_generation_when_open_instance_is_old() -> None:
    e = rc.Engine()
    run(e, rec(1, None), rec(3, 600, 10, 10))
    r = run(e, rec(1, None, at=50_000))
    by_gen = {session(r, i)["gen"]: session(r, i) for i in range(len(r.sessions))}
    assert by_gen[1]["open"] is False
    assert by_gen[1]["stop"] == T0 + 600 * US
    assert by_gen[2]["open"] is True
    assert by_gen[2]["start"] == T0 + 50_000 * US
    assert "generation_from_start_gap" in by_gen[2]["flags"]


def test_nas_key_drops_the_port_when_source_address_has_one() -> None:
    e = rc.Engine()
    r = run(e, rec(3, 60, 1, 1, nas_identifier=None, source="192.0.2.7:1813"))
    assert r.sessions.nas_key == ["192.0.2.7"]


def test_sweep_forgets_closed_sessions_when_retention_has_passed() -> None:
    e = rc.Engine()
    run(e, rec(1, 0), rec(2, 600, 10, 10))
    assert e.session_count() == 1
    e.sweep(T0 + 47 * HOUR)
    assert e.session_count() == 1
    result = e.sweep(T0 + 49 * HOUR)
    assert len(result.sessions) == 0
    assert e.session_count() == 0


def test_duplicate_is_detected_when_two_collectors_stamp_different_arrivals() -> None:
    e = rc.Engine()
    copy_a = rec(3, 600, 1000, 2000, event_ts_us=None, arrival_us=T0 + 600 * US + 999_000)
    copy_b = rec(3, 600, 1000, 2000, event_ts_us=None, arrival_us=T0 + 601 * US + 2_000)
    r = run(e, rec(1, 0), copy_a, copy_b)
    assert r.outcome.tolist() == [A, A, D]
    assert session(r)["in"] == 1000


def test_accounting_on_without_timestamp_is_not_a_duplicate_when_nas_reboots_twice() -> None:
    e = rc.Engine()
    on1 = Rec(status=7, nas_identifier="nas1", arrival_us=T0 + 100 * US)
    on2 = Rec(status=7, nas_identifier="nas1", arrival_us=T0 + 9000 * US)
    run(e, rec(1, 0, sid="a"), on1)
    r = run(e, rec(1, 0, sid="b", at=5000), on2)
    assert r.outcome.tolist() == [A, A]
    assert r.sessions.open.tolist() == [False]


def test_prepare_and_apply_are_safe_when_called_from_several_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    e = rc.Engine()
    batches = [
        batch(
            [decoded_entry(rec(3, 60 * (k + 1), 10 * (k + 1), 0, sid=f"t{j}")) for j in range(500)]
        )
        for k in range(4)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        prepared = list(pool.map(lambda b: e.prepare(b, T0), batches))
    assert [len(p) for p in prepared] == [500] * 4
    for p in prepared:  # applied in session-time order, one at a time
        e.apply(p)
    assert e.session_count() == 500
    r = run(e, rec(3, 300, 45, 0, sid="t0"))
    assert session(r)["in"] == 45
