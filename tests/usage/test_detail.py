"""FreeRADIUS detail files: the reader's rules, and `rating replay` of a detail file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import zoneinfo
from pathlib import Path

import pytest

from server.usage.detail import parse_detail
from tests.conftest import RunningServer, TenantCtx

ROOT = Path(__file__).resolve().parents[2]

HEADER = "Fri Mar  1 10:00:00 2024"


def record(*lines: str, header: str = HEADER) -> str:
    return header + "\n" + "".join(f"\t{line}\n" for line in lines) + "\n"


def test_reads_the_usage_attributes_of_a_record() -> None:
    data = record(
        "Acct-Status-Type = Interim-Update",
        'Acct-Session-Id = "0000001A"',
        'User-Name = "alice"',
        "NAS-IP-Address = 192.0.2.1",
        'NAS-Identifier = "bng-1"',
        "NAS-Port = 7",
        'NAS-Port-Id = "ge-0/0/1.100"',
        "Acct-Input-Octets = 1000",
        "Acct-Input-Gigawords = 1",
        "Acct-Output-Octets = 4294967295",
        "Acct-Output-Gigawords = 2",
        "Acct-Session-Time = 3600",
        "Event-Timestamp = 1700003600",
        "Acct-Delay-Time = 4",
        "Framed-IP-Address = 10.0.0.9",
        "Framed-IPv6-Prefix = 2001:db8:1::/64",
        "Delegated-IPv6-Prefix = 2001:db8:2::/56",
        'Calling-Station-Id = "00-11-22-33-44-55"',
        "Class = 0x0102ff",
        'Class = "second"',
        "Client-IP-Address = 198.51.100.7",
        'Cisco-AVPair = "ignored=yes"',
        "Timestamp = 1700003604",
    ).encode()
    parsed = parse_detail(data)
    assert parsed.rejected == []
    assert not parsed.incomplete
    assert parsed.consumed == len(data)
    (r,) = parsed.records
    assert (r.status_type, r.acct_session_id, r.user_name) == (3, "0000001A", "alice")
    assert (r.nas_ip_address, r.nas_identifier, r.nas_port, r.nas_port_id) == (
        "192.0.2.1",
        "bng-1",
        7,
        "ge-0/0/1.100",
    )
    assert (r.input_octets, r.input_gigawords, r.output_octets, r.output_gigawords) == (
        1000,
        1,
        4294967295,
        2,
    )
    assert (r.session_time_s, r.delay_time_s) == (3600, 4)
    assert r.event_timestamp.seconds == 1700003600
    assert r.arrival_time.seconds == 1700003604
    assert r.framed_ip_address == "10.0.0.9"
    assert r.framed_ipv6_prefix == "2001:db8:1::/64"
    assert r.delegated_ipv6_prefix == "2001:db8:2::/56"
    assert r.calling_station_id == "00-11-22-33-44-55"
    assert list(getattr(r, "class")) == [b"\x01\x02\xff", b"second"]
    assert r.source_address == "198.51.100.7"


def test_counters_absent_stay_absent_not_zero() -> None:
    (r,) = parse_detail(
        record("Acct-Status-Type = Stop", 'Acct-Session-Id = "s"', "Timestamp = 1").encode()
    ).records
    assert not r.HasField("input_octets")
    assert not r.HasField("output_octets")
    assert not r.HasField("session_time_s")


def test_status_and_terminate_cause_names_and_numbers() -> None:
    parsed = parse_detail(
        (
            record("Acct-Status-Type = Start", "Timestamp = 1")
            + record("Acct-Status-Type = Alive", "Timestamp = 1")
            + record("Acct-Status-Type = Accounting-On", "Timestamp = 1")
            + record("Acct-Status-Type = Accounting-Off", "Timestamp = 1")
            + record("Acct-Status-Type = 42", "Timestamp = 1")
            + record(
                "Acct-Status-Type = Stop",
                "Acct-Terminate-Cause = Lost-Carrier",
                "Timestamp = 1",
            )
            + record("Acct-Status-Type = Stop", "Acct-Terminate-Cause = 22", "Timestamp = 1")
            # FreeRADIUS's dictionary.rfc3580 names.
            + record("Acct-Status-Type = Stop", "Acct-Terminate-Cause = Port-Reinit")
            + record("Acct-Status-Type = Stop", "Acct-Terminate-Cause = Port-Disabled")
            # A name of some server's own dictionary: the Stop counts without it.
            + record("Acct-Status-Type = Stop", "Acct-Terminate-Cause = Gone-Fishing")
        ).encode()
    )
    assert parsed.rejected == []
    assert [r.status_type for r in parsed.records] == [1, 3, 7, 8, 42, 2, 2, 2, 2, 2]
    assert [r.terminate_cause for r in parsed.records[-5:-1]] == [2, 22, 21, 22]
    assert not parsed.records[-1].HasField("terminate_cause")


def test_text_that_is_not_utf8_is_kept_with_replacement_characters() -> None:
    """FreeRADIUS writes octets that are not printable as octal escapes; a RADIUS string
    is octets, so the record is read, each invalid sequence U+FFFD (as the engine stores
    the same attribute of a raw packet), not refused with its usage."""
    (r,) = parse_detail(
        record(
            'User-Name = "caf\\351"',
            'Acct-Session-Id = "\\377\\376-01"',
            'Calling-Station-Id = "\\200"',
            "Acct-Input-Octets = 7",
            "Timestamp = 1",
        ).encode()
    ).records
    assert (r.user_name, r.acct_session_id, r.calling_station_id) == (
        "caf\ufffd", "\ufffd\ufffd-01", "\ufffd"
    )  # fmt: skip
    assert r.input_octets == 7


def test_quoted_values_keep_their_escapes_as_bytes() -> None:
    (r,) = parse_detail(
        record(r'User-Name = "a\"b\\c\303\251\t"', 'Class = "x\\000y"', "Timestamp = 1").encode()
    ).records
    assert r.user_name == 'a"b\\cé\t'
    assert list(getattr(r, "class")) == [b"x\x00y"]


def test_timestamp_line_is_arrival_and_header_date_only_a_fallback() -> None:
    both = parse_detail(record("Timestamp = 1700000000").encode()).records[0]
    assert both.arrival_time.seconds == 1700000000
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    (fallback,) = parse_detail(record("Acct-Status-Type = Start").encode(), zone).records
    expected = dt.datetime(2024, 3, 1, 10, 0, tzinfo=zone).astimezone(dt.UTC)
    assert fallback.arrival_time.ToDatetime(tzinfo=dt.UTC) == expected


def test_text_event_timestamps_are_trusted_only_with_their_offset() -> None:
    trusted = [
        '"Nov 14 2023 22:13:20 UTC"',
        '"Nov 14 2023 22:13:20.000000 UTC"',  # newer FreeRADIUS, microseconds
        '"Nov 14 2023 22:13:20 GMT"',
        "1700000000",
        '"2023-11-14T22:13:20Z"',
        '"2023-11-14T23:13:20+01:00"',
    ]
    # A local time, and dates that cannot be read, are left out: the Stop's counters still
    # count, timed by arrival - Acct-Delay-Time.
    left_out = [
        '"Nov 14 2023 23:13:20 CET"',
        '"2023-11-14T22:13:20"',
        '"Feb 30 2024 10:00:00 UTC"',
        '"Nov 14 1969 22:13:20 UTC"',
        '"yesterday"',
    ]
    data = "".join(
        record("Acct-Status-Type = Stop", f"Event-Timestamp = {v}", "Acct-Input-Octets = 5",
               "Timestamp = 1")
        for v in trusted + left_out
    )  # fmt: skip
    parsed = parse_detail(data.encode())
    assert parsed.rejected == []
    assert [r.event_timestamp.seconds for r in parsed.records[: len(trusted)]] == [
        1700000000
    ] * len(trusted)
    assert [r.HasField("event_timestamp") for r in parsed.records[len(trusted) :]] == [False] * len(
        left_out
    )
    assert all(r.input_octets == 5 for r in parsed.records)


def test_a_record_without_timestamp_is_timed_by_its_trusted_event_timestamp() -> None:
    # The header's local date is read only when nothing better times the record: a wrong
    # --detail-tz must not set a right Event-Timestamp aside as skewed.
    data = (
        record("Event-Timestamp = 1700000000", "Acct-Delay-Time = 7")
        + record('Event-Timestamp = "Nov 14 2023 22:13:20 UTC"')
        + record('Event-Timestamp = "Nov 14 2023 23:13:20 CET"')
    ).encode()
    for zone in (dt.UTC, zoneinfo.ZoneInfo("America/New_York")):
        integer, utc, local = parse_detail(data, zone).records
        assert (integer.arrival_time.seconds, integer.event_timestamp.seconds) == (
            1700000007,
            1700000000,
        )
        assert utc.arrival_time.seconds == 1700000000
        header = dt.datetime(2024, 3, 1, 10, 0, tzinfo=zone).astimezone(dt.UTC)
        assert local.arrival_time.ToDatetime(tzinfo=dt.UTC) == header


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("Acct-Input-Octets = 12x", "Acct-Input-Octets"),
        ("Acct-Output-Octets = 4294967296", "Acct-Output-Octets"),
        ("Acct-Output-Gigawords = -1", "Acct-Output-Gigawords"),
        ("Acct-Session-Time = ", "Acct-Session-Time"),
        ("Acct-Status-Type = Sometimes", "Acct-Status-Type"),
        ("NAS-IP-Address = 300.1.1.1", "NAS-IP-Address"),
        ("Framed-IPv6-Prefix = nope", "Framed-IPv6-Prefix"),
        ('User-Name = "unterminated', "User-Name"),
        ("Acct-Terminate-Cause = 4294967296", "Acct-Terminate-Cause"),
        ("no equals sign", "Attribute = value"),
    ],
)
def test_unreadable_record_is_rejected_with_its_line_and_attribute(line: str, named: str) -> None:
    data = record("Acct-Status-Type = Stop", "Timestamp = 1") + record(line, "Timestamp = 1")
    parsed = parse_detail(data.encode())
    assert len(parsed.records) == 1
    (rejected,) = parsed.rejected
    assert rejected.line == 5
    assert named in rejected.reason
    assert "line 6" in rejected.reason


def test_repeated_single_valued_attribute_is_rejected() -> None:
    parsed = parse_detail(record("Acct-Input-Octets = 1", "Acct-Input-Octets = 2").encode())
    assert parsed.records == []
    assert "repeated" in parsed.rejected[0].reason


def test_record_without_closing_blank_line_is_not_complete_yet() -> None:
    done = record("Acct-Status-Type = Start", "Timestamp = 1")
    partial = HEADER + "\n\tAcct-Status-Type = Stop\n\tAcct-Input-Octets = 5\n"
    parsed = parse_detail((done + partial).encode())
    assert len(parsed.records) == 1
    assert parsed.incomplete
    assert parsed.consumed == len(done.encode())
    # Once the writer finishes the record, reading on from `consumed` picks it up.
    rest = parse_detail((done + partial + "\n").encode()[parsed.consumed :])
    assert [r.status_type for r in rest.records] == [2]
    assert not rest.incomplete


def test_crlf_line_ends_and_extra_blank_lines() -> None:
    data = "\r\n\r\n" + record("Acct-Status-Type = Start", "Timestamp = 1").replace("\n", "\r\n")
    parsed = parse_detail(data.encode())
    assert [r.status_type for r in parsed.records] == [1]
    assert not parsed.incomplete


def unterminated(*lines: str, header: str = HEADER) -> str:
    """A record cut before its closing blank line (the writer died while writing it)."""
    return record(*lines, header=header)[:-1]


def test_a_header_line_ends_a_record_without_its_blank_line() -> None:
    first = record("Acct-Status-Type = Start", "Timestamp = 1")
    cut = unterminated("Acct-Status-Type = Interim-Update", "Acct-Input-Octets = 5")
    after = record("Acct-Status-Type = Stop", "Acct-Input-Octets = 9", "Timestamp = 2")
    data = (first + cut + after).encode()
    parsed = parse_detail(data)
    # The cut record is rejected at its own line; the one after it is read as usual.
    (rejected,) = parsed.rejected
    assert rejected.line == 5
    assert "no closing blank line" in rejected.reason
    assert "line 8" in rejected.reason
    assert [r.status_type for r in parsed.records] == [1, 2]
    assert parsed.lines == [1, 8]
    assert parsed.records[1].input_octets == 9
    assert not parsed.incomplete
    assert parsed.consumed == len(data)


def test_cut_records_in_a_row_and_a_last_one_still_being_written() -> None:
    cut = unterminated("Acct-Status-Type = Start", "Timestamp = 1")
    done = record("Acct-Status-Type = Stop", "Timestamp = 3")
    partial = HEADER + "\n\tAcct-Status-Type = Interim-Update\n"
    data = (cut + cut + cut + done + cut + partial).encode()
    parsed = parse_detail(data)
    assert [(r.line, r.reason.rsplit(" ", 1)[-1]) for r in parsed.rejected] == [
        (1, "4"),
        (4, "7"),
        (7, "10"),
        (14, "17"),
    ]
    assert [r.status_type for r in parsed.records] == [2]
    assert parsed.lines == [10]
    # The last record is not complete yet: left for the next read, not rejected.
    assert parsed.incomplete
    assert parsed.consumed == len(data) - len(partial.encode())
    rest = parse_detail((data + b"\tTimestamp = 4\n\n")[parsed.consumed :])
    assert rest.rejected == []
    assert [r.status_type for r in rest.records] == [3]
    assert not rest.incomplete


def test_a_cut_record_with_crlf_line_ends() -> None:
    data = (
        unterminated("Acct-Status-Type = Start", "Timestamp = 1")
        + record("Acct-Status-Type = Stop", "Timestamp = 2")
    ).replace("\n", "\r\n")
    parsed = parse_detail(data.encode())
    assert [r.line for r in parsed.rejected] == [1]
    assert [r.status_type for r in parsed.records] == [2]
    assert not parsed.incomplete
    assert parsed.consumed == len(data.encode())


def test_only_a_line_at_the_left_margin_is_a_header() -> None:
    # An indented line that is not an attribute stays in its record and rejects it.
    parsed = parse_detail(
        record("Acct-Status-Type = Start", "\tstray continuation", "Timestamp = 1").encode()
    )
    assert parsed.records == []
    (rejected,) = parsed.rejected
    assert (rejected.line, rejected.reason) == (1, "line 3: expected 'Attribute = value'")
    # A line at the left margin is a header whatever it says: the record it interrupts is
    # rejected, and it begins a record of its own, read as any other (its date is needed
    # only without a Timestamp line, so this one is rejected for its header).
    data = unterminated("Acct-Status-Type = Start", "Timestamp = 1") + record(
        "Acct-Status-Type = Stop", header="garbage"
    )
    parsed = parse_detail(data.encode())
    assert parsed.records == []
    assert [r.line for r in parsed.rejected] == [1, 4]
    assert "no closing blank line" in parsed.rejected[0].reason
    assert "not a detail-file date" in parsed.rejected[1].reason
    assert not parsed.incomplete


def session_file() -> str:
    base = 1_709_287_200  # 2024-03-01T10:00:00Z
    common = (
        'Acct-Session-Id = "D1"',
        'User-Name = "dora"',
        "NAS-IP-Address = 192.0.2.55",
    )

    def rec(status: str, st: int, inp: int, out: int, delay: int = 0, *extra: str) -> str:
        return record(
            f"Acct-Status-Type = {status}",
            *common,
            f"Acct-Session-Time = {st}",
            f"Acct-Input-Octets = {inp}",
            "Acct-Input-Gigawords = 1",
            f"Acct-Output-Octets = {out}",
            f"Event-Timestamp = {base + st}",
            f"Acct-Delay-Time = {delay}",
            *extra,
            f"Timestamp = {base + st + delay}",
        )

    return (
        record("Acct-Status-Type = Start", *common, f"Timestamp = {base}")
        + rec("Interim-Update", 600, 100, 1000)
        # A retransmission: new Acct-Delay-Time, same content.
        + rec("Interim-Update", 600, 100, 1000, 5)
        + rec("Interim-Update", 1200, 300, 5000)
        + record("Acct-Status-Type = Interim-Update", *common, "Acct-Input-Octets = x1")
        + rec("Stop", 1500, 400, 7000, 0, "Acct-Terminate-Cause = Lost-Carrier")
        # Still being written: no closing blank line.
        + HEADER
        + "\n\tAcct-Status-Type = Interim-Update\n"
    )


async def rating(*args: str, key: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        cwd=ROOT,
        env={**os.environ, "RATING_API_KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_replay_of_a_detail_file_counts_each_record_once(
    server: RunningServer, tenant: TenantCtx, tmp_path: Path
) -> None:
    path = tmp_path / "detail-20240301"
    path.write_text(session_file())
    args = ("replay", str(path), "--target", server.target, "--json")
    code, out, err = await rating(*args, key=tenant.key)
    assert code == 1, "a rejected record must make the command fail"
    assert "record at line 47 rejected: line 52" in err
    assert "Acct-Input-Octets" in err
    assert "no closing blank line" in err
    summary = json.loads(out)
    assert summary == {
        "records": 6,
        "accepted": 4,
        "duplicate": 1,
        "late": 0,
        "quarantined": 0,
        "rejected": 1,
        "incomplete": 1,
    }
    code, out, _ = await rating(*args, key=tenant.key)
    assert json.loads(out)["duplicate"] == 5
    code, out, err = await rating("sessions", "--target", server.target, "--json", key=tenant.key)
    assert code == 0, err
    (session,) = json.loads(out)
    assert session["nas"] == "192.0.2.55"
    assert session["acct_session_id"] == "D1"
    assert (session["input_bytes"], session["output_bytes"]) == ((1 << 32) + 400, 7000)
    assert session["session_time_s"] == 1500
    assert session["state"] == "closed"
    assert session["terminate_cause"] == 2
    assert session["start_at"] == "2024-03-01T10:00:00Z"
    assert session["stop_at"] == "2024-03-01T10:25:00Z"
    assert session["last_update_at"] == "2024-03-01T10:25:00Z"


async def test_replay_in_another_zone_counts_records_timed_by_event_timestamp_once(
    server: RunningServer, tenant: TenantCtx, tmp_path: Path
) -> None:
    # No `Timestamp` lines, headers in Paris time, integer Event-Timestamps: run once
    # without --detail-tz (the header read as UTC, an hour out) and once with it.
    base = 1_709_287_200  # 2024-03-01T10:00:00Z
    path = tmp_path / "detail-paris"
    path.write_text(
        record("Acct-Status-Type = Start", "Acct-Session-Id = P1", "NAS-IP-Address = 192.0.2.56",
               f"Event-Timestamp = {base}", header="Fri Mar  1 11:00:00 2024")
        + record("Acct-Status-Type = Stop", "Acct-Session-Id = P1",
                 "NAS-IP-Address = 192.0.2.56", "Acct-Session-Time = 600",
                 "Acct-Input-Octets = 10", "Acct-Output-Octets = 20",
                 f"Event-Timestamp = {base + 600}", header="Fri Mar  1 11:10:00 2024")
    )  # fmt: skip
    args = ("replay", str(path), "--target", server.target, "--json")
    code, out, err = await rating(*args, key=tenant.key)
    assert code == 0, err
    assert json.loads(out)["accepted"] == 2
    code, out, err = await rating(*args, "--detail-tz", "Europe/Paris", key=tenant.key)
    assert code == 0, err
    assert (json.loads(out)["accepted"], json.loads(out)["duplicate"]) == (0, 2)
    code, out, err = await rating("sessions", "--target", server.target, "--json", key=tenant.key)
    (session,) = json.loads(out)
    assert (session["input_bytes"], session["output_bytes"]) == (10, 20)
    assert (session["start_at"], session["stop_at"]) == (
        "2024-03-01T10:00:00Z",
        "2024-03-01T10:10:00Z",
    )
    assert session["flags"] == []


async def test_replay_reads_on_after_a_record_cut_before_its_blank_line(
    server: RunningServer, tenant: TenantCtx, tmp_path: Path
) -> None:
    base = 1_709_287_200  # 2024-03-01T10:00:00Z
    common = ('Acct-Session-Id = "E1"', 'User-Name = "erin"', "NAS-IP-Address = 192.0.2.56")
    data = (
        record("Acct-Status-Type = Start", *common, f"Timestamp = {base}")
        # The writer died in this record and appended the next one after a restart.
        + unterminated(
            "Acct-Status-Type = Interim-Update",
            *common,
            "Acct-Session-Time = 300",
            "Acct-Input-Octets = 50",
        )
        + record(
            "Acct-Status-Type = Stop",
            *common,
            "Acct-Session-Time = 600",
            "Acct-Input-Octets = 100",
            "Acct-Output-Octets = 2000",
            f"Timestamp = {base + 600}",
        )
        # Still being written: no closing blank line, left for the next run.
        + unterminated("Acct-Status-Type = Start", 'Acct-Session-Id = "E2"')
    )
    path = tmp_path / "detail-20240301"
    path.write_text(data)
    args = ("replay", str(path), "--target", server.target, "--json")
    code, out, err = await rating(*args, key=tenant.key)
    assert code == 1, "a rejected record must make the command fail"
    assert "record at line 8 rejected: no closing blank line before the header at line 15" in err
    assert "last record has no closing blank line yet" in err
    assert json.loads(out) == {
        "records": 3,
        "accepted": 2,
        "duplicate": 0,
        "late": 0,
        "quarantined": 0,
        "rejected": 1,
        "incomplete": 1,
    }
    code, out, err = await rating("sessions", "--target", server.target, "--json", key=tenant.key)
    assert code == 0, err
    (session,) = json.loads(out)
    assert session["acct_session_id"] == "E1"
    assert session["state"] == "closed"
    assert (session["input_bytes"], session["output_bytes"]) == (100, 2000)
    assert session["session_time_s"] == 600


async def test_replay_of_a_pcap_needs_a_secret(
    server: RunningServer, tenant: TenantCtx, tmp_path: Path
) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    code, _, err = await rating("replay", str(path), "--target", server.target, key=tenant.key)
    assert code != 0
    assert "--secret is required" in err
