"""Hypothesis: the Rust engine and the pure-Python reference agree on random traffic.

Random interleavings of sessions on two NASes, with lost, duplicated and reordered records,
counter resets, gigawords, zero Stops, NAS reboots, clock skew (also about the tolerance),
session-id reuse (days later too, after a sweep forgot the old instance), records held back
for days (delivered after a sweep forgot their instance) and stale sweeps, split into
batches anywhere: identical sessions, buckets and outcomes. The reference never forgets an
instance; the engine forgets closed ones and is given them back from the stored rows, as
the service does.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rating_core as rc
from server.usage.repository import timed_by_arrival
from tests.reference.accounting_wire import Rec, batch, decode_batch, decoded_entry
from tests.reference.usage_reference import US, Policy, Reference

T0 = 1_700_000_000 * US
GW = 1 << 32
DAY_S = 86_400
OUTCOME_NAMES = {1: "accepted", 2: "duplicate", 3: "late", 4: "quarantined"}


def counters(value: int, gigawords: bool) -> tuple[int, int | None]:
    if gigawords:
        return value % GW, value // GW
    return value % GW, None


def true_session(rng: random.Random, nas: str, sid: str, start: int, skew: int) -> list[Rec]:
    """Records of one real session, in the order the NAS sent them."""
    out: list[Rec] = []
    use_gw = rng.random() < 0.7
    user = rng.choice(["alice", "bob", ""])
    # Some NASes count session time from a little after their Start (address assignment).
    lag = rng.choice([0, 0, 0, 1, 5, 40])

    def make(status: int, t: int, inp: int | None, outp: int | None, **kw: object) -> Rec:
        at = start + t * US
        io, ig = counters(inp, use_gw) if inp is not None else (None, None)
        oo, og = counters(outp, use_gw) if outp is not None else (None, None)
        has_ts = rng.random() < 0.9
        delay = rng.choice([None, 0, 0, 1, 3])
        jitter = rng.randrange(0, 300_000)
        return Rec(
            status=status, sid=sid, nas_identifier=nas, user=user,
            session_time=t if status == 1 else max(0, t - lag),
            input_octets=io, input_gigawords=ig, output_octets=oo, output_gigawords=og,
            event_ts_us=(at + skew) if has_ts else None, delay=delay,
            arrival_us=at + (delay or 0) * US + jitter, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    start_rec = make(1, 0, None, None)
    if rng.random() < 0.5:
        start_rec = replace(start_rec, session_time=None)  # most NASes omit it on a Start
    out.append(start_rec)
    t, inp, outp = 0, 0, 0
    for _ in range(rng.randrange(0, 6)):
        t += rng.choice([1, 60, 300, 600, 1800])
        kind = rng.random()
        if kind < 0.08:
            inp = rng.randrange(0, 1000)  # counter reset
        elif kind < 0.15:
            inp += rng.randrange(GW - 1000, GW + 1000)  # crosses 2^32
        else:
            inp += rng.randrange(0, 100_000)
        outp += rng.randrange(0, 1_000_000)
        no_counters = rng.random() < 0.08
        out.append(make(3, t, None if no_counters else inp, None if no_counters else outp))
    t += rng.choice([1, 30, 600])
    stop_kind = rng.random()
    if stop_kind < 0.1:
        out.append(make(2, t, 0, 0, terminate_cause=2))
    elif stop_kind < 0.15:
        out.append(make(2, t, None, None, terminate_cause=1))
    else:
        out.append(make(2, t, inp + 10, outp + 10, terminate_cause=rng.choice([1, 4, 11])))
    if rng.random() < 0.1:
        out.append(make(3, t + 60, inp + 99, outp + 99))  # interim after stop
    return out


def traffic(seed: int) -> tuple[list[Rec], dict[str, Policy], list[int]]:
    """Records in arrival order (with losses, repeats, reorders), policies, sweep points."""
    rng = random.Random(seed)
    policies = {
        "nasA": Policy(infer_wrap=rng.random() < 0.5, swap_direction=rng.random() < 0.3),
        "nasB": Policy(clock_skew_tolerance_s=rng.choice([60, 300])),
    }
    # nasB's clock: right, far off, or off by about its tolerance, so that its records'
    # Event-Timestamps are trusted or set aside by their arrival's jitter and delay.
    tolerance = policies["nasB"].clock_skew_tolerance_s * US
    skew = {
        "nasA": 0,
        "nasB": rng.choice([0, 0, 7200 * US, tolerance + 100_000, 100_000 - tolerance]),
    }
    recs: list[Rec] = []
    for nas in ("nasA", "nasB"):
        for sid in ("s1", "s2", "s3")[: rng.randrange(1, 4)]:
            start = T0 + rng.randrange(0, 3600) * US
            for _ in range(rng.randrange(1, 3)):  # session-id reuse
                session = true_session(rng, nas, sid, start, skew[nas])
                recs.extend(session)
                start += (
                    rng.choice([0, 1, 30, 120, 4000, 9000, 3 * DAY_S]) * US
                    + (session[-1].session_time or 0) * US
                )
        if rng.random() < 0.3:
            at = T0 + rng.randrange(0, 20_000) * US
            recs.append(
                Rec(
                    status=rng.choice([7, 8]),
                    nas_identifier=nas,
                    event_ts_us=at + skew[nas],
                    arrival_us=at,
                )
            )
    recs.sort(key=lambda r: r.arrival_us or 0)
    # Losses, retransmits (new delay and arrival, same content) and local reorders.
    noisy: list[Rec] = []
    held_back: list[Rec] = []
    resent: list[Rec] = []
    for r in recs:
        if rng.random() < 0.1:
            if rng.random() < 0.5:
                # Held back by a collector and delivered days later, after the sweeps.
                days = (3 * DAY_S + rng.randrange(0, 3600)) * US
                late = (r.arrival_us or 0) + days
                held_back.append(replace(r, delay=(r.delay or 0) + days // US, arrival_us=late))
            continue
        noisy.append(r)
        if rng.random() < 0.15:
            later = (r.arrival_us or 0) + 5 * US + rng.randrange(0, 2 * US)
            noisy.append(replace(r, delay=(r.delay or 0) + 5, arrival_us=later))
        if rng.random() < 0.1:
            # Resent unchanged (RFC 5080: Acct-Delay-Time not updated) and delivered past
            # the NAS's tolerance, also after the session's next records.
            tolerance = policies[r.nas_identifier].clock_skew_tolerance_s
            lag = tolerance + rng.choice([1, 60, 700, 2000])
            resent.append(replace(r, arrival_us=(r.arrival_us or 0) + lag * US))
    noisy = sorted(noisy + resent, key=lambda r: r.arrival_us or 0)
    for _ in range(len(noisy) // 3):
        i = rng.randrange(0, max(1, len(noisy) - 1))
        j = min(len(noisy) - 1, i + rng.randrange(1, 4))
        noisy[i], noisy[j] = noisy[j], noisy[i]
    if rng.random() < 0.2 and noisy:
        noisy.append(rng.choice(noisy))  # a very late repeat through another collector
    sweeps = set(rng.sample(range(len(noisy) + 1), k=min(2, len(noisy) + 1)))
    if held_back and rng.random() < 0.7:
        sweeps.add(len(noisy))  # the held-back records meet an engine that forgot
    noisy.extend(sorted(held_back, key=lambda r: r.arrival_us or 0))
    return noisy, policies, sorted(sweeps)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.lists(st.integers(0, 200), max_size=6))
def test_engine_matches_reference_when_traffic_is_noisy_and_split_anywhere(
    seed: int, cuts: list[int]
) -> None:
    recs, policies, sweep_points = traffic(seed)
    ref = Reference(policies=dict(policies))
    engine = rc.Engine()
    for nas, p in policies.items():
        engine.set_policy(nas, rc.NasPolicy(
            swap_direction=p.swap_direction, infer_wrap=p.infer_wrap,
            clock_skew_tolerance_s=p.clock_skew_tolerance_s,
        ))  # fmt: skip
    bounds = sorted({0, len(recs), *(c % (len(recs) + 1) for c in cuts), *sweep_points})
    ledger: set[bytes] = set()
    # Accepted Accounting-On/Offs per NAS, oldest first: what a reload recalls.
    onoffs: dict[str, list[tuple[bytes, int, int, bool]]] = {}
    rust_outcomes: list[str] = []
    ref_outcomes: list[str] = []
    rust_sessions: dict[tuple[str, str, int], dict[str, object]] = {}
    rust_buckets: dict[tuple[str, str, int, int], list[int]] = {}
    sweep_at = T0 + 30_000 * US
    db: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def collect(result: rc.ApplyResult) -> None:
        db.update(_rows(result, db))
        s = result.sessions
        keys = []
        for i in range(len(s)):
            key = (s.nas_key[i], s.acct_session_id[i], int(s.generation[i]))
            keys.append(key)
            # Identity text is the projection's: it keeps the first non-empty value.
            user = str(rust_sessions.get(key, {}).get("user", "")) or s.user_name[i]
            rust_sessions[key] = {
                "in": int(s.input_bytes[i]), "out": int(s.output_bytes[i]),
                "time": int(s.session_time_s[i]), "start": int(s.start_us[i]),
                "stop": int(s.stop_us[i]), "last": int(s.last_update_us[i]),
                "flags": int(s.flags[i]), "cause": int(s.terminate_cause[i]),
                "open": bool(s.open[i]), "user": user,
                "hwm": (int(s.hwm_input[i]), int(s.hwm_output[i])),
            }  # fmt: skip
        for j in range(len(result.bucket_hour_us)):
            k = (*keys[int(result.bucket_session_index[j])], int(result.bucket_hour_us[j]))
            b = rust_buckets.setdefault(k, [0, 0, 0])
            b[0] += int(result.bucket_input_bytes[j])
            b[1] += int(result.bucket_output_bytes[j])
            b[2] += int(result.bucket_session_s[j])

    for lo, hi in itertools.pairwise(bounds):
        if lo in sweep_points and lo > 0:
            # Before a reuse days later, the sweep forgets the id's closed instances.
            as_of = max(sweep_at, recs[lo].arrival_us or 0) if lo < len(recs) else sweep_at
            collect(engine.sweep(as_of))
            ref.sweep(as_of)
            sweep_at += 20_000 * US
        part = recs[lo:hi]
        if not part:
            continue
        result, outcomes = _apply_as_the_service_does(engine, part, ledger, db, onoffs)
        collect(result)
        # The reference reads the bytes the engine read, with its own decoder.
        fed = decode_batch(batch([decoded_entry(r) for r in part]))
        assert fed == part
        for r, outcome in zip(fed, outcomes, strict=True):
            rust_outcomes.append(outcome)
            ref_outcomes.append(ref.record(r, T0))
    assert rust_outcomes == ref_outcomes

    expected = {
        k: {
            "in": s.input_bytes,
            "out": s.output_bytes,
            "time": s.session_time,
            "start": s.start_us,
            "stop": s.stop_us if s.state != "open" else -1,
            "last": s.last_update_us,
            "flags": s.flags,
            "cause": s.terminate_cause,
            "open": s.state == "open",
            "user": s.user,
            "hwm": (s.hwm_in, s.hwm_out),
        }
        for k, s in ref.sessions().items()
    }
    assert rust_sessions == expected
    ref_buckets = {k: v for k, v in ref.buckets.items() if any(v)}
    assert rust_buckets == ref_buckets
    # A session's buckets sum to its totals; deltas are never negative (uint64 columns).
    for key, s in rust_sessions.items():
        mine = [v for k, v in rust_buckets.items() if k[:3] == key]
        assert sum(v[0] for v in mine) == s["in"]
        assert sum(v[1] for v in mine) == s["out"]
        assert sum(v[2] for v in mine) == s["time"]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_replay_through_fresh_engine_gives_same_sessions_when_ledger_is_resent(seed: int) -> None:
    recs, _, _ = traffic(seed)
    first = rc.Engine()
    entries = [decoded_entry(r) for r in recs]
    result = first.apply(first.prepare(batch(entries), T0))
    accepted = [
        result.entry_bytes[i]
        for i in range(len(entries))
        if int(result.outcome[i]) in (rc.OUTCOME_ACCEPTED, rc.OUTCOME_LATE)
    ]
    replay = rc.Engine()
    again = replay.apply(replay.prepare(batch(accepted), T0))

    def table(r: rc.ApplyResult) -> list[tuple[object, ...]]:
        s = r.sessions
        return sorted(
            (s.nas_key[i], s.acct_session_id[i], int(s.generation[i]), int(s.input_bytes[i]),
             int(s.output_bytes[i]), int(s.session_time_s[i]), int(s.flags[i]), bool(s.open[i]))
            for i in range(len(s))
        )  # fmt: skip

    assert table(again) == table(result)
    assert int(again.bucket_input_bytes.sum()) == int(result.bucket_input_bytes.sum())


def _apply_as_the_service_does(
    engine: rc.Engine,
    part: list[Rec],
    ledger: set[bytes],
    db: dict[tuple[str, str, int], tuple[Any, ...]],
    onoffs: dict[str, list[tuple[bytes, int, int, bool]]],
) -> tuple[rc.ApplyResult, list[str]]:
    """One batch as UsageService.ingest applies it, with `ledger` as its primary key and
    `db` as the stored rows: recall, apply (entries whose prepared key the ledger holds
    flagged `known`); a late record the ledger holds is a duplicate, and an accepted one (or
    a late one that flagged its session) makes the batch run again without it, on the NASes
    reloaded from the stored rows.
    (A key completed in apply, for a record without Event-Timestamp, is only found after;
    so is a record that began an instance but repeats one an older instance took.)
    Adds the keys of accepted and late records to `ledger`; returns the result and each
    entry's outcome."""
    entries = [decoded_entry(r) for r in part]
    excluded: set[int] = set()
    while True:
        kept = [i for i in range(len(part)) if i not in excluded]
        prepared = engine.prepare(batch([entries[i] for i in kept]), T0)
        _recall(engine, prepared, db)
        known = np.array([k.tobytes() in ledger for k in prepared.content_key], dtype=np.bool_)
        result = engine.apply(prepared, known)
        keys = [k.tobytes() for k in result.content_key]
        flagging = {entry for entry, *_ in result.anomalies}
        held = [
            j
            for j in range(len(kept))
            if keys[j] in ledger
            and (
                int(result.outcome[j]) == rc.OUTCOME_ACCEPTED
                or (int(result.outcome[j]) == rc.OUTCOME_LATE and j in flagging)
            )
        ]
        # A record that began an instance but whose content the ledger holds for an older
        # instance of its id is a copy of that record.
        held += [
            int(j)
            for j, k in zip(result.copy_entry, result.copy_key, strict=True)
            if k.tobytes() in ledger
        ]
        # With the batch's other copies of it (their keys are its own).
        held_keys = {keys[h] for h in held}
        held = [kept[j] for j in range(len(kept)) if keys[j] in held_keys]
        if not held:
            break
        excluded.update(held)
        for nas in prepared.nas_keys:
            seq = engine.nas_seq(nas) or 0
            engine.forget_nas([nas])
            _load_window(engine, nas, seq, db, None)
            engine.recall_onoffs(nas, onoffs.get(nas, []))
    outcomes = ["duplicate"] * len(part)
    for j, i in enumerate(kept):
        outcome = OUTCOME_NAMES[int(result.outcome[j])]
        if outcome in ("accepted", "late"):
            if keys[j] in ledger:
                outcome = "duplicate"
            else:
                ledger.add(keys[j])
        if outcome == "accepted" and int(result.status_type[j]) in (7, 8):
            nas = result.nas_keys[int(result.nas_index[j])]
            event = int(result.event_us[j])
            onoffs.setdefault(nas, []).append((
                keys[j], int(result.status_type[j]), event,
                timed_by_arrival(entries[i], event),
            ))  # fmt: skip
        outcomes[i] = outcome
    return result, outcomes


def _recall(
    engine: rc.Engine, prepared: rc.PreparedBatch, db: dict[tuple[str, str, int], tuple[Any, ...]]
) -> None:
    """What the service does before apply: the newest stored instance of each session id
    the engine may have forgotten, then the stored instances starting in the ranges the
    batch's unmatched late records name. (The reference never forgets anything.)"""
    wanted = set(engine.unknown_sessions(prepared))
    newest: dict[tuple[str, str], tuple[str, str, int]] = {}
    for key in db:
        if key[:2] in wanted and key[2] > newest.get(key[:2], ("", "", 0))[2]:
            newest[key[:2]] = key
    if newest:
        engine.add_sessions(_columns([(k, db[k]) for k in newest.values()]))
    older = [
        (key, row)
        for nas, sid, lo, hi in engine.unmatched_sessions(prepared)
        for key, row in db.items()
        if key[:2] == (nas, sid) and lo <= row[3] <= hi
    ]
    if older:
        engine.add_sessions(_columns(older))


def _rows(
    result: rc.ApplyResult, before: dict[tuple[str, str, int], tuple[Any, ...]]
) -> dict[tuple[str, str, int], tuple[object, ...]]:
    """The rows a projection holds after writing `result` over `before` (identity text keeps
    the first non-empty value, as the session upsert does)."""
    s = result.sessions
    keys = s.last_key

    def identity(key: tuple[str, str, int], j: int, new: str) -> str:
        old = before.get(key)
        return str(old[j]) if old is not None and old[j] else new

    return {
        (k := (s.nas_key[i], s.acct_session_id[i], int(s.generation[i]))): (
            identity(k, 0, s.user_name[i]),
            identity(k, 1, s.calling_station_id[i]),
            identity(k, 2, s.framed_ip_address[i]),
            int(s.start_us[i]),
            int(s.stop_us[i]),
            int(s.last_update_us[i]),
            int(s.session_time_s[i]),
            int(s.input_bytes[i]),
            int(s.output_bytes[i]),
            int(s.hwm_input[i]),
            int(s.hwm_output[i]),
            keys[i].tobytes(),
            int(s.flags[i]),
            int(s.terminate_cause[i]),
            bool(s.open[i]),
        )
        for i in range(len(s))
    }


def _columns(mine: list[tuple[tuple[str, str, int], tuple[Any, ...]]]) -> rc.SessionColumns:

    def col(j: int, dtype: Any) -> Any:
        return np.array([v[j] for _, v in mine], dtype=dtype)

    return rc.make_sessions(
        [k[0] for k, _ in mine], [k[1] for k, _ in mine],
        np.array([k[2] for k, _ in mine], dtype=np.uint32),
        [v[0] for _, v in mine], [v[1] for _, v in mine], [v[2] for _, v in mine],
        col(3, np.int64), col(4, np.int64), col(5, np.int64), col(6, np.uint32),
        col(7, np.uint64), col(8, np.uint64), col(9, np.uint64), col(10, np.uint64),
        np.array([v[11] for _, v in mine], dtype="V16"), col(12, np.uint32),
        col(13, np.uint32), col(14, np.bool_),
    )  # fmt: skip


def _load_window(
    e: rc.Engine,
    nas: str,
    seq: int,
    db: dict[tuple[str, str, int], tuple[Any, ...]],
    window: int | None,
) -> None:
    """The service's load: open instances and closed ones updated within `window` of the
    NAS's newest update, the newest generation of each of their ids, and the latest start
    of those left out (repository.live_session_rows)."""
    mine = [(k, v) for k, v in db.items() if k[0] == nas]
    if window is None or not mine:
        e.load_sessions(nas, seq, _columns(mine), complete=True)
        return
    cutoff = max(int(v[5]) for _, v in mine) - window
    ids = {k[1] for k, v in mine if v[14] or int(v[5]) >= cutoff}
    newest = {sid: max(k[2] for k, _ in mine if k[1] == sid) for sid in ids}
    kept = [(k, v) for k, v in mine if v[14] or int(v[5]) >= cutoff or newest.get(k[1]) == k[2]]
    left_out = [int(v[3]) for k, v in mine if not v[14] and int(v[5]) < cutoff]
    e.load_sessions(
        nas, seq, _columns(kept), complete=not left_out,
        omitted_start_max_us=max(left_out, default=None),
    )  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.lists(st.integers(0, 200), max_size=6))
def test_reloading_from_the_database_changes_nothing_when_every_batch_starts_fresh(
    seed: int, cuts: list[int]
) -> None:
    recs, policies, _ = traffic(seed)
    bounds = sorted({0, len(recs), *(c % (len(recs) + 1) for c in cuts)})
    # What the replica loads: everything, or (as the service does, with 7 days) open
    # instances and closed ones updated within a window of the NAS's newest update.
    window = (None, 3600 * US, DAY_S * US)[seed % 3]

    def engine() -> rc.Engine:
        e = rc.Engine()
        for nas, p in policies.items():
            e.set_policy(nas, rc.NasPolicy(
                swap_direction=p.swap_direction, infer_wrap=p.infer_wrap,
                clock_skew_tolerance_s=p.clock_skew_tolerance_s,
            ))  # fmt: skip
        return e

    steady = engine()
    steady_rows: dict[tuple[str, str, int], tuple[object, ...]] = {}
    db: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    seqs: dict[str, int] = {}
    ledger_a: set[bytes] = set()
    ledger_b: set[bytes] = set()
    # The replica's ledger of accepted Accounting-On/Offs per NAS, oldest first.
    onoffs: dict[str, list[tuple[bytes, int, int, bool]]] = {}
    for lo, hi in itertools.pairwise(bounds):
        data = batch([decoded_entry(r) for r in recs[lo:hi]])
        for e, ledger, rows, fresh in (
            (steady, ledger_a, steady_rows, False),
            (None, ledger_b, db, True),
        ):
            if fresh:
                e = engine()  # another replica: it knows only what the database holds
                prepared = e.prepare(data, T0)
                for nas in prepared.nas_keys:
                    _load_window(e, nas, seqs.get(nas, 0), db, window)
                    e.recall_onoffs(nas, onoffs.get(nas, []))
                _recall(e, prepared, db)
            else:
                assert e is not None
                prepared = e.prepare(data, T0)
            known = np.array([k.tobytes() in ledger for k in prepared.content_key], dtype=np.bool_)
            result = e.apply(prepared, known)
            for i in range(len(prepared)):
                if int(result.outcome[i]) in (rc.OUTCOME_ACCEPTED, rc.OUTCOME_LATE):
                    ledger.add(result.content_key[i].tobytes())
            rows.update(_rows(result, rows))
            if fresh:
                seqs.update(zip(result.nas_keys, result.nas_seq.tolist(), strict=True))
                for i in range(len(prepared)):
                    accepted = int(result.outcome[i]) == rc.OUTCOME_ACCEPTED
                    if accepted and int(result.status_type[i]) in (7, 8):
                        nas = result.nas_keys[int(result.nas_index[i])]
                        event = int(result.event_us[i])
                        entry = decoded_entry(recs[lo + i])
                        onoffs.setdefault(nas, []).append((
                            result.content_key[i].tobytes(), int(result.status_type[i]),
                            event, timed_by_arrival(entry, event),
                        ))  # fmt: skip
    assert db == steady_rows
