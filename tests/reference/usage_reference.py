"""A slow, obviously correct model of RADIUS.md's usage rules, record by record.

It models the engine plus the ledger: a record whose content key the ledger already holds
is a duplicate and changes nothing. Decisions RADIUS.md leaves open follow
docs/accounting-engine.md ("Rule details").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tests.reference.accounting_wire import Rec

US = 1_000_000
HOUR_US = 3600 * US
WRAP = 1 << 32
# Event-Timestamp and Acct-Session-Time are whole seconds: one session's implied starts
# differ by up to this.
START_SLACK_US = 2 * US
# The times a record may carry: 1970-01-01 to the end of 9999 UTC.
MAX_TIME_US = 253_402_300_799_999_999

START, STOP, INTERIM, ON, OFF = 1, 2, 3, 7, 8

LOST_START = 1
COUNTER_RESET = 2
WRAP_INFERRED = 4
STOP_REGRESSION = 8
STALE_CLOSED = 16
LATE_STOP = 32
NAS_REBOOT_CLOSED = 64
CLOCK_SKEW = 128
INTERIM_AFTER_STOP = 256
GENERATION_FROM_START_GAP = 512
STOP_RECEIVED = 1 << 14  # not an anomaly: the instance took a Stop
START_BY_EVENT_TIMESTAMP = 1 << 13  # not an anomaly: its start is a trusted Event-Timestamp
# Not anomalies: the input (output) mark is the counter of a record at the newest session time.
MARK_IN_AT_NEWEST = 1 << 12
MARK_OUT_AT_NEWEST = 1 << 11

OPEN, STOPPED, CLOSED_NO_STOP = "open", "stopped", "closed_no_stop"


@dataclass(frozen=True)
class Policy:
    swap_direction: bool = False
    infer_wrap: bool = False
    interim_interval_s: int = 600
    stale_multiplier: int = 3
    grace_s: int = 300
    clock_skew_tolerance_s: int = 300


@dataclass
class Session:
    nas: str
    sid: str
    generation: int
    user: str
    calling: str
    framed: str
    start_us: int
    last_update_us: int
    stop_us: int = -1
    session_time: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    hwm_in: int = 0
    hwm_out: int = 0
    flags: int = 0
    terminate_cause: int = 0
    state: str = OPEN


@dataclass
class Norm:
    """A record after validation: the fields the rules read."""

    status: int
    nas: str
    sid: str
    user: str
    calling: str
    framed: str
    input: int | None
    output: int | None
    input_gw: bool
    output_gw: bool
    session_time: int | None
    event_us: int
    skewed: bool
    terminate_cause: int | None
    key: tuple[object, ...]
    by_instance: bool
    by_arrival: bool
    # The other reading of its time: arrival - delay when event_us is the Event-Timestamp,
    # the Event-Timestamp when it was set aside as skewed, else event_us.
    alt_event_us: int


def storable(text: str) -> str:
    """Text as the database keeps it: NUL (which PostgreSQL's text refuses) as U+FFFD."""
    return text.replace("\0", "\ufffd")


def _ip(text: str) -> str:
    address = ipaddress.ip_address(text)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def canonical(address: str) -> str:
    """An address's text as the core writes it (an IPv4-mapped one as the IPv4 address)."""
    try:
        return _ip(address)
    except ValueError:
        pass
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit():
        try:
            return _ip(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            pass
    return address


def counter(octets: int | None, gigawords: int | None) -> int | None:
    if octets is None:
        return None
    return (gigawords or 0) * WRAP + octets


@dataclass
class Reference:
    default_policy: Policy = field(default_factory=Policy)
    policies: dict[str, Policy] = field(default_factory=dict)
    chains: dict[tuple[str, str], list[Session]] = field(default_factory=dict)
    ledger: set[tuple[object, ...]] = field(default_factory=set)
    buckets: dict[tuple[str, str, int, int], list[int]] = field(default_factory=dict)
    onoff_by_arrival: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # Event times of every accepted Accounting-On/Off, per NAS.
    reboots: dict[str, list[int]] = field(default_factory=dict)

    def policy(self, nas: str) -> Policy:
        return self.policies.get(nas, self.default_policy)

    # -- validation -------------------------------------------------------------------
    def normalize(self, rec: Rec, default_arrival_us: int) -> Norm | str:
        if rec.status == 0:
            return "missing Acct-Status-Type"
        if rec.status not in (START, STOP, INTERIM, ON, OFF):
            return "unknown Acct-Status-Type"
        if rec.status in (START, STOP, INTERIM) and not rec.sid:
            return "missing Acct-Session-Id"
        texts = (rec.sid, rec.user, rec.calling, rec.framed_ip, rec.nas_identifier)
        if any(len(v.encode()) > 253 for v in texts):
            return "longer than a RADIUS attribute allows"
        if rec.nas_identifier:
            nas = canonical(storable(rec.nas_identifier))
        elif rec.nas_ip:
            nas = canonical(rec.nas_ip)
        elif rec.source:
            nas = canonical(rec.source)
        else:
            return "no NAS identity"
        arrival = rec.arrival_us if rec.arrival_us is not None else default_arrival_us
        base = arrival - (rec.delay or 0) * US
        tolerance = self.policy(nas).clock_skew_tolerance_s * US
        skewed = False
        ets = rec.event_ts_us
        if ets is not None and abs(ets - base) <= tolerance:
            event, alt = ets, base
        else:
            event = base
            skewed = ets is not None
            alt = ets if ets is not None and 0 <= ets <= MAX_TIME_US else base
        # Without (trusted) Event-Timestamp, a Start or an Interim/Stop with a session time
        # is pinned by the start of its instance (added in `record`), the rest by arrival -
        # delay. A skewed Event-Timestamp is not the event's time: keyed as if absent.
        trusted = None if skewed else rec.event_ts_us
        by_instance = trusted is None and (
            rec.status == START or (rec.session_time is not None and rec.status in (STOP, INTERIM))
        )
        if trusted is not None:
            key_time: int | None = trusted // US
        elif by_instance:
            key_time = None
        else:
            key_time = base // US
        inp = counter(rec.input_octets, rec.input_gigawords)
        out = counter(rec.output_octets, rec.output_gigawords)
        key = (nas, rec.sid, rec.status, rec.session_time, inp, out, key_time, rec.terminate_cause)
        return Norm(
            rec.status, nas, storable(rec.sid), storable(rec.user), storable(rec.calling),
            rec.framed_ip, inp, out,
            rec.input_gigawords is not None, rec.output_gigawords is not None,
            rec.session_time, event, skewed, rec.terminate_cause, key, by_instance,
            trusted is None, alt,
        )  # fmt: skip

    # -- one record -------------------------------------------------------------------
    def record(self, rec: Rec, default_arrival_us: int = 0) -> str:
        n = self.normalize(rec, default_arrival_us)
        if isinstance(n, str):
            return "quarantined"
        # A session record's instance is decided once: its key may take that start.
        routed = None if n.status in (ON, OFF) else self.route(n)
        key = n.key
        if routed is not None and n.by_instance:
            s = routed[1]
            key = (*n.key, s.start_us if s is not None else self.implied_start(n))
        if key in self.ledger or self.onoff_copy(n):
            return "duplicate"
        self.ledger.add(key)
        if routed is None:
            if n.by_arrival:
                self.onoff_by_arrival.setdefault(n.nas, []).append((n.status, n.event_us))
            self.reboots.setdefault(n.nas, []).append(n.event_us)
            for chain in self.chains.values():
                for s in chain:
                    if s.nas == n.nas and s.state == OPEN and s.start_us < n.event_us:
                        self.close_without_stop(s, NAS_REBOOT_CLOSED)
            return "accepted"
        return self.session_record(n, routed)

    def onoff_copy(self, n: Norm) -> bool:
        """A copy timed by its arrival may fall in another second: an On/Off so timed within
        2 s of one of the same kind so timed is that one."""
        return (
            n.status in (ON, OFF)
            and n.by_arrival
            and any(
                status == n.status and abs(event - n.event_us) <= START_SLACK_US
                for status, event in self.onoff_by_arrival.get(n.nas, [])
            )
        )

    @staticmethod
    def implied_start(n: Norm) -> int:
        return n.event_us if n.session_time is None else n.event_us - n.session_time * US

    def close_without_stop(self, s: Session, flag: int) -> None:
        s.state = CLOSED_NO_STOP
        s.stop_us = s.last_update_us
        s.flags |= flag

    def session_record(self, n: Norm, routed: tuple[str, Session | None, dict[str, Any]]) -> str:
        kind, s, how = routed
        if kind == "create":
            return self.create(n, self.chains[(n.nas, n.sid)], **how)
        assert s is not None
        outcome = self.existing(n, s) if kind == "existing" else "late"
        if outcome == "late" and n.skewed:
            s.flags |= CLOCK_SKEW  # the NAS's clock, whatever the record's fate
        return outcome

    def route(self, n: Norm) -> tuple[str, Session | None, dict[str, Any]]:
        """Which instance a session record belongs to: ("existing" or "late", it, {}) or
        ("create", None, how); changes nothing but adds the id's empty chain. A record that
        would begin an instance belongs to one whose start the other reading of its time
        implies (within the tolerance): one session's records read the two ways imply
        starts about the NAS's skew apart. A copy resent unchanged belongs to the instance
        that took it (its content is a record the instance took)."""
        routed = self.route_by_reading(n)
        # Resent unchanged (RFC 5080: Acct-Delay-Time not updated) and delivered after the
        # tolerance, a copy timed by its arrival implies a later start: it would begin an
        # instance, or go to one another copy began (without a Start). Its content (status,
        # session time, counters, cause) pinned by an instance's start is a record that
        # instance took: it is that record. (An update of an instance whose Start was seen
        # with another instance's content is a reused id's session repeating it.)
        suspect = routed[0] == "create" or (
            routed[1] is not None and bool(routed[1].flags & LOST_START)
        )
        if suspect and n.by_instance and n.status in (STOP, INTERIM):
            for s in self.chains[(n.nas, n.sid)]:
                if (*n.key, s.start_us) in self.ledger:
                    return ("existing", s, {})
        return routed

    def route_by_reading(self, n: Norm) -> tuple[str, Session | None, dict[str, Any]]:
        """`route` by the record's two readings of its time."""
        routed = self.route_by_event_time(n)
        time = 0 if n.session_time is None and n.status == START else n.session_time
        # (Readings within 2 s of each other are one reading: the rules hold as they are.)
        if (
            routed[0] == "create"
            and abs(n.alt_event_us - n.event_us) > START_SLACK_US
            and time is not None
        ):
            # Only instances whose start was read the way the other reading is: the
            # Event-Timestamp when the record is timed by its arrival, else arrival - delay.
            chain = [
                s
                for s in self.chains[(n.nas, n.sid)]
                if bool(s.flags & START_BY_EVENT_TIMESTAMP) == n.by_arrival
            ]
            s = self.owner(n, chain, n.alt_event_us - time * US)
            if s is not None:
                return ("existing", s, {})
        return routed

    def owns(self, n: Norm, s: Session, implied: int) -> bool:
        gap = self.policy(n.nas).clock_skew_tolerance_s * US
        distance = abs(s.start_us - implied)
        ended_before = s.state != OPEN and not self.end_unknown(s) and implied > s.stop_us
        # Closed by a reboot, it ended by the first On/Off after its start.
        reboot = min((e for e in self.reboots.get(n.nas, []) if e > s.start_us), default=None)
        if s.state == CLOSED_NO_STOP and s.flags & NAS_REBOOT_CLOSED and reboot is not None:
            ended_before = ended_before and implied >= reboot
        # By the NAS's clock (a trusted Event-Timestamp, an instance a trusted Start began):
        # a record older than the instance's start is not its, and a Start is its Start only
        # at its very time (a copy carries the same Event-Timestamp).
        exact = not n.by_arrival and exact_start(s)
        other_start = exact and n.status == START and s.start_us != implied
        return (
            distance <= gap
            and not self.reboot_between(n.nas, implied, s.start_us)
            and not (exact and n.event_us < s.start_us)
            and not other_start
            and (not ended_before or distance <= START_SLACK_US)
        )

    def reboot_between(self, nas: str, implied: int, start_us: int) -> bool:
        """An On/Off lies between a record's implied start and an instance's start (more
        than 2 s apart): the record's session began before that reboot, the instance after."""
        return start_us - implied > START_SLACK_US and any(
            implied < e <= start_us for e in self.reboots.get(nas, [])
        )

    def owner(self, n: Norm, chain: list[Session], implied: int) -> Session | None:
        owners = [s for s in chain if self.owns(n, s, implied)]
        # The closest start; on a tie the newest (min keeps the first of equals).
        return min(reversed(owners), key=lambda s: abs(s.start_us - implied)) if owners else None

    def route_by_event_time(self, n: Norm) -> tuple[str, Session | None, dict[str, Any]]:
        """`route` by the record's event time alone."""
        chain = self.chains.setdefault((n.nas, n.sid), [])
        gap = self.policy(n.nas).clock_skew_tolerance_s * US
        time = 0 if n.session_time is None and n.status == START else n.session_time
        implied = None if time is None else n.event_us - time * US
        if not chain:
            return ("create", None, {"lost_start": n.status != START, "gap": False, "close": None})
        # The instance that started last (on a tie the newest); generations count in the
        # order instances were found, so an older session found late has the next number.
        cur = max(reversed(chain), key=lambda s: s.start_us)

        def owner() -> Session | None:
            assert implied is not None
            return self.owner(n, chain, implied)

        far_before = implied is not None and (
            implied < cur.start_us - gap or self.reboot_between(n.nas, implied, cur.start_us)
        )
        if n.status == START:
            # Not the instance's own Start (more than 2 s from its start, after its last
            # update, or at/after its stop): the id was reused.
            # Unless it may be a copy of the instance's own Start: no session time yet, within
            # the tolerance, and open or closed as stale.
            # A trusted Event-Timestamp is exact: a copy of the instance's own Start carries
            # the same one. The 2 s are for a Start timed by its arrival and for an instance
            # whose start was inferred (lost Start).
            slack = START_SLACK_US if n.by_arrival or cur.flags & LOST_START else 0
            own_start = abs(n.event_us - cur.start_us) <= slack
            # Both exact: not a copy (it would carry the same Event-Timestamp), and a Start
            # before the instance's is an older session's.
            exact = not n.by_arrival and exact_start(cur)
            if exact and n.event_us < cur.start_us:
                far_before = True
            copy_possible = (
                not exact
                and cur.session_time == 0
                and abs(n.event_us - cur.start_us) <= gap
                and (cur.state == OPEN or self.end_unknown(cur))
            )
            after_last = not own_start and n.event_us > cur.last_update_us and not copy_possible
            if cur.state == OPEN:
                if implied is not None and implied > cur.start_us + gap:
                    return ("create", None, {"lost_start": False, "gap": True, "close": cur})
                if after_last and not far_before:
                    return ("create", None, {"lost_start": False, "gap": False, "close": cur})
            else:
                reused = cur.start_us < n.event_us and n.event_us >= cur.stop_us
                if after_last or (not own_start and reused and not copy_possible):
                    return ("create", None, {"lost_start": False, "gap": False, "close": None})
            if far_before:
                # A Start long before the latest instance began: an older session's.
                s = owner()
                if s is None:
                    return ("create", None, {"lost_start": False, "gap": False, "close": None})
                return ("existing", s, {})
            return ("existing", cur, {})
        if implied is None:
            return ("existing", cur, {})
        s = owner()
        if s is not None:
            return ("existing", s, {})
        if implied > cur.start_us + gap:
            close = cur if cur.state == OPEN else None
            return ("create", None, {"lost_start": True, "gap": True, "close": close})
        # Started after the newest instance ended, long before it began, or sent before its
        # Start by the NAS's clock: a session whose Start was lost.
        sent_before = not n.by_arrival and exact_start(cur) and n.event_us < cur.start_us
        if (cur.state != OPEN and implied > cur.stop_us) or far_before or sent_before:
            return ("create", None, {"lost_start": True, "gap": False, "close": None})
        return ("late", cur, {})

    @staticmethod
    def end_unknown(s: Session) -> bool:
        """Closed as stale (swept or superseded), a session may have gone on: no known end."""
        return (
            s.state == CLOSED_NO_STOP
            and s.flags & (STALE_CLOSED | NAS_REBOOT_CLOSED) == STALE_CLOSED
        )

    def create(
        self, n: Norm, chain: list[Session], *, lost_start: bool, gap: bool, close: Session | None
    ) -> str:
        if close is not None:
            self.close_without_stop(close, STALE_CLOSED)
        implied = self.implied_start(n)
        generation = max(s.generation for s in chain) + 1 if chain else 1
        s = Session(
            n.nas, n.sid, generation, n.user, n.calling, n.framed,
            start_us=implied, last_update_us=n.event_us,
        )  # fmt: skip
        s.flags = (LOST_START if lost_start else 0) | (GENERATION_FROM_START_GAP if gap else 0)
        if not n.by_arrival:
            s.flags |= START_BY_EVENT_TIMESTAMP
        chain.append(s)
        outcome = self.update(n, s)
        # Found after a reboot it had started before: that On/Off ended it (whichever came
        # first, the outcome is the same).
        if s.state == OPEN and any(s.start_us < e for e in self.reboots.get(n.nas, [])):
            self.close_without_stop(s, NAS_REBOOT_CLOSED)
        return outcome

    def existing(self, n: Norm, s: Session) -> str:
        if s.state == OPEN or (s.state == STOPPED and n.status == STOP):
            return self.update(n, s)
        if s.state == CLOSED_NO_STOP and n.status in (STOP, INTERIM):
            return self.update(n, s)
        if s.state == STOPPED and n.status == INTERIM:
            # From before the Stop, or in its second with no counter from the newest records
            # (a Stop with zeros or without Octets): the delta rules decide.
            if n.session_time is not None and (
                n.session_time < s.session_time
                or (
                    n.session_time == s.session_time
                    and not s.flags & (MARK_IN_AT_NEWEST | MARK_OUT_AT_NEWEST)
                )
            ):
                return self.update(n, s)
            s.flags |= INTERIM_AFTER_STOP
        return "late"

    def update(self, n: Norm, s: Session) -> str:
        # A Start is at session time 0 whether or not it says so.
        time = 0 if n.session_time is None and n.status == START else n.session_time
        if time is not None and time < s.session_time:
            # Older than what we have. Until a reset or wrap, counters only grow: one above
            # a mark an older record set is newer information than the later records
            # carried (no Octets, a Stop's zeros), and raises the mark. One above the newest
            # record's counter shows a reset (or a wrap) between the two: the usage before
            # it is added, as in order, and the mark stays. Nothing else changes.
            s.user = s.user or named(n.user)
            s.calling = s.calling or named(n.calling)
            s.framed = s.framed or n.framed
            monotonic = not s.flags & (COUNTER_RESET | WRAP_INFERRED)
            wrap_policy = self.policy(n.nas).infer_wrap

            def behind(c: int | None, gw: bool, hwm: int, bit: int) -> tuple[int, int, int]:
                """(mark raise, usage, flag) of one direction."""
                if not monotonic or c is None or c <= hwm:
                    return 0, 0, 0
                if not s.flags & bit:
                    return c - hwm, c - hwm, 0
                if wrap_policy and not gw and c < WRAP:
                    return 0, WRAP, WRAP_INFERRED
                return 0, c, COUNTER_RESET

            m_in, g_in, f_in = behind(n.input, n.input_gw, s.hwm_in, MARK_IN_AT_NEWEST)
            m_out, g_out, f_out = behind(n.output, n.output_gw, s.hwm_out, MARK_OUT_AT_NEWEST)
            s.flags |= f_in | f_out
            # A Stop older than what an instance without one has: the records past it were
            # sent after it (Interims after Stop, delivered first). It ends the instance at
            # its last update; their usage stays counted.
            if n.status == STOP and s.state != STOPPED:
                if s.state == CLOSED_NO_STOP:
                    s.flags |= LATE_STOP
                s.state, s.stop_us = STOPPED, max(s.last_update_us, s.start_us)
                s.terminate_cause = n.terminate_cause or 0
                s.flags |= STOP_RECEIVED | INTERIM_AFTER_STOP
            elif not (g_in or g_out):
                return "late"
            s.hwm_in += m_in
            s.hwm_out += m_out
            if self.policy(n.nas).swap_direction:
                g_in, g_out = g_out, g_in
            s.input_bytes += g_in
            s.output_bytes += g_out
            s.flags |= CLOCK_SKEW if n.skewed else 0
            if g_in or g_out:
                b = self.buckets.setdefault(
                    (s.nas, s.sid, s.generation, n.event_us // HOUR_US * HOUR_US), [0, 0, 0]
                )
                b[0] += g_in
                b[1] += g_out
            return "accepted"
        time_up = n.session_time is not None and n.session_time > s.session_time
        policy = self.policy(n.nas)
        stop = n.status == STOP
        # Marks follow the NAS's counters as sent; the swap applies to the deltas.
        old_in, old_out = s.hwm_in, s.hwm_out
        d_in, s.hwm_in, f_in = direction(
            s.hwm_in, n.input, n.input_gw, time_up, stop, policy.infer_wrap
        )
        d_out, s.hwm_out, f_out = direction(
            s.hwm_out, n.output, n.output_gw, time_up, stop, policy.infer_wrap
        )

        def at_newest(c: int | None, old: int, new: int, bit: int) -> int:
            """`bit` if the mark is now the counter of a record at the newest session time (a
            Stop's zero is no information; a record without session time is not placed)."""
            newest = c == new and not (stop and c == 0)
            if time_up:
                return bit if newest else 0
            if new != old:
                return bit if newest and n.session_time == s.session_time else 0
            return s.flags & bit

        marks = at_newest(n.input, old_in, s.hwm_in, MARK_IN_AT_NEWEST) | at_newest(
            n.output, old_out, s.hwm_out, MARK_OUT_AT_NEWEST
        )
        s.flags = s.flags & ~(MARK_IN_AT_NEWEST | MARK_OUT_AT_NEWEST) | marks
        if policy.swap_direction:
            d_in, d_out = d_out, d_in
        d_secs = n.session_time - s.session_time if time_up and n.session_time is not None else 0
        s.input_bytes += d_in
        s.output_bytes += d_out
        if n.session_time is not None:
            s.session_time = max(s.session_time, n.session_time)
        s.flags |= f_in | f_out | (CLOCK_SKEW if n.skewed else 0)
        if stop and time_up and n.input == 0 and n.output == 0:
            s.flags |= STOP_REGRESSION  # zeros after the session went on: RADIUS.md flags them
        s.last_update_us = max(s.last_update_us, n.event_us)
        if s.state == CLOSED_NO_STOP:
            s.flags |= LATE_STOP
            s.stop_us = s.last_update_us
        if stop and s.state != STOPPED:  # the first Stop records the real stop
            s.state, s.stop_us = STOPPED, max(s.last_update_us, s.start_us)
            s.terminate_cause = n.terminate_cause or 0
            s.flags |= STOP_RECEIVED
        elif stop and time_up:  # resent with more session time: it went on until then
            s.stop_us = max(s.stop_us, n.event_us)
        s.user = s.user or named(n.user)
        s.calling = s.calling or named(n.calling)
        s.framed = s.framed or n.framed
        if d_in or d_out or d_secs:
            hour = n.event_us // HOUR_US * HOUR_US
            b = self.buckets.setdefault((s.nas, s.sid, s.generation, hour), [0, 0, 0])
            b[0] += d_in
            b[1] += d_out
            b[2] += d_secs
        return "accepted"

    def sweep(self, as_of_us: int) -> int:
        closed = 0
        for chain in self.chains.values():
            for s in chain:
                p = self.policy(s.nas)
                limit = (p.stale_multiplier * p.interim_interval_s + p.grace_s) * US
                if s.state == OPEN and as_of_us - s.last_update_us > limit:
                    self.close_without_stop(s, STALE_CLOSED)
                    closed += 1
        return closed

    def sessions(self) -> dict[tuple[str, str, int], Session]:
        return {(s.nas, s.sid, s.generation): s for c in self.chains.values() for s in c}


def exact_start(s: Session) -> bool:
    """Begun by a Start with a trusted Event-Timestamp: its start is that exact time."""
    return s.flags & (START_BY_EVENT_TIMESTAMP | LOST_START) == START_BY_EVENT_TIMESTAMP


def named(text: str) -> str:
    """A User-Name or Calling-Station-Id as identity: one of white space only names
    nobody (it is left empty, so a later record's name fills it)."""
    return text if text.strip(" \t\n\r\x0b\x0c") else ""


def direction(
    hwm: int, c: int | None, gigawords: bool, time_up: bool, stop: bool, infer_wrap: bool
) -> tuple[int, int, int]:
    """(delta, new high-water mark, flag) for one counter; never negative."""
    if c is None:
        return 0, hwm, STOP_REGRESSION if stop else 0
    if c >= hwm:
        return c - hwm, c, 0
    wrap_ok = infer_wrap and not gigawords and hwm < WRAP and time_up
    if stop and c == 0:
        return 0, hwm, STOP_REGRESSION  # 0/0 on Lost-Carrier: no information
    if wrap_ok:
        return WRAP - hwm + c, c, WRAP_INFERRED
    if time_up:
        return c, c, COUNTER_RESET
    return 0, hwm, STOP_REGRESSION if stop else 0
