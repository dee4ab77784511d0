"""The reference's own reader of StreamAccountingRequest bytes (`decode_batch`).

It must read exactly what the encoder wrote, agree with the generated protobuf classes on
the same bytes, skip the fields the reference does not model, and refuse malformed bytes
with an error naming the field.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isp_rating.v1 import usage_pb2
from tests.reference.accounting_wire import (
    Rec,
    WireError,
    _bytes,
    _timestamp,
    _uint,
    _varint,
    batch,
    decode_batch,
    decoded_entry,
    raw_entry,
    rec_from_message,
)

U32 = st.integers(0, 2**32 - 1)
TEXT = st.text(max_size=12)
MAYBE_U32 = st.none() | U32
# Timestamps either side of the epoch, with and without a fraction of a second.
TIME_US = st.none() | st.integers(-(2**40), 2**52)

RECS = st.builds(
    Rec,
    status=st.sampled_from([0, 1, 2, 3, 7, 8, 15]),
    sid=TEXT,
    nas_identifier=st.none() | TEXT,
    nas_ip=st.none() | st.sampled_from(["", "192.0.2.1", "10.0.0.254"]),
    source=st.sampled_from(["", "198.51.100.1", "2001:db8::1"]),
    user=TEXT,
    input_octets=MAYBE_U32,
    input_gigawords=MAYBE_U32,
    output_octets=MAYBE_U32,
    output_gigawords=MAYBE_U32,
    session_time=MAYBE_U32,
    event_ts_us=TIME_US,
    delay=MAYBE_U32,
    terminate_cause=MAYBE_U32,
    arrival_us=TIME_US,
    calling=TEXT,
    framed_ip=st.sampled_from(["", "100.64.0.1"]),
    classes=st.lists(st.binary(max_size=6), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(RECS, max_size=6))
def test_decode_reads_back_what_was_encoded(recs: list[Rec]) -> None:
    assert decode_batch(batch([decoded_entry(r) for r in recs])) == recs


@settings(max_examples=300, deadline=None)
@given(st.lists(RECS, min_size=1, max_size=6))
def test_decode_agrees_with_the_generated_classes_on_the_same_bytes(recs: list[Rec]) -> None:
    data = batch([decoded_entry(r) for r in recs])
    parsed = usage_pb2.StreamAccountingRequest.FromString(data)
    assert decode_batch(data) == [rec_from_message(e.decoded) for e in parsed.entries]


def test_fields_the_reference_does_not_model_are_read_and_skipped() -> None:
    rec = Rec(status=3, sid="s1", user="alice", input_octets=7, session_time=60)
    extra = (
        _bytes(5, b"2001:db8::1")  # NAS-IPv6-Address
        + _uint(8, 4)  # NAS-Port
        + _bytes(19, b"2001:db8:1::/64")  # Framed-IPv6-Prefix
        + _varint(99 << 3 | 5) + b"\x01\x02\x03\x04"  # an unknown fixed32 field
        + _varint(98 << 3 | 1) + bytes(8)  # an unknown fixed64 field
    )  # fmt: skip
    data = batch([_bytes(1, rec.encode() + extra)])
    assert decode_batch(data) == [rec]


def test_the_last_occurrence_of_a_field_wins_and_class_values_keep_their_order() -> None:
    body = _uint(14, 5) + _bytes(22, b"a") + _uint(14, 9) + _bytes(22, b"b") + _bytes(3, b"x")
    (rec,) = decode_batch(batch([_bytes(1, body + _bytes(3, b"bob"))]))
    assert (rec.session_time, rec.classes, rec.user, rec.source) == (9, (b"a", b"b"), "bob", "")


def test_nanoseconds_are_truncated_to_microseconds() -> None:
    body = _bytes(15, _uint(1, 1_700_000_000) + _uint(2, 999_999_999))
    (rec,) = decode_batch(batch([_bytes(1, body)]))
    assert rec.event_ts_us == 1_700_000_000_999_999


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_bytes(10, b"\x05"), "AccountingRecord.input_octets: wrong wire type"),
        (_uint(12, 2**32), "AccountingRecord.output_octets: 4294967296 does not fit"),
        (_uint(3, 1), "AccountingRecord.user: wrong wire type"),
        (_bytes(3, b"\xff\xfe"), "AccountingRecord.user: not UTF-8"),
        (_bytes(15, _uint(2, 10**9)), "AccountingRecord.event_ts_us: nanos out of range"),
        (_varint(14 << 3 | 5) + bytes(4), "AccountingRecord.session_time: wrong wire type"),
        (_uint(14, 60)[:-1] + b"\x80", "AccountingRecord field 14: truncated varint"),
        (_varint(2 << 3 | 2) + _varint(9) + b"abc", "AccountingRecord field 2: runs past"),
        (_varint(14 << 3 | 3), "AccountingRecord: unsupported tag"),
        (_uint(0, 1), "AccountingRecord: field number 0"),
    ],
)
def test_malformed_records_are_refused_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_batch(batch([_bytes(1, body)]))


def test_entries_the_reference_cannot_read_are_refused_naming_the_entry() -> None:
    good = decoded_entry(Rec(status=1, sid="a"))
    with pytest.raises(WireError, match=r"entries\[1\]: a raw packet"):
        decode_batch(batch([good, raw_entry(b"\x04\x01\x00\x14" + bytes(16), "192.0.2.1")]))
    with pytest.raises(WireError, match=r"entries\[1\]: no record"):
        decode_batch(batch([good, b""]))
    with pytest.raises(WireError, match="StreamAccountingRequest field 2: length 21 runs past"):
        decode_batch(batch([good])[:-1])


def test_a_timestamp_before_the_epoch_keeps_its_sign() -> None:
    (rec,) = decode_batch(batch([_bytes(1, _timestamp(23, -1_500_001))]))
    assert rec.arrival_us == -1_500_001
